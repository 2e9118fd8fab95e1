"""Every runtime finding code: the mistake planted (it fires, on the right layer) and fixed (it
stays silent). Small models, short runs, one torch thread."""

from __future__ import annotations

import math

import nnprobe
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from fixtures import models as Z


def watched(model, opt, data, steps, *, every=1, give_loss=False, **kw):
    """Train under a probe; returns the closed probe. `give_loss`: hand each step's loss to
    probe.step() (without it the probe sees the loss on the steps it judges)."""
    torch.manual_seed(0)
    with nnprobe.watch(model, opt, every=every, console=False) as probe:
        Z.train(model, opt, data, steps, probe=probe if give_loss else None, **kw)
    return probe


def found(probe, code):
    return [f for f in probe.findings if f.code == code]


def loud(probe):
    return [str(f) for f in probe.findings if f.severity in ("warning", "error")]


def digits():
    return Z.batches(*Z.digits())


def adam(model, lr=1e-3):
    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)


# ------------------------------------------------------------------------------- loss-at-init
def test_loss_at_init_planted():
    torch.manual_seed(0)
    model = Z.mlp()
    with torch.no_grad():
        model[-1].weight.mul_(30)  # over-confident logits at init
    probe = watched(model, adam(model), digits(), 5)
    (f,) = found(probe, "loss-at-init")
    assert f.step == 0 and f.data["classes"] == 10 and f.data["loss"] > 2 * math.log(10)
    assert "cross_entropy" in f.message and "ln 10" in f.message


def test_loss_at_init_fixed():
    torch.manual_seed(0)
    model = Z.mlp()
    probe = watched(model, adam(model), digits(), 5)
    assert not found(probe, "loss-at-init") and loud(probe) == []


# -------------------------------------------------------------------------- zero-grad-missing
def test_zero_grad_missing_planted():
    torch.manual_seed(0)
    model = Z.mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    probe = watched(model, opt, digits(), 6, zero_grad=False, every=1000)
    (f,) = found(probe, "zero-grad-missing")
    assert f.severity == "error" and f.step == 1 and f.count == 5 and "4.bias" in f.message


@pytest.mark.parametrize("accumulate", [1, 4])
def test_zero_grad_missing_fixed_and_accumulation_is_fine(accumulate):
    torch.manual_seed(0)
    model = Z.mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    probe = watched(model, opt, digits(), 8, accumulate=accumulate, every=1000)
    assert not found(probe, "zero-grad-missing")


def test_zero_grad_through_model_zero_grad_or_none_is_fine():
    torch.manual_seed(0)
    model = Z.mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    data = digits()
    with nnprobe.watch(model, opt, console=False) as probe:
        for i in range(6):
            if i % 2:
                model.zero_grad()
            else:
                for p in model.parameters():
                    p.grad = None
            x, y = next(data)
            F.cross_entropy(model(x), y).backward()
            opt.step()
    assert not found(probe, "zero-grad-missing")


# ------------------------------------------------------------------- eval-mode / train-mode
def test_eval_mode_training_planted():
    torch.manual_seed(0)
    model = Z.mlp(dropout=0.3)
    model.eval()  # forgotten model.train()
    probe = watched(model, adam(model), digits(), 4, toggle_mode=False)
    (f,) = found(probe, "eval-mode-training")
    assert f.module == "2" and f.step == 0 and f.count == 4


def test_eval_mode_training_fixed_and_a_frozen_batchnorm_is_fine():
    torch.manual_seed(0)
    model = Z.SmallCNN()
    model.bn1.eval()  # one BatchNorm frozen on purpose, its parameters too
    for p in model.bn1.parameters():
        p.requires_grad_(False)
    probe = watched(model, adam(model), digits(), 4)
    assert not found(probe, "eval-mode-training") and loud(probe) == []


def test_train_mode_eval_planted():
    torch.manual_seed(0)
    model = Z.mlp(dropout=0.3)
    probe = watched(model, adam(model), digits(), 6, eval_every=2, toggle_mode=False)
    (f,) = found(probe, "train-mode-eval")
    assert f.module == "2" and "Dropout" in f.message and f.count == 3


@pytest.mark.parametrize("ctx", [torch.no_grad, torch.inference_mode])
def test_train_mode_eval_fixed(ctx):
    torch.manual_seed(0)
    model = Z.SmallCNN()
    probe = watched(model, adam(model), digits(), 6, eval_every=2, eval_ctx=ctx)
    assert not found(probe, "train-mode-eval") and loud(probe) == []


