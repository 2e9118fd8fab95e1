"""The recipe's sanity runs: overfit one batch (with Karpathy's input-independent baseline) and
check that a seeded run reproduces itself.

`overfit_one_batch` trains a deep copy of the model on one batch, in train mode but with Dropout
switched off (the recipe's "simplify: no regularisation"), with the given optimizer's class and
hyper-parameters (default Adam, lr 1e-3). It reaches its target when the loss falls to 5% of the
initial loss (or `target`). With `baseline`, a second copy from the same initial weights trains on
zeroed inputs: if the real inputs' best loss is not at least 25% lower (`BASELINE_RATIO`), the
model does not use its inputs (`input-independent`). A model that memorises the batch ends near 0
while the baseline can only fit the label distribution, so a working model clears this by far.
`cannot-overfit-batch` is an error when the loss is stuck, diverges, or some parameters get no
gradient; a warning when it is still falling, just too slowly for the steps given. A baseline that reaches the target itself (labels a
constant predictor can fit) makes the comparison inconclusive; that is said, not flagged.
"""

from __future__ import annotations

import copy
import inspect
import math
import random
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import InputError
from ..findings import Finding, Report
from .deps import first_tensor
from .init import call_model, split_batch

BASELINE_RATIO = 4.0 / 3.0  # the real inputs' best loss must be at least 25% lower than the baseline's
REPRO_RTOL = 1e-5  # relative difference below which two runs' losses count as equal
_DROPOUTS = ("Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout")


def _torch():
    import torch

    return torch


class OverfitReport(Report):
    """The loss curve on one batch, whether it reached the target, and the zeroed-input baseline."""

    title = "overfit one batch"

    def __init__(self, findings: list[Finding], *, losses: list[float], target: float, reached_at: int | None,
                 baseline: list[float] | None, notes: list[str]) -> None:
        super().__init__(findings)
        self.losses = losses
        self.target = target
        self.reached_at = reached_at
        self.baseline_losses = baseline
        self.notes = notes

    @property
    def reached(self) -> bool:
        return self.reached_at is not None

    @property
    def initial_loss(self) -> float:
        return self.losses[0] if self.losses else math.nan

    @property
    def final_loss(self) -> float:
        return self.losses[-1] if self.losses else math.nan

    def details(self) -> list[str]:
        if not self.losses:
            return self.notes
        got = f"reached at step {self.reached_at}" if self.reached else "not reached"
        lines = [f"loss {self.initial_loss:.4g} -> {self.final_loss:.4g} (best {min(self.losses):.4g}) in "
                 f"{len(self.losses)} steps; target {self.target:.4g} {got}"]
        if self.baseline_losses:
            lines.append(f"zeroed-input baseline: {self.baseline_losses[0]:.4g} -> best {min(self.baseline_losses):.4g}")
        return lines + self.notes


def clone_optimizer(optimizer: Any, model: Any, copy_model: Any) -> Any:
    """An optimizer of the same class and per-group hyper-parameters over `copy_model`'s
    parameters (matched to `model`'s by name); a factory callable is called with them; None
    gives Adam(lr=1e-3)."""
    torch = _torch()
    params = [p for p in copy_model.parameters() if p.requires_grad]
    if optimizer is None:
        return torch.optim.Adam(params, lr=1e-3)
    if not isinstance(optimizer, torch.optim.Optimizer):
        if callable(optimizer):
            return optimizer(copy_model.parameters())
        raise InputError(f"optimizer must be a torch.optim.Optimizer, a factory or None, got {type(optimizer).__name__}")
    by_id = {id(p): name for name, p in model.named_parameters()}
    copies = dict(copy_model.named_parameters())
    groups = []
    for g in optimizer.param_groups:
        ps = [copies[by_id[id(p)]] for p in g["params"] if id(p) in by_id and by_id[id(p)] in copies]
        if ps:
            groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": ps})
    if not groups:
        raise InputError("the optimizer holds none of the model's parameters")
    return type(optimizer)(groups, **optimizer.defaults)


def _train(model: Any, optimizer: Any, loss_fn: Callable, x: Any, y: Any, steps: int) -> list[float]:
    """Trains `model` in place on (x, y) and returns the loss of every step (stops at a non-finite one)."""
    model.train()
    for m in model.modules():
        if type(m).__name__ in _DROPOUTS:
            m.eval()
    losses: list[float] = []
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        out = call_model(model, x)
        loss = loss_fn(first_tensor(out) if first_tensor(out) is not None else out, y)
        if loss.ndim:
            loss = loss.mean()
        value = float(loss.detach())
        losses.append(value)
        if not math.isfinite(value):
            break
        loss.backward()
        optimizer.step()
    return losses


