"""Reading nnprobe's JSON Lines logs: the one place that knows the files' names and checks their
records (the format is described in `nnprobe.sinks`).

A log directory holds one file per probe, `nnprobe-<UTC time>-<pid>-<random>.jsonl`, so two
probes given the same `log_dir` never write into each other's file; logs written before that
are one `nnprobe.jsonl` and are read as one more run. A log is treated as hostile: a line that
is not JSON, not an object, of an unknown type, or whose fields have the wrong types or sizes
is skipped and counted, and the lines after it are still read. A file without a valid start
record is not a run.

    runs = read_runs(log_dir)        # every run in the directory, oldest first
    log = runs[-1]                   # or read_log(path)
    log.start.fields, log.steps, log.losses, log.findings, log.skipped
"""

from __future__ import annotations

import datetime
import json
import math
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LEGACY_NAME = "nnprobe.jsonl"
PREFIX, SUFFIX = "nnprobe-", ".jsonl"
KINDS = ("activations", "gradients", "weights", "updates")
SEVERITIES = ("error", "warning", "info")
# Steps are counters: anything past 2**53 cannot come from a real run and would lose precision as
# a float on the plots' axes.
MAX_STEP = 2**53
MAX_PROBLEMS = 20  # reasons kept for the warning; the count covers them all


