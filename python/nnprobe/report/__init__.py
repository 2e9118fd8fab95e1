"""The HTML report: one self-contained file (plots drawn as inline SVG; it opens offline and
needs nothing beyond the package's own dependencies).

Per layer over steps, the pictures of Karpathy's "Building makemore Part 3": activation and
gradient distributions (log2-magnitude histograms over steps), the update/weight ratio on a log
scale with the 1e-3 line, dead and saturated fractions, gradient norms, and the loss; then a
per-layer table, the findings with their `explain` text, and dependency-mask matrices when a
check ran.

The input is a `RunData`, read from a run's JSON Lines log (`load_log`, through `logfile`) or
taken from a live probe (`from_probe`), so `nnprobe report LOG_DIR` and the demo draw the same
page. Everything shown is escaped: a log may come from anywhere.
"""

from __future__ import annotations

import datetime
import html
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..findings import CATALOGUE, explain
from . import svg
from .logfile import Log, LogError, log_files, pick_run, read_runs
from .views import batch_view, prediction_view

MASK_DIR = "masks"


@dataclass
class RunData:
    fields: list[str]
    rows: list[dict[str, Any]]
    steps: np.ndarray  # sampled steps [T]
    mats: np.ndarray  # [T, rows, fields] float64, NaN where a row was not seen
    hist_lo: int = -48
    hists: dict[int, list[tuple[int, np.ndarray]]] = field(default_factory=dict)  # row -> [(step, counts)]
    loss_steps: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    loss_values: np.ndarray = field(default_factory=lambda: np.zeros(0))
    findings: list[dict[str, Any]] = field(default_factory=list)
    masks: list[tuple[str, np.ndarray]] = field(default_factory=list)
    views: list[str] = field(default_factory=list)  # live only: the batch before the net, prediction dynamics (HTML)
    meta: dict[str, Any] = field(default_factory=dict)
    source: str | None = None  # the log file's name
    ended: bool = True  # false for a log that a killed process left
    others: list[str] = field(default_factory=list)  # the other runs' files in the same log_dir
    skipped: int = 0  # malformed log lines left out
    problems: list[str] = field(default_factory=list)  # why (the first few), and unreadable masks

    def col(self, row: int, stat: str) -> np.ndarray:
        """A row's figure over the sampled steps; all NaN where the log does not have it."""
        if stat == "rms":
            n = self.col(row, "count") - self.col(row, "nan") - self.col(row, "inf")
            with np.errstate(all="ignore"):
                return np.where(n > 0, self.col(row, "l2") / np.sqrt(np.maximum(n, 1)), np.nan)
        if stat not in self.fields:
            return np.full(len(self.steps), np.nan)
        return self.mats[:, row, self.fields.index(stat)]

    def rows_of(self, kind: str, *, param: bool | None = None) -> list[int]:
        return [i for i, r in enumerate(self.rows) if r["kind"] == kind and (param is None or bool(r.get("param")) == param)]


def run_data(log: Log) -> RunData:
    """The figures of one parsed log, as arrays."""
    fields, rows = list(log.start.fields), list(log.start.rows)
    index = {(r["kind"], r["name"]): i for i, r in enumerate(rows)}
    mats = np.full((len(log.steps), len(rows), len(fields)), np.nan)
    hists: dict[int, list[tuple[int, np.ndarray]]] = {}
    for t, rec in enumerate(log.steps):
        for kind, by_name in rec.stats.items():
            for name, vals in by_name.items():
                i = index.get((kind, name))
                if i is not None:
                    mats[t, i] = vals
        for kind, counts_by_name in rec.hist.items():
            for name, counts in counts_by_name.items():
                i = index.get((kind, name))
                if i is not None:
                    hists.setdefault(i, []).append((rec.step, np.asarray(counts, dtype=np.float64)))
    return RunData(
        fields=fields, rows=rows, steps=np.array([r.step for r in log.steps], dtype=np.int64), mats=mats,
        hist_lo=log.start.hist_lo, hists=hists, loss_steps=np.array([r.step for r in log.losses], dtype=np.int64),
        loss_values=np.array([r.value for r in log.losses], dtype=np.float64),
        findings=[f.as_dict() for f in log.findings], meta=dict(log.start.meta), source=log.path.name,
        ended=log.ended, skipped=log.skipped, problems=list(log.problems),
    )


