"""The runtime checks as pure functions: tables of figures in, findings out. No model, no
training: each case builds a plan and a few steps' figures by hand, and the judge answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from nnprobe.checks.judge import Judge
from nnprobe.figures import DEAD, NF, RATIO, SATURATED, C, Event, Plan, Rows, Sampled, StepFigures


def plan(*rows, sensitive=()):
    """rows: (name, kind, module, type, extra meta)"""
    r = Rows()
    modules = {}
    for name, kind, module, mtype, meta in rows:
        r.add(name, kind, module, mtype, param=kind != "activations" and name != module, **meta)
        modules.setdefault(module, mtype)
    return Plan(r, modules, groups=1, sensitive=list(sensitive))


def figures(p: Plan, step: int, values: dict[tuple[str, str], dict[str, float]], *, lrs=(1e-3,), loss=None,
            order=None, events=(), judged=True):
    mat = np.full((len(p.rows), NF), np.nan, dtype=np.float32)
    for (name, kind), cols in values.items():
        i = p.rows.find(name, kind)
        mat[i, : C["absmean"] + 1] = 0
        mat[i, C["count"]] = cols.get("count", 100)
        for k, v in cols.items():
            mat[i, C[k]] = v
    act = [p.rows.find(n, "activations") for n in order or []]
    return StepFigures(step, loss=loss, lrs=tuple(lrs), events=list(events),
                       sampled=Sampled(mat, act, [], set(), judged=judged))


def run(p: Plan, steps) -> list:
    judge = Judge(p)
    for figs in steps:
        judge.judge(figs)
    return judge.findings


def codes(findings) -> list[tuple[str, str | None]]:
    return [(f.code, f.module) for f in findings if f.severity != "info"]


RELU = plan(("fc", "activations", "fc", "Linear", {}), ("act", "activations", "act", "ReLU", {"unit": "relu"}))


@pytest.mark.parametrize("dead,expect", [
    ([0.9, 0.9, 0.9], [("dead-units", "act")]),  # three judged steps in a row above half
    ([0.9, 0.9, 0.2, 0.9, 0.9], []),  # not in a row
    ([0.4, 0.45, 0.5], []),  # at most half
    ([0.9, math.nan, 0.9, 0.9], [("dead-units", "act")]),  # a step without a measure does not break the run
])
def test_dead_units(dead, expect):
    steps = []
    for s, d in enumerate(dead):
        f = figures(RELU, s, {("act", "activations"): {}})
        f.sampled.mat[RELU.rows.find("act", "activations"), DEAD] = d
        steps.append(f)
    assert codes(run(RELU, steps)) == expect


def test_extra_samples_are_not_judged():
    steps = []
    for s in range(5):
        f = figures(RELU, s, {("act", "activations"): {}}, judged=False)
        f.sampled.mat[RELU.rows.find("act", "activations"), DEAD] = 1.0
        steps.append(f)
    assert run(RELU, steps) == []


TANH = plan(("t", "activations", "t", "Tanh", {"unit": "tanh"}))


@pytest.mark.parametrize("sat,expect", [([0.8] * 3, [("saturated-activations", "t")]), ([0.8, 0.8, 0.1], [])])
def test_saturated(sat, expect):
    steps = []
    for s, v in enumerate(sat):
        f = figures(TANH, s, {("t", "activations"): {}})
        f.sampled.mat[0, SATURATED] = v
        steps.append(f)
    assert codes(run(TANH, steps)) == expect


LAYERS = plan(*[(f"l{k}.weight", kind, f"l{k}", "Linear", {"layer": True, "group": 0, "ratio": True})
                for k in range(3) for kind in ("gradients", "weights", "updates")],
              *[(f"l{k}", "activations", f"l{k}", "Linear", {}) for k in range(3)])


def grads(first_rms: float, last_rms: float, n: int = 100):
    return {("l0.weight", "gradients"): {"l2": first_rms * math.sqrt(n)}, ("l1.weight", "gradients"): {"l2": 1.0},
            ("l2.weight", "gradients"): {"l2": last_rms * math.sqrt(n)}}


@pytest.mark.parametrize("first,last,expect", [
    (1e-6, 1.0, [("vanishing-gradients", "l0")]),
    (1e4, 1.0, [("exploding-gradients", "l0")]),
    (0.5, 1.0, []),
])
def test_gradient_flow(first, last, expect):
    order = ["l0", "l1", "l2"]
    steps = [figures(LAYERS, s, grads(first, last), order=order) for s in range(0, 25, 4)]
    assert codes(run(LAYERS, steps)) == expect


def test_vanishing_at_init_that_recovers_is_silent():
    """A transformer's first projections start with tiny gradients and catch up (tiny BERT)."""
    order = ["l0", "l1", "l2"]
    steps = [figures(LAYERS, s, grads(1e-6 if s < 16 else 1e-2, 1.0), order=order) for s in range(0, 40, 2)]
    assert run(LAYERS, steps) == []


