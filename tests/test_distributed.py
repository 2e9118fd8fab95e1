"""watch() under torch.distributed: 2 processes on gloo, a DDP-wrapped model on the CPU. Per-rank
figures merge exactly (the global activation statistics equal those of the concatenated batch),
replicated parameters are not double counted, every rank samples the same steps (no deadlock,
every="auto" included), and only rank 0 writes the log."""

from __future__ import annotations

import json
import os

import nnprobe
import numpy as np
import pytest
import torch
from fixtures import models as Z
from fixtures.spawn import join_gloo, two_ranks
from nnprobe.report.logfile import log_files

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")

STEPS = 8
BS = 32
STATS = ("count", "mean", "std", "min", "max", "l2", "zeros", "absmax", "absmean")


def batch(X, y, step, rank):
    i = (2 * step + rank) * BS
    return X[i : i + BS], y[i : i + BS]


def worker(rank, world, port, outdir):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    join_gloo(rank, world, port)
    try:
        torch.manual_seed(0)
        model = DDP(Z.mlp())
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        X, y = Z.digits(1024)
        log_dir = os.path.join(outdir, f"log{rank}")
        probe = nnprobe.watch(model, opt, every=1, console=False, log_dir=log_dir)
        for step in range(STEPS):
            xb, yb = batch(X, y, step, rank)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
        probe.close()
        # the same again under every="auto": ranks must agree on the sampled steps by themselves
        auto = nnprobe.watch(model, opt, console=False)
        for step in range(STEPS, 3 * STEPS):
            xb, yb = batch(X, y, step % STEPS, rank)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
        auto.close()
        act0 = probe.plan.rows.find("0", "activations")
        step0 = [(rows, counts) for step, rows, counts in probe.store.hists if step == 0][0]
        hist0 = int(step0[1][list(step0[0]).index(act0)].sum())
        out = {"hist0": hist0, "sampled": probe.sampled_steps.tolist(), "codes": sorted(probe.codes()),
               "auto_sampled": auto.sampled_steps.tolist(), "auto_codes": sorted(auto.codes())}
        for stat in STATS:
            out[f"act.{stat}"] = probe.history("0", "activations", stat).tolist()
            out[f"dead.{stat}"] = probe.history("1", "activations", stat).tolist()
            out[f"ograd.{stat}"] = probe.history("0", "gradients", stat).tolist()
            out[f"w.{stat}"] = probe.history("0.weight", "weights", stat).tolist()
            out[f"g.{stat}"] = probe.history("0.weight", "gradients", stat).tolist()
        with open(os.path.join(outdir, f"rank{rank}.json"), "w") as fh:
            json.dump(out, fh)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("ddp")
    return tmp_path, two_ranks(worker, tmp_path, what="distributed watch", timeout=150)


def test_ddp_stats_merge_exactly_and_rank0_reports(ranks):
    tmp_path, (r0, r1) = ranks
    assert r0["sampled"] == r1["sampled"] == list(range(STEPS))
    # every rank holds the merged figures
    for k in r0:
        if k.startswith("auto"):
            continue
        np.testing.assert_array_equal(np.array(r0[k], dtype=float), np.array(r1[k], dtype=float), err_msg=k)

    # reference: the first layer's output on both ranks' batches at once, with the initial weights
    torch.manual_seed(0)
    model = Z.mlp()
    X, y = Z.digits(1024)
    x0 = torch.cat([batch(X, y, 0, 0)[0], batch(X, y, 0, 1)[0]])
    with torch.no_grad():
        ref = nnprobe.stats(model[0](x0))
        relu = nnprobe.stats(torch.relu(model[0](x0)))
    assert r0["act.count"][0] == 2 * BS * 64
    for stat in STATS:
        assert r0[f"act.{stat}"][0] == pytest.approx(getattr(ref, stat), rel=1e-6), stat
        assert r0[f"dead.{stat}"][0] == pytest.approx(getattr(relu, stat), rel=1e-6), stat
    # histograms add up over ranks: every finite non-zero value of both batches is counted once
    assert r0["hist0"] == ref.count - ref.zeros
    # the output gradient merges over both ranks' examples too
    assert r0["ograd.count"][0] == 2 * BS * 64
    # replicated parameters: counted once, not once per rank
    w = nnprobe.stats(model[0].weight.detach())
    assert r0["w.count"][0] == 64 * 64 and r0["g.count"][0] == 64 * 64
    for stat in ("mean", "std", "l2", "min", "max"):
        assert r0[f"w.{stat}"][0] == pytest.approx(getattr(w, stat), rel=1e-6)
    # only rank 0 writes the log
    (log0,) = log_files(tmp_path / "log0")
    assert not (tmp_path / "log1").exists()
    with open(log0) as fh:
        recs = [json.loads(line) for line in fh]
    assert recs[0]["world_size"] == 2 and recs[-1]["type"] == "end"


def test_ddp_auto_sampling_agrees_across_ranks(ranks):
    _, (r0, r1) = ranks
    assert r0["auto_sampled"] == r1["auto_sampled"] and r0["auto_sampled"][:3] == [0, 1, 2]
    assert r0["codes"] == [] and r0["auto_codes"] == []