def load_log(log_dir: str | os.PathLike, run: str | None = None) -> RunData:
    """One run of `log_dir` (by default the latest; `run` names another, see `logfile.pick_run`)
    and the dependency masks saved beside it. Raises FileNotFoundError without a log file, and
    `LogError` (a ValueError) when no file holds a usable run or `run` names none."""
    if not log_files(log_dir):
        raise FileNotFoundError(f"no nnprobe log (nnprobe-*.jsonl or nnprobe.jsonl) in {log_dir}: "
                                "pass the log_dir given to nnprobe.watch(log_dir=...)")
    runs, unusable = read_runs(log_dir)
    if not runs:
        raise LogError("; ".join(unusable))
    log = pick_run(runs, run)
    data = run_data(log)
    data.others = [r.path.name for r in runs if r is not log]
    mask_dir = log.path.parent / MASK_DIR
    for p in sorted(mask_dir.glob("*.npy")) if mask_dir.is_dir() else []:
        try:
            m = np.load(p, allow_pickle=False)  # never unpickle what a log directory holds
            if m.ndim != 2 or 0 in m.shape or not (m.dtype == bool or np.issubdtype(m.dtype, np.number)):
                raise ValueError(f"a {m.dtype} array of shape {m.shape}, not a 2-d mask")
            data.masks.append((p.stem.replace("_", " "), m != 0))
        except (OSError, ValueError, EOFError) as e:
            data.problems.append(f"{MASK_DIR}/{p.name}: unreadable ({e})")
    return data


def save_mask(log_dir: str | os.PathLike, title: str, mask: np.ndarray) -> Path:
    """Keeps a dependency mask beside a run's log so that `nnprobe report` draws it."""
    d = Path(log_dir) / MASK_DIR
    d.mkdir(parents=True, exist_ok=True)
    p = d / (title.replace(" ", "_").replace("/", "-") + ".npy")
    np.save(p, np.asarray(mask, dtype=bool))
    return p


def from_probe(probe: Any) -> RunData:
    """The same figures, from a probe's in-memory history. The one place that reads a probe's
    internals (until the probe offers them publicly)."""
    from dataclasses import asdict

    from .. import core
    from ..figures import FIELDS

    h = probe.store
    hists: dict[int, list[tuple[int, np.ndarray]]] = {}
    for step, rows, counts in h.hists:
        for r, c in zip(rows, counts):
            hists.setdefault(int(r), []).append((int(step), np.asarray(c, dtype=np.float64)))
    ls, lv = h.losses()
    return RunData(
        fields=list(FIELDS), rows=probe.plan.rows.describe(), steps=h.steps, mats=h.matrices.astype(np.float64),
        hist_lo=core.HIST_LO, hists=hists, loss_steps=ls, loss_values=lv,
        findings=[asdict(f) for f in probe.findings],
        views=[v for v in (batch_view(probe.first_batch()), prediction_view(probe.predictions())) if v],
        meta={"model": next(iter(probe.plan.modules.values()), "")},
    )


# ---------------------------------------------------------------- plots

def _pick(run: RunData, rows: list[int], stat: str, limit: int = len(svg.PALETTE)) -> list[int]:
    """Rows with at least one finite value of `stat`, at most `limit` of them (evenly spread)."""
    ok = [i for i in rows if np.isfinite(run.col(i, stat)).any()]
    if len(ok) > limit:
        ok = [ok[int(k)] for k in np.linspace(0, len(ok) - 1, limit)]
    return ok


def _label(row: dict[str, Any]) -> str:
    """A layer's name and type ("3 (ReLU)"); a parameter's name alone ("3.weight")."""
    return str(row["name"]) if row.get("param") or not row.get("type") else f"{row['name']} ({row['type']})"