def ratios(ratio: float, weight_rms: float = 1.0, n: int = 100):
    out = {}
    for k in range(3):
        out[(f"l{k}.weight", "weights")] = {"l2": weight_rms * math.sqrt(n), "mean": 0.01 * k}
        out[(f"l{k}.weight", "updates")] = {"l2": ratio * weight_rms * math.sqrt(n)}
    return out


@pytest.mark.parametrize("ratio,lrs,expect_dir", [
    (1e-7, [1e-3] * 10, "low"),
    (1.0, [1e-3] * 10, "high"),
    (1e-2, [1e-3] * 10, None),  # Adam's usual ~1e-2
    (1e-7, [1e-3 * 0.5 ** k for k in range(10)], None),  # an annealing schedule lowers it on purpose
])
def test_update_ratio(ratio, lrs, expect_dir):
    steps = []
    for s, lr in enumerate(lrs):
        f = figures(LAYERS, s, ratios(ratio), lrs=(lr,))
        for k in range(3):
            f.sampled.mat[LAYERS.rows.find(f"l{k}.weight", "updates"), RATIO] = ratio
        steps.append(f)
    found = [f for f in run(LAYERS, steps) if f.code == "update-ratio"]
    assert [f.data["direction"] for f in found][:1] == ([expect_dir] if expect_dir else [])


def test_param_never_updated_and_its_reason():
    steps = [figures(LAYERS, s, ratios(0.0), lrs=(0.0,)) for s in range(0, 12, 3)]
    found = run(LAYERS, steps)
    assert {f.code for f in found} == {"param-never-updated"}
    assert all("learning rate is 0" in f.message for f in found)
    moving = [figures(LAYERS, s, {k: {**v, "mean": v.get("mean", 0) + s} for k, v in ratios(0.0).items()})
              for s in range(0, 12, 3)]
    assert run(LAYERS, moving) == []


EMPTY = plan(("fc", "activations", "fc", "Linear", {}), sensitive=["drop"])


@pytest.mark.parametrize("events,expect", [
    ([Event("zero-grad", {"param": "fc.bias", "after_step": 0})], [("zero-grad-missing", None)]),
    ([Event("all-eval")], [("eval-mode-training", "drop")]),
    ([Event("eval-forward", {"modules": ["drop"]})], [("train-mode-eval", "drop")]),
    ([Event("eval-forward", {"modules": []})], []),
    ([Event("outside-grad", {"param": "head.weight", "module": "head", "norm": 0.3})], [("param-not-in-optimizer", "head")]),
    ([Event("nonfinite-loss", {"loss": "nan", "module": "fc", "message": "x", "data": {}})], [("non-finite", "fc")]),
    ([Event("loss-init", {"function": "cross_entropy", "classes": 10, "value": 9.0})], [("loss-at-init", None)]),
    ([Event("loss-init", {"function": "cross_entropy", "classes": 10, "value": 2.4})], []),
    ([Event("loss-input", {"function": "cross_entropy", "check": "logits", "count": 40, "values": [0.0, 0.9, 1e-7]})] * 2,
     [("probabilities-into-loss", None)]),
    ([Event("loss-input", {"function": "cross_entropy", "check": "logits", "count": 40, "values": [-3.0, 4.0, 2.0]})] * 5, []),
    ([Event("loss-input", {"function": "nll_loss", "check": "log-probs", "count": 40, "values": [3.0, 5.0]})] * 2,
     [("logits-into-nll", None)]),
    ([Event("loss-input", {"function": "nll_loss", "check": "log-probs", "count": 40, "values": [-0.01, 0.0]})] * 2, []),
])
def test_event_checks(events, expect):
    assert codes(run(EMPTY, [StepFigures(0, events=list(events))])) == expect


@pytest.mark.parametrize("losses,expect", [
    ([2.0] * 40, [("loss-not-decreasing", None)]),
    ([2.0 * 0.97 ** k for k in range(40)], []),
])
def test_loss_not_decreasing(losses, expect):
    assert codes(run(EMPTY, [StepFigures(s, loss=v, lrs=(0.1,)) for s, v in enumerate(losses)])) == expect


def test_a_finding_is_kept_once_with_its_count():
    steps = [StepFigures(s, events=[Event("zero-grad", {"param": "w", "after_step": s})]) for s in range(4)]
    (f,) = run(EMPTY, steps)
    assert f.count == 4 and f.step == 1 and f.data["last_step"] == 4


def _ratio_run(ratio: float, losses: list[float], grow: float = 1.0):
    steps = []
    for s, loss in enumerate(losses):
        f = figures(LAYERS, s, ratios(ratio, weight_rms=grow ** s), loss=loss)
        for k in range(3):
            f.sampled.mat[LAYERS.rows.find(f"l{k}.weight", "updates"), RATIO] = ratio
        steps.append(f)
    return [f.data["direction"] for f in run(LAYERS, steps) if f.code == "update-ratio"][:1]


