"""Two views of the data for the report, from Karpathy's recipe, as inline SVG/HTML (no plotting
library; a page that opens offline):

- `batch_view`: "visualize just before the net": the first batch exactly as the model got it
  (`Probe.first_batch()`), drawn by its shape and dtype: an image grid for [B, C, H, W] (C of 1,
  3 or 4), [B, H, W, C] or [B, H, W] floats, on one colour scale for the whole batch (so a
  batch that is not normalised looks it, and the caption gives the per-channel mean and std);
  a table of token ids for integer sequences [B, T], with the targets under them and the
  positions where a target equals its own input marked (the missing shift by one); per-feature
  histograms for tables [B, F] (and [B, T, F] sequences, over B x T).
- `prediction_view`: "visualize prediction dynamics": the model's predictions on one fixed
  batch over the sampled steps (`Probe.predictions()`): one row per example, one column per
  capture, coloured by p(true class) from 0 to 1 for classifiers, else by the output's value.

Cells are small PNGs inside the SVG, scaled up without smoothing. Every piece of text is
escaped here (labels may come from logs).
"""

from __future__ import annotations

import base64
import html
import math
import struct
import zlib
from typing import Any

import numpy as np

WIDTH = 720
FONT = "font-family='system-ui,-apple-system,Segoe UI,sans-serif'"
MAX_IMAGES = 32
MAX_ROWS = 16
MAX_TOKENS = 32
MAX_FEATURES = 16
BINS = 20


def _esc(s: object) -> str:
    return html.escape(str(s), quote=True)


def _text(x: float, y: float, s: object, *, size: int = 11, anchor: str = "start") -> str:
    return f"<text x='{x:.1f}' y='{y:.1f}' font-size='{size}' text-anchor='{anchor}'>{_esc(s)}</text>"


