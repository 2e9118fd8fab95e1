"""Merging a sampled step's figures across the ranks of `torch.distributed`.

Each rank reduces its own tensors; at each logged step the moments (counts, sums, sums of
squares, minima, maxima) merge exactly with two `all_reduce` calls of the process group itself
(one SUM, one MAX carrying negated minima), so every rank ends with the global figures and
rank 0 reports them. Rows of replicated parameters (plain data parallel: every rank holds the
same weights and, after DDP's all-reduce, the same gradients) are taken from rank 0 alone, so
their counts are not multiplied by the world size; rows of sharded parameters (DTensor, FSDP2:
each rank reduces its local shard) merge over the ranks that hold distinct shards (under HSDP,
the replicas at coordinate 0 of the replicate dimension; see `plan.duplicate_on_rank`), and
rows of activations and output gradients (each rank's own batch) over all ranks.

The MAX reduction also carries each rank's proposal for the next sampled step, so that all ranks
sample the same steps (the collectives must match) whatever each one measured.
"""

from __future__ import annotations

import numpy as np

from .tensors import ABSMAX, ABSSUM, COUNT, INF, L2SQ, MAX, MIN, NAN, SUM, SUMSQ, ZEROS

_SUM_COLS = [COUNT, NAN, INF, ZEROS, SUM, SUMSQ, L2SQ, ABSSUM]


def active() -> bool:
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch built without distributed
        return False
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    if not active():
        return 0
    import torch.distributed as dist

    return dist.get_rank()


def world_size() -> int:
    if not active():
        return 1
    import torch.distributed as dist

    return dist.get_world_size()


def merge(moments: np.ndarray, duplicate: np.ndarray, sat: np.ndarray, dead: np.ndarray, proposal: float
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """All-reduce one step's figures. `moments` [rows, 11]; `duplicate` bool [rows]: rows whose
    figures on this rank repeat another rank's (left out); `sat`
    saturated-element counts [rows] (summed); `dead` dead-unit fractions [rows] (NaN: unknown).
    A unit dead on the global batch is dead on every rank's share, so the global dead fraction is
    at most the smallest rank's: that bound is what merges (a conservative figure).
    Returns merged (moments, sat, dead, max proposal)."""
    import torch
    import torch.distributed as dist

    m = moments.copy()
    m[duplicate] = 0.0
    m[duplicate, MIN] = np.inf
    m[duplicate, MAX] = -np.inf
    m[duplicate, ABSMAX] = -np.inf
    nrows = len(m)
    dead_in = np.where(np.isnan(dead), np.inf, dead)
    sum_part = np.concatenate([m[:, _SUM_COLS].ravel(), sat])
    max_part = np.concatenate([m[:, MAX], -m[:, MIN], m[:, ABSMAX], -dead_in, [proposal]])
    device = torch.device("cpu")
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    # +-inf would poison NCCL's SUM on some versions; MAX is safe with them
    ts = torch.from_numpy(sum_part).to(device)
    tm = torch.from_numpy(max_part).to(device)
    dist.all_reduce(ts, op=dist.ReduceOp.SUM)
    dist.all_reduce(tm, op=dist.ReduceOp.MAX)
    s = ts.cpu().numpy()
    x = tm.cpu().numpy()
    out = m.copy()
    out[:, _SUM_COLS] = s[: nrows * len(_SUM_COLS)].reshape(nrows, len(_SUM_COLS))
    out[:, MAX] = x[:nrows]
    out[:, MIN] = -x[nrows : 2 * nrows]
    out[:, ABSMAX] = x[2 * nrows : 3 * nrows]
    d = -x[3 * nrows : 4 * nrows]
    dead_out = np.where(np.isinf(d), np.nan, d)
    sat_out = s[nrows * len(_SUM_COLS):]
    return out, sat_out, dead_out, float(x[-1])


def merge_hist(hists: dict[int, np.ndarray], rows: int, duplicate: np.ndarray) -> dict[int, np.ndarray]:
    """Sum the histograms of a step over ranks (counts add exactly; rows whose figures repeat
    another rank's left out). Every rank takes histograms on the same steps, so the call matches."""
    import torch
    import torch.distributed as dist

    bins = len(next(iter(hists.values()))) if hists else 64
    dense = np.zeros((rows, bins))
    for row, counts in hists.items():
        if not duplicate[row]:
            dense[row] = counts
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.from_numpy(dense).to(device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    out = t.cpu().numpy()
    return {row: out[row].astype(np.uint64) for row in range(rows) if out[row].any()}
