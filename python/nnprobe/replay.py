"""`nnprobe check LOG_DIR`: judge a finished run again, with today's checks, from its log.

The JSON Lines log holds every figure the checks read (the plan in the start record, each
step's loss, learning rates, events and, on sampled steps, the matrix of figures), so the same
`Judge` that ran live runs again over the same `StepFigures`, in step order, and reaches the same
findings. A log written before the figures were logged (no "plan") is refused with a clear error.
Reading goes through `report.logfile`, which skips and counts malformed lines.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from .checks.judge import Judge
from .figures import FIELDS, Plan, Sampled, StepFigures
from .findings import Finding
from .report.logfile import Log, LogError, pick_run, read_log, read_runs


def figures_of(log: Log) -> tuple[Plan, list[StepFigures]]:
    """The plan and every step's figures, in step order, from one run's log."""
    raw = log.start.meta.get("plan")
    if not isinstance(raw, dict):
        raise LogError(f"{log.path} has no plan (written by an nnprobe before 0.2): it cannot be judged again")
    try:
        plan = Plan.from_json(raw)
    except (KeyError, TypeError, ValueError) as e:
        raise LogError(f"{log.path}: its plan is damaged ({e})") from e
    entries: dict[int, dict[str, Any]] = {int(e["step"]): e for e in log.figures}
    losses = {r.step: r.value for r in log.losses}
    col = [log.start.fields.index(f) if f in log.start.fields else -1 for f in FIELDS]
    sampled: dict[int, Sampled] = {}
    for rec in log.steps:
        entry = entries.get(rec.step, {})
        mat = np.full((len(plan.rows), len(FIELDS)), np.nan, dtype=np.float32)
        for kind, by_name in rec.stats.items():
            for name, vals in by_name.items():
                i = plan.rows.find(name, kind)
                if i is not None:
                    mat[i] = [vals[c] if c >= 0 else math.nan for c in col]
        sampled[rec.step] = Sampled(mat, _ints(entry.get("act_order")), _ints(entry.get("grad_order")),
                                    set(_ints(entry.get("dead_below"))), judged=entry.get("judged", True) is not False,
                                    units={int(k): str(v) for k, v in (entry.get("units") or {}).items()})
    out: list[StepFigures] = []
    lrs: tuple[float, ...] | None = None
    for s in sorted(set(losses) | set(entries) | set(sampled)):
        figs = StepFigures.from_json(s, entries.get(s, {}), lrs)
        lrs = figs.lrs
        figs.loss = losses.get(s)
        figs.sampled = sampled.get(s)
        out.append(figs)
    return plan, out


def _ints(v: Any) -> list[int]:
    return [int(i) for i in v] if isinstance(v, list) else []


def judge(log: Log) -> list[Finding]:
    plan, figures = figures_of(log)
    j = Judge(plan)
    for figs in figures:
        j.judge(figs)
    j.finish()
    return j.findings


def judge_log(path: str | os.PathLike[str], run: str | None = None) -> list[Finding]:
    """Every finding today's checks raise on a logged run: `path` is a log_dir (its latest run, or
    the one `run` names) or one log file."""
    if os.path.isdir(path):
        runs, _ = read_runs(path)
        if not runs:
            raise LogError(f"no nnprobe log in {path}: pass the log_dir given to nnprobe.watch(log_dir=...)")
        return judge(pick_run(runs, run))
    return judge(read_log(path))
