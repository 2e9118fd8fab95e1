"""torch.compile (SPEC section 7): a watched compiled model gets no more graph breaks and no more
recompilations than the same run unwatched (nothing of nnprobe enters the compiled graph:
activations come from an eager re-run outside it on judged steps), and the recipe's mistakes are
found on it as on the eager model. aot_eager keeps the compile time small on a CPU."""

from __future__ import annotations

import nnprobe
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from fixtures import models as Z


def counts(how: str, steps: int = 30, every="auto", dead: bool = False):
    """(graph breaks, graphs compiled, recompiles) over `steps` steps, and the probe (or None)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = Z.mlp()
    if dead:
        with torch.no_grad():
            model[2].bias.fill_(-20.0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    probe = None
    if how == "watch-then-compile":
        probe = nnprobe.watch(model, opt, every=every, console=False)
    if how == "method":
        model.compile(backend="aot_eager")
        run = model
    else:
        run = torch.compile(model, backend="aot_eager")
    if how in ("compile-then-watch", "method"):
        probe = nnprobe.watch(run, opt, every=every, console=False)
    data = Z.batches(*Z.digits())
    try:
        for _ in range(steps):
            x, y = next(data)
            opt.zero_grad()
            loss = F.cross_entropy(run(x), y)
            loss.backward()
            opt.step()
            if probe is not None:
                probe.step(loss=loss)
    finally:
        if probe is not None:
            probe.close()
        out = (sum(counters["graph_break"].values()), counters["stats"]["unique_graphs"],
               sum(counters["recompiles"].values()) if "recompiles" in counters else 0)
        torch._dynamo.reset()
    return out, probe


@pytest.mark.parametrize("how", ["compile-then-watch", "method"])
@pytest.mark.parametrize("every", ["auto", 1])
def test_watching_adds_no_graph_break_or_recompile(how, every):
    bare, _ = counts("bare")
    watched, probe = counts(how, every=every)
    assert watched == bare, f"bare (breaks, graphs, recompiles) {bare}, watched {watched}"
    assert len(probe.sampled_steps) >= 10 and probe.findings == []


def test_compiling_after_watch_settles_after_warm_up():
    """watch() first, torch.compile after: the first trace meets the probe's hooks; from then on
    nothing of nnprobe is in the graph."""
    bare, _ = counts("bare")
    watched, probe = counts("watch-then-compile")
    assert watched[0] <= bare[0] + 2 and watched[1] <= bare[1] + 2, (bare, watched)
    assert probe.findings == []


def test_compiled_model_gets_activation_figures_and_findings():
    _, probe = counts("compile-then-watch", dead=True)
    dead = probe.history("3", "activations", "dead")
    assert (dead[~torch.isnan(torch.tensor(dead)).numpy()] == 1.0).any()
    (f,) = [f for f in probe.findings if f.code == "dead-units"]
    assert f.module == "3"
    eager = nnprobe.watch(nn.Sequential(nn.Linear(2, 2)), console=False)
    eager.close()
