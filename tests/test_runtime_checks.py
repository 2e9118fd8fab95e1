"""Every runtime finding code: the mistake planted (it fires, on the right layer) and fixed (it
stays silent). Small models, short runs, one torch thread."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import nnprobe
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
        fn = (lambda o, t: loss(torch.sigmoid(o).squeeze(1), t)) if bad else (lambda o, t: loss(o.squeeze(1), t))
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


def test_every_runtime_code_has_a_planted_test():
    import sys

    with open(sys.modules[__name__].__file__) as fh:
        src = fh.read()
    runtime = [c for c, e in nnprobe.CATALOGUE.items() if e.family == "runtime"]
    for code in runtime:
        assert f'"{code}"' in src, code
