"""What a probe remembers: the rows it watches and, per sampled step, one matrix of figures.

A *row* is one (name, kind): a module's `activations` or the `gradients` flowing into its output,
or a parameter's `gradients`, `weights` or `updates`. Every sampled step fills one float32
matrix [rows, FIELDS]; rows not seen that step are NaN. The matrices, their steps, the
histograms of the steps that took them and the loss of every step are kept in NumPy arrays of
bounded size: past `capacity` entries every other one is dropped and only every second later
step is kept (the early steps, which matter for init checks, stay). A report is built from this
alone (or from the JSON Lines log, which holds the same figures unthinned).

Torch-free: NumPy only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .primitives import STATS_FIELDS

EXTRA_FIELDS = ("dead", "saturated", "ratio")
FIELDS: tuple[str, ...] = STATS_FIELDS + EXTRA_FIELDS
DEAD, SATURATED, RATIO = (len(STATS_FIELDS) + i for i in range(3))
NF = len(FIELDS)
KINDS = ("activations", "gradients", "weights", "updates")
DERIVED = ("rms", "nonfinite")  # computed from the stored fields on request


@dataclass
class Row:
    name: str  # a module's or a parameter's qualified name
    kind: str  # one of KINDS
    module: str  # the module it belongs to (itself for activations)
    module_type: str
    param: bool  # a parameter row (replicated across data-parallel ranks unless sharded)
    meta: dict[str, Any] = field(default_factory=dict)


class Rows:
    """The registry of rows: fixed when the probe starts, the same on every rank."""

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.index: dict[tuple[str, str], int] = {}

    def add(self, name: str, kind: str, module: str, module_type: str, *, param: bool, **meta: Any) -> int:
        key = (name, kind)
        if key in self.index:
            return self.index[key]
        self.index[key] = len(self.rows)
        self.rows.append(Row(name, kind, module, module_type, param, dict(meta)))
        return self.index[key]

    def __len__(self) -> int:
        return len(self.rows)

    def find(self, name: str, kind: str) -> int | None:
        return self.index.get((name, kind))

    def of_module(self, module: str, kind: str, *, param: bool) -> list[int]:
        return [i for i, r in enumerate(self.rows) if r.module == module and r.kind == kind and r.param == param]

    def describe(self) -> list[dict[str, Any]]:
        return [
            {"name": r.name, "kind": r.kind, "module": r.module, "type": r.module_type, "param": r.param,
             **{k: v for k, v in r.meta.items() if isinstance(v, (int, float, str, bool, list, tuple))}}
            for r in self.rows
        ]


class _Growing:
    """An append-only array with doubling growth and thinning at a capacity."""

    def __init__(self, shape: tuple[int, ...], dtype: Any, capacity: int, fill: float = 0.0) -> None:
        self.capacity = capacity
        self.fill = fill
        self.data = np.full((min(16, capacity),) + shape, fill, dtype=dtype)
        self.steps = np.zeros(min(16, capacity), dtype=np.int64)
        self.n = 0
        self.stride = 1  # keep one offered entry in `stride`
        self._offered = 0

    def offer(self, step: int, value: Any) -> bool:
        keep = self._offered % self.stride == 0
        self._offered += 1
        if not keep:
            return False
        if self.n == len(self.steps):
            if self.n >= self.capacity:
                # thin: keep every other entry (the first ones included)
                self.data[: self.n // 2] = self.data[0 : self.n : 2][: self.n // 2]
                self.steps[: self.n // 2] = self.steps[0 : self.n : 2][: self.n // 2]
                self.n //= 2
                self.stride *= 2
                self._offered = 1
            else:
                grow = min(2 * len(self.steps), self.capacity)
                data = np.full((grow,) + self.data.shape[1:], self.fill, dtype=self.data.dtype)
                data[: self.n] = self.data[: self.n]
                steps = np.zeros(grow, dtype=np.int64)
                steps[: self.n] = self.steps[: self.n]
                self.data, self.steps = data, steps
        self.steps[self.n] = step
        self.data[self.n] = value
        self.n += 1
        return True

    def replace_last(self, step: int, value: Any) -> bool:
        if self.n and self.steps[self.n - 1] == step:
            self.data[self.n - 1] = value
            return True
        return False


class History:
    """Per-step figures of every row, the loss of every step, histograms of some steps."""

    def __init__(self, rows: Rows, *, capacity: int = 2048, loss_capacity: int = 1 << 20, hist_capacity: int = 256) -> None:
        self.rows = rows
        self._mats = _Growing((len(rows), NF), np.float32, capacity, np.nan)
        # plain lists: an append per step costs far less than a NumPy write
        self._loss_steps: list[int] = []
        self._loss_values: list[float] = []
        self._loss_capacity = loss_capacity
        self._hist_capacity = hist_capacity
        self.hists: list[tuple[int, np.ndarray, np.ndarray]] = []  # (step, row indices, counts [k, 64])

    # writing
    def append(self, step: int, mat: np.ndarray) -> None:
        self._mats.offer(step, mat)

    def set_loss(self, step: int, value: float) -> bool:
        """Record a step's loss; True when it replaced the one already there for that step."""
        steps = self._loss_steps
        if steps and steps[-1] == step:
            self._loss_values[-1] = value
            return True
        steps.append(step)
        self._loss_values.append(value)
        if len(steps) > self._loss_capacity:  # keep every other one
            self._loss_steps = steps[::2]
            self._loss_values = self._loss_values[::2]
        return False

    def add_hist(self, step: int, rows: np.ndarray, counts: np.ndarray) -> None:
        if len(self.hists) >= self._hist_capacity:
            self.hists = self.hists[::2]
        self.hists.append((step, rows, counts))

    # reading
    @property
    def steps(self) -> np.ndarray:
        return self._mats.steps[: self._mats.n].copy()

    @property
    def matrices(self) -> np.ndarray:
        """[sampled steps, rows, FIELDS] float32."""
        return self._mats.data[: self._mats.n]

    def losses(self) -> tuple[np.ndarray, np.ndarray]:
        return np.array(self._loss_steps, dtype=np.int64), np.array(self._loss_values, dtype=np.float64)

    def last(self, row: int) -> np.ndarray | None:
        """The latest sampled figures of a row that was seen, or None."""
        mats = self.matrices
        for i in range(len(mats) - 1, -1, -1):
            if not np.isnan(mats[i, row, 0]):
                return mats[i, row]
        return None

    def column(self, row: int, stat: str) -> np.ndarray:
        mats = self.matrices
        if stat in FIELDS:
            return mats[:, row, FIELDS.index(stat)].astype(np.float64)
        m = mats[:, row].astype(np.float64)
        n = m[:, 0] - m[:, 1] - m[:, 2]
        if stat == "rms":
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.where(n > 0, m[:, FIELDS.index("l2")] / np.sqrt(np.where(n > 0, n, 1)), np.nan)
        if stat == "nonfinite":
            return m[:, 1] + m[:, 2]
        raise KeyError(f"unknown stat {stat!r}; known: {', '.join(FIELDS + DERIVED)}")
