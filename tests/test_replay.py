"""`nnprobe check LOG_DIR` judges a finished run again from its log: on every demo run (the clean
one and each planted mistake) it raises exactly what the live run raised."""

from __future__ import annotations

import json

import nnprobe
import numpy as np
import pytest
import torch
from nnprobe import demo
from nnprobe.cli import main
from nnprobe.replay import judge_log


def _key(findings):
    return sorted((f.code, f.module, f.step, f.count) for f in findings)


@pytest.mark.parametrize("bug", [None, *demo.BUGS])
def test_replay_gives_the_live_findings(bug, tmp_path):
    torch.set_num_threads(1)
    probe, _, _ = demo.run(bug, tmp_path, steps=150, console=False, progress=False)
    replayed = judge_log(tmp_path / "log")
    assert _key(replayed) == _key(probe.findings)
    if bug is not None and bug not in ("bias-bn", "view-permute"):  # those two are one-shot findings
        assert set(demo.BUGS[bug].expects) & {f.code for f in replayed}


def test_check_command_prints_the_findings_and_exits_1_when_serious(tmp_path, capsys):
    demo.run("zero-grad", tmp_path, steps=20, console=False, progress=False)
    assert main(["check", str(tmp_path / "log")]) == 1
    out = capsys.readouterr().out
    assert "zero-grad-missing" in out and "1 above info" in out


def test_check_refuses_what_is_not_a_log(tmp_path, capsys):
    assert main(["check", str(tmp_path)]) == 2
    (tmp_path / "nnprobe.jsonl").write_text(json.dumps({"type": "start", "fields": ["count"], "rows": []}) + "\n")
    assert main(["check", str(tmp_path)]) == 2
    assert "no plan" in capsys.readouterr().err


def test_replay_sees_every_step_figure_kind(tmp_path):
    """A run with learning-rate changes, events and a forced sample: the replayed figures equal
    the live ones field by field."""
    from nnprobe.replay import figures_of
    from nnprobe.report.logfile import read_runs

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 7, gamma=0.5)
    live = []
    with nnprobe.watch(model, opt, log_dir=str(tmp_path), console=False) as probe:
        orig = probe._judge.judge
        probe._judge.judge = lambda figs: (live.append(figs), orig(figs))[1]  # type: ignore[method-assign]
        for i in range(30):
            opt.zero_grad()
            x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            sched.step()
            if i % 10 == 9:
                with torch.no_grad():
                    model(x)  # an evaluation in train mode: an event
    (log,), _ = read_runs(tmp_path)
    _, replayed = figures_of(log)
    live_by_step = {f.step: f for f in live}
    for r in replayed:
        f = live_by_step[r.step]
        assert (r.loss, r.lrs, r.events) == (f.loss, f.lrs, f.events)
        assert (r.sampled is None) == (f.sampled is None)
        if r.sampled is not None:
            assert r.sampled.act_order == f.sampled.act_order and r.sampled.judged == f.sampled.judged
            assert np.array_equal(r.sampled.mat, f.sampled.mat, equal_nan=True)
    assert any(e.kind == "eval-forward" for f in replayed for e in f.events)
    assert len({f.lrs for f in replayed}) >= 4


def test_replay_sees_the_recipe_figures(tmp_path):
    """Validation losses (no_grad loss calls and probe.step(val_loss=)), the summed loss terms, an
    upper clamp on the loss and the pretrained BatchNorm's input: replayed as the live run saw them."""
    from fixtures import models as Z
    from nnprobe.replay import figures_of
    from nnprobe.report.logfile import read_runs

    model = Z.pretrained_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    live = []
    g = torch.Generator().manual_seed(0)
    # every=1: the loss tap (which sees the no_grad losses) is open on every step
    with nnprobe.watch(model, opt, log_dir=str(tmp_path), console=False, every=1) as probe:
        orig = probe._judge.judge
        probe._judge.judge = lambda figs: (live.append(figs), orig(figs))[1]  # type: ignore[method-assign]
        for i in range(24):
            opt.zero_grad()
            x, y = Z.images(seed=i, raw=True), torch.randint(0, 4, (64,), generator=g)
            out = model(x)
            loss = torch.nn.functional.cross_entropy(out, y, reduction="none").clamp(max=1.5).mean()
            loss = loss + torch.nn.functional.mse_loss(out, torch.zeros_like(out))
            loss.backward()
            opt.step()
            probe.step(loss=loss, val_loss=0.5 if i == 20 else None)
            if i % 6 == 5:
                with torch.no_grad():
                    torch.nn.functional.cross_entropy(model(x), y)
    (log,), _ = read_runs(tmp_path)
    _, replayed = figures_of(log)
    live_by_step = {f.step: f for f in live}
    for r in replayed:
        f = live_by_step[r.step]
        assert (r.loss, r.val_loss, r.lrs, r.events) == (f.loss, f.val_loss, f.lrs, f.events)
    kinds = {e.kind for f in replayed for e in f.events}
    assert {"loss-terms", "loss-clamp", "bn-input"} <= kinds
    assert sum(f.val_loss is not None for f in replayed) == 5 and any(f.val_loss == 0.5 for f in replayed)
    assert _key(judge_log(tmp_path)) == _key(probe.findings)
    assert {"loss-clipped", "pretrained-input-mismatch"} <= probe.codes()
