"""Mixed precision: statistics of bfloat16/float16 tensors taken in float64 from the tensors as
they are; under a `torch.amp.GradScaler` (CPU, float16 autocast) skipped overflow steps are
steps of their own and never `non-finite`, gradient figures and update ratios are of the
unscaled gradients, and gradient accumulation is not taken for skips."""

from __future__ import annotations

import nnprobe
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

FIELDS = ("count", "zeros", "min", "max", "mean", "std", "l2", "absmax", "absmean")


def oracle(t: torch.Tensor) -> dict[str, float]:
    """Float64 NumPy figures of a tensor's exact values (bfloat16 widens to float64 exactly)."""
    a = t.detach().to(torch.float64).numpy().ravel()
    return {"count": a.size, "zeros": int((a == 0).sum()), "min": a.min(), "max": a.max(), "mean": a.mean(),
            "std": a.std(), "l2": np.sqrt((a * a).sum()), "absmax": np.abs(a).max(), "absmean": np.abs(a).mean()}


def net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


def judged(probe) -> list:
    """Collect every step's figures as the checks see them."""
    seen: list = []
    orig = probe._judge.judge
    probe._judge.judge = lambda figs: (seen.append(figs), orig(figs))[1]
    return seen


def skipped(figs, late=False) -> bool:
    return any(e.kind == "skipped-step" and bool(e.data.get("late")) == late for e in figs.events)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_figures_equal_a_float64_oracle(dtype):
    m = net()
    outs, grads = [], []

    def keep(mod, args, out):
        outs.append(out.detach().clone())
        out.register_hook(lambda g: grads.append(g.clone()))

    m[0].register_forward_hook(keep)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    with nnprobe.watch(m, opt, every=1, console=False) as probe:
        for _ in range(2):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=dtype):
                loss = F.cross_entropy(m(torch.randn(64, 16)), torch.randint(0, 4, (64,)))
            loss.backward()
            opt.step()
    assert outs[0].dtype == dtype and grads[0].dtype == dtype  # the core read them as they are
    for kind, ts in (("activations", outs), ("gradients", grads)):
        for step, t in enumerate(ts):
            ref = oracle(t)
            core = nnprobe.stats(t)  # float64 figures, straight from the core
            for f in FIELDS:
                assert getattr(core, f) == pytest.approx(ref[f], rel=1e-12, abs=1e-300), (kind, f)
                # the probe keeps its figures as float32
                assert probe.history("0", kind, f)[step] == pytest.approx(ref[f], rel=2e-7), (kind, f)
    assert probe.codes() == set()


