"""The report's plots, drawn as inline SVG by hand: no plotting library to install, a page that
opens offline, and a few kilobytes per plot.

Three kinds of picture: line charts (figures over steps, linear or log y, with reference lines
and markers), heat strips (one log2-magnitude histogram per sampled step, one strip per layer)
and matrices (dependency masks). Cells of the last two are a tiny palette PNG inside the SVG,
scaled up without smoothing: a 256 x 256 mask is then a few hundred bytes, not 65536 rectangles.

Every piece of text is escaped here, in `_text`/`_attr`, since labels come from logs that may
be hostile.
"""

from __future__ import annotations

import base64
import html
import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# the "tab10" palette: ten colours that stay distinguishable, the ones the previous report used
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
WIDTH = 720
FONT = "font-family='system-ui,-apple-system,Segoe UI,sans-serif'"


def _attr(s: object) -> str:
    return html.escape(str(s), quote=True)


def _text(x: float, y: float, s: object, *, size: int = 11, anchor: str = "start", extra: str = "") -> str:
    return f"<text x='{x:.1f}' y='{y:.1f}' font-size='{size}' text-anchor='{anchor}'{extra}>{html.escape(str(s))}</text>"


def short(name: str, limit: int = 28) -> str:
    return name if len(name) <= limit else "…" + name[-(limit - 1):]


