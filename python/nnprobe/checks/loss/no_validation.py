"""no-validation (info): at the end of a run of NO_VAL_LOSSES or more training losses, not one
validation loss (none computed under no_grad/inference_mode while the probe was open, none given
to probe.step(val_loss=...)) and not one evaluation (a forward of the model with gradients off:
the probe's forward pre-hook sees those every step). Shorter runs are experiments. Judged only
once the run is over."""

from __future__ import annotations

from collections.abc import Iterable

from ...figures import StepFigures
from ..base import Check, Raised, RunContext

NO_VAL_LOSSES = 100


class NoValidation(Check):
    codes = ("no-validation",)
    wakes_on = ("loss", "val_loss", "evaluated")

    def __init__(self, run: RunContext) -> None:
        super().__init__(run)
        self._losses = 0
        self._last: int | None = None
        self._val = False

    def judge(self, figs: StepFigures) -> Iterable[Raised]:
        if figs.val_loss is not None or any(e.kind == "evaluated" for e in figs.events):
            self._val = True
        if figs.loss is not None:
            self._losses += 1
            self._last = figs.step
        return ()

    def finish(self) -> Iterable[Raised]:
        if self._val or self._losses < NO_VAL_LOSSES:
            return
        yield Raised("no-validation", f"{self._losses} training steps and no validation loss: nothing measured how the "
                     "model does on held-out data (evaluate under torch.no_grad(), or pass probe.step(val_loss=...))",
                     None, self._last, {"training_losses": self._losses})
