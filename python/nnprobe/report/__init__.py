"""The HTML report: one self-contained file (plots embedded as PNG data URIs; it opens offline).

Per layer over steps, the pictures of Karpathy's "Building makemore Part 3": activation and
gradient distributions (log2-magnitude histograms), the update/weight ratio on a log scale with
the 1e-3 line, dead and saturated fractions, gradient norms, and the loss; then a per-layer table,
the findings with their `explain` text, and dependency-mask matrices when a check ran.

The input is a `RunData`, read from a run's JSON Lines log (`load_log`) or taken from a live
probe (`from_probe`), so `nnprobe report LOG_DIR` and `Probe.report(path)` draw the same page.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..findings import CATALOGUE, explain

JSONL_NAME = "nnprobe.jsonl"
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
    meta: dict[str, Any] = field(default_factory=dict)

    def col(self, row: int, stat: str) -> np.ndarray:
        if stat == "rms":
            m = self.mats[:, row]
            n = m[:, self.fields.index("count")] - m[:, self.fields.index("nan")] - m[:, self.fields.index("inf")]
            with np.errstate(all="ignore"):
                return np.where(n > 0, m[:, self.fields.index("l2")] / np.sqrt(np.maximum(n, 1)), np.nan)
        return self.mats[:, row, self.fields.index(stat)]

    def rows_of(self, kind: str, *, param: bool | None = None) -> list[int]:
        return [i for i, r in enumerate(self.rows) if r["kind"] == kind and (param is None or bool(r.get("param")) == param)]


def load_log(log_dir: str | os.PathLike) -> RunData:
    """Reads `<log_dir>/nnprobe.jsonl` (a killed run's partial file included) and any saved masks."""
    path = Path(log_dir) / JSONL_NAME
    if not path.exists():
        raise FileNotFoundError(f"no {JSONL_NAME} in {log_dir}: pass the log_dir given to nnprobe.watch(log_dir=...)")
    start: dict[str, Any] | None = None
    records: list[dict[str, Any]] = []
    losses: dict[int, float] = {}
    findings: dict[tuple[str, str | None], dict[str, Any]] = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                break  # the last line of a killed process may be cut short
            t = rec.get("type")
            if t == "start":
                start = rec
            elif t == "step":
                records.append(rec)
            if t in ("step", "losses"):
                for s, v in rec.get("losses", []):
                    losses[int(s)] = math.nan if v is None else float(v)
            elif t == "finding":
                findings.setdefault((rec["code"], rec.get("module")), rec)
            elif t == "end":
                for f in rec.get("findings", []):
                    findings[(f["code"], f.get("module"))] = f
    if start is None:
        raise ValueError(f"{path} has no start record: not an nnprobe log")
    fields = list(start["fields"])
    rows = list(start["rows"])
    index = {(r["kind"], r["name"]): i for i, r in enumerate(rows)}
    mats = np.full((len(records), len(rows), len(fields)), np.nan)
    hists: dict[int, list[tuple[int, np.ndarray]]] = {}
    for t, rec in enumerate(records):
        for kind, by_name in rec.get("stats", {}).items():
            for name, vals in by_name.items():
                i = index.get((kind, name))
                if i is not None:
                    mats[t, i] = [np.nan if v is None else v for v in vals]
        for kind, by_name in rec.get("hist", {}).items():
            for name, counts in by_name.items():
                i = index.get((kind, name))
                if i is not None:
                    hists.setdefault(i, []).append((int(rec["step"]), np.asarray(counts, dtype=np.float64)))
    ls = np.array(sorted(losses), dtype=np.int64)
    run = RunData(
        fields=fields, rows=rows, steps=np.array([int(r["step"]) for r in records], dtype=np.int64), mats=mats,
        hist_lo=int(start.get("hist", {}).get("lo", -48)), hists=hists, loss_steps=ls,
        loss_values=np.array([losses[s] for s in ls]), findings=list(findings.values()),
        meta={k: v for k, v in start.items() if k not in ("fields", "rows", "type")},
    )
    mask_dir = Path(log_dir) / MASK_DIR
    if mask_dir.is_dir():
        for p in sorted(mask_dir.glob("*.npy")):
            run.masks.append((p.stem.replace("_", " "), np.load(p)))
    return run


def save_mask(log_dir: str | os.PathLike, title: str, mask: np.ndarray) -> Path:
    """Keeps a dependency mask beside a run's log so that `nnprobe report` draws it."""
    d = Path(log_dir) / MASK_DIR
    d.mkdir(parents=True, exist_ok=True)
    p = d / (title.replace(" ", "_").replace("/", "-") + ".npy")
    np.save(p, np.asarray(mask, dtype=bool))
    return p


def from_probe(probe: Any) -> RunData:
    """The same figures, from a probe's in-memory history."""
    from dataclasses import asdict

    from ..figures import FIELDS

    h = probe.store
    hists: dict[int, list[tuple[int, np.ndarray]]] = {}
    for step, rows, counts in h.hists:
        for r, c in zip(rows, counts):
            hists.setdefault(int(r), []).append((int(step), np.asarray(c, dtype=np.float64)))
    ls, lv = h.losses()
    from .. import core

    findings = []
    for f in probe.findings:
        d = asdict(f)
        findings.append(d)
    return RunData(
        fields=list(FIELDS), rows=probe.plan.rows.describe(), steps=h.steps, mats=h.matrices.astype(np.float64),
        hist_lo=core.HIST_LO, hists=hists, loss_steps=ls, loss_values=lv, findings=findings,
        meta={"model": next(iter(probe.plan.modules.values()), "")},
    )


# ---------------------------------------------------------------- plots

def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _short(name: str, limit: int = 28) -> str:
    return name if len(name) <= limit else "…" + name[-(limit - 1):]


def _figure(title: str, xlabel: str, ylabel: str, *, logy: bool = False):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.2, 3.4))
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    return fig, ax


