"""probabilities-into-loss and logits-into-nll: what a loss function was given, judged from a
few figures of the first rows of its input (the loss tap sends them as "loss-input" events).

cross_entropy rows in [0, 1] that sum to 1 are probabilities (it applies log_softmax itself);
binary_cross_entropy_with_logits values all in [0, 1] over many elements are probabilities;
nll_loss wants log-probabilities: rows <= 0 whose logsumexp is 0. A finding needs STREAK checked
calls in a row (CE rows summing to 1 are conclusive; values in [0, 1] handed to BCE-with-logits
can happen by chance for a while)."""

from __future__ import annotations

import math
from collections.abc import Iterable

from ...figures import StepFigures
from ..base import Check, Raised, RunContext

STREAK = {"logits": 2, "log-probs": 2, "binary-logits": 10}


class LossInputFormat(Check):
    codes = ("probabilities-into-loss", "logits-into-nll")
    wakes_on = ("loss-input",)

    def __init__(self, run: RunContext) -> None:
        super().__init__(run)
        self._streak: dict[str, int] = {}

    def judge(self, figs: StepFigures) -> Iterable[Raised]:
        for e in figs.events:
            if e.kind == "loss-input":
                r = self._one(figs.step, str(e.data["function"]), str(e.data["check"]), int(e.data["count"]),
                              [math.nan if v is None else float(v) for v in e.data["values"]])
                if r is not None:
                    yield r

    def _one(self, step: int, name: str, kind: str, count: int, v: list[float]) -> Raised | None:
        if kind == "logits":
            mn, mx, err = v
            wrong = mn >= -1e-6 and mx <= 1 + 1e-6 and err < 1e-3
        elif kind == "log-probs":
            mx, lse = v
            wrong = not (mx <= 1e-3 and lse < 0.05)
        else:
            mn, mx = v
            wrong = mn >= 0.0 and mx <= 1.0 and count >= 16
        if not all(math.isfinite(x) for x in v):
            wrong = False  # non-finite inputs are the non-finite check's business
        streak = self._streak.get(name, 0) + 1 if wrong else 0
        self._streak[name] = streak
        if streak < STREAK[kind]:
            return None
        if kind == "logits" and name == "cross_entropy":
            return Raised("probabilities-into-loss", f"cross_entropy got probabilities: the checked rows lie in "
                          f"[{mn:.3g}, {mx:.3g}] and sum to 1 (max |sum - 1| = {err:.2g}) over {streak} calls; it applies "
                          "log_softmax itself", None, step,
                          {"function": name, "min": mn, "max": mx, "row_sum_error": err, "calls": streak})
        if kind == "binary-logits":
            return Raised("probabilities-into-loss", f"binary_cross_entropy_with_logits got values all in [{mn:.3g}, "
                          f"{mx:.3g}] for {streak} calls in a row: probabilities, not logits (it applies the sigmoid "
                          "itself)", None, step, {"function": name, "min": mn, "max": mx, "calls": streak})
        if kind == "log-probs":
            what = "positive values (raw scores or probabilities)" if mx > 1e-3 else "rows that are not normalised"
            return Raised("logits-into-nll", f"nll_loss got {what}: max {mx:.3g} (log-probabilities are <= 0) and "
                          f"|logsumexp| of a row up to {lse:.3g} (0 for log_softmax over the class dimension)", None, step,
                          {"function": name, "max": mx, "logsumexp_error": lse, "calls": streak})
        return None
