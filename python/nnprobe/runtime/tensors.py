"""The torch -> core bridge: which tensors can be read, how they reach the core, and where they
are reduced (the device policy).

Statistics travel in two forms. The *public* form is the core's row, in `STATS_FIELDS` order
(count, nan, inf, zeros, min, max, mean, std, l2, absmax, absmean). The *moments* form is what
merges exactly, across calls of a shared module, micro-batches and ranks:
count, nan, inf, zeros, min, max, sum, sumsq, l2sq, absmax, abssum (sums over finite values; an
empty row has min=+inf, max=-inf, absmax=-inf, the neutral elements of min and max).

CPU tensors go to the Rust core zero-copy (as NumPy views when NumPy knows the dtype, which is
the cheapest intake, else through DLPack). CUDA tensors are reduced on their device by a few
torch operations into an 11-number vector in moments form; those vectors are stacked once per
step and copied to pinned host memory without blocking, and read one step later, when the copy
has long finished: the training step never waits on the host. `device_stats="copy"` copies the
tensor to the host and uses the core instead (a synchronisation; the benchmarks compare both).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from .. import core
from ..core import ABSMAX, ABSSUM, COUNT, INF, L2SQ, MAX, MIN, NAN, NFIELDS, SUM, SUMSQ, ZEROS

# public-form columns that differ from the moments form (the same columns hold sums there)
P_MEAN, P_STD, P_L2, P_ABSMEAN = core.MEAN, core.STD, core.L2, core.ABSMEAN


# dtypes torch can hand to NumPy without a copy: the cheapest way into the core (about 1 us,
# against about 8 us through DLPack). bfloat16 and the float8 types go through DLPack.
_NUMPY_DTYPES = frozenset(
    {
        torch.float32, torch.float64, torch.float16, torch.int8, torch.int16, torch.int32,
        torch.int64, torch.uint8, torch.bool,
    }
)
_FLOAT8 = frozenset(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz") if hasattr(torch, n))


def empty_moments(rows: int) -> np.ndarray:
    m = np.zeros((rows, NFIELDS))
    m[:, MIN] = np.inf
    m[:, MAX] = -np.inf
    m[:, ABSMAX] = -np.inf
    return m


def public_to_moments(p: np.ndarray) -> np.ndarray:
    """Core rows [k, 11] (public form) -> moments form."""
    m = p.copy()
    n = p[:, COUNT] - p[:, NAN] - p[:, INF]
    has = n > 0
    mean = np.where(has, p[:, P_MEAN], 0.0)
    std = np.where(has, p[:, P_STD], 0.0)
    m[:, SUM] = mean * n
    m[:, SUMSQ] = (std * std + mean * mean) * n
    m[:, L2SQ] = p[:, P_L2] ** 2
    m[:, ABSSUM] = np.where(has, p[:, P_ABSMEAN], 0.0) * n
    m[:, MIN] = np.where(has, p[:, MIN], np.inf)
    m[:, MAX] = np.where(has, p[:, MAX], -np.inf)
    m[:, ABSMAX] = np.where(has, p[:, ABSMAX], -np.inf)
    return m


def moments_to_public(m: np.ndarray) -> np.ndarray:
    """Moments [k, 11] -> the public form (NaN where a row has no finite value)."""
    p = m.copy()
    n = m[:, COUNT] - m[:, NAN] - m[:, INF]
    has = n > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        safe = np.where(has, n, 1.0)
        mean = m[:, SUM] / safe
        var = np.maximum(m[:, SUMSQ] / safe - mean * mean, 0.0)
        p[:, P_MEAN] = np.where(has, mean, np.nan)
        p[:, P_STD] = np.where(has, np.sqrt(var), np.nan)
        p[:, P_L2] = np.sqrt(np.maximum(m[:, L2SQ], 0.0))
        p[:, P_ABSMEAN] = np.where(has, m[:, ABSSUM] / safe, np.nan)
        p[:, MIN] = np.where(has, m[:, MIN], np.nan)
        p[:, MAX] = np.where(has, m[:, MAX], np.nan)
        p[:, ABSMAX] = np.where(has, m[:, ABSMAX], np.nan)
    return p


def merge_into(acc: np.ndarray, idx: np.ndarray, m: np.ndarray) -> None:
    """Merge moments rows `m` into `acc[idx]` exactly (indices may repeat)."""
    for c in (COUNT, NAN, INF, ZEROS, SUM, SUMSQ, L2SQ, ABSSUM):
        np.add.at(acc[:, c], idx, m[:, c])
    np.minimum.at(acc[:, MIN], idx, m[:, MIN])
    np.maximum.at(acc[:, MAX], idx, m[:, MAX])
    np.maximum.at(acc[:, ABSMAX], idx, m[:, ABSMAX])


def rms(p: np.ndarray) -> np.ndarray:
    """Root mean square over the finite values of public rows (NaN where none)."""
    n = p[..., COUNT] - p[..., NAN] - p[..., INF]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, p[..., P_L2] / np.sqrt(np.where(n > 0, n, 1.0)), np.nan)


# ---------------------------------------------------------------------------------------------
# which tensors are read


def readable(t: Any) -> bool:
    """A dense, floating tensor with data (no sparse, meta, quantized, complex or integer)."""
    return (
        isinstance(t, torch.Tensor)
        and t.layout == torch.strided
        and (t.is_floating_point())
        and t.device.type != "meta"
        and not t.is_quantized
    )


def first_float_tensor(out: Any, depth: int = 0) -> torch.Tensor | None:
    """The primary output of a module: the first readable tensor in a tensor, tuple, list, dict
    (ModelOutput included), dataclass or namedtuple. Integer, sparse and None outputs give None."""
    if isinstance(out, torch.Tensor):
        return out if readable(out) else None
    if depth > 3 or out is None:
        return None
    if isinstance(out, (tuple, list)):
        items: Any = out
    elif isinstance(out, dict):
        items = out.values()
    elif hasattr(out, "__dataclass_fields__"):
        items = (getattr(out, f, None) for f in out.__dataclass_fields__)
    else:
        return None
    for item in items:
        t = first_float_tensor(item, depth + 1)
        if t is not None:
            return t
    return None


def tensors_in(obj: Any, depth: int = 0) -> Iterator[torch.Tensor]:
    """Every tensor in a nested structure of tuples, lists, dicts and dataclasses."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif depth <= 3 and obj is not None:
        if isinstance(obj, (tuple, list)):
            items: Any = obj
        elif isinstance(obj, dict):
            items = obj.values()
        elif hasattr(obj, "__dataclass_fields__"):
            items = (getattr(obj, f, None) for f in obj.__dataclass_fields__)
        else:
            return
        for item in items:
            yield from tensors_in(item, depth + 1)


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (FSDP2); the tensor itself otherwise."""
    to_local = getattr(t, "to_local", None)
    return to_local() if to_local is not None and type(t).__name__ == "DTensor" else t


def host_input(t: torch.Tensor) -> Any:
    """What the core reads for a CPU tensor: a NumPy view when NumPy knows the dtype, else the
    detached tensor (DLPack). float8 is widened (the core refuses it)."""
    t = t.detach()
    if t.dtype in _NUMPY_DTYPES:
        return t.numpy()
    if t.dtype in _FLOAT8:
        return t.float().numpy()
    return t


def use_device_path(t: torch.Tensor, policy: str) -> bool:
    if policy == "device":
        return True
    return t.device.type != "cpu" and policy == "auto"


# ---------------------------------------------------------------------------------------------
# device-side reduction


def device_moments(x: torch.Tensor) -> torch.Tensor:
    """The moments vector of `x` computed where `x` lives, as a float64 tensor [11], without any
    host synchronisation (every figure stays a device tensor)."""
    f64 = torch.float64
    x = x.detach()
    if not x.is_floating_point():
        x = x.float()
    n = x.numel()
    if n == 0:
        return torch.from_numpy(empty_moments(1)[0]).to(x.device)
    finite = torch.isfinite(x)
    nfin = finite.sum()
    nan = torch.isnan(x).sum()
    x0 = torch.where(finite, x, torch.zeros((), dtype=x.dtype, device=x.device))
    sumsq = torch.linalg.vector_norm(x0, 2, dtype=f64).square()
    mn = torch.where(finite, x, torch.full((), math.inf, dtype=x.dtype, device=x.device)).min()
    mx = torch.where(finite, x, torch.full((), -math.inf, dtype=x.dtype, device=x.device)).max()
    absmax = torch.linalg.vector_norm(x0, math.inf, dtype=f64)
    has = nfin > 0
    absmax = torch.where(has, absmax, torch.full((), -math.inf, dtype=f64, device=x.device))
    full = {
        COUNT: torch.full((), float(n), dtype=f64, device=x.device),
        NAN: nan.to(f64),
        INF: (n - nfin - nan).to(f64),
        ZEROS: (x == 0).sum().to(f64),
        MIN: mn.to(f64),
        MAX: mx.to(f64),
        SUM: x0.sum(dtype=f64),
        SUMSQ: sumsq,
        L2SQ: sumsq,
        ABSMAX: absmax,
        ABSSUM: torch.linalg.vector_norm(x0, 1, dtype=f64),
    }
    parts = [full[c] for c in range(NFIELDS)]
    return torch.stack(parts)


class Readback:
    """Small device tensors copied to (pinned) host memory without blocking; read later.

    On the CPU the values are there at once. On CUDA `ready()` asks the copy's event without
    waiting; `get()` waits only if it is asked for too early (at close)."""

    def __init__(self, t: torch.Tensor) -> None:
        self._event = None
        if t.device.type == "cuda":
            host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            host.copy_(t, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
            self._host = host
        elif t.device.type == "cpu":
            self._host = t
        else:  # other accelerators: a plain copy (may synchronise)
            self._host = t.to("cpu")

    def ready(self) -> bool:
        return self._event is None or bool(self._event.query())

    def get(self) -> np.ndarray:
        if self._event is not None:
            self._event.synchronize()
        return self._host.numpy()


def core_rows(items: list[Any]) -> np.ndarray:
    """The core's public rows for a list of host inputs (one parallel, GIL-free pass)."""
    return core.stats_rows(items)


def sample_stride(numel: int, last_dim: int, cap: int) -> int:
    """A stride for sampling at most about `cap` elements of a flat parameter; odd and coprime
    with the last dimension, so the sample visits every column rather than a few."""
    if numel <= cap:
        return 1
    k = -(-numel // cap)
    k |= 1
    for _ in range(64):
        if math.gcd(k, max(last_dim, 1)) == 1:
            break
        k += 2
    return k