def _legend(ax: Any, n: int) -> None:
    if n and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)


def _pick(run: RunData, rows: list[int], stat: str, limit: int = 12) -> list[int]:
    """Rows with at least one finite value of `stat`, at most `limit` of them (evenly spread)."""
    ok = [i for i in rows if np.isfinite(run.col(i, stat)).any()]
    if len(ok) > limit:
        ok = [ok[int(k)] for k in np.linspace(0, len(ok) - 1, limit)]
    return ok


def plot_loss(run: RunData) -> str | None:
    fin = np.isfinite(run.loss_values)
    if fin.sum() < 2:
        return None
    vals = run.loss_values[fin]
    # log scale only when the loss spans a decade or more; a flat loss reads better on a linear axis
    fig, ax = _figure("Loss", "step", "loss", logy=bool((vals > 0).all() and vals.max() > 10 * vals.min()))
    ax.plot(run.loss_steps[fin], run.loss_values[fin], lw=1.2)
    bad = ~fin
    if bad.any():
        ax.scatter(run.loss_steps[bad], np.full(bad.sum(), np.nanmax(run.loss_values[fin])), marker="x", color="red", label="NaN/Inf")
        ax.legend(fontsize=8)
    return _png(fig)


def plot_distributions(run: RunData, kind: str, title: str) -> str | None:
    rows = [i for i in run.rows_of(kind) if i in run.hists and (kind != "gradients" or not run.rows[i].get("param"))]
    if not rows and kind == "gradients":
        rows = [i for i in run.rows_of(kind) if i in run.hists]
    if not rows:
        return None
    if len(rows) > 10:
        rows = [rows[int(k)] for k in np.linspace(0, len(rows) - 1, 10)]
    fig, ax = _figure(title + " (latest histogram)", "log2 |x|", "fraction of values")
    for i in rows:
        step, counts = run.hists[i][-1]
        total = counts.sum()
        if total <= 0:
            continue
        x = run.hist_lo + np.arange(len(counts)) + 0.5
        nz = np.nonzero(counts)[0]
        lo, hi = max(nz.min() - 1, 0), min(nz.max() + 2, len(counts))
        ax.plot(x[lo:hi], counts[lo:hi] / total, lw=1.2, label=f"{_short(run.rows[i]['name'])} ({run.rows[i].get('type', '')})")
    _legend(ax, len(rows))
    return _png(fig)


