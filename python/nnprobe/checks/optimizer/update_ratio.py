"""update-ratio: rms(update)/rms(weight) of a >=2-D weight, its median over the last
RATIO_WINDOW judged steps outside [RATIO_LOW, RATIO_HIGH] (SPEC: flag only persistent
departures far from ~1e-3; Adam's ~1e-2 is fine). The probe leaves the ratio out where the
weight's rms is about zero (a bias at init)."""

from __future__ import annotations

import math
from collections import deque
from typing import Iterable

from ...figures import RATIO, StepFigures
from ..base import Check, Raised, RunContext, median, rms, seen

RATIO_LOW = 1e-5
RATIO_HIGH = 1e-1
RATIO_WINDOW = 10
RATIO_SETTLED = 1.5


class UpdateRatio(Check):
    codes = ("update-ratio",)
    wakes_on = ("sampled",)

    def __init__(self, run: RunContext) -> None:
        super().__init__(run)
        self._rows: list[tuple[int, int | None, int | None]] = []  # (update row, weight row, lr group)
        for i, r in enumerate(run.rows):
            if r.kind == "updates" and r.meta.get("ratio"):
                group = r.meta.get("group")
                self._rows.append((i, run.plan.rows.find(r.name, "weights"), group if isinstance(group, int) else None))
        self._window: dict[int, deque[tuple[float, float | None, float]]] = {}
        self._lr_peak: dict[int, float] = {}

    def judge(self, figs: StepFigures) -> Iterable[Raised]:
        s = figs.sampled
        assert s is not None
        lrs = figs.lrs or ()
        for g, lr in enumerate(lrs):
            if lr > self._lr_peak.get(g, -1.0):
                self._lr_peak[g] = lr
        rows = self.run.rows
        for i, w, group in self._rows:
            ratio = float(s.mat[i, RATIO])
            if not math.isfinite(ratio) or ratio <= 0:
                continue  # not updated this step (no gradient), or weights about zero
            scale = rms(s.mat[w]) if w is not None and seen(s.mat[w]) else math.nan
            lr = lrs[group] if group is not None and group < len(lrs) else None
            q = self._window.setdefault(i, deque(maxlen=RATIO_WINDOW))
            q.append((ratio, lr, scale))
            if len(q) < RATIO_WINDOW:
                continue
            med = median([a for a, _, _ in q])
            seen_lrs = [b for _, b, _ in q if b is not None]
            lr_text = f" ({seen_lrs[-1]:.3g})" if seen_lrs else ""
            name = rows[i].name
            # a weight that is still growing (from zero, or from a deliberately small init such as a
            # scaled-down output layer) has a large ratio that falls as it grows: "too high" is judged
            # once its scale grew less than RATIO_SETTLED-fold over the window
            settled = not (q[0][2] > 0 and q[-1][2] > RATIO_SETTLED * q[0][2])
            if med > RATIO_HIGH and settled:
                yield Raised("update-ratio", f"rms(update)/rms(weight) of {name} has a median of {med:.3g} over the "
                             f"last {RATIO_WINDOW} sampled steps (flagged above {RATIO_HIGH:g}; ~1e-3 is typical): "
                             f"the learning rate{lr_text} is too high for this layer", rows[i].module, figs.step,
                             {"param": name, "median_ratio": med, "direction": "high", "lr": seen_lrs[-1] if seen_lrs else None})
            elif med < RATIO_LOW:
                # a schedule that anneals or warms up the rate moves the ratio on purpose
                peak = self._lr_peak.get(group, 0.0) if group is not None else 0.0
                steady = bool(seen_lrs) and max(seen_lrs) <= 2 * min(seen_lrs) and seen_lrs[-1] >= 0.1 * peak
                if steady:
                    yield Raised("update-ratio", f"rms(update)/rms(weight) of {name} has a median of {med:.3g} over "
                                 f"the last {RATIO_WINDOW} sampled steps (flagged below {RATIO_LOW:g}; ~1e-3 is typical): "
                                 f"the learning rate{lr_text} is too low for this layer", rows[i].module, figs.step,
                                 {"param": name, "median_ratio": med, "direction": "low", "lr": seen_lrs[-1]})
