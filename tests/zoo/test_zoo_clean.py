"""The zoo trained correctly: every model learns (its loss falls) and nnprobe raises nothing
above "info" (SPEC section 3: "a clean, correct training loop raises nothing above info").

`every=1` unless a case says otherwise: every step is judged, the strictest setting for false
alarms. A case that nnprobe gets wrong today is marked xfail(strict=True) with the defect and the
figures measured with plain torch; it turns into a failure (XPASS) once the defect is fixed.
"""

from __future__ import annotations

import copy
import warnings
from typing import cast

import nnprobe
import numpy as np
import pytest
import torch

from zoo.models import (
    MLP,
    FunctionalMLP,
    LoRAClassifier,
    assert_learns,
    assert_silent,
    bert_task,
    digits,
    digits_task,
    gpt2_task,
    lstm_task,
    resnet_task,
    train,
    warmup_cosine,
)


def test_bert_classifier_loss_inside_the_model():
    # plain torch, same seed: rms grad of layer.0 query 6.7e-8 .. 5.7e-7 (steps 0..10) vs classifier
    # 6.5e-3 .. 2.5e-2 (ratio ~1e-5); the ratio reaches ~1e-2 by step 25. update/weight of the query
    # weight 0.11 (step 0) .. 0.05 (step 35), as large as every other layer's. Loss 0.69 -> 0.04.
    task = bert_task()
    run = train(task, torch.optim.AdamW(task.model.parameters(), lr=3e-3), 40)
    assert_learns(run, 0.5)
    assert_silent(run)


def test_gpt2_tied_embeddings():
    task = gpt2_task()
    run = train(task, torch.optim.AdamW(task.model.parameters(), lr=1e-3), 40)
    assert_learns(run)
    assert_silent(run)


def test_gpt2_adam_first_steps_without_warmup():
    # plain torch, AdamW lr 3e-3: update/weight of h.0.attn.c_proj.weight (init std 0.02/sqrt(2 n_layer),
    # rms 0.01) 0.31 at step 0, 0.15 at 3, 0.093 at 6, 0.062 at 9, 0.02 at 39; loss 3.50 -> 0.95 in 40
    # steps (lr 1e-3: 3.50 -> 2.29). nnprobe flags the median of steps 0..9 (0.111) at step 9.
    task = gpt2_task()
    run = train(task, torch.optim.AdamW(task.model.parameters(), lr=3e-3), 40)
    assert_learns(run, 0.5)
    assert_silent(run)