def plot_over_steps(run: RunData, rows: list[int], stat: str, title: str, ylabel: str, *, logy=False,
                    log10=False, line: float | None = None, pct=False) -> str | None:
    rows = _pick(run, rows, stat)
    if not rows or len(run.steps) == 0:
        return None
    fig, ax = _figure(title, "step", ylabel, logy=logy)
    for i in rows:
        y = run.col(i, stat).astype(np.float64)
        with np.errstate(all="ignore"):
            if log10:
                y = np.where(y > 0, np.log10(y), np.nan)
            if pct:
                y = 100 * y
        ok = np.isfinite(y)
        ax.plot(run.steps[ok], y[ok], lw=1.1, marker="." if ok.sum() < 30 else None, label=_short(run.rows[i]["name"]))
    if line is not None:
        ax.axhline(line, color="k", ls="--", lw=1, label=f"{line:g}")
    _legend(ax, len(rows) + (line is not None))
    return _png(fig)


def plot_mask(title: str, mask: np.ndarray) -> str:
    import matplotlib.pyplot as plt

    _figure("", "", "")  # sets the backend
    plt.close("all")
    fig, ax = plt.subplots(figsize=(3.6, 3.4))
    ax.imshow(np.asarray(mask, dtype=float), cmap="Greys", interpolation="nearest", vmin=0, vmax=1)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("input j")
    ax.set_ylabel("output i")
    return _png(fig)


