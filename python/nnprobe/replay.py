"""`nnprobe check LOG_DIR`: judge a finished run again, with today's checks, from its log.

The JSON Lines log holds every figure the checks read (the plan in the start record, each
step's loss, learning rates, events and, on sampled steps, the matrix of figures), so the same
`Judge` that ran live runs again over the same `StepFigures`, in step order, and reaches the same
findings. A log written before the figures were logged (no "plan") is refused with a clear error.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .checks.judge import Judge
from .figures import FIELDS, Plan, Sampled, StepFigures
from .findings import Finding


def figures_from_records(records: Iterable[dict[str, Any]]) -> tuple[Plan, list[StepFigures]]:
    """The plan and every step's figures, in step order, from a log's records."""
    plan: Plan | None = None
    fields: list[str] = list(FIELDS)
    losses: dict[int, float] = {}
    entries: dict[int, dict[str, Any]] = {}
    sampled: dict[int, Sampled] = {}
    for rec in records:
        kind = rec.get("type")
        if kind == "start":
            if not isinstance(rec.get("plan"), dict):
                raise ValueError("this log has no plan (written by an nnprobe before 0.2): it cannot be judged again")
            plan = Plan.from_json(rec["plan"])
            fields = [str(f) for f in rec.get("fields", FIELDS)]
        elif kind in ("step", "losses") and plan is not None:
            for s, v in rec.get("losses", []) or []:
                losses[int(s)] = math.nan if v is None else float(v)
            for entry in rec.get("figures", []) or []:
                if isinstance(entry, dict) and isinstance(entry.get("step"), int):
                    entries[entry["step"]] = entry
            if kind == "step":
                step = int(rec["step"])
                entry = entries.get(step, {})
                sampled[step] = Sampled(
                    _matrix(plan, fields, rec.get("stats", {})),
                    [int(i) for i in entry.get("act_order", [])], [int(i) for i in entry.get("grad_order", [])],
                    {int(i) for i in entry.get("dead_below", [])}, judged=bool(entry.get("judged", True)))
    if plan is None:
        raise ValueError("the log has no start record: not an nnprobe log")
    steps = sorted(set(losses) | set(entries) | set(sampled))
    out: list[StepFigures] = []
    lrs: tuple[float, ...] | None = None
    for s in steps:
        figs = StepFigures.from_json(s, entries.get(s, {}), lrs)
        lrs = figs.lrs
        figs.loss = losses.get(s)
        figs.sampled = sampled.get(s)
        out.append(figs)
    return plan, out


def _matrix(plan: Plan, fields: list[str], stats: dict[str, dict[str, list[float | None]]]) -> np.ndarray:
    """A step's figures as the live checks saw them: float32, NaN where a row was not seen."""
    col = [fields.index(f) for f in FIELDS]
    mat = np.full((len(plan.rows), len(FIELDS)), np.nan, dtype=np.float32)
    for kind, by_name in stats.items():
        for name, vals in by_name.items():
            i = plan.rows.find(name, kind)
            if i is not None:
                mat[i] = [np.nan if vals[c] is None else vals[c] for c in col]
    return mat


def judge_log(path: str | os.PathLike[str]) -> list[Finding]:
    """Every finding today's checks raise on the run logged at `path` (a log file, or a log_dir
    holding one run's log)."""
    plan, figures = figures_from_records(_records(Path(path)))
    judge = Judge(plan)
    for figs in figures:
        judge.judge(figs)
    judge.finish()
    return judge.findings


def _records(path: Path) -> Iterable[dict[str, Any]]:
    if path.is_dir():
        logs = sorted(path.glob("*.jsonl"), key=lambda p: p.stat().st_mtime)
        if not logs:
            raise FileNotFoundError(f"no .jsonl log in {path}: pass the log_dir given to nnprobe.watch(log_dir=...)")
        path = logs[-1]
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a cut last line of a killed run
            if isinstance(rec, dict):
                yield rec
