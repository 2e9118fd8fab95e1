"""What a probe sees of the loss and of functional activations: a torch function mode (no
patching of torch's namespace), open on the steps the checks judge.

A function mode sees every call of a `torch.nn.functional` loss (from a `torch.nn` loss module,
from user code inside the model or outside it, and a function imported by name before or after
`watch()`) and every `F.relu` / `torch.tanh` / `torch.sigmoid` call inside a forward. It also
runs Python on every torch operation while it is open (about 2.8 us each, 40% of a small MLP's
step), so it is open only on judged sampled steps, which already pay for the heavy statistics;
the loss of the other steps comes from `probe.step(loss=...)`. Which steps those are depends on
the step count alone, so what it sees does not depend on the machine's speed.

What it hands on: each training loss value (to the probe); as events for the checks, a few
figures of the loss inputs ("loss-input": `checks/loss/input_format.py` judges their format)
and the first training loss with its class count ("loss-init": `checks/loss/at_init.py`); and
the dead-unit / saturation figures of a watched module whose output a functional relu, tanh or
sigmoid took (into the sampled step's record, under that module's row).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode, _get_current_function_mode_stack, _pop_mode, _push_mode

from .state import LiveState
from .tensors import Readback

# loss function -> how its first argument is judged (None: only the value is observed)
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
# functional activations whose output says something of the units: dead (relu), saturated
UNITS: dict[Callable[..., Any], str] = {
    F.relu: "relu", torch.relu: "relu", torch.Tensor.relu: "relu",
    torch.tanh: "tanh", F.tanh: "tanh", torch.Tensor.tanh: "tanh",
    torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", torch.Tensor.sigmoid: "sigmoid",
}

# format checks: every call for the first CHECK_FIRST calls of each function, then one in CHECK_EVERY
CHECK_FIRST = 100
CHECK_EVERY = 10
ROWS = 4  # rows (examples) of the input a format check reads


class FunctionTap(TorchFunctionMode):
    """The function mode; `open()` and `close()` bracket a judged step."""

    def __init__(self, observer: LossObserver) -> None:
        super().__init__()
        self.observer = observer
        self._losses = {fn: (name, kind) for name, kind in TAPPED.items() if (fn := getattr(F, name, None)) is not None}
        self.is_open = False

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        loss = self._losses.get(func)
        if loss is not None:
            self.observer.observe(loss[0], loss[1], args, kwargs, out)
        else:
            unit = UNITS.get(func)
            if unit is not None:
                self.observer.functional(unit, args, kwargs, out)
        return out

    def open(self) -> None:
        if not self.is_open:
            _push_mode(self)
            self.is_open = True

    def close(self) -> None:
        """Leave the mode stack, also when other modes were pushed above it since (they stay)."""
        if not self.is_open:
            return
        self.is_open = False
        if not any(m is self for m in _get_current_function_mode_stack()):
            return
        above = []
        while True:
            top = _pop_mode()
            if top is self:
                break
            above.append(top)
        for m in reversed(above):
            _push_mode(m)


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
        self._pending: list[tuple[str, str, int, np.ndarray | Readback]] = []
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

    def functional(self, unit: str, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        """A functional relu/tanh/sigmoid on a watched module's output: its units' figures, under
        that module's row."""
        st = self._state
        rec = st.record
        if rec is None or st.busy or st.closed or not torch.is_grad_enabled() or not isinstance(out, torch.Tensor):
            return
        try:
            rec.functional_unit(args[0] if args else kwargs.get("input"), unit, out)
        except Exception as e:  # noqa: BLE001 - diagnostics never break training
            st.fail("functional activations", e)

    def resolve(self, wait: bool = False) -> None:
        """Hand the figures that have reached the host to the checks, as events."""
        keep: list[tuple[str, str, int, np.ndarray | Readback]] = []
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
