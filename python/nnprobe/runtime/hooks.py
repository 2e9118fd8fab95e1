"""The probe's hooks: owned by a `HookSet`, which keeps every handle and removes them (after
`remove()` the modules', parameters' and optimizer's hook dicts are as they were; a parameter
that had no hook dict gets `None` back, not an empty dict), and the factories that make them.

Nothing is written onto user objects except through PyTorch's own hook registration. Every hook
closes over the probe's `LiveState`, never the probe, and checks that it runs for the module it
was made for: a `copy.deepcopy` of a watched model (an EMA copy, a frozen teacher) carries the
hook functions along, and they must stay silent there.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch

from .record import StepRecord
from .state import LiveState
from .tensors import INF, NAN, core_rows, first_float_tensor, host_input, local, readable


class HookSet:
    """Handles of hooks registered together, removed together (idempotent)."""

    def __init__(self) -> None:
        self._handles: list[Any] = []
        # parameters whose hook dict was None before we registered: restored to None after
        self._restore: dict[int, tuple[torch.Tensor, str]] = {}

    def __len__(self) -> int:
        return len(self._handles)

    def ids(self) -> set[int]:
        return {h.id for h in self._handles}

    def forward(self, module: torch.nn.Module, fn: Callable[..., Any]) -> None:
        self._handles.append(module.register_forward_hook(fn))

    def forward_pre(self, module: torch.nn.Module, fn: Callable[..., Any], *, with_kwargs: bool = False) -> None:
        self._handles.append(module.register_forward_pre_hook(fn, with_kwargs=with_kwargs))

    def tensor(self, t: torch.Tensor, fn: Callable[[torch.Tensor], Any]) -> None:
        """A gradient hook on a leaf tensor (a parameter) that outlives the step."""
        if t._backward_hooks is None:
            self._restore.setdefault(id(t) * 2, (t, "_backward_hooks"))
        self._handles.append(t.register_hook(fn))

    def post_accumulate(self, p: torch.Tensor, fn: Callable[[torch.Tensor], Any]) -> None:
        if getattr(p, "_post_accumulate_grad_hooks", None) is None:
            self._restore.setdefault(id(p) * 2 + 1, (p, "_post_accumulate_grad_hooks"))
        self._handles.append(p.register_post_accumulate_grad_hook(fn))

    def optimizer(self, opt: torch.optim.Optimizer, pre: Callable[..., Any], post: Callable[..., Any]) -> None:
        self._handles.append(opt.register_step_pre_hook(pre))
        self._handles.append(opt.register_step_post_hook(post))

    def remove(self) -> None:
        handles, self._handles = self._handles, []
        for h in reversed(handles):
            h.remove()
        restore, self._restore = self._restore, {}
        for t, attr in restore.values():
            if not getattr(t, attr, None):  # still empty: nobody else registered since
                setattr(t, attr, None)


def snapshot(model: torch.nn.Module, params: list[torch.Tensor], optimizers: list[Any]) -> dict[str, Any]:
    """Every hook dict and training flag of a model, its parameters and optimizers, as plain
    data (what tests compare before watch() and after close())."""
    out: dict[str, Any] = {}
    for name, m in model.named_modules():
        for attr in (
            "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
            "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs",
            "_state_dict_hooks", "_load_state_dict_pre_hooks",
        ):
            d = getattr(m, attr, None)
            out[f"{name}.{attr}"] = None if d is None else list(d.keys())
        out[f"{name}.training"] = m.training
    for i, p in enumerate(params):
        for attr in ("_backward_hooks", "_post_accumulate_grad_hooks"):
            d = getattr(p, attr, None)
            out[f"param{i}.{attr}"] = None if d is None else list(d.keys())
        out[f"param{i}.requires_grad"] = p.requires_grad
    for i, o in enumerate(optimizers):
        for attr in ("_optimizer_step_pre_hooks", "_optimizer_step_post_hooks"):
            out[f"opt{i}.{attr}"] = list(getattr(o, attr, {}).keys())
    return out


# ---------------------------------------------------------------------------------------------
# every step


def root_pre_hook(state: LiveState, root: torch.nn.Module, sensitive: list[tuple[str, torch.nn.Module]]) -> Callable[..., None]:
    """On the watched model, every forward. A training forward keeps a reference to its inputs
    (for locating a non-finite loss later) and counts itself; a forward without grad is an
    evaluation, whose Dropout/BatchNorm should be in eval mode."""
    is_grad_enabled = torch.is_grad_enabled
    is_compiling = torch.compiler.is_compiling

    def hook(module: Any, args: Any, kwargs: Any) -> None:
        if is_compiling():
            # traced into a compiled graph (model.compile(), or torch.compile after watch): do nothing
            # there; the probe sees the flag and keeps every hook out of the graph from then on
            state.traced = True
            return None
        if module is not root:
            forget(module, hook)  # a deepcopy of the watched model (an EMA copy): take the hook off it
            return None
        if state.closed or state.busy or state.rerun:
            return None
        if is_grad_enabled():
            if state.fwd_grad == 0:
                state.inputs = [(args, kwargs)]
            elif len(state.inputs) < 8:
                state.inputs.append((args, kwargs))
            state.fwd_grad += 1
        elif state.checks_on:
            if not state.evaluated:  # once a step: an evaluation happened (no-validation reads it)
                state.evaluated = True
                state.event("evaluated")
            try:
                training = [(n, m) for n, m in sensitive if m.training]
                # torch.optim.swa_utils.update_bn recalibrates BatchNorm this way on purpose
                if training and not all(getattr(m, "momentum", 0.1) is None for _, m in training):
                    state.event("eval-forward", modules=[n for n, _ in training])
            except Exception as e:  # noqa: BLE001 - diagnostics never break training
                state.fail("forward checks", e)
        return None

    return hook


def forget(module: torch.nn.Module, hook: Callable[..., Any]) -> None:
    """Remove `hook` from a module's forward (pre-)hooks (PyTorch iterates over a copy of them)."""
    for hooks, extras in ((module._forward_pre_hooks, (module._forward_pre_hooks_with_kwargs,)),
                          (module._forward_hooks, (module._forward_hooks_with_kwargs, module._forward_hooks_always_called))):
        for hid in [k for k, v in hooks.items() if v is hook]:
            del hooks[hid]
            for extra in extras:
                extra.pop(hid, None)