def test_update_bn_recalibration_is_not_an_evaluation():
    torch.manual_seed(0)
    model = Z.SmallCNN()
    opt = adam(model)
    X, y = Z.digits(128)
    with nnprobe.watch(model, opt, console=False) as probe:
        Z.train(model, opt, Z.batches(X, y), 3)
        torch.optim.swa_utils.update_bn([(X[:64],), (X[64:],)], model)
    assert not found(probe, "train-mode-eval")


# ------------------------------------------------------------ loss inputs (module and functional)
class WithLoss(nn.Module):
    """A model that computes its own loss inside forward, with the functional API."""

    def __init__(self, how):
        super().__init__()
        self.net = Z.mlp()
        self.how = how

    def forward(self, x, y):
        z = self.net(x)
        if self.how == "softmax-ce":
            return F.cross_entropy(z.softmax(-1), y)
        if self.how == "nll-raw":
            return F.nll_loss(z, y)
        if self.how == "nll-ok":
            return F.nll_loss(F.log_softmax(z, -1), y)
        return F.cross_entropy(z, y)


def run_inside(how, steps=4):
    torch.manual_seed(0)
    model = WithLoss(how)
    opt = adam(model)
    data = digits()
    with nnprobe.watch(model, opt, console=False) as probe:
        for _ in range(steps):
            opt.zero_grad()
            x, y = next(data)
            model(x, y).backward()
            opt.step()
    return probe


@pytest.mark.parametrize("loss_fn", [
    lambda o, y: nn.CrossEntropyLoss()(o.softmax(1), y),
    lambda o, y: F.cross_entropy(F.softmax(o, dim=1), y),
])
def test_probabilities_into_cross_entropy_planted(loss_fn):
    torch.manual_seed(0)
    model = Z.mlp()
    probe = watched(model, adam(model), digits(), 4, loss_fn=loss_fn, every="auto")
    (f,) = found(probe, "probabilities-into-loss")
    assert f.severity == "error" and "cross_entropy" in f.message and f.step == 1


def test_probabilities_into_loss_inside_the_model():
    assert found(run_inside("softmax-ce"), "probabilities-into-loss")
    assert not found(run_inside("ce-ok"), "probabilities-into-loss")


def test_probabilities_into_bce_with_logits_planted_and_fixed():
    torch.manual_seed(0)
    X, y = Z.blobs(classes=2)
    data = Z.batches(X, y.float())
    for bad in (True, False):
        model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1))
        loss = nn.BCEWithLogitsLoss()
        fn = (lambda o, t, loss=loss: loss(torch.sigmoid(o).squeeze(1), t)) if bad else (lambda o, t, loss=loss: loss(o.squeeze(1), t))
        probe = watched(model, adam(model), data, 14, loss_fn=fn, every="auto")
        assert bool(found(probe, "probabilities-into-loss")) == bad
        if not bad:
            assert loud(probe) == []


def test_probabilities_into_loss_fixed():
    torch.manual_seed(0)
    model = Z.mlp()
    probe = watched(model, adam(model), digits(), 4, loss_fn=nn.CrossEntropyLoss(), every=1000)
    assert not found(probe, "probabilities-into-loss") and loud(probe) == []


@pytest.mark.parametrize("loss_fn", [
    lambda o, y: nn.NLLLoss()(o, y),  # raw scores
    lambda o, y: F.nll_loss(o.softmax(1), y),  # probabilities, not their log
    lambda o, y: F.nll_loss(F.log_softmax(o, dim=0), y),  # normalised over the wrong dimension
])
def test_logits_into_nll_planted(loss_fn):
    torch.manual_seed(0)
    model = Z.mlp()
    probe = watched(model, adam(model), digits(), 4, loss_fn=loss_fn, every="auto")
    (f,) = found(probe, "logits-into-nll")
    assert "nll_loss" in f.message and f.severity == "error"


def test_logits_into_nll_inside_the_model_and_fixed():
    assert found(run_inside("nll-raw"), "logits-into-nll")
    probe = run_inside("nll-ok")
    assert not found(probe, "logits-into-nll") and loud(probe) == []


# ---------------------------------------------------------------------------------- non-finite
class Fragile(nn.Module):
    """log() of an activation that turns negative at a chosen step: NaN in forward."""

    def __init__(self, bad_step):
        super().__init__()
        self.fc1 = nn.Linear(64, 32)
        self.act = nn.ReLU()
        self.log = LogLayer(bad_step)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc2(self.log(self.act(self.fc1(x))))


