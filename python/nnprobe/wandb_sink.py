"""`watch(..., wandb=True)`: a probe's per-layer figures and findings in the active wandb run.

One `run.log` per logged (sampled) step holds `nnprobe/step`, `nnprobe/loss` (that step's loss,
when it is known by then) and the per-layer scalars the TensorBoard sink writes, under
`nnprobe/<kind>/<name>/<stat>`: activations mean, std, dead, saturated; gradients rms; updates
ratio; and on the steps that took histograms, `nnprobe/<kind>/<name>/log2_magnitude` (a
`wandb.Histogram` over log2|x|). At close the findings go in as one `wandb.Table`
(`nnprobe/findings`) and their counts per severity into the run summary.

Every figure is already a host number when it gets here: the sink adds no device work and no
host sync.

Why a step metric and not `run.log(..., step=...)`: wandb drops a row whose `step` is below the
run's current step, and the run's step belongs to whatever else logs into it (the Hugging Face
`Trainer`, Lightning, the user's own loop). `define_metric("nnprobe/*", step_metric=
"nnprobe/step")` plots nnprobe's keys against the probe's own step counter instead.

Why an error when there is no active run, rather than starting one: a run started here would go
to the default entity and project (online, unless the user set offline mode), apart from the
metrics the user logs, and the user's own `wandb.init` afterwards would end it. Calling
`wandb.init(...)` before `watch()` is one line and leaves every choice to the user.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import core
from .errors import NnprobeError
from .figures import Plan, Rows
from .findings import Finding
from .sinks import Sink, row_scalars

PREFIX = "nnprobe"
FINDING_COLUMNS = ["code", "severity", "module", "step", "count", "message", "hint"]


class NoActiveRunError(NnprobeError, RuntimeError):
    """`watch(..., wandb=True)` was called before `wandb.init()`."""


def _import_wandb() -> Any:
    try:
        import wandb
    except ImportError as e:
        raise ModuleNotFoundError(
            "watch(wandb=True) needs the wandb package: pip install 'nnprobe[wandb]'", name="wandb"
        ) from e
    return wandb


class WandbSink(Sink):
    """Writes into the run that is active when the probe opens (`wandb.run`)."""

    def __init__(self) -> None:
        wandb = _import_wandb()
        run = wandb.run
        if run is None:
            raise NoActiveRunError(
                "watch(wandb=True) logs into the active wandb run, and there is none: call wandb.init(...) "
                "before watch() (or leave wandb=False)"
            )
        self._wandb = wandb
        self._run = run
        self._rows: Rows | None = None

    def start(self, meta: dict[str, Any], plan: Plan) -> None:
        self._rows = plan.rows
        self._hist_lo = core.HIST_LO
        self._run.define_metric(f"{PREFIX}/step", hidden=True)
        self._run.define_metric(f"{PREFIX}/*", step_metric=f"{PREFIX}/step")

    def scalars(self, step: int, mat: np.ndarray, present: np.ndarray, losses: list[tuple[int, float]]) -> dict[str, float]:
        """The numbers of one row of the run's history (the keys and values `record` logs,
        histograms aside)."""
        assert self._rows is not None
        rows = self._rows.rows
        out: dict[str, float] = {f"{PREFIX}/step": step}
        loss = next((v for s, v in reversed(losses) if s == step), None)
        if loss is not None and math.isfinite(loss):
            out[f"{PREFIX}/loss"] = float(loss)
        for i in np.nonzero(present)[0]:
            r = rows[i]
            for k, v in row_scalars(r.kind, mat[i]).items():
                out[f"{PREFIX}/{r.kind}/{r.name}/{k}"] = v
        return out

    def record(self, step: int, mat: np.ndarray, present: np.ndarray, losses: list[tuple[int, float]],
               hists: dict[int, np.ndarray], figures: list[dict[str, Any]]) -> None:
        assert self._rows is not None
        row: dict[str, Any] = dict(self.scalars(step, mat, present, losses))
        for i, counts in hists.items():
            nz = np.nonzero(counts)[0]
            if len(nz) == 0:
                continue
            # only the occupied range of the 64 bins: a plot from 2^-48 to 2^16 would be unreadable
            lo, hi = int(nz[0]), int(nz[-1]) + 1
            edges = np.arange(lo, hi + 1, dtype=np.float64) + self._hist_lo
            r = self._rows.rows[i]
            row[f"{PREFIX}/{r.kind}/{r.name}/log2_magnitude"] = self._wandb.Histogram(
                np_histogram=(np.asarray(counts[lo:hi], dtype=np.int64).tolist(), edges.tolist())
            )
        self._run.log(row)

    def close(self, step: int, findings: list[Finding]) -> None:
        # one table at the end: a wandb.Table is immutable once logged, so a table per finding
        # would store every earlier finding again; the console and the JSON Lines log show them live
        data = [[f.code, f.severity, f.module or "", f.step, f.count, f.message, f.hint] for f in findings]
        self._run.log({f"{PREFIX}/findings": self._wandb.Table(columns=FINDING_COLUMNS, data=data)})
        for sev in ("error", "warning", "info"):
            self._run.summary[f"{PREFIX}/{sev}s"] = sum(f.severity == sev for f in findings)
