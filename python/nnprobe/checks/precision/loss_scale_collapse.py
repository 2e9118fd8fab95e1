"""loss-scale-collapse: a mixed-precision run whose updates keep being skipped.

The probe ends every iteration whose optimizer.step() never came as a step with a
"skipped-step" event (a GradScaler found inf/NaN in the scaled gradients; see runtime/amp.py).
A dynamic loss scale finds its level by skipping at the start (each skip halves it) and then
skips about once per `growth_interval` (2000) clean steps, when its doubling overflows. This
fires when COLLAPSE_STREAK iterations in a row are skipped (the default initial scale 2**16
halved that often is 2**-4: below 1, the gradients overflow even unscaled, or are NaN whatever
the scale), or, after the first update, when COLLAPSE_SKIPS of the last COLLAPSE_WINDOW
iterations were skipped (a hundred times the rate of a healthy scale: it is pushed down over
and over). Skips noticed late (the loop zeroes gradients between forward and backward) count too.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from ...figures import StepFigures
from ..base import Check, Raised, RunContext

COLLAPSE_STREAK = 20
COLLAPSE_WINDOW = 200
COLLAPSE_SKIPS = 10


class LossScaleCollapse(Check):
    codes = ("loss-scale-collapse",)
    wakes_on = ("step",)

    def __init__(self, run: RunContext) -> None:
        super().__init__(run)
        self._streak = 0
        self._first_skip: int | None = None
        self._updated = False  # an update landed: skips from now on count towards the rate
        self._recent: deque[bool] = deque(maxlen=COLLAPSE_WINDOW)

    def judge(self, figs: StepFigures) -> Iterable[Raised]:
        late = sum(1 for e in figs.events if e.kind == "skipped-step" and e.data.get("late"))
        skipped = any(e.kind == "skipped-step" and not e.data.get("late") for e in figs.events)
        if not (late or skipped or self._streak or self._recent):
            self._updated = True
            return  # the hot path of a run that never skipped
        fired = False
        for skip in [True] * late + [skipped]:
            if skip:
                if self._first_skip is None:
                    self._first_skip = figs.step
                self._streak += 1
            if self._updated:
                self._recent.append(skip)
            n_recent = sum(self._recent)
            if not fired and (self._streak >= COLLAPSE_STREAK or n_recent >= COLLAPSE_SKIPS):
                fired = True
                if self._streak >= COLLAPSE_STREAK:
                    msg = (f"{self._streak} iterations in a row ended without an update (optimizer.step() skipped, "
                           f"flagged at {COLLAPSE_STREAK}): the loss scale has collapsed below 1 and the gradients are "
                           "still inf/NaN")
                else:
                    msg = (f"{n_recent} of the last {len(self._recent)} iterations were skipped (flagged at "
                           f"{COLLAPSE_SKIPS}; a healthy dynamic scale skips about once in 2000): the loss scale keeps "
                           "collapsing")
                yield Raised("loss-scale-collapse", msg, None, figs.step,
                             {"streak": self._streak, "recent_skips": n_recent, "window": len(self._recent),
                              "first_skip": self._first_skip})
        if not skipped:
            self._streak = 0
            self._updated = True
