"""What a probe sees of the loss: every call of a `torch.nn.functional` loss function while a
probe is open, whether it comes from a `torch.nn` loss module (they call these functions) or
straight from user code, inside the model or outside it.

How: while at least one probe is open, the loss functions in `torch.nn.functional` are replaced
by thin wrappers (and put back when the last probe closes; a wrapper that someone else has since
wrapped again is left in place and passes through). The cost is one Python call per loss call,
plus a check of the input format on a few rows. A torch function mode would also see code that
imported a loss function by name before the probe opened, but it runs Python on every torch
operation of the step: far too slow to leave on.

What it hands on: each training loss value (to the probe), and as events for the checks a few
figures of the loss inputs ("loss-input": `checks/loss/input_format.py` judges their format)
and the first training loss with its class count ("loss-init": `checks/loss/at_init.py`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from .state import LiveState
from .tensors import Readback

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
    """A probe's view of the loss calls (attached while the probe is open). It holds the probe's
    live state, never the probe."""

    def __init__(self, state: LiveState) -> None:
        self._state = state
        self._calls: dict[str, int] = {}
        self._pending: list[tuple[str, str, int, Readback]] = []
        self._init_done = False
        self.values: list[float] = []  # training loss values of the current step (host)
        self.tensors: list[torch.Tensor] = []  # the same, still on their device
        self.val_values: list[float] = []  # losses computed under no_grad (evaluations), host
        self.val_tensors: list[torch.Tensor] = []  # the same, still on their device
        self.graph: Any = None  # the probe's LossGraph, which tracks training loss calls on judged steps

    # called by the wrappers
    def observe(self, name: str, kind: str | None, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        st = self._state
        if st.busy or st.closed:
            return
        try:
            training = torch.is_grad_enabled()
            if training and isinstance(out, torch.Tensor) and out.numel() == 1:
                if out.device.type == "cpu":
                    self.values.append(float(out.detach()))
                else:
                    self.tensors.append(out.detach().reshape(()))
            elif isinstance(out, torch.Tensor) and out.numel() == 1:  # under no_grad: an evaluation's loss
                if out.device.type == "cpu":
                    self.val_values.append(float(out.detach()))
                else:
                    self.val_tensors.append(out.detach().reshape(()))
            if training and self.graph is not None and isinstance(out, torch.Tensor) and out.grad_fn is not None:
                self.graph.track(name, args, kwargs, out)  # runtime/loss_graph.py: summed terms, clamps
            if kind is None:
                return
            n = self._calls.get(name, 0)
            if n >= CHECK_FIRST and n % CHECK_EVERY and self._init_done:
                self._calls[name] = n + 1
                return  # the hot path after the first calls: only the value was wanted
            x, reduction = _input_and_reduction(args, kwargs)
            if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.numel() == 0:
                return
            self._calls[name] = n + 1
            if n < CHECK_FIRST or n % CHECK_EVERY == 0:
                vec, count = _format_vector(kind, x)
                self._pending.append((name, kind, count, Readback(vec) if isinstance(vec, torch.Tensor) else vec))
            if training and not self._init_done and reduction == "mean" and isinstance(out, torch.Tensor) and out.numel() == 1:
                self._init_done = True
                cdim = 1 if x.ndim >= 2 else 0
                classes = 2 if kind == "binary-logits" else int(x.shape[cdim])
                if classes >= 2:
                    v = out.detach().float().reshape(1)
                    self._pending.append((name, "init", classes, v.numpy() if v.device.type == "cpu" else Readback(v)))
            if out.device.type == "cpu" or len(self._pending) > 64:
                self.resolve()
        except Exception as e:  # noqa: BLE001 - diagnostics never break training
            st.fail("loss observation", e)

    def resolve(self, wait: bool = False) -> None:
        """Hand the figures that have reached the host to the checks, as events."""
        keep = []
        for name, kind, count, rb in self._pending:
            if not (wait or isinstance(rb, np.ndarray) or rb.ready()):
                keep.append((name, kind, count, rb))
                continue
            v = rb if isinstance(rb, np.ndarray) else rb.get()
            values = [float(a) for a in v]
            if kind == "init":
                self._state.event("loss-init", function=name, classes=count, value=values[0])
            else:
                self._state.event("loss-input", function=name, check=kind, count=count, values=values)
        self._pending = keep