def _no_grad_params(model: Any) -> list[str]:
    """Trainable parameters that got no gradient (or an all-zero one) in the last backward."""
    return [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not bool(p.grad.abs().sum() > 0))]


def _zeros_like(x: Any) -> Any:
    torch = _torch()
    if isinstance(x, tuple):
        return tuple(_zeros_like(v) for v in x)
    return torch.zeros_like(x) if isinstance(x, torch.Tensor) else x


def _conflicting_labels(x: Any, y: Any) -> int:
    """Identical inputs with different labels in the batch: a target no model can reach."""
    torch = _torch()
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or y.ndim != 1 or len(x) != len(y):
        return 0
    from .. import core

    xs = x.detach().cpu().reshape(len(x), -1)
    if xs.dtype == torch.bfloat16:
        xs = xs.float()
    pairs = core.duplicate_rows(xs)
    if not len(pairs):
        return 0
    yl = y.detach().cpu()
    return int(sum(bool(yl[a] != yl[b]) for a, b in pairs))


def overfit_one_batch(model: Any, batch: Any, loss_fn: Callable, *, optimizer: Any = None, steps: int = 200,
                      target: float | None = None, baseline: bool = True, seed: int = 0) -> OverfitReport:
    """Trains a copy of `model` on one `batch` = (inputs, targets) for `steps` steps: it should
    reach `target` (default 5% of the initial loss); `cannot-overfit-batch` says why not. With
    `baseline`, the same initial weights trained on zeroed inputs must do clearly worse, else
    `input-independent`. The model, its optimizer and the global random state are left untouched."""
    torch = _torch()
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    x, y = split_batch(batch)
    findings: list[Finding] = []
    notes = ["Dropout is off while overfitting (the recipe's 'simplify: no regularisation')"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        start = copy.deepcopy(model)
        real = copy.deepcopy(start)
        losses = _train(real, clone_optimizer(optimizer, model, real), loss_fn, x, y, steps)
        dead = _no_grad_params(real) if losses and math.isfinite(losses[-1]) else []
        base: list[float] | None = None
        if baseline:
            torch.manual_seed(seed)
            zero = copy.deepcopy(start)
            base = _train(zero, clone_optimizer(optimizer, model, zero), loss_fn, _zeros_like(x), y, steps)
    if not losses:
        return OverfitReport([], losses=[], target=math.nan, reached_at=None, baseline=None, notes=["steps=0: nothing trained"])
    first = losses[0]
    goal = target if target is not None else 0.05 * first
    reached_at = next((i for i, v in enumerate(losses) if v <= goal), None)
    finite = [v for v in losses if math.isfinite(v)]
    best = min(finite) if finite else math.nan
    if reached_at is None:
        why, severity = _why(losses, first, best, goal, dead, _conflicting_labels(x, y))
        findings.append(Finding(
            "cannot-overfit-batch", severity,
            f"after {len(losses)} steps the loss on one batch is {losses[-1]:.4g} (best {best:.4g}, start {first:.4g}); "
            f"target {goal:.4g} not reached: {why}",
            hint="check the loss and the labels, raise the learning rate, check that gradients reach every layer",
            data={"initial": first, "best": best, "final": losses[-1], "target": goal, "no_grad": dead[:20]},
        ))
    if base:
        base_best = min((v for v in base if math.isfinite(v)), default=math.nan)
        if base_best <= goal:
            notes.append(f"the zeroed-input baseline reaches the target too ({base_best:.4g}): a constant prediction fits "
                         "these labels, so the baseline cannot tell whether the inputs are used (use a more varied batch)")
        elif math.isfinite(best) and math.isfinite(base_best) and best > 0.9 * first and base_best > 0.9 * base[0] \
                and abs(best - base_best) > 0.01 * max(first, base[0]):
            notes.append("neither the real nor the zeroed-input run learned, with different losses: the baseline "
                         "comparison is inconclusive until the model trains")
        elif math.isfinite(best) and math.isfinite(base_best) and not best * BASELINE_RATIO <= base_best:
            findings.append(Finding(
                "input-independent", "error",
                f"trained on zeroed inputs the same model reaches {base_best:.4g}, trained on the real inputs {best:.4g}: "
                "the real inputs do not help (less than 25% lower)",
                hint="check that the inputs reach the model (not detached, not overwritten, not multiplied by zero) and "
                "that inputs and labels are paired correctly",
                data={"real_best": best, "zero_best": base_best},
            ))
    return OverfitReport(findings, losses=losses, target=goal, reached_at=reached_at, baseline=base, notes=notes)


def _why(losses: list[float], first: float, best: float, goal: float, dead: list[str], conflicts: int) -> tuple[str, str]:
    """Why the target was missed, and how bad that is."""
    if not math.isfinite(losses[-1]):
        return f"the loss became {losses[-1]} at step {len(losses) - 1}: the learning rate is too high or the model overflows", "error"
    reasons = []
    severity = "error"
    if conflicts:
        reasons.append(f"the batch holds {conflicts} identical inputs with different labels, so the target is unreachable")
    if dead:
        shown = ", ".join(dead[:4]) + (", ..." if len(dead) > 4 else "")
        reasons.append(f"{len(dead)} trainable parameters get no gradient ({shown}): a detached or unused branch")
    if best > 0.9 * first:
        reasons.append("the loss barely moved: the learning rate is far too low, the parameters are frozen or not in the "
                       "optimizer, or the loss does not depend on them")
    elif losses[-1] > 1.5 * best:
        reasons.append("the loss went down then back up: the learning rate is too high")
    else:
        reasons.append("the loss is still falling, too slowly for the steps given: raise the learning rate or the "
                       "steps, or check the model's capacity")
        if not conflicts and not dead:
            severity = "warning"
    return "; ".join(reasons), severity


class ReproReport(Report):
    """Two seeded runs' losses side by side."""

    title = "reproducibility"

    def __init__(self, findings: list[Finding], first: list[float], second: list[float]) -> None:
        super().__init__(findings)
        self.first = first
        self.second = second

    def details(self) -> list[str]:
        return [f"run 1: {_fmt(self.first)}", f"run 2: {_fmt(self.second)}"]


def _fmt(xs: list[float]) -> str:
    return "[" + ", ".join(f"{v:.6g}" for v in xs[:8]) + (", ..." if len(xs) > 8 else "") + "]"


def _seed_all(seed: int) -> None:
    torch = _torch()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_reproducible(train_fn: Callable[..., Any], *, seed: int = 0, steps: int = 5, rtol: float = REPRO_RTOL) -> ReproReport:
    """Seeds Python, NumPy and torch with `seed`, calls `train_fn(steps=steps)` (which returns its
    per-step losses), twice, and compares: `not-reproducible` when they differ by more than `rtol`.
    The global random states are restored afterwards."""
    torch = _torch()
    takes_steps = "steps" in inspect.signature(train_fn).parameters if callable(train_fn) else False
    py_state, np_state = random.getstate(), np.random.get_state()
    runs: list[list[float]] = []
    try:
        with torch.random.fork_rng(devices=[]):
            for _ in range(2):
                _seed_all(seed)
                out = train_fn(steps=steps) if takes_steps else train_fn()
                runs.append([float(v) for v in (out.tolist() if hasattr(out, "tolist") else out)])
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    a, b = runs
    findings: list[Finding] = []
    if len(a) != len(b):
        findings.append(Finding("not-reproducible", "warning", f"the two runs logged {len(a)} and {len(b)} losses",
                                hint="make the number of steps independent of randomness", data={"run1": a, "run2": b}))
    else:
        diffs = [abs(u - v) / max(abs(u), abs(v), 1e-12) if (u != v and not (math.isnan(u) and math.isnan(v))) else 0.0
                 for u, v in zip(a, b)]
        bad = [i for i, d in enumerate(diffs) if d > rtol]
        if bad:
            i = bad[0]
            findings.append(Finding(
                "not-reproducible", "warning",
                f"with the same seed the runs differ from step {i}: {a[i]:.6g} vs {b[i]:.6g} "
                f"(relative difference {diffs[i]:.2g}; {len(bad)} of {len(a)} steps differ)",
                step=i,
                hint="seed every random source the run uses (a torch.Generator, DataLoader workers via worker_init_fn, "
                "random/numpy in augmentations); torch.use_deterministic_algorithms(True) for kernels",
                data={"first_step": i, "max_rel_diff": max(diffs), "run1": a, "run2": b},
            ))
    return ReproReport(findings, a, b)
