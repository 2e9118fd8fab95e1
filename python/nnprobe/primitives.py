"""The Rust-backed primitives: statistics of any tensor or array, and layout questions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import core
from .core import Layout, TensorStats
from .errors import DtypeError, InputError, LayoutError

STATS_FIELDS = core.STATS_FIELDS


def stats(x: Any, *, hist: bool = False) -> TensorStats:
    """One pass over ``x`` (a torch tensor on the CPU or a NumPy array, any dtype and strides).

    ``count, nan, inf, zeros`` count elements; ``min, max, mean, std`` (population std), ``l2``,
    ``absmax`` and ``absmean`` are over the finite values. With ``hist=True``, a 64-bin histogram of
    floor(log2|x|) over finite non-zero values (``hist_edges``, ``hist_counts``).

    Reads float16, bfloat16, float32, float64, signed and unsigned integers and bool (a bool byte
    other than 0 is true). Complex, quantized, float8 and torch's shell dtypes raise ``DtypeError``
    with the conversion to use (``x.real``/``x.abs()``, ``x.dequantize()``, ``x.float()``). A torch
    view with the negative bit (``z.conj().imag``) is resolved first (a copy). float64 values of any
    magnitude give finite, correct ``std`` and ``l2`` wherever the true figure is finite. Expanded
    (stride-0) and overlapping (``as_strided``, ``unfold``) views count every position but read
    each distinct element once.
    """
    return core.stats(x, hist=hist)


def stats_many(xs: Sequence[Any], *, hist: bool = False) -> list[TensorStats]:
    """``stats`` of every tensor in ``xs`` in one call, parallel across tensors and within big ones."""
    return core.stats_many(xs, hist=hist)


def layout(x: Any) -> Layout:
    """The memory layout of a torch tensor (any device, meta included), a NumPy array or any
    object with byte strides (a memoryview, ...). Decided from the shape and strides alone: nothing
    is read, and the work does not grow with the number of elements. ``overlap`` is "no", "yes" or
    "maybe" (strides that interleave beyond what is decided exactly); ``overlapping`` is True for
    "yes" and "maybe"."""
    mod = type(x).__module__
    if mod.startswith("torch") and hasattr(x, "stride"):
        if getattr(x, "is_nested", False):
            raise LayoutError(
                "a nested tensor has no single shape and strides; take the layout of each tensor in x.unbind()"
            )
        if repr(x.layout) != "torch.strided":
            raise LayoutError(f"a {x.layout} tensor has no strides; call x.to_dense() first")
        try:
            shape, strides, itemsize, offset = tuple(x.shape), tuple(x.stride()), x.element_size(), x.storage_offset()
        except RuntimeError as e:
            raise LayoutError(
                f"torch cannot report the strides of this {type(x).__name__} ({e}); pass x.contiguous() or a plain tensor"
            ) from e
        return Layout(shape, strides, itemsize, offset, dtype=str(x.dtype).removeprefix("torch."))
    try:
        strided = hasattr(x, "strides") and hasattr(x, "itemsize") and hasattr(x, "shape")
        if strided:
            shape, byte_strides, itemsize = tuple(x.shape), tuple(x.strides), int(x.itemsize)
    except ValueError as e:  # a released memoryview
        raise InputError(f"cannot read the layout of this {type(x).__name__} ({e}); pass a live array") from e
    if strided:
        dtype = getattr(x, "dtype", None)
        name = str(dtype) if dtype is not None else _format_name(getattr(x, "format", None))
        if getattr(x, "suboffsets", ()):
            raise LayoutError(
                f"this {type(x).__name__} is indirect (PIL-style suboffsets), so it has no strides; "
                "copy it with numpy.array(x)"
            )
        if itemsize <= 0:
            raise DtypeError(
                f"the {name or 'element'} dtype has {itemsize} bytes per element, so nothing has a place in memory; "
                "use a dtype with at least one field"
            )
        if any(s % itemsize for s in byte_strides):
            raise LayoutError(
                f"byte strides {byte_strides} are not multiples of the itemsize {itemsize}; "
                "copy with numpy.ascontiguousarray(x)"
            )
        return Layout(shape, tuple(s // itemsize for s in byte_strides), itemsize, 0, dtype=name)
    raise InputError(
        f"layout() expects a torch.Tensor or a NumPy array, got {type(x).__name__}; "
        "convert it with torch.as_tensor(x) or numpy.asarray(x)"
    )


def _format_name(fmt: str | None) -> str | None:
    """A buffer-protocol format ("B", "<f") as NumPy names it ("uint8", "float32"), if it can."""
    if fmt is None:
        return None
    try:
        import numpy

        return numpy.dtype(fmt).name
    except (TypeError, ValueError):
        return fmt


def reshape_groups(old_shape: Sequence[int], new_shape: Sequence[int]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Which old axes merge or split into which new axes: the finest split of both shapes into
    consecutive groups of equal size (size-1 axes join the group after them)."""
    return [(tuple(a), tuple(b)) for a, b in core.reshape_groups(list(old_shape), list(new_shape))]


def set_num_threads(n: int) -> None:
    """Threads for the passes over data (0: one per core; a forked child always uses 1)."""
    core.set_num_threads(n)


def get_num_threads() -> int:
    return core.get_num_threads()
