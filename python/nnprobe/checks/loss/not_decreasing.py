"""loss-not-decreasing: after LOSS_MIN steps, the median loss of the last window is no lower
than that of the first window (SageMaker LossNotDecreasing compares with 10 steps earlier; a
converged run is far below its start and stays silent). Under a warm-up the loss is judged from
where the learning rate reached half its present value."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from ...figures import StepFigures
from ..base import Check, Raised, RunContext

LOSS_MIN = 20
LOSS_REL = 0.01


class LossNotDecreasing(Check):
    codes = ("loss-not-decreasing",)
    wakes_on = ("loss",)

    def __init__(self, run: RunContext) -> None:
        super().__init__(run)
        self._loss: list[tuple[int, float, float]] = []
        self._judged_at = 0

    def judge(self, figs: StepFigures) -> Iterable[Raised]:
        assert figs.loss is not None
        lr = figs.lrs[0] if figs.lrs else math.nan
        ls = self._loss
        ls.append((figs.step, figs.loss, lr))
        if len(ls) > 100_000:  # keep every other one: the windows scale with the length anyway
            self._loss = ls = ls[::2]
            self._judged_at = len(ls)
        n = len(ls)
        # judged every 10 losses early on, then every n/10: the cost per step stays tiny
        if n < LOSS_MIN or n - self._judged_at < max(10, n // 10):
            return
        self._judged_at = n
        arr = np.array(ls, dtype=np.float64)
        steps, values, lrs = arr[:, 0], arr[:, 1], arr[:, 2]
        if not np.isfinite(values).all():
            return  # the non-finite check speaks
        k0 = 0
        if np.isfinite(lrs[-1]) and lrs[-1] > 0:
            reached = np.nonzero(np.nan_to_num(lrs, nan=0.0) >= 0.5 * lrs[-1])[0]
            k0 = int(reached[0]) if len(reached) else n
        span = n - k0
        if span < LOSS_MIN:
            return
        w = max(10, span // 5)
        first = float(np.median(values[k0 : k0 + w]))
        last = float(np.median(values[-w:]))
        if abs(first) < 1e-6:
            return
        if last >= first - LOSS_REL * abs(first):
            yield Raised("loss-not-decreasing", f"the median loss of the last {w} steps is {last:.4g}, against {first:.4g} "
                         f"over the first {w} (steps {int(steps[k0])}..{int(steps[-1])}): no progress", None, figs.step,
                         {"first_median": first, "last_median": last, "window": w, "steps": n})
