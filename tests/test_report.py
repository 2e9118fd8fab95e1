"""The HTML report: built from a real watched run, opened in a real headless Chromium; golden
files for `summary()` and `explain` (regenerate with `pytest --regen-golden`)."""

import base64
import json
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from html.parser import HTMLParser
from pathlib import Path

import nnprobe
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from nnprobe.findings import CATALOGUE
from nnprobe.report import from_probe, load_log, render, save_mask
from nnprobe.report.logfile import log_files
from torch import nn

GOLDEN = Path(__file__).parent / "golden"


def golden(request, name: str, text: str) -> None:
    path = GOLDEN / name
    if request.config.getoption("--regen-golden") or not path.exists():
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        if not request.config.getoption("--regen-golden"):
            pytest.fail(f"wrote missing golden file {path}; check it in")
    assert text == path.read_text(), f"output differs from {path} (pytest --regen-golden to accept)"


def watched_run(tmp_path, *, zero_grad=True, steps=30):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(64, 16), torch.randint(0, 4, (64,))
    with nnprobe.watch(model, optimizer=opt, every=2, log_dir=tmp_path / "log", console=False) as probe:
        for _ in range(steps):
            if zero_grad:
                opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            probe.step(loss=loss)
    return probe


def test_report_from_log_and_from_probe_show_the_same_run(tmp_path):
    probe = watched_run(tmp_path, zero_grad=False)
    a, b = load_log(tmp_path / "log"), from_probe(probe)
    assert [r["name"] for r in a.rows] == [r["name"] for r in b.rows]
    assert list(a.steps) == list(b.steps)
    assert {f["code"] for f in a.findings} == {f["code"] for f in b.findings} == {"zero-grad-missing"}
    page = render(a, tmp_path / "r.html").read_text()
    assert "zero-grad-missing" in page and "Why it hurts" in page
    for plot in ("Loss", "Activation distributions", "Gradient distributions", "Update / weight ratio",
                 "Gradient norms", "Dead units", "Saturated activations", "Activation std"):
        assert f"data-plot='{plot}'><svg" in page