@pytest.mark.parametrize("ratio,losses,grow,expect", [
    (0.2, [3.0 * 0.9 ** s for s in range(10)], 1.0, []),  # Adam's first steps without warm-up: the loss falls fast
    (0.2, [3.0] * 10, 1.0, ["high"]),  # no progress at all
    (0.2, [3.0 * 0.97 ** s for s in range(10)], 1.1, []),  # a small weight growing while the loss comes down
    (0.5, [3.0 * 1.5 ** s for s in range(10)], 1.3, ["high"]),  # every weight grows and the loss diverges
    (1e-7, [2.3] * 10, 1.0, ["low"]),  # a far too low rate: the loss stays where it started
    (1e-7, [2.3] + [2e-4] * 9, 1.0, []),  # converged: tiny updates are no low rate
])
def test_update_ratio_reads_the_loss(ratio, losses, grow, expect):
    assert _ratio_run(ratio, losses, grow) == expect


SKIP, LATE = Event("skipped-step"), Event("skipped-step", {"late": True})


def skip_steps(pattern: str) -> list[StepFigures]:
    """One step per character: "s" skipped, "." updated, "l" one late-noticed skip, then updated."""
    return [StepFigures(k, events={"s": [SKIP], ".": [], "l": [LATE]}[c]) for k, c in enumerate(pattern)]


@pytest.mark.parametrize("pattern,expect", [
    ("s" * 20, [("loss-scale-collapse", None)]),  # 20 in a row: the default 2**16 scale is below 1
    ("s" * 19 + "." * 10, []),  # a scale that found its level at the start
    ("s" * 8 + ("." * 19 + "s") * 10, [("loss-scale-collapse", None)]),  # 10 in 200 after the first update
    ("s" * 8 + ("." * 39 + "s") * 10, []),  # 5 in 200
    ("l" * 4 + "." * 30 + "s" * 5, []),  # late skips, each followed by an update: no streak, 8 in the rate
    ("." + ("l" * 10), [("loss-scale-collapse", None)]),  # ... but they count in the rate
    ("." * 50, []),
])
def test_loss_scale_collapse(pattern, expect):
    assert codes(run(EMPTY, skip_steps(pattern))) == expect


def test_skipped_steps_gradients_are_not_non_finite():
    p = plan(("fc", "activations", "fc", "Linear", {}), ("fc", "gradients", "fc", "Linear", {}))
    overflow = {("fc", "activations"): {}, ("fc", "gradients"): {"inf": 5}}
    f = figures(p, 0, overflow, events=[SKIP])
    f.sampled.grad_order = [p.rows.find("fc", "gradients")]
    assert codes(run(p, [f])) == []
    f = figures(p, 0, overflow)
    f.sampled.grad_order = [p.rows.find("fc", "gradients")]
    assert codes(run(p, [f])) == [("non-finite", "fc")]


def spike_run(losses, *, at=None, grads=None):
    """Losses per step; at step `at` a sampled step whose layer gradients are `grads` (l2 of
    l0, l1, l2), the steps before sampled every 4 with unit gradients."""
    steps = []
    for s, v in enumerate(losses):
        if s == at:
            g = grads or (1.0, 1.0, 1.0)
        elif s % 4 == 0:
            g = (1.0, 1.0, 1.0)
        else:
            steps.append(StepFigures(s, loss=v, lrs=(0.1,)))
            continue
        vals = {(f"l{k}.weight", "gradients"): {"l2": g[k]} for k in range(3)}
        steps.append(figures(LAYERS, s, vals, loss=v, order=["l0", "l1", "l2"]))
    return steps


NOISY = [1.0 + 0.05 * math.sin(1.7 * k) for k in range(60)]


@pytest.mark.parametrize("losses,at,grads,expect,says", [
    (NOISY[:40] + [9.0] + NOISY[41:], 40, (1.0, 8.0, 9.0), [("loss-spike", "l1")], "'l1' (Linear)"),  # l1 jumped first
    (NOISY[:40] + [9.0] + NOISY[41:], 40, (1.1, 1.2, 0.9), [("loss-spike", None)], "no layer's gradient norm jumped"),
    (NOISY[:41] + [9.0] + NOISY[42:], 40, None, [("loss-spike", None)], "not sampled"),  # the loss came after its update
    (NOISY[:40] + [1.4] + NOISY[41:], None, None, [], ""),  # 40% up: many deviations, but no spike
    (NOISY[:5] + [9.0] + NOISY[6:], None, None, [], ""),  # too early to know the level
    ([0.01, 0.01, 0.01, 0.01, 0.01, 3.0] * 10, None, None, [], ""),  # heavy tails: the rare hard batches set the level
])
def test_loss_spike(losses, at, grads, expect, says):
    found = [f for f in run(LAYERS, spike_run(losses, at=at, grads=grads)) if f.code == "loss-spike"]
    assert codes(found) == expect
    if expect:
        assert says in found[0].message and found[0].step == losses.index(9.0)
