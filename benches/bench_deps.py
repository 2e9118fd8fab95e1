"""Dependency masks for a batch of 256: exact (one vectorised backward), group (bit-coded groups of
outputs) and a naive loop of one backward per output, on a small CNN and a small transformer.

    PYTHONPATH=python python benches/bench_deps.py [--rounds 5] [--batch 256] [--threads 1]

Variants run interleaved, round by round; the table gives median wall times, the backward passes
(vector-Jacobian products) each needs, and ratios. Every variant's mask is checked against the
identity (both models keep examples independent in eval mode) before its time is kept.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

import nnprobe
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from nnprobe import _core


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, stride=2, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )


class Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


def small_transformer(d: int = 32) -> nn.Module:
    return nn.Sequential(Block(d, 4), Block(d, 4), nn.LayerNorm(d), nn.Linear(d, 50))


def naive_mask(model: nn.Module, x: torch.Tensor) -> tuple[np.ndarray, int]:
    """One backward per output example (Karpathy's recipe, literally), random positive weights."""
    model.eval()
    leaf = x.detach().clone().requires_grad_(True)
    out = model(leaf)
    w = torch.rand_like(out) + 0.5
    n = out.shape[0]
    mask = np.zeros((n, x.shape[0]), bool)
    for i in range(n):
        (g,) = torch.autograd.grad((out[i] * w[i]).sum(), leaf, retain_graph=True)
        mask[i] = _core.nonzero_along(g, [0])[0]
    return mask, n


def run(batch: int, rounds: int) -> list[dict]:
    torch.manual_seed(0)
    cases = {
        "small CNN [B,3,32,32]": (small_cnn(), torch.randn(batch, 3, 32, 32)),
        "small transformer [B,32,32]": (small_transformer(), torch.randn(batch, 32, 32)),
    }
    variants = {
        "exact": lambda m, x: _timed_mask(m, x, "exact"),
        "group": lambda m, x: _timed_mask(m, x, "group"),
        "naive loop": lambda m, x: naive_mask(m, x),
    }
    eye = np.eye(batch, dtype=bool)
    times: dict[tuple[str, str], list[float]] = {}
    passes: dict[tuple[str, str], int] = {}
    for _ in range(rounds):
        for cname, (model, x) in cases.items():
            for vname, fn in variants.items():
                t0 = time.perf_counter()
                mask, n_passes = fn(model, x)
                dt = time.perf_counter() - t0
                if not np.array_equal(mask, eye):
                    raise SystemExit(f"{cname} / {vname}: the mask is not the identity")
                times.setdefault((cname, vname), []).append(dt)
                passes[(cname, vname)] = n_passes
    rows = []
    for cname in cases:
        naive = statistics.median(times[(cname, "naive loop")])
        for vname in variants:
            med = statistics.median(times[(cname, vname)])
            rows.append({"model": cname, "method": vname, "median_s": med, "passes": passes[(cname, vname)],
                         "vs_naive": naive / med})
    return rows


def _timed_mask(model: nn.Module, x: torch.Tensor, method: str) -> tuple[np.ndarray, int]:
    m = nnprobe.dependency_mask(model, x, method=method)
    return m.mask, m.passes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rows = run(a.batch, a.rounds)
    bound = 2 * (math.log2(a.batch) + 1)
    print(f"# dependency masks, batch {a.batch}, {a.rounds} rounds interleaved, torch {torch.__version__}, "
          f"{a.threads} torch thread(s), core threads {_core.get_num_threads()}")
    print(f"# command: {' '.join(sys.argv)}")
    print("| model | method | median time (s) | backward passes | speed-up vs naive loop |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['method']} | {r['median_s']:.3f} | {r['passes']} | {r['vs_naive']:.1f}x |")
    group = [r["passes"] for r in rows if r["method"] == "group"]
    print(f"\ngroup passes {group} against the target 2 (log2 B + 1) = {bound:.0f}: "
          f"{'met' if all(p <= bound for p in group) else 'MISSED'}")


if __name__ == "__main__":
    main()