def test_a_killed_runs_partial_log_still_makes_a_report(tmp_path):
    watched_run(tmp_path)
    (log,) = log_files(tmp_path / "log")
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[: len(lines) // 2]) + '\n{"type": "step", "ste')  # cut mid-record
    run = load_log(tmp_path / "log")
    assert len(run.steps) >= 1 and not run.ended and run.skipped == 1
    page = render(run, tmp_path / "partial.html").read_text()
    assert "no end record" in page and "1 malformed log line(s) skipped" in page


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


# Run in a copy of the page only: the report itself carries no script. It waits for every image
# embedded in the SVGs (the heat strips' and masks' cells) to decode, then writes the tally.
_DECODE_CHECK = """<script>addEventListener('load', async () => {
  const srcs = [...document.querySelectorAll('svg image')].map(i => i.getAttribute('href'));
  const ok = await Promise.all(srcs.map(s => new Promise(r => { const im = new Image();
    im.onload = () => r(im.naturalWidth > 0); im.onerror = () => r(false); im.src = s; })));
  document.body.dataset.decoded = ok.filter(Boolean).length + '/' + srcs.length;
  document.body.dataset.svgs = [...document.querySelectorAll('svg')].filter(s => s.getBBox().width > 0).length;
});</script>"""


@pytest.mark.skipif(chromium() is None, reason="needs Chromium (.ci/run installs Debian's chromium)")
def test_report_renders_in_headless_chromium(tmp_path):
    probe = watched_run(tmp_path, zero_grad=False)
    save_mask(tmp_path / "log", "batch independence", torch.eye(8, dtype=torch.bool).numpy())
    run = load_log(tmp_path / "log")
    page = render(run, tmp_path / "report.html")
    text = page.read_text()
    n_svgs, n_images = text.count("<svg "), text.count("<image ")
    assert n_svgs >= 9 and n_images >= 11  # 8 plots and a mask; 5 + 5 heat strips and a mask
    probe_page = tmp_path / "probe.html"
    probe_page.write_text(text.replace("</body>", _DECODE_CHECK + "</body>"))
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"]
    dom = subprocess.run(cmd + ["--dump-dom", probe_page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert f'data-decoded="{n_images}/{n_images}"' in dom.stdout, "some cells did not decode"
    assert f'data-svgs="{n_svgs}"' in dom.stdout, "some plots have nothing drawn"
    assert "zero-grad-missing" in dom.stdout and "batch independence" in dom.stdout
    shot = tmp_path / "report.png"
    r = subprocess.run(cmd + ["--window-size=1200,2400", f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120)
    assert r.returncode == 0 and shot.stat().st_size > 50_000
    assert probe.codes() == {"zero-grad-missing"}


def test_explain_output_matches_golden(request):
    text = "\n\n----\n\n".join(nnprobe.explain(code) for code in sorted(CATALOGUE)) + "\n"
    golden(request, "explain.txt", text)


def test_summary_matches_golden(request, tmp_path):
    probe = watched_run(tmp_path, zero_grad=True)
    golden(request, "summary.txt", probe.summary() + "\n")


# ---------------------------------------------------------------- hostile logs

PAYLOADS = ["<script>alert(1)</script>", "\"'><img src=x onerror=alert(1)>", "</title><script>alert(2)</script>",
            "</style><script>alert(3)</script>", "]]><svg onload=alert(4)>", "javascript:alert(5)", "&lt;b&gt;"]
# every tag the report itself writes; anything else in a parsed page came from the data
PAGE_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "span", "div", "b", "i", "code", "br",
             "details", "summary", "pre", "table", "tr", "th", "td", "figure", "svg", "rect", "text", "line",
             "polyline", "polygon", "circle", "path", "g", "image", "tspan"}
PAGE_ATTRIBUTES = {"lang", "charset", "class", "data-plot", "xmlns", "viewbox", "width", "height", "role", "aria-label",
                   "font-family", "x", "y", "dy", "font-size", "text-anchor", "transform", "fill", "stroke", "x1", "x2",
                   "y1", "y2", "stroke-width", "stroke-dasharray", "stroke-opacity", "points", "cx", "cy", "r", "d",
                   "preserveaspectratio", "image-rendering", "style", "href"}


class Page(HTMLParser):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.text: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, attrs))

    def handle_data(self, data):
        self.text.append(data)


def assert_no_markup_from_data(page: str) -> Page:
    parsed = Page(page)
    assert {t for t, _ in parsed.tags} <= PAGE_TAGS
    for tag, attrs in parsed.tags:
        for name, value in attrs:
            assert name in PAGE_ATTRIBUTES, (tag, name)  # so no on* handler
            if name == "href":  # the only URL the page holds: its own cells
                assert (value or "").startswith("data:image/png;base64,"), value
            if name == "style":
                assert value == "image-rendering:pixelated", value
    return parsed


def hostile_log(d: Path, payload: str, *, title_key: str = "model") -> Path:
    """A log whose every string field (names, module, type, messages, hints, data, meta) is `payload`,
    with figures that draw every plot, and the reproducer lines of the injection issue."""
    fields = [*nnprobe.STATS_FIELDS, "dead", "saturated", "ratio"]
    param = payload + ".weight"
    rows = [{"name": payload, "kind": k, "module": payload, "type": payload, "param": False} for k in ("activations", "gradients")]
    rows += [{"name": param, "kind": k, "module": payload, "type": payload, "param": True, "shape": [4, 4], payload: payload}
             for k in ("gradients", "weights", "updates")]
    figures = [16, 0, 0, 1, -1.0, 1.0, 0.1, 0.5, 2.0, 1.0, 0.4, 0.25, 0.1, 0.01]
    recs = [{"type": "start", "version": 1, "time": 1.7e9, title_key: payload, payload: payload, "fields": fields,
             "hist": {"lo": -48, "bins": 64, "unit": "log2|x|"}, "rows": rows}]
    for step in range(6):
        stats = {r["kind"]: {r["name"]: [v * (1 + step / 10) for v in figures]} for r in rows if not r["param"]}
        for k in ("gradients", "weights", "updates"):
            stats.setdefault(k, {})[param] = [v * (1 + step / 10) for v in figures]
        rec = {"type": "step", "step": step, "time": 1.7e9, "loss": 2.0 - step / 10,
               "losses": [[step, 2.0 - step / 10]], "stats": stats}
        if step % 3 == 0:
            counts = [0] * 40 + [5, 9, 2] + [0] * 21
            rec["hist"] = {"activations": {payload: counts}, "gradients": {payload: counts}}
        recs.append(rec)
    finding = {"code": payload, "severity": "error", "message": payload, "module": payload, "step": 1, "hint": payload,
               "data": {payload: payload, "nested": [{payload: [payload]}]}}
    recs += [{"type": "finding", **finding}, {"type": "end", "step": 6, "findings": [{**finding, "count": 3}]}]
    lines = [json.dumps(r) for r in recs]
    # the reproducers: markup where a number belongs
    lines.insert(3, json.dumps({"type": "step", "step": payload, "losses": [], "stats": {}}))
    lines.insert(5, json.dumps({"type": "finding", **finding, "step": payload}))
    d.mkdir(parents=True, exist_ok=True)
    p = d / "nnprobe-20260101T000000.000000Z-1-abcdef.jsonl"
    p.write_text("\n".join(lines) + "\n")
    if "/" not in payload and "\0" not in payload:
        save_mask(d, payload, np.eye(4, dtype=bool))
    return p


@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_hostile_log_makes_a_page_with_no_markup_of_its_own(tmp_path, payload):
    hostile_log(tmp_path / "log", payload)
    out = tmp_path / "r.html"
    r = subprocess.run([sys.executable, "-m", "nnprobe", "report", str(tmp_path / "log"), "-o", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "skipped 2 malformed line(s)" in r.stderr, r.stderr
    page = out.read_text()
    parsed = assert_no_markup_from_data(page)
    text = "".join(parsed.text)
    assert text.count(payload) >= 7  # shown, as text: name, module, type, message, hint, data, meta
    masks = "/" not in payload  # a file name cannot hold a slash
    assert page.count("<svg ") == 8 + masks and "malformed log line(s) skipped" in text


@settings(max_examples=40, deadline=None)
@given(payload=st.text(st.sampled_from("<>&\"'/=; scriptonload:"), min_size=1, max_size=24))
def test_generated_markup_in_every_field_stays_text(payload):
    with tempfile.TemporaryDirectory() as d:
        hostile_log(Path(d) / "log", payload)
        run = load_log(Path(d) / "log")
        page = render(run, Path(d) / "r.html", title=payload).read_text()
        parsed = assert_no_markup_from_data(page)
        assert payload in "".join(parsed.text)


# ---------------------------------------------------------------- drawing without a plotting library

def test_the_report_needs_no_plotting_library(tmp_path):
    """A plain `pip install .` has no matplotlib: with it unimportable the whole page still draws."""
    watched_run(tmp_path)
    save_mask(tmp_path / "log", "batch independence", np.eye(8, dtype=bool))
    script = (
        "import sys; sys.modules['matplotlib'] = None\n"  # `import matplotlib` now raises ImportError
        "from nnprobe.report import load_log, render\n"
        f"page = render(load_log({str(tmp_path / 'log')!r}), {str(tmp_path / 'r.html')!r}).read_text()\n"
        "print(page.count('<svg '))\n"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert int(r.stdout) == 9  # eight plots and the mask


def read_png(data: bytes) -> tuple[np.ndarray, bytes]:
    """Pixels and palette of an 8-bit palette PNG with unfiltered scanlines (what svg.png writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, i = {}, 8
    while i < len(data):
        (n,) = struct.unpack(">I", data[i:i + 4])
        kind, body, crc = data[i + 4:i + 8], data[i + 8:i + 8 + n], data[i + 8 + n:i + 12 + n]
        assert struct.unpack(">I", crc)[0] == zlib.crc32(kind + body)
        chunks[kind] = body
        i += 12 + n
    w, h, depth, color, *_ = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    assert (depth, color) == (8, 3) and b"IEND" in chunks
    rows = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(h, w + 1)
    assert (rows[:, 0] == 0).all()
    return rows[:, 1:], chunks[b"PLTE"]


def test_cells_are_a_valid_palette_png():
    from nnprobe.report import svg

    pixels = np.arange(7 * 5, dtype=np.uint8).reshape(7, 5)
    got, palette = read_png(svg.png(pixels, svg.BLUES))
    assert (got == pixels).all() and palette == svg.BLUES and len(palette) == 3 * 256
    assert palette[:3] == b"\xff\xff\xff"  # an empty cell is white


def test_a_big_mask_is_drawn_small_and_keeps_every_dependency():
    from nnprobe.report import svg

    mask = np.zeros((3000, 2500), bool)
    mask[2999, 0] = mask[0, 2499] = True
    page = svg.matrix(mask, title="big")
    uri = page.split("href='data:image/png;base64,")[1].split("'")[0]
    cells, _ = read_png(base64.b64decode(uri))
    assert max(cells.shape) <= 1024 and cells.sum() == 2 and cells[-1, 0] == cells[0, -1] == 1
    assert len(page) < 20_000


def polyline_ys(page: str) -> list[float]:
    pts = page.split("points='")[1].split("'")[0]
    return [float(p.split(",")[1]) for p in pts.split()]


def test_line_chart_axes():
    from nnprobe.report import svg

    x = np.arange(3)
    log = svg.line_chart([svg.Series("a", x, np.array([1.0, 10.0, 100.0]))], title="t", xlabel="step", ylabel="v", logy=True)
    y = polyline_ys(log)
    assert y[0] - y[1] == pytest.approx(y[1] - y[2], abs=0.2)  # a decade is a decade
    lin = svg.line_chart([svg.Series("a", x, np.array([1.0, 10.0, 100.0]))], title="t", xlabel="step", ylabel="v")
    y = polyline_ys(lin)
    assert (y[1] - y[2]) == pytest.approx(10 * (y[0] - y[1]), rel=0.01)
    # a NaN (a step where the row was not measured) is left out and its neighbours joined
    gap = svg.line_chart([svg.Series("a", np.arange(4), np.array([1.0, np.nan, 3.0, 4.0]))], title="t", xlabel="s", ylabel="v")
    assert len(polyline_ys(gap)) == 3
    # nothing finite: no picture
    assert svg.line_chart([svg.Series("a", x, np.full(3, np.nan))], title="t", xlabel="s", ylabel="v") is None
    assert svg.line_chart([svg.Series("a", x, np.zeros(3))], title="t", xlabel="s", ylabel="v", logy=True) is None


@pytest.mark.parametrize(("losses", "log_axis"), [(np.linspace(2.3, 0.1, 50), True), (np.linspace(2.3, 1.5, 50), False)])
def test_the_loss_axis_is_logarithmic_only_across_a_decade(losses, log_axis):
    from nnprobe.report import RunData, plot_loss

    run = RunData(fields=[], rows=[], steps=np.zeros(0, np.int64), mats=np.zeros((0, 0, 0)),
                  loss_steps=np.arange(len(losses)), loss_values=losses)
    labels = {t.split(">")[1].split("<")[0] for t in plot_loss(run).split("<text")[1:]}
    assert ({"0.1", "1", "10"} <= labels) == log_axis


def test_heat_strips_fold_the_tail_of_tiny_magnitudes_into_the_bottom_row():
    from nnprobe.report import svg

    counts = np.zeros((2, 64))
    counts[:, 46:50] = [2000, 5000, 2000, 990]  # the bulk: |x| in [2^-2, 2^2)
    counts[:, 0] = 10  # 0.1% near 2^-48: the tail every log-magnitude histogram has
    page = svg.heat_strips([svg.Strip("layer", np.array([0, 10]), counts)], title="t", lo=-48)
    (uri,) = [p.split("'")[0] for p in page.split("href='data:image/png;base64,")[1:]]
    cells, _ = read_png(base64.b64decode(uri))
    assert cells.shape == (4, 2)  # 2^-2 .. 2^2, not 2^-48 .. 2^2
    assert (cells[-1] > 0).all()  # the bottom row holds the folded tail (2000 + 10 values), not blank
    parsed = Page(page)
    # the bottom row's values are below 2^-1 (its bin, [2^-2, 2^-1), and all the tail); the top edge is 2^2
    text = "".join(parsed.text)
    assert "<2-1" in text and "22" in text
