"""eval-mode-training: an optimizer step while every Dropout (p > 0) and BatchNorm is in eval
mode. One layer kept in eval on purpose (a BatchNorm frozen with its parameters) is left out of
the plan's list, so it does not count."""

from __future__ import annotations

from collections.abc import Iterable

from ...figures import StepFigures
from ..base import Check, Raised


class EvalModeTraining(Check):
    codes = ("eval-mode-training",)
    wakes_on = ("all-eval",)

    def judge(self, figs: StepFigures) -> Iterable[Raised]:
        names = self.run.plan.sensitive
        if not names:
            return
        more = f" and the {len(names) - 1} other Dropout/BatchNorm layers" if len(names) > 1 else ""
        yield Raised("eval-mode-training", f"training step {figs.step} runs with {self.run.label(names[0])}{more} in eval "
                     "mode (call model.train() after evaluating)", names[0], figs.step, {"modules": list(names)})
