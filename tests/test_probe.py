"""watch() and Probe: hooks owned and removed, training unchanged, clean loops silent, the zoo
of awkward outputs handled, sampling, history, summary, failures contained."""

from __future__ import annotations

import logging
import math
import subprocess
import sys

import nnprobe
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from fixtures import models as Z
from nnprobe.runtime.hooks import snapshot


def nnprobe_modes():
    """The function modes nnprobe left on the stack (its loss tap): none once every probe closed."""
    from nnprobe.runtime.loss_tap import FunctionTap
    from torch.overrides import _get_current_function_mode_stack

    return [m for m in _get_current_function_mode_stack() if isinstance(m, FunctionTap)]



def loud(probe):
    """Findings above info: a clean loop must have none."""
    return [str(f) for f in probe.findings if f.severity in ("warning", "error")]


def seed(s=0):
    torch.manual_seed(s)
    np.random.seed(s)


# ------------------------------------------------------------------------------- hook ownership
ZOO = {
    "mlp": lambda: Z.mlp(dropout=0.2),
    "cnn": Z.SmallCNN,
    "gpt": lambda: Z.TinyGPT(),
    "shared": Z.SharedModule,
    "frozen": Z.frozen_backbone,
    "inplace": Z.inplace_relu,
    "zoo": Z.Zoo,
}


def _batch(name):
    if name == "gpt":
        return torch.randint(0, 16, (4, 16)), torch.randint(0, 16, (4, 16))
    if name in ("mlp", "cnn"):
        return torch.randn(32, 64), torch.randint(0, 10, (32,))
    return torch.randn(32, 16 if name != "zoo" else 16), torch.randint(0, 4, (32,))


@pytest.mark.parametrize("name", sorted(ZOO))
@pytest.mark.parametrize("with_opt", [True, False])
def test_close_restores_every_hook_dict_and_flag(name, with_opt):
    seed()
    model = ZOO[name]()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    params = list(model.parameters())
    before = snapshot(model, params, [opt])
    x, y = _batch(name)
    loss_fn = Z.lm_loss if name == "gpt" else F.cross_entropy
    with nnprobe.watch(model, opt if with_opt else None, every=1, console=False) as probe:
        for _ in range(3):
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            probe.step(loss=loss)
        assert snapshot(model, params, [opt]) != before  # hooks really were in place
    assert snapshot(model, params, [opt]) == before
    assert not nnprobe_modes()
    assert probe.sampled_steps.tolist() == [0, 1, 2]


def test_hooks_removed_when_the_loop_raises():
    model = Z.mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = snapshot(model, list(model.parameters()), [opt])
    with pytest.raises(RuntimeError, match="boom"):
        with nnprobe.watch(model, opt, console=False):
            model(torch.randn(4, 64)).sum().backward()
            raise RuntimeError("boom")
    assert snapshot(model, list(model.parameters()), [opt]) == before
    assert not nnprobe_modes()


def test_two_probes_and_a_user_hook_coexist():
    model = Z.mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []
    user = model[0].register_forward_hook(lambda m, a, o: seen.append(1))
    p1 = nnprobe.watch(model, opt, every=1, console=False)
    p2 = nnprobe.watch(model, opt, every=2, console=False)
    Z.train(model, opt, Z.batches(*Z.digits()), 4)
    p2.close()
    assert len(nnprobe_modes()) == 1  # p1 still observes
    p1.close()
    assert not nnprobe_modes()
    assert list(model[0]._forward_hooks) == [user.id] and len(seen) == 4
    assert p1.sampled_steps.tolist() == [0, 1, 2, 3] and p2.sampled_steps.tolist() == [0, 2]


# ---------------------------------------------------------------------- training is unchanged
def _run_bitwise(make, data_fn, steps, probe_kwargs):
    seed(1)
    model = make()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = data_fn()
    probe = nnprobe.watch(model, opt, console=False, **probe_kwargs) if probe_kwargs is not None else None
    losses = Z.train(model, opt, data, steps, probe=probe, eval_every=5)
    if probe is not None:
        probe.close()
    return losses, [p.detach().clone() for p in model.parameters()], [b.clone() for b in model.buffers()]


