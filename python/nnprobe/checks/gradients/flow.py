"""exploding-gradients and vanishing-gradients: the gradient flow through depth.

The weight layers in forward order are split in thirds; the flow is the median rms gradient of
the first third over the last third's (a median, so that one odd matrix does not decide: an
attention block's query and key get tiny gradients at init while its value does not).
AUTOTRAINER uses gradient-norm ratios of 70 and 1e-3; norms grow with layer size, so nnprobe
compares rms values and keeps a wider margin, measured on clean MLPs, CNNs and transformers.

Exploding: the flow above EXPLODE_RATIO on GRAD_STEPS judged steps in a row, or the global
gradient norm EXPLODE_GROWTH-fold over its median on the first judged steps (a diverging run
goes from there to Inf in a few steps).

Vanishing: the flow below VANISH_RATIO on GRAD_STEPS judged steps in a row that span at least
VANISH_SPAN steps: at initialisation a transformer's first attention projections get gradients
1e-5 of the classifier's for a dozen steps (tiny BERT, measured) and then catch up; a vanishing
gradient is one that stays.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from ...figures import C, StepFigures
from ..base import Check, Raised, RunContext, Streaks, median, nonfinite, rms, seen

EXPLODE_RATIO = 1e3
VANISH_RATIO = 1e-4
EXPLODE_GROWTH = 1e4
GRAD_STEPS = 3
VANISH_SPAN = 20


class GradientFlow(Check):
    codes = ("exploding-gradients", "vanishing-gradients")
    wakes_on = ("sampled",)

    def __init__(self, run: RunContext) -> None:
        super().__init__(run)
        self._layers = [i for i, r in enumerate(run.rows) if r.kind == "gradients" and r.param and r.meta.get("layer")]
        self._streak = Streaks()
        self._norm0: list[float] = []
        self._vanish_since: int | None = None

    def judge(self, figs: StepFigures) -> Iterable[Raised]:
        s = figs.sampled
        assert s is not None
        mat, rows = s.mat, self.run.rows
        layers = [i for i in self._layers if seen(mat[i]) and nonfinite(mat[i]) == 0]
        if len(layers) < 2:
            return
        layers.sort(key=lambda j: self.run.position(rows[j].module))
        third = max(1, len(layers) // 3)
        first_third, last_third = layers[:third], layers[-third:]
        first, last = first_third[0], last_third[-1]
        g_first = median([rms(mat[j]) for j in first_third])
        g_last = median([rms(mat[j]) for j in last_third])
        norm = float(np.sqrt(np.sum(mat[layers, C["l2"]].astype(np.float64) ** 2)))
        if len(self._norm0) < 3:
            if norm > 0:
                self._norm0.append(norm)
            growth = 1.0
        else:
            growth = norm / float(np.median(self._norm0))
        ratio = g_first / g_last if g_last > 0 and g_first > 0 and math.isfinite(g_first / g_last) else math.nan
        n_ratio = self._streak.update("explode-ratio", ratio > EXPLODE_RATIO)
        n_growth = self._streak.update("explode-growth", growth > EXPLODE_GROWTH)
        # a diverging run goes from a 1e4-fold growth to Inf in a few steps: two judged steps suffice
        if n_ratio >= GRAD_STEPS or n_growth >= 2 or growth > 100 * EXPLODE_GROWTH:
            n = max(n_ratio, n_growth)
            if growth > EXPLODE_GROWTH:
                msg = (f"the gradient norm is {norm:.3g}, {growth:.3g}x its value on the first sampled steps, "
                       f"{n} sampled steps in a row")
            else:
                msg = (f"the rms gradient of the first layers (from {rows[first].name}: {g_first:.3g}) is {ratio:.3g}x "
                       f"that of the last ones (to {rows[last].name}: {g_last:.3g}), {n} sampled steps in a row (flagged "
                       f"above {EXPLODE_RATIO:g}x)")
            yield Raised("exploding-gradients", msg, rows[first].module, figs.step,
                         {"ratio_first_last": ratio, "growth": growth, "grad_norm": norm, "first": rows[first].name,
                          "last": rows[last].name})
        n = self._streak.update("vanish", ratio < VANISH_RATIO)
        if n == 1:
            self._vanish_since = figs.step
        since = self._vanish_since if n else None
        if n >= GRAD_STEPS and since is not None and figs.step - since >= VANISH_SPAN:
            yield Raised("vanishing-gradients",
                         f"the rms gradient of the first layers (from {rows[first].name}: {g_first:.3g}) is {ratio:.3g}x that "
                         f"of the last ones (to {rows[last].name}: {g_last:.3g}) on every sampled step since step {since} "
                         f"(flagged below {VANISH_RATIO:g}x over {VANISH_SPAN} steps): the early layers barely learn",
                         rows[first].module, figs.step,
                         {"ratio_first_last": ratio, "first": rows[first].name, "last": rows[last].name, "since_step": since})
