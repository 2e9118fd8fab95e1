"""train-mode-eval: a forward with gradients disabled (an evaluation) while Dropout/BatchNorm
are in train mode: dropout noise in the metrics, and BatchNorm statistics updated on the
evaluation data. The probe's forward pre-hook sends the event with the modules in train mode."""

from __future__ import annotations

from collections.abc import Iterable

from ...figures import StepFigures
from ..base import Check, Raised


class TrainModeEval(Check):
    codes = ("train-mode-eval",)
    wakes_on = ("eval-forward",)

    def judge(self, figs: StepFigures) -> Iterable[Raised]:
        for e in figs.events:
            if e.kind != "eval-forward":
                continue
            names = list(e.data.get("modules", []))
            if not names:
                continue
            more = f" and {len(names) - 1} other Dropout/BatchNorm layers" if len(names) > 1 else ""
            yield Raised("train-mode-eval", f"a forward ran with gradients disabled (an evaluation) while "
                         f"{self.run.label(names[0])}{more} {'were' if more else 'was'} in train mode", names[0], figs.step,
                         {"modules_in_train_mode": names})
