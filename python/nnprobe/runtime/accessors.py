"""What a watched run shows of itself: its findings, the figures it remembers, its summary and
report. `Probe` inherits these; the lifecycle and the step flow are in probe.py."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..figures import KINDS, Plan
from ..findings import Finding

if TYPE_CHECKING:
    from ..checks.judge import Judge
    from .history import History
    from .state import LiveState
    from .taps import RecipeTaps


class Accessors:
    plan: Plan
    _history: History
    _judge: Judge | None
    _state: LiveState
    _taps: RecipeTaps
    _closed: bool

    @property
    def findings(self) -> list[Finding]:
        return list(self._judge.findings) if self._judge is not None else []

    def codes(self) -> set[str]:
        return {f.code for f in self.findings}

    @property
    def steps(self) -> int:
        """Steps seen so far."""
        return self._state.step

    @property
    def sampled_steps(self) -> np.ndarray:
        """The steps whose figures `history()` holds."""
        return self._history.steps

    @property
    def store(self) -> History:
        """Everything remembered of the run (figures of the sampled steps, losses, histograms)."""
        return self._history

    def losses(self) -> tuple[np.ndarray, np.ndarray]:
        """(steps, loss values) of every step whose loss was seen."""
        return self._history.losses()

    def names(self, kind: str) -> list[str]:
        """The watched names of a kind (modules for activations, modules and parameters for
        gradients, parameters for weights and updates)."""
        return [r.name for r in self.plan.rows.rows if r.kind == kind]

    def history(self, name: str, kind: str, stat: str) -> np.ndarray:
        """One figure of one row over the sampled steps (aligned with `sampled_steps`); NaN where
        the row was not seen. `name` is a module's qualified name ("(root)" for the model) or a
        parameter's; for a module, weights/updates (and gradients, when the module's output
        gradient is not watched) aggregate its own parameters. `stat` is one of the fields
        (count, nan, inf, zeros, min, max, mean, std, l2, absmax, absmean, dead, saturated,
        ratio) or "rms" / "nonfinite"."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        rows = self.plan.rows
        row = rows.find(name, kind)
        if row is not None:
            return self._history.column(row, stat)
        members = [i for i, r in enumerate(rows.rows) if r.param and r.kind == kind and r.module == name]
        if not members:
            known = sorted({r.name for r in rows.rows if r.kind == kind})
            raise KeyError(f"no {kind} row named {name!r}; watched: {', '.join(known[:20])}{' ...' if len(known) > 20 else ''}")
        return self._history.aggregate(members, stat)

    def first_batch(self) -> dict[str, Any] | None:
        """The first batch as the model got it: {"inputs", "targets"} (NumPy, up to 64 examples)."""
        return self._taps.glimpse.first_batch()

    def predictions(self) -> dict[str, Any] | None:
        """Predictions on the first batch's first 16 examples over the run: {"steps" [S], "values"
        [S, 16] (p(true class) if kind == "p_true", else the first output), "kind", "targets", "seconds"}."""
        return self._taps.glimpse.predictions()

    def summary(self) -> str:
        """A per-layer table of the latest sampled figures, and the findings."""
        from ..summary import summary_table

        return summary_table(self.plan, self._history, self.findings, self._state.step)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<nnprobe.Probe {state}: {self._state.step} steps, {len(self.findings)} findings>"

    def report(self, path: str) -> str:
        """The HTML report of the run so far (the same page as `nnprobe report LOG_DIR`)."""
        from ..report import from_probe, render

        return str(render(from_probe(self), path))
