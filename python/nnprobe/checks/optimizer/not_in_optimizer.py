"""param-not-in-optimizer: a trainable parameter receives gradients but is in no param group of
the optimizer, so it never changes. An every-step fact, known at the first optimizer step."""

from __future__ import annotations

from collections.abc import Iterable

from ...figures import StepFigures
from ..base import Check, Raised


class ParamNotInOptimizer(Check):
    codes = ("param-not-in-optimizer",)
    wakes_on = ("outside-grad",)

    def judge(self, figs: StepFigures) -> Iterable[Raised]:
        for e in figs.events:
            if e.kind == "outside-grad":
                d = e.data
                norm = d.get("norm")
                of = f" (norm {norm:.3g})" if isinstance(norm, (int, float)) else ""
                yield Raised("param-not-in-optimizer", f"{d['param']} receives gradients{of} but is in no param group of "
                             "the optimizer: it never changes", d.get("module"), figs.step, {"param": d["param"]})
