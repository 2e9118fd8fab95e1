"""overfitting: the validation loss rose at RISES evaluations in a row and ends RISE_REL above its
best, while the training loss kept falling over the same evaluations (its median over the last
evaluation interval is TRAIN_REL below its median over the first interval of the rise). Names the best step,
where early stopping would have stopped. One noisy evaluation is not a trend; a rise that the
training loss shares (a learning rate too high) is not overfitting.

The validation loss of a step (StepFigures.val_loss) is the mean of the losses computed under
no_grad/inference_mode since the previous step, or what probe.step(val_loss=...) gave."""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable

from ...figures import StepFigures
from ..base import Check, Raised, RunContext, median

RISES = 3
RISE_REL = 0.02
TRAIN_REL = 0.01


class Overfitting(Check):
    codes = ("overfitting",)
    wakes_on = ("loss", "val_loss")

    def __init__(self, run: RunContext) -> None:
        super().__init__(run)
        self._steps: list[int] = []
        self._losses: list[float] = []
        self._evals: list[tuple[int, float]] = []
        self._done = False

    def judge(self, figs: StepFigures) -> Iterable[Raised]:
        if self._done:
            return
        if figs.loss is not None and math.isfinite(figs.loss):
            self._steps.append(figs.step)
            self._losses.append(figs.loss)
        v = figs.val_loss
        if v is None or not math.isfinite(v):
            return
        ev = self._evals
        ev.append((figs.step, v))
        if len(ev) < RISES + 1:
            return
        last = [x for _, x in ev[-(RISES + 1):]]
        if not all(b > a for a, b in zip(last, last[1:])):
            return
        best_step, best = min(ev, key=lambda e: e[1])
        if v < best + RISE_REL * abs(best):
            return
        # the training loss over the rise: the first evaluation interval of it against the last
        start = ev[-(RISES + 1)][0]
        d = max(1, (figs.step - start) // RISES)
        early = self._window(start + 1, start + d + 1)
        late = self._window(figs.step - d + 1, figs.step + 1)
        if len(early) < 3 or len(late) < 3:
            return
        tb, ta = median(early), median(late)
        if not ta < tb - TRAIN_REL * abs(tb):
            return
        self._done = True
        shown = " -> ".join(f"{x:.4g}" for x in last)
        yield Raised(
            "overfitting",
            f"the validation loss rose at the last {RISES} evaluations ({shown}) and is "
            f"{(v - best) / abs(best) if best else math.inf:.0%} above its best ({best:.4g} at step {best_step}), "
            f"while the training loss fell from {tb:.4g} to {ta:.4g}: "
            f"early stopping would have stopped at step {best_step}",
            None, figs.step,
            {"best_step": best_step, "best_val_loss": best, "val_loss": v, "train_before": tb, "train_after": ta,
             "evaluations": len(ev)})

    def _window(self, lo: int, hi: int) -> list[float]:
        a, b = bisect.bisect_left(self._steps, lo), bisect.bisect_left(self._steps, hi)
        return self._losses[a:b]
