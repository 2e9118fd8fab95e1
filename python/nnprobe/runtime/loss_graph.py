"""What the loss's autograd graph says, on judged steps: the loss terms one backward sums (for
`loss-scale-mismatch`) and an upper clamp on the loss (for `loss-clipped`).

- Terms: the loss tap hands every training loss-function call of a judged step to `track`,
  which puts a gradient hook on its output. In backward the hook sees d(total)/d(term): the
  weight the user's sum gives the term (including a GradScaler's scale, the same for all), so
  |grad x term| is the term's size in the total. Calls reached by the same backward (the same
  graph task) were summed by it.
- Clamps: the graph of the loss handed to `probe.step(loss=...)` is walked from its root
  through the ops that combine losses (add, mul, mean, views...) down to the tracked loss
  outputs. An upper clamp met on the way (ClampBackward with a max, ClampMaxBackward,
  MinimumBackward with a constant) is read with its cap; the examples above it are counted
  from the tracked output's values (the clamp's own saved input is freed by backward).

Nothing here synchronises a device inside the step: device figures go through `Readback`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .state import LiveState

MAX_TERMS = 16  # loss calls tracked per judged step
MAX_NODES = 256  # nodes of the combination part of a graph walked
CLAMPS = {"ClampBackward0", "ClampBackward1", "ClampMaxBackward0", "MinimumBackward0"}
# ops that combine or reshape losses on the way from the loss functions to the total
COMBINE = {
    "AddBackward0", "AddBackward1", "SubBackward0", "SubBackward1", "RsubBackward0", "RsubBackward1",
    "MulBackward0", "MulBackward1", "DivBackward0", "DivBackward1", "NegBackward0", "MeanBackward0",
    "MeanBackward1", "SumBackward0", "SumBackward1", "ViewBackward0", "UnsafeViewBackward0", "ReshapeAliasBackward0",
    "SqueezeBackward0", "SqueezeBackward1", "SqueezeBackward2", "SqueezeBackward3", "UnsqueezeBackward0",
    "ExpandBackward0", "CloneBackward0", "ToCopyBackward0", "StackBackward0", "CatBackward0", "WhereBackward0",
    "SelectBackward0", "SliceBackward0", "IndexBackward0", "MaskedFillBackward0", "MaskedSelectBackward0",
}
VIEWS = {"ViewBackward0", "UnsafeViewBackward0", "ReshapeAliasBackward0", "SqueezeBackward0", "SqueezeBackward1",
         "SqueezeBackward2", "SqueezeBackward3", "UnsqueezeBackward0", "CloneBackward0", "ToCopyBackward0"}

_task_id = getattr(torch._C, "_current_graph_task_id", lambda: -1)


@dataclass
class Term:
    step: int
    function: str
    out: torch.Tensor  # the loss function's output (holds its graph until the next judged step)
    size: torch.Tensor | None = None  # sum |grad x out|, set in backward
    weight: torch.Tensor | None = None  # sum |grad|
    task: int = -1


class LossGraph:
    def __init__(self, state: LiveState) -> None:
        self.state = state
        self.terms: list[Term] = []
        self.first_call: tuple[str, Any] | None = None  # (function, target) of the first training loss call

    # ---- from the loss tap, every training loss call
    def track(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], out: torch.Tensor) -> None:
        st = self.state
        if self.first_call is None:
            target = args[1] if len(args) > 1 else kwargs.get("target")
            self.first_call = (name, target.detach() if isinstance(target, torch.Tensor) else None)
        rec = st.record
        if rec is None or not rec.judged or len(self.terms) >= MAX_TERMS or not out.requires_grad:
            return
        term = Term(st.step, name, out)
        out.register_hook(self._hook(term))
        self.terms.append(term)

    def _hook(self, term: Term) -> Callable[[torch.Tensor], None]:
        def hook(g: torch.Tensor) -> None:
            try:
                if term.size is None and g.shape == term.out.shape:
                    g = g.detach()
                    term.size = (g.double() * term.out.detach().double()).abs().sum()
                    term.weight = g.double().abs().sum()
                    term.task = _task_id()
            except Exception as e:  # noqa: BLE001 - diagnostics never break training
                self.state.fail("loss terms", e)
            return None

        return hook

    # ---- at the end of a step
    def summed_terms(self, step: int) -> list[tuple[list[Term], torch.Tensor]]:
        """Groups of two or more of this step's terms that one backward reached, each with its
        [k, 2] tensor of (size, weight); then forgets the older steps' terms."""
        self.terms = [t for t in self.terms if t.step >= step]
        by_task: dict[int, list[Term]] = {}
        for t in self.terms:
            if t.step == step and t.size is not None and t.task != -1:
                by_task.setdefault(t.task, []).append(t)
        out = []
        for group in by_task.values():
            if len(group) >= 2:
                out.append((group, torch.stack([torch.stack([t.size, t.weight]) for t in group if t.size is not None
                                                and t.weight is not None])))
        return out

    def forget(self) -> None:
        self.terms = []

    # ---- from probe.step(loss=tensor)
    def clamps(self, root: torch.Tensor, step: int) -> list[tuple[dict[str, Any], torch.Tensor | None]]:
        """Upper clamps between the tracked loss outputs of `step` and `root`: each with its
        figures and the count of examples above the cap (a 0-d tensor; None when unknown)."""
        fn = getattr(root, "grad_fn", None)
        if fn is None:
            return []
        tracked = {id(t.out.grad_fn): t for t in self.terms if t.step == step and t.out.grad_fn is not None}
        if not tracked:
            return []
        found: list[tuple[dict[str, Any], torch.Tensor | None]] = []
        seen: set[int] = set()
        todo = [fn]
        while todo and len(seen) < MAX_NODES:
            node = todo.pop()
            if node is None or id(node) in seen or id(node) in tracked:
                continue
            seen.add(id(node))
            kind = type(node).__name__
            if kind in CLAMPS:
                hit = self._clamp(node, kind, tracked)
                if hit is not None:
                    found.append(hit)
            elif kind not in COMBINE:
                continue  # a model op, or the inside of a loss computed by hand
            todo.extend(n for n, _ in node.next_functions)
        return found

    def _clamp(self, node: Any, kind: str, tracked: dict[int, Term]) -> tuple[dict[str, Any], torch.Tensor | None] | None:
        cap: Any = None
        if kind in ("ClampBackward1", "ClampMaxBackward0"):
            cap = getattr(node, "_saved_max", None)
        else:
            try:  # tensor caps are saved tensors: readable only before backward
                if kind == "ClampBackward0":
                    cap = node._saved_max
                elif node.next_functions[1][0] is None:  # torch.minimum(loss, constant)
                    cap = node._saved_other
            except Exception:  # noqa: BLE001
                return None
        if cap is None:
            return None
        if isinstance(cap, torch.Tensor):
            if cap.numel() != 1:
                return None
            cap = float(cap.detach().reshape(()))  # a saved constant, read before backward only
        # the clamp's input: a tracked loss output (through views), else its saved input
        values: torch.Tensor | None = None
        function = None
        src = node.next_functions[0][0]
        for _ in range(8):
            if src is None:
                break
            t = tracked.get(id(src))
            if t is not None:
                values, function = t.out.detach(), t.function
                break
            if type(src).__name__ not in VIEWS:
                break
            src = src.next_functions[0][0]
        if values is None:
            try:
                values = node._saved_self.detach()
            except Exception:  # noqa: BLE001 - freed by backward
                return None
        above = (values > cap).sum()
        return {"cap": float(cap), "examples": int(values.numel()), "function": function, "node": kind}, above