@pytest.mark.parametrize("make,data_fn", [
    (lambda: Z.mlp(dropout=0.3), lambda: Z.batches(*Z.digits())),
    (Z.SmallCNN, lambda: Z.batches(*Z.digits())),
])
@pytest.mark.parametrize("kwargs", [{"every": 1}, {"every": "auto"}, {"every": 1, "device_stats": "device"}])
def test_training_is_bit_identical_with_and_without_the_probe(make, data_fn, kwargs):
    ref = _run_bitwise(make, data_fn, 12, None)
    got = _run_bitwise(make, data_fn, 12, kwargs)
    assert ref[0] == got[0]
    for a, b in zip(ref[1] + ref[2], got[1] + got[2]):
        assert torch.equal(a, b)


def test_nonfinite_relocation_leaves_rng_and_buffers_alone():
    """Locating a NaN re-runs the forward; dropout's RNG and BatchNorm's running stats must come
    back as they were."""

    class Blowup(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm1d(8)
            self.fc = nn.Linear(8, 8)
            self.drop = nn.Dropout(0.5)
            self.n = 0

        def forward(self, x):
            self.n += 1
            h = self.drop(self.fc(self.bn(x)))
            return h * float("nan") if self.n == 3 else h

    seed(2)
    m = Blowup()
    opt = torch.optim.SGD(m.parameters(), lr=0.0)
    x = torch.randn(16, 8)
    with nnprobe.watch(m, opt, every=1000, console=False) as probe:
        for _ in range(3):
            opt.zero_grad()
            F.mse_loss(m(x), torch.zeros(16, 8)).backward()
            state = (torch.get_rng_state(), m.bn.running_mean.clone(), m.bn.num_batches_tracked.clone())
            opt.step()
            assert torch.equal(state[0], torch.get_rng_state())
            assert torch.equal(state[1], m.bn.running_mean) and torch.equal(state[2], m.bn.num_batches_tracked)
    assert "non-finite" in probe.codes()


# ------------------------------------------------------------------------- clean loops: silent
def test_clean_mlp_adam_and_sgd_are_silent():
    for opt_fn in (lambda p: torch.optim.Adam(p, lr=1e-3), lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)):
        seed()
        model = Z.mlp(dropout=0.1)
        opt = opt_fn(model.parameters())
        with nnprobe.watch(model, opt, every=1, console=False) as probe:
            losses = Z.train(model, opt, Z.batches(*Z.digits()), 60, eval_every=10)
        assert losses[-1] < losses[0]
        assert loud(probe) == []


def test_clean_adam_at_1e_2_is_silent():
    seed()
    model = Z.mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with nnprobe.watch(model, opt, every=1, console=False) as probe:
        Z.train(model, opt, Z.batches(*Z.digits()), 50)
    assert loud(probe) == []


def test_clean_cnn_with_batchnorm_is_silent():
    seed()
    model = Z.SmallCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with nnprobe.watch(model, opt, every=2, console=False) as probe:
        losses = Z.train(model, opt, Z.batches(*Z.digits()), 40, eval_every=10)
    assert losses[-1] < losses[0]
    assert loud(probe) == []
    assert not math.isnan(probe.history("bn1", "activations", "std")[-1])


def test_clean_small_transformer_is_silent():
    seed()
    model = Z.TinyGPT()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    with nnprobe.watch(model, opt, every=1, console=False) as probe:
        losses = Z.train(model, opt, Z.lm_batches(Z.tokens()), 40, loss_fn=Z.lm_loss, eval_every=10)
    assert losses[-1] < losses[0]
    assert loud(probe) == []
    assert "blocks.0.attn" in probe.names("activations")


def test_legit_gradient_accumulation_is_silent():
    seed()
    model = Z.mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with nnprobe.watch(model, opt, every=1, console=False) as probe:
        Z.train(model, opt, Z.batches(*Z.digits(), bs=16), 30, accumulate=4)
    assert loud(probe) == []
    assert probe.steps == 30


def test_zero_grad_set_to_none_false_is_silent():
    seed()
    model = Z.mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    data = Z.batches(*Z.digits())
    with nnprobe.watch(model, opt, console=False) as probe:
        for _ in range(20):
            opt.zero_grad(set_to_none=False)
            x, y = next(data)
            F.cross_entropy(model(x), y).backward()
            opt.step()
    assert loud(probe) == []


