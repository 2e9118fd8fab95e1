"""update-ratio: rms(update)/rms(weight) of a >=2-D weight, its median over the last RATIO_WINDOW
judged steps, far outside ~1e-3 (Karpathy's target; Adam at its default rate gives ~1e-2 and is
fine). The probe leaves the ratio out where the weight's rms is about zero (a bias at init).

Too high (median above RATIO_HIGH): an update that rewrites a tenth of the weight every step is
only a mistake when the run does not profit from it. A healthy start (Adam's first steps without
warm-up give 0.1-0.3 for a few steps while the loss falls fast) is silent; so is a weight growing
from a small init while the loss comes down. It fires when the loss made no progress over the
window (less than 1 - STALLED) on a weight that is not growing, or when the loss diverges (its
later half of the window DIVERGED times its earlier half, or non-finite): a far too high rate
makes every weight grow, so growth is no excuse then.

Too low (median below RATIO_LOW): with a steady learning rate (a schedule that anneals or warms
up moves the ratio on purpose), while the loss has not come down by LOW_PROGRESS from where it
started: tiny updates once a run has converged (the loss a thousandth of its start) are no sign
of a low rate.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable

from ...figures import RATIO, StepFigures
from ..base import Check, Raised, RunContext, median, rms, seen

RATIO_LOW = 1e-5
RATIO_HIGH = 1e-1
RATIO_EXTREME = 1.0
RATIO_WINDOW = 10
RATIO_SETTLED = 1.5  # a weight whose rms grew more than this over the window is still growing
STALLED = 0.95  # the loss's later half of the window above this fraction of its earlier half: no progress
DIVERGED = 1.5  # ... above this multiple of it: diverging
LOW_PROGRESS = 0.1  # the loss must have fallen by less than this fraction of its start for "too low"


class UpdateRatio(Check):
    codes = ("update-ratio",)
    wakes_on = ("sampled", "loss")

    def __init__(self, run: RunContext) -> None:
        super().__init__(run)
        self._rows: list[tuple[int, int | None, int | None]] = []  # (update row, weight row, lr group)
        for i, r in enumerate(run.rows):
            if r.kind == "updates" and r.meta.get("ratio"):
                group = r.meta.get("group")
                self._rows.append((i, run.plan.rows.find(r.name, "weights"), group if isinstance(group, int) else None))
        self._window: dict[int, deque[tuple[int, float, float | None, float]]] = {}  # (step, ratio, lr, weight rms)
        self._lr_peak: dict[int, float] = {}
        self._losses: list[tuple[int, float]] = []

    def judge(self, figs: StepFigures) -> Iterable[Raised]:
        if figs.loss is not None:
            self._losses.append((figs.step, figs.loss if math.isfinite(figs.loss) else math.inf))
        s = figs.sampled
        if s is None or not s.judged:
            return
        lrs = figs.lrs or ()
        for g, group_lr in enumerate(lrs):
            if group_lr > self._lr_peak.get(g, -1.0):
                self._lr_peak[g] = group_lr
        rows = self.run.rows
        for i, w, group in self._rows:
            ratio = float(s.mat[i, RATIO])
            if not math.isfinite(ratio) or ratio <= 0:
                continue  # not updated this step (no gradient), or weights about zero
            scale = rms(s.mat[w]) if w is not None and seen(s.mat[w]) else math.nan
            lr: float | None = lrs[group] if group is not None and group < len(lrs) else None
            q = self._window.setdefault(i, deque(maxlen=RATIO_WINDOW))
            q.append((figs.step, ratio, lr, scale))
            if len(q) < RATIO_WINDOW:
                continue
            med = median([a for _, a, _, _ in q])
            seen_lrs = [b for _, _, b, _ in q if b is not None]
            lr_text = f" ({seen_lrs[-1]:.3g})" if seen_lrs else ""
            name = rows[i].name
            if med > RATIO_HIGH:
                trend = self._trend(q[0][0], figs.step)
                growing = q[0][3] > 0 and q[-1][3] > RATIO_SETTLED * q[0][3]
                diverging = trend is not None and trend > DIVERGED
                stalled = trend is None or trend >= STALLED
                if diverging or (stalled and not growing):
                    why = "the loss diverges" if diverging else "the loss made no progress meanwhile"
                    yield Raised("update-ratio", f"rms(update)/rms(weight) of {name} has a median of {med:.3g} over the "
                                 f"last {RATIO_WINDOW} sampled steps (flagged above {RATIO_HIGH:g}; ~1e-3 is typical) and "
                                 f"{why}: the learning rate{lr_text} is too high for this layer", rows[i].module, figs.step,
                                 {"param": name, "median_ratio": med, "direction": "high",
                                  "lr": seen_lrs[-1] if seen_lrs else None})
            elif med < RATIO_LOW:
                peak = self._lr_peak.get(group, 0.0) if group is not None else 0.0
                steady = bool(seen_lrs) and max(seen_lrs) <= 2 * min(seen_lrs) and seen_lrs[-1] >= 0.1 * peak
                progress = self._progress()
                if steady and (progress is None or progress < LOW_PROGRESS):
                    yield Raised("update-ratio", f"rms(update)/rms(weight) of {name} has a median of {med:.3g} over "
                                 f"the last {RATIO_WINDOW} sampled steps (flagged below {RATIO_LOW:g}; ~1e-3 is typical): "
                                 f"the learning rate{lr_text} is too low for this layer", rows[i].module, figs.step,
                                 {"param": name, "median_ratio": med, "direction": "low", "lr": seen_lrs[-1]})

    def _trend(self, since: int, now: int) -> float | None:
        """The loss's median over the later half of the steps [since, now] over its median over
        the earlier half (inf when it became non-finite); None when too few losses are known."""
        span = [v for s, v in self._losses if since <= s <= now]
        if len(span) < 4:
            return None
        half = len(span) // 2
        early, late = median(span[:half]), median(span[half:])
        if not math.isfinite(late):
            return math.inf
        return late / early if early > 0 else None

    def _progress(self) -> float | None:
        """How far the loss has come down from its start (0: not at all, 1: to zero)."""
        if len(self._losses) < 8:
            return None
        k = max(2, len(self._losses) // 10)
        first = median([v for _, v in self._losses[:k]])
        last = median([v for _, v in self._losses[-k:]])
        return 1.0 - last / first if first > 0 and math.isfinite(first) else None
