"""What the runtime checks read: a run's *plan* (the watched rows and the model's static facts)
and, for every training step, its *figures* (plain numbers, small arrays and events).

The hooks in `nnprobe.watch` produce a `StepFigures` per step; the checks in `nnprobe.checks`
judge them; the JSON Lines log stores them (`to_json`/`from_json`), so a finished run can be
judged again (`nnprobe check LOG_DIR`) with exactly what the live checks saw.

Torch-free: NumPy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .core import STATS_FIELDS

EXTRA_FIELDS = ("dead", "saturated", "ratio")
FIELDS: tuple[str, ...] = STATS_FIELDS + EXTRA_FIELDS
C: dict[str, int] = {f: i for i, f in enumerate(FIELDS)}
DEAD, SATURATED, RATIO = (C[f] for f in EXTRA_FIELDS)
NF = len(FIELDS)
KINDS = ("activations", "gradients", "weights", "updates")
ROOT = "(root)"  # the name of the watched model itself in findings


@dataclass
class Row:
    """One watched (name, kind): a module's `activations` or the `gradients` reaching its output,
    or a parameter's `gradients`, `weights` or `updates`. `meta` holds what checks need to know
    of it: `unit` (relu/tanh/sigmoid activations), `group` (the parameter's optimizer group),
    `layer` (a >=2-D weight: its gradient joins the gradient-flow check), `ratio` (its update
    ratio is judged), `shape`, `sharded`, `stride` (of the update sample)."""

    name: str
    kind: str
    module: str
    module_type: str
    param: bool
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

    def describe(self) -> list[dict[str, Any]]:
        return [
            {"name": r.name, "kind": r.kind, "module": r.module, "type": r.module_type, "param": r.param,
             **{k: v for k, v in r.meta.items() if isinstance(v, (int, float, str, bool, list, tuple)) or v is None}}
            for r in self.rows
        ]

    @classmethod
    def from_described(cls, described: list[dict[str, Any]]) -> Rows:
        rows = cls()
        for d in described:
            meta = {k: v for k, v in d.items() if k not in ("name", "kind", "module", "type", "param")}
            rows.add(str(d["name"]), str(d["kind"]), str(d.get("module", d["name"])), str(d.get("type", "")),
                     param=bool(d.get("param", False)), **meta)
        return rows


@dataclass
class Plan:
    """The static facts of a watched run: its rows, its modules (qualified name -> class name, in
    registration order), how many optimizer param groups it has, and which modules behave
    differently in train and eval mode."""

    rows: Rows
    modules: dict[str, str]
    groups: int = 0
    sensitive: list[str] = field(default_factory=list)

    def label(self, module: str | None) -> str:
        if module is None:
            return "the model"
        t = self.modules.get(module)
        return f"'{module}' ({t})" if t else f"'{module}'"

    def to_json(self) -> dict[str, Any]:
        return {"rows": self.rows.describe(), "modules": [[n, t] for n, t in self.modules.items()],
                "groups": self.groups, "sensitive": list(self.sensitive)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Plan:
        return cls(Rows.from_described(list(d.get("rows", []))), {str(n): str(t) for n, t in d.get("modules", [])},
                   int(d.get("groups", 0)), [str(s) for s in d.get("sensitive", [])])


@dataclass(frozen=True)
class Event:
    """A fact a hook saw during a step, for the checks: `kind` names it, `data` holds plain JSON
    values. Kinds: "zero-grad" (a backward added into a gradient an optimizer step had used),
    "eval-forward" (a forward without grad while Dropout/BatchNorm were in train mode),
    "nonfinite-loss" (with where the NaN/Inf was located), "loss-input" (figures of a loss
    function's input, for its format), "loss-init" (the first training loss and its class
    count), "outside-grad" (a parameter outside the optimizer got a gradient), "loss-clamp" (an
    upper clamp on the loss and how many examples were above it), "loss-terms" (the loss
    functions one backward summed, with their sizes), "bn-input" (the first pretrained
    BatchNorm's input statistics against its running ones)."""

    kind: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sampled:
    """The heavy figures of a sampled step: `mat` [rows, FIELDS] (NaN where a row was not seen);
    the activation and gradient rows in the order they were seen; ReLU rows ruled out as dead
    cheaply. `judged`: the step was sampled by step count, so checks read it; steps added only
    by the time budget (`every="auto"`) feed the history and the log but not the verdicts, which
    must not depend on the machine's speed."""

    mat: np.ndarray
    act_order: list[int] = field(default_factory=list)
    grad_order: list[int] = field(default_factory=list)
    dead_below: set[int] = field(default_factory=set)
    judged: bool = True
    hists: dict[int, np.ndarray] = field(default_factory=dict)  # row -> log2|x| counts, on some steps
    units: dict[int, str] = field(default_factory=dict)  # rows whose output a functional relu/tanh/sigmoid took


@dataclass
class StepFigures:
    """Everything the checks read of one training step."""

    step: int
    loss: float | None = None
    val_loss: float | None = None  # the mean held-out loss of an evaluation since the previous step
    lrs: tuple[float, ...] | None = None  # every optimizer param group's learning rate (None: no optimizer)
    all_eval: bool = False  # an optimizer step while every train-sensitive module was in eval mode
    events: list[Event] = field(default_factory=list)
    sampled: Sampled | None = None

    def to_json(self, previous_lrs: tuple[float, ...] | None) -> dict[str, Any] | None:
        """The compact log form of everything but the loss and the sampled matrix (which the log
        keeps in its own fields); None when there is nothing to write."""
        out: dict[str, Any] = {}
        if self.val_loss is not None:
            out["val_loss"] = num(self.val_loss)
        if self.lrs is not None and self.lrs != previous_lrs:
            out["lrs"] = [num(v) for v in self.lrs]
        if self.all_eval:
            out["all_eval"] = True
        if self.events:
            out["events"] = [{"kind": e.kind, **jsonable(e.data)} for e in self.events]
        s = self.sampled
        if s is not None:
            out["act_order"] = list(s.act_order)
            out["grad_order"] = list(s.grad_order)
            if s.dead_below:
                out["dead_below"] = sorted(s.dead_below)
            if s.units:
                out["units"] = {str(k): v for k, v in s.units.items()}
            if not s.judged:
                out["judged"] = False
        if not out:
            return None
        out["step"] = self.step
        return out

    @classmethod
    def from_json(cls, step: int, d: dict[str, Any], lrs: tuple[float, ...] | None) -> StepFigures:
        figs = cls(step)
        raw = d.get("lrs")
        figs.lrs = tuple(math.nan if v is None else float(v) for v in raw) if isinstance(raw, list) else lrs
        figs.all_eval = bool(d.get("all_eval", False))
        if "val_loss" in d:
            v = d["val_loss"]
            figs.val_loss = math.nan if v is None else float(v)
        for e in d.get("events", []) or []:
            if isinstance(e, dict) and isinstance(e.get("kind"), str):
                figs.events.append(Event(e["kind"], {k: v for k, v in e.items() if k != "kind"}))
        return figs


def num(v: float) -> float | None:
    """A float for JSON: None where it is not finite, else exactly the value (JSON keeps a
    Python float's repr, which reads back bit for bit: a replay sees what the live checks saw)."""
    return float(v) if math.isfinite(v) else None


def num32(v: float) -> float | None:
    """A float32 figure for JSON in nine significant digits, which read back to the same float32."""
    return float(f"{v:.9g}") if math.isfinite(v) else None


def jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return num(float(obj))
    return str(obj)