def test_resnet18_batchnorm():
    task = resnet_task()
    opt = torch.optim.SGD(task.model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    run = train(task, opt, 25)
    assert_learns(run)
    assert_silent(run)


def test_compiled_aot_eager():
    task = digits_task(MLP)
    task.model = cast(torch.nn.Module, torch.compile(task.model, backend="aot_eager"))
    try:
        run = train(task, torch.optim.Adam(task.model.parameters(), lr=1e-3), 30)
    finally:
        torch._dynamo.reset()
    assert_learns(run)
    assert_silent(run)


def _compiled_counts(watched: bool) -> tuple[int, int, list[str]]:
    """Graph breaks and graphs compiled over 12 steps of a compiled MLP, and the warnings raised."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    task = digits_task(MLP)
    model = cast(torch.nn.Module, torch.compile(task.model, backend="aot_eager"))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    probe = nnprobe.watch(model, opt, every=1, console=False) if watched else None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(12):
                opt.zero_grad()
                task.loss_of(model, next(task.data)).backward()
                opt.step()
    finally:
        if probe is not None:
            probe.close()
        breaks, graphs = sum(counters["graph_break"].values()), counters["stats"]["unique_graphs"]
        torch._dynamo.reset()
    return breaks, graphs, sorted({str(w.message).split(".")[0] for w in caught})


def test_compiled_adds_no_graph_breaks():
    # SPEC section 7: a watched compiled run has no more graph breaks or recompilations than the
    # same run unwatched. Measured (also with torch.compile after watch): bare 0 breaks, 1 graph,
    # 8 frames captured; watched every=1 17 breaks (time.perf_counter, Tensor.item,
    # _current_graph_task_id, nnprobe._core.stats_many/stats_array), 27 graphs, 163 frames,
    # recompile_limit (8) hit in _record.py. Under filterwarnings=error the run even crashes:
    # dynamo turns a UserWarning raised while tracing the hook into InternalTorchDynamoError.
    bare = _compiled_counts(watched=False)
    watched = _compiled_counts(watched=True)
    assert watched == bare, f"bare (breaks, graphs, warnings) {bare}, watched {watched}"


def test_bf16_autocast():
    task = digits_task(MLP)
    run = train(task, torch.optim.Adam(task.model.parameters(), lr=1e-3), 30, autocast=torch.bfloat16)
    assert_learns(run)
    assert_silent(run)


def test_grad_scaler_on_cpu():
    task = digits_task(MLP)
    scaler = torch.amp.GradScaler("cpu")
    run = train(task, torch.optim.Adam(task.model.parameters(), lr=1e-3), 30, autocast=torch.float16, scaler=scaler)
    assert scaler.get_scale() > 1  # the scaler is really at work on CPU
    assert_learns(run)
    assert_silent(run)


@pytest.mark.xfail(strict=True, reason="under a GradScaler the gradient statistics are of the scaled gradients "
                   "(65536x the unscaled ones), SPEC section 7 wants the unscaled")
def test_grad_scaler_gradient_statistics_are_unscaled():
    # measured: std of fc1's output gradient 1.56e-3 without a scaler, 99.9 with (scale 65536);
    # the update statistics agree (fc1.weight update std 9.52e-4 both ways)
    def grad_std(scaler: torch.amp.GradScaler | None) -> np.ndarray:
        task = digits_task(MLP)
        run = train(task, torch.optim.Adam(task.model.parameters(), lr=1e-3), 4, autocast=torch.float16, scaler=scaler)
        return run.probe.history("fc1", "gradients", "std")

    plain, scaled = grad_std(None), grad_std(torch.amp.GradScaler("cpu"))
    np.testing.assert_allclose(scaled, plain, rtol=0.05)


def test_gradient_accumulation():
    task = digits_task(MLP, batch=16)
    run = train(task, torch.optim.Adam(task.model.parameters(), lr=1e-3), 30, accumulate=4)
    assert_learns(run)
    assert_silent(run)


def _ema_run(after_close: int = 0):
    """Train an MLP (Dropout, BatchNorm) and keep an EMA copy made at step 15 with
    `copy.deepcopy(model).eval()`, evaluated under no_grad every 5 steps and `after_close` times
    after the probe closed."""
    task = digits_task(MLP)
    x, _ = digits()
    ema: list[torch.nn.Module] = []

    def keep_ema(i: int) -> None:
        if i == 15:
            ema.append(copy.deepcopy(task.model).eval())
        if ema:
            with torch.no_grad():
                for pe, p in zip(ema[0].parameters(), task.model.parameters()):
                    pe.lerp_(p, 0.1)
                if i % 5 == 0:
                    ema[0](x[:64])

    run = train(task, torch.optim.Adam(task.model.parameters(), lr=1e-3), 30, each_step=keep_ema)
    return run, ema[0], x


def test_ema_copy_made_mid_training():
    run, _, _ = _ema_run()
    assert_learns(run)
    assert_silent(run)


def test_ema_copy_keeps_no_hooks_after_close():
    run, ema, x = _ema_run()
    before = sum(f.count for f in run.findings)
    with torch.no_grad():
        ema(x[:64])
    assert sum(f.count for f in run.findings) == before, f"the closed probe judged the copy:\n{run.text()}"
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in ema.modules()), "hooks left on the copy"


def test_lora_adapter_on_frozen_base():
    task = digits_task(LoRAClassifier)
    trainable = [p for p in task.model.parameters() if p.requires_grad]
    run = train(task, torch.optim.AdamW(trainable, lr=3e-3), 40)
    assert_learns(run)
    assert_silent(run)


def test_lstm_packed_sequences():
    task = lstm_task()
    run = train(task, torch.optim.Adam(task.model.parameters(), lr=1e-2), 40)
    assert_learns(run, 0.2)
    assert_silent(run)


def test_lstm_trained_to_convergence():
    # plain torch, SGD lr 0.5 momentum 0.9: loss 0.69 -> 2e-4 by step 60, 3e-5 by 280; update/weight of
    # embed.weight 5e-4 at step 60, 3.3e-5 at 100, 1.2e-5 at 220, 8.7e-6 at 280 (the LSTM's own weights
    # 4e-5, the head's 1.3e-4). nnprobe flags embed.weight from step 243 (median 9.9e-6).
    task = lstm_task()
    run = train(task, torch.optim.SGD(task.model.parameters(), lr=0.5, momentum=0.9), 300)
    assert_learns(run, 0.01)
    assert_silent(run)


def test_functional_activations():
    task = digits_task(FunctionalMLP)
    run = train(task, torch.optim.Adam(task.model.parameters(), lr=1e-3), 40)
    assert_learns(run)
    assert_silent(run)


def test_adamw_warmup_cosine():
    task = digits_task(MLP)
    opt = torch.optim.AdamW(task.model.parameters(), lr=3e-3, weight_decay=0.01)
    run = train(task, opt, 60, scheduler=warmup_cosine(opt, warmup=10, total=60))
    assert_learns(run, 0.5)
    assert_silent(run)
