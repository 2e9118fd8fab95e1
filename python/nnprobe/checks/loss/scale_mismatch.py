"""loss-scale-mismatch: one backward sums several loss-function calls whose sizes differ by more
than RATIO on STREAK judged steps in a row spanning SPAN steps or more. A term's size is
|term x d(total)/d(term)|, summed over its elements: its value times the weight the total gives
it, read from the gradient that reaches it in backward (a deliberate weighting counts). A term
weighted exactly 0 is switched off on purpose and left out. The probe sends a "loss-terms"
event on judged steps where one backward reached two or more loss calls."""

from __future__ import annotations

import math
from collections.abc import Iterable

from ...figures import StepFigures
from ..base import Check, Raised, RunContext

RATIO = 1000.0
STREAK = 5
SPAN = 20


class LossScaleMismatch(Check):
    codes = ("loss-scale-mismatch",)
    wakes_on = ("loss-terms",)

    def __init__(self, run: RunContext) -> None:
        super().__init__(run)
        self._streak = 0
        self._since: int | None = None
        self._done = False

    def judge(self, figs: StepFigures) -> Iterable[Raised]:
        for e in figs.events:
            if e.kind != "loss-terms" or self._done:
                continue
            raw = e.data.get("step")
            step: int = raw if isinstance(raw, int) else figs.step
            terms = [t for t in e.data.get("terms", []) if isinstance(t, dict)]
            sized = [(k, t) for k, t in enumerate(terms) if isinstance(t.get("size"), (int, float))
                     and math.isfinite(t["size"]) and t["size"] > 0 and t.get("weight") != 0]
            if len(sized) < 2:
                continue
            big = max(sized, key=lambda kt: kt[1]["size"])
            small = min(sized, key=lambda kt: kt[1]["size"])
            ratio = big[1]["size"] / small[1]["size"]
            if ratio <= RATIO:
                self._streak, self._since = 0, None
                continue
            self._streak += 1
            if self._since is None:
                self._since = step
            if self._streak >= STREAK and step - self._since >= SPAN:
                self._done = True

                def name(kt: tuple[int, dict], n: int = len(terms)) -> str:
                    return f"{kt[1].get('function')} (loss call {kt[0] + 1} of {n})"

                yield Raised("loss-scale-mismatch", f"one backward sums loss terms {ratio:.3g}x apart in size: {name(big)} "
                             f"is {big[1]['size']:.4g} and {name(small)} only {small[1]['size']:.4g} (value x weight), on "
                             f"{self._streak} judged steps since step {self._since}: the small term is effectively ignored",
                             None, step, {"ratio": ratio, "large": name(big), "small": name(small),
                                          "large_size": big[1]["size"], "small_size": small[1]["size"], "since": self._since,
                                          "terms": terms})
