"""`Probe.summary()`: a per-layer table of the latest sampled figures, and the findings."""

from __future__ import annotations

import math

import numpy as np

from .figures import DEAD, RATIO, SATURATED, Plan
from .findings import Finding
from .runtime.history import History
from .runtime.tensors import rms

_HEAD = ("layer", "type", "act mean", "act std", "dead", "sat", "out-grad rms", "param-grad rms", "update ratio", "findings")


def _fmt(v: float | None, pct: bool = False) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    return f"{v:.0%}" if pct else f"{v:.3g}"


def summary_table(plan: Plan, history: History, findings: list[Finding], steps: int) -> str:
    from .core import MEAN, STD

    rows = plan.rows
    by_module: dict[str, set[str]] = {}
    for f in findings:
        by_module.setdefault(f.module or "", set()).add(f.code)
    has_figures = len(history.matrices) > 0
    lines: list[tuple[str, ...]] = []
    for name, mtype in plan.modules.items():
        arow, grow = rows.find(name, "activations"), rows.find(name, "gradients")
        if arow is None and (grow is None or rows.rows[grow].param):
            continue  # not a watched module
        act = history.last(arow) if arow is not None else None
        og = history.last(grow) if grow is not None else None
        prow = [i for i, r in enumerate(rows.rows) if r.param and r.module == name and r.kind == "gradients"]
        urow = [i for i, r in enumerate(rows.rows) if r.param and r.module == name and r.kind == "updates"]
        pg = history.aggregate(prow, "rms")[-1:] if prow and has_figures else np.zeros(0)
        ratios = [history.last(i) for i in urow]
        ratio_vals = [float(x[RATIO]) for x in ratios if x is not None and math.isfinite(x[RATIO])]
        lines.append((
            name, mtype,
            _fmt(float(act[MEAN]) if act is not None else None),
            _fmt(float(act[STD]) if act is not None else None),
            _fmt(history.last_measured(arow, DEAD) if arow is not None else None, pct=True),
            _fmt(history.last_measured(arow, SATURATED) if arow is not None else None, pct=True),
            _fmt(float(rms(og.astype(np.float64)[None, :])[0]) if og is not None else None),
            _fmt(float(pg[0]) if len(pg) else None),
            _fmt(max(ratio_vals) if ratio_vals else None),
            ",".join(sorted(by_module.get(name, set()))),
        ))
    widths = [max(len(_HEAD[i]), *(len(r[i]) for r in lines)) if lines else len(_HEAD[i]) for i in range(len(_HEAD))]
    out = [f"nnprobe watch: {steps} steps, {len(history.steps)} sampled, {len(findings)} findings"]
    out.append("  ".join(h.ljust(w) for h, w in zip(_HEAD, widths)))
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in lines]
    if findings:
        out.append("")
        out += [str(f) for f in findings]
    return "\n".join(out)
