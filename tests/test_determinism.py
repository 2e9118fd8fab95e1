"""Verdicts do not depend on the machine's speed (SPEC section 6): the same seeded loop gives the
same findings on a quiet machine with a generous overhead budget (many extra samples) and on a
loaded one (a clock that stalls). The loaded clock is made up; the quiet one is real, with a budget
wide enough that a busy machine still leaves room for extra samples. The clock only spaces the extra samples of every="auto"; what
the checks read is chosen by step count."""

from __future__ import annotations

import random
import time

import pytest
import torch
import torch.nn.functional as F
from fixtures import models as Z
from nnprobe.runtime import Probe


def idle_clock():
    """The real clock; the loop below sleeps 20 ms a step (a slow model on a quiet machine), so
    with a generous budget the time budget adds samples often, whatever else runs."""
    return time.perf_counter


def loaded_clock(seed: int = 0):
    """A busy neighbour: one call in four stalls for a quarter of a second."""
    rng = random.Random(seed)
    t = [0.0]

    def clock() -> float:
        t[0] += 1e-6 + (0.25 if rng.random() < 0.25 else 0.0)
        return t[0]

    return clock


def run(loop: str, clock, overhead: float = 0.03, pause: float = 0.0):
    torch.manual_seed(0)
    model = Z.mlp()
    data = Z.batches(*Z.digits())
    params = list(model.parameters())
    if loop == "lr-low":  # 1e-7 over 87 steps: too low by 1e4
        opt = torch.optim.SGD(params, lr=1e-7)
        steps = 87
    elif loop == "never-updated":  # the last layer's weight in the optimizer with lr 0
        opt = torch.optim.SGD([{"params": params[:-2]}, {"params": params[-2:], "lr": 0.0}], lr=0.05)
        steps = 60
    elif loop == "dead":
        with torch.no_grad():
            model[0].bias.fill_(-8.0)
        opt = torch.optim.SGD(params, lr=0.05)
        steps = 60
    else:  # clean
        opt = torch.optim.Adam(params, lr=1e-3)
        steps = 120
    with Probe(model, opt, console=False, clock=clock, overhead=overhead) as probe:
        for _ in range(steps):
            x, y = next(data)
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            time.sleep(pause)
    return probe


@pytest.mark.parametrize("loop,code", [("lr-low", "update-ratio"), ("never-updated", "param-never-updated"),
                                       ("dead", "dead-units"), ("clean", None)])
def test_findings_do_not_depend_on_the_clock(loop, code):
    fast = run(loop, idle_clock(), overhead=1.0, pause=0.02)
    slow = run(loop, loaded_clock())
    key = lambda p: sorted((f.code, f.module, f.step, f.count) for f in p.findings)  # noqa: E731
    assert key(fast) == key(slow)
    loud = {f.code for f in fast.findings if f.severity != "info"}
    assert (code in loud) if code else not loud, fast.findings
    # the clock did change what the time budget added: the verdicts still agree
    assert len(fast.sampled_steps) != len(slow.sampled_steps)
