"""The recipe's runtime checks as pure functions: learning rates, losses, validation losses and
loss-graph events in, findings out (no training). The learning rates come from torch's own
schedulers; the loss follows a simple model in which progress is proportional to the rate."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from nnprobe.checks.judge import Judge
from nnprobe.figures import Plan, Rows, StepFigures


def empty_plan(groups: int = 1) -> Plan:
    return Plan(Rows(), {"": "Net", "fc": "Linear"}, groups=groups)


def judge_all(steps: list[StepFigures], plan: Plan | None = None):
    judge = Judge(plan or empty_plan())
    for figs in steps:
        judge.judge(figs)
    judge.finish()
    return judge.findings


def loud(findings):
    return [(f.code, f.module, f.step) for f in findings if f.severity != "info"]


# ------------------------------------------------------------------------------ lr-schedule
def lrs_of(make_sched, steps: int, lr: float = 0.1, per_step=None):
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    sched = make_sched(opt)
    out = []
    for t in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        if per_step is not None:
            per_step(sched, t)
        elif sched is not None:
            sched.step()
    return out


def simulated(lrs, *, rate=0.03, floor=0.2, seed=0, noise=0.01):
    """A loss whose progress per step is proportional to the learning rate."""
    g = np.random.default_rng(seed)
    peak = max(lrs)
    loss, out = 2.3, []
    for lr in lrs:
        out.append(loss * (1 + noise * g.standard_normal()))
        loss -= rate * lr / peak * (loss - floor)
    return out


def run_lrs(lrs, losses=None):
    losses = simulated(lrs) if losses is None else losses
    return judge_all([StepFigures(s, loss=v, lrs=(lr,)) for s, (lr, v) in enumerate(zip(lrs, losses))])


def warmup_cosine(total, warm=50):
    return lambda opt: torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: (t + 1) / warm if t < warm else 0.5 * (1 + math.cos(math.pi * (t - warm) / (total - warm))))


@pytest.mark.parametrize("name,make,steps,fires", [
    # an epoch schedule (decay 10x every 30 epochs) stepped once per batch: 1% of the peak by step 60
    ("StepLR per batch", lambda o: torch.optim.lr_scheduler.StepLR(o, 30, gamma=0.1), 600, True),
    ("ExponentialLR per batch", lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.95), 600, True),
    # cosine to zero that ends where the run ends, with a warm-up: silent
    ("warm-up + cosine", warmup_cosine(600), 600, False),
    ("cosine to 0", lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=599), 600, False),
    ("constant", lambda o: None, 600, False),
    # multi-step decay at 60% and 80% of the run: 1% of the peak for the last fifth only
    ("MultiStepLR", lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [360, 480], gamma=0.1), 600, False),
])
def test_lr_schedule(name, make, steps, fires):
    found = loud(run_lrs(lrs_of(make, steps)))
    assert bool(found) is fires, (name, found)
    if fires:
        assert found[0][0] == "lr-schedule"


def test_a_learning_rate_at_zero_while_training_goes_on():
    # a linear decay to zero meant for 300 steps, in a run of 600
    lrs = lrs_of(lambda o: torch.optim.lr_scheduler.LinearLR(o, 1.0, 0.0, total_iters=300), 600)
    found = run_lrs(lrs)
    assert loud(found) == [("lr-schedule", None, 309)]
    assert found[0].data["reason"] == "zero" and found[0].data["zero_since"] == 300
    # the same decay in a run that ends with it: silent
    assert loud(run_lrs(lrs[:302])) == []


def test_a_warm_up_from_zero_is_not_a_rate_at_zero():
    lrs = lrs_of(lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda t: min(1.0, t / 50)), 300)
    assert lrs[0] == 0.0 and loud(run_lrs(lrs)) == []


def test_reduce_on_plateau_is_silent():
    """ReduceLROnPlateau stepped per epoch on the epoch's loss: it lowers the rate only after the
    loss has stopped improving, so the rate reaches 1% on a plateau."""
    epoch, lrs, losses = 20, [], []
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.1, patience=2)
    g = np.random.default_rng(0)
    loss = 2.3
    for t in range(1200):
        lr = opt.param_groups[0]["lr"]
        lrs.append(lr)
        # progress stops at 0.8 (what this model can reach at this rate), a little more at lower rates
        floor = 0.8 if lr > 0.05 else 0.7
        losses.append(loss * (1 + 0.01 * g.standard_normal()))
        loss -= 0.03 * (loss - floor)
        if t % epoch == epoch - 1:
            sched.step(float(np.mean(losses[-epoch:])))
    assert min(lrs) < 0.01 * max(lrs)
    assert loud(run_lrs(lrs, losses)) == []


def test_lr_schedule_names_the_param_group():
    lrs = lrs_of(lambda o: torch.optim.lr_scheduler.StepLR(o, 30, gamma=0.1), 400)
    losses = simulated(lrs)
    steps = [StepFigures(s, loss=v, lrs=(1e-3, lr)) for s, (lr, v) in enumerate(zip(lrs, losses))]
    found = judge_all(steps, empty_plan(2))
    assert [f[0] for f in loud(found)] == ["lr-schedule"] and "param group 1" in found[0].message


# ------------------------------------------------------------------------ overfitting, no-validation
def curves(n=400, every=20, turn=200, seed=0):
    """Training loss falling all along; validation loss falling, then (after `turn`) rising."""
    g = np.random.default_rng(seed)
    steps = []
    for s in range(n):
        train = 2.0 * math.exp(-s / 150) + 0.05 + 0.01 * g.standard_normal()
        val = None
        if s % every == every - 1:
            val = 2.0 * math.exp(-s / 150) + 0.3 + (0.002 * (s - turn) if s > turn else 0.0)
        steps.append(StepFigures(s, loss=train, val_loss=val, lrs=(1e-3,)))
    return steps


def test_overfitting_names_the_best_step():
    found = judge_all(curves())
    f = [f for f in found if f.code == "overfitting"]
    assert len(f) == 1 and f[0].severity == "warning"
    best = f[0].data["best_step"]
    assert 199 <= best <= 299 and f"step {best}" in f[0].message
    assert "no-validation" not in {f.code for f in found}


@pytest.mark.parametrize("variant", ["falling", "noisy", "both-rise"])
def test_overfitting_false_alarm_controls(variant):
    steps = curves(turn=10_000)
    if variant == "noisy":  # validation noise around a falling trend: rises, but never three in a row
        for k, f in enumerate(x for x in steps if x.val_loss is not None):
            f.val_loss += 0.03 * (1 if k % 2 else -1)
    if variant == "both-rise":  # training and validation both rising (a learning rate too high)
        for f in steps:
            if f.step > 200:
                f.loss += 0.004 * (f.step - 200)
                if f.val_loss is not None:
                    f.val_loss += 0.004 * (f.step - 200)
    assert [f.code for f in judge_all(steps) if f.code == "overfitting"] == []


def test_no_validation_is_info_at_the_end_of_a_long_run_only():
    steps = [StepFigures(s, loss=1.0 / (s + 1), lrs=(1e-3,)) for s in range(150)]
    found = judge_all(steps)
    assert [(f.code, f.severity, f.step) for f in found] == [("no-validation", "info", 149)]
    judge = Judge(empty_plan())
    for f in steps:
        judge.judge(f)
    assert judge.findings == []  # only the end of the run says it
    assert judge_all(steps[:99]) == []
    steps[120].val_loss = 0.5
    assert judge_all(steps) == []
