"""saturated-activations: more than half of a tanh's outputs beyond |0.97| (a sigmoid's below
0.03 or above 0.97), SAT_STEPS judged steps in a row (Karpathy's |t| > 0.97; SageMaker and
DeepDiagnosis flag a layer at 50%)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ...figures import SATURATED, StepFigures
from ..base import Check, Raised, RunContext, Streaks

SAT_LEVEL = 0.97  # the probe counts outputs beyond this (tanh) or outside [1 - it, it] (sigmoid)
SAT_FRACTION = 0.5
SAT_STEPS = 3


class SaturatedActivations(Check):
    codes = ("saturated-activations",)
    wakes_on = ("sampled",)

    def __init__(self, run: RunContext) -> None:
        super().__init__(run)
        self._rows = [(i, str(r.meta["unit"])) for i, r in enumerate(run.rows)
                      if r.kind == "activations" and r.meta.get("unit") in ("tanh", "sigmoid")]
        self._streak = Streaks()

    def judge(self, figs: StepFigures) -> Iterable[Raised]:
        s = figs.sampled
        assert s is not None
        known = {i for i, _ in self._rows}
        functional = [(i, u) for i, u in s.units.items() if u in ("tanh", "sigmoid") and i not in known]
        for i, unit in self._rows + functional:
            sat = s.mat[i, SATURATED]
            if np.isnan(sat):
                continue
            n = self._streak.update(i, sat > SAT_FRACTION)
            if n >= SAT_STEPS:
                module = self.run.rows[i].module
                where = "beyond +-0.97" if unit == "tanh" else "below 0.03 or above 0.97"
                what = self.run.label(module) + (f" through a functional {unit}" if i in s.units else "")
                yield Raised("saturated-activations", f"{sat:.0%} of the outputs of {what} are "
                             f"{where}, {n} sampled steps in a row (flagged above {SAT_FRACTION:.0%})",
                             module, figs.step, {"saturated_fraction": float(sat), "steps_in_a_row": n})
