"""watch() under FSDP2 (`fully_shard`) and HSDP, 2 processes on gloo (CPU): parameters are
DTensors, each rank reduces its local shard (post-accumulate-grad hooks see the reduced shard;
`param.register_hook` does not fire on a sharded DTensor), the moments merge over the mesh with
one all_reduce per reduce op, and rank 0's figures equal those of the same model trained in one
process on the concatenated batch, within float rounding. Output gradients are the one
exception, by a known factor: each rank's loss is the mean over its half of the batch, so the
gradient reaching a module's output is twice the single-process one (whose loss is the mean
over both halves); parameter gradients are averaged by FSDP's reduce-scatter and agree.

HSDP here is a 2-D mesh (replicate=2, shard=1): each rank holds whole parameters as
DTensors (Replicate, Shard(0)), so only the replica at coordinate 0 contributes them, as with
plain data parallel; activations still merge over both ranks."""

from __future__ import annotations

import json
import os

import nnprobe
import numpy as np
import pytest
import torch
from fixtures.spawn import join_gloo, two_ranks

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")

STEPS = 3
BS = 16
STATS = ("count", "zeros", "min", "max", "mean", "std", "l2", "absmax", "absmean", "ratio")
MESHES = {"fsdp": (2,), "hsdp": (2, 1)}


def model() -> torch.nn.Sequential:
    torch.manual_seed(0)
    # 5 output rows over 2 ranks: uneven shards (3 and 2 rows)
    return torch.nn.Sequential(torch.nn.Linear(12, 24), torch.nn.ReLU(), torch.nn.Linear(24, 5))


def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2 * STEPS * BS, 12, generator=g), torch.randint(0, 5, (2 * STEPS * BS,), generator=g)


def train(m, opt, batches) -> nnprobe.Probe:
    probe = nnprobe.watch(m, opt, every=1, console=False)
    for x, y in batches:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
    probe.close()
    return probe


def figures(probe) -> dict[str, list[float]]:
    return {f"{r.name}|{r.kind}|{s}": probe.history(r.name, r.kind, s).tolist()
            for r in probe.plan.rows.rows for s in STATS}


def worker(rank, world, port, outdir):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    join_gloo(rank, world, port)
    try:
        X, y = data()
        batches = [(X[(2 * s + rank) * BS:(2 * s + rank + 1) * BS], y[(2 * s + rank) * BS:(2 * s + rank + 1) * BS])
                   for s in range(STEPS)]
        out = {}
        for name, shape in MESHES.items():
            mesh = init_device_mesh("cpu", shape, mesh_dim_names=("replicate", "shard")[-len(shape):])
            m = model()
            for layer in (m[0], m[2]):
                fully_shard(layer, mesh=mesh)
            fully_shard(m, mesh=mesh)
            assert type(m[2].weight).__name__ == "DTensor"
            opt = torch.optim.Adam(m.parameters(), lr=1e-2)
            probe = train(m, opt, batches)
            out[name] = {"figures": figures(probe), "codes": sorted(probe.codes()),
                         "types": probe.plan.modules, "local": list(m[2].weight.to_local().shape)}
        with open(os.path.join(outdir, f"rank{rank}.json"), "w") as fh:
            json.dump(out, fh)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return two_ranks(worker, tmp_path_factory.mktemp("fsdp"), what="FSDP2 watch", timeout=120)


@pytest.fixture(scope="module")
def single():
    X, y = data()
    m = model()
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    batches = [(X[2 * s * BS:(2 * s + 2) * BS], y[2 * s * BS:(2 * s + 2) * BS]) for s in range(STEPS)]
    return figures(train(m, opt, batches))


def max_rel_diff(got: dict[str, list[float]], ref: dict[str, list[float]]) -> tuple[float, str]:
    worst, where = 0.0, ""
    for key, r in ref.items():
        name, kind, stat = key.split("|")
        g = np.array(got[key], dtype=np.float64)
        r = np.array(r, dtype=np.float64)
        if kind == "gradients" and "." not in name and stat not in ("count", "zeros"):
            g = g / 2  # output gradients: each rank's loss is the mean over half the batch
        assert np.array_equal(np.isnan(g), np.isnan(r)), key
        ok = ~np.isnan(r)
        # a mean near zero (a last layer's gradient sums to zero over classes) is judged against
        # the row's size, its largest absolute value
        size = np.abs(np.array(ref[f"{name}|{kind}|absmax"], dtype=np.float64))[ok] if stat == "mean" else 0.0
        d = np.abs(g[ok] - r[ok]) / np.maximum(np.maximum(np.abs(r[ok]), size), 1e-30)
        if d.size and d.max() > worst:
            worst, where = float(d.max()), key
    return worst, where


@pytest.mark.parametrize("mesh", sorted(MESHES))
def test_sharded_figures_equal_one_process(ranks, single, mesh):
    r0, r1 = ranks[0][mesh], ranks[1][mesh]
    assert r0["figures"] == r1["figures"]  # every rank holds the merged figures
    assert r0["local"] == ([3, 24] if mesh == "fsdp" else [5, 24])  # each rank reduced its local shard
    assert r0["types"]["2"] == "Linear"  # fully_shard's FSDPLinear is named as the unsharded run names it
    assert r0["codes"] == []
    worst, where = max_rel_diff(r0["figures"], single)
    print(f"\n{mesh}: max relative difference {worst:.3g} ({where})")
    assert worst < 1e-5, (worst, where)
