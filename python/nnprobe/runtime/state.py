"""The live state the hooks share with the probe during a step.

Hooks close over this object, never over the probe: a probe dropped without `close()` can then
be collected, and its finalizer removes the hooks (SPEC section 10). It holds no module, only
what a hook writes (the step's inputs, the sampled step's record, the events) and reads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import DiagnosticError
from ..figures import Event

if TYPE_CHECKING:
    from .record import StepRecord

log = logging.getLogger("nnprobe")


class LiveState:
    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self.clock: Callable[[], float] = clock or time.perf_counter
        self.step = 0
        self.busy = False  # the probe itself runs the model (locating a NaN): hooks stay out
        self.rerun = False  # the probe re-runs a compiled model's forward eagerly: forward hooks take it
        self.traced = False  # the root hook ran inside a compiled graph
        self.closed = False
        self.checks_on = True
        self.off: set[str] = set()  # parts switched off after an internal failure
        self.inputs: list[tuple[Any, Any]] = []  # this step's training forwards' inputs
        self.fwd_grad = 0  # training forwards since the last optimizer step
        self.record: StepRecord | None = None  # the sampled step's figures as they are taken
        self.events: list[Event] = []  # this step's events, for the checks
        self.evaluated = False  # a forward with gradients off came this step
        self.own_cheap = 0.0  # time spent in the every-step hooks since the last step

    def event(self, kind: str, **data: Any) -> None:
        if self.checks_on:
            self.events.append(Event(kind, data))

    def fail(self, where: str, exc: BaseException) -> None:
        """An internal failure: logged once, and that part switched off for the run."""
        if isinstance(exc, DiagnosticError):
            raise exc
        if where not in self.off:
            self.off.add(where)
            log.warning("nnprobe: %s failed and is switched off for this run (training is not affected): %r", where, exc)

    def charge(self, dt: float, rec: Any = False) -> None:
        """Count time spent in the probe: towards the sampled step's cost, or the every-step cost."""
        rec = self.record if rec is False else rec
        if rec is not None:
            rec.own_time += dt
        else:
            self.own_cheap += dt
