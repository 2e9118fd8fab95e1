"""The Hugging Face Trainer callback in a real `transformers.Trainer` on CPU.

Tiny models with random init (built from configs: nothing downloaded), generated data, a few
dozen steps each.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

transformers = pytest.importorskip("transformers")

from nnprobe.integrations.transformers import GUARDED, REPORT_NAME, NnprobeCallback  # noqa: E402
from nnprobe.runtime.hooks import snapshot  # noqa: E402
from transformers import (  # noqa: E402
    BertConfig,
    BertForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
    Trainer,
    TrainingArguments,
)
from transformers.modeling_outputs import SequenceClassifierOutput  # noqa: E402


def nnprobe_modes():
    """The function modes nnprobe left on the stack (its loss tap): none once every probe closed."""
    from nnprobe.runtime.loss_tap import FunctionTap
    from torch.overrides import _get_current_function_mode_stack

    return [m for m in _get_current_function_mode_stack() if isinstance(m, FunctionTap)]

VOCAB, SEQ = 100, 8


class Tokens(Dataset):
    """Two classes told apart by which half of the vocabulary their tokens come from."""

    def __init__(self, n: int = 256, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.y = torch.randint(0, 2, (n,), generator=g)
        half = VOCAB // 2
        self.x = torch.randint(1, half, (n, SEQ), generator=g) + self.y[:, None] * (half - 1)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.x[i], "attention_mask": torch.ones(SEQ, dtype=torch.long), "labels": self.y[i]}


class TinyConfig(PretrainedConfig):
    model_type = "nnprobe-tiny"

    def __init__(self, vocab_size: int = VOCAB, hidden: int = 32, num_labels: int = 2, raise_at: int = -1,
                 manual_loss: bool = False, **kwargs) -> None:
        super().__init__(num_labels=num_labels, **kwargs)
        self.vocab_size, self.hidden, self.raise_at, self.manual_loss = vocab_size, hidden, raise_at, manual_loss


class TinyClassifier(PreTrainedModel):
    """A custom head a Trainer user writes: embeddings, mean pooling, a small MLP."""

    config_class = TinyConfig
    base_model_prefix = "tiny"

    def __init__(self, config: TinyConfig) -> None:
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden)
        self.mlp = nn.Sequential(nn.Linear(config.hidden, config.hidden), nn.ReLU(), nn.Dropout(0.1),
                                 nn.Linear(config.hidden, config.num_labels))
        self.calls = 0
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        pass  # PyTorch's own initialisation

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        self.calls += 1
        if self.calls == self.config.raise_at:
            raise RuntimeError("boom: a bug in the model's forward")
        h = self.embed(input_ids)
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        logits = self.mlp((h * m).sum(1) / m.sum(1))
        loss = None
        if labels is not None:
            if self.config.manual_loss:  # no torch.nn.functional loss: the probe cannot see it
                loss = -(logits.log_softmax(-1).gather(1, labels[:, None])).mean()
            else:
                loss = F.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


def tiny_bert() -> BertForSequenceClassification:
    cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     vocab_size=VOCAB, max_position_embeddings=SEQ, num_labels=2)
    return BertForSequenceClassification(cfg)


def fit(model, tmp_path, cb, *, epochs: int = 2, optimizers=(None, None), collator=None, **args):
    targs = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=16,
                              num_train_epochs=epochs, report_to=args.pop("report_to", []), use_cpu=True, save_strategy="no",
                              disable_tqdm=True, logging_steps=args.pop("logging_steps", 5),
                              dataloader_pin_memory=False, seed=0, learning_rate=args.pop("learning_rate", 3e-3), **args)
    trainer = Trainer(model=model, args=targs, train_dataset=Tokens(), callbacks=[cb], optimizers=optimizers,
                      data_collator=collator)
    trainer.train()
    return trainer


def hooks_of(model) -> dict:
    """Every hook dict of the model and its parameters (training flags aside: the Trainer sets them)."""
    return {k: v for k, v in snapshot(model, list(model.parameters()), []).items() if not k.endswith(".training")}


def serious(probe) -> list:
    return [f for f in probe.findings if f.severity in ("error", "warning")]


def test_clean_run_is_silent_removes_every_hook_and_writes_the_report(tmp_path):
    torch.manual_seed(0)
    model = TinyClassifier(TinyConfig())
    before = hooks_of(model)
    cb = NnprobeCallback(console=False)
    trainer = fit(model, tmp_path, cb, epochs=3, logging_steps=1)
    probe = cb.probe
    assert probe.steps == trainer.state.global_step == 48  # a probe step is an optimizer step
    steps, losses = probe.losses()
    # every step's loss: the model's loss calls on the sampled steps, the Trainer's log from the second on
    assert set(range(1, 48)) <= set(steps.tolist())
    assert np.median(losses[-8:]) < 0.7 * losses[0]  # and it learns
    assert not serious(probe), probe.findings
    # closed: the model, its parameters, the optimizer and the Trainer are as before
    assert hooks_of(model) == before
    opt = trainer.optimizer.optimizer
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks
    assert not any(name in vars(trainer) for name in GUARDED)
    assert not nnprobe_modes()  # the loss tap is off
    out = tmp_path / "out"
    assert cb.report_path == str(out / REPORT_NAME) and "TinyClassifier" in (out / REPORT_NAME).read_text()
    assert len(list((out / "nnprobe").glob("nnprobe-*.jsonl"))) == 1


def test_a_forgotten_param_group_is_found_and_named(tmp_path):
    """Layer-wise learning rates written by hand, with the embeddings and the pooler left out of
    every group: they get gradients and never change."""
    torch.manual_seed(0)
    model = tiny_bert()
    groups = [{"params": [p for n, p in model.named_parameters() if n.startswith("bert.encoder.")], "lr": 1e-4},
              {"params": list(model.classifier.parameters()), "lr": 1e-3}]
    cb = NnprobeCallback(console=False)
    fit(model, tmp_path, cb, epochs=1, optimizers=(torch.optim.AdamW(groups), None))
    found = {f.module for f in cb.probe.findings if f.code == "param-not-in-optimizer"}
    assert {"bert.pooler.dense", "bert.embeddings.word_embeddings", "bert.embeddings.LayerNorm"} <= found
    assert not any(m.startswith(("bert.encoder", "classifier")) for m in found)
    assert all(f.severity == "error" for f in cb.probe.findings if f.code == "param-not-in-optimizer")


def test_a_loss_the_probe_cannot_see_comes_from_the_logged_one(tmp_path):
    torch.manual_seed(0)
    model = TinyClassifier(TinyConfig(manual_loss=True))
    cb = NnprobeCallback(console=False)
    trainer = fit(model, tmp_path, cb, epochs=1, logging_steps=1)
    steps, values = cb.probe.losses()
    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    # from the second step on: the choice is made once a GPU loss would have reached the probe
    assert list(steps) == list(range(1, 16)) and len(logged) == 16
    assert values == pytest.approx(logged[1:], rel=1e-6)


def test_a_logged_average_is_not_taken_for_a_step_loss(tmp_path):
    torch.manual_seed(0)
    cb = NnprobeCallback(console=False)
    fit(TinyClassifier(TinyConfig(manual_loss=True)), tmp_path, cb, epochs=1, logging_steps=4)
    assert len(cb.probe.losses()[0]) == 0


class CollatorInterrupted:
    """Ctrl-C while the next batch is being put together (outside the training step)."""

    def __init__(self, at: int) -> None:
        self.at, self.calls = at, 0

    def __call__(self, features):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return {k: torch.stack([f[k] for f in features]) for k in features[0]}


@pytest.mark.parametrize("where", ["model", "collator"])
def test_training_that_raises_still_closes_the_probe_and_writes_the_report(tmp_path, where):
    torch.manual_seed(0)
    model = TinyClassifier(TinyConfig(raise_at=6 if where == "model" else -1))
    before = hooks_of(model)
    cb = NnprobeCallback(console=False)
    collator = CollatorInterrupted(at=6) if where == "collator" else None
    with pytest.raises(RuntimeError if where == "model" else KeyboardInterrupt):
        fit(model, tmp_path, cb, collator=collator)
    # the model raises in the 6th step; the collator's 6th batch is fetched during the 5th step
    # (accelerate's loader reads one batch ahead)
    assert cb.probe.steps == {"model": 5, "collator": 4}[where] and "closed" in repr(cb.probe)
    assert hooks_of(model) == before
    assert not nnprobe_modes()
    assert (tmp_path / "out" / REPORT_NAME).exists()
    (log,) = (tmp_path / "out" / "nnprobe").glob("nnprobe-*.jsonl")
    lines = log.read_text().splitlines()
    assert '"type":"end"' in lines[-1]  # the log was finished, not cut off


def test_a_probe_left_open_is_closed_at_the_next_train_begin(tmp_path, monkeypatch):
    """Where no guard could be put (the running Trainer not found), the next run cleans up."""
    import nnprobe.integrations.transformers as integration

    monkeypatch.setattr(integration, "_running_trainer", lambda cb: None)
    torch.manual_seed(0)
    model = TinyClassifier(TinyConfig())
    before = hooks_of(model)
    cb = NnprobeCallback(console=False)

    class Failing(Trainer):
        fail = True

        def training_step(self, *a, **k):
            if self.fail and self.state.global_step == 3:
                raise RuntimeError("boom")
            return super().training_step(*a, **k)

    targs = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=16, num_train_epochs=1,
                              report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True,
                              dataloader_pin_memory=False)
    trainer = Failing(model=model, args=targs, train_dataset=Tokens(), callbacks=[cb])
    with pytest.raises(RuntimeError, match="boom"):
        trainer.train()
    first = cb.probe
    assert "open" in repr(first) and hooks_of(model) != before
    trainer.fail = False  # the bug fixed, train again
    trainer.train()
    assert "closed" in repr(first) and first is not cb.probe and cb.probe.steps == 16
    assert hooks_of(model) == before


def test_clean_bert_is_silent(tmp_path):
    torch.manual_seed(0)
    cb = NnprobeCallback(console=False)
    fit(tiny_bert(), tmp_path, cb, epochs=2)
    assert not serious(cb.probe), cb.probe.findings


def test_watch_kwargs_reach_the_probe(tmp_path):
    torch.manual_seed(0)
    cb = NnprobeCallback(console=False, every=4, log_dir=str(tmp_path / "elsewhere"), report=False)
    fit(TinyClassifier(TinyConfig()), tmp_path, cb, epochs=1)
    assert list(cb.probe.sampled_steps) == [0, 4, 8, 12]
    assert any((tmp_path / "elsewhere").glob("nnprobe-*.jsonl")) and not (tmp_path / "out" / "nnprobe").exists()
    assert cb.report_path is None and not (tmp_path / "out" / REPORT_NAME).exists()
    assert math.isfinite(cb.probe.losses()[1][-1])


def test_wandb_beside_the_trainers_own_wandb_logging(tmp_path, monkeypatch):
    """report_to=["wandb"] starts the run (its callback runs before user callbacks) and logs at its
    own steps; the probe's rows go into the same run, none dropped, at their own `nnprobe/step`."""
    wandb = pytest.importorskip("wandb")
    from test_wandb_sink import read_history

    for k, v in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true",
                 "WANDB_PROJECT": "nnprobe-test", "WANDB_CONSOLE": "off", "WANDB_DISABLE_GIT": "true"}.items():
        monkeypatch.setenv(k, v)
    torch.manual_seed(0)
    cb = NnprobeCallback(console=False, wandb=True, every=4)
    try:
        fit(TinyClassifier(TinyConfig()), tmp_path, cb, epochs=1, report_to=["wandb"], logging_steps=2)
        run_dir = os.path.dirname(wandb.run.dir)
    finally:
        wandb.finish()
    rows = read_history(run_dir)
    ours = [r for r in rows if "nnprobe/step" in r and "nnprobe/findings/_type" not in r]
    assert [r["nnprobe/step"] for r in ours] == list(cb.probe.sampled_steps) == [0, 4, 8, 12]
    assert all({"nnprobe/loss", "nnprobe/gradients/mlp.0.weight/rms", "nnprobe/updates/mlp.3.weight/ratio"} <= set(r)
               for r in ours)
    assert len([r for r in rows if "train/loss" in r]) == 8  # the Trainer's own rows, all there
    assert sum("nnprobe/findings/_type" in r for r in rows) == 1
