"""A step's figures on their way out: merged once they are on the host (across ranks too), judged
by the checks in step order, kept in the history and handed to the sinks.

A step's figures wait in `open` until the step is over for good (a loss given to probe.step()
after optimizer.step(), a device copy read one step late, still belong to it), and a sampled
step's figures wait in `pending` until its device reductions have reached the host. The log
gets every figure the checks read, so `nnprobe check` can judge the run again.
"""

from __future__ import annotations

from collections import deque
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from ..checks.judge import Judge
from ..errors import DiagnosticError
from ..figures import Sampled, StepFigures
from ..findings import Finding
from ..sinks import Sink
from .history import History
from .plan import Watched
from .record import figures_matrix
from .schedule import Schedule
from .state import LiveState

if TYPE_CHECKING:
    from .record import Collected

LOSSES_EVERY = 100  # a "losses" record at least this often when no sampled step comes


class Flow:
    def __init__(self, watched: Watched, state: LiveState, schedule: Schedule, judge: Judge | None, history: History,
                 sinks: list[Sink], distributed: ModuleType | None, *, strict: bool) -> None:
        self._w = watched
        self._state = state
        self._schedule = schedule
        self._judge = judge
        self._history = history
        self._sinks = sinks
        self._dist = distributed  # the module runtime.distributed when ranks merge, else None
        self._strict = strict
        self.open: deque[StepFigures] = deque()  # ended, not judged yet
        self.pending: deque[tuple[StepFigures, Collected]] = deque()  # sampled, figures on their way
        self._log_losses: list[tuple[int, float]] = []
        self._log_figures: list[dict[str, Any]] = []
        self._logged_lrs: tuple[float, ...] | None = None

    def finish_pending(self, s: int, wait: bool = False) -> None:
        """Merge sampled steps whose figures are on the host: CPU ones at once, device ones one
        step later (the same rule on every rank, so the collectives match)."""
        while self.pending:
            figs, col = self.pending[0]
            if not wait and col.on_device and col.rec.step >= s:
                break
            self.pending.popleft()
            try:
                with np.errstate(all="ignore"):  # overflowing figures are data here, not errors
                    self._merge(figs, col)
            except Exception as e:  # noqa: BLE001 - diagnostics never break training
                self._state.fail("statistics", e)

    def _merge(self, figs: StepFigures, col: Collected) -> None:
        rec = col.rec
        moments, sat, dead = col.get()
        R = len(self._w.plan.rows)
        sat_arr = np.zeros(R)
        dead_arr = np.full(R, np.nan)
        for row, v in sat.items():
            sat_arr[row] = v
        for row, v in dead.items():
            dead_arr[row] = v
        proposal = float(self._schedule.proposal(rec.step))
        if self._dist is not None:
            moments, sat_arr, dead_arr, proposal = self._dist.merge(moments, self._w.duplicate, sat_arr, dead_arr, proposal)
        self._schedule.agree(proposal)
        mat = figures_matrix(moments, sat_arr, dead_arr, rec, [(m.act_row, m.unit) for m in self._w.modules], R)
        hists = {row: c for row, c in rec.hists.items() if row < R}
        if self._dist is not None and rec.hist:
            hists = self._dist.merge_hist(hists, R, self._w.duplicate[:R])
        figs.sampled = Sampled(mat.astype(np.float32), list(rec.act_order), list(rec.grad_order), set(rec.dead_below),
                               judged=rec.judged, hists=hists, units=dict(rec.units))

    def seal(self, upto: int, wait: bool = False) -> None:
        """Judge the ended steps before `upto` whose figures are all on the host, in step order."""
        while self.open:
            figs = self.open[0]
            if figs.step >= upto or (not wait and any(f is figs for f, _ in self.pending)):
                break
            self.open.popleft()
            self._history.append_step(figs)
            if figs.loss is not None:
                self._log_losses.append((figs.step, figs.loss))
            entry = figs.to_json(self._logged_lrs)
            if entry is not None:
                self._log_figures.append(entry)
                if figs.lrs is not None:
                    self._logged_lrs = figs.lrs
            if self._judge is not None:
                for f in self._judge.judge(figs):
                    self.to_sinks("finding", f)
                    if self._strict and f.severity == "error":
                        raise DiagnosticError(f)
            s = figs.sampled
            if s is not None:
                self.to_sinks("record", figs.step, s.mat, ~np.isnan(s.mat[:, 0]), self._log_losses, s.hists, self._log_figures)
                self._log_losses, self._log_figures = [], []
            elif self._log_losses and self._log_losses[0][0] <= figs.step - LOSSES_EVERY:
                self.to_sinks("losses", self._log_losses, self._log_figures)
                self._log_losses, self._log_figures = [], []

    def late_loss(self, step: int, value: float) -> None:
        """A loss for a step already judged: history and log only."""
        self._history.set_loss(step, value)
        self._log_losses.append((step, value))

    def to_sinks(self, method: str, *args: Any) -> None:
        for sk in self._sinks:
            try:
                getattr(sk, method)(*args)
            except Exception as e:  # noqa: BLE001 - a broken sink is switched off, training goes on
                self._state.fail(f"sink {type(sk).__name__}", e)

    def close(self, step: int, findings: list[Finding]) -> None:
        if self._log_losses or self._log_figures:
            self.to_sinks("losses", self._log_losses, self._log_figures)
            self._log_losses, self._log_figures = [], []
        self.to_sinks("close", step, findings)