def scaler_run(iters=16, *, init_scale=2.0**24, zero_grad_late=False, accumulate=1, nan_grad=False, device="cpu",
               fused=False):
    """A healthy float16 run whose first steps overflow at a too-high initial scale."""
    m = net().to(device)
    opt = torch.optim.SGD(m.parameters(), lr=0.05, fused=True) if fused else torch.optim.SGD(m.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler(device, init_scale=init_scale)
    g = torch.Generator().manual_seed(1)
    skips, unscaled, ratios, scales = [], [], [], []
    probe = nnprobe.watch(m, opt, every=1, console=False)
    seen = judged(probe)
    for _ in range(iters):
        if not zero_grad_late:
            opt.zero_grad()
        for _ in range(accumulate):
            x, y = torch.randn(64, 16, generator=g).to(device), torch.randint(0, 4, (64,), generator=g).to(device)
            with torch.autocast(device, dtype=torch.float16):
                h = m(x)
                if nan_grad:  # finite forward, NaN backward (d sqrt(0)): a scaler cannot fix it
                    h = h + torch.sqrt((h - h.detach()).abs())
                loss = F.cross_entropy(h, y)
            if zero_grad_late:
                opt.zero_grad()
            scaler.scale(loss / accumulate).backward()
        before = m[2].weight.detach().clone()
        scale = scaler.get_scale()
        scaler.step(opt)
        scaler.update()
        scales.append(scale)
        skips.append(scaler.get_scale() < scale)
        unscaled.append(float(m[2].weight.grad.norm()))
        d, w = (m[2].weight.detach() - before), before
        ratios.append(float(d.norm() / w.norm()))
    probe.close()
    return probe, seen, skips, unscaled, ratios, scales


def test_gradscaler_skipped_overflow_steps_are_not_non_finite():
    probe, seen, skips, unscaled, ratios, scales = scaler_run()
    assert 2 <= sum(skips) < len(skips) - 2 and not skips[-1]  # the test overflows a few steps at the start
    assert probe.codes() == set(), [str(f) for f in probe.findings]
    # every iteration is a step; the skipped ones say so
    assert probe.steps == len(skips)
    assert [skipped(f) for f in seen] == skips
    # the skipped steps' output gradients overflowed: the figures say what the backward computed
    first = seen[0].sampled
    ograd = probe.plan.rows.find("2", "gradients")
    assert first.mat[ograd, 1] + first.mat[ograd, 2] > 0  # nan + inf
    # gradient figures and update ratios of the steps taken are of the unscaled gradients
    l2 = probe.history("2.weight", "gradients", "l2")
    ratio = probe.history("2.weight", "updates", "ratio")
    for step, skip in enumerate(skips):
        if skip:
            assert np.isnan(l2[step]) and np.isnan(ratio[step])
        else:
            assert l2[step] == pytest.approx(unscaled[step], rel=1e-5)
            assert ratio[step] == pytest.approx(ratios[step], rel=1e-4)
    # output gradients are of the backward as it ran, loss scale included (the plan says so)
    row = probe.plan.rows.rows[ograd]
    assert row.meta.get("of") == "backward"


def test_skips_noticed_at_the_next_backward_when_zero_grad_follows_the_forward():
    probe, seen, skips, *_ = scaler_run(zero_grad_late=True)
    assert probe.codes() == set(), [str(f) for f in probe.findings]
    late = sum(sum(1 for e in f.events if e.kind == "skipped-step" and e.data.get("late")) for f in seen)
    assert late == sum(skips)
    assert probe.steps == len(skips) - sum(skips)  # counted, in the steps that follow


def test_gradient_accumulation_under_a_scaler_is_not_a_skip():
    probe, seen, skips, *_ = scaler_run(iters=10, accumulate=3)
    assert sum(skips) >= 2
    assert [skipped(f) for f in seen] == skips and probe.codes() == set()


def test_a_scaler_that_never_skips_changes_nothing():
    probe, seen, skips, *_ = scaler_run(iters=6, init_scale=16.0)
    assert not any(skips) and probe.steps == 6 and not any(skipped(f) or skipped(f, late=True) for f in seen)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_fused_optimizer_skips_inside_its_step(device):
    """A fused optimizer gets optimizer.step() on skipped iterations too, with found_inf set."""
    probe, seen, skips, unscaled, ratios, _ = scaler_run(fused=True, device=device)
    assert sum(skips) >= 2 and probe.steps == len(skips)
    assert probe.codes() == set(), [str(f) for f in probe.findings]
    assert [any(e.kind == "skipped-step" and e.data.get("fused") for e in f.events) for f in seen] == skips
    l2 = probe.history("2.weight", "gradients", "l2")
    taken = [s for s, skip in enumerate(skips) if not skip]
    np.testing.assert_allclose(l2[taken], np.array(unscaled)[taken], rtol=1e-5)


@pytest.mark.cuda
def test_cuda_gradscaler_skipped_steps_are_not_non_finite():
    probe, seen, skips, unscaled, *_ = scaler_run(device="cuda", init_scale=2.0**30)
    assert sum(skips) >= 2 and probe.codes() == set(), [str(f) for f in probe.findings]
    assert [skipped(f) for f in seen] == skips
    l2 = probe.history("2.weight", "gradients", "l2")
    taken = [s for s, skip in enumerate(skips) if not skip]
    np.testing.assert_allclose(l2[taken], np.array(unscaled)[taken], rtol=1e-5)
