"""Re-running a step's saved inputs under no_grad, outside the training step and outside any
compiled graph, with the RNG state and the buffers (BatchNorm running statistics) restored
afterwards so that training is unchanged:

- `locate`: where did NaN/Inf first appear? The first module whose output is non-finite while
  its inputs are finite. Done before the optimizer applies the step.
- `rerun`: the activation figures of a compiled model on a judged step. Hooks inside a compiled
  graph are traced (graph breaks, recompilations), so a compiled model gets none; this eager
  forward of its original modules, with hooks added and removed around it, takes their place.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from ..figures import ROOT, Plan
from .hooks import HookSet
from .state import LiveState
from .tensors import readable, tensors_in


def _finite(obj: Any) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors_in(obj) if readable(t))


def locate(model: torch.nn.Module, inputs: list[tuple[Any, Any]], state: LiveState, plan: Plan
           ) -> tuple[str | None, str, dict[str, Any]]:
    """(module or None, what happened, data)."""
    for args, kwargs in inputs:
        if not _finite((args, kwargs)):
            return None, "the input batch itself holds NaN/Inf", {"origin": "input"}
    names = {id(m): name or ROOT for name, m in model.named_modules()}
    found: list[tuple[str, bool]] = []

    def hook(m: Any, a: Any, out: Any) -> None:
        if not found and not _finite(out):
            found.append((names.get(id(m), type(m).__name__), _finite(a)))

    with _replaying(model, state, [(m, hook) for m in model.modules()], busy=True):
        for args, kwargs in inputs:
            model(*args, **kwargs)
            if found:
                break
    if not found:
        return None, "every module's output is finite on a re-run: the loss computation itself made it", {"origin": "loss"}
    name, inputs_finite = found[0]
    mod = dict(model.named_modules()).get("" if name == ROOT else name)
    bad_w = mod is not None and not _finite(list(mod.parameters(recurse=False)))
    msg = f"NaN/Inf first appears in the output of {plan.label(name)}"
    if bad_w:
        msg += "; its weights are already non-finite (a non-finite gradient or update at an earlier step)"
    return name, msg, {"origin": "weights" if bad_w else "forward", "inputs_finite": inputs_finite}


def rerun(model: torch.nn.Module, inputs: list[tuple[Any, Any]], state: LiveState,
          hooks: list[tuple[torch.nn.Module, Callable[..., Any]]]) -> None:
    """One eager no-grad forward of the step's first inputs with `hooks` on (they see
    `state.rerun` set and reduce what they see into the step's record)."""
    if not inputs:
        return
    args, kwargs = inputs[0]
    with _replaying(model, state, hooks, busy=False):
        model(*args, **kwargs)


@contextmanager
def _replaying(model: torch.nn.Module, state: LiveState, hooks: list[tuple[torch.nn.Module, Callable[..., Any]]],
               *, busy: bool) -> Iterator[None]:
    hs = HookSet()
    for m, fn in hooks:
        hs.forward(m, fn)
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    state.busy, state.rerun = busy, not busy
    try:
        with torch.no_grad():
            yield
    finally:
        state.busy = state.rerun = False
        hs.remove()
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        with torch.no_grad():
            for b, v in saved:
                b.copy_(v)
