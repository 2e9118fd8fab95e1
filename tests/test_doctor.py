"""doctor(): the recipe's stages in order, silent on a clean setup, each planted mistake reported by
its stage; the watched run with the real nnprobe.watch (and a stand-in recording how it is used)."""

import nnprobe
import pytest
import torch
import torch.nn as nn
from checks_zoo import TimeMajorMixer
from nnprobe import Finding

STAGES = ["data", "lint", "init", "gradients", "batch independence", "overfit one batch", "watched run"]


def loader(n=256, seed=0, batch_size=32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, generator=g)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    ds = torch.utils.data.TensorDataset(x, y)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, generator=g)


def model_and_opt(final=None):
    torch.manual_seed(0)
    layers = [nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 4)] + ([final] if final else [])
    model = nn.Sequential(*layers)
    return model, torch.optim.Adam(model.parameters(), lr=1e-2)


def test_a_clean_setup_is_silent_and_runs_every_stage():
    model, opt = model_and_opt()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rep = nnprobe.doctor(model, loader(), nn.CrossEntropyLoss(), opt)
    assert [s.name for s in rep.stages] == STAGES
    assert rep.ok, rep
    assert all(f.severity == "info" for f in rep.findings)
    assert rep.stage("overfit one batch").report.reached
    watched = rep.stage("watched run").report
    assert watched is not None and not [f for f in watched.findings if f.severity != "info"], watched
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert "[overfit one batch] ok" in str(rep)


def test_planted_mistakes_are_reported_by_their_stage(monkeypatch):
    monkeypatch.delattr(nnprobe, "watch", raising=False)
    model, opt = model_and_opt(final=nn.Softmax(dim=-1))
    rep = nnprobe.doctor(model, loader(), nn.CrossEntropyLoss(), opt)
    assert not rep.ok
    assert "activation-on-logits" in rep.stage("lint").report.codes()
    # a softmax before CrossEntropyLoss also starves the one-batch overfit
    assert rep.stage("overfit one batch").report.findings


def test_batch_mixing_is_found_by_the_doctor(monkeypatch):
    monkeypatch.delattr(nnprobe, "watch", raising=False)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 5, generator=g)
    y = torch.randint(0, 2, (64,), generator=g)
    dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    torch.manual_seed(0)
    model = TimeMajorMixer()
    rep = nnprobe.doctor(model, dl, nn.CrossEntropyLoss(), torch.optim.Adam(model.parameters(), lr=1e-2), steps=5)
    assert {"batch-mixing", "view-mixes-batch"} <= rep.stage("batch independence").report.codes()


class FakeProbe:
    """Stands in for nnprobe.watch's Probe, recording how the doctor uses it (SPEC section 2)."""

    calls = []

    def __init__(self, model, optimizer=None, **kw):
        self.model, self.optimizer, self.kw, self.losses = model, optimizer, kw, []
        FakeProbe.calls.append(self)
        self.findings = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.findings = [Finding("loss-not-decreasing", "warning", f"saw {len(self.losses)} steps")]

    def step(self, loss=None):
        self.losses.append(float(loss.detach()))


def test_the_watched_run_uses_the_watch_api_on_a_copy(monkeypatch):
    monkeypatch.setattr(nnprobe, "watch", FakeProbe, raising=False)
    FakeProbe.calls = []
    model, opt = model_and_opt()
    rep = nnprobe.doctor(model, loader(n=64), nn.CrossEntropyLoss(), opt, steps=7)  # 2 batches: cycles
    (probe,) = FakeProbe.calls
    assert probe.model is not model and probe.kw == {"console": False}
    assert isinstance(probe.optimizer, torch.optim.Adam) and probe.optimizer is not opt
    assert len(probe.losses) == 7
    stage = rep.stage("watched run")
    assert [f.code for f in stage.findings] == ["loss-not-decreasing"]
    assert "loss-not-decreasing" in rep.codes()


def test_a_failing_stage_is_reported_and_the_others_still_run(monkeypatch):
    monkeypatch.delattr(nnprobe, "watch", raising=False)
    model, opt = model_and_opt()

    def bad_loss(out, y):
        if out.shape[0] < 32:  # breaks only the 16-example overfit stage
            raise RuntimeError("boom")
        return nn.functional.cross_entropy(out, y)

    rep = nnprobe.doctor(model, loader(), bad_loss, opt)
    assert "could not run: RuntimeError: boom" in rep.stage("overfit one batch").note
    assert rep.stage("init").report is not None


def test_regression_doctor_uses_the_datasets_target_mean(monkeypatch):
    monkeypatch.delattr(nnprobe, "watch", raising=False)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 10, generator=g)
    y = 40 + x[:, :1] * 3
    dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1))
    rep = nnprobe.doctor(model, dl, nn.MSELoss(), torch.optim.Adam(model.parameters(), lr=1e-2), steps=3)
    init = rep.stage("init").report
    assert init.codes() == {"loss-at-init", "final-bias-init"}
    assert init.prior[0] == pytest.approx(float(y.double().mean()), rel=1e-6)


def test_the_recipes_new_checks_in_the_doctor(monkeypatch):
    """target-in-input (data), pretrained-input-mismatch (init) and gradient-mismatch (gradients),
    each reported by its stage; the fixed twins are silent there."""
    monkeypatch.delattr(nnprobe, "watch", raising=False)
    from fixtures import models as Z
    from test_gradients import SquareAct

    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 16, (128, 9), generator=g)
    for shifted in (False, True):
        x, y = (tokens[:, :-1], tokens[:, 1:]) if shifted else (tokens[:, :-1], tokens[:, :-1].clone())
        dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Embedding(16, 8), SquareAct(wrong=not shifted), nn.Linear(8, 16))
        rep = nnprobe.doctor(model, dl, lambda out, t: nn.functional.cross_entropy(out.reshape(-1, 16), t.reshape(-1)),
                             torch.optim.Adam(model.parameters(), lr=1e-2), steps=3)
        assert ("target-in-input" in rep.stage("data").report.codes()) is not shifted
        assert ("gradient-mismatch" in rep.stage("gradients").report.codes()) is not shifted
        assert [s.name for s in rep.stages] == STAGES
    for raw in (True, False):
        model = Z.pretrained_cnn()
        y = torch.randint(0, 4, (64,), generator=g)
        dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(Z.images(raw=raw), y), batch_size=32)
        rep = nnprobe.doctor(model, dl, nn.CrossEntropyLoss(), torch.optim.Adam(model.parameters(), lr=1e-3), steps=3)
        assert ("pretrained-input-mismatch" in rep.stage("init").report.codes()) is raw
