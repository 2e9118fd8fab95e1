"""One sampled step's figures while they are being taken, and their merge into one matrix.

Hooks hand tensors to a `StepRecord` as they pass; it reduces each at once (activations can be
modified in place right after their hook: an in-place ReLU rewrites its Linear's output) through
the core, or on the device (see `tensors`). Repeated rows (a shared module called twice, several
micro-batches) merge exactly in moments form. `collect()` gives the merged moments once every
device copy has arrived.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .. import core
from ..figures import DEAD, NF, RATIO, SATURATED
from .tensors import (
    ABSMAX,
    COUNT,
    INF,
    MAX,
    MIN,
    NAN,
    NFIELDS,
    ZEROS,
    Readback,
    core_rows,
    device_moments,
    empty_moments,
    host_input,
    local,
    merge_into,
    moments_to_public,
    public_to_moments,
    rms,
    use_device_path,
)

DEAD_PREFILTER = 0.5  # the dead-unit threshold: fewer zeros than this fraction rule it out
SAT_LEVEL = 0.97  # tanh outputs beyond it, sigmoid outputs outside [1 - it, it], are saturated


class StepRecord:
    def __init__(self, step: int, rows: int, policy: str, *, hist: bool, judged: bool = True) -> None:
        self.step = step
        self.judged = judged  # sampled by step count: the checks read it
        self.rows = rows
        self.policy = policy
        self.hist = hist
        self._pub_idx: list[int] = []
        self._pub: list[np.ndarray] = []
        self._dev_idx: list[int] = []
        self._dev: list[torch.Tensor] = []
        self._latest: dict[int, Any] = {}  # rows whose last value wins (gradients at their last accumulation)
        self.aux: dict[int, int] = {}  # update row -> aux row (the weights sample before the step)
        self.sat: dict[int, Any] = {}  # activation row -> count of saturated elements
        self.alive: dict[int, torch.Tensor] = {}  # ReLU row -> per-unit "was ever non-zero"
        self.dead_known: dict[int, bool] = {}  # ReLU row -> every call was checked per unit
        self.dead_below: set[int] = set()  # ReLU rows with too few zeros to have many dead units
        self.units: dict[int, str] = {}  # rows whose output a functional relu/tanh/sigmoid took
        self.outputs: dict[int, tuple[int, torch.Tensor]] = {}  # id(output) -> (row, output) of watched modules
        self.hists: dict[int, np.ndarray] = {}
        self.act_order: list[int] = []
        self.grad_order: list[int] = []
        self._seen: set[int] = set()
        self.own_time = 0.0
        self.closed = False  # collected: later figures (a late backward) are dropped

    # ---- adding figures
    def _host(self, idx: list[int], xs: list[Any], hist: bool = True) -> np.ndarray:
        if self.hist and hist:
            res = core.stats_many(xs, hist=True)
            pub = np.array([core.public_row(s) for s in res], dtype=np.float64).reshape(len(res), NFIELDS)
            for i, s in zip(idx, res):
                c = s.hist_counts
                if c is not None:
                    prev = self.hists.get(i)
                    self.hists[i] = c.astype(np.uint64) if prev is None else prev + c
        else:
            pub = core_rows(xs)
        return pub

    def add(self, row: int, t: torch.Tensor, *, hist: bool = True) -> np.ndarray | None:
        """Reduce one tensor into `row`; returns its public figures when they are known now."""
        t = local(t)
        if use_device_path(t, self.policy):
            self._dev_idx.append(row)
            self._dev.append(device_moments(t))
            return None
        if t.device.type != "cpu":  # device_stats="copy"
            t = t.detach().to("cpu")
        pub = self._host([row], [host_input(t)], hist)
        self._pub_idx.append(row)
        self._pub.append(pub)
        return pub[0]

    def add_many(self, rows: list[int], ts: list[torch.Tensor], *, hist: bool = True) -> None:
        """Reduce many tensors: the host ones in one parallel core call (histograms, on the steps
        that take them, only when `hist`)."""
        hidx: list[int] = []
        hxs: list[Any] = []
        for row, t in zip(rows, ts):
            t = local(t)
            if use_device_path(t, self.policy):
                self._dev_idx.append(row)
                self._dev.append(device_moments(t))
                continue
            if t.device.type != "cpu":
                t = t.detach().to("cpu")
            hidx.append(row)
            hxs.append(host_input(t))
        if not hxs:
            return
        # one core call for the whole batch: below the core's SEQUENTIAL_MAX elements it runs on
        # this thread (no pool wake-up while torch's threads hold the cores), with one GIL release
        pub = self._host(hidx, hxs, hist)
        self._pub_idx.extend(hidx)
        self._pub.append(pub)

    def set_latest(self, row: int, t: torch.Tensor) -> None:
        """Figures of `row` where only the last call counts (a gradient as accumulation goes on)."""
        t = local(t)
        if use_device_path(t, self.policy):
            self._latest[row] = device_moments(t)
        else:
            if t.device.type != "cpu":
                t = t.detach().to("cpu")
            self._latest[row] = self._host([row], [host_input(t)])[0]

    def seen_act(self, row: int) -> None:
        if row not in self._seen:
            self._seen.add(row)
            self.act_order.append(row)

    def seen_grad(self, row: int) -> None:
        if row not in self._seen:
            self._seen.add(row)
            self.grad_order.append(row)

    def add_count(self, table: dict[int, Any], row: int, value: Any) -> None:
        prev = table.get(row)
        table[row] = value if prev is None else prev + value

    def unit_stats(self, row: int, unit: str, t: torch.Tensor, pub: np.ndarray | None) -> None:
        """Dead units (ReLU) or saturated outputs (tanh, sigmoid) of one activation."""
        x = t.detach()
        if unit == "relu":
            self._dead_units(row, x, pub)
            return
        if pub is not None:  # the core's figures already rule saturation out
            if unit == "tanh" and not (pub[ABSMAX] >= SAT_LEVEL):
                self.add_count(self.sat, row, 0.0)
                return
            if unit == "sigmoid" and pub[MIN] > 1 - SAT_LEVEL and pub[MAX] < SAT_LEVEL:
                self.add_count(self.sat, row, 0.0)
                return
        if unit == "tanh":
            cnt = (x.abs() > SAT_LEVEL).sum()
        else:
            cnt = ((x < 1 - SAT_LEVEL) | (x > SAT_LEVEL)).sum()
        self.add_count(self.sat, row, cnt if cnt.device.type != "cpu" else float(cnt))

    def _dead_units(self, row: int, x: torch.Tensor, pub: np.ndarray | None) -> None:
        if x.dim() < 2:
            self.dead_known[row] = False
            return
        dims: tuple[int, ...]
        if x.dim() == 2:
            dims, units = (0,), x.shape[1]
        elif x.dim() == 3:  # (batch, time, features)
            dims, units = (0, 1), x.shape[2]
        else:  # (batch, channels, spatial...)
            dims, units = (0,) + tuple(range(2, x.dim())), x.shape[1]
        if units == 0 or x.numel() // units < 8:
            self.dead_known[row] = False  # too few examples per unit to call one dead
            return
        if pub is not None and not self.hist:
            # cheap ways to rule dead units out on the host (the exact fraction is still measured
            # on histogram steps, for the report): fewer zeros than the threshold means fewer dead
            # units; units alive on the first 8 examples are alive
            below = pub[ZEROS] < DEAD_PREFILTER * pub[COUNT]
            if not below and x.shape[0] > 8:
                below = int((x[:8].amax(dim=dims) > 0).sum()) >= (1 - DEAD_PREFILTER) * units
            if below:
                self.dead_below.add(row)
                self.dead_known[row] = False
                return
        # a ReLU's output is >= 0: a unit is alive where its maximum over the batch is > 0
        # (one reduction, no boolean temporary)
        alive = x.amax(dim=dims) > 0
        prev = self.alive.get(row)
        if prev is None:
            self.alive[row] = alive
            self.dead_known.setdefault(row, True)
        elif prev.shape == alive.shape:
            self.alive[row] = prev | alive
        else:
            self.dead_known[row] = False

    def functional_unit(self, x: Any, unit: str, out: torch.Tensor) -> None:
        """`out = relu/tanh/sigmoid(x)` called as a function: when `x` is a watched module's
        output, its units are judged under that module's row."""
        entry = self.outputs.get(id(x))
        if entry is None or entry[1] is not x:
            return
        row = entry[0]
        self.units[row] = unit
        self.unit_stats(row, unit, out, None)

    def forget_functional(self, x: Any) -> None:
        """A ReLU/Tanh/Sigmoid *module* took `x`: its own row judges the units, not the producer's."""
        entry = self.outputs.get(id(x))
        if entry is not None and entry[1] is x and self.units.pop(entry[0], None) is not None:
            row = entry[0]
            for table in (self.alive, self.dead_known, self.sat):
                table.pop(row, None)

    # ---- merging
    def collect(self, n_aux: int) -> Collected:
        """Start the merge; device figures are copied to the host without blocking."""
        dev_rows = list(self._dev)
        dev_idx = list(self._dev_idx)
        latest_host: list[tuple[int, np.ndarray]] = []
        for row, v in self._latest.items():
            if isinstance(v, torch.Tensor):
                dev_rows.append(v)
                dev_idx.append(row)
            else:
                latest_host.append((row, v))
        scalars: list[tuple[str, int, Any]] = []
        dead: dict[int, Any] = {}
        for row, alive in self.alive.items():
            if self.dead_known.get(row, False):
                dead[row] = 1.0 - alive.float().mean()
        for table, name in ((self.sat, "sat"), (dead, "dead")):
            for row, v in table.items():
                scalars.append((name, row, v))
        dev_scalars = [v for _, _, v in scalars if isinstance(v, torch.Tensor) and v.device.type != "cpu"]
        readback = None
        if dev_rows or dev_scalars:
            device = (dev_rows or dev_scalars)[0].device
            parts = [torch.stack(dev_rows).reshape(-1)] if dev_rows else []
            parts += [v.reshape(1).to(device=device, dtype=torch.float64) for v in dev_scalars]
            readback = Readback(torch.cat(parts))
        return Collected(self, n_aux, dev_idx, len(dev_rows), latest_host, scalars, readback)


