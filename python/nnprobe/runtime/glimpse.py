"""What the report shows of the data (Karpathy's recipe: "visualize just before the net",
"visualize prediction dynamics"):

- the first batch exactly as the model got it: the first tensor argument of the first training
  forward (up to BATCH_KEEP examples), and the first training loss call's targets;
- the model's predictions on one fixed batch (the first PRED_KEEP examples of that first batch)
  over the run: p(true class) per example for classifiers (mean over positions for sequence
  models), else the first output value. They are taken after the optimizer step on steps chosen
  by step count (every step up to PRED_FIRST, then a gap of step / PRED_DENSITY: about 50 by step
  1000, 70 by step 10000), by one extra forward of the fixed examples in eval mode under no_grad,
  with the random state forked and every module's mode restored and the probe's own hooks off.
  In eval mode BatchNorm does not update its buffers and Dropout draws no random numbers: the
  training does not change. When any module carries a hook that is not the probe's (a user's
  feature hook, weight_norm, another probe) the forward is not run at all: that hook would see
  an extra call. The modules' plain Python attributes are put back after it, and a forward that
  changed any (a call counter, a cache) is not run again. A compiled model is run through its eager module (no recompile);
  under torch.distributed nothing is run (a rank-local forward could hang a sharded model).
  Its cost, on the demo's MLP: see `nnprobe.report.views` and the issue note.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .state import LiveState
from .tensors import Readback, first_float_tensor

BATCH_KEEP = 64
PRED_KEEP = 16
PRED_FIRST = 5
PRED_DENSITY = 8
PRED_MAX = 256  # past this many, every other one is dropped


_PLAIN = (int, float, bool, str, bytes, tuple, type(None))


def _python_state(model: torch.nn.Module) -> list[tuple[Any, str, bool, Any, Any]]:
    """The modules' own plain attributes (numbers, strings, tuples; shallow copies of lists and
    dicts): what a forward with side effects (a call counter, a cache) would change."""
    out = []
    for m in model.modules():
        for k, v in m.__dict__.items():
            if k.startswith("_") or k == "training":
                continue
            if isinstance(v, _PLAIN):
                out.append((m, k, False, v, None))
            elif type(v) in (list, dict):
                out.append((m, k, True, v, v.copy()))
    return out


def _restore_python_state(saved: list[tuple[Any, str, bool, Any, Any]]) -> bool:
    """Puts back what the extra forward changed; True when it changed anything."""
    changed = False
    for m, k, container, v, copy_ in saved:
        cur = m.__dict__.get(k)
        if container:
            if cur is not v or v != copy_:
                changed = True
                if type(v) is list:
                    v[:] = copy_
                else:
                    v.clear()
                    v.update(copy_)
                m.__dict__[k] = v
        elif cur is not v and not (type(cur) is type(v) and cur == v):
            changed = True
            m.__dict__[k] = v
    return changed


def _first_tensor(args: Any, kwargs: Any) -> torch.Tensor | None:
    for v in list(args) + list(kwargs.values()):
        if isinstance(v, torch.Tensor) and v.dim() >= 1:
            return v
    return None


def _slice(obj: Any, b: int, k: int) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach()[:k].clone() if obj.dim() >= 1 and obj.shape[0] == b else obj
    if isinstance(obj, tuple):
        return tuple(_slice(v, b, k) for v in obj)
    if isinstance(obj, list):
        return [_slice(v, b, k) for v in obj]
    if isinstance(obj, dict):
        return {key: _slice(v, b, k) for key, v in obj.items()}
    return obj


class Glimpse:
    def __init__(self, state: LiveState, model: torch.nn.Module, ours: Callable[[], set[int]], *, enabled: bool) -> None:
        self.state = state
        self.ours = ours  # ids of the probe's own hook handles
        self.model = model
        self.enabled = enabled
        self.batch: torch.Tensor | None = None
        self.targets: torch.Tensor | None = None
        self._fixed: tuple[Any, Any] | None = None
        self._fixed_targets: torch.Tensor | None = None
        self._next = 0
        self.pred_steps: list[int] = []
        self._preds: list[Any] = []  # Readback or np.ndarray
        self.pred_kind: str | None = None  # "p_true" or "output"
        self.cost: list[float] = []  # seconds per prediction forward

    def take_first_batch(self, inputs: list[tuple[Any, Any]], first_call: tuple[str, Any] | None) -> None:
        if self.batch is not None or not inputs:
            return
        args, kwargs = inputs[0]
        x = _first_tensor(args, kwargs or {})
        if x is None:
            return
        b = x.shape[0]
        self.batch = x.detach()[:BATCH_KEEP].clone()
        target = first_call[1] if first_call is not None else None
        if isinstance(target, torch.Tensor) and target.dim() >= 1 and target.numel() % b == 0 and target.numel() >= b:
            self.targets = target.reshape(b, -1)[:BATCH_KEEP].clone()
            if target.dim() == 1 and target.numel() == b:
                self.targets = self.targets.reshape(-1)
        if self.enabled:
            self._fixed = (_slice(tuple(args), b, PRED_KEEP), _slice(dict(kwargs or {}), b, PRED_KEEP))
            self._fixed_targets = None if self.targets is None else self.targets[:PRED_KEEP]

    def due(self, step: int) -> bool:
        return self._fixed is not None and step >= self._next

    def predict(self, step: int) -> None:
        """One no_grad, eval-mode forward of the fixed examples; nothing of the training changes."""
        st = self.state
        self._next = step + (1 if step < PRED_FIRST else max(1, step // PRED_DENSITY))
        assert self._fixed is not None
        args, kwargs = self._fixed
        model = getattr(self.model, "_orig_mod", self.model)  # torch.compile(model): its eager module
        if self._foreign_hooks(model):
            return
        call = model._call_impl if getattr(model, "_compiled_call_impl", None) is not None else model
        modes = [(m, m.training) for m in model.modules()]
        devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
        saved = _python_state(model)
        t0 = st.clock()
        st.busy = True
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                model.eval()
                out = first_float_tensor(call(*args, **kwargs))
        finally:
            for m, was in modes:
                m.training = was
            st.busy = False
            if _restore_python_state(saved):
                self._fixed = None  # a forward with Python side effects (a call counter, a cache): undone, and not again
        if out is None or out.dim() < 1:
            return
        vec = self._figure(out.detach().float())
        if vec is None:
            return
        self.pred_steps.append(step)
        self._preds.append(vec.numpy() if vec.device.type == "cpu" else Readback(vec))
        if len(self.pred_steps) > PRED_MAX:
            self.pred_steps, self._preds = self.pred_steps[::2], self._preds[::2]
        self.cost.append(st.clock() - t0)

    def _foreign_hooks(self, model: torch.nn.Module) -> bool:
        from torch.nn.modules import module as M

        if any(getattr(M, g, None) for g in ("_global_forward_hooks", "_global_forward_pre_hooks",
                                             "_global_backward_hooks", "_global_backward_pre_hooks")):
            return True
        ours = self.ours()
        for m in model.modules():
            for d in (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks, m._backward_pre_hooks):
                if d and any(k not in ours for k in d):
                    return True
        return False

    def _figure(self, out: torch.Tensor) -> torch.Tensor | None:
        k = out.shape[0]
        t = self._fixed_targets
        if t is not None and not t.is_floating_point() and out.dim() >= 2:
            t = t[:k].to(out.device)
            classes = out.shape[-1]
            probs = out.softmax(-1)
            if out.dim() == 2 and t.dim() == 1 and t.shape[0] == k:
                tt = t.long()
                ok = (tt >= 0) & (tt < classes)
                p = probs.gather(1, tt.clamp(0, classes - 1)[:, None])[:, 0]
                self.pred_kind = "p_true"
                return torch.where(ok, p, torch.full_like(p, float("nan")))
            if out.dim() == 3 and t.reshape(k, -1).shape[1] == out.shape[1]:
                tt = t.reshape(k, -1).long()
                ok = (tt >= 0) & (tt < classes)
                p = probs.gather(2, tt.clamp(0, classes - 1)[..., None])[..., 0]
                self.pred_kind = "p_true"
                return (p * ok).sum(1) / ok.sum(1).clamp(min=1)
        self.pred_kind = "output"
        return out.reshape(k, -1)[:, 0]

    # ---- the public accessors' data
    def first_batch(self) -> dict[str, Any] | None:
        if self.batch is None:
            return None
        x = self.batch
        return {"inputs": (x.float() if x.dtype == torch.bfloat16 else x).cpu().numpy(),
                "targets": None if self.targets is None else self.targets.cpu().numpy()}

    def predictions(self) -> dict[str, Any] | None:
        if not self.pred_steps:
            return None
        rows = [p.get() if isinstance(p, Readback) else p for p in self._preds]
        width = max(len(r) for r in rows)
        mat = np.full((len(rows), width), np.nan)
        for i, r in enumerate(rows):
            mat[i, : len(r)] = r
        targets = None if self._fixed_targets is None else self._fixed_targets.cpu().numpy()
        return {"steps": np.array(self.pred_steps, dtype=np.int64), "values": mat, "kind": self.pred_kind,
                "targets": targets, "seconds": float(np.median(self.cost)) if self.cost else None}
