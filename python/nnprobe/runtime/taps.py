"""The recipe's taps on a watched run, gathered so that the probe calls them at four points
(before judging, at the end of a step's backward, after the optimizer step, at close):

- validation losses: loss calls under no_grad/inference_mode (the loss tap keeps them apart
  from the training ones) or `probe.step(val_loss=...)`: their mean per step is
  `StepFigures.val_loss` (`overfitting`, `no-validation`);
- the loss graph (`loss_graph`): the summed loss terms of judged steps ("loss-terms" events) and
  an upper clamp on the loss handed to `probe.step(loss=...)` ("loss-clamp");
- the first pretrained BatchNorm's input statistics at the first training forward, against its
  running statistics ("bn-input"; `pretrained-input-mismatch`); its pre-hooks go once they fired;
- the report's glimpses of the data (`glimpse`): the first batch, prediction dynamics.

Device figures travel through `Readback` and join the step they belong to when they arrive
(before that step is judged, when the copy is done by then; else the step they arrive in).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..figures import Event, StepFigures
from .glimpse import Glimpse
from .hooks import HookSet
from .loss_graph import LossGraph
from .state import LiveState
from .tensors import Readback


class RecipeTaps:
    def __init__(self, state: LiveState, model: torch.nn.Module, observer: Any, open_figs: deque[StepFigures],
                 current: Callable[[], StepFigures | None], ours: Callable[[], set[int]], *, distributed: bool) -> None:
        self.state = state
        self.observer = observer
        self.open = open_figs  # ended steps not judged yet
        self.current = current  # the step in progress (held weakly by the probe's getter)
        self.graph = LossGraph(state)
        observer.graph = self.graph
        self._bn_hooks = self.hookset = HookSet()
        self.glimpse = Glimpse(state, model, lambda: ours() | self.hookset.ids(), enabled=not distributed)
        self._pending: list[tuple[int, Any, Callable[[int, np.ndarray], None]]] = []
        self._bn_done = False
        for name, m in model.named_modules():
            if pretrained_bn(m):
                self._bn_hooks.forward_pre(m, self._bn_hook(name or "(root)", m))

    # ---- events into the right step
    def event_at(self, step: int, kind: str, data: dict[str, Any]) -> None:
        """An event for `step`: the step in progress, else an ended step not judged yet, else
        the step in progress with the step it belongs to in its data."""
        st = self.state
        if not st.checks_on:
            return
        if step != st.step:
            for figs in reversed(self.open):
                if figs.step == step:
                    figs.events.append(Event(kind, data))
                    return
        st.event(kind, **data)

    def _later(self, step: int, t: torch.Tensor, then: Callable[[int, np.ndarray], None]) -> None:
        if t.device.type == "cpu":
            then(step, t.detach().numpy())
        else:
            self._pending.append((step, Readback(t.detach()), then))

    def resolve(self, wait: bool = False) -> None:
        keep = []
        for step, rb, then in self._pending:
            if wait or rb.ready():
                then(step, rb.get())
            else:
                keep.append((step, rb, then))
        self._pending = keep

    # ---- the probe's call points
    def before_seal(self) -> None:
        """Device figures that have arrived go into their (not yet judged) steps."""
        if self._pending:
            self.resolve()

    def end_of_backward(self, figs: StepFigures, s: int) -> None:
        """The step's backward is done (optimizer pre-hook, or probe.step without optimizer)."""
        st, obs = self.state, self.observer
        vals, obs.val_values = obs.val_values, []
        tens, obs.val_tensors = obs.val_tensors, []
        if figs.val_loss is None:  # probe.step(val_loss=...) wins
            if vals and not tens:
                figs.val_loss = float(np.mean(vals))
            elif tens:
                t = torch.stack([x.float().reshape(()) for x in tens])
                n_host, host_sum = len(vals), float(np.sum(vals)) if vals else 0.0

                def then(step: int, v: np.ndarray) -> None:
                    self._set_val(step, (float(np.sum(v)) + host_sum) / (len(v) + n_host))

                self._later(s, t, then)
        for group, sizes in self.graph.summed_terms(s):
            self._later(s, sizes, self._terms_event([t.function for t in group]))
        if s == 0 or self.glimpse.batch is None:
            self.glimpse.take_first_batch(st.inputs, self.graph.first_call)
        if not self._bn_done and st.fwd_grad > 0:
            self._bn_done = True
            self._bn_hooks.remove()

    def after_step(self, s: int) -> None:
        if self.glimpse.due(s):
            try:
                self.glimpse.predict(s)
            except Exception as e:  # noqa: BLE001
                self.glimpse._fixed = None
                self.state.fail("prediction dynamics", e)

    def loss_given(self, loss: Any, step: int) -> None:
        """probe.step(loss=tensor): read its graph for an upper clamp."""
        for data, above in self.graph.clamps(loss, step):
            if above is None:
                continue
            self._later(step, above.reshape(1), self._clamp_event(data))

    def _terms_event(self, names: list[str]) -> Callable[[int, np.ndarray], None]:
        def then(step: int, v: np.ndarray) -> None:
            terms = [{"function": n, "size": float(a), "weight": float(w)} for n, (a, w) in zip(names, v)]
            self.event_at(step, "loss-terms", {"step": step, "terms": terms})

        return then

    def _clamp_event(self, data: dict[str, Any]) -> Callable[[int, np.ndarray], None]:
        def then(step: int, v: np.ndarray) -> None:
            self.event_at(step, "loss-clamp", {"step": step, **data, "above": int(v[0])})

        return then

    def at_close(self, figs: StepFigures) -> None:
        """Validation losses after the last step go into the close-time step."""
        self._bn_hooks.remove()
        obs = self.observer
        vals = list(obs.val_values) + [float(t.float()) for t in obs.val_tensors]
        obs.val_values, obs.val_tensors = [], []
        if vals and figs.val_loss is None:
            figs.val_loss = float(np.mean(vals))
        self.resolve(wait=True)
        self.graph.forget()

    def _set_val(self, step: int, value: float) -> None:
        for figs in reversed(self.open):
            if figs.step == step:
                figs.val_loss = value
                return
        cur = self.current()  # judged already: the step in progress takes it
        if cur is not None and cur.val_loss is None:
            cur.val_loss = value

    # ---- pretrained BatchNorm
    def _bn_hook(self, name: str, m: torch.nn.Module) -> Callable[..., None]:
        st = self.state

        def hook(module: Any, args: Any) -> None:
            if self._bn_done or module is not m or st.busy or st.closed or not torch.is_grad_enabled():
                return None
            self._bn_done = True  # the first normalisation layer to run is the one judged
            try:
                x = args[0] if args else None
                if not isinstance(x, torch.Tensor) or x.dim() < 2 or not x.is_floating_point():
                    return None
                xd = x.detach().float()
                dims = [0] + list(range(2, xd.dim()))
                mean, var = xd.mean(dims), xd.var(dims, unbiased=False)
                rm, rv = m.running_mean.detach().float(), m.running_var.detach().float()
                eps = float(getattr(m, "eps", 1e-5))

                def then(step: int, v: np.ndarray) -> None:
                    self._bn_event(step, name, v, eps)

                self._later(st.step, torch.stack([mean, var, rm, rv]), then)
            except Exception as e:  # noqa: BLE001
                st.fail("pretrained input check", e)
            return None

        return hook

    def _bn_event(self, step: int, name: str, v: np.ndarray, eps: float) -> None:
        from ..checks.inputs.pretrained_input import bn_input_figures

        self.event_at(step, "bn-input", {"module": name, **bn_input_figures(v[0], v[1], v[2], v[3], eps)})


def pretrained_bn(m: torch.nn.Module) -> bool:
    """A BatchNorm whose running statistics have seen data (a pretrained checkpoint)."""
    if not isinstance(m, torch.nn.modules.batchnorm._BatchNorm) or m.running_mean is None or m.running_var is None:
        return False
    n = getattr(m, "num_batches_tracked", None)
    if isinstance(n, torch.Tensor):
        return int(n) > 0
    return bool((m.running_mean != 0).any() or (m.running_var != 1).any())
