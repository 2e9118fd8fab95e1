"""loss-clipped: an upper clamp (clamp(max=c), clamp_max, torch.minimum with a constant) between
a loss function and the loss given to backward, with at least one example above the cap on a
judged step. An example above the cap gets exactly zero gradient: a fact, not a statistic, so
one such step is enough; a clamp that never binds stays silent, and a clamp below the loss
function (on the logits) is not on the loss at all. The probe reads the graph of the loss
tensor handed to probe.step(loss=...) and sends a "loss-clamp" event."""

from __future__ import annotations

from collections.abc import Iterable

from ...figures import StepFigures
from ..base import Check, Raised


class LossClipped(Check):
    codes = ("loss-clipped",)
    wakes_on = ("loss-clamp",)

    def judge(self, figs: StepFigures) -> Iterable[Raised]:
        for e in figs.events:
            if e.kind != "loss-clamp":
                continue
            d = e.data
            above, n, cap = d.get("above"), d.get("examples"), d.get("cap")
            if not isinstance(above, int) or above < 1 or not isinstance(n, int):
                continue
            step = d.get("step") if isinstance(d.get("step"), int) else figs.step
            fn = d.get("function")
            of = f"{fn}'s {'per-example losses' if n > 1 else 'loss'}" if fn else "the loss"
            what = f"{above} of {n} examples were" if n > 1 else "the batch's loss was"
            verb = "are" if n > 1 and fn else "is"
            yield Raised("loss-clipped", f"{of} {verb} clamped at {cap:.4g} ({d.get('node')}) before backward: at step {step} "
                         f"{what} above the cap and gave no gradient (clip the gradients, not the loss)", None, step,
                         {"cap": cap, "above": above, "examples": n, "function": d.get("function"), "node": d.get("node")})