def plot_loss(run: RunData) -> str | None:
    fin = np.isfinite(run.loss_values)
    if fin.sum() < 2:
        return None
    vals = run.loss_values[fin]
    # log scale only when the loss spans a decade or more; a flat loss reads better on a linear axis
    logy = bool((vals > 0).all() and vals.max() > 10 * vals.min())
    return svg.line_chart([svg.Series("loss", run.loss_steps[fin], vals)], title="Loss", xlabel="step", ylabel="loss",
                          logy=logy, marks=svg.Marks("NaN/Inf", run.loss_steps[~fin]), legend=False)


def plot_distributions(run: RunData, kind: str, title: str) -> str | None:
    # for gradients, the gradient flowing into each layer's output (as in makemore), else the parameters'
    rows = [i for i in run.rows_of(kind) if i in run.hists and (kind != "gradients" or not run.rows[i].get("param"))]
    if not rows and kind == "gradients":
        rows = [i for i in run.rows_of(kind) if i in run.hists]
    if len(rows) > 10:
        rows = [rows[int(k)] for k in np.linspace(0, len(rows) - 1, 10)]
    strips = []
    for i in rows:
        steps, counts = zip(*run.hists[i])
        if len({len(c) for c in counts}) == 1:  # a bin count that changes mid-run cannot come from one probe
            strips.append(svg.Strip(_label(run.rows[i]), np.asarray(steps), np.stack(counts)))
    return svg.heat_strips(strips, title=title + ": log2|x| per sampled step (darker: more values)", lo=run.hist_lo)


def plot_over_steps(run: RunData, rows: list[int], stat: str, title: str, ylabel: str, *, logy: bool = False,
                    line: tuple[float, str] | None = None, pct: bool = False) -> str | None:
    rows = _pick(run, rows, stat)
    if not rows or len(run.steps) == 0:
        return None
    series = [svg.Series(_label(run.rows[i]), run.steps, run.col(i, stat) * (100 if pct else 1)) for i in rows]
    return svg.line_chart(series, title=title, xlabel="step", ylabel=ylabel, logy=logy, hline=line,
                          ymin=0.0 if pct else None)


def plot_mask(title: str, mask: np.ndarray) -> str:
    return svg.matrix(np.asarray(mask, dtype=bool), title=title)


