"""The HTML report: built from a real watched run, opened in a real headless Chromium; golden
files for `summary()` and `explain` (regenerate with `pytest --regen-golden`)."""

import shutil
import subprocess
from pathlib import Path

import nnprobe
import pytest
import torch
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
