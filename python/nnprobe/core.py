"""The one door to the Rust core (`nnprobe._core`): no other module imports it.

It also owns the order of the statistics columns. The core returns a row of figures per tensor
in `STATS_FIELDS` order (the *public* form: count, nan, inf, zeros, min, max, mean, std, l2,
absmax, absmean over the finite values); the Rust side defines that order and this module reads
it once, so the column indices below follow whatever the core says.

The *moments* form (what merges exactly across calls, micro-batches and ranks) keeps the same
columns but holds sums where the public form holds means: column MEAN holds the sum, STD the
sum of squares, L2 the squared l2 norm, ABSMEAN the sum of magnitudes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from . import _core
from ._core import Layout, TensorStats

STATS_FIELDS: tuple[str, ...] = tuple(_core.STATS_FIELDS)
NFIELDS = len(STATS_FIELDS)
HIST_LO = int(_core.HIST_LO)
HIST_BINS = int(_core.HIST_BINS)

COUNT, NAN, INF, ZEROS, MIN, MAX, MEAN, STD, L2, ABSMAX, ABSMEAN = (
    STATS_FIELDS.index(f) for f in ("count", "nan", "inf", "zeros", "min", "max", "mean", "std", "l2", "absmax", "absmean")
)
# the moments form's names for the columns that hold sums
SUM, SUMSQ, L2SQ, ABSSUM = MEAN, STD, L2, ABSMEAN

__all__ = [
    "ABSMAX", "ABSMEAN", "ABSSUM", "COUNT", "HIST_BINS", "HIST_LO", "INF", "L2", "L2SQ", "Layout", "MAX", "MEAN", "MIN",
    "NAN", "NFIELDS", "STATS_FIELDS", "STD", "SUM", "SUMSQ", "TensorStats", "ZEROS", "duplicate_rows", "group_codes",
    "group_decode", "mask_leaks", "nonzero_along", "overlap_rows", "read_floor", "reshape_groups", "row_hashes",
    "stats", "stats_many", "stats_rows", "get_num_threads", "set_num_threads", "public_row",
]


def stats(x: Any, *, hist: bool = False) -> TensorStats:
    return _core.stats(x, hist=hist)


def stats_many(xs: Sequence[Any], *, hist: bool = False) -> list[TensorStats]:
    return _core.stats_many(xs, hist=hist)


def stats_rows(xs: Sequence[Any]) -> npt.NDArray[np.float64]:
    """Public rows [len(xs), NFIELDS] of many host inputs in one GIL-free call, no per-tensor
    Python object."""
    return _core.stats_array(xs)


def public_row(s: TensorStats) -> list[float]:
    """A `TensorStats` as one public row, in column order."""
    return [float(getattr(s, f)) for f in STATS_FIELDS]


def read_floor(x: Any) -> float:
    return _core.read_floor(x)


def reshape_groups(old_shape: Sequence[int], new_shape: Sequence[int]) -> list[tuple[list[int], list[int]]]:
    return _core.reshape_groups(old_shape, new_shape)


def set_num_threads(n: int) -> None:
    _core.set_num_threads(n)


def get_num_threads() -> int:
    return _core.get_num_threads()


# dependency masks (rust/masks.rs)
def nonzero_along(x: Any, keep: Sequence[int], *, tol: float = 0.0) -> tuple[npt.NDArray[np.bool_], bool]:
    return _core.nonzero_along(x, keep, tol=tol)


def group_codes(n_out: int) -> npt.NDArray[np.bool_]:
    return _core.group_codes(n_out)


def group_decode(hits: Any, n_out: int) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    return _core.group_decode(hits, n_out)


def mask_leaks(mask: Any, expect: str) -> list[tuple[int, int]]:
    return _core.mask_leaks(mask, expect)


# row hashing for duplicates and overlap (rust/hash.rs)
def row_hashes(x: Any) -> npt.NDArray[np.uint64]:
    return _core.row_hashes(x)


def duplicate_rows(x: Any) -> npt.NDArray[np.int64]:
    return _core.duplicate_rows(x)


def overlap_rows(a: Any, b: Any) -> npt.NDArray[np.int64]:
    return _core.overlap_rows(a, b)