class LogLayer(nn.Module):
    def __init__(self, bad_step):
        super().__init__()
        self.calls = 0
        self.bad_step = bad_step

    def forward(self, x):
        if torch.is_grad_enabled():
            self.calls += 1
        shift = -1.0 if self.calls - 1 == self.bad_step else 1.0
        return torch.log(x + shift)


@pytest.mark.parametrize("every", [1, 1000])
def test_non_finite_forward_located_on_any_step(every):
    torch.manual_seed(0)
    model = Fragile(bad_step=7)
    probe = watched(model, torch.optim.SGD(model.parameters(), lr=0.01), digits(), 10, every=every)
    fs = found(probe, "non-finite")
    assert fs and fs[0].module == "log" and fs[0].step == 7 and fs[0].severity == "error"


def test_non_finite_input_batch_is_named():
    torch.manual_seed(0)
    model = Z.mlp()
    X, y = Z.digits()
    X[70, 3] = float("nan")
    probe = watched(model, torch.optim.SGD(model.parameters(), lr=0.01), Z.batches(X, y), 3, every=1000)
    (f,) = found(probe, "non-finite")
    assert f.module is None and "input batch" in f.message and f.step == 1


class NanGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("nan")


class BadBackward(nn.Module):
    def forward(self, x):
        return NanGrad.apply(x)


def test_non_finite_backward_located_on_a_sampled_step():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), BadBackward(), nn.Linear(32, 10))
    probe = watched(model, torch.optim.SGD(model.parameters(), lr=0.0), digits(), 2)
    f = found(probe, "non-finite")[0]
    assert f.module == "2" and f.data["phase"] == "backward" and f.step == 0


def test_non_finite_fixed():
    torch.manual_seed(0)
    model = Fragile(bad_step=10**9)
    probe = watched(model, torch.optim.SGD(model.parameters(), lr=0.01), digits(), 10)
    assert not found(probe, "non-finite")


# ----------------------------------------------------------------- exploding / vanishing gradients
def test_exploding_gradients_planted():
    torch.manual_seed(0)
    model = Z.deep(6, 32, nn.ReLU)
    probe = watched(model, torch.optim.SGD(model.parameters(), lr=3.0), Z.batches(*Z.blobs()), 12)
    (f,) = found(probe, "exploding-gradients")
    assert f.data["growth"] > 1e4 and f.step < 9


def test_vanishing_gradients_planted():
    torch.manual_seed(0)
    model = Z.deep(8, 32, nn.Sigmoid)
    probe = watched(model, adam(model), Z.batches(*Z.blobs()), 30)
    (f,) = found(probe, "vanishing-gradients")
    # it must last: judged from step 0, found once it held for 20 steps
    assert f.module == "0" and f.data["ratio_first_last"] < 1e-4 and f.step == 20 and f.data["since_step"] == 0


def test_exploding_and_vanishing_fixed():
    torch.manual_seed(0)
    model = Z.kaiming_(Z.deep(8, 32, nn.ReLU))
    with torch.no_grad():
        model[-1].weight.mul_(0.1)
    probe = watched(model, torch.optim.SGD(model.parameters(), lr=0.01), Z.batches(*Z.blobs()), 20)
    assert not found(probe, "exploding-gradients") and not found(probe, "vanishing-gradients")
    assert loud(probe) == []


# ---------------------------------------------------------------------------------- dead-units
def test_dead_units_planted():
    torch.manual_seed(0)
    model = Z.mlp()
    with torch.no_grad():
        model[2].bias.fill_(-20.0)  # the second hidden layer's pre-activations are all negative
    probe = watched(model, adam(model), digits(), 5)
    (f,) = found(probe, "dead-units")
    assert f.module == "3" and f.data["dead_fraction"] == 1.0 and f.step == 2


def test_dead_units_fixed():
    torch.manual_seed(0)
    model = Z.mlp()
    probe = watched(model, adam(model), digits(), 10)
    assert not found(probe, "dead-units")
    dead = probe.history("3", "activations", "dead")
    # exact on histogram steps; elsewhere ruled out by the zeros count without a pass (NaN)
    assert np.isfinite(dead[0]) and (dead[np.isfinite(dead)] < 0.5).all()


