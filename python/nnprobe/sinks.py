"""Where a probe's findings and figures go: the console, a JSON Lines log, TensorBoard.

JSON Lines log (written by rank 0, flushed after every record so a killed process leaves a
readable file; `nnprobe report LOG_DIR` reads it, through `nnprobe.report.logfile`). Each probe
writes its own file, `<log_dir>/nnprobe-<UTC start time>-<pid>-<random>.jsonl`, created
exclusively, so that two probes given the same `log_dir` (a rerun, two models in one script)
never truncate or interleave each other's records; versions before that wrote one
`nnprobe.jsonl`, which readers still accept. One JSON object per line, each with a "type":

- "start" (first line): `version` (1), `time` (Unix seconds), `model` (class name), `every`,
  `overhead`, `world_size`, `device_stats`, `fields` (the figures of a row, in order: count, nan,
  inf, zeros, min, max, mean, std, l2, absmax, absmean over the finite values, then `dead` (the
  fraction of a ReLU layer's units at zero for the whole batch), `saturated` (the fraction of a
  tanh/sigmoid's outputs beyond 0.97 / outside [0.03, 0.97]) and `ratio` (rms(update) /
  rms(weight) of a parameter)), `hist` ({"lo", "bins", "unit": "log2|x|"}: bin i counts finite
  non-zero values with floor(log2|x|) = lo + i, the end bins also what lies beyond), and `rows`:
  every watched row as {"name", "kind", "module", "type", "param", ...}. Kinds: "activations"
  (a module's output), "gradients" (for a module: the gradient of the loss with respect to its
  output; for a parameter: its gradient at the optimizer step), "weights" (before the step),
  "updates" (weights after the step minus before; over a strided sample of at most 65536
  elements of big parameters).
- "step" (one per sampled, logged step): `step`, `time`, `loss` (this step's, or null),
  `losses` ([[step, loss], ...]: every step's loss since the previous record, so the loss curve
  is complete though only some steps are sampled), `stats` ({kind: {name: [figures in `fields`
  order]}}; non-finite figures are null; rows not seen this step are absent) and, on the steps
  that took histograms, `hist` ({kind: {name: [64 counts]}}).
- "losses": `losses` as above, written when many steps pass without a sampled one.
- "finding": a finding when it is first raised: `code`, `severity`, `message`, `module`,
  `step`, `hint`, `data`.
- "end" (at close): `step` (steps seen) and `findings` (all of them, with their `count`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict
from typing import Any

import numpy as np

from .findings import Finding
from .history import FIELDS, Rows
from .report.logfile import new_log_name

log = logging.getLogger("nnprobe")

FORMAT_VERSION = 1


def _num(v: float) -> float | None:
    if not math.isfinite(v):
        return None
    return float(f"{v:.6g}")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return _num(float(obj))
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    return str(obj)


def finding_record(f: Finding) -> dict[str, Any]:
    d = asdict(f)
    d["data"] = _jsonable(d["data"])
    return d


class Sink:
    def start(self, meta: dict[str, Any], rows: Rows) -> None: ...
    def record(self, step: int, mat: np.ndarray, present: np.ndarray, losses: list[tuple[int, float]],
               hists: dict[int, np.ndarray]) -> None: ...
    def losses(self, losses: list[tuple[int, float]]) -> None: ...
    def finding(self, f: Finding) -> None: ...
    def close(self, step: int, findings: list[Finding]) -> None: ...


class ConsoleSink(Sink):
    """One line per finding, as it happens (rich, on stderr)."""

    _STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}

    def __init__(self) -> None:
        from rich.console import Console

        self._console = Console(stderr=True, highlight=False, soft_wrap=True)

    def finding(self, f: Finding) -> None:
        from rich.markup import escape

        where = f" [{escape(f.module)}]" if f.module else ""
        when = f" step {f.step}" if f.step is not None else ""
        self._console.print(
            f"[dim]nnprobe[/dim] [{self._STYLE[f.severity]}]{f.severity.upper()}[/] "
            f"[bold]{f.code}[/bold]{escape(where)}{when}: {escape(f.message)}"
        )


class JsonlSink(Sink):
    def __init__(self, log_dir: str) -> None:
        os.makedirs(log_dir, exist_ok=True)
        self.path = os.path.join(log_dir, new_log_name())
        # "x": a name taken by another probe is an error here, never a truncated log there
        self._f = open(self.path, "x", encoding="utf-8")
        self._rows: Rows | None = None

    def _write(self, obj: dict[str, Any]) -> None:
        self._f.write(json.dumps(obj, separators=(",", ":"), allow_nan=False))
        self._f.write("\n")
        self._f.flush()

    def start(self, meta: dict[str, Any], rows: Rows) -> None:
        from . import _core

        self._rows = rows
        self._write({
            "type": "start", "version": FORMAT_VERSION, "time": time.time(), **_jsonable(meta),
            "fields": list(FIELDS), "hist": {"lo": int(_core.HIST_LO), "bins": int(_core.HIST_BINS), "unit": "log2|x|"},
            "rows": _jsonable(rows.describe()),
        })

    def record(self, step: int, mat: np.ndarray, present: np.ndarray, losses: list[tuple[int, float]],
               hists: dict[int, np.ndarray]) -> None:
        assert self._rows is not None
        rows = self._rows.rows
        stats: dict[str, dict[str, Any]] = {}
        for i in np.nonzero(present)[0]:
            r = rows[i]
            stats.setdefault(r.kind, {})[r.name] = [_num(float(v)) for v in mat[i]]
        rec: dict[str, Any] = {
            "type": "step", "step": step, "time": time.time(),
            "loss": next((_num(v) for s, v in reversed(losses) if s == step), None),
            "losses": [[s, _num(v)] for s, v in losses], "stats": stats,
        }
        if hists:
            h: dict[str, dict[str, Any]] = {}
            for i, counts in hists.items():
                h.setdefault(rows[i].kind, {})[rows[i].name] = [int(c) for c in counts]
            rec["hist"] = h
        self._write(rec)

    def losses(self, losses: list[tuple[int, float]]) -> None:
        self._write({"type": "losses", "losses": [[s, _num(v)] for s, v in losses]})

    def finding(self, f: Finding) -> None:
        self._write({"type": "finding", **finding_record(f)})

    def close(self, step: int, findings: list[Finding]) -> None:
        self._write({"type": "end", "step": step, "findings": [finding_record(f) for f in findings]})
        self._f.close()


class TensorBoardSink(Sink):
    """Scalars per layer (activation mean/std, dead and saturated fractions, gradient rms, update
    ratio), the loss, log2-magnitude histograms, and the findings as text."""

    def __init__(self, log_dir: str | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._w = SummaryWriter(log_dir=log_dir)
        self._rows: Rows | None = None

    def start(self, meta: dict[str, Any], rows: Rows) -> None:
        self._rows = rows

    def record(self, step: int, mat: np.ndarray, present: np.ndarray, losses: list[tuple[int, float]],
               hists: dict[int, np.ndarray]) -> None:
        from . import _core

        assert self._rows is not None
        rows = self._rows.rows
        C = {f: i for i, f in enumerate(FIELDS)}
        for s, v in losses:
            if math.isfinite(v):
                self._w.add_scalar("loss", v, s)
        for i in np.nonzero(present)[0]:
            r, m = rows[i], mat[i]
            n = m[C["count"]] - m[C["nan"]] - m[C["inf"]]
            rms = m[C["l2"]] / math.sqrt(n) if n > 0 else math.nan
            vals: dict[str, float] = {}
            if r.kind == "activations":
                vals = {"mean": m[C["mean"]], "std": m[C["std"]], "dead": m[C["dead"]], "saturated": m[C["saturated"]]}
            elif r.kind == "gradients":
                vals = {"rms": rms}
            elif r.kind == "updates":
                vals = {"ratio": m[C["ratio"]]}
            for k, v in vals.items():
                if math.isfinite(v):
                    self._w.add_scalar(f"{r.kind}/{r.name}/{k}", float(v), step)
        lo = int(_core.HIST_LO)
        for i, counts in hists.items():
            r = rows[i]
            total = int(counts.sum())
            if total == 0:
                continue
            nz = np.nonzero(counts)[0]
            limits = [2.0 ** (lo + j + 1) for j in range(len(counts))]
            m = mat[i]
            self._w.add_histogram_raw(
                f"{r.kind}/{r.name}/log2_magnitude", min=2.0 ** (lo + nz[0]), max=2.0 ** (lo + nz[-1] + 1),
                num=total, sum=float(m[C["absmean"]] * total) if math.isfinite(m[C["absmean"]]) else 0.0,
                sum_squares=float(m[C["l2"]] ** 2), bucket_limits=limits, bucket_counts=[int(c) for c in counts],
                global_step=step,
            )
        self._w.flush()

    def losses(self, losses: list[tuple[int, float]]) -> None:
        for s, v in losses:
            if math.isfinite(v):
                self._w.add_scalar("loss", v, s)

    def finding(self, f: Finding) -> None:
        self._w.add_text(f"findings/{f.code}", str(f), f.step if f.step is not None else 0)

    def close(self, step: int, findings: list[Finding]) -> None:
        self._w.flush()
        self._w.close()
