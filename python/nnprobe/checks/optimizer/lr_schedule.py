"""lr-schedule: a learning rate that stops the training while it goes on ("do not trust LR decay
defaults"). Read every step from every param group (StepFigures.lrs), with the training loss.

- zero: a group's rate, positive before, is 0 for ZERO_STEPS steps and ZERO_SHARE of the steps
  before it got there (a cosine to zero that ends at the right step spends one step there);
- too early: the rate falls below LOW_SHARE of its peak at step t while the loss was still
  falling (the median of the last W = max(5, min(t/4, 100)) losses FALL_REL below that of the
  W before)
  and, once as many steps again have passed below LOW_SHARE (so a schedule that reaches it near
  the end of the run, as cosine does at 94%, is never judged), the loss falls at less than
  STALL_SHARE of the rate of that last window: an epoch schedule stepped per batch.
  ReduceLROnPlateau only lowers the rate once the loss has stopped falling, so it stays silent.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from ...figures import StepFigures
from ..base import Check, Raised, RunContext, median

ZERO_STEPS = 10
ZERO_SHARE = 0.02
LOW_SHARE = 0.01
FALL_REL = 0.02
STALL_SHARE = 0.5
MAX_WINDOW = 100  # steps: "still falling" is judged just before the rate got low, not long before
MIN_AFTER = 20  # steps below LOW_SHARE before the loss after it is judged


class _Group:
    def __init__(self) -> None:
        self.peak = 0.0
        self.peak_step = 0
        self.zero_since: int | None = None
        self.low_since: int | None = None
        self.low_judged = False


class LrSchedule(Check):
    codes = ("lr-schedule",)
    wakes_on = ("step",)

    def __init__(self, run: RunContext) -> None:
        super().__init__(run)
        self._groups: list[_Group] = []
        self._steps: list[int] = []  # steps with a finite training loss, and the losses
        self._losses: list[float] = []
        self._done = False

    def judge(self, figs: StepFigures) -> Iterable[Raised]:
        if self._done or figs.lrs is None:
            return
        s = figs.step
        if figs.loss is not None and math.isfinite(figs.loss) and (not self._steps or self._steps[-1] != s):
            self._steps.append(s)
            self._losses.append(figs.loss)
        while len(self._groups) < len(figs.lrs):
            self._groups.append(_Group())
        for g, lr in enumerate(figs.lrs):
            if not math.isfinite(lr):
                continue
            st = self._groups[g]
            if lr > st.peak:
                st.peak, st.peak_step = lr, s
            if st.peak <= 0:
                continue
            which = f"param group {g}'s learning rate" if len(figs.lrs) > 1 else "the learning rate"
            if lr <= st.peak * 1e-12:
                if st.zero_since is None:
                    st.zero_since = s
                n = s - st.zero_since + 1
                if n >= ZERO_STEPS and n >= ZERO_SHARE * st.zero_since:
                    self._done = True
                    yield Raised("lr-schedule", f"{which} has been 0 since step {st.zero_since} ({n} steps) while training "
                                 f"goes on (peak {st.peak:.3g} at step {st.peak_step}): those steps change nothing", None, s,
                                 {"group": g, "zero_since": st.zero_since, "zero_steps": n, "peak": st.peak,
                                  "peak_step": st.peak_step, "reason": "zero"})
                    return
            else:
                st.zero_since = None
            if lr <= LOW_SHARE * st.peak * (1 + 1e-6):  # 1% exactly counts (StepLR: two decays of 0.1)
                if st.low_since is None:
                    st.low_since, st.low_judged = s, False
                after = s - st.low_since
                if not st.low_judged and after >= max(MIN_AFTER, st.low_since):
                    st.low_judged = True
                    r = self._stalled(which, g, st, lr, s)
                    if r is not None:
                        self._done = True
                        yield r
                        return
            else:
                st.low_since = None

    def _window(self, lo: int, hi: int) -> list[float]:
        """The training losses of steps lo <= step < hi."""
        import bisect

        a, b = bisect.bisect_left(self._steps, lo), bisect.bisect_left(self._steps, hi)
        return self._losses[a:b]

    def _stalled(self, which: str, g: int, st: _Group, lr: float, s: int) -> Raised | None:
        t = st.low_since
        assert t is not None
        w = max(5, min(t // 4, MAX_WINDOW))
        before2, before1, last = self._window(t - 2 * w, t - w), self._window(t - w, t), self._window(s - w + 1, s + 1)
        if min(len(before2), len(before1), len(last)) < 3:
            return None
        m2, m1, m0 = median(before2), median(before1), median(last)
        fell = m2 - m1
        if fell <= FALL_REL * abs(m1):
            return None  # the loss had stopped falling already (a plateau schedule's reason to decay)
        # per step: the last window before t moved by `fell` in w steps (medians w apart); since
        # then the medians are s - t steps apart
        rate_before, rate_after = fell / w, (m1 - m0) / max(1, s - t)
        if rate_after >= STALL_SHARE * rate_before:
            return None
        return Raised(
            "lr-schedule",
            f"{which} fell below 1% of its peak ({st.peak:.3g} at step {st.peak_step}) at step {t}, while the loss was "
            f"still falling ({m2:.4g} -> {m1:.4g} over the {w} steps before); {s - t} steps later it is {m0:.4g}, "
            f"{'no longer falling' if rate_after <= 0 else f'falling {rate_after / rate_before:.0%} as fast'}: the "
            f"schedule decays far too early "
            f"(an epoch schedule stepped per batch?)",
            None, s,
            {"group": g, "low_since": t, "peak": st.peak, "peak_step": st.peak_step, "lr": lr, "window": w,
             "loss_before": m2, "loss_at": m1, "loss_now": m0, "reason": "too-early"})