def test_dead_units_need_enough_examples():
    torch.manual_seed(0)
    model = Z.mlp()
    probe = watched(model, adam(model), Z.batches(*Z.digits(), bs=2), 10)
    assert not found(probe, "dead-units")
    assert np.isnan(probe.history("3", "activations", "dead")).all()


# ------------------------------------------------------------------------ saturated-activations
def tanh_net(gain):
    m = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10))
    with torch.no_grad():
        m[0].weight.mul_(gain)
        m[2].weight.mul_(0.1)
    return m


def test_saturated_activations_planted():
    torch.manual_seed(0)
    model = tanh_net(30.0)
    probe = watched(model, adam(model), digits(), 5)
    (f,) = found(probe, "saturated-activations")
    assert f.module == "1" and f.data["saturated_fraction"] > 0.5


def test_saturated_sigmoid_planted_and_fixed():
    for gain, bad in ((30.0, True), (1.0, False)):
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(64, 64), nn.Sigmoid(), nn.Linear(64, 10))
        with torch.no_grad():
            m[0].weight.mul_(gain)
        probe = watched(m, adam(m), digits(), 5)
        assert bool(found(probe, "saturated-activations")) == bad


def test_saturated_activations_fixed():
    torch.manual_seed(0)
    model = tanh_net(1.0)
    probe = watched(model, adam(model), digits(), 10)
    assert not found(probe, "saturated-activations") and loud(probe) == []


# --------------------------------------------------------------------------------- update-ratio
def test_update_ratio_too_high_planted():
    torch.manual_seed(0)
    model = Z.mlp()
    # SGD at lr=1: the loss oscillates between 1.8 and 3.9, each step rewrites a tenth of the weights
    probe = watched(model, torch.optim.SGD(model.parameters(), lr=1.0), digits(), 20)
    fs = found(probe, "update-ratio")
    assert fs and all(f.data["direction"] == "high" for f in fs)
    assert {f.module for f in fs} <= {"0", "2", "4"} and fs[0].data["median_ratio"] > 0.1


def test_update_ratio_of_a_growing_small_weight_is_fine():
    """A scaled-down output layer under Adam: the ratio is high while the weight grows, then falls."""
    torch.manual_seed(0)
    model = Z.mlp()
    with torch.no_grad():
        model[-1].weight.mul_(0.05)
    probe = watched(model, adam(model), digits(), 30)
    assert not found(probe, "update-ratio")


def test_update_ratio_too_low_planted():
    torch.manual_seed(0)
    model = Z.mlp()
    probe = watched(model, torch.optim.SGD(model.parameters(), lr=1e-7), digits(), 14)
    fs = found(probe, "update-ratio")
    assert fs and all(f.data["direction"] == "low" and f.data["median_ratio"] < 1e-5 for f in fs)


def test_update_ratio_fixed_and_a_decayed_rate_is_fine():
    torch.manual_seed(0)
    model = Z.mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1e-6 if s >= 12 else 1.0)  # annealed to ~0
    data = digits()
    with nnprobe.watch(model, opt, every=1, console=False) as probe:
        for _ in range(30):
            opt.zero_grad()
            x, y = next(data)
            F.cross_entropy(model(x), y).backward()
            opt.step()
            sched.step()
    assert not found(probe, "update-ratio")


# --------------------------------------------------------------- param-not-in-optimizer / never updated
def test_param_not_in_optimizer_planted_and_fixed():
    torch.manual_seed(0)
    model = Z.mlp()
    opt = torch.optim.Adam(list(model[0].parameters()) + list(model[2].parameters()), lr=1e-3)  # forgot the head
    probe = watched(model, opt, digits(), 3, every=1000)
    fs = found(probe, "param-not-in-optimizer")
    assert {f.module for f in fs} == {"4"} and {f.data["param"] for f in fs} == {"4.weight"} | set()
    probe = watched(model, adam(model), digits(), 3, every=1000)
    assert not found(probe, "param-not-in-optimizer")


class Unused(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = Z.mlp()
        self.aux = nn.Linear(64, 10)  # in the optimizer, never used

    def forward(self, x):
        return self.net(x)


def test_param_never_updated_planted():
    torch.manual_seed(0)
    model = Unused()
    probe = watched(model, adam(model), digits(), 8)
    fs = found(probe, "param-never-updated")
    assert {f.module for f in fs} == {"aux"} and "no gradient reaches it" in fs[0].message


def test_param_never_updated_fixed_and_frozen_params_are_fine():
    torch.manual_seed(0)
    model = Z.frozen_backbone()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)  # frozen ones in the optimizer: no grad, skipped
    probe = watched(model, opt, Z.batches(*Z.blobs()), 8)
    assert not found(probe, "param-never-updated") and loud(probe) == []