# ---------------------------------------------------------------- page

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px auto;max-width:1100px;color:#222}
h1{margin-bottom:4px} .meta{color:#666} h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
table{border-collapse:collapse;font-size:13px} td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f4f4f4} td:first-child,th:first-child{text-align:left}
.sev-error{color:#b00020;font-weight:600} .sev-warning{color:#a15c00;font-weight:600} .sev-info{color:#0b6e99}
.finding{border-left:4px solid #ddd;padding:6px 12px;margin:10px 0;background:#fafafa}
.finding.error{border-color:#b00020} .finding.warning{border-color:#e09000} .finding.info{border-color:#0b6e99}
.finding pre{white-space:pre-wrap;font-size:12px;color:#444} .plots img{max-width:100%;margin:6px 0}
.ok{color:#17803d;font-weight:600}
"""


def _fmt(v: float, pct: bool = False) -> str:
    if v is None or not np.isfinite(v):
        return "–"
    return f"{v:.0%}" if pct else f"{v:.3g}"


def _layer_table(run: RunData) -> str:
    acts = run.rows_of("activations")
    if not acts or len(run.steps) == 0:
        return "<p>No per-layer figures were sampled.</p>"

    def last(i: int, stat: str) -> float:
        y = run.col(i, stat)
        ok = np.isfinite(y)
        return float(y[ok][-1]) if ok.any() else math.nan

    grads = {r["name"]: i for i, r in ((i, run.rows[i]) for i in run.rows_of("gradients", param=False))}
    out = ["<table><tr><th>layer</th><th>type</th><th>act mean</th><th>act std</th><th>dead</th><th>saturated</th><th>out-grad rms</th></tr>"]
    for i in acts:
        r = run.rows[i]
        g = grads.get(r["name"])
        out.append(
            f"<tr><td>{html.escape(r['name'])}</td><td>{html.escape(str(r.get('type', '')))}</td>"
            f"<td>{_fmt(last(i, 'mean'))}</td><td>{_fmt(last(i, 'std'))}</td>"
            f"<td>{_fmt(last(i, 'dead'), True) if 'dead' in run.fields else '–'}</td>"
            f"<td>{_fmt(last(i, 'saturated'), True) if 'saturated' in run.fields else '–'}</td>"
            f"<td>{_fmt(last(g, 'rms')) if g is not None else '–'}</td></tr>"
        )
    out.append("</table>")
    return "".join(out)


def _findings_html(findings: Iterable[dict[str, Any]]) -> str:
    order = {"error": 0, "warning": 1, "info": 2}
    items = sorted(findings, key=lambda f: (order.get(f.get("severity", "info"), 3), f.get("step") or 0))
    if not items:
        return "<p class='ok'>No findings: nothing looked wrong.</p>"
    out = []
    for f in items:
        sev = html.escape(str(f.get("severity", "info")))
        where = f" in <code>{html.escape(str(f['module']))}</code>" if f.get("module") else ""
        when = f", first at step {f['step']}" if f.get("step") is not None else ""
        times = f", seen {f['count']} times" if f.get("count", 1) > 1 else ""
        text = explain(f["code"]) if f.get("code") in CATALOGUE else ""
        out.append(
            f"<div class='finding {sev}'><span class='sev-{sev}'>{sev.upper()}</span> "
            f"<b>{html.escape(f['code'])}</b>{where}{when}{times}: {html.escape(str(f.get('message', '')))}"
            + (f"<br><i>{html.escape(str(f['hint']))}</i>" if f.get("hint") else "")
            + (f"<details><summary>explain</summary><pre>{html.escape(text)}</pre></details>" if text else "")
            + "</div>"
        )
    return "".join(out)


def render(run: RunData, path: str | os.PathLike, *, title: str = "nnprobe report",
           extra_findings: Iterable[dict[str, Any]] = ()) -> Path:
    """Writes the report for `run` to `path` and returns the path."""
    param_grads = run.rows_of("gradients", param=True)
    updates = [i for i in run.rows_of("updates") if len(run.rows[i].get("shape", [0, 0])) >= 2] or run.rows_of("updates")
    acts = run.rows_of("activations")
    plots = [
        ("Loss", plot_loss(run)),
        ("Activation distributions", plot_distributions(run, "activations", "Activation distributions")),
        ("Gradient distributions", plot_distributions(run, "gradients", "Gradient distributions")),
        ("Update / weight ratio", plot_over_steps(run, updates, "ratio", "Update / weight ratio (log10)", "log10 ratio", log10=True, line=-3.0)),
        ("Dead units", plot_over_steps(run, acts, "dead", "Dead ReLU units (% of the layer)", "%", pct=True) if "dead" in run.fields else None),
        ("Saturated activations", plot_over_steps(run, acts, "saturated", "Saturated tanh/sigmoid outputs (%)", "%", pct=True) if "saturated" in run.fields else None),
        ("Gradient norms", plot_over_steps(run, param_grads, "l2", "Parameter gradient norms", "||g||2", logy=True)),
        ("Activation std", plot_over_steps(run, acts, "std", "Activation std per layer", "std", logy=True)),
    ]
    findings = list(run.findings) + list(extra_findings)
    n_err = sum(f.get("severity") == "error" for f in findings)
    n_warn = sum(f.get("severity") == "warning" for f in findings)
    verdict = ("<span class='ok'>clean: nothing above info</span>" if not n_err and not n_warn
               else f"<span class='sev-error'>{n_err} error(s)</span>, <span class='sev-warning'>{n_warn} warning(s)</span>")
    meta = run.meta
    steps = int(run.loss_steps.max()) + 1 if len(run.loss_steps) else (int(run.steps.max()) + 1 if len(run.steps) else 0)
    parts = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1><p class='meta'>model {html.escape(str(meta.get('model', '?')))} · "
        f"{steps} steps · {len(run.steps)} sampled · {len(run.rows)} watched rows · {verdict}</p>",
        "<h2>Findings</h2>", _findings_html(findings),
        "<h2>Per layer over steps</h2><div class='plots'>",
    ]
    for name, img in plots:
        if img:
            parts.append(f"<figure><img alt='{html.escape(name)}' src='{img}'></figure>")
    parts.append("</div>")
    if run.masks:
        parts.append("<h2>Dependency masks</h2><p>Black: output i depends on input j. A clean batch is the "
                     "identity; a causal model is lower-triangular.</p><div class='plots'>")
        for t, m in run.masks:
            parts.append(f"<figure><img alt='{html.escape(t)}' src='{plot_mask(t, m)}'></figure>")
        parts.append("</div>")
    parts.append("<h2>Layers (latest sampled figures)</h2>" + _layer_table(run))
    # marks the page once every plot has decoded, so a headless browser can confirm it rendered
    parts.append("<script>addEventListener('load',()=>{const i=[...document.images];"
                 "document.body.dataset.rendered=i.filter(x=>x.complete&&x.naturalWidth>0).length+'/'+i.length;});</script>")
    parts.append("</body></html>")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(parts), encoding="utf-8")
    return out