def new_log_name() -> str:
    """A fresh file name for one probe's log. The UTC time first, so names sort in the order the
    runs started; the pid and a random part so that two probes starting in the same microsecond
    (in one process or two) still get different files."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"{PREFIX}{now}-{os.getpid()}-{secrets.token_hex(3)}{SUFFIX}"


def log_files(log_dir: str | os.PathLike) -> list[Path]:
    """The log files in `log_dir`, oldest first: the legacy `nnprobe.jsonl` (written only by
    versions older than any per-probe file), then the per-probe files by their start time.
    `log_dir` may also be one log file."""
    d = Path(log_dir)
    if d.is_file():
        return [d]
    legacy = [d / LEGACY_NAME] if (d / LEGACY_NAME).is_file() else []
    return legacy + sorted(p for p in d.glob(f"{PREFIX}*{SUFFIX}") if p.is_file())


@dataclass(frozen=True)
class Start:
    """The first record: what was watched and in which order the figures of a row come."""

    version: int
    time: float | None
    fields: tuple[str, ...]
    rows: tuple[dict[str, Any], ...]  # {"name", "kind", "module", "type", "param", ...}
    hist_lo: int
    hist_bins: int
    meta: dict[str, Any]  # the other keys: model, every, overhead, world_size, ...


@dataclass(frozen=True)
class StepRecord:
    """One sampled step: `stats[kind][name]` holds the row's figures in `Start.fields` order
    (NaN where the log has null); `hist[kind][name]` its log2-magnitude counts, on the steps that
    took them."""

    step: int
    time: float | None
    loss: float | None
    stats: dict[str, dict[str, tuple[float, ...]]]
    hist: dict[str, dict[str, tuple[int, ...]]]


@dataclass(frozen=True)
class LossRecord:
    step: int
    value: float  # NaN where the loss was not finite


@dataclass(frozen=True)
class FindingRecord:
    code: str
    severity: str
    message: str
    module: str | None
    step: int | None
    hint: str
    data: dict[str, Any]
    count: int

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "severity": self.severity, "message": self.message, "module": self.module,
                "step": self.step, "hint": self.hint, "data": self.data, "count": self.count}


@dataclass
class Log:
    """One run's log. `findings` has one entry per (code, module): the end record's (with its
    count) where the run closed, else the first one logged. `ended` is false for a killed run."""

    path: Path
    start: Start
    steps: list[StepRecord]
    losses: list[LossRecord]  # one per step, sorted; the latest value where a step repeats
    findings: list[FindingRecord]
    ended: bool
    skipped: int  # lines that were not valid records
    problems: list[str] = field(default_factory=list)  # why, for the first MAX_PROBLEMS of them
    figures: list[dict[str, Any]] = field(default_factory=list)  # each step's other figures (see replay)


class LogError(ValueError):
    """The file holds no usable run (no valid start record)."""


class _Bad(Exception):
    """A record that is not what the format says; its message says what is wrong."""


def _reject_constant(name: str) -> Any:
    # the writer never writes NaN/Infinity (allow_nan=False): a line that has them is not ours
    raise _Bad(f"{name} is not JSON")


def _int(v: Any, what: str, lo: int = 0, hi: int = MAX_STEP) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise _Bad(f"{what} must be an integer in [{lo}, {hi}]")
    return v


def _num(v: Any, what: str) -> float:
    """A figure: a finite number, or null for a non-finite one (read as NaN)."""
    if v is None:
        return math.nan
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _Bad(f"{what} must be a number or null")
    try:
        x = float(v)
    except OverflowError:
        raise _Bad(f"{what} is out of range") from None
    if not math.isfinite(x):  # 1e999 parses as inf; the writer writes null for a non-finite figure
        raise _Bad(f"{what} must be finite or null")
    return x


def _str(v: Any, what: str, *, null: bool = False) -> Any:
    if v is None and null:
        return None
    if not isinstance(v, str):
        raise _Bad(f"{what} must be a string")
    return v


def _dict(v: Any, what: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise _Bad(f"{what} must be an object")
    return v


def _list(v: Any, what: str) -> list[Any]:
    if not isinstance(v, list):
        raise _Bad(f"{what} must be a list")
    return v


def _time(v: Any) -> float | None:
    if v is None:
        return None
    t = _num(v, "time")
    return t if math.isfinite(t) else None


def _start(rec: dict[str, Any]) -> Start:
    fields = tuple(_str(f, "fields[]") for f in _list(rec.get("fields"), "fields"))
    if len(set(fields)) != len(fields):
        raise _Bad("fields repeat")
    rows = []
    for r in _list(rec.get("rows"), "rows"):
        r = _dict(r, "rows[]")
        _str(r.get("name"), "a row's name")
        if r.get("kind") not in KINDS:
            raise _Bad(f"a row's kind must be one of {KINDS}")
        _str(r.get("module", ""), "a row's module", null=True)
        _str(r.get("type", ""), "a row's type", null=True)
        if not isinstance(r.get("param", False), bool):
            raise _Bad("a row's param must be true or false")
        rows.append(r)
    hist = _dict(rec.get("hist", {}), "hist")
    return Start(
        version=_int(rec.get("version", 1), "version", 1, 1000), time=_time(rec.get("time")), fields=fields,
        rows=tuple(rows), hist_lo=_int(hist.get("lo", -48), "hist.lo", -4096, 4096),
        hist_bins=_int(hist.get("bins", 64), "hist.bins", 1, 4096),
        meta={k: v for k, v in rec.items() if k not in ("type", "fields", "rows", "hist")},
    )


def _losses(v: Any) -> list[LossRecord]:
    out = []
    for pair in _list(v, "losses"):
        if not isinstance(pair, list) or len(pair) != 2:
            raise _Bad("losses[] must be [step, loss]")
        out.append(LossRecord(_int(pair[0], "a loss's step"), _num(pair[1], "a loss")))
    return out


def _step(rec: dict[str, Any], start: Start) -> StepRecord:
    stats: dict[str, dict[str, tuple[float, ...]]] = {}
    for kind, by_name in _dict(rec.get("stats", {}), "stats").items():
        for name, vals in _dict(by_name, f"stats.{kind}").items():
            vals = _list(vals, "figures")
            if len(vals) != len(start.fields):
                raise _Bad(f"a row has {len(vals)} figures, the start record names {len(start.fields)}")
            stats.setdefault(kind, {})[name] = tuple(_num(v, "a figure") for v in vals)
    hist: dict[str, dict[str, tuple[int, ...]]] = {}
    for kind, by_name in _dict(rec.get("hist", {}), "hist").items():
        for name, counts in _dict(by_name, f"hist.{kind}").items():
            counts = _list(counts, "hist counts")
            if len(counts) != start.hist_bins:
                raise _Bad(f"a histogram has {len(counts)} bins, the start record says {start.hist_bins}")
            hist.setdefault(kind, {})[name] = tuple(_int(c, "a histogram count", 0, 2**63) for c in counts)
    loss = rec.get("loss")
    return StepRecord(step=_int(rec.get("step"), "step"), time=_time(rec.get("time")),
                      loss=None if loss is None else _num(loss, "loss"), stats=stats, hist=hist)


def _figures(v: Any) -> list[dict[str, Any]]:
    """A record's per-step figures (StepFigures.to_json): objects with an integer step; their
    fields are read, and checked, by `nnprobe.replay`."""
    out = []
    for entry in _list(v, "figures"):
        entry = _dict(entry, "figures[]")
        _int(entry.get("step"), "a figure's step")
        out.append(entry)
    return out


def _finding(rec: dict[str, Any]) -> FindingRecord:
    if rec.get("severity") not in SEVERITIES:
        raise _Bad(f"a finding's severity must be one of {SEVERITIES}")
    step = rec.get("step")
    return FindingRecord(
        code=_str(rec.get("code"), "a finding's code"), severity=rec["severity"],
        message=_str(rec.get("message", ""), "a finding's message"),
        module=_str(rec.get("module"), "a finding's module", null=True),
        step=None if step is None else _int(step, "a finding's step"),
        hint=_str(rec.get("hint") or "", "a finding's hint"), data=_dict(rec.get("data") or {}, "a finding's data"),
        count=_int(rec.get("count", 1), "a finding's count", 1, 2**63),
    )


def _lines(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON or the exception that stopped it) for each non-blank line."""
    with open(path, "rb") as fh:  # bytes: one line that is not UTF-8 must not stop the others
        for no, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                yield no, json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
            except _Bad as e:
                yield no, e
            except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, deep nesting
                yield no, _Bad(f"not JSON ({type(e).__name__})")


