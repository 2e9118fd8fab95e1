"""non-finite: the first module and step where NaN/Inf appears, in forward or backward.

On a sampled step the figures say it: the first activation (in forward order) holding NaN/Inf,
else the first output gradient (in backward order) that turned non-finite, else the parameter
gradient closest to the loss, else the weights. On any other step a non-finite loss has been
located by the probe (re-running the saved inputs module by module) and arrives as an event.
The output gradients of a step whose update was skipped ("skipped-step") are not judged.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ...figures import C, StepFigures
from ..base import Check, Raised, nonfinite, seen


class NonFinite(Check):
    codes = ("non-finite",)
    wakes_on = ("sampled", "nonfinite-loss")

    def judge(self, figs: StepFigures) -> Iterable[Raised]:
        for e in figs.events:
            if e.kind == "nonfinite-loss":
                d = e.data
                when = "" if d.get("before_update", True) else " (after the update: the origin may be an earlier step's gradient)"
                what = d.get("loss")
                what = f"is {what}" if what in ("nan", "inf", "-inf") else f"{what}" if what else "is not finite"
                yield Raised("non-finite", f"the loss {what} at step {figs.step}; {d.get('message', '')}{when}",
                             d.get("module"), figs.step, {"loss": d.get("loss"), "phase": "forward", **d.get("data", {})})
                return
        s = figs.sampled
        if s is None or not s.judged:
            return
        mat, rows, run = s.mat, self.run.rows, self.run
        if not np.nansum(mat[:, C["nan"]] + mat[:, C["inf"]]):
            return
        for i in s.act_order:
            if rows[i].kind == "activations" and nonfinite(mat[i]):
                nan, inf = int(mat[i, C["nan"]]), int(mat[i, C["inf"]])
                yield Raised("non-finite", f"the output of {run.label(rows[i].module)} holds {nan} NaN and {inf} Inf in "
                             "forward; the layers before it were finite", rows[i].module, figs.step,
                             {"phase": "forward", "nan": nan, "inf": inf})
                return
        # a step whose update was skipped (a GradScaler found inf/NaN in its scaled gradients) holds
        # those gradients in its output-gradient figures: expected, not a finding; the parameter
        # gradients the optimizer used are still judged
        skips = [e for e in figs.events if e.kind == "skipped-step"]
        bad = [] if skips else [k for k, i in enumerate(s.grad_order) if nonfinite(mat[i])]
        if bad:
            k = bad[0]
            if k > 0:
                origin = rows[s.grad_order[k - 1]].module
                msg = (f"the backward of {run.label(origin)} turned a finite gradient into NaN/Inf (the gradient "
                       f"reaching {run.label(rows[s.grad_order[k]].module)}'s output is non-finite)")
            else:
                origin = rows[s.grad_order[k]].module
                msg = f"the gradient reaching {run.label(origin)}'s output is already non-finite: it comes from the loss"
            yield Raised("non-finite", msg, origin, figs.step, {"phase": "backward"})
            return
        # a skipped step's parameter gradients, read by the optimizer hooks of a fused optimizer,
        # are its scaled ones (a skip noticed late leaves the next, applied step's)
        fused = any(not e.data.get("late") for e in skips)
        pgrads = [] if fused else [i for i, r in enumerate(rows) if r.param and r.kind == "gradients" and seen(mat[i])
                                   and nonfinite(mat[i])]
        if pgrads:
            i = max(pgrads, key=lambda j: run.position(rows[j].module))
            yield Raised("non-finite", f"the gradient of {rows[i].name} holds {nonfinite(mat[i])} NaN/Inf values "
                         f"({len(pgrads)} parameters affected); it is the one closest to the loss", rows[i].module, figs.step,
                         {"phase": "backward", "param": rows[i].name, "params_affected": len(pgrads)})
            return
        weights = [i for i, r in enumerate(rows) if r.kind == "weights" and seen(mat[i]) and nonfinite(mat[i])]
        if weights:
            i = weights[0]
            yield Raised("non-finite", f"the weights of {rows[i].name} hold {nonfinite(mat[i])} NaN/Inf values",
                         rows[i].module, figs.step, {"phase": "weights", "param": rows[i].name})