class Collected:
    """A step's figures on their way to the host; `ready()` without waiting, `get()` merges."""

    def __init__(self, rec: StepRecord, n_aux: int, dev_idx: list[int], n_dev: int,
                 latest_host: list[tuple[int, np.ndarray]], scalars: list[tuple[str, int, Any]], readback: Readback | None) -> None:
        self.rec = rec
        self.n_aux = n_aux
        self.dev_idx = dev_idx
        self.n_dev = n_dev
        self.latest_host = latest_host
        self.scalars = scalars
        self.readback = readback

    @property
    def on_device(self) -> bool:
        return self.readback is not None

    def ready(self) -> bool:
        return self.readback is None or self.readback.ready()

    def get(self) -> tuple[np.ndarray, dict[int, float], dict[int, float]]:
        """(moments [rows + aux, 11], saturated counts per row, dead fraction per row)."""
        rec = self.rec
        acc = empty_moments(rec.rows + self.n_aux)
        if rec._pub:
            pub = np.concatenate(rec._pub, axis=0)
            merge_into(acc, np.asarray(rec._pub_idx, dtype=np.int64), public_to_moments(pub))
        if self.latest_host:
            idx = np.array([r for r, _ in self.latest_host], dtype=np.int64)
            pub = np.stack([v for _, v in self.latest_host])
            merge_into(acc, idx, public_to_moments(pub))
        flat = self.readback.get() if self.readback is not None else np.zeros(0)
        if self.n_dev:
            m = flat[: self.n_dev * NFIELDS].reshape(self.n_dev, NFIELDS)
            merge_into(acc, np.asarray(self.dev_idx, dtype=np.int64), m)
        pos = self.n_dev * NFIELDS
        sat: dict[int, float] = {}
        dead: dict[int, float] = {}
        for name, row, v in self.scalars:
            if isinstance(v, torch.Tensor) and v.device.type != "cpu":
                val = float(flat[pos])
                pos += 1
            else:
                val = float(v)
            (sat if name == "sat" else dead)[row] = val
        return acc, sat, dead


