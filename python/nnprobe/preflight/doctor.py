"""`doctor()`: the recipe's skeleton in order, on a model, its data, its loss and its optimizer:
inspect the data (target-in-input among its checks), lint the structure, check the
initialisation (pretrained-input-mismatch among its checks), check the gradients against finite
differences, check that examples stay independent, overfit one small batch, then a short
watched training run. One report.

Nothing of the user's is changed: the checks run in eval mode or on copies, and the watched run
trains a deep copy of the model with a copy of the optimizer.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..findings import Finding, Report

GRADIENT_SAMPLES = 4  # finite differences need a few examples, not a batch
OVERFIT_SAMPLES = 16  # Karpathy: overfit "a single batch of only a few examples"; TheDeepChecker uses 16
DATA_SAMPLES = 200_000  # cap on the samples inspect_data reads from the loader's dataset


@dataclass
class Stage:
    name: str
    report: Report | None
    note: str = ""

    @property
    def findings(self) -> list[Finding]:
        return list(self.report.findings) if self.report is not None else []


class DoctorReport(Report):
    """Every stage's report, in the recipe's order, and all their findings."""

    title = "doctor"

    def __init__(self, stages: list[Stage]) -> None:
        super().__init__([f for s in stages for f in s.findings])
        self.stages = stages

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"no stage {name!r}; stages: {[s.name for s in self.stages]}")

    def __str__(self) -> str:
        lines = [f"{self.title}: {'ok' if self.ok else 'problems found'}"]
        for s in self.stages:
            status = "skipped" if s.report is None else ("ok" if s.report.ok else "problems")
            lines.append(f"  [{s.name}] {status}" + (f": {s.note}" if s.note else ""))
            if s.report is not None:
                lines += [f"    {d}" for d in s.report.details()]
            lines += [f"    {f}".replace("\n", "\n    ") for f in s.findings]
        return "\n".join(lines)


def _device_of(model: Any) -> Any:
    p = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    return p.device if p is not None else None


def _to(batch: Any, device: Any) -> Any:
    import torch

    if device is None:
        return batch
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    return batch


def _head(x: Any, n: int) -> Any:
    import torch

    if isinstance(x, torch.Tensor):
        return x[:n]
    if isinstance(x, tuple):
        return tuple(_head(v, n) for v in x)
    return x


def _run_stage(name: str, fn: Callable[[], Report | None], note: str = "") -> Stage:
    """A stage that fails is reported as failed; the doctor goes on with the next one."""
    try:
        return Stage(name, fn(), note)
    except Exception as e:  # noqa: BLE001 - one broken stage must not hide the others
        return Stage(name, None, f"could not run: {type(e).__name__}: {e}")


class _WatchReport(Report):
    title = "watched run"

    def __init__(self, findings: list[Finding], losses: list[float]) -> None:
        super().__init__(findings)
        self.losses = losses

    def details(self) -> list[str]:
        if not self.losses:
            return []
        return [f"{len(self.losses)} steps, loss {self.losses[0]:.4g} -> {self.losses[-1]:.4g}"]


def doctor(model: Any, loader: Any, loss_fn: Callable, optimizer: Any, *, steps: int = 50) -> DoctorReport:
    """Runs the recipe's checks in order and returns one report: inspect_data on the loader's
    data, lint, check_init (with the data's class prior), check_gradients on 4 examples,
    check_batch_independence,
    overfit_one_batch on the first 16 examples of the first batch, then `steps` training steps of
    a copy of the model under `nnprobe.watch`."""
    import torch

    from .data import inspect_data
    from .deps import check_batch_independence
    from .gradients import check_gradients
    from .init import check_init, split_batch
    from .lint import lint
    from .recipe import clone_optimizer, overfit_one_batch

    device = _device_of(model)
    batch = _to(next(iter(loader)), device)
    x, y = split_batch(batch)
    stages: list[Stage] = []

    data = _run_stage("data", lambda: inspect_data(loader, max_samples=DATA_SAMPLES))
    stages.append(data)
    stages.append(_run_stage("lint", lambda: lint(model, x, loss_fn=loss_fn)))
    # the prior over the whole dataset beats one batch's: class counts, or regression target means
    counts = getattr(data.report, "class_counts", None) or None
    prior = counts if counts and all(isinstance(k, int) and k >= 0 for k in counts) else None
    target_mean = getattr(data.report, "target_mean", None)
    if prior is None and target_mean is not None:
        prior = target_mean
    stages.append(_run_stage("init", lambda: check_init(model, (x, y), loss_fn, prior=prior)))
    few = _head(x, GRADIENT_SAMPLES)
    stages.append(_run_stage("gradients", lambda: check_gradients(model, *(few if isinstance(few, tuple) else (few,))),
                             f"on the first {GRADIENT_SAMPLES} examples of the first batch"))
    if isinstance(x, torch.Tensor) and x.ndim >= 1 and len(x) >= 2:
        stages.append(_run_stage("batch independence", lambda: check_batch_independence(model, x)))
    else:
        stages.append(Stage("batch independence", None, "needs a batch tensor of at least 2 examples"))
    small = (_head(x, OVERFIT_SAMPLES), _head(y, OVERFIT_SAMPLES))
    stages.append(_run_stage("overfit one batch",
                             lambda: overfit_one_batch(model, small, loss_fn, optimizer=optimizer),
                             f"on the first {OVERFIT_SAMPLES} examples of the first batch"))

    import nnprobe

    watch = getattr(nnprobe, "watch", None)
    if watch is None:
        stages.append(Stage("watched run", None, "nnprobe.watch is not available in this build"))
    else:
        def watched() -> Report:
            from .deps import first_tensor
            from .init import call_model

            m = copy.deepcopy(model)
            opt = clone_optimizer(optimizer, model, m)
            m.train()
            losses: list[float] = []
            with watch(m, optimizer=opt, console=False) as probe:
                it = iter(loader)
                for _ in range(steps):
                    try:
                        b = next(it)
                    except StopIteration:
                        it = iter(loader)
                        b = next(it)
                    bx, by = split_batch(_to(b, device))
                    opt.zero_grad()
                    out = call_model(m, bx)
                    loss = loss_fn(first_tensor(out) if first_tensor(out) is not None else out, by)
                    loss.backward()
                    opt.step()
                    probe.step(loss=loss)
                    losses.append(float(loss.detach()))
            return _WatchReport(list(probe.findings), losses)

        stages.append(_run_stage("watched run", watched, f"{steps} steps on a copy of the model"))
    return DoctorReport(stages)
