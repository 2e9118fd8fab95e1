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
  elements of big parameters). `plan`: the run's static facts the checks read (`figures.Plan`:
  rows, modules in registration order, param groups, train/eval-sensitive modules).
- "step" (one per sampled, logged step): `step`, `time`, `loss` (this step's, or null),
  `losses` ([[step, loss], ...]: every step's loss since the previous record, so the loss curve
  is complete though only some steps are sampled), `stats` ({kind: {name: [figures in `fields`
  order]}}; non-finite figures are null; rows not seen this step are absent) and, on the steps
  that took histograms, `hist` ({kind: {name: [64 counts]}}).
  Figures are float32 values in nine significant digits (they read back bit for bit).
  `figures`: the other figures of every step since the previous record that has any (learning
  rates when they changed, events, a validation loss, the order rows were seen in, ...; see
  `StepFigures.to_json`), so that `nnprobe check` judges the run again exactly as it ran.
- "losses": `losses` and `figures` as above, written when many steps pass without a sampled one.
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

from . import core
from .errors import OutputError
from .figures import FIELDS, Plan, Rows, num32
from .figures import jsonable as _jsonable
from .figures import num as _num
from .findings import Finding
from .report.logfile import new_log_name

log = logging.getLogger("nnprobe")

FORMAT_VERSION = 1


def finding_record(f: Finding) -> dict[str, Any]:
    d = asdict(f)
    d["data"] = _jsonable(d["data"])
    return d


class Sink:
    """What a probe hands its sinks. `record`: a sampled step's figures, the losses and the other
    steps' figures (compact JSON, see `StepFigures.to_json`) since the last call; `losses`: the
    same without a sampled step."""

    def start(self, meta: dict[str, Any], plan: Plan) -> None: ...
    def record(self, step: int, mat: np.ndarray, present: np.ndarray, losses: list[tuple[int, float]],
               hists: dict[int, np.ndarray], figures: list[dict[str, Any]]) -> None: ...
    def losses(self, losses: list[tuple[int, float]], figures: list[dict[str, Any]]) -> None: ...
    def finding(self, f: Finding) -> None: ...
    def close(self, step: int, findings: list[Finding]) -> None: ...


def row_scalars(kind: str, m: np.ndarray) -> dict[str, float]:
    """The per-layer numbers plotted over steps (TensorBoard, wandb): activation mean, std, dead
    and saturated fractions; gradient rms; update ratio. Non-finite ones are left out."""
    C = {f: i for i, f in enumerate(FIELDS)}
    if kind == "activations":
        vals = {"mean": m[C["mean"]], "std": m[C["std"]], "dead": m[C["dead"]], "saturated": m[C["saturated"]]}
    elif kind == "gradients":
        n = m[C["count"]] - m[C["nan"]] - m[C["inf"]]
        vals = {"rms": m[C["l2"]] / math.sqrt(n) if n > 0 else math.nan}
    elif kind == "updates":
        vals = {"ratio": m[C["ratio"]]}
    else:
        vals = {}
    return {k: float(v) for k, v in vals.items() if math.isfinite(v)}


class ConsoleSink(Sink):
    """One line per finding, as it happens (rich, on stderr)."""

    _STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}

    def __init__(self) -> None:
        from rich.console import Console

        self._console = Console(stderr=True, highlight=False, soft_wrap=True)

    def finding(self, f: Finding) -> None:
        from rich.markup import escape

        where = f" [{f.module}]" if f.module else ""  # escaped once, below, brackets included
        when = f" step {f.step}" if f.step is not None else ""
        self._console.print(
            f"[dim]nnprobe[/dim] [{self._STYLE[f.severity]}]{f.severity.upper()}[/] "
            f"[bold]{f.code}[/bold]{escape(where)}{when}: {escape(f.message)}"
        )


