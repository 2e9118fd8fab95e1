"""Runtime findings judged from the sampled figures and the loss (what `watch` reports).

Every threshold below is chosen to keep a clean, correct training loop silent (a false alarm is
as bad as a miss) and is cited in the catalogue's explain() text. Judgements that could flicker
on one noisy batch need a *persistent* condition: several sampled steps in a row, or the median
of a window.

Cheap, every-step checks (zero_grad, train/eval mode, parameters outside the optimizer, a
non-finite loss) live in the probe itself, next to the hooks that see them; loss-input checks
live in `losses.py`.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np

from ..history import DEAD, FIELDS, RATIO, SATURATED

_C = {f: i for i, f in enumerate(FIELDS)}

# dead-units: more than half a ReLU layer's units output zero for every example of the batch, on
# DEAD_STEPS sampled steps in a row (SageMaker DeadRelu: threshold_layer 50%; AUTOTRAINER and
# DeepDiagnosis: 70%). Units need enough examples to be judged (see the probe: >= 8 per unit).
DEAD_FRACTION = 0.5
DEAD_STEPS = 3
# saturated-activations: more than half of a tanh's outputs beyond |0.97| (a sigmoid's below 0.03
# or above 0.97), SAT_STEPS sampled steps in a row (Karpathy's |t| > 0.97; SageMaker and
# DeepDiagnosis flag a layer at 50%).
SAT_LEVEL = 0.97
SAT_FRACTION = 0.5
SAT_STEPS = 3
# update-ratio: the median of rms(update)/rms(weight) over the last RATIO_WINDOW sampled steps of
# a >= 2-D weight, outside [RATIO_LOW, RATIO_HIGH] (SPEC: flag only persistent departures far
# from ~1e-3; Adam's ~1e-2 is fine). Weights with rms below RATIO_MIN_RMS are skipped.
RATIO_LOW = 1e-5
RATIO_HIGH = 1e-1
RATIO_WINDOW = 10
RATIO_MIN_RMS = 1e-6
RATIO_SETTLED = 1.5
# exploding/vanishing gradients: the rms gradient of the first weight layer (in forward order)
# over the last one's, on GRAD_STEPS sampled steps in a row. AUTOTRAINER uses gradient-norm
# ratios of 70 and 1e-3; norms grow with layer size, so nnprobe compares rms values and keeps a
# wider margin, measured on clean MLPs, CNNs and transformers (all within 1e-2..1e2).
EXPLODE_RATIO = 1e3
VANISH_RATIO = 1e-4
# ... or the global gradient norm grows EXPLODE_GROWTH-fold over its median on the first sampled steps
EXPLODE_GROWTH = 1e4
GRAD_STEPS = 3
# param-never-updated: the weights' figures are bit-identical after NEVER_STEPS optimizer steps
NEVER_STEPS = 5
# loss-not-decreasing: after LOSS_MIN steps, the median loss of the last window is no lower than
# that of the first window (SageMaker LossNotDecreasing compares with 10 steps earlier; a
# converged run is far below its start and stays silent).
LOSS_MIN = 20
LOSS_REL = 0.01


def _rms(row: np.ndarray) -> float:
    n = row[_C["count"]] - row[_C["nan"]] - row[_C["inf"]]
    return float(row[_C["l2"]] / math.sqrt(n)) if n > 0 else math.nan


def _nonfinite(row: np.ndarray) -> int:
    return int(row[_C["nan"]] + row[_C["inf"]])


class RuntimeChecks:
    def __init__(self, probe: Any) -> None:
        self._p = probe
        self._streak: dict[tuple[str, int], int] = {}
        self._ratios: dict[int, deque[tuple[float, float | None, float]]] = {}
        self._first_weights: dict[int, tuple[int, np.ndarray]] = {}
        self._updated: set[int] = set()
        self._norm0: list[float] = []
        self._losses_seen = 0
        self._loss: list[tuple[int, float, float]] = []

    def _persist(self, key: tuple[str, int], cond: bool) -> int:
        n = self._streak.get(key, 0) + 1 if cond else 0
        self._streak[key] = n
        return n

    # ------------------------------------------------------------------ sampled steps
    def on_record(self, step: int, mat: np.ndarray, act_order: list[int], grad_order: list[int],
                  dead_below: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        self._nonfinite(step, mat, act_order, grad_order)
        self._units(step, mat, dead_below)
        self._gradients(step, mat, act_order)
        self._update_ratio(step, mat)
        self._never_updated(step, mat)

    def _nonfinite(self, step: int, mat: np.ndarray, act_order: list[int], grad_order: list[int]) -> None:
        p = self._p
        rows = p._rows.rows
        if not np.nansum(mat[:, _C["nan"]] + mat[:, _C["inf"]]):
            return
        for i in act_order:
            if rows[i].kind == "activations" and _nonfinite(mat[i]):
                r = mat[i]
                p._emit("non-finite", f"the output of {p._label(rows[i].module)} holds {int(r[_C['nan']])} NaN and "
                        f"{int(r[_C['inf']])} Inf in forward; the layers before it were finite",
                        rows[i].module, step, {"phase": "forward", "nan": int(r[_C["nan"]]), "inf": int(r[_C["inf"]])})
                return
        bad = [k for k, i in enumerate(grad_order) if _nonfinite(mat[i])]
        if bad:
            k = bad[0]
            if k > 0:
                origin = rows[grad_order[k - 1]].module
                msg = (f"the backward of {p._label(origin)} turned a finite gradient into NaN/Inf (the gradient "
                       f"reaching {p._label(rows[grad_order[k]].module)}'s output is non-finite)")
            else:
                origin = rows[grad_order[k]].module
                msg = f"the gradient reaching {p._label(origin)}'s output is already non-finite: it comes from the loss"
            p._emit("non-finite", msg, origin, step, {"phase": "backward"})
            return
        pgrads = [i for i, r in enumerate(rows) if r.param and r.kind == "gradients" and not np.isnan(mat[i, 0]) and _nonfinite(mat[i])]
        if pgrads:
            pos = p._module_position
            i = max(pgrads, key=lambda j: pos(rows[j].module))
            p._emit("non-finite", f"the gradient of {rows[i].name} holds {_nonfinite(mat[i])} NaN/Inf values "
                    f"({len(pgrads)} parameters affected); it is the one closest to the loss",
                    rows[i].module, step, {"phase": "backward", "param": rows[i].name, "params_affected": len(pgrads)})
            return
        weights = [i for i, r in enumerate(rows) if r.kind == "weights" and not np.isnan(mat[i, 0]) and _nonfinite(mat[i])]
        if weights:
            i = weights[0]
            p._emit("non-finite", f"the weights of {rows[i].name} hold {_nonfinite(mat[i])} NaN/Inf values",
                    rows[i].module, step, {"phase": "weights", "param": rows[i].name})

    def _units(self, step: int, mat: np.ndarray, dead_below: set[int]) -> None:
        p = self._p
        rows = p._rows.rows
        for i, unit in p._row_unit.items():
            r = rows[i]
            if unit == "relu":
                dead = mat[i, DEAD]
                if i in dead_below:
                    self._persist(("dead", i), False)  # fewer zeros than the threshold: not dead
                    continue
                if np.isnan(dead):
                    continue  # not judged this step (too few examples per unit)
                n = self._persist(("dead", i), dead > DEAD_FRACTION)
                if n >= DEAD_STEPS:
                    p._emit("dead-units", f"{dead:.0%} of the units of {p._label(r.module)} output zero for every "
                            f"example, {n} sampled steps in a row (flagged above {DEAD_FRACTION:.0%})",
                            r.module, step, {"dead_fraction": float(dead), "steps_in_a_row": n})
            elif unit in ("tanh", "sigmoid"):
                sat = mat[i, SATURATED]
                if np.isnan(sat):
                    continue
                n = self._persist(("sat", i), sat > SAT_FRACTION)
                if n >= SAT_STEPS:
                    where = "beyond +-0.97" if unit == "tanh" else "below 0.03 or above 0.97"
                    p._emit("saturated-activations", f"{sat:.0%} of the outputs of {p._label(r.module)} ({unit}) are "
                            f"{where}, {n} sampled steps in a row (flagged above {SAT_FRACTION:.0%})",
                            r.module, step, {"saturated_fraction": float(sat), "steps_in_a_row": n})

    def _gradients(self, step: int, mat: np.ndarray, act_order: list[int]) -> None:
        p = self._p
        rows = p._rows.rows
        layers = [i for i in p._layer_grad_rows if not np.isnan(mat[i, 0]) and _nonfinite(mat[i]) == 0]
        if len(layers) < 2:
            return
        pos = p._module_position
        layers.sort(key=lambda j: pos(rows[j].module))
        first, last = layers[0], layers[-1]
        g_first, g_last = _rms(mat[first]), _rms(mat[last])
        # the global norm, for growth over time
        norm = float(np.sqrt(np.sum(mat[layers, _C["l2"]].astype(np.float64) ** 2)))
        if len(self._norm0) < 3:
            if norm > 0:
                self._norm0.append(norm)
            growth = 1.0
        else:
            growth = norm / float(np.median(self._norm0))
        if g_last > 0 and g_first > 0 and math.isfinite(g_first / g_last):
            ratio = g_first / g_last
        else:
            ratio = math.nan
        n_ratio = self._persist(("explode-ratio", 0), ratio > EXPLODE_RATIO)
        n_growth = self._persist(("explode-growth", 0), growth > EXPLODE_GROWTH)
        # a diverging run goes from a 1e4-fold growth to Inf in a few steps: two sampled steps suffice
        if n_ratio >= GRAD_STEPS or n_growth >= 2 or growth > 100 * EXPLODE_GROWTH:
            n = max(n_ratio, n_growth)
            if growth > EXPLODE_GROWTH:
                msg = (f"the gradient norm is {norm:.3g}, {growth:.3g}x its value on the first sampled steps, "
                       f"{n} sampled steps in a row")
                where = rows[first].module
            else:
                msg = (f"the rms gradient of {rows[first].name} ({g_first:.3g}) is {ratio:.3g}x that of "
                       f"{rows[last].name} ({g_last:.3g}), {n} sampled steps in a row (flagged above {EXPLODE_RATIO:g}x)")
                where = rows[first].module
            p._emit("exploding-gradients", msg, where, step,
                    {"ratio_first_last": ratio, "growth": growth, "grad_norm": norm, "first": rows[first].name, "last": rows[last].name})
        n = self._persist(("vanish", 0), ratio < VANISH_RATIO)
        if n >= GRAD_STEPS:
            p._emit("vanishing-gradients",
                    f"the rms gradient of {rows[first].name} ({g_first:.3g}) is {ratio:.3g}x that of {rows[last].name} "
                    f"({g_last:.3g}), {n} sampled steps in a row (flagged below {VANISH_RATIO:g}x): the early layers barely learn",
                    rows[first].module, step, {"ratio_first_last": ratio, "first": rows[first].name, "last": rows[last].name})

    def _update_ratio(self, step: int, mat: np.ndarray) -> None:
        p = self._p
        rows = p._rows.rows
        for i in p._ratio_rows:
            w = p._rows.find(rows[i].name, "weights")
            scale = _rms(mat[w]) if w is not None and not np.isnan(mat[w, 0]) else math.nan
            ratio = float(mat[i, RATIO])
            if not math.isfinite(ratio) or ratio <= 0:
                continue  # not updated this step (no gradient), or weights about zero
            lr = p._lr_of(rows[i].name)
            q = self._ratios.setdefault(i, deque(maxlen=RATIO_WINDOW))
            q.append((ratio, lr, scale))
            if len(q) < RATIO_WINDOW:
                continue
            med = _median([a for a, _, _ in q])
            lrs = [b for _, b, _ in q if b is not None]
            # a weight that is still growing (from zero, or from a deliberately small init such as a
            # scaled-down output layer) has a large ratio that falls as it grows: "too high" is judged
            # once its scale grew less than RATIO_SETTLED-fold over the window
            settled = not (q[0][2] > 0 and q[-1][2] > RATIO_SETTLED * q[0][2])
            if med > RATIO_HIGH and settled:
                p._emit("update-ratio", f"rms(update)/rms(weight) of {rows[i].name} has a median of {med:.3g} over the "
                        f"last {RATIO_WINDOW} sampled steps (flagged above {RATIO_HIGH:g}; ~1e-3 is typical): "
                        f"the learning rate{_lr_text(lrs)} is too high for this layer",
                        rows[i].module, step, {"param": rows[i].name, "median_ratio": med, "direction": "high", "lr": lrs[-1] if lrs else None})
            elif med < RATIO_LOW:
                # a schedule that anneals or warms up the rate moves the ratio on purpose
                steady = bool(lrs) and max(lrs) <= 2 * min(lrs) and lrs[-1] >= 0.1 * p._lr_max(rows[i].name)
                if steady:
                    p._emit("update-ratio", f"rms(update)/rms(weight) of {rows[i].name} has a median of {med:.3g} over "
                            f"the last {RATIO_WINDOW} sampled steps (flagged below {RATIO_LOW:g}; ~1e-3 is typical): "
                            f"the learning rate{_lr_text(lrs)} is too low for this layer",
                            rows[i].module, step, {"param": rows[i].name, "median_ratio": med, "direction": "low", "lr": lrs[-1]})

    def _never_updated(self, step: int, mat: np.ndarray) -> None:
        p = self._p
        rows = p._rows.rows
        cols = [_C[c] for c in ("min", "max", "mean", "std", "l2")]
        for i in p._never_rows:
            if i in self._updated or np.isnan(mat[i, 0]):
                continue
            figs = mat[i, cols].copy()
            first = self._first_weights.get(i)
            if first is None:
                self._first_weights[i] = (step, figs)
                continue
            if not np.array_equal(figs, first[1], equal_nan=True):
                self._updated.add(i)
                continue
            if step - first[0] >= NEVER_STEPS:
                name = rows[i].name
                g = p._rows.find(name, "gradients")
                lr = p._lr_of(name)
                if lr == 0:
                    why = "its learning rate is 0"
                elif g is None or np.isnan(mat[g, 0]):
                    why = "no gradient reaches it (unused in forward, or a detached branch)"
                elif mat[g, _C["absmax"]] == 0:
                    why = "its gradient is exactly zero"
                else:
                    why = "its gradient is not applied"
                p._emit("param-never-updated", f"{name} is in the optimizer but has not changed in {step - first[0]} "
                        f"steps: {why}", rows[i].module, step, {"param": name, "since_step": first[0], "reason": why})

    # ------------------------------------------------------------------ the loss
    def on_loss(self, step: int, value: float, lr: float) -> None:
        ls = self._loss
        if ls and ls[-1][0] == step:
            ls[-1] = (step, value, lr)  # probe.step(loss) after the observed value: it wins
        else:
            ls.append((step, value, lr))
            if len(ls) > 100_000:  # keep every other one: the windows scale with the length anyway
                self._loss = ls = ls[::2]
                self._losses_seen = len(ls)
        n = len(ls)
        # judged every 10 losses early on, then every n/10: the cost per step stays tiny
        if n < LOSS_MIN or n - self._losses_seen < max(10, n // 10):
            return
        self._losses_seen = n
        arr = np.array(ls, dtype=np.float64)
        steps, values, lrs = arr[:, 0], arr[:, 1], arr[:, 2]
        if not np.isfinite(values).all():
            return  # the non-finite check speaks
        # under a warm-up the loss is judged from where the rate reached half its present value
        k0 = 0
        if np.isfinite(lrs[-1]) and lrs[-1] > 0:
            reached = np.nonzero(np.nan_to_num(lrs, nan=0.0) >= 0.5 * lrs[-1])[0]
            k0 = int(reached[0]) if len(reached) else n
        span = n - k0
        if span < LOSS_MIN:
            return
        w = max(10, span // 5)
        first = float(np.median(values[k0 : k0 + w]))
        last = float(np.median(values[-w:]))
        if abs(first) < 1e-6:
            return
        if last >= first - LOSS_REL * abs(first):
            self._p._emit("loss-not-decreasing",
                          f"the median loss of the last {w} steps is {last:.4g}, against {first:.4g} over the first {w} "
                          f"(steps {int(steps[k0])}..{int(steps[-1])}): no progress",
                          None, step, {"first_median": first, "last_median": last, "window": w, "steps": n})


def _median(xs: list[float]) -> float:
    ys = sorted(xs)
    n = len(ys)
    return ys[n // 2] if n % 2 else 0.5 * (ys[n // 2 - 1] + ys[n // 2])


def _lr_text(lrs: list[float]) -> str:
    return f" ({lrs[-1]:.3g})" if lrs else ""
