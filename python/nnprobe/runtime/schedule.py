"""Which steps are sampled (the heavy statistics taken) and which of them the checks judge.

Verdicts must not depend on the machine's speed (SPEC section 6), so the steps the checks read
are chosen by step count alone: with `every=N` one step in N; with `every="auto"` the first
FIRST_STEPS steps, then a floor whose gap grows with the step (the gap after step s is
s / DENSITY, at most MAX_GAP: 21 judged samples in the first 100 steps, 31 by step 1000, then
one per MAX_GAP), plus steps forced by a non-finite or jumping loss (a fact of the run).

On top of those, `every="auto"` adds samples while the measured cost leaves room in the
`overhead` budget; they feed the history, the report and the log, not the verdicts.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np

from ..checks.loss.spike import RobustLimit

FIRST_STEPS = 5  # always sampled: init checks and the first gradient norms need them
DENSITY = 4  # the floor's gap is step / DENSITY ...
MAX_GAP = 1000  # ... up to this many steps
AUTO_AIM = 0.8  # the time budget aims at this share of `overhead`, keeping the rest as margin
HIST_EVERY = 10  # histograms on one sampled step in HIST_EVERY, the first included
JUMP_GAP = 20  # steps between two samples forced by loss jumps


def floor_gap(step: int) -> int:
    return max(1, min(MAX_GAP, step // DENSITY))


class Schedule:
    def __init__(self, every: int | str, overhead: float, distributed: bool) -> None:
        self.every = every
        self.overhead = overhead
        self.distributed = distributed
        self.force_next = False
        self._next_floor = FIRST_STEPS
        self._next_auto = FIRST_STEPS
        self._sampled = 0
        # timing for the extra samples of every="auto"
        self._t_last: float | None = None
        self._bare: deque[float] = deque(maxlen=32)
        self._cheap: deque[float] = deque(maxlen=32)
        self._cost_est: float | None = None
        self._bare_boot: float | None = None
        self._spent = 0.0
        # loss jumps: a fact of the run (the loss values), so the samples they force are judged; the
        # level is loss-spike's, so the spike step's gradients are there for its finding
        self._level = RobustLimit()
        self._last_jump = -JUMP_GAP

    def judged(self, step: int) -> bool:
        """Sampled for the checks: decided by step count (and forced samples) only."""
        if isinstance(self.every, int):
            return step % self.every == 0
        if step < FIRST_STEPS:
            return True
        if self.force_next and not self.distributed:
            return True
        if step >= self._next_floor:
            while self._next_floor <= step:
                self._next_floor += floor_gap(self._next_floor)
            return True
        return False

    def extra(self, step: int, pending: bool) -> bool:
        """An extra sample that the time budget allows (every="auto" only). A sampled step whose
        figures are still on their way from the device has not set the next one yet."""
        return not isinstance(self.every, int) and step >= self._next_auto and not pending

    def jumped(self, loss: float, step: int) -> bool:
        """A loss far above the recent ones, by loss-spike's robust level (checks/loss/spike.py: 10
        robust deviations and half again above the median of the last 32 losses, refreshed every 8);
        a jump forces a sample at most once in JUMP_GAP steps."""
        jump = self._level.exceeds(loss) and step - self._last_jump >= JUMP_GAP
        if jump:
            self._last_jump = step
        self._level.add(loss)
        return jump

    def take_hist(self) -> bool:
        hist = self._sampled % HIST_EVERY == 0
        self._sampled += 1
        return hist

    # ------------------------------------------------------------------ the time budget
    def clock(self, now: float, step: int, own_cheap: float, rec: Any) -> None:
        """A step ended at `now`: learn the bare step time (unsampled steps less the every-step
        hooks) and the cost of a sampled one."""
        last, self._t_last = self._t_last, now
        if last is None or step == 0:
            return  # the first step pays one-off costs: not a measure of anything
        dt = now - last
        if rec is None:
            self._bare.append(dt)
            self._cheap.append(own_cheap)
        else:
            base = dt - rec.own_time
            self._bare_boot = base if self._bare_boot is None else min(self._bare_boot, base)
            bare = self._bare_estimate(base)
            extra = max(dt - bare, rec.own_time)
            self._spent += extra
            self._cost_est = extra if self._cost_est is None else 0.7 * self._cost_est + 0.3 * extra

    def _bare_estimate(self, fallback: float) -> float:
        if len(self._bare) >= 3:
            return max(float(np.median(self._bare)) - float(np.median(self._cheap)), 1e-9)
        if self._bare_boot is not None:  # no unsampled step yet: the sampled ones less our own time
            return max(min(self._bare_boot, fallback), 1e-9)
        return max(fallback, 1e-9)

    def proposal(self, step: int) -> int:
        """The next step the time budget allows an extra sample at (all ranks take the largest)."""
        if isinstance(self.every, int) or self._cost_est is None:
            return max(step + 1, FIRST_STEPS)
        bare = self._bare_estimate(math.inf)
        if not math.isfinite(bare):
            return step + 1
        # the every-step checks: the time measured in the optimizer hooks, and about as much again
        # that no timer sees (the forward pre-hook, the loss tap, the zero_grad sentinel)
        cheap = 2 * float(np.median(self._cheap)) if self._cheap else 0.0
        budget = AUTO_AIM * self.overhead * bare
        rate = max(budget - cheap, 0.25 * budget)
        # unused budget is kept for at most two samples: no bursts of samples after a quiet spell
        self._spent = max(self._spent, rate * step - 2 * self._cost_est)
        target = (self._spent + self._cost_est) / rate
        # the plan is fixed before the sampled step's forward, so at least one step ahead
        return int(max(step + 1, min(math.ceil(target), step + 1_000_000)))

    def agree(self, proposal: float) -> None:
        if not isinstance(self.every, int):
            self._next_auto = max(self._next_auto, int(proposal))
