"""What a probe remembers: the rows it watches and, per sampled step, one matrix of figures.

A *row* is one (name, kind): a module's `activations` or the `gradients` flowing into its output,
or a parameter's `gradients`, `weights` or `updates`. Every sampled step fills one float32
matrix [rows, FIELDS]; rows not seen that step are NaN. The matrices, their steps, the
histograms of the steps that took them and the loss of every step are kept in NumPy arrays of
bounded size: past `capacity` entries every other one is dropped and only every second later
step is kept (the early steps, which matter for init checks, stay). A report is built from this
alone (or from the JSON Lines log, which holds the same figures unthinned).

"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..figures import FIELDS, NF, RATIO, Rows, StepFigures
from . import tensors as T

DERIVED = ("rms", "nonfinite")  # computed from the stored fields on request


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

    def append_step(self, figs: StepFigures) -> None:
        """A judged step: its loss, and its figures and histograms when it was sampled."""
        if figs.loss is not None:
            self.set_loss(figs.step, figs.loss)
        s = figs.sampled
        if s is not None:
            self.append(figs.step, s.mat)
            if s.hists:
                idx = np.array(sorted(s.hists), dtype=np.int64)
                self.add_hist(figs.step, idx, np.stack([s.hists[i] for i in idx]).astype(np.uint64))

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

    def aggregate(self, members: list[int], stat: str) -> np.ndarray:
        """One figure over the sampled steps for several rows merged exactly (a module's own
        parameters); for "ratio" the largest of theirs."""
        mats = self.matrices.astype(np.float64)
        out = np.full(len(mats), np.nan)
        if stat == "ratio":
            with np.errstate(all="ignore"):
                vals = mats[:, members, RATIO]
                ok = ~np.all(np.isnan(vals), axis=1)
                out[ok] = np.nanmax(vals[ok], axis=1)
            return out
        if stat not in FIELDS and stat not in DERIVED:
            raise KeyError(f"unknown stat {stat!r}; known: {', '.join(FIELDS + DERIVED)}")
        for k in range(len(mats)):
            sub = mats[k, members, : T.NFIELDS]
            sub = sub[~np.isnan(sub[:, 0])]
            if not len(sub):
                continue
            m = T.empty_moments(1)
            T.merge_into(m, np.zeros(len(sub), dtype=np.int64), T.public_to_moments(sub))
            agg = T.moments_to_public(m)[0]
            if stat in FIELDS:
                out[k] = agg[FIELDS.index(stat)]
            elif stat == "rms":
                out[k] = T.rms(agg[None, :])[0]
            else:
                out[k] = agg[T.NAN] + agg[T.INF]
        return out

    def last_measured(self, row: int, field: int) -> float | None:
        """The latest finite value of one figure of a row (dead and saturated fractions are only
        measured exactly on some sampled steps)."""
        if row < 0 or not len(self.matrices):
            return None
        col = self.matrices[:, row, field]
        ok = np.isfinite(col)
        return float(col[ok][-1]) if ok.any() else None