# -------------------------------------------------------------------------- loss-not-decreasing
def test_loss_not_decreasing_planted():
    torch.manual_seed(0)
    X, y = Z.digits()
    g = torch.Generator().manual_seed(1)

    def shuffled():  # labels drawn at random every step: nothing to learn
        for x, _ in Z.batches(X, y):
            yield x, torch.randint(0, 10, (len(x),), generator=g)

    model = Z.mlp()
    probe = watched(model, adam(model), shuffled(), 40, every=1000, give_loss=True)  # probe.step(loss=...) every step
    (f,) = found(probe, "loss-not-decreasing")
    assert f.step >= 19


def test_loss_not_decreasing_fixed_with_warmup():
    torch.manual_seed(0)
    model = Z.mlp()
    opt = adam(model)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 30))
    data = digits()
    with nnprobe.watch(model, opt, console=False) as probe:
        for _ in range(60):
            opt.zero_grad()
            x, y = next(data)
            F.cross_entropy(model(x), y).backward()
            opt.step()
            sched.step()
    assert not found(probe, "loss-not-decreasing")


# ------------------------------------------------------------------------------- loss-spike
def spiky(steps, *, corrupt_at=None, bs=32, flip=0.0, seed=0, log_dir=None, late_loss=False, device="cpu"):
    """Blobs with some labels flipped (a noisy, healthy loss), Adam; at `corrupt_at` a corrupted
    batch (inputs x5, every label wrong)."""
    torch.manual_seed(seed)
    X, y = Z.blobs(2048, seed=seed)
    g = torch.Generator().manual_seed(2 + seed)
    y = torch.where(torch.rand(len(y), generator=g) < flip, torch.randint(0, 4, y.shape, generator=g), y)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)).to(device)
    opt = adam(model, lr=3e-3)
    with nnprobe.watch(model, opt, console=False, log_dir=log_dir) as probe:
        for s in range(steps):
            idx = torch.randint(0, len(X), (bs,), generator=g)
            x, t = X[idx].to(device), y[idx].to(device)
            if s == corrupt_at:
                x, t = x * 5, (t + 1) % 4
            opt.zero_grad()
            loss = F.cross_entropy(model(x), t) if not late_loss else ((model(x) - F.one_hot(t, 4)) ** 2).mean()
            loss.backward()
            if not late_loss:
                probe.step(loss=loss)  # before the update: a spiking step is sampled in full
            opt.step()
            if late_loss:
                probe.step(loss=loss)  # after it: the spike is named, its gradients already applied
    return probe


def test_loss_spike_planted(tmp_path):
    from nnprobe.replay import judge_log

    probe = spiky(130, corrupt_at=120, log_dir=str(tmp_path))
    (f,) = found(probe, "loss-spike")
    # the spike step, sampled in full before its update; the first layer whose gradient jumped
    assert f.step == 120 and 120 in probe.sampled_steps.tolist()
    assert f.module == "0" and f.data["grad_jump"] > 4 and f.data["batch"] is None
    assert sorted((g.code, g.module, g.step) for g in judge_log(tmp_path)) == sorted(
        (g.code, g.module, g.step) for g in probe.findings)  # the log holds what it read


def test_loss_spike_fixed_noisy_small_batches():
    probe = spiky(250, bs=4, flip=0.3, seed=1)
    assert loud(probe) == []


def test_loss_spike_named_without_gradients_when_the_loss_comes_after_the_update():
    probe = spiky(130, corrupt_at=120, late_loss=True)
    (f,) = found(probe, "loss-spike")
    assert f.step == 120 and "not sampled" in f.message and 121 in probe.sampled_steps.tolist()


def test_loss_spike_with_losses_read_one_step_late(monkeypatch):
    """The CUDA path on the CPU: losses handed over as tensors, read one step later (as a GPU's
    are, without a synchronisation); the checks still see every step's loss."""
    import nnprobe.runtime.probe as P

    monkeypatch.setattr(P, "on_device", lambda loss: isinstance(loss, torch.Tensor))  # CPU tensors read late
    probe = spiky(130, corrupt_at=120)
    (f,) = found(probe, "loss-spike")
    assert f.step == 120 and "not sampled" in f.message and 121 in probe.sampled_steps.tolist()


