"""loss-at-init: the first training loss of cross_entropy / nll_loss (expected ln C for C
classes) or binary_cross_entropy_with_logits (ln 2) above max(2 ln C, ln C + 1): logits that
start large. The probe's loss tap sends the first training call with a mean reduction."""

from __future__ import annotations

import math
from collections.abc import Iterable

from ...figures import StepFigures
from ..base import Check, Raised


class LossAtInit(Check):
    codes = ("loss-at-init",)
    wakes_on = ("loss-init",)

    def judge(self, figs: StepFigures) -> Iterable[Raised]:
        for e in figs.events:
            if e.kind != "loss-init":
                continue
            loss, classes, name = e.data.get("value"), int(e.data["classes"]), str(e.data["function"])
            if not isinstance(loss, (int, float)) or not math.isfinite(loss):
                continue
            expected = math.log(classes)
            limit = max(2 * expected, expected + 1.0)
            if loss > limit:
                what = f"{classes} classes" if name != "binary_cross_entropy_with_logits" else "a binary target"
                yield Raised("loss-at-init", f"the first {name} loss is {loss:.4g}; with {what} a well-scaled init gives "
                             f"about ln {classes} = {expected:.3g} (flagged above {limit:.3g})", None, figs.step,
                             {"loss": loss, "expected": expected, "limit": limit, "classes": classes, "function": name})