# ---------------------------------------------------------------- page

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px auto;max-width:1100px;padding:0 16px;color:#222}
h1{margin-bottom:4px} .meta{color:#666;margin:4px 0} h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
table{border-collapse:collapse;font-size:13px} td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f4f4f4} td:first-child,th:first-child,td:nth-child(2),th:nth-child(2){text-align:left}
.sev-error{color:#b00020;font-weight:600} .sev-warning{color:#a15c00;font-weight:600} .sev-info{color:#0b6e99}
.finding{border-left:4px solid #ddd;padding:6px 12px;margin:10px 0;background:#fafafa;overflow-wrap:anywhere}
.finding.error{border-color:#b00020} .finding.warning{border-color:#e09000} .finding.info{border-color:#0b6e99}
.finding pre{white-space:pre-wrap;font-size:12px;color:#444} .data{font-size:12px;color:#555}
.plots{display:flex;flex-wrap:wrap;gap:8px} .plots figure{margin:4px 0} .plots svg{max-width:100%;height:auto}
.ok{color:#17803d;font-weight:600} .warn{color:#a15c00}
"""


def _e(v: Any) -> str:
    """Text for the page, escaped for element content and quoted attributes alike."""
    return html.escape(str(v), quote=True)


def _plain(v: Any, depth: int = 0) -> str:
    """A short readable form of a value read from a log: bounded in depth and length, whatever the
    log holds (escape the result)."""
    if depth > 3:
        return "…"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        items = list(v.items())
        return "{" + ", ".join(f"{str(k)[:40]}: {_plain(x, depth + 1)}" for k, x in items[:12]) + (", …" if len(items) > 12 else "") + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_plain(x, depth + 1) for x in v[:12]) + (", …" if len(v) > 12 else "") + "]"
    text = str(v)
    return text if len(text) <= 200 else text[:199] + "…"


def _fmt(v: float, pct: bool = False) -> str:
    if v is None or not np.isfinite(v):
        return "–"
    return f"{v:.0%}" if pct else f"{v:.3g}"


def _layer_table(run: RunData) -> str:
    acts = run.rows_of("activations")
    if not acts or len(run.steps) == 0:
        return "<p>No per-layer figures were sampled.</p>"

    def last(i: int | None, stat: str, pct: bool = False) -> str:
        if i is None:
            return "–"
        y = run.col(i, stat)
        ok = np.isfinite(y)
        return _fmt(float(y[ok][-1]), pct) if ok.any() else "–"

    grads = {run.rows[i]["name"]: i for i in run.rows_of("gradients", param=False)}
    out = [("<table><tr><th>layer</th><th>type</th><th>act mean</th><th>act std</th><th>dead</th><th>saturated</th>"
            "<th>out-grad rms</th></tr>")]
    for i in acts:
        r = run.rows[i]
        g = grads.get(r["name"])
        out.append(f"<tr><td>{_e(r['name'])}</td><td>{_e(r.get('type') or '')}</td><td>{last(i, 'mean')}</td>"
                   f"<td>{last(i, 'std')}</td><td>{last(i, 'dead', True)}</td><td>{last(i, 'saturated', True)}</td>"
                   f"<td>{last(g, 'rms')}</td></tr>")
    out.append("</table>")
    return "".join(out)


_ORDER = {"error": 0, "warning": 1, "info": 2}


def _findings_html(findings: Iterable[dict[str, Any]]) -> str:
    def key(f: dict[str, Any]) -> tuple[int, int]:
        step = f.get("step")
        return _ORDER.get(str(f.get("severity")), 3), step if isinstance(step, int) else 0

    items = sorted(findings, key=key)
    if not items:
        return "<p class='ok'>No findings: nothing looked wrong.</p>"
    out = []
    for f in items:
        sev = f.get("severity")
        sev = sev if sev in _ORDER else "info"  # also a CSS class: only the three known names
        code = str(f.get("code", "?"))
        where = f" in <code>{_e(f['module'])}</code>" if f.get("module") else ""
        when = f", first at step {_e(f['step'])}" if f.get("step") is not None else ""
        count = f.get("count", 1)
        times = f", seen {_e(count)} times" if isinstance(count, int) and count > 1 else ""
        text = explain(code) if code in CATALOGUE else ""
        data = f.get("data")
        out.append(
            f"<div class='finding {sev}'><span class='sev-{sev}'>{sev.upper()}</span> "
            f"<b>{_e(code)}</b>{where}{when}{times}: {_e(f.get('message', ''))}"
            + (f"<br><i>{_e(f['hint'])}</i>" if f.get("hint") else "")
            + (f"<div class='data'>figures: {_e(_plain(data))}</div>" if data else "")
            + (f"<details><summary>explain</summary><pre>{_e(text)}</pre></details>" if text else "")
            + "</div>"
        )
    return "".join(out)


def _run_lines(run: RunData) -> str:
    """Where the figures come from: the log file, the run's settings, what was left out."""
    meta = dict(run.meta)
    lines = []
    t = meta.pop("time", None)
    meta.pop("model", None)
    when = ""
    if isinstance(t, (int, float)) and not isinstance(t, bool) and 0 <= t < 2e10:
        when = datetime.datetime.fromtimestamp(t, datetime.UTC).strftime(" started %Y-%m-%d %H:%M UTC")
    if run.source:
        lines.append(f"log {_e(run.source)}{when}" + ("" if run.ended else " (no end record: the run was killed or is still going)"))
    if meta:
        lines.append("settings: " + _e(", ".join(f"{str(k)[:40]}={_plain(v, 1)}" for k, v in list(meta.items())[:20])))
    if run.others:
        lines.append(f"{len(run.others)} other run(s) in this log_dir, not shown here (nnprobe report --run NAME): "
                     + _e(", ".join(run.others)))
    if run.skipped or run.problems:
        lines.append(f"<span class='warn'>{run.skipped} malformed log line(s) skipped</span>"
                     + (": " + _e("; ".join(run.problems)) if run.problems else ""))
    return "".join(f"<p class='meta'>{line}</p>" for line in lines)


def render(run: RunData, path: str | os.PathLike, *, title: str = "nnprobe report",
           extra_findings: Iterable[dict[str, Any]] = ()) -> Path:
    """Writes the report for `run` to `path` and returns the path."""
    def shape2(i: int) -> bool:
        shape = run.rows[i].get("shape")
        return isinstance(shape, list) and len(shape) >= 2

    param_grads = run.rows_of("gradients", param=True)
    # matrices (weights, kernels) are the parameters whose update ratio the 1e-3 rule is about
    updates = [i for i in run.rows_of("updates") if shape2(i)] or run.rows_of("updates")
    acts = run.rows_of("activations")
    plots = [
        ("Loss", plot_loss(run)),
        ("Activation distributions", plot_distributions(run, "activations", "Activation distributions")),
        ("Gradient distributions", plot_distributions(run, "gradients", "Gradient distributions")),
        ("Update / weight ratio", plot_over_steps(run, updates, "ratio", "Update / weight ratio (rms)", "ratio",
                                                  logy=True, line=(1e-3, "1e-3 rule of thumb"))),
        ("Dead units", plot_over_steps(run, acts, "dead", "Dead ReLU units (% of the layer)", "%", pct=True)),
        ("Saturated activations", plot_over_steps(run, acts, "saturated", "Saturated tanh/sigmoid outputs (%)", "%", pct=True)),
        ("Gradient norms", plot_over_steps(run, param_grads, "l2", "Parameter gradient norms", "||g||2", logy=True)),
        ("Activation std", plot_over_steps(run, acts, "std", "Activation std per layer", "std", logy=True)),
    ]
    findings = list(run.findings) + list(extra_findings)
    n_err = sum(f.get("severity") == "error" for f in findings)
    n_warn = sum(f.get("severity") == "warning" for f in findings)
    verdict = ("<span class='ok'>clean: nothing above info</span>" if not n_err and not n_warn
               else f"<span class='sev-error'>{n_err} error(s)</span>, <span class='sev-warning'>{n_warn} warning(s)</span>")
    seen = [int(a.max()) + 1 for a in (run.loss_steps, run.steps) if len(a)]
    parts = [
        (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>"
         f"<style>{_CSS}</style></head><body>"),
        (f"<h1>{_e(title)}</h1><p class='meta'>model {_e(_plain(run.meta.get('model', '?')))} · "
         f"{max(seen, default=0)} steps · {len(run.steps)} sampled · {len(run.rows)} watched rows · {verdict}</p>"),
        _run_lines(run),
        "<h2>Findings</h2>", _findings_html(findings),
        "<h2>Per layer over steps</h2><div class='plots'>",
    ]
    parts += [f"<figure data-plot='{_e(name)}'>{picture}</figure>" for name, picture in plots if picture]
    parts.append("</div>")
    if run.masks:
        parts.append("<h2>Dependency masks</h2><p>Black: output i depends on input j. A clean batch is the "
                     "identity; a causal model is lower-triangular.</p><div class='plots'>")
        parts += [f"<figure data-plot='{_e(t)}'>{plot_mask(t, m)}</figure>" for t, m in run.masks]
        parts.append("</div>")
    if run.views:
        parts.append("<h2>Just before the net, and what it predicts</h2><div class='plots'>")
        parts += run.views
        parts.append("</div>")
    parts.append("<h2>Layers (latest sampled figures)</h2>" + _layer_table(run))
    parts.append("</body></html>")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(parts), encoding="utf-8")
    return out
