"""Iterations whose update never came: a `torch.amp.GradScaler` that found inf/NaN gradients
skips `optimizer.step()` (so no optimizer hook fires), lowers its scale and goes on. Those
gradients are expected; the probe must neither merge them into the next step's figures nor call
them `non-finite`. A run that keeps skipping is `loss-scale-collapse` (checks/precision).

How a skip is noticed, with no scaler argument: one parameter (the last trainable one of the
optimizer, the closest to the loss, which every backward reaches) carries a post-accumulate-grad
hook that marks the gradient each backward leaves on it (the tensor and its version counter).
The optimizer's step hooks clear the mark (and keep it clear while step() runs a closure). At
the next training forward, a mark still set (a backward, and no step since) whose gradient has
been cleared (`zero_grad()`: set to None, or zeroed in place, which bumps the version) means the
iteration ended without an update: the probe ends it as a step of its own, with a "skipped-step"
event. Gradient accumulation leaves the gradient exactly as its backward left it, so
micro-batches are never taken for skips.

A loop that calls `zero_grad()` between its forward and its backward shows its skip only at the
next backward (the hook finds the gradient it marked replaced or zeroed, with no step between):
that skip is counted ("skipped-step" with late=True) in the step that follows, whose figures
then hold the skipped iteration's as well.

Why not the scaler itself: finding `GradScaler` objects (gc, frames) is fragile and reaches into
user objects; its `unscale_` rewrites the gradients in place without bumping their version
counter (measured on torch 2.15), and its ops reach no hook the probe owns (a torch function
mode would see them, at a cost on every torch call). What any skipped step leaves behind, a
backward whose gradients were thrown away, is what the probe can see for the price of one
Python call per backward and one per forward; it also covers loops that skip on their own
(accelerate's `optimizer_step_was_skipped`, a skip on a non-finite gradient norm).

Optimizers that unscale and skip inside their own step (fused Adam/AdamW/SGD: those with
`_step_supports_amp_scaling`) get `optimizer.step()` called on every iteration: `GradScaler`
sets `optimizer.found_inf` (and `grad_scale`) for the length of that call, torch's documented
contract with such optimizers. The probe reads `found_inf` in its step pre-hook (`found_inf()`):
on the CPU at once, on a GPU copied without blocking and read at the next step, before the step
is judged; a non-zero value is a "skipped-step" event with fused=True, whose gradient figures
(still scaled, holding the inf/NaN) are not judged.

Scale: the gradients the optimizer hooks read are unscaled (`scaler.step` unscales them before
`optimizer.step()`), so gradient figures and update ratios are of the unscaled gradients. The
output gradients reduced during backward are of the backward as it ran: under a GradScaler
they are multiplied by the loss scale (the plan's rows say so: `of="backward"`).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch

from .hooks import HookSet, forget
from .state import LiveState


class SkipWatch:
    def __init__(self, state: LiveState, root: torch.nn.Module, param: torch.Tensor, hooks: HookSet,
                 on_skip: Callable[[bool], None]) -> None:
        self._state = state
        self._root = weakref.ref(root)
        self._hooks = hooks
        self._on_skip = on_skip
        self._param: weakref.ReferenceType[torch.Tensor] | None = None
        # the gradient the last backward left on the marked parameter, while no step came since
        self._mark: tuple[weakref.ReferenceType[torch.Tensor], int] | None = None
        self._in_step = False
        self.watch(param)
        hooks.forward_pre(root, self._pre_hook(), with_kwargs=True)

    def _pre_hook(self) -> Callable[..., None]:
        """A plain function, not a bound method: a deepcopy of the model copies its hook dicts, and a
        bound method would drag a copy of this object (and the probe's state) along."""

        def hook(module: Any, args: Any, kwargs: Any) -> None:
            if torch.compiler.is_compiling():
                return None
            if module is not self._root():
                forget(module, hook)  # an EMA copy of the watched model: take the hook off it
                return None
            return self._before_forward(module, args, kwargs)

        return hook

    def watch(self, param: torch.Tensor) -> None:
        """Mark `param` from now on (an earlier one that never got a gradient is dropped)."""
        if self._param is not None and self._param() is param:
            return
        self._param = weakref.ref(param)
        self._mark = None
        self._hooks.post_accumulate(param, self._after_backward)

    def marked(self) -> torch.Tensor | None:
        return None if self._param is None else self._param()

    def stepping(self, params: list[tuple[torch.Tensor, str, str]], in_optimizer: set[int]) -> None:
        """optimizer.step() came: the gradients are used. Until `stepped()`, forwards and
        backwards belong to the step (a closure: LBFGS). A marked parameter that got no gradient
        gives its place to the last one that did."""
        self._mark = None
        self._in_step = True
        p = self.marked()
        if p is None or p.grad is None:
            other = marker(params, in_optimizer, with_grad=True)
            if other is not None:
                self.watch(other)

    def stepped(self) -> None:
        self._mark = None
        self._in_step = False

    def _cleared(self, g: torch.Tensor | None) -> bool:
        assert self._mark is not None
        ref, version = self._mark
        return g is None or ref() is not g or g._version != version

    def _after_backward(self, p: torch.Tensor) -> None:
        st = self._state
        if st.busy or st.closed or self._in_step or self._param is None or self._param() is not p:
            return None  # a copy of the model, a parameter no longer marked, or a closure inside step()
        g = p.grad
        if g is None:
            return None
        try:
            mark = self._mark
            # accumulating into the marked gradient adds to it in place: one version; more than
            # one (zeroed, then accumulated) or another tensor: cleared since, with no step between
            if mark is not None and (mark[0]() is not g or g._version > mark[1] + 1):
                self._on_skip(True)
            self._mark = (weakref.ref(g), g._version)
        except Exception as e:  # noqa: BLE001 - diagnostics never break training
            st.fail("skipped steps", e)
        return None

    def _before_forward(self, module: Any, args: Any, kwargs: Any) -> None:
        st = self._state
        if self._mark is None or module is not self._root() or st.busy or st.closed or not torch.is_grad_enabled():
            return None
        try:
            p = self.marked()
            if self._cleared(None if p is None else p.grad):
                self._mark = None
                self._on_skip(False)
        except Exception as e:  # noqa: BLE001
            st.fail("skipped steps", e)
        return None


def marker(params: list[tuple[torch.Tensor, str, str]], in_optimizer: set[int], *,
           with_grad: bool = False) -> torch.Tensor | None:
    """The parameter to mark: the last trainable one in the optimizer (with a gradient, once
    the first backward has run)."""
    for p, _, _ in reversed(params):
        if p.requires_grad and id(p) in in_optimizer and (not with_grad or p.grad is not None):
            return p
    return None


def found_inf(opt: Any) -> torch.Tensor | None:
    """The flag a GradScaler hands an optimizer that skips inside its own step (see above)."""
    t = getattr(opt, "found_inf", None)
    return t if isinstance(t, torch.Tensor) else None