class ZeroGradSentinel:
    """A gradient hook on one parameter that notices the first backward after an optimizer step
    adding into the gradient that step used (same tensor, same version): no zero_grad() between.
    One parameter is enough (zero_grad() clears them all) and each costs a Python call per
    backward: the last one, usually the output layer, always in the graph."""

    def __init__(self, state: LiveState, param: torch.Tensor, name: str, hooks: HookSet) -> None:
        self.state = state
        self.param = weakref.ref(param)
        self.name = name
        # a plain float32/float64 CPU parameter: its gradient goes to the core as a NumPy view, no questions
        self._plain = type(param) is torch.nn.Parameter and param.device.type == "cpu" and param.dtype in (
            torch.float32, torch.float64)
        self._armed: tuple[Any, int, int] | None = None
        hooks.tensor(param, self._hook)

    def gradient_nonfinite(self) -> bool:
        """Is this parameter's gradient non-finite now? A non-finite loss makes every gradient so:
        an every-step check that needs no loss value. On the CPU only (a device would synchronise)."""
        p = self.param()
        g = None if p is None else p.grad
        if g is None:
            return False
        if not self._plain:
            g = local(g)  # a DTensor's local shard (FSDP2)
            if g.device.type != "cpu" or not readable(g):
                return False
        row = core_rows([g.detach().numpy() if self._plain else host_input(g)])[0]  # one pass in the core
        return bool(row[NAN] or row[INF])

    def arm(self, step: int) -> None:
        p = self.param()
        g = None if p is None else p.grad
        self._armed = (None, 0, step) if g is None else (weakref.ref(g), g._version, step)

    def _hook(self, grad: torch.Tensor) -> None:
        armed, st = self._armed, self.state
        if armed is None or st.busy or st.closed:
            return None
        self._armed = None  # only the first backward after a step is judged
        try:
            p = self.param()
            ref, version, step = armed
            cur = None if p is None else p.grad
            if cur is not None and ref is not None and ref() is cur and cur._version == version:
                st.event("zero-grad", param=self.name, after_step=step)
        except Exception as e:  # noqa: BLE001
            st.fail("zero_grad check", e)
        return None


# ---------------------------------------------------------------------------------------------
# sampled steps


def forward_hook(state: LiveState, owner: torch.nn.Module, act_row: int, grad_row: int, unit: str | None) -> Callable[..., None]:
    """Reduces a module's output at once (an in-place op may rewrite it later) and puts a hook on
    its gradient."""
    in_backward = getattr(torch._C, "_current_graph_task_id", lambda: -1)
    is_compiling = torch.compiler.is_compiling

    def hook(module: Any, args: Any, out: Any) -> None:
        if is_compiling():  # traced into a compiled graph: stay out of it (see root_pre_hook)
            state.traced = True
            return None
        if module is not owner:
            forget(module, hook)  # a deepcopy of the watched model: take the hook off it
            return None
        rec = state.record
        if rec is None or state.busy or not (state.rerun or torch.is_grad_enabled()) or in_backward() != -1:
            return None  # an evaluation, or activation-checkpoint recomputation during backward
        t0 = state.clock()
        try:
            if unit is not None and args:
                rec.forget_functional(args[0])
            t = first_float_tensor(out)
            if t is not None:
                if act_row >= 0 and "activations" not in state.off:
                    pub = rec.add(act_row, t)
                    rec.seen_act(act_row)
                    if unit is not None:
                        rec.unit_stats(act_row, unit, t, pub)
                    else:
                        rec.outputs[id(t)] = (act_row, t)  # a functional activation may take it
                if grad_row >= 0 and t.requires_grad and t.grad_fn is not None and "gradients" not in state.off:
                    t.register_hook(grad_hook(state, rec, grad_row))
        except Exception as e:  # noqa: BLE001
            state.fail("activations", e)
        rec.own_time += state.clock() - t0
        return None

    return hook


def grad_hook(state: LiveState, rec: StepRecord, row: int) -> Callable[[torch.Tensor], None]:
    def hook(g: torch.Tensor) -> None:
        if rec.closed or state.busy:
            return None
        t0 = state.clock()
        try:
            if readable(g):
                rec.add(row, g)
                rec.seen_grad(row)
        except Exception as e:  # noqa: BLE001
            state.fail("gradients", e)
        rec.own_time += state.clock() - t0
        return None

    return hook


def post_accumulate_hook(state: LiveState, row: int) -> Callable[[torch.Tensor], None]:
    """Without an optimizer: a parameter's gradient at its last accumulation (loops often clear
    gradients before probe.step())."""

    def hook(p: torch.Tensor) -> None:
        rec = state.record
        if rec is None or state.busy or p.grad is None or "gradients" in state.off:
            return None
        t0 = state.clock()
        try:
            if readable(p.grad):
                rec.set_latest(row, p.grad)
        except Exception as e:  # noqa: BLE001
            state.fail("gradients", e)
        rec.own_time += state.clock() - t0
        return None

    return hook
