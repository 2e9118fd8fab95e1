"""pretrained-input-mismatch: at the first BatchNorm whose running statistics have seen data
(a pretrained checkpoint), the first training batch's per-channel input statistics against the
running ones. Fires when the rms over channels of |batch mean - running mean| / running std
exceeds Z_LIMIT, or the median over channels of batch variance / running variance is outside
[1 / VAR_LIMIT, VAR_LIMIT] (3x in std). Properly normalised inputs from a new, similar dataset
move these by a fraction of a std; a forgotten mean/std normalisation moves them by several.

`bn_input_figures` turns the raw per-channel vectors into the event's figures; `judge_bn_input`
decides. check_init and doctor use both too, so the one-shot and the runtime verdicts agree.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from ...figures import StepFigures
from ..base import Check, Raised

Z_LIMIT = 1.0
VAR_LIMIT = 9.0


def bn_input_figures(mean: np.ndarray, var: np.ndarray, running_mean: np.ndarray, running_var: np.ndarray,
                     eps: float) -> dict[str, Any]:
    """The shift of a batch's per-channel statistics from a BatchNorm's running ones."""
    mean, var = np.asarray(mean, np.float64), np.asarray(var, np.float64)
    rm, rv = np.asarray(running_mean, np.float64), np.asarray(running_var, np.float64)
    ok = np.isfinite(mean) & np.isfinite(var) & np.isfinite(rm) & np.isfinite(rv)
    if not ok.any():
        return {"channels": int(mean.size), "z_rms": math.nan, "var_ratio": math.nan}
    z = np.abs(mean[ok] - rm[ok]) / np.sqrt(rv[ok] + eps)
    ratio = (var[ok] + eps) / (rv[ok] + eps)
    worst = int(np.nonzero(ok)[0][int(np.argmax(z))])
    return {"channels": int(mean.size), "z_rms": float(np.sqrt(np.mean(z * z))), "var_ratio": float(np.median(ratio)),
            "worst_channel": worst, "batch_mean": float(mean[worst]), "running_mean": float(rm[worst]),
            "running_std": float(math.sqrt(rv[worst] + eps))}


def judge_bn_input(module: str | None, label: str, d: dict[str, Any], step: int | None) -> Raised | None:
    z, ratio = d.get("z_rms"), d.get("var_ratio")
    if not isinstance(z, (int, float)) or not isinstance(ratio, (int, float)) or not (math.isfinite(z) and math.isfinite(ratio)):
        return None
    why = []
    if z > Z_LIMIT:
        why.append(f"the batch's per-channel means sit {z:.2g} running stds from the running means (rms over "
                   f"{d.get('channels')} channels; limit {Z_LIMIT:g})")
    if ratio > VAR_LIMIT or ratio < 1 / VAR_LIMIT:
        why.append(f"its variance is {ratio:.3g}x the running variance (median over channels; limit {VAR_LIMIT:g}x either way)")
    if not why:
        return None
    return Raised("pretrained-input-mismatch", f"at {label}, the first normalisation layer with pretrained statistics, "
                  + " and ".join(why) + ": the inputs are not normalised as in pretraining", module, step, dict(d))


class PretrainedInputMismatch(Check):
    codes = ("pretrained-input-mismatch",)
    wakes_on = ("bn-input",)

    def judge(self, figs: StepFigures) -> Iterable[Raised]:
        for e in figs.events:
            if e.kind == "bn-input":
                module = e.data.get("module")
                r = judge_bn_input(module, self.run.label(module), e.data, figs.step)
                if r is not None:
                    yield r