@pytest.mark.cuda
def test_cuda_loss_spike_without_host_sync():
    """On a GPU the loss reaches the host one step late: the spike is named at its step, and the
    step after it is sampled."""
    probe = spiky(130, corrupt_at=120, device="cuda")
    (f,) = found(probe, "loss-spike")
    assert f.step == 120 and 121 in probe.sampled_steps.tolist()


# ------------------------------------------------------------------------------- loss-scale-collapse
def test_loss_scale_collapse_planted():
    from test_amp import scaler_run

    # NaN gradients from a finite forward: the scaler skips every step, its scale falls below 1
    probe, *_ = scaler_run(iters=24, init_scale=2.0**16, nan_grad=True)
    (f,) = found(probe, "loss-scale-collapse")
    assert f.step == 19 and f.data["streak"] == 20
    assert "non-finite" not in probe.codes()  # the skipped steps' gradients are the scaler's business


def test_loss_scale_collapse_fixed():
    from test_amp import scaler_run

    probe, _, skips, *_ = scaler_run()  # a few overflow skips at the start, and one later
    assert sum(skips) >= 4 and probe.codes() == set()


# ----------------------------------------------------------------------------- loss-clipped
def clamp_run(make_loss, steps=12, every=1):
    """A loop whose loss is built by `make_loss(logits, y)` and handed to probe.step as a tensor."""
    torch.manual_seed(0)
    model = Z.mlp()
    opt = adam(model, 1e-2)
    data = digits()
    with nnprobe.watch(model, opt, every=every, console=False) as probe:
        for _ in range(steps):
            opt.zero_grad()
            x, y = next(data)
            loss = make_loss(model(x), y)
            loss.backward()
            opt.step()
            probe.step(loss=loss)
    return probe


def test_loss_clipped_planted():
    # "tried to clip gradients but clipped the loss instead": the per-example losses are clamped
    probe = clamp_run(lambda out, y: F.cross_entropy(out, y, reduction="none").clamp(max=2.0).mean())
    (f,) = found(probe, "loss-clipped")
    assert f.step == 0 and f.severity == "warning" and f.data["cap"] == 2.0 and f.data["examples"] == 64
    assert 0 < f.data["above"] <= 64 and "cross_entropy" in f.message and "step 0" in f.message
    # clamp_max, torch.minimum with a constant (read before backward: probe.step before it) and a clamp on the mean
    probe = clamp_run(lambda out, y: torch.clamp_max(F.cross_entropy(out, y, reduction="none"), 2.0).mean())
    assert found(probe, "loss-clipped")
    probe = clamp_run(lambda out, y: F.cross_entropy(out, y).clamp(0.0, 1.0))
    (f,) = found(probe, "loss-clipped")
    assert f.data["examples"] == 1 and "the batch's loss was above the cap" in f.message


def test_loss_clipped_with_minimum_before_backward():
    torch.manual_seed(0)
    model = Z.mlp()
    opt = adam(model, 1e-2)
    data = digits()
    with nnprobe.watch(model, opt, every=1, console=False) as probe:
        for _ in range(3):
            opt.zero_grad()
            x, y = next(data)
            loss = torch.minimum(F.cross_entropy(model(x), y, reduction="none"), torch.tensor(2.0)).mean()
            probe.step(loss=loss)  # before backward: the graph still holds the cap
            loss.backward()
            opt.step()
    (f,) = found(probe, "loss-clipped")
    assert f.data["node"] == "MinimumBackward0" and f.step == 0


@pytest.mark.parametrize("make_loss", [
    lambda out, y: F.cross_entropy(out.clamp(-50, 50), y),  # a clamp on the logits, which never binds
    lambda out, y: F.cross_entropy(out, y, reduction="none").clamp(max=1e4).mean(),  # on the loss, never binds
    lambda out, y: F.cross_entropy(out, y, reduction="none").clamp(min=0).mean(),  # a lower clamp: no cap
    lambda out, y: F.cross_entropy(out, y),
], ids=["logit-clamp", "loose-cap", "lower-clamp", "plain"])
def test_loss_clipped_fixed(make_loss):
    probe = clamp_run(make_loss)
    assert not found(probe, "loss-clipped") and loud(probe) == []