@pytest.mark.parametrize("ctx", [torch.no_grad, torch.inference_mode])
def test_eval_loops_with_proper_mode_toggling_are_silent(ctx):
    seed()
    model = Z.mlp(dropout=0.2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with nnprobe.watch(model, opt, every=1, console=False) as probe:
        Z.train(model, opt, Z.batches(*Z.digits()), 30, eval_every=3, eval_ctx=ctx)
    assert loud(probe) == []


def test_frozen_shared_inplace_and_zoo_models_run_clean(caplog):
    caplog.set_level(logging.WARNING, logger="nnprobe")
    for make in (Z.frozen_backbone, Z.SharedModule, Z.inplace_relu, Z.Zoo):
        seed()
        model = make()
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        with nnprobe.watch(model, opt, every=1, console=False) as probe:
            Z.train(model, opt, Z.batches(*Z.blobs()), 25)
        assert loud(probe) == [], make
    assert caplog.records == []  # no internal failure anywhere


def test_shared_module_merges_both_calls():
    seed()
    model = Z.SharedModule()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(8, 16)
    with nnprobe.watch(model, opt, every=1, console=False) as probe:
        opt.zero_grad()
        model(x).sum().backward()
        opt.step()
    assert probe.history("shared", "activations", "count")[0] == 2 * 8 * 32
    assert probe.history("act", "activations", "count")[0] == 3 * 8 * 32


def test_inplace_relu_sees_the_pre_activation():
    seed()
    model = Z.inplace_relu()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with nnprobe.watch(model, opt, every=1, console=False) as probe:
        opt.zero_grad()
        model(torch.randn(64, 16)).sum().backward()
        opt.step()
    assert probe.history("0", "activations", "min")[0] < 0  # the Linear's output, before the ReLU
    assert probe.history("1", "activations", "min")[0] == 0
    assert probe.history("0", "gradients", "count")[0] == 64 * 32


def test_zoo_outputs():
    seed()
    model = Z.Zoo()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with nnprobe.watch(model, opt, every=1, console=False) as probe:
        Z.train(model, opt, Z.batches(*Z.blobs()), 2)
    assert probe.history("tuple_out", "activations", "count")[0] == 64 * 4  # the first tensor of the tuple
    assert probe.history("dc_out", "activations", "count")[0] == 64 * 4  # the dataclass's tensor
    assert probe.history("dict_out", "activations", "count")[0] == 64 * 4  # the dict's first float tensor
    assert probe.history("tuple_out", "gradients", "count")[0] == 64 * 4
    # integer, sparse and None outputs leave their rows empty rather than failing
    for name in ("int_out", "sparse_out", "none_out"):
        assert np.isnan(probe.history(name, "activations", "count")).all()


# ----------------------------------------------------------------------------------- sampling
def test_every_n_samples_one_step_in_n():
    seed()
    model = Z.mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with nnprobe.watch(model, opt, every=4, console=False) as probe:
        Z.train(model, opt, Z.batches(*Z.digits()), 13)
    assert probe.sampled_steps.tolist() == [0, 4, 8, 12]
    assert probe.history("0.weight", "weights", "l2").shape == (4,)


def test_auto_samples_the_first_steps_then_spaces_them():
    seed()
    model = Z.mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with nnprobe.watch(model, opt, console=False) as probe:
        Z.train(model, opt, Z.batches(*Z.digits()), 150)
    steps = probe.sampled_steps.tolist()
    assert steps[:3] == [0, 1, 2]
    assert len(steps) < 60  # a 3% budget cannot pay for statistics on most steps


def test_auto_samples_after_a_loss_jump():
    seed()
    model = Z.mlp()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    data = Z.batches(*Z.digits())
    losses = []
    with nnprobe.watch(model, opt, console=False) as probe:
        for step in range(80):
            opt.zero_grad()
            x, y = next(data)
            if step == 60:
                y = (y + 1) % 10  # wrong labels for one batch: the observed loss jumps
            loss = F.cross_entropy(model(x), y)
            losses.append(loss.item())
            loss.backward()
            probe.step(loss=loss)  # before the optimizer step: the jumping step is sampled before its update
            opt.step()
    assert losses[60] > 3 * max(losses[50:60])
    assert 60 in probe.sampled_steps.tolist() and 61 in probe.sampled_steps.tolist()


# ------------------------------------------------------------------------ history and outputs
def test_history_summary_and_report(tmp_path):
    seed()
    model = Z.mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with nnprobe.watch(model, opt, every=1, console=False) as probe:
        Z.train(model, opt, Z.batches(*Z.digits()), 12)
    x = probe.history("2", "activations", "std")
    assert x.shape == (12,) and np.isfinite(x).all()
    r = probe.history("2.weight", "updates", "ratio")
    assert np.isfinite(r).all() and (1e-5 < r).all() and (r < 1e-1).all()
    # a module's weights/updates aggregate its parameters
    assert np.allclose(probe.history("2", "weights", "count"), 64 * 64 + 64)
    assert probe.history("1", "activations", "dead").shape == (12,)
    with pytest.raises(KeyError, match="no activations row"):
        probe.history("nope", "activations", "mean")
    with pytest.raises(ValueError):
        probe.history("2", "bogus", "mean")
    with pytest.raises(KeyError):
        probe.history("2", "activations", "bogus")
    steps, losses = probe.losses()
    assert steps.tolist() == list(range(12)) and np.isfinite(losses).all()
    s = probe.summary()
    assert "layer" in s and "Linear" in s and "\n2 " in s
    page = probe.report(str(tmp_path / "r.html"))
    with open(page) as fh:
        assert "<h1>nnprobe report</h1>" in fh.read()
    assert probe.codes() == set()


def test_history_values_match_the_core():
    seed()
    model = nn.Sequential(nn.Linear(8, 8))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(5, 8)
    with nnprobe.watch(model, opt, every=1, console=False) as probe:
        out = model(x)
        ref = nnprobe.stats(out.detach())
        w = nnprobe.stats(model[0].weight.detach().clone())
        out.sum().backward()
        g = nnprobe.stats(model[0].weight.grad.clone())
        before = model[0].weight.detach().clone()
        opt.step()
        u = nnprobe.stats(model[0].weight.detach() - before)
    for stat in ("mean", "std", "min", "max", "l2"):
        assert probe.history("0", "activations", stat)[0] == pytest.approx(getattr(ref, stat), rel=1e-5)
        assert probe.history("0.weight", "weights", stat)[0] == pytest.approx(getattr(w, stat), rel=1e-5)
        assert probe.history("0.weight", "gradients", stat)[0] == pytest.approx(getattr(g, stat), rel=1e-5)
        assert probe.history("0.weight", "updates", stat)[0] == pytest.approx(getattr(u, stat), rel=1e-4)


def test_device_stats_device_path_agrees_with_the_core():
    out = {}
    for policy in ("auto", "device"):
        seed()
        model = Z.mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        with nnprobe.watch(model, opt, every=1, console=False, device_stats=policy) as probe:
            Z.train(model, opt, Z.batches(*Z.digits()), 3)
        out[policy] = probe.store.matrices.copy()
    from nnprobe.figures import DEAD

    # the dead-unit fraction: measured per unit by both, but the host path skips the pass when the
    # core's zeros count already rules dead units out
    keep = [c for c in range(out["auto"].shape[2]) if c != DEAD]
    np.testing.assert_allclose(out["auto"][..., keep], out["device"][..., keep], rtol=1e-5, equal_nan=True)


def test_device_moments_of_awkward_tensors():
    from nnprobe.runtime.tensors import device_moments, moments_to_public

    for t in (torch.tensor([]), torch.tensor([float("nan"), float("inf"), 1.0, 0.0]), torch.arange(6).view(2, 3).t(),
              torch.randn(3, 4, dtype=torch.float16), torch.randn(7, dtype=torch.bfloat16)):
        got = moments_to_public(device_moments(t).numpy()[None])[0]
        ref = nnprobe.stats(t)
        for k, v in zip(nnprobe.STATS_FIELDS, got):
            want = getattr(ref, k)
            assert (math.isnan(want) and math.isnan(v)) or v == pytest.approx(want, rel=1e-3, abs=1e-6), (t, k)


def test_no_optimizer_mode_counts_probe_steps():
    seed()
    model = Z.mlp()
    data = Z.batches(*Z.digits())
    with nnprobe.watch(model, every=1, console=False) as probe:
        for _ in range(6):
            x, y = next(data)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            with torch.no_grad():
                for p in model.parameters():
                    p -= 0.05 * p.grad
                    p.grad = None  # cleared before probe.step: gradients were taken at accumulation
            probe.step(loss)
    assert probe.steps == 6
    assert np.isfinite(probe.history("0.weight", "gradients", "l2")).all()
    assert np.isfinite(probe.history("0.weight", "updates", "ratio")).all()
    assert loud(probe) == []


# ------------------------------------------------------------------------ failures and strict
def test_an_internal_failure_is_logged_once_and_training_goes_on(monkeypatch, caplog):
    import nnprobe.runtime.record as R

    def broken(xs):
        raise RuntimeError("core exploded")

    monkeypatch.setattr(R, "core_rows", broken)
    caplog.set_level(logging.WARNING, logger="nnprobe")
    seed()
    model = Z.mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with nnprobe.watch(model, opt, every=1, console=False):
        losses = Z.train(model, opt, Z.batches(*Z.digits()), 10)
    assert losses[-1] < losses[0]
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs and all("switched off" in m for m in msgs)
    assert len(msgs) == len(set(msgs))  # once per part


def test_strict_raises_at_the_first_error():
    seed()
    model = Z.mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with pytest.raises(nnprobe.DiagnosticError) as err:
        with nnprobe.watch(model, opt, strict=True, console=False):
            Z.train(model, opt, Z.batches(*Z.digits()), 10, loss_fn=lambda o, y: F.cross_entropy(o.softmax(1), y))
    assert err.value.finding.code == "probabilities-into-loss"


def test_bad_arguments_are_refused_clearly():
    m = Z.mlp()
    with pytest.raises(nnprobe.InputError, match="torch.nn.Module"):
        nnprobe.watch(object())
    with pytest.raises(nnprobe.InputError, match="optimizer"):
        nnprobe.watch(m, optimizer="adam")
    with pytest.raises(ValueError, match="every"):
        nnprobe.watch(m, every=0)
    with pytest.raises(ValueError, match="overhead"):
        nnprobe.watch(m, overhead=3)
    with pytest.raises(ValueError, match="device_stats"):
        nnprobe.watch(m, device_stats="gpu")


def test_import_nnprobe_does_not_import_torch():
    code = "import sys, nnprobe; assert 'torch' not in sys.modules; print(nnprobe.watch.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


# ------------------------------------------------------------------------------------- CUDA
cuda = pytest.mark.cuda  # skipped without a GPU (conftest); benches/gpu_check.sh runs them


@cuda
@pytest.mark.parametrize("policy", ["auto", "copy"])
def test_cuda_training_is_watched_without_changing_it(policy):
    def run(watch):
        seed()
        model = Z.mlp(dropout=0.1).cuda()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        X, y = Z.digits()
        data = Z.batches(X.cuda(), y.cuda())
        probe = nnprobe.watch(model, opt, every=1, console=False, device_stats=policy) if watch else None
        losses = Z.train(model, opt, data, 10)
        if probe:
            probe.close()
        return losses, [p.detach().cpu() for p in model.parameters()], probe

    ref, got = run(False), run(True)
    assert ref[0] == got[0] and all(torch.equal(a, b) for a, b in zip(ref[1], got[1]))
    probe = got[2]
    assert np.isfinite(probe.history("0", "activations", "std")).all()
    assert loud(probe) == []


@cuda
def test_cuda_device_moments_agree_with_the_core():
    from nnprobe.runtime.tensors import device_moments

    x = torch.randn(1000, 37)
    x[3, 4] = float("nan")
    dev = device_moments(x.cuda()).cpu()
    cpu = device_moments(x)
    torch.testing.assert_close(dev, cpu, rtol=1e-6, atol=1e-9)


def test_closure_optimizer_lbfgs():
    """LBFGS computes loss and gradients inside step(): they belong to that step."""
    seed()
    model = Z.mlp()
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4)
    data = Z.batches(*Z.digits())
    with nnprobe.watch(model, opt, every=1, console=False) as probe:
        for _ in range(5):
            x, y = next(data)

            def closure(x=x, y=y):
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                return loss

            opt.step(closure)
    assert probe.steps == 5
    steps, losses = probe.losses()
    assert steps.tolist() == [0, 1, 2, 3, 4] and losses[-1] < losses[0]
    assert np.isfinite(probe.history("0.weight", "gradients", "l2")).all()
    assert (probe.history("0.weight", "updates", "l2") > 0).all()
    assert loud(probe) == []


def test_strict_raises_from_backward_too():
    seed()
    model = Z.mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    data = Z.batches(*Z.digits())
    with pytest.raises(nnprobe.DiagnosticError) as err:
        with nnprobe.watch(model, opt, strict=True, every=1000, console=False):
            for _ in range(3):  # no zero_grad: the second backward raises
                x, y = next(data)
                F.cross_entropy(model(x), y).backward()
                opt.step()
    assert err.value.finding.code == "zero-grad-missing"
