"""zero-grad-missing: the first backward after an optimizer step adds into a gradient that
step already applied (the same tensor at the same version: no zero_grad() in between).
Accumulating over several backwards before one step is not flagged: only the first backward
after each step is judged, by the probe's sentinel hook, which sends the event."""

from __future__ import annotations

from collections.abc import Iterable

from ...figures import StepFigures
from ..base import Check, Raised


class ZeroGradMissing(Check):
    codes = ("zero-grad-missing",)
    wakes_on = ("zero-grad",)

    def judge(self, figs: StepFigures) -> Iterable[Raised]:
        for e in figs.events:
            if e.kind == "zero-grad":
                d = e.data
                yield Raised("zero-grad-missing", f"the backward after optimizer step {d['after_step']} adds into "
                             f"{d['param']}.grad, which still holds the gradient that step already applied (no zero_grad() "
                             "in between)", None, int(d["after_step"]) + 1, {"param": d["param"], "after_step": d["after_step"]})