# ----------------------------------------------------------------------------- lr-schedule
def schedule_run(make_sched, steps=300, plateau=False):
    torch.manual_seed(0)
    model = Z.mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = make_sched(opt)
    data = digits()
    with nnprobe.watch(model, opt, console=False) as probe:
        epoch = []
        for step in range(steps):
            opt.zero_grad()
            x, y = next(data)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            probe.step(loss=loss)
            epoch.append(float(loss.detach()))
            if plateau:
                if step % 8 == 7:  # an epoch of 8 batches: the scheduler sees the epoch's mean loss
                    sched.step(sum(epoch) / len(epoch))
                    epoch = []
            elif sched is not None:
                sched.step()
    return probe


def test_lr_schedule_planted_epoch_schedule_stepped_per_batch():
    # StepLR(step_size=30) is written for epochs; stepped per batch it reaches 1% at step 60
    probe = schedule_run(lambda o: torch.optim.lr_scheduler.StepLR(o, 30, gamma=0.1), steps=200)
    (f,) = found(probe, "lr-schedule")
    assert f.data["low_since"] == 60 and f.step >= 120 and "step 60" in f.message


def test_lr_schedule_planted_rate_at_zero():
    torch.manual_seed(0)
    model = Z.mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: max(0.0, 1 - t / 100))  # linear to 0 at step 100
    with nnprobe.watch(model, opt, console=False) as probe:
        Z.train(model, opt, digits(), 150, probe=None)
    assert not found(probe, "lr-schedule")  # (the scheduler was never stepped)
    with nnprobe.watch(model, opt, console=False) as probe:
        data = digits()
        for _ in range(150):
            opt.zero_grad()
            x, y = next(data)
            F.cross_entropy(model(x), y).backward()
            opt.step()
            sched.step()
    (f,) = found(probe, "lr-schedule")
    assert f.data["reason"] == "zero" and f.data["zero_since"] == 100


@pytest.mark.parametrize("name", ["warmup-cosine", "plateau", "multistep"])
def test_lr_schedule_fixed(name):
    steps = 300
    if name == "warmup-cosine":
        probe = schedule_run(lambda o: torch.optim.lr_scheduler.LambdaLR(
            o, lambda t: (t + 1) / 30 if t < 30 else 0.5 * (1 + math.cos(math.pi * (t - 30) / (steps - 30)))), steps)
    elif name == "plateau":
        probe = schedule_run(lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, factor=0.1, patience=1), steps,
                             plateau=True)
    else:
        probe = schedule_run(lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [180, 240], gamma=0.1), steps)
    assert not found(probe, "lr-schedule") and loud(probe) == [], loud(probe)


# ------------------------------------------------------------------------ overfitting, no-validation
def overfit_run(*, memorise: bool, steps=200, eval_every=10, val_loss_arg=False):
    """Memorise: 48 training examples with random labels (the validation loss can only rise); else
    a task with as much data as it wants (fresh samples of the same clusters). The training loss
    goes to probe.step() every step; the validation loss too (val_loss_arg), or it is left to the
    loss tap, which sees losses under no_grad on the judged steps (every=1 here)."""
    torch.manual_seed(0)
    X, y = Z.digits()
    g = torch.Generator().manual_seed(3)
    if memorise:
        Xtr, ytr = X[:48], torch.randint(0, 10, (48,), generator=g)
        Xva, yva = X[256:384], torch.randint(0, 10, (128,), generator=g)
    else:
        X, y = Z.blobs(n=48 * steps + 256, d=64, classes=10, seed=0)
        Xtr, ytr, Xva, yva = X[:-256], y[:-256], X[-256:], y[-256:]
    model = Z.mlp(hidden=128)
    opt = adam(model, 3e-3)
    data = Z.batches(Xtr, ytr, bs=48)
    with nnprobe.watch(model, opt, console=False, every="auto" if val_loss_arg else 1) as probe:
        for step in range(steps):
            opt.zero_grad()
            x, t = next(data)
            loss = F.cross_entropy(model(x), t)
            loss.backward()
            opt.step()
            v = None
            if (step + 1) % eval_every == 0:
                model.eval()
                with torch.no_grad():
                    v = F.cross_entropy(model(Xva), yva)
                model.train()
            probe.step(loss=loss, val_loss=v if val_loss_arg else None)
    return probe


@pytest.mark.parametrize("val_loss_arg", [False, True], ids=["no_grad-losses", "probe.step(val_loss=)"])
def test_overfitting_planted(val_loss_arg):
    probe = overfit_run(memorise=True, val_loss_arg=val_loss_arg)
    (f,) = found(probe, "overfitting")
    assert f.severity == "warning" and f"step {f.data['best_step']}" in f.message and f.data["best_step"] < f.step
    assert not found(probe, "no-validation")