def finite_count(m: np.ndarray) -> np.ndarray:
    return m[:, COUNT] - m[:, NAN] - m[:, INF]


def figures_matrix(moments: np.ndarray, sat: np.ndarray, dead: np.ndarray, rec: StepRecord,
                   units: list[tuple[int, str | None]], R: int) -> np.ndarray:
    """A sampled step's figures [rows, FIELDS] from its merged moments: the public statistics,
    the dead and saturated fractions of unit rows, the update/weight ratios."""
    pub = moments_to_public(moments)
    present = moments[:R, COUNT] > 0
    mat = np.full((R, NF), np.nan)
    mat[present, :NFIELDS] = pub[:R][present]
    fin = moments[:R, COUNT] - moments[:R, NAN] - moments[:R, INF]
    for row, unit in [*units, *rec.units.items()]:
        if unit is None or row < 0 or not present[row]:
            continue
        if unit == "relu":
            mat[row, DEAD] = dead[row]
        elif fin[row] > 0:
            mat[row, SATURATED] = sat[row] / fin[row]
    if rec.aux:
        urows = np.fromiter(rec.aux.keys(), dtype=np.int64)
        arows = np.fromiter(rec.aux.values(), dtype=np.int64)
        rms_all = rms(pub)
        w, u = rms_all[arows], rms_all[urows]
        # weights still about zero (a bias at init) have no meaningful ratio
        ok = present[urows] & np.isfinite(w) & (w > 1e-6) & np.isfinite(u)
        mat[urows[ok], RATIO] = u[ok] / w[ok]
    return mat
