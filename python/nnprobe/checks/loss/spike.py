"""loss-spike: the loss jumps far above its recent level (SPEC section 7).

A robust z-score: the loss against the median of the last SPIKE_WINDOW losses, in units of
their median absolute deviation (x1.4826, a standard deviation for Gaussian noise). A spike is
SPIKE_Z deviations above the median, at least SPIKE_REL above it (late in a run the loss is
small and its noise tiny: a 5% wobble can be many deviations and is no event), and above the
window's highest loss by SPIKE_SPAN times that loss's distance from the median (heavy-tailed
noise: small batches, a loss near zero with rare hard batches, whose MAD says little of the
tail), and by at least SPIKE_START of the loss's level over its first window (a converged loss of
0.01 with one batch at 0.1 is measured noise on digits, not an event). The level is refreshed
every REFRESH losses, so the every-step cost is one comparison, and at once after a spike (the
recovery is judged against it). The probe's schedule uses the same level (`RobustLimit`) to take
the spike step's gradients before its update, so the finding names the first layer, in forward
order, whose gradient norm jumped with it: GRAD_JUMP times the median of its last GRAD_BASE
judged samples.

No host synchronisation: on a GPU the loss is copied to the host without blocking and read one
step later, with the step's other figures (runtime/probe.py), and compared there; the spike
step's gradients are then known only when it was sampled anyway, and the step after it is
sampled. The same holds for a loss given by `probe.step(loss)` after `optimizer.step()`.

The batch's index in its epoch: `watch` never sees the data loader, so it does not know it; the
finding names the step.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable

from ...figures import C, StepFigures
from ..base import Check, Raised, RunContext, median, seen

SPIKE_WINDOW = 32
SPIKE_Z = 10.0
SPIKE_REL = 0.5
SPIKE_SPAN = 2.0
SPIKE_MIN = 10  # losses seen before anything is called a spike
SPIKE_START = 0.1  # ... and at least this fraction of the loss's level at the start of the run above the median
REFRESH = 8
GRAD_JUMP = 4.0
GRAD_BASE = 5


class RobustLimit:
    """The loss level above which a loss has spiked, from the last SPIKE_WINDOW finite losses."""

    def __init__(self) -> None:
        self.recent: deque[float] = deque(maxlen=SPIKE_WINDOW)
        self.seen = 0
        self.limit = math.inf
        self.median = math.nan
        self.deviation = math.nan
        self.start = math.nan  # the median of the first SPIKE_WINDOW losses

    def exceeds(self, loss: float) -> bool:
        return loss > self.limit

    def add(self, loss: float) -> None:
        if not math.isfinite(loss):
            return
        spiked = loss > self.limit
        self.recent.append(loss)
        self.seen += 1
        # refreshed at once after a spike: it is in the window, the losses just after it (the run
        # recovering) are judged against it, not called spikes of their own
        if len(self.recent) >= SPIKE_MIN and (self.seen % REFRESH == 0 or spiked):
            ys = sorted(self.recent)
            med = ys[len(ys) // 2]
            if self.seen <= SPIKE_WINDOW or math.isnan(self.start):
                self.start = med
            dev = sorted(abs(y - med) for y in ys)
            self.median = med
            self.deviation = dev[len(dev) // 2] * 1.4826
            span = (1 + SPIKE_SPAN) * (ys[-1] - med)  # the highest, and SPIKE_SPAN times its distance
            # a converged run's loss of 0.01 with a batch at 0.1 is noise, not an event: the jump must
            # also be a tenth of where the loss started
            self.limit = med + max(SPIKE_Z * self.deviation, SPIKE_REL * abs(med), span, SPIKE_START * abs(self.start), 1e-12)


class LossSpike(Check):
    codes = ("loss-spike",)
    wakes_on = ("loss", "sampled")

    def __init__(self, run: RunContext) -> None:
        super().__init__(run)
        self._level = RobustLimit()
        self._layers = [i for i, r in enumerate(run.rows) if r.kind == "gradients" and r.param and r.meta.get("layer")]
        self._norms: dict[int, deque[float]] = {i: deque(maxlen=GRAD_BASE) for i in self._layers}

    def judge(self, figs: StepFigures) -> Iterable[Raised]:
        s = figs.sampled
        spiked = figs.loss is not None and self._level.exceeds(figs.loss)
        if spiked:
            assert figs.loss is not None
            yield self._raise(figs, figs.loss)
        if figs.loss is not None:
            self._level.add(figs.loss)
        if s is not None and s.judged and not spiked:  # a spike step is no baseline
            for i in self._layers:
                v = float(s.mat[i, C["l2"]])
                if seen(s.mat[i]) and math.isfinite(v) and v > 0:
                    self._norms[i].append(v)

    def _raise(self, figs: StepFigures, loss: float) -> Raised:
        lv, run, rows = self._level, self.run, self.run.rows
        z = (loss - lv.median) / lv.deviation if lv.deviation > 0 else math.inf
        data: dict[str, object] = {"loss": loss, "median": lv.median, "z": z, "window": len(lv.recent), "batch": None}
        head = (f"the loss jumped to {loss:.4g} at step {figs.step}, {z:.3g} robust deviations above the median "
                f"{lv.median:.4g} of the last {len(lv.recent)} losses")
        s = figs.sampled
        if s is None:
            return Raised("loss-spike", head + "; its gradients were not sampled (its loss reached the probe after its "
                          "update: a GPU loss, or probe.step(loss) after optimizer.step()); the next step is sampled", None,
                          figs.step, data)
        jumped = []
        for i in self._layers:
            base = self._norms[i]
            v = float(s.mat[i, C["l2"]])
            if len(base) and seen(s.mat[i]) and math.isfinite(v):
                ref = median(list(base))
                if ref > 0 and v >= GRAD_JUMP * ref:
                    jumped.append((i, v / ref))
        if not jumped:
            data["grad_jump"] = None
            return Raised("loss-spike", head + f"; no layer's gradient norm jumped with it (none {GRAD_JUMP:g}x its recent "
                          "level): a hard or mislabelled batch?", None, figs.step, data)
        i, ratio = min(jumped, key=lambda jr: run.position(rows[jr[0]].module))
        data.update(param=rows[i].name, grad_jump=ratio, layers_jumped=len(jumped))
        return Raised("loss-spike", head + f"; the first layer whose gradient norm jumped with it is {run.label(rows[i].module)} "
                      f"({rows[i].name}: {ratio:.3g}x its median over the last sampled steps; {len(jumped)} layers jumped)",
                      rows[i].module, figs.step, data)