class JsonlSink(Sink):
    def __init__(self, log_dir: str | os.PathLike[str]) -> None:
        try:
            os.makedirs(log_dir, exist_ok=True)
            self.path = os.path.join(log_dir, new_log_name())
            self._open()
        except OSError as e:
            raise OutputError(f"watch(log_dir={str(log_dir)!r}) cannot write there ({e.strerror or e}); pass a directory "
                              "you can write to") from e
        self._rows: Rows | None = None

    def _open(self) -> None:
        # "x": a name taken by another probe is an error here, never a truncated log there.
        # Unbuffered: each record goes out in one write() of the whole line, so a process killed
        # mid-run leaves whole lines (a buffered file flushes a long record in several writes)
        self._f = open(self.path, "xb", buffering=0)

    def _write(self, obj: dict[str, Any]) -> None:
        line = memoryview((json.dumps(obj, separators=(",", ":"), allow_nan=False) + "\n").encode("utf-8"))
        while line:  # a regular file takes it in one call; a short write is finished, not dropped
            line = line[self._f.write(line) or 0 :]

    def start(self, meta: dict[str, Any], plan: Plan) -> None:
        self._rows = plan.rows
        self._write({
            "type": "start", "version": FORMAT_VERSION, "time": time.time(), **_jsonable(meta),
            "fields": list(FIELDS), "hist": {"lo": core.HIST_LO, "bins": core.HIST_BINS, "unit": "log2|x|"},
            "rows": _jsonable(plan.rows.describe()), "plan": _jsonable(plan.to_json()),
        })

    def record(self, step: int, mat: np.ndarray, present: np.ndarray, losses: list[tuple[int, float]],
               hists: dict[int, np.ndarray], figures: list[dict[str, Any]]) -> None:
        assert self._rows is not None
        rows = self._rows.rows
        stats: dict[str, dict[str, Any]] = {}
        for i in np.nonzero(present)[0]:
            r = rows[i]
            stats.setdefault(r.kind, {})[r.name] = [num32(float(v)) for v in mat[i]]
        rec: dict[str, Any] = {
            "type": "step", "step": step, "time": time.time(),
            "loss": next((_num(v) for s, v in reversed(losses) if s == step), None),
            "losses": [[s, _num(v)] for s, v in losses], "stats": stats, "figures": figures,
        }
        if hists:
            h: dict[str, dict[str, Any]] = {}
            for row, counts in hists.items():
                h.setdefault(rows[row].kind, {})[rows[row].name] = [int(c) for c in counts]
            rec["hist"] = h
        self._write(rec)

    def losses(self, losses: list[tuple[int, float]], figures: list[dict[str, Any]]) -> None:
        self._write({"type": "losses", "losses": [[s, _num(v)] for s, v in losses], "figures": figures})

    def finding(self, f: Finding) -> None:
        self._write({"type": "finding", **finding_record(f)})

    def close(self, step: int, findings: list[Finding]) -> None:
        self._write({"type": "end", "step": step, "findings": [finding_record(f) for f in findings]})
        self._f.close()


class TensorBoardSink(Sink):
    """Scalars per layer (activation mean/std, dead and saturated fractions, gradient rms, update
    ratio), the loss, log2-magnitude histograms, and the findings as text."""

    def __init__(self, log_dir: str | os.PathLike[str] | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._w = SummaryWriter(log_dir=log_dir)
        self._rows: Rows | None = None

    def start(self, meta: dict[str, Any], plan: Plan) -> None:
        self._rows = plan.rows

    def record(self, step: int, mat: np.ndarray, present: np.ndarray, losses: list[tuple[int, float]],
               hists: dict[int, np.ndarray], figures: list[dict[str, Any]]) -> None:
        assert self._rows is not None
        rows = self._rows.rows
        for s, v in losses:
            if math.isfinite(v):
                self._w.add_scalar("loss", v, s)
        for i in np.nonzero(present)[0]:
            r = rows[i]
            for k, v in row_scalars(r.kind, mat[i]).items():
                self._w.add_scalar(f"{r.kind}/{r.name}/{k}", v, step)
        lo = core.HIST_LO
        C = {f: k for k, f in enumerate(FIELDS)}
        for row, counts in hists.items():
            r = rows[row]
            total = int(counts.sum())
            if total == 0:
                continue
            nz = np.nonzero(counts)[0]
            limits = [2.0 ** (lo + j + 1) for j in range(len(counts))]
            m = mat[row]
            self._w.add_histogram_raw(
                f"{r.kind}/{r.name}/log2_magnitude", min=2.0 ** (lo + nz[0]), max=2.0 ** (lo + nz[-1] + 1),
                num=total, sum=float(m[C["absmean"]] * total) if math.isfinite(m[C["absmean"]]) else 0.0,
                sum_squares=float(m[C["l2"]] ** 2), bucket_limits=limits, bucket_counts=[int(c) for c in counts],
                global_step=step,
            )
        self._w.flush()

    def losses(self, losses: list[tuple[int, float]], figures: list[dict[str, Any]]) -> None:
        for s, v in losses:
            if math.isfinite(v):
                self._w.add_scalar("loss", v, s)

    def finding(self, f: Finding) -> None:
        self._w.add_text(f"findings/{f.code}", str(f), f.step if f.step is not None else 0)

    def close(self, step: int, findings: list[Finding]) -> None:
        self._w.flush()
        self._w.close()


def make_sinks(*, console: bool, log_dir: str | os.PathLike[str] | None, tensorboard: bool, wandb: bool = False) -> list[Sink]:
    sinks: list[Sink] = []
    if wandb:  # first: without wandb or an active run it fails before anything is opened
        from .wandb_sink import WandbSink

        sinks.append(WandbSink())
    if console:
        sinks.append(ConsoleSink())
    if log_dir is not None:
        sinks.append(JsonlSink(log_dir))
    if tensorboard:
        sinks.append(TensorBoardSink(log_dir))
    return sinks
