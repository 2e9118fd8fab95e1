"""dead-units: more than half of a ReLU layer's units output zero for every example of the
batch, on DEAD_STEPS judged steps in a row (SageMaker DeadRelu: threshold_layer 50%; AUTOTRAINER
and DeepDiagnosis: 70%). The probe measures the fraction only where each unit has at least 8
examples, and rules it out cheaply where the zeros are too few (`dead_below`). A functional relu
(`F.relu(self.fc(x))`) is judged under the row of the module whose output it took."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ...figures import DEAD, StepFigures
from ..base import Check, Raised, RunContext, Streaks

DEAD_FRACTION = 0.5
DEAD_STEPS = 3


class DeadUnits(Check):
    codes = ("dead-units",)
    wakes_on = ("sampled",)

    def __init__(self, run: RunContext) -> None:
        super().__init__(run)
        self._rows = [i for i, r in enumerate(run.rows) if r.kind == "activations" and r.meta.get("unit") == "relu"]
        self._streak = Streaks()

    def judge(self, figs: StepFigures) -> Iterable[Raised]:
        s = figs.sampled
        assert s is not None
        functional = [i for i, u in s.units.items() if u == "relu" and i not in self._rows]
        for i in self._rows + functional:
            if i in s.dead_below:
                self._streak.update(i, False)  # fewer zeros than the threshold: not dead
                continue
            dead = s.mat[i, DEAD]
            if np.isnan(dead):
                continue  # not judged this step (too few examples per unit, or not run)
            n = self._streak.update(i, dead > DEAD_FRACTION)
            if n >= DEAD_STEPS:
                module = self.run.rows[i].module
                what = self.run.label(module) + (" through a functional relu" if i in s.units else "")
                yield Raised("dead-units", f"{dead:.0%} of the units of {what} output zero for every "
                             f"example, {n} sampled steps in a row (flagged above {DEAD_FRACTION:.0%})",
                             module, figs.step, {"dead_fraction": float(dead), "steps_in_a_row": n})
