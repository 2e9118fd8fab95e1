"""Owning hooks: every hook a probe adds goes through a `HookSet`, which keeps the handle and
removes it. After `remove()` the modules', parameters' and optimizer's hook dicts are as they
were (a parameter that had no hook dict gets `None` back, not an empty dict).

Nothing is written onto user objects except through PyTorch's own hook registration.
"""

from __future__ import annotations

from typing import Any, Callable

import torch


class HookSet:
    """Handles of hooks registered together, removed together (idempotent)."""

    def __init__(self) -> None:
        self._handles: list[Any] = []
        # parameters whose hook dict was None before we registered: restored to None after
        self._restore: dict[int, tuple[torch.Tensor, str]] = {}

    def __len__(self) -> int:
        return len(self._handles)

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
