"""The report's two data views (the batch just before the net, prediction dynamics): captured by
the probe without changing the training, rendered as inline SVG/HTML, opened in headless Chromium."""

from __future__ import annotations

import shutil
import subprocess

import nnprobe
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from fixtures import models as Z
from nnprobe.report.views import batch_view, page, prediction_view


def train(model, data, steps, *, watch=True, loss_fn=lambda out, y: F.cross_entropy(out, y)):
    torch.manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    probe = nnprobe.watch(model, opt, console=False) if watch else None
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        x, y = next(data)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    if probe is not None:
        probe.close()
    return probe, losses


def mlp_with_state():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Dropout(0.3), nn.Linear(64, 10))


def test_the_probe_keeps_the_first_batch_and_prediction_dynamics():
    X, y = Z.digits()
    probe, _ = train(mlp_with_state(), Z.batches(X, y), 60)
    fb = probe.first_batch()
    assert np.array_equal(fb["inputs"], X[:64].numpy()) and np.array_equal(fb["targets"], y[:64].numpy())
    pred = probe.predictions()
    assert pred["kind"] == "p_true" and pred["values"].shape == (len(pred["steps"]), 16)
    assert list(pred["steps"][:6]) == [0, 1, 2, 3, 4, 5] and pred["steps"][-1] >= 50
    assert ((pred["values"] >= 0) & (pred["values"] <= 1)).all()
    # training makes the fixed examples' true class likelier
    assert pred["values"][-1].mean() > pred["values"][0].mean() + 0.2
    assert np.array_equal(pred["targets"], y[:16].numpy())


def test_prediction_dynamics_do_not_change_the_training():
    """The extra forward runs in eval mode under no_grad with the random state forked: with
    Dropout and BatchNorm in the model, a watched run is bit for bit the unwatched one."""
    X, y = Z.digits()
    a, b = mlp_with_state(), mlp_with_state()
    _, watched = train(a, Z.batches(X, y), 40)
    _, bare = train(b, Z.batches(X, y), 40, watch=False)
    assert watched == bare
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_a_user_hook_means_no_extra_forward():
    X, y = Z.digits()
    model = mlp_with_state()
    calls = []
    model[0].register_forward_hook(lambda *a: calls.append(1))
    probe, _ = train(model, Z.batches(X, y), 10)
    assert len(calls) == 10 and probe.predictions() is None and probe.first_batch() is not None


def test_sequence_models_get_p_true_per_position():
    model = Z.TinyGPT()
    probe, _ = train(model, Z.lm_batches(Z.tokens()), 12, loss_fn=Z.lm_loss)
    fb, pred = probe.first_batch(), probe.predictions()
    assert fb["inputs"].dtype.kind == "i" and fb["inputs"].shape == fb["targets"].shape
    assert pred["kind"] == "p_true" and pred["values"].shape[1] == 16


def test_views_render_each_kind_of_input():
    g = np.random.default_rng(0)
    imgs = batch_view({"inputs": g.random((8, 3, 8, 8)).astype(np.float32), "targets": np.arange(8)})
    assert "<svg" in imgs and imgs.count("<image") == 8 and "y = 7" in imgs and "per-channel mean" in imgs
    toks = g.integers(0, 50, (4, 12))
    table = batch_view({"inputs": toks, "targets": toks.copy()})
    assert "<table" in table and table.count("title='target equals") == 48
    shifted = batch_view({"inputs": toks[:, :-1], "targets": toks[:, 1:]})
    assert shifted.count("title='target equals") == 0 and "shifted by one in 100%" in shifted
    hist = batch_view({"inputs": g.standard_normal((64, 5)), "targets": None})
    assert hist.count(": mean ") == 5 and hist.count(">std ") == 5
    assert batch_view(None) == "" and prediction_view(None) == ""
    pv = prediction_view({"steps": np.arange(10), "values": g.random((10, 4)), "kind": "p_true", "targets": np.arange(4)})
    assert "p(true class)" in pv and "example 3 (y=3)" in pv
    reg = prediction_view({"steps": np.arange(3), "values": g.standard_normal((3, 2)), "kind": "output", "targets": None})
    assert "first output" in reg


def test_views_escape_their_text():
    html = batch_view({"inputs": np.zeros((2, 3)), "targets": None}, title="<script>alert(1)</script>")
    assert "<script>" not in html and "&lt;script&gt;" in html


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(chromium() is None, reason="needs Chromium (.ci/run installs Debian's chromium)")
def test_views_render_in_headless_chromium(tmp_path):
    X, y = Z.digits()
    digits_probe, _ = train(mlp_with_state(), Z.batches(X, y), 60)
    images = Z.images(n=64)
    cnn_probe, _ = train(Z.pretrained_cnn(), iter(lambda: (images, torch.arange(64) % 4), None), 20)
    gpt_probe, _ = train(Z.TinyGPT(), Z.lm_batches(Z.tokens()), 12, loss_fn=Z.lm_loss)
    parts = [batch_view(cnn_probe.first_batch(), title="images"), batch_view(gpt_probe.first_batch(), title="tokens"),
             batch_view(digits_probe.first_batch(), title="table"), prediction_view(digits_probe.predictions())]
    path = tmp_path / "views.html"
    path.write_text(page(parts))
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"]
    dom = subprocess.run(cmd + ["--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("nnprobe-view") >= 4 and "Prediction dynamics" in dom.stdout
    shot = tmp_path / "views.png"
    r = subprocess.run(cmd + ["--window-size=800,2200", f"--screenshot={shot}", path.as_uri()], capture_output=True,
                       timeout=120)
    assert r.returncode == 0 and shot.stat().st_size > 20_000
    keep = __import__("os").environ.get("NNPROBE_KEEP_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)


class Counting(nn.Module):
    """A forward with a Python side effect: it counts its calls."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)
        self.calls = 0
        self.seen: list[int] = []

    def forward(self, x):
        self.calls += 1
        self.seen.append(len(x))
        return self.fc(x)


def test_a_forward_with_python_side_effects_is_put_back_and_not_run_again():
    X, y = Z.digits()
    model = Counting()
    probe, _ = train(model, Z.batches(X, y), 10)
    assert model.calls == 10 and model.seen == [64] * 10
    assert len(probe.predictions()["steps"]) == 1  # the first capture showed the side effect
