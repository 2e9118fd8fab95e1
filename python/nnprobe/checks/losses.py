"""What a probe sees of the loss: every call of a `torch.nn.functional` loss function while a
probe is open, whether it comes from a `torch.nn` loss module (they call these functions) or
straight from user code, inside the model or outside it.

How: while at least one probe is open, the loss functions in `torch.nn.functional` are replaced
by thin wrappers (and put back when the last probe closes; a wrapper that someone else has since
wrapped again is left in place and passes through). The cost is one Python call per loss call,
plus a check of the input format on a few rows. A torch function mode would also see code that
imported a loss function by name before the probe opened, but it runs Python on every torch
operation of the step: far too slow to leave on.

Judged here: `probabilities-into-loss` (cross_entropy / binary_cross_entropy_with_logits given
probabilities), `logits-into-nll` (nll_loss given anything but log-probabilities over the class
dimension), `loss-at-init`; and each training loss value is handed to the probe.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from .._tensor import Readback  # noqa: F401  (device inputs)

# function -> how its first argument is judged (None: only the value is observed)
TAPPED: dict[str, str | None] = {
    "cross_entropy": "logits",
    "nll_loss": "log-probs",
    "binary_cross_entropy_with_logits": "binary-logits",
    "binary_cross_entropy": None,
    "mse_loss": None,
    "l1_loss": None,
    "smooth_l1_loss": None,
    "huber_loss": None,
    "kl_div": None,
}

# format checks: every call for the first CHECK_FIRST calls of each function, then one in CHECK_EVERY
CHECK_FIRST = 100
CHECK_EVERY = 10
ROWS = 4  # rows (examples) of the input a format check reads

# how many checked calls in a row must look wrong before a finding (CE rows that sum to 1 are
# conclusive; values in [0, 1] handed to BCE-with-logits can happen by chance for a while)
STREAK = {"logits": 2, "log-probs": 2, "binary-logits": 10}

_observers: list[Any] = []
_originals: dict[str, Callable[..., Any]] = {}
_wrappers: dict[str, Callable[..., Any]] = {}

_is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", lambda: False)


def _wrap(name: str, kind: str | None, orig: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(orig)
    def loss_fn(*args: Any, **kwargs: Any) -> Any:
        out = orig(*args, **kwargs)
        if _observers and not _is_compiling():
            for obs in tuple(_observers):
                obs.observe(name, kind, args, kwargs, out)
        return out

    loss_fn.__nnprobe_original__ = orig  # type: ignore[attr-defined]
    return loss_fn


def attach(observer: Any) -> None:
    if not _observers:
        for name, kind in TAPPED.items():
            orig = getattr(F, name, None)
            if orig is None:
                continue
            _originals[name] = orig
            _wrappers[name] = _wrap(name, kind, orig)
            setattr(F, name, _wrappers[name])
    _observers.append(observer)


def detach(observer: Any) -> None:
    if observer in _observers:
        _observers.remove(observer)
    if not _observers:
        for name, orig in list(_originals.items()):
            if getattr(F, name, None) is _wrappers.get(name):
                setattr(F, name, orig)
            # else: someone wrapped our wrapper; it passes through with no observer
        _originals.clear()
        _wrappers.clear()


def _input_and_reduction(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, str]:
    x = args[0] if args else kwargs.get("input")
    reduction = kwargs.get("reduction", "mean")
    if kwargs.get("reduce") is False or kwargs.get("size_average") is False:
        reduction = "other"
    return x, reduction


def _format_vector(kind: str, x: torch.Tensor) -> tuple[Any, int]:
    """A few figures of the first rows of a loss input: a NumPy array for a CPU input (NumPy's
    small-array calls are several times cheaper than torch's), else a tensor on its device."""
    x = x.detach()
    cdim = 1 if x.ndim >= 2 else 0
    if x.ndim >= 2:
        x = x[:ROWS]
        for d in range(2, x.ndim):
            x = x.narrow(d, 0, min(4, x.shape[d]))
    if x.device.type == "cpu":
        a = x.numpy() if x.dtype in (torch.float32, torch.float64) else x.float().numpy()
        if kind == "logits":
            return np.array([a.min(), a.max(), np.abs(a.sum(axis=cdim) - 1).max()]), a.size
        if kind == "log-probs":
            m = a.max(axis=cdim, keepdims=True)
            lse = np.log(np.exp(a - m).sum(axis=cdim)) + m.squeeze(cdim)
            return np.array([a.max(), np.abs(lse).max()]), a.size
        return np.array([a.min(), a.max()]), a.size
    x = x.float()
    if kind == "logits":
        mn, mx = torch.aminmax(x)
        err = (x.sum(dim=cdim) - 1).abs().max()
        return torch.stack([mn, mx, err]), x.numel()
    if kind == "log-probs":
        lse = torch.logsumexp(x, dim=cdim).abs().max()
        return torch.stack([x.max(), lse]), x.numel()
    mn, mx = torch.aminmax(x)
    return torch.stack([mn, mx]), x.numel()


class LossObserver:
    """A probe's view of the loss calls (attached while the probe is open)."""

    def __init__(self, probe: Any) -> None:
        self._p = probe
        self._calls: dict[str, int] = {}
        self._streak: dict[str, int] = {}
        self._pending: list[tuple[str, str, int, int, Readback]] = []
        self._init_done = False
        self.values: list[float] = []  # training loss values of the current step (host)
        self.tensors: list[torch.Tensor] = []  # the same, still on their device

    # called by the wrappers
    def observe(self, name: str, kind: str | None, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        p = self._p
        if p._busy:
            return
        try:
            training = torch.is_grad_enabled()
            if training and isinstance(out, torch.Tensor) and out.numel() == 1:
                if out.device.type == "cpu":
                    self.values.append(float(out.detach()))
                else:
                    self.tensors.append(out.detach().reshape(()))
            if kind is None:
                return
            n = self._calls.get(name, 0)
            if n >= CHECK_FIRST and n % CHECK_EVERY and self._init_done:
                self._calls[name] = n + 1
                return  # the hot path after the first calls: only the value was wanted
            x, reduction = _input_and_reduction(args, kwargs)
            if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.numel() == 0:
                return
            n = self._calls.get(name, 0)
            self._calls[name] = n + 1
            if n < CHECK_FIRST or n % CHECK_EVERY == 0:
                vec, count = _format_vector(kind, x)
                self._pending.append((name, kind, count, p._step, vec if isinstance(vec, np.ndarray) else Readback(vec)))
            if training and not self._init_done and reduction == "mean" and isinstance(out, torch.Tensor) and out.numel() == 1:
                self._init_done = True
                cdim = 1 if x.ndim >= 2 else 0
                classes = 2 if kind == "binary-logits" else int(x.shape[cdim])
                if classes >= 2:
                    v = out.detach().float().reshape(1)
                    self._pending.append((name, "init", classes, p._step, v.numpy() if v.device.type == "cpu" else Readback(v)))
            if out.device.type == "cpu" or len(self._pending) > 64:
                self.resolve()
        except Exception as e:  # noqa: BLE001 - diagnostics never break training
            if type(e).__name__ == "DiagnosticError":
                raise
            p._fail("loss observation", e)

    def resolve(self, wait: bool = False) -> None:
        """Judge the format checks whose figures have reached the host."""
        keep = []
        for item in self._pending:
            if wait or isinstance(item[4], np.ndarray) or item[4].ready():
                self._judge(*item)
            else:
                keep.append(item)
        self._pending = keep

    def take_values(self) -> tuple[list[float], list[torch.Tensor]]:
        v, t = self.values, self.tensors
        self.values, self.tensors = [], []
        return v, t

    def _judge(self, name: str, kind: str, count: int, step: int, rb: Any) -> None:
        v = rb if isinstance(rb, np.ndarray) else rb.get()
        p = self._p
        if kind == "init":
            loss = float(v[0])
            expected = math.log(count)
            limit = max(2 * expected, expected + 1.0)
            if math.isfinite(loss) and loss > limit:
                what = f"{count} classes" if name != "binary_cross_entropy_with_logits" else "a binary target"
                p._emit(
                    "loss-at-init",
                    f"the first {name} loss is {loss:.4g}; with {what} a well-scaled init gives about "
                    f"ln {count} = {expected:.3g} (flagged above {limit:.3g})",
                    None, step,
                    {"loss": loss, "expected": expected, "limit": limit, "classes": count, "function": name},
                )
            return
        if kind == "logits":
            mn, mx, err = (float(a) for a in v)
            wrong = mn >= -1e-6 and mx <= 1 + 1e-6 and err < 1e-3
        elif kind == "log-probs":
            mx, lse = (float(a) for a in v)
            wrong = not (mx <= 1e-3 and lse < 0.05)
        else:
            mn, mx = (float(a) for a in v)
            wrong = mn >= 0.0 and mx <= 1.0 and count >= 16
        if not np.all(np.isfinite(v)):
            wrong = False  # non-finite inputs are the non-finite check's business
        streak = self._streak.get(name, 0) + 1 if wrong else 0
        self._streak[name] = streak
        if streak < STREAK[kind]:
            return
        if kind == "logits" and name == "cross_entropy":
            p._emit(
                "probabilities-into-loss",
                f"cross_entropy got probabilities: the checked rows lie in [{mn:.3g}, {mx:.3g}] and sum to 1 "
                f"(max |sum - 1| = {err:.2g}) over {streak} calls; it applies log_softmax itself",
                None, step, {"function": name, "min": mn, "max": mx, "row_sum_error": err, "calls": streak},
            )
        elif kind == "binary-logits":
            p._emit(
                "probabilities-into-loss",
                f"binary_cross_entropy_with_logits got values all in [{mn:.3g}, {mx:.3g}] for {streak} calls in a "
                "row: probabilities, not logits (it applies the sigmoid itself)",
                None, step, {"function": name, "min": mn, "max": mx, "calls": streak},
            )
        elif kind == "log-probs":
            what = "positive values (raw scores or probabilities)" if mx > 1e-3 else "rows that are not normalised"
            p._emit(
                "logits-into-nll",
                f"nll_loss got {what}: max {mx:.3g} (log-probabilities are <= 0) and |logsumexp| of a row up to "
                f"{lse:.3g} (0 for log_softmax over the class dimension)",
                None, step, {"function": name, "max": mx, "logsumexp_error": lse, "calls": streak},
            )
