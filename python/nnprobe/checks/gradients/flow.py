"""exploding-gradients and vanishing-gradients: the gradient flow through depth.

The rms gradient of the first weight layer (in forward order) over the last one's, on GRAD_STEPS
judged steps in a row. AUTOTRAINER uses gradient-norm ratios of 70 and 1e-3; norms grow with
layer size, so nnprobe compares rms values and keeps a wider margin, measured on clean MLPs,
CNNs and transformers (all within 1e-2..1e2). Exploding also fires when the global gradient
norm grows EXPLODE_GROWTH-fold over its median on the first judged steps.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np

from ...figures import C, StepFigures
from ..base import Check, Raised, RunContext, Streaks, nonfinite, rms, seen

EXPLODE_RATIO = 1e3
VANISH_RATIO = 1e-4
EXPLODE_GROWTH = 1e4
GRAD_STEPS = 3


class GradientFlow(Check):
    codes = ("exploding-gradients", "vanishing-gradients")
    wakes_on = ("sampled",)

    def __init__(self, run: RunContext) -> None:
        super().__init__(run)
        self._layers = [i for i, r in enumerate(run.rows) if r.kind == "gradients" and r.param and r.meta.get("layer")]
        self._streak = Streaks()
        self._norm0: list[float] = []

    def judge(self, figs: StepFigures) -> Iterable[Raised]:
        s = figs.sampled
        assert s is not None
        mat, rows = s.mat, self.run.rows
        layers = [i for i in self._layers if seen(mat[i]) and nonfinite(mat[i]) == 0]
        if len(layers) < 2:
            return
        layers.sort(key=lambda j: self.run.position(rows[j].module))
        first, last = layers[0], layers[-1]
        g_first, g_last = rms(mat[first]), rms(mat[last])
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
                msg = (f"the rms gradient of {rows[first].name} ({g_first:.3g}) is {ratio:.3g}x that of "
                       f"{rows[last].name} ({g_last:.3g}), {n} sampled steps in a row (flagged above {EXPLODE_RATIO:g}x)")
            yield Raised("exploding-gradients", msg, rows[first].module, figs.step,
                         {"ratio_first_last": ratio, "growth": growth, "grad_norm": norm, "first": rows[first].name,
                          "last": rows[last].name})
        n = self._streak.update("vanish", ratio < VANISH_RATIO)
        if n >= GRAD_STEPS:
            yield Raised("vanishing-gradients",
                         f"the rms gradient of {rows[first].name} ({g_first:.3g}) is {ratio:.3g}x that of {rows[last].name} "
                         f"({g_last:.3g}), {n} sampled steps in a row (flagged below {VANISH_RATIO:g}x): the early layers "
                         "barely learn", rows[first].module, figs.step,
                         {"ratio_first_last": ratio, "first": rows[first].name, "last": rows[last].name})
