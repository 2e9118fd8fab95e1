"""stats() against the read bandwidth, NumPy and torch (issue 2, SPEC section 4).

    python benches/bench_stats.py [--sizes 1M,16M,64M] [--rounds 5] [--no-write]

For each size: the same float32 buffer read by a plain sum in the core (the read-bandwidth
floor), by nnprobe.stats (with and without the histogram; contiguous, transposed and bfloat16),
and by NumPy and torch computing the same figures (count, NaN, Inf, zeros, min, max, mean, std,
l2, absmax, absmean over finite values, accumulated in float64). Variants are interleaved and
medians taken; ratios are what to read. Each variant's result is checked against the others.
"""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np
import torch

sys.path.insert(0, __import__("os").path.dirname(__file__))
import nnprobe  # noqa: E402
from _results import interleaved, machine, write_section  # noqa: E402
from nnprobe import _core  # noqa: E402


def numpy_stats(x: np.ndarray) -> dict:
    x = x.reshape(-1)
    finite = np.isfinite(x)
    nan = int(np.isnan(x).sum())
    inf = int(x.size - finite.sum()) - nan
    xf = x if nan + inf == 0 else x[finite]
    x64 = xf.astype(np.float64)
    mn, mx = float(xf.min()), float(xf.max())
    return dict(count=x.size, nan=nan, inf=inf, zeros=int(np.count_nonzero(xf == 0)), min=mn, max=mx,
                mean=float(x64.mean()), std=float(x64.std()), l2=math.sqrt(float(np.dot(x64, x64))),
                absmax=max(-mn, mx), absmean=float(np.abs(x64).mean()))


def torch_stats(x: torch.Tensor) -> dict:
    finite = torch.isfinite(x)
    nan = int(torch.isnan(x).sum())
    inf = int(x.numel() - finite.sum()) - nan
    xf = x if nan + inf == 0 else x[finite]
    x64 = xf.double()
    mn, mx = float(xf.min()), float(xf.max())
    return dict(count=x.numel(), nan=nan, inf=inf, zeros=int((xf == 0).sum()), min=mn, max=mx,
                mean=float(x64.mean()), std=float(x64.std(unbiased=False)), l2=float(x64.norm()),
                absmax=max(-mn, mx), absmean=float(x64.abs().mean()))


def check(name: str, got, want: dict) -> None:
    for k, v in want.items():
        g = getattr(got, k) if not isinstance(got, dict) else got[k]
        assert math.isclose(g, v, rel_tol=1e-6, abs_tol=1e-9), f"{name}: {k} = {g}, expected {v}"


def parse_size(s: str) -> int:
    return int(float(s[:-1]) * (1 << 20)) if s.endswith("M") else int(s)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1M,16M,64M")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    threads_all = nnprobe.get_num_threads()
    rows = []
    for size_s in args.sizes.split(","):
        n = parse_size(size_s)
        a = rng.standard_normal(n, dtype=np.float32)
        t = torch.from_numpy(a)
        side = 1 << (int(math.log2(n)) // 2)
        tt = t[: side * (n // side)].view(-1, side).t()  # a transposed view of the same memory
        bf = t.bfloat16()
        ref = numpy_stats(a)
        check("torch", torch_stats(t), ref)
        check("nnprobe", nnprobe.stats(a), ref)
        check("nnprobe transposed", nnprobe.stats(tt), numpy_stats(tt.numpy()))
        for threads in (1, threads_all):
            nnprobe.set_num_threads(threads)
            torch.set_num_threads(threads)
            # each lambda binds this size's buffers: they are called before the loop moves on
            variants = {
                "floor": lambda a=a: _core.read_floor(a),
                "stats": lambda a=a: nnprobe.stats(a),
                "stats+hist": lambda a=a: nnprobe.stats(a, hist=True),
                "torch contiguous": lambda t=t: nnprobe.stats(t),
                "torch contiguous+hist": lambda t=t: nnprobe.stats(t, hist=True),
                "transposed": lambda tt=tt: nnprobe.stats(tt),
                "bf16": lambda bf=bf: nnprobe.stats(bf),
                "bf16+hist": lambda bf=bf: nnprobe.stats(bf, hist=True),
            }
            if threads == 1:  # NumPy's reductions are single-threaded; compare like with like
                variants["numpy"] = lambda a=a: numpy_stats(a)
                variants["torch"] = lambda t=t: torch_stats(t)
            med = interleaved(variants, rounds=args.rounds)
            gbps = n * 4 / med["floor"] / 1e9
            row = dict(size=size_s, threads=threads, gbps=gbps, **med)
            rows.append(row)
            print(f"{size_s:>4} x{threads}: floor {gbps:.1f} GB/s | "
                  + " | ".join(f"{k} {v * 1e3:.2f} ms" for k, v in med.items()), flush=True)
    nnprobe.set_num_threads(0)
    torch.set_num_threads(threads_all)

    lines = [
        "Command: `scripts/dev bench stats` (that is `python benches/bench_stats.py`), "
        f"{args.rounds} interleaved rounds, medians. Machine: {machine()}.",
        "",
        "Fraction of read bandwidth = plain-sum time / stats time over the same float32 buffer "
        "(1.0 = as fast as reading the bytes; the plain sum is one thread in every row). bfloat16 is compared per element with float32 "
        "(bf16 time / f32 time; it reads half the bytes). Transposed = a `.t()` view of the same "
        "memory against the contiguous time. Those two ratios compare torch tensors with torch tensors "
        "(both through DLPack); the bandwidth columns use the NumPy array (buffer protocol).",
        "",
        "| size | threads | read GB/s | stats / bandwidth | +hist / bandwidth | transposed / contiguous "
        "| bf16 / f32 per element | bf16+hist / f32+hist | vs NumPy | vs torch |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        vs_np = f"{r['numpy'] / r['stats']:.1f}x faster" if "numpy" in r else "n/a"
        vs_t = f"{r['torch'] / r['stats']:.1f}x faster" if "torch" in r else "n/a"
        lines.append(
            f"| {r['size']} | {r['threads']} | {r['gbps']:.1f} | {r['floor'] / r['stats']:.2f} | "
            f"{r['floor'] / r['stats+hist']:.2f} | {r['transposed'] / r['torch contiguous']:.2f} | "
            f"{r['bf16'] / r['torch contiguous']:.2f} | {r['bf16+hist'] / r['torch contiguous+hist']:.2f} | {vs_np} | {vs_t} |"
        )
    big = [r for r in rows if r["threads"] == 1 and "numpy" in r]
    if big:
        r = big[-1]  # the largest size, one thread: what SPEC section 4 states its targets on
        checks = [
            ("stats >= 0.85 of read bandwidth", r["floor"] / r["stats"], 0.85, True),
            ("stats with histogram >= 0.55 of read bandwidth", r["floor"] / r["stats+hist"], 0.55, True),
            (">= 20x faster than NumPy", r["numpy"] / r["stats"], 20, True),
            (">= 20x faster than torch", r["torch"] / r["stats"], 20, True),
            ("transposed <= 1.5x contiguous", r["transposed"] / r["torch contiguous"], 1.5, False),
            ("bfloat16 <= 1.2x float32 per element", r["bf16"] / r["torch contiguous"], 1.2, False),
        ]
        lines += ["", f"Targets (SPEC section 4) on the {r['size']} one-thread row:"]
        for name, v, bound, at_least in checks:
            ok = v >= bound if at_least else v <= bound
            lines.append(f"- {name}: {v:.2f} ({'met' if ok else 'missed'})")
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("stats() kernel", body)


if __name__ == "__main__":
    main()