def tick_label(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e6 or a < 1e-3:
        m, e = f"{v:.0e}".split("e")
        return f"{m}e{int(e)}"
    return f"{v:.6g}"


def linear_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round values (1, 2 or 5 times a power of ten apart) covering [lo, hi]."""
    if not hi > lo:
        return [lo]
    raw = (hi - lo) / max(n, 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9)
    return [k * step for k in range(first, math.floor(hi / step + 1e-9) + 1)]


@dataclass
class Series:
    label: str
    x: np.ndarray
    y: np.ndarray


@dataclass
class Marks:
    """Points drawn as crosses on the top edge (steps where a value was not finite)."""

    label: str
    x: np.ndarray
    color: str = "#d62728"


def _svg(title: str, width: float, height: float, body: str) -> str:
    return (f"<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 {width:.0f} {height:.0f}' width='{width:.0f}' "
            f"height='{height:.0f}' role='img' aria-label='{_attr(title)}' {FONT}><title>{html.escape(title)}</title>"
            f"<rect width='100%' height='100%' fill='#fff'/>{_text(width / 2, 16, title, size=13, anchor='middle')}"
            f"{body}</svg>")


def line_chart(series: Sequence[Series], *, title: str, xlabel: str, ylabel: str, logy: bool = False,
               hline: tuple[float, str] | None = None, marks: Marks | None = None, ymin: float | None = None,
               legend: bool = True) -> str | None:
    """Lines over a shared x axis; None when no series has a point to draw. A line joins a series'
    finite points (NaN is a step where the row was not measured; on a log axis values <= 0 are
    left out too); `hline` is (y, legend label), drawn dashed; `ymin` pins the bottom of a linear
    axis. The legend, when asked for, names the series, the line and the marks."""
    def usable(y: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return np.isfinite(y) & (y > 0) if logy else np.isfinite(y)

    series = [s for s in series if usable(np.asarray(s.y, dtype=np.float64)).any()]
    if not series:
        return None
    ys = np.concatenate([np.asarray(s.y, dtype=np.float64)[usable(np.asarray(s.y, dtype=np.float64))] for s in series])
    xs_all = np.concatenate([np.asarray(s.x, dtype=np.float64) for s in series] +
                            ([np.asarray(marks.x, dtype=np.float64)] if marks is not None and len(marks.x) else []))
    if hline is not None and (hline[0] > 0 or not logy):
        ys = np.append(ys, hline[0])
    x0, x1 = float(xs_all.min()), float(xs_all.max())
    if x1 <= x0:
        x0, x1 = x0 - 1, x1 + 1
    keys = [(s.label, PALETTE[i % len(PALETTE)], "line") for i, s in enumerate(series)] if legend else []
    if hline is not None:
        keys.append((hline[1], "#333", "dash"))
    if marks is not None and len(marks.x):
        keys.append((marks.label, marks.color, "cross"))
    left, top, bottom = 62, 28, 44
    right = 190 if keys else 20
    height = 300
    pw, ph = WIDTH - left - right, height - top - bottom

    if logy:
        lo, hi = math.floor(math.log10(ys.min())), math.ceil(math.log10(ys.max()))
        hi = max(hi, lo + 1)
        every = max(1, math.ceil((hi - lo) / 7))  # at most about 7 labelled decades
        yticks = [10.0 ** k for k in range(lo, hi + 1, every)]
        y_lo, y_hi = float(lo), float(hi)

        def fy(v: Any) -> Any:
            with np.errstate(all="ignore"):
                return top + ph * (y_hi - np.log10(v)) / (y_hi - y_lo)
    else:
        lo_v = float(ys.min()) if ymin is None else min(ymin, float(ys.min()))
        hi_v = float(ys.max())
        if hi_v - lo_v < 1e-12 * max(abs(hi_v), 1.0):  # a flat line: give it some room
            room = max(abs(hi_v) * 0.1, 0.5)
            lo_v, hi_v = (lo_v if ymin is not None else lo_v - room), hi_v + room
        yticks = linear_ticks(lo_v, hi_v)
        pad = 0.04 * (hi_v - lo_v)
        y_lo, y_hi = (lo_v if ymin is not None else lo_v - pad), hi_v + pad

        def fy(v: Any) -> Any:
            return top + ph * (y_hi - v) / (y_hi - y_lo)

    def fx(v: Any) -> Any:
        return left + pw * (v - x0) / (x1 - x0)

    out = [f"<rect x='{left}' y='{top}' width='{pw}' height='{ph}' fill='none' stroke='#bbb'/>"]
    for t in yticks:
        yy = float(fy(np.float64(t)))
        if top - 0.5 <= yy <= top + ph + 0.5:
            out.append(f"<line x1='{left}' x2='{left + pw}' y1='{yy:.1f}' y2='{yy:.1f}' stroke='#eee'/>")
            out.append(_text(left - 5, yy + 4, tick_label(t), size=10, anchor="end"))
    for t in linear_ticks(x0, x1, 6):
        if t == int(t):  # steps are whole numbers
            xx = float(fx(np.float64(t)))
            out.append(f"<line x1='{xx:.1f}' x2='{xx:.1f}' y1='{top}' y2='{top + ph}' stroke='#eee'/>")
            out.append(_text(xx, top + ph + 14, tick_label(t), size=10, anchor="middle"))
    out.append(_text(left + pw / 2, height - 8, xlabel, anchor="middle"))
    out.append(_text(14, top + ph / 2, ylabel, anchor="middle", extra=f" transform='rotate(-90 14 {top + ph / 2:.1f})'"))
    # no clipping needed: the y range covers every value and the reference line
    for i, s in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        x = np.asarray(s.x, dtype=np.float64)
        y = np.asarray(s.y, dtype=np.float64)
        ok = usable(y)
        px, py = fx(x[ok]), fy(y[ok])
        pts = " ".join(f"{u:.1f},{v:.1f}" for u, v in zip(px, py))
        parts = [f"<g><title>{html.escape(s.label)}</title>"]
        if len(px) > 1:
            parts.append(f"<polyline fill='none' stroke='{color}' stroke-width='1.4' points='{pts}'/>")
        if len(px) < 30:  # few points: show where the measurements are
            parts += [f"<circle cx='{u:.1f}' cy='{v:.1f}' r='2.2' fill='{color}'/>" for u, v in zip(px, py)]
        out.append("".join(parts) + "</g>")
    if hline is not None and (hline[0] > 0 or not logy):
        yy = float(fy(np.float64(hline[0])))
        out.append(f"<line x1='{left}' x2='{left + pw}' y1='{yy:.1f}' y2='{yy:.1f}' stroke='#333' stroke-dasharray='5 4'/>")
    if marks is not None and len(marks.x):
        for xx in fx(np.asarray(marks.x, dtype=np.float64)):
            out.append(f"<path d='M{xx - 4:.1f},{top + 2} l8,8 m0,-8 l-8,8' stroke='{marks.color}' stroke-width='1.6'/>")
    if keys:
        lx = left + pw + 12
        for k, (label, color, how) in enumerate(keys):
            ly = top + 8 + 15 * k
            if how == "line":
                out.append(f"<line x1='{lx}' x2='{lx + 18}' y1='{ly}' y2='{ly}' stroke='{color}' stroke-width='2'/>")
            elif how == "dash":
                out.append(f"<line x1='{lx}' x2='{lx + 18}' y1='{ly}' y2='{ly}' stroke='{color}' stroke-dasharray='5 3'/>")
            else:
                out.append(f"<path d='M{lx + 5},{ly - 4} l8,8 m0,-8 l-8,8' stroke='{color}' stroke-width='1.6'/>")
            out.append(_text(lx + 24, ly + 4, short(label), size=10))
    return _svg(title, WIDTH, height, "".join(out))


# ---------------------------------------------------------------- cells as a palette PNG

def _blues() -> bytes:
    """256 colours: white for an empty cell, then light to dark blue (ColorBrewer "Blues")."""
    stops = [(0xf7, 0xfb, 0xff), (0xc6, 0xdb, 0xef), (0x6b, 0xae, 0xd6), (0x21, 0x71, 0xb5), (0x08, 0x30, 0x6b)]
    out = bytearray(b"\xff\xff\xff")
    for i in range(1, 256):
        t = (i - 1) / 254 * (len(stops) - 1)
        k = min(int(t), len(stops) - 2)
        f = t - k
        out += bytes(round(a + (b - a) * f) for a, b in zip(stops[k], stops[k + 1]))
    return bytes(out)


BLUES = _blues()
BLACK_WHITE = b"\xff\xff\xff\x00\x00\x00"


def png(pixels: np.ndarray, palette: bytes) -> bytes:
    """An 8-bit palette PNG of `pixels` (uint8 [height, width] indices into `palette`)."""
    h, w = pixels.shape
    # each scanline starts with its filter type, 0 (none)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), np.ascontiguousarray(pixels, dtype=np.uint8)], axis=1).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 3, 0, 0, 0))
            + chunk(b"PLTE", palette) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def _image(pixels: np.ndarray, palette: bytes, x: float, y: float, w: float, h: float) -> str:
    uri = "data:image/png;base64," + base64.b64encode(png(pixels, palette)).decode("ascii")
    # no smoothing: each cell stays a sharp block when scaled up
    return (f"<image x='{x:.1f}' y='{y:.1f}' width='{w:.1f}' height='{h:.1f}' preserveAspectRatio='none' "
            f"image-rendering='optimizeSpeed' style='image-rendering:pixelated' href='{uri}'/>")


@dataclass
class Strip:
    label: str
    steps: np.ndarray  # [T] the steps that took a histogram
    counts: np.ndarray  # [T, bins]


def _power_of_two(x: float, y: float, exponent: int, *, prefix: str = "") -> str:
    return (f"<text x='{x:.1f}' y='{y:.1f}' font-size='10'>{html.escape(prefix)}2"
            f"<tspan dy='-4' font-size='8'>{exponent}</tspan></text>")


def heat_strips(strips: Sequence[Strip], *, title: str, lo: int) -> str | None:
    """One row per layer. Left, a heat strip: x the sampled steps, y the log2|x| bins (larger
    values up), darker where a larger share of that step's values fell; each step's column is
    scaled to its own peak, so the shape shows even where a layer has few values. Right, the
    latest histogram as a profile on the same y axis, where a shape (a spike at |x| = 1 from
    saturated tanh, a long tail of tiny gradients) reads best. One y range for every row, with a
    dashed line at |x| = 1, so that layers compare."""
    strips = [s for s in strips if len(s.steps) and np.asarray(s.counts).sum() > 0]
    if not strips:
        return None
    # one column per step that any strip has; a strip without a histogram at a step is blank there
    steps = np.unique(np.concatenate([np.asarray(s.steps, dtype=np.int64) for s in strips]))
    grids = []
    for s in strips:
        g = np.zeros((len(steps), np.asarray(s.counts).shape[1]))
        g[np.searchsorted(steps, np.asarray(s.steps, dtype=np.int64))] = np.asarray(s.counts, dtype=np.float64)
        grids.append(g)
    # The y range: up to the largest value seen, down to where the smallest 0.5% of each histogram
    # begin; the bins below that are added into the bottom one. Every log-magnitude histogram of
    # values spread around zero has a long thin tail of tiny magnitudes (a bin's share halves
    # with each bin down) that would otherwise squash the bulk into a few pixels.
    b1 = max(int(np.flatnonzero(g.sum(0)).max()) for g in grids)
    with np.errstate(all="ignore"):
        cum = [np.cumsum(g, axis=1) / g.sum(axis=1, keepdims=True) for g in grids]
    b0 = min(int(np.argmax(c > 0.005, axis=1)[np.isfinite(c[:, -1])].min()) for c in cum)
    folded = any(g[:, :b0].any() for g in grids)
    for g in grids:
        g[:, b0] += g[:, :b0].sum(axis=1)
    nb = b1 - b0 + 1
    label_w, axis_w, profile_w, gap, top = 170, 44, 96, 8, 40
    strip_h = int(min(max(2 * nb, 48), 80))
    pw = WIDTH - label_w - axis_w - profile_w - 8
    px0 = label_w + pw + axis_w  # the profiles' left edge
    one = -lo  # the bin whose lower edge is |x| = 1
    out = [_text(label_w + pw / 2, top - 6, "over the sampled steps", size=10, anchor="middle"),
           _text(px0 + profile_w / 2, top - 6, f"latest (step {int(steps[-1])})", size=10, anchor="middle")]
    for k, (s, g) in enumerate(zip(strips, grids)):
        y = top + k * (strip_h + gap)
        c = g[:, b0:b1 + 1]
        peak = c.max(axis=1, keepdims=True)
        with np.errstate(all="ignore"):
            shade = np.where(peak > 0, c / peak, 0.0)
        # sqrt: the tails (a few values far out) stay visible next to the bulk
        px = np.where(shade > 0, 1 + np.round(np.sqrt(shade) * 254), 0).astype(np.uint8)
        out.append(_image(px.T[::-1], BLUES, label_w, y, pw, strip_h))
        out.append(f"<rect x='{label_w}' y='{y}' width='{pw}' height='{strip_h}' fill='none' stroke='#bbb'/>")
        name = _text(label_w - 6, y + strip_h / 2 + 4, short(s.label, 26), size=10, anchor="end")
        out.append(f"<g><title>{html.escape(s.label)}</title>{name}</g>")
        # the profile: each bin's share of the latest histogram, as a filled outline
        last = g[np.searchsorted(steps, int(np.asarray(s.steps)[-1])), b0:b1 + 1]
        share = last / last.max() if last.max() > 0 else last
        ys = y + strip_h * (nb - np.arange(nb) - 0.5) / nb
        pts = " ".join(f"{px0 + profile_w * v:.1f},{yy:.1f}" for v, yy in zip(share, ys))
        out.append(f"<rect x='{px0}' y='{y}' width='{profile_w}' height='{strip_h}' fill='none' stroke='#bbb'/>"
                   f"<polygon fill='#9ecae1' stroke='#08519c' stroke-width='1' "
                   f"points='{px0},{ys[0]:.1f} {pts} {px0},{ys[-1]:.1f}'/>")
        y1 = y + strip_h * (b1 + 1 - one) / nb  # where |x| = 1 is
        if b0 < one <= b1:
            out.append(f"<line x1='{label_w}' x2='{px0 + profile_w}' y1='{y1:.1f}' y2='{y1:.1f}' stroke='#d62728' "
                       f"stroke-width='0.8' stroke-dasharray='3 3' stroke-opacity='0.7'/>")
        if k == 0:  # one scale for every row: its ends, and 1 where it lies inside, not too close to an end
            inside = b0 < one <= b1
            if inside:
                out.append(_text(label_w + pw + 4, y1 + 4, "1", size=10))
            # with the tail folded in, the bottom bin holds everything below its top
            bottom = (lo + b0 + 1, "<") if folded else (lo + b0, "")
            for yy, e, prefix in ((y + 9, lo + b1 + 1, ""), (y + strip_h, *bottom)):
                if not inside or abs(yy - 4 - y1) > 11:
                    out.append(_power_of_two(label_w + pw + 4, yy, e, prefix=prefix))
    y_axis = top + len(strips) * (strip_h + gap)
    n = len(steps)
    # columns are the histogram steps in order (evenly spaced, whatever their step numbers)
    for j in sorted({0, n // 2, n - 1}):
        out.append(_text(label_w + pw * (j + 0.5) / n, y_axis + 6, int(steps[j]), size=10, anchor="middle"))
    out.append(_text(label_w + pw / 2, y_axis + 22, "step (one column per histogram)", anchor="middle"))
    out.append(_text(px0 + profile_w / 2, y_axis + 6, "share of values", size=10, anchor="middle"))
    return _svg(title, WIDTH, y_axis + 32, "".join(out))


def _shrink(mask: np.ndarray, limit: int = 1024) -> np.ndarray:
    """A mask at most `limit` cells a side: each block keeps whether any of its cells is set."""
    for axis in (0, 1):
        n = mask.shape[axis]
        if n > limit:
            k = math.ceil(n / limit)
            pad = [(0, 0), (0, 0)]
            pad[axis] = (0, -n % k)
            m = np.pad(mask, pad)
            shape = (m.shape[0] // k, k, m.shape[1]) if axis == 0 else (m.shape[0], m.shape[1] // k, k)
            mask = np.asarray(m.reshape(shape).any(axis=axis + 1))
    return mask


def matrix(mask: np.ndarray, *, title: str, xlabel: str = "input j", ylabel: str = "output i") -> str:
    """A boolean matrix, set cells black, row 0 at the top."""
    n_out, n_in = mask.shape
    cells = _shrink(np.asarray(mask, dtype=bool))
    side = 300
    scale = side / max(n_out, n_in)
    w, h = n_in * scale, n_out * scale
    left, top = 64, 30
    body = [_image(cells.astype(np.uint8), BLACK_WHITE, left, top, w, h),
            f"<rect x='{left}' y='{top}' width='{w:.1f}' height='{h:.1f}' fill='none' stroke='#888'/>",
            _text(left, top + h + 14, 0, size=10), _text(left + w, top + h + 14, n_in - 1, size=10, anchor="end"),
            _text(left - 4, top + 9, 0, size=10, anchor="end"), _text(left - 4, top + h, n_out - 1, size=10, anchor="end"),
            _text(left + w / 2, top + h + 30, xlabel, anchor="middle"),
            _text(20, top + h / 2, ylabel, anchor="middle", extra=f" transform='rotate(-90 20 {top + h / 2:.1f})'")]
    return _svg(title, left + side + 20, top + h + 40, "".join(body))
