"""Exact duplicate and train/test overlap detection on a million rows: nnprobe's core (parallel
row hashing, byte-verified) against numpy.unique(axis=0) and pandas.

    PYTHONPATH=python python benches/bench_data.py [--rows 1000000] [--cols 16] [--rounds 5]

Data: float32 rows of uniform noise with 1% planted duplicates, and a test split of 10% of the
rows size of which a tenth are training rows. Variants run interleaved, round by round; medians,
ratios against nnprobe, and every variant's answer checked against the planted truth.
pandas needs the `bench` extra (pip install pandas).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import nnprobe
import numpy as np
from nnprobe import _core


def make(rows: int, cols: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.random((rows, cols), dtype=np.float32)
    n_dup = rows // 100
    src = rng.choice(rows // 2, n_dup, replace=False)
    dst = rows // 2 + rng.choice(rows - rows // 2, n_dup, replace=False)
    x[dst] = x[src]
    test = rng.random((rows // 10, cols), dtype=np.float32)
    leak = rng.choice(rows, len(test) // 10, replace=False)
    test[: len(leak)] = x[leak]
    return x, test, n_dup, len(leak)


def core_dups(x):
    return len(_core.duplicate_rows(x))


def core_overlap(x, t):
    return len(_core.overlap_rows(x, t))


def numpy_dups(x):
    _, first, inverse = np.unique(x, axis=0, return_index=True, return_inverse=True)
    return int(np.sum(first[inverse.reshape(-1)] != np.arange(len(x))))


def numpy_overlap(x, t):
    both = np.concatenate([x, t])
    _, inverse = np.unique(both, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    in_train = np.zeros(inverse.max() + 1, bool)
    in_train[inverse[: len(x)]] = True
    return int(in_train[inverse[len(x):]].sum())


def pandas_dups(x):
    import pandas as pd

    return int(pd.DataFrame(x).duplicated().sum())


def pandas_overlap(x, t):
    import pandas as pd

    cols = list(range(x.shape[1]))
    train = pd.DataFrame(x, columns=cols).drop_duplicates()
    test = pd.DataFrame(t, columns=cols)
    return int(test.merge(train, on=cols, how="left", indicator=True)["_merge"].eq("both").sum())


def inspect_total(x, t):
    rep = nnprobe.inspect_data(x, test=t, progress=False)
    return len(rep.duplicates), len(rep.overlap)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--cols", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    x, t, n_dup, n_leak = make(a.rows, a.cols)
    tasks = {
        ("duplicates", "nnprobe core"): (lambda: core_dups(x), n_dup),
        ("duplicates", "numpy.unique(axis=0)"): (lambda: numpy_dups(x), n_dup),
        ("duplicates", "pandas duplicated"): (lambda: pandas_dups(x), n_dup),
        ("overlap", "nnprobe core"): (lambda: core_overlap(x, t), n_leak),
        ("overlap", "numpy.unique(axis=0)"): (lambda: numpy_overlap(x, t), n_leak),
        ("overlap", "pandas merge"): (lambda: pandas_overlap(x, t), n_leak),
    }
    times: dict = {}
    for _ in range(a.rounds):
        for key, (fn, want) in tasks.items():
            t0 = time.perf_counter()
            got = fn()
            dt = time.perf_counter() - t0
            if got != want:
                raise SystemExit(f"{key}: found {got}, planted {want}")
            times.setdefault(key, []).append(dt)
        t0 = time.perf_counter()
        dups, over = inspect_total(x, t)
        times.setdefault(("inspect_data", "everything"), []).append(time.perf_counter() - t0)
        assert (dups, over) == (n_dup, n_leak)
    print(f"# {a.rows} x {a.cols} float32 rows ({x.nbytes / 1e6:.0f} MB), {n_dup} planted duplicates; test {len(t)} "
          f"rows, {n_leak} from the data; {a.rounds} rounds interleaved; core threads {_core.get_num_threads()}")
    print(f"# command: {' '.join(sys.argv)}")
    print("| task | method | median time (s) | nnprobe core is faster by |")
    print("|---|---|---:|---:|")
    for (task, method), ts in times.items():
        med = statistics.median(ts)
        base = statistics.median(times[(task, "nnprobe core")]) if (task, "nnprobe core") in times else None
        ratio = f"{med / base:.1f}x" if base and method != "nnprobe core" else "-"
        print(f"| {task} | {method} | {med:.3f} | {ratio} |")


if __name__ == "__main__":
    main()
