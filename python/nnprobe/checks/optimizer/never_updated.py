"""param-never-updated: a parameter in the optimizer whose weight figures are bit-identical
after NEVER_STEPS steps (judged steps NEVER_STEPS apart or more)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ...figures import C, StepFigures
from ..base import Check, Raised, RunContext, seen

NEVER_STEPS = 5
_COLS = [C[c] for c in ("min", "max", "mean", "std", "l2")]


class ParamNeverUpdated(Check):
    codes = ("param-never-updated",)
    wakes_on = ("sampled",)

    def __init__(self, run: RunContext) -> None:
        super().__init__(run)
        self._rows = [i for i, r in enumerate(run.rows) if r.kind == "weights" and isinstance(r.meta.get("group"), int)]
        self._first: dict[int, tuple[int, np.ndarray]] = {}
        self._updated: set[int] = set()

    def judge(self, figs: StepFigures) -> Iterable[Raised]:
        s = figs.sampled
        assert s is not None
        rows, mat = self.run.rows, s.mat
        if any(e.kind == "skipped-step" and not e.data.get("late") for e in figs.events):
            return  # a step whose update was skipped (a GradScaler) says nothing of the others
        for i in self._rows:
            if i in self._updated or not seen(mat[i]):
                continue
            figures = mat[i, _COLS].copy()
            first = self._first.get(i)
            if first is None:
                self._first[i] = (figs.step, figures)
                continue
            if not np.array_equal(figures, first[1], equal_nan=True):
                self._updated.add(i)
                continue
            if figs.step - first[0] < NEVER_STEPS:
                continue
            name = rows[i].name
            g = self.run.plan.rows.find(name, "gradients")
            group = rows[i].meta.get("group")
            lrs = figs.lrs or ()
            lr = lrs[group] if isinstance(group, int) and group < len(lrs) else None
            if lr == 0:
                why = "its learning rate is 0"
            elif g is None or not seen(mat[g]):
                why = "no gradient reaches it (unused in forward, or a detached branch)"
            elif mat[g, C["absmax"]] == 0:
                why = "its gradient is exactly zero"
            else:
                why = "its gradient is not applied"
            yield Raised("param-never-updated", f"{name} is in the optimizer but has not changed in {figs.step - first[0]} "
                         f"steps: {why}", rows[i].module, figs.step, {"param": name, "since_step": first[0], "reason": why})
