"""The recipe's mistakes planted into the zoo: each is found with the right code and, where the
code names one, the right module.

A mistake that nnprobe misses today is marked xfail(strict=True) with the defect and the figures
measured with plain torch; it turns into a failure (XPASS) once the defect is fixed.
"""

from __future__ import annotations

from typing import cast

import nnprobe
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.functional import (
    cross_entropy,  # by name, before any probe opens: as at the top of a user's file
)

from zoo.models import (
    MLP,
    FunctionalMLP,
    LoRAClassifier,
    assert_found,
    bert_task,
    digits_task,
    gpt2_task,
    regression_task,
    resnet_task,
    train,
)


def _weight_layers(model: nn.Module) -> set[str]:
    return {name for name, m in model.named_modules() if getattr(m, "weight", None) is not None and m.weight.dim() >= 2}


def test_missing_zero_grad_bert():
    task = bert_task()
    run = train(task, torch.optim.AdamW(task.model.parameters(), lr=3e-3), 6, every="auto", zero_grad=False)
    assert_found(run, "zero-grad-missing")


def test_eval_mode_while_training_resnet18():
    task = resnet_task()
    task.model.eval()  # left in eval mode after an evaluation
    run = train(task, torch.optim.SGD(task.model.parameters(), lr=0.01, momentum=0.9), 4, every="auto")
    assert_found(run, "eval-mode-training", "bn1")  # the first BatchNorm in forward order


def test_softmax_into_cross_entropy():
    task = digits_task(FunctionalMLP)
    task.loss_of = lambda m, b: F.cross_entropy(F.softmax(m(b[0]), dim=-1), b[1])
    run = train(task, torch.optim.Adam(task.model.parameters(), lr=1e-3), 6, every="auto")
    assert_found(run, "probabilities-into-loss")


def test_softmax_into_cross_entropy_imported_by_name():
    task = digits_task(FunctionalMLP)
    task.loss_of = lambda m, b: cross_entropy(F.softmax(m(b[0]), dim=-1), b[1])
    run = train(task, torch.optim.Adam(task.model.parameters(), lr=1e-3), 6, every="auto")
    assert_found(run, "probabilities-into-loss")


def test_adamw_lr_far_too_high_gpt2():
    # plain torch, AdamW lr=1.0 on tiny GPT-2 (init rms 0.02): update/weight 50 at step 0 on every
    # weight (c_attn, c_fc, wte), 0.3 at step 3, 0.06-0.1 by step 9, 0.01-0.06 after (the weights
    # grew ~50x); loss 3.50 -> 27 (step 3) -> 41..96, above chance (ln 32 = 3.47) for all 40 steps.
    task = gpt2_task()
    run = train(task, torch.optim.AdamW(task.model.parameters(), lr=1.0), 40)
    assert sum(run.losses[-5:]) / 5 > 3 * run.losses[0]  # the planted mistake did wreck the run
    assert_found(run, "update-ratio", _weight_layers(task.model), direction="high")


def test_sgd_lr_far_too_high_linear_regression():
    # plain torch, SGD lr=1.5 (the loss's curvature is 2, so anything above 1 diverges): update/weight
    # of fc.weight 21 at step 0, then 3.0-5.1 at every step 4..36; gradient rms 2.75 -> 8.9e16;
    # loss 10.5 -> 3.7e33 (step 36) -> inf (step 40). nnprobe: loss-not-decreasing, then non-finite
    # at step 40; exploding-gradients is never judged on a model with a single weight layer.
    task = regression_task()
    run = train(task, torch.optim.SGD(task.model.parameters(), lr=1.5), 56)
    assert_found(run, "update-ratio", "fc", direction="high")


def _low_lr_run(every: int | str):
    task = digits_task(MLP)
    return train(task, torch.optim.Adam(task.model.parameters(), lr=1e-8), 90, every=every)  # 1e5x below 1e-3


def test_lr_far_too_low_default_sampling():
    run = _low_lr_run("auto")
    assert_found(run, "update-ratio", {"fc1", "fc2", "head"}, direction="low")


def test_lr_far_too_low_every_step():
    # the same run judged at every step: found at step 9, median ratio 8.7e-8 (fc1)
    run = _low_lr_run(1)
    assert_found(run, "update-ratio", {"fc1", "fc2", "head"}, direction="low")


def _dead_run(model: type[nn.Module]):
    task = digits_task(model)
    with torch.no_grad():
        cast(nn.Linear, task.model.get_submodule("fc1")).bias.fill_(-4.0)  # pre-activations ~ N(-4, 0.6): the first ReLU is dead
    return train(task, torch.optim.Adam(task.model.parameters(), lr=1e-3), 30)


def test_dead_units_relu_module():
    assert_found(_dead_run(MLP), "dead-units", "act1")


def test_dead_units_functional_relu():
    # the same planted bias as test_dead_units_relu_module, where 97% of act1's units are dead
    assert_found(_dead_run(FunctionalMLP), "dead-units", "fc1")


def test_param_not_in_optimizer_lora_head():
    task = digits_task(LoRAClassifier)
    adapters = [p for name, p in task.model.named_parameters() if "lora" in name]  # forgets the new head
    run = train(task, torch.optim.AdamW(adapters, lr=3e-3), 4, every="auto")
    assert_found(run, "param-not-in-optimizer", "head")


def test_nan_in_a_weight_gpt2():
    task = gpt2_task()

    def plant(i: int) -> None:
        if i == 5:
            with torch.no_grad():
                task.model.transformer.h[1].mlp.c_fc.weight[0, 0] = float("nan")

    run = train(task, torch.optim.AdamW(task.model.parameters(), lr=1e-3), 8, every="auto", each_step=plant)
    assert_found(run, "non-finite", "transformer.h.1.mlp.c_fc")


def test_stacked_linear_is_a_warning():
    model = nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    report = nnprobe.lint(model, torch.randn(32, 8), loss_fn=nn.CrossEntropyLoss())
    hits = [f for f in report.findings if f.code == "stacked-linear"]
    assert hits and hits[0].module == "0" and hits[0].severity == "warning", str(report)