def test_overfitting_fixed():
    probe = overfit_run(memorise=False)
    assert not found(probe, "overfitting") and not found(probe, "no-validation") and loud(probe) == []


def test_no_validation_planted_and_fixed():
    torch.manual_seed(0)
    model = Z.mlp()
    opt = adam(model)
    probe = watched(model, opt, digits(), 120, every=1000, give_loss=True)
    (f,) = found(probe, "no-validation")
    assert f.severity == "info" and f.step == 119 and "120 training steps" in f.message
    model = Z.mlp()
    probe = watched(model, adam(model), digits(), 120, every=1000, eval_every=40, give_loss=True)
    assert not found(probe, "no-validation")
    model = Z.mlp()
    probe = watched(model, adam(model), digits(), 60, every=1000, give_loss=True)  # a short run: an experiment
    assert not found(probe, "no-validation")


def test_an_evaluation_after_training_counts():
    torch.manual_seed(0)
    model = Z.mlp()
    opt = adam(model)
    X, y = Z.digits()
    with nnprobe.watch(model, opt, console=False) as probe:
        Z.train(model, opt, digits(), 110)
        model.eval()
        with torch.inference_mode():
            F.cross_entropy(model(X[:64]), y[:64])
    assert not found(probe, "no-validation")


# --------------------------------------------------------------------------- loss-scale-mismatch
def two_term_run(weight: float, target_scale: float, steps=40):
    torch.manual_seed(0)
    model = Z.mlp()
    opt = adam(model)
    data = digits()
    with nnprobe.watch(model, opt, console=False) as probe:
        for _ in range(steps):
            opt.zero_grad()
            x, y = next(data)
            out = model(x)
            aux = F.mse_loss(out, F.one_hot(y, 10).float() * target_scale)
            loss = F.cross_entropy(out, y) + weight * aux
            loss.backward()
            opt.step()
    return probe


def test_loss_scale_mismatch_planted():
    probe = two_term_run(1.0, 255.0)  # one-hot targets on a 0-255 scale: the MSE drowns the cross-entropy
    (f,) = found(probe, "loss-scale-mismatch")
    assert f.data["ratio"] > 1000 and "mse_loss" in f.data["large"] and "cross_entropy" in f.data["small"]
    assert f.step - f.data["since"] >= 20


@pytest.mark.parametrize("weight,scale", [(1.0, 1.0), (1e-4, 255.0), (0.0, 255.0)],
                         ids=["same-scale", "weighted-down", "switched-off"])
def test_loss_scale_mismatch_fixed(weight, scale):
    # the same terms on comparable scales, or the big one deliberately weighted to the other's size
    probe = two_term_run(weight, scale)
    assert not found(probe, "loss-scale-mismatch")


# --------------------------------------------------------------------- pretrained-input-mismatch
@pytest.mark.parametrize("raw", [True, False], ids=["raw-pixels", "normalised"])
def test_pretrained_input_mismatch_at_the_first_step(raw):
    model = Z.pretrained_cnn()
    opt = adam(model)
    g = torch.Generator().manual_seed(1)
    with nnprobe.watch(model, opt, console=False) as probe:
        for k in range(3):
            opt.zero_grad()
            F.cross_entropy(model(Z.images(seed=k, raw=raw)), torch.randint(0, 4, (64,), generator=g)).backward()
            opt.step()
    fs = found(probe, "pretrained-input-mismatch")
    if raw:
        (f,) = fs
        assert f.module == "bn" and f.step == 0 and f.data["z_rms"] > 1 and "'bn' (BatchNorm2d)" in f.message
    else:
        assert fs == [] and loud(probe) == []
    assert not model.bn._forward_pre_hooks  # the one-time hooks are gone after the first step


def test_a_fresh_batchnorm_is_not_pretrained():
    torch.manual_seed(0)
    model = Z.PretrainedCNN()
    probe = watched(model, adam(model), iter(lambda: (Z.images(raw=True), torch.zeros(64, dtype=torch.long)), None), 3)
    assert not found(probe, "pretrained-input-mismatch")


def test_every_runtime_code_has_a_planted_test():
    import sys

    with open(sys.modules[__name__].__file__) as fh:
        src = fh.read()
    runtime = [c for c, e in nnprobe.CATALOGUE.items() if e.family == "runtime"]
    for code in runtime:
        assert f'"{code}"' in src, code