def _png(rgb: np.ndarray) -> str:
    """A data URI of an RGB (or grey) uint8 image [H, W, 3] / [H, W]."""
    a = np.ascontiguousarray(rgb.astype(np.uint8))
    h, w = a.shape[:2]
    colour = 2 if a.ndim == 3 else 0
    raw = b"".join(b"\x00" + a[r].tobytes() for r in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    body = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    return "data:image/png;base64," + base64.b64encode(body).decode("ascii")


def _image(uri: str, x: float, y: float, w: float, h: float) -> str:
    return (f"<image x='{x:.1f}' y='{y:.1f}' width='{w:.1f}' height='{h:.1f}' preserveAspectRatio='none' "
            f"style='image-rendering:pixelated' href='{uri}'/>")


def _svg(title: str, w: float, h: float, body: str) -> str:
    return (f"<svg xmlns='http://www.w3.org/2000/svg' role='img' aria-label='{_esc(title)}' width='{w:.0f}' "
            f"height='{h:.0f}' viewBox='0 0 {w:.0f} {h:.0f}' {FONT}><title>{_esc(title)}</title>{body}</svg>")


def _figure(title: str, inner: str, caption: str) -> str:
    return (f"<figure class='nnprobe-view' data-view='{_esc(title)}'><figcaption><b>{_esc(title)}</b>: "
            f"{_esc(caption)}</figcaption>{inner}</figure>")


def _fmt(v: float) -> str:
    return f"{v:.3g}" if math.isfinite(v) else str(v)


# ---------------------------------------------------------------------------- the batch
def batch_view(batch: dict[str, Any] | None, *, title: str = "The batch just before the net") -> str:
    """HTML for the first batch as the model got it ({"inputs", "targets"}, NumPy arrays); an
    empty string when there is none."""
    if not batch or batch.get("inputs") is None:
        return ""
    x = np.asarray(batch["inputs"])
    y = batch.get("targets")
    y = None if y is None else np.asarray(y)
    shape = f"{list(x.shape)} {x.dtype}"
    if x.dtype.kind == "f" and _image_layout(x.shape) is not None:
        return _figure(title, _images(x, y), f"{shape}, drawn as images on one scale for the whole batch; "
                       + _channel_caption(x))
    if x.dtype.kind in "iub" and x.ndim == 2:
        extra = ""
        if y is not None and y.shape == x.shape and x.shape[1] >= 2:
            same, shifted = float(np.mean(x == y)), float(np.mean(x[:, 1:] == y[:, :-1]))
            extra = (f"; targets equal the inputs at the same position in {same:.0%} of positions, shifted by one in "
                     f"{shifted:.0%}" + (" (marked: the shift by one is missing)" if same > 0.5 else ""))
        return _figure(title, _tokens(x, y), f"{shape}: token ids of the first {min(len(x), MAX_ROWS)} sequences, "
                       f"targets below{extra}")
    if x.dtype.kind in "fiub" and x.ndim >= 2:
        feats = x.reshape(-1, x.shape[-1]) if x.ndim >= 3 else x
        return _figure(title, _histograms(feats.astype(np.float64)),
                       f"{shape}: per-feature histograms of the first {min(feats.shape[1], MAX_FEATURES)} features"
                       + (" (over batch and time)" if x.ndim >= 3 else ""))
    return _figure(title, f"<pre>{_esc(np.array2string(x.reshape(-1)[:64], precision=3))}</pre>", shape)


def _image_layout(shape: tuple[int, ...]) -> str | None:
    if len(shape) == 4 and shape[1] in (1, 3, 4) and shape[2] >= 4 and shape[3] >= 4:
        return "nchw"
    if len(shape) == 4 and shape[3] in (1, 3, 4) and shape[1] >= 4 and shape[2] >= 4:
        return "nhwc"
    if len(shape) == 3 and shape[1] >= 4 and shape[2] >= 4:
        return "nhw"
    return None


def _as_nhwc(x: np.ndarray) -> np.ndarray:
    layout = _image_layout(x.shape)
    if layout == "nchw":
        x = x.transpose(0, 2, 3, 1)
    elif layout == "nhw":
        x = x[..., None]
    return x[..., :3] if x.shape[-1] == 4 else x


def _channel_caption(x: np.ndarray) -> str:
    a = _as_nhwc(x).astype(np.float64)
    fin = a[np.isfinite(a)]
    lo, hi = (float(fin.min()), float(fin.max())) if fin.size else (math.nan, math.nan)
    means = [_fmt(float(np.nanmean(a[..., c]))) for c in range(a.shape[-1])]
    stds = [_fmt(float(np.nanstd(a[..., c]))) for c in range(a.shape[-1])]
    return f"values in [{_fmt(lo)}, {_fmt(hi)}]; per-channel mean [{', '.join(means)}], std [{', '.join(stds)}]"


def _images(x: np.ndarray, y: np.ndarray | None) -> str:
    a = _as_nhwc(x[:MAX_IMAGES]).astype(np.float64)
    n, h, w, c = a.shape
    fin = a[np.isfinite(a)]
    lo, hi = (float(fin.min()), float(fin.max())) if fin.size else (0.0, 1.0)
    scaled = np.clip((np.nan_to_num(a, nan=lo) - lo) / (hi - lo if hi > lo else 1.0), 0, 1) * 255
    cols = min(n, 8)
    cell = max(24.0, min(84.0, (WIDTH - 10) / cols - 6))
    label_h = 14 if y is not None and y.ndim == 1 else 0
    rows = math.ceil(n / cols)
    parts = []
    for i in range(n):
        r, k = divmod(i, cols)
        px, py = 5 + k * (cell + 6), 5 + r * (cell + 6 + label_h)
        img = scaled[i] if c == 3 else scaled[i, ..., 0]
        parts.append(_image(_png(img), px, py, cell, cell * h / w))
        if label_h and y is not None and i < len(y):
            parts.append(_text(px + cell / 2, py + cell * h / w + 11, f"y = {y[i]}", size=10, anchor="middle"))
    height = 10 + rows * (cell * h / w + 6 + label_h)
    return _svg("first batch (images)", WIDTH, height, "".join(parts))


def _tokens(x: np.ndarray, y: np.ndarray | None) -> str:
    xs = x[:MAX_ROWS, :MAX_TOKENS]
    ys = None
    if y is not None and y.ndim == 2 and y.shape[0] >= len(xs):
        ys = y[: len(xs), :MAX_TOKENS]
    # equal tokens at the same position are marked only when they are the rule (a missing shift),
    # not the chance repeats of a small vocabulary
    mark = y is not None and y.shape == x.shape and float(np.mean(x == y)) > 0.5
    head = "".join(f"<th>{t}</th>" for t in range(xs.shape[1]))
    body = []
    for i, row in enumerate(xs):
        body.append(f"<tr><th>x[{i}]</th>" + "".join(f"<td>{int(v)}</td>" for v in row) + "</tr>")
        if ys is not None:
            cells = []
            for t, v in enumerate(ys[i]):
                same = mark and t < len(row) and int(v) == int(row[t])
                style = " style='background:#f4a6a6' title='target equals the input at this position'" if same else ""
                cells.append(f"<td{style}>{int(v)}</td>")
            body.append(f"<tr class='target'><th>y[{i}]</th>{''.join(cells)}</tr>")
    more = f" ({x.shape[1]} positions, the first {MAX_TOKENS} shown)" if x.shape[1] > MAX_TOKENS else ""
    return (f"<style>.nnprobe-tokens td,.nnprobe-tokens th{{padding:1px 4px;text-align:right;border:1px solid #eee}}"
            f".nnprobe-tokens tr.target td{{color:#555;border-bottom:2px solid #ccc}}</style>"
            f"<table class='nnprobe-tokens' style='border-collapse:collapse;font:11px monospace'>"
            f"<caption style='text-align:left'>{_esc('position' + more)}</caption>"
            f"<tr><th></th>{head}</tr>{''.join(body)}</table>")


def _histograms(x: np.ndarray) -> str:
    k = min(x.shape[1], MAX_FEATURES)
    per_row = 4
    cw, ch = (WIDTH - 10) / per_row, 92.0
    parts = []
    for j in range(k):
        col = x[:, j]
        col = col[np.isfinite(col)]
        r, c = divmod(j, per_row)
        ox, oy = 5 + c * cw, 5 + r * ch
        parts.append(f"<rect x='{ox:.1f}' y='{oy:.1f}' width='{cw - 8:.1f}' height='{ch - 8:.1f}' fill='#fafafa' stroke='#ddd'/>")
        if col.size == 0:
            parts.append(_text(ox + 6, oy + 16, f"#{j}: no finite value", size=10))
            continue
        lo, hi = float(col.min()), float(col.max())
        counts, _ = np.histogram(col, bins=BINS, range=(lo, hi if hi > lo else lo + 1))
        top = max(1, int(counts.max()))
        bw = (cw - 20) / BINS
        for b, cnt in enumerate(counts):
            bh = (ch - 40) * cnt / top
            parts.append(f"<rect x='{ox + 6 + b * bw:.1f}' y='{oy + ch - 22 - bh:.1f}' width='{bw - 1:.1f}' "
                         f"height='{bh:.1f}' fill='#1f77b4'/>")
        parts.append(_text(ox + 6, oy + 13, f"#{j}: mean {_fmt(float(col.mean()))}", size=10))
        parts.append(_text(ox + cw - 14, oy + 13, f"std {_fmt(float(col.std()))}", size=10, anchor="end"))
        parts.append(_text(ox + 6, oy + ch - 11, _fmt(lo), size=9))
        parts.append(_text(ox + cw - 14, oy + ch - 11, _fmt(hi), size=9, anchor="end"))
    rows = math.ceil(k / per_row)
    return _svg("first batch (per-feature histograms)", WIDTH, 10 + rows * ch, "".join(parts))


# ---------------------------------------------------------------------------- predictions
def _ramp(v: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> RGB: red (0) through pale yellow (0.5) to green (1); NaN grey."""
    stops = np.array([[215, 48, 39], [254, 224, 139], [26, 152, 80]], dtype=np.float64)
    t = np.clip(np.nan_to_num(v, nan=0.5), 0, 1) * 2
    lo = np.minimum(t.astype(int), 1)
    f = (t - lo)[..., None]
    rgb = stops[lo] * (1 - f) + stops[lo + 1] * f
    rgb[np.isnan(v)] = (200, 200, 200)
    return rgb


def prediction_view(pred: dict[str, Any] | None, *, title: str = "Prediction dynamics") -> str:
    """HTML for the predictions on one fixed batch over the sampled steps ({"steps" [S], "values"
    [S, K], "kind", "targets"}); an empty string when there are none."""
    if not pred or pred.get("values") is None or len(pred.get("steps", [])) == 0:
        return ""
    steps = np.asarray(pred["steps"])
    vals = np.asarray(pred["values"], dtype=np.float64)  # [S, K]
    kind = pred.get("kind")
    targets = pred.get("targets")
    s_n, k_n = vals.shape
    if kind == "p_true":
        scaled, legend = vals, ("p(true class) = 0", "1")
        caption = (f"p(true class) of {k_n} fixed examples (rows) at {s_n} steps (columns), red 0 to green 1: rows "
                   "that stay red are examples the model does not learn")
    else:
        fin = vals[np.isfinite(vals)]
        lo, hi = (float(fin.min()), float(fin.max())) if fin.size else (0.0, 1.0)
        scaled = (vals - lo) / (hi - lo if hi > lo else 1.0)
        legend = (f"output = {_fmt(lo)}", _fmt(hi))
        caption = f"the first output of {k_n} fixed examples (rows) at {s_n} steps (columns)"
    left, top, right = 110.0, 22.0, 20.0
    cw = max(2.0, min(24.0, (WIDTH - left - right) / max(1, s_n)))
    rh = 16.0
    grid_w, grid_h = cw * s_n, rh * k_n
    parts = [_image(_png(_ramp(scaled.T)), left, top, grid_w, grid_h)]
    for i in range(k_n):
        label = f"example {i}"
        if targets is not None and np.ndim(targets) >= 1 and i < len(targets) and np.ndim(targets[i]) == 0:
            label += f" (y={targets[i]})"
        parts.append(_text(left - 6, top + i * rh + rh * 0.72, label, size=10, anchor="end"))
    ticks = sorted({0, s_n - 1} | {int(round(q * (s_n - 1))) for q in (0.25, 0.5, 0.75)})
    for t in ticks:
        parts.append(_text(left + (t + 0.5) * cw, top + grid_h + 13, int(steps[t]), size=10, anchor="middle"))
    parts.append(_text(left + grid_w / 2, top + grid_h + 27, "step", size=11, anchor="middle"))
    parts.append(_text(left, 14, legend[0], size=10))
    parts.append(_image(_png(_ramp(np.linspace(0, 1, 64)[None, :])), left + 110, 5, 120, 10))
    parts.append(_text(left + 236, 14, legend[1], size=10))
    return _figure(title, _svg("prediction dynamics", max(WIDTH, left + grid_w + right), top + grid_h + 34, "".join(parts)),
                   caption)


def page(parts: list[str], title: str = "nnprobe views") -> str:
    """A standalone page holding some views (what the tests open in a browser)."""
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{_esc(title)}</title></head>"
            f"<body style='font-family:system-ui,sans-serif;max-width:760px;margin:1em auto'>{''.join(parts)}</body></html>")
