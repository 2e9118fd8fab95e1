"""What every runtime check shares: the finding it raises (`Raised`), the base class that says
which figures wake it, and the run's context (the plan, the order modules run in)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..figures import ROOT, C, Plan, StepFigures


@dataclass
class Raised:
    """A finding as a check raises it; the judge adds severity, hint and the count."""

    code: str
    message: str
    module: str | None
    step: int | None
    data: dict[str, Any] = field(default_factory=dict)
    severity: str | None = None  # the catalogue's, unless the check knows better


class RunContext:
    """The plan, and what the sampled steps taught about the forward: the order in which
    modules first ran (registration order says little about data flow)."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.rows = plan.rows.rows
        self._registered = {name: k for k, name in enumerate(plan.modules)}
        self._pos: dict[str, int] = {}

    def label(self, module: str | None) -> str:
        return self.plan.label(module)

    def saw_forward(self, act_order: list[int]) -> None:
        for row in act_order:
            self._pos.setdefault(self.rows[row].module, len(self._pos))

    def position(self, module: str) -> int:
        """Where a module first ran in the forward (a module never called itself, like
        MultiheadAttention's out_proj whose weight its parent uses, takes its nearest ancestor's
        place); registration order, after every module seen, for modules never seen."""
        name = module
        while True:
            pos = self._pos.get(name)
            if pos is not None:
                return pos
            if name in ("", ROOT) or "." not in name:
                break
            name = name.rpartition(".")[0]
        return 100_000 + self._registered.get(module, 0)


class Check:
    """A runtime check. `wakes_on` names what it reads: "step" (every step), "loss" (steps with
    a loss), "val_loss" (steps with a validation loss), "sampled" (steps sampled by step count) or
    an event kind; the judge calls `judge` only on steps that have one of them, and `finish` once
    when the run is over (for verdicts only the whole run can give)."""

    codes: ClassVar[tuple[str, ...]] = ()
    wakes_on: ClassVar[tuple[str, ...]] = ()

    def __init__(self, run: RunContext) -> None:
        self.run = run

    def judge(self, figs: StepFigures) -> Iterable[Raised]:
        raise NotImplementedError

    def finish(self) -> Iterable[Raised]:
        return ()


class Streaks:
    """How many judged steps in a row a condition has held, per key."""

    def __init__(self) -> None:
        self._n: dict[Any, int] = {}

    def update(self, key: Any, cond: bool) -> int:
        n = self._n.get(key, 0) + 1 if cond else 0
        self._n[key] = n
        return n


def rms(row: np.ndarray) -> float:
    """Root mean square of a row's finite values (NaN when it has none)."""
    n = row[C["count"]] - row[C["nan"]] - row[C["inf"]]
    return float(row[C["l2"]] / math.sqrt(n)) if n > 0 else math.nan


def nonfinite(row: np.ndarray) -> int:
    return int(row[C["nan"]] + row[C["inf"]])


def seen(row: np.ndarray) -> bool:
    return not np.isnan(row[0])


def median(xs: list[float]) -> float:
    ys = sorted(xs)
    n = len(ys)
    return ys[n // 2] if n % 2 else 0.5 * (ys[n // 2 - 1] + ys[n // 2])
