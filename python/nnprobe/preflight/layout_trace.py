"""`trace_layout()`: follows where every axis of every tensor came from, and flags a reshape or
view that splits the batch axis (`view-mixes-batch`).

Every axis of a tracked tensor is a tuple of *atoms*, major to minor: `(label, size)` where the
label names an axis of an input (`(input number, axis)`), `MIXED` for an axis made of pieces that
can no longer be told apart, or `None` for an axis the trace cannot attribute (a Linear's output
features). A reshape maps atoms through the core's `reshape_groups`: inside one group the atoms
are laid out by their strides in the flattened group, and every boundary between new axes is a
stride `p`. The batch atom (stride `s`, size `n`) survives whole when every boundary is either
finer and divides it (`p <= s` and `s % p == 0`) or coarser and a multiple of it
(`p >= s * n` and `p % (s * n) == 0`): the batch kept as an axis, or fused whole with its
neighbours. Any other boundary falls strictly inside the batch: the classic
`[T, B, C].view(B, -1)`.
"""

from __future__ import annotations

import math
import os
import sys
import types
from collections.abc import Iterable
from typing import Any

from ..findings import Finding, Report
from ..primitives import reshape_groups

MIXED = "mixed"

# Reshapes whose result can split an axis (squeeze/unsqueeze only add or drop size-1 axes).
_SPLITTING = {"view", "reshape", "flatten", "unflatten", "view_as", "reshape_as", "ravel", "_unsafe_view"}
_RESHAPES = _SPLITTING | {"squeeze", "unsqueeze", "squeeze_", "unsqueeze_"}
_PERMUTES = {"permute", "transpose", "transpose_", "swapaxes", "swapdims", "movedim", "moveaxis", "t", "t_", "T", "mT", "mH", "H",
             "adjoint"}
_REDUCTIONS = {
    "sum", "mean", "amax", "amin", "max", "min", "std", "var", "prod", "norm", "logsumexp", "all", "any",
    "argmax", "argmin", "median", "nansum", "nanmean", "count_nonzero", "std_mean", "var_mean", "aminmax",
}
_SKIP_DIRS = (os.path.dirname(os.path.dirname(os.path.abspath(__file__))),)


def _torch():
    import torch

    return torch