def read_log(path: str | os.PathLike) -> Log:
    """Reads one log file; raises `LogError` when it holds no valid start record."""
    path = Path(path)
    parsed = list(_lines(path))
    skipped, problems = 0, list[str]()
    start: Start | None = None
    for _no, rec in parsed:
        if isinstance(rec, dict) and rec.get("type") == "start":
            try:
                start = _start(rec)
                break
            except _Bad:
                pass  # counted with the other bad lines below
    if start is None:
        raise LogError(f"{path} has no start record: not an nnprobe log, or its first line is damaged")
    steps: list[StepRecord] = []
    figures: list[dict[str, Any]] = []
    losses: dict[int, float] = {}
    first: dict[tuple[str, str | None], FindingRecord] = {}
    final: dict[tuple[str, str | None], FindingRecord] = {}
    ended = seen_start = False
    for no, rec in parsed:
        try:
            if isinstance(rec, _Bad):
                raise rec
            rec = _dict(rec, "a record")
            kind = rec.get("type")
            if kind == "start":
                if seen_start or _start(rec) != start:
                    raise _Bad("a second start record")
                seen_start = True
            elif kind == "step":
                s = _step(rec, start)
                new = _losses(rec.get("losses", []))
                more = _figures(rec.get("figures", []))
                steps.append(s)
                losses.update((r.step, r.value) for r in new)
                figures += more
            elif kind == "losses":
                new = _losses(rec.get("losses"))
                more = _figures(rec.get("figures", []))
                losses.update((r.step, r.value) for r in new)
                figures += more
            elif kind == "finding":
                f = _finding(rec)
                first.setdefault((f.code, f.module), f)
            elif kind == "end":
                _int(rec.get("step"), "end step")
                fs = [_finding(_dict(f, "a finding")) for f in _list(rec.get("findings", []), "findings")]
                final.update(((f.code, f.module), f) for f in fs)
                ended = True
            else:
                raise _Bad(f"unknown record type {str(kind)[:40]!r}")
        except _Bad as e:
            skipped += 1
            if len(problems) < MAX_PROBLEMS:
                problems.append(f"line {no}: {e}")
    steps.sort(key=lambda s: s.step)  # stable: a repeated step keeps the order it was written in
    findings = {**first, **final}
    return Log(path=path, start=start, steps=steps, losses=[LossRecord(s, losses[s]) for s in sorted(losses)],
               findings=list(findings.values()), ended=ended, skipped=skipped, problems=problems, figures=figures)


def read_runs(log_dir: str | os.PathLike) -> tuple[list[Log], list[str]]:
    """Every run in `log_dir`, oldest first, and a line for each file that holds none."""
    runs, unusable = [], []
    for p in log_files(log_dir):
        try:
            runs.append(read_log(p))
        except (LogError, OSError) as e:
            unusable.append(str(e))
    return runs, unusable


def pick_run(runs: list[Log], which: str | None = None) -> Log:
    """The run `which` names (its file name, or a part of it that only one run's name has), or the
    latest. Raises `LogError` naming the runs when `which` matches none or several."""
    if not runs:
        raise LogError("no run to choose from")
    if which is None:
        return runs[-1]
    hits = [r for r in runs if r.path.name == which] or [r for r in runs if which in r.path.name]
    if len(hits) == 1:
        return hits[0]
    names = ", ".join(r.path.name for r in runs)
    raise LogError(f"{'no run' if not hits else f'{len(hits)} runs'} match {which!r}; the runs are: {names}")
