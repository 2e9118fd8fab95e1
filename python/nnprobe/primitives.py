"""The Rust-backed primitives: statistics of any tensor or array, and layout questions."""

from __future__ import annotations

from typing import Any, Sequence

from . import core
from .core import Layout, TensorStats
from .errors import InputError, LayoutError

STATS_FIELDS = core.STATS_FIELDS


def stats(x: Any, *, hist: bool = False) -> TensorStats:
    """One pass over ``x`` (a torch tensor on the CPU or a NumPy array, any dtype and strides).

    ``count, nan, inf, zeros`` count elements; ``min, max, mean, std`` (population std), ``l2``,
    ``absmax`` and ``absmean`` are over the finite values. With ``hist=True``, a 64-bin histogram of
    floor(log2|x|) over finite non-zero values (``hist_edges``, ``hist_counts``).
    """
    return core.stats(x, hist=hist)


def stats_many(xs: Sequence[Any], *, hist: bool = False) -> list[TensorStats]:
    """``stats`` of every tensor in ``xs`` in one call, parallel across tensors and within big ones."""
    return core.stats_many(xs, hist=hist)


def layout(x: Any) -> Layout:
    """The memory layout of a torch tensor (any device, meta included) or a NumPy array."""
    mod = type(x).__module__
    if mod.startswith("torch") and hasattr(x, "stride"):
        if x.layout.__repr__() != "torch.strided":
            raise LayoutError(f"a {x.layout} tensor has no strides; call x.to_dense() first")
        return Layout(
            tuple(x.shape),
            tuple(x.stride()),
            x.element_size(),
            x.storage_offset(),
            dtype=str(x.dtype).removeprefix("torch."),
        )
    if hasattr(x, "strides") and hasattr(x, "itemsize") and hasattr(x, "shape"):
        itemsize = int(x.itemsize)
        if any(s % itemsize for s in x.strides):
            raise LayoutError(
                f"byte strides {x.strides} are not multiples of the itemsize {itemsize}; "
                "copy with numpy.ascontiguousarray(x)"
            )
        return Layout(tuple(x.shape), tuple(s // itemsize for s in x.strides), itemsize, 0, dtype=str(x.dtype))
    raise InputError(
        f"layout() expects a torch.Tensor or a NumPy array, got {type(x).__name__}; "
        "convert it with torch.as_tensor(x) or numpy.asarray(x)"
    )


def reshape_groups(old_shape: Sequence[int], new_shape: Sequence[int]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Which old axes merge or split into which new axes: the finest split of both shapes into
    consecutive groups of equal size (size-1 axes join the group after them)."""
    return [(tuple(a), tuple(b)) for a, b in core.reshape_groups(list(old_shape), list(new_shape))]


def set_num_threads(n: int) -> None:
    """Threads for the passes over data (0: one per core; a forked child always uses 1)."""
    core.set_num_threads(n)


def get_num_threads() -> int:
    return core.get_num_threads()