class LayoutTrace(Report):
    """The findings of a `trace_layout()` block, and the axis provenance of the tensors it saw."""

    title = "layout trace"

    def __init__(self, batch_dim: int = 0, batch_size: int | None = None, root: Any = None) -> None:
        super().__init__()
        from torch.utils.weak import WeakIdKeyDictionary

        self.batch_dim = batch_dim
        self.batch_size = batch_size
        self.ops = 0
        self.errors = 0  # internal failures: the op is skipped, the user's code never breaks
        self._axes: Any = WeakIdKeyDictionary()
        self._inputs = 0
        self._batch_labels: set[tuple[int, int]] = set()
        self._seen_locations: set[str] = set()
        self._module_names = {id(m): n for n, m in root.named_modules()} if root is not None and hasattr(root, "named_modules") else {}

    # ---- public helpers -------------------------------------------------------------------
    def mark(self, tensor: Any, batch_dim: int | None = None) -> None:
        """Declares `tensor` an input whose axis `batch_dim` (default: the trace's) is the batch."""
        bd = self.batch_dim if batch_dim is None else batch_dim
        bd = bd % tensor.ndim
        if self.batch_size is None:
            self.batch_size = int(tensor.shape[bd])
        self._label_input(tensor, bd)

    def axes_of(self, tensor: Any) -> list[str] | None:
        """Where each axis of `tensor` came from, major to minor: e.g. ['x0.1', 'batch*x0.2'] (axes of
        input 0; 'batch' is the batch axis), '?' a part no input axis made (a Linear's features, a
        stack), 'mixed' pieces of a split axis, '1' a size-1 axis. None if untracked."""
        axes = self._axes.get(tensor)
        if axes is None:
            return None
        out = []
        for atoms in axes:
            names = []
            for label, size in atoms:
                if label is None and size == 1:
                    continue
                if label is None:
                    names.append("?")
                elif label == MIXED:
                    names.append("mixed")
                elif label in self._batch_labels:
                    names.append("batch")
                else:
                    names.append(f"x{label[0]}.{label[1]}")
            out.append("*".join(names) if names else "1")
        return out

    def details(self) -> list[str]:
        return [f"{self.ops} tensor operations followed" + (f", {self.errors} skipped" if self.errors else "")]

    # ---- input labelling -----------------------------------------------------------------
    def _label_input(self, t: Any, batch_dim: int) -> tuple:
        k = self._inputs
        self._inputs += 1
        axes = tuple((((k, a), int(n)),) for a, n in enumerate(t.shape))
        self._batch_labels.add((k, batch_dim))
        self._axes[t] = axes
        return axes

    def _axes_for(self, t: Any) -> tuple | None:
        axes = self._axes.get(t)
        if axes is not None:
            if len(axes) != t.ndim:  # an in-place op changed the shape behind our back
                return None
            return axes
        torch = _torch()
        if isinstance(t, torch.nn.Parameter) or t.ndim == 0:
            return None
        bd = self.batch_dim if self.batch_dim >= 0 else t.ndim + self.batch_dim
        if not 0 <= bd < t.ndim:
            return None
        if self.batch_size is None:
            self.batch_size = int(t.shape[bd])
        elif t.shape[bd] != self.batch_size:
            return None
        return self._label_input(t, bd)

    # ---- the function mode ----------------------------------------------------------------
    def _on_call(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        torch = _torch()
        name = getattr(func, "__name__", "")
        if name == "__get__":  # a property: x.T, x.mT, x.shape
            name = getattr(getattr(func, "__self__", None), "__name__", "")
        outs = [o for o in (out if isinstance(out, (tuple, list)) else (out,)) if isinstance(o, torch.Tensor)]
        if not outs:  # x.shape, x.size(), x.dim(): nothing to follow
            return
        tensors = [a for a in _flat(args, kwargs) if isinstance(a, torch.Tensor)]
        if not tensors:
            return
        src = tensors[0]
        tracked = [(t, self._axes_for(t)) for t in tensors]
        if not any(ax is not None for _, ax in tracked):
            return
        self.ops += 1
        src_axes = self._axes.get(src) if isinstance(src, torch.Tensor) else None
        if name in _RESHAPES and src_axes is not None and len(outs) == 1:
            new = self._reshape(src, outs[0], src_axes, split_check=name in _SPLITTING, name=name)
        elif name in _PERMUTES and src_axes is not None and len(outs) == 1:
            new = _permute(name, src, outs[0], src_axes, args, kwargs)
        elif name in _REDUCTIONS and src_axes is not None:
            new = _reduce(src, outs[0], src_axes, args, kwargs)
            for o in outs:
                if new is not None and o.ndim == len(new):
                    self._axes[o] = new
            return
        elif name == "__getitem__" and src_axes is not None and len(outs) == 1:
            new = _getitem(src, outs[0], src_axes, args[1] if len(args) > 1 else None)
        elif name in ("cat", "concat", "concatenate") and len(outs) == 1:
            new = self._cat(args, kwargs, outs[0])
        elif name == "stack" and len(outs) == 1:
            seq = args[0] if args else kwargs.get("tensors", ())
            dim = _arg(args, kwargs, 1, "dim", 0) % outs[0].ndim
            first = next((self._axes.get(t) for t in seq if self._axes.get(t) is not None), None)
            new = None if first is None else first[:dim] + (((None, int(outs[0].shape[dim])),),) + first[dim:]
        elif name in ("chunk", "split", "tensor_split", "split_with_sizes", "unbind") and src_axes is not None:
            dim = _arg(args, kwargs, 2 if name != "unbind" else 1, "dim", 0) % src.ndim
            for o in outs:
                if name == "unbind":
                    self._axes[o] = src_axes[:dim] + src_axes[dim + 1:]
                else:
                    self._axes[o] = src_axes[:dim] + (_resized(src_axes[dim], int(o.shape[dim])),) + src_axes[dim + 1:]
            return
        elif name in ("expand", "expand_as", "broadcast_to", "repeat") and src_axes is not None and len(outs) == 1:
            o = outs[0]
            lead = o.ndim - src.ndim
            new = tuple(((None, int(n)),) for n in o.shape[:lead]) + tuple(
                _resized(src_axes[k], int(o.shape[lead + k])) if src.shape[k] != 1 else ((None, int(o.shape[lead + k])),)
                for k in range(src.ndim)
            )
        elif (name in ("linear", "embedding") and src_axes is not None and len(outs) == 1
              and outs[0].ndim == src.ndim + (name == "embedding")):
            keep = src.ndim - 1 if name == "linear" else src.ndim
            new = src_axes[:keep] + tuple(((None, int(n)),) for n in outs[0].shape[keep:])
        else:
            new = self._generic(tensors, outs[0])
        if new is not None:
            for o in outs:
                if o.ndim == len(new) and tuple(o.shape) == tuple(_sizes(new)):
                    self._axes[o] = new

    def _generic(self, tensors: list, out: Any) -> tuple | None:
        """Broadcasting ops (elementwise, activations, norms, dropout, casts): axes aligned from
        the right; otherwise the longest common leading prefix (matmul, conv, pooling)."""
        shape = tuple(out.shape)
        tracked = [(t, self._axes[t]) for t in tensors if self._axes.get(t) is not None and len(self._axes[t]) == t.ndim]
        if not tracked:
            return None
        try:
            bshape = tuple(_torch().broadcast_shapes(*[tuple(t.shape) for t in tensors]))
        except RuntimeError:
            bshape = None
        if bshape == shape:
            new = []
            for k in range(len(shape)):
                r = len(shape) - k
                atoms = None
                for t, ax in tracked:
                    if t.ndim >= r and t.shape[t.ndim - r] == shape[k] and shape[k] != 1:
                        cand = ax[t.ndim - r]
                        if atoms is None or (not _has_batch(atoms, self._batch_labels) and _has_batch(cand, self._batch_labels)):
                            atoms = cand
                new.append(atoms if atoms is not None else ((None, int(shape[k])),))
            return tuple(new)
        t, ax = tracked[0]
        prefix = 0
        while prefix < min(t.ndim, len(shape)) and t.shape[prefix] == shape[prefix]:
            prefix += 1
        if prefix == 0:
            return None
        return ax[:prefix] + tuple(((None, int(n)),) for n in shape[prefix:])

    def _cat(self, args: tuple, kwargs: dict, out: Any) -> tuple | None:
        seq = args[0] if args else kwargs.get("tensors", ())
        dim = _arg(args, kwargs, 1, "dim", 0)
        dim = dim % out.ndim
        axes = [self._axes.get(t) for t in seq if getattr(t, "ndim", 0) == out.ndim]
        known = [a for a in axes if a is not None]
        if not known:
            return None
        new = []
        for k in range(out.ndim):
            if k != dim:
                new.append(next((a[k] for a in known if _has_batch(a[k], self._batch_labels)), known[0][k]))
            else:
                labels = {lab for a in axes if a is not None for lab, _ in a[k]}
                # pieces of the same input axis (batch chunks, feature blocks) stay that axis
                same = len(known) == len(axes) and len(labels) == 1 and all(len(a[k]) == 1 for a in known)
                if same:
                    new.append(((known[0][k][0][0], int(out.shape[k])),))
                else:
                    mixed = any(lab in self._batch_labels or lab == MIXED for lab in labels)
                    new.append(((MIXED if mixed else None, int(out.shape[k])),))
        return tuple(new)

    def _reshape(self, src: Any, out: Any, axes: tuple, *, split_check: bool, name: str) -> tuple | None:
        old_shape = tuple(int(n) for n in src.shape)
        new_shape = tuple(int(n) for n in out.shape)
        if old_shape == new_shape:
            return axes
        result: list[tuple | None] = [None] * len(new_shape)
        for old_axes, new_axes in reshape_groups(old_shape, new_shape):
            atoms = [a for k in old_axes for a in axes[k] if a[1] != 1]
            sizes = [new_shape[k] for k in new_axes]
            # stride (in the flattened group) of each atom, minor to major
            strides, s = [], 1
            for _, n in reversed(atoms):
                strides.append(s)
                s *= n
            strides.reverse()
            # new axes' stride ranges [lo, hi)
            ranges, s = [], 1
            for n in reversed(sizes):
                ranges.append((s, s * n))
                s *= n
            ranges.reverse()
            boundaries = [lo for lo, _ in ranges if lo > 1]
            if split_check:
                for (label, n), st in zip(atoms, strides):
                    if label in self._batch_labels and not all(
                        (p <= st and st % p == 0) or (p >= st * n and p % (st * n) == 0) for p in boundaries
                    ):
                        self._flag(src, out, name, n)
            for k, (lo, hi) in zip(new_axes, ranges):
                inside, exact = [], True
                for (label, n), st in zip(atoms, strides):
                    a_lo, a_hi = st, st * n
                    if a_hi <= lo or a_lo >= hi:
                        continue
                    if lo <= a_lo and a_hi <= hi:
                        inside.append((label, n))
                    else:
                        p_lo, p_hi = max(lo, a_lo), min(hi, a_hi)
                        if p_lo % a_lo == 0 and p_hi % p_lo == 0:
                            piece = p_hi // p_lo
                            lab = MIXED if (label in self._batch_labels or label == MIXED) else label
                            inside.append((lab, piece))
                        else:
                            exact = False
                            inside.append((MIXED if (label in self._batch_labels or label == MIXED) else None, 1))
                if not exact or math.prod(n for _, n in inside) != new_shape[k]:
                    mixed = any(lab in self._batch_labels or lab == MIXED for lab, _ in inside)
                    inside = [(MIXED if mixed else None, new_shape[k])]
                result[k] = tuple(inside) if inside else ((None, 1),)
        return tuple(r if r is not None else ((None, 1),) for r in result)

    def _flag(self, src: Any, out: Any, name: str, batch: int) -> None:
        where, module = _caller(self._module_names)
        key = where or f"{name}{tuple(src.shape)}->{tuple(out.shape)}"
        if key in self._seen_locations:
            return
        self._seen_locations.add(key)
        at = f" at {where}" if where else ""
        self.findings.append(
            Finding(
                "view-mixes-batch",
                "error",
                f"{name} {list(src.shape)} -> {list(out.shape)}{at} splits the batch axis (size {batch}): "
                "rows of the result hold pieces of several examples",
                module=module,
                hint="move the batch axis first with permute/transpose, then reshape "
                "(e.g. x.permute(1, 0, 2).reshape(B, -1) for a [T, B, C] tensor)",
                data={"op": name, "in_shape": list(src.shape), "out_shape": list(out.shape), "where": where, "batch_size": batch},
            )
        )


def _has_batch(atoms: tuple, batch_labels: set) -> bool:
    return any(label in batch_labels for label, _ in atoms)


def _sizes(axes: tuple) -> list[int]:
    return [math.prod(n for _, n in atoms) for atoms in axes]


def _resized(atoms: tuple, size: int) -> tuple:
    if math.prod(n for _, n in atoms) == size:
        return atoms
    if len(atoms) == 1:
        return ((atoms[0][0], size),)
    mixed = any(label is not None for label, _ in atoms)
    return ((MIXED if mixed else None, size),)


def _flat(args: Iterable, kwargs: dict) -> list:
    out: list = []

    def walk(v: Any) -> None:
        if isinstance(v, (list, tuple)):
            for x in v:
                walk(x)
        else:
            out.append(v)

    walk(args)
    walk(tuple(kwargs.values()))
    return out


def _arg(args: tuple, kwargs: dict, pos: int, key: str, default: Any) -> Any:
    if key in kwargs:
        return kwargs[key]
    return args[pos] if len(args) > pos else default


def _permute(name: str, src: Any, out: Any, axes: tuple, args: tuple, kwargs: dict) -> tuple | None:
    nd = src.ndim
    if name == "permute":
        dims = args[1:] if len(args) > 1 else kwargs.get("dims", ())
        if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
            dims = dims[0]
        order = [int(d) % nd for d in dims]
    elif name in ("movedim", "moveaxis"):
        s, d = _arg(args, kwargs, 1, "source", None), _arg(args, kwargs, 2, "destination", None)
        s = [s] if isinstance(s, int) else list(s)
        d = [d] if isinstance(d, int) else list(d)
        s, d = [x % nd for x in s], [x % nd for x in d]
        order = [-1] * nd
        for a, b in zip(s, d):
            order[b] = a
        rest = iter(k for k in range(nd) if k not in s)
        order = [o if o >= 0 else next(rest) for o in order]
    elif name in ("t", "t_", "T", "H"):
        order = list(range(nd))[::-1]
    elif name in ("mT", "mH", "adjoint"):
        order = list(range(nd - 2)) + [nd - 1, nd - 2]
    else:  # transpose, swapaxes, swapdims
        a, b = _arg(args, kwargs, 1, "dim0", 0) % nd, _arg(args, kwargs, 2, "dim1", 1) % nd
        order = list(range(nd))
        order[a], order[b] = order[b], order[a]
    if sorted(order) != list(range(nd)) or out.ndim != nd:
        return None
    return tuple(axes[k] for k in order)


def _reduce(src: Any, out: Any, axes: tuple, args: tuple, kwargs: dict) -> tuple | None:
    dim = _arg(args, kwargs, 1, "dim", None)
    if dim is None or not isinstance(dim, (int, list, tuple)):
        return () if out.ndim == 0 else None
    dims = {d % src.ndim for d in ([dim] if isinstance(dim, int) else dim)}
    if out.ndim == src.ndim:  # keepdim
        return tuple(((None, 1),) if k in dims else axes[k] for k in range(src.ndim))
    if out.ndim == src.ndim - len(dims):
        return tuple(axes[k] for k in range(src.ndim) if k not in dims)
    return None


def _getitem(src: Any, out: Any, axes: tuple, index: Any) -> tuple | None:
    torch = _torch()
    idx = index if isinstance(index, tuple) else (index,)
    if any(isinstance(i, (torch.Tensor, list)) for i in idx):
        return None  # advanced indexing: not followed
    n_explicit = sum(1 for i in idx if i is not None and i is not Ellipsis)
    new: list = []
    k = 0
    for i in idx:
        if i is Ellipsis:
            for _ in range(src.ndim - n_explicit):
                new.append(axes[k])
                k += 1
        elif i is None:
            new.append(((None, 1),))
        elif isinstance(i, int) or (hasattr(i, "__index__") and not isinstance(i, slice)):
            k += 1
        elif isinstance(i, slice):
            new.append(("__resize__", k))
            k += 1
        else:
            return None
    new.extend(axes[k:])
    result = []
    for j, item in enumerate(new):
        if isinstance(item, tuple) and item and item[0] == "__resize__":
            result.append(_resized(axes[item[1]], int(out.shape[j])))
        else:
            result.append(item)
    if len(result) != out.ndim:
        return None
    return tuple(result)


def _caller(module_names: dict) -> tuple[str | None, str | None]:
    """The user's file:line that made the call, and the module whose forward it is in."""
    torch_dir = os.path.dirname(_torch().__file__)
    f: types.FrameType | None = sys._getframe(2)
    while f is not None:
        path = os.path.abspath(f.f_code.co_filename)
        if not path.startswith(torch_dir) and not path.startswith(_SKIP_DIRS) and "<frozen" not in path:
            slf = f.f_locals.get("self")
            module = None
            if isinstance(slf, _torch().nn.Module):
                module = module_names.get(id(slf)) or type(slf).__name__
                if module == "":
                    module = type(slf).__name__
            return f"{os.path.basename(path)}:{f.f_lineno}", module
        f = f.f_back
    return None, None


class _Mode:
    """The TorchFunctionMode, built lazily so that importing nnprobe does not import torch."""

    cls: Any = None

    @classmethod
    def make(cls, trace: LayoutTrace) -> Any:
        if cls.cls is None:
            from torch.overrides import TorchFunctionMode

            class LayoutMode(TorchFunctionMode):
                def __init__(self, trace: LayoutTrace) -> None:
                    super().__init__()
                    self.trace = trace

                def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
                    kwargs = kwargs or {}
                    out = func(*args, **kwargs)
                    try:
                        self.trace._on_call(func, args, kwargs, out)
                    except Exception:  # noqa: BLE001 - a diagnostic never breaks the code it watches
                        self.trace.errors += 1
                    return out

            cls.cls = LayoutMode
        return cls.cls(trace)


class trace_layout:  # noqa: N801 (a context manager used like a function)
    """Follows which original axis every axis of every tensor came from, and flags reshapes and
    views that split the batch axis (`view-mixes-batch`).

        with nnprobe.trace_layout() as trace:
            model(x)
        print(trace.findings)

    The batch is axis `batch_dim` of the first tensor the block uses that is not a Parameter
    (and of every later one with the same size there); give `batch_size` when a buffer is used
    before the input, or call `trace.mark(x)` inside the block.
    """

    def __init__(self, *, batch_dim: int = 0, batch_size: int | None = None, root: Any = None) -> None:
        self.trace = LayoutTrace(batch_dim, batch_size, root)
        self._mode: Any = None

    def __enter__(self) -> LayoutTrace:
        self._mode = _Mode.make(self.trace)
        self._mode.__enter__()
        return self.trace

    def __exit__(self, *exc: Any) -> None:
        self._mode.__exit__(*exc)
