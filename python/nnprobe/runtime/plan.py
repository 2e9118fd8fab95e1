"""Which rows a probe watches, decided once when it opens: the plan.

From the model and its optimizers: the modules whose output (activations) and output gradient
are reduced on sampled steps, every trainable parameter's gradient, weight and update, which
parameters are outside the optimizer, and which modules behave differently in train and eval.
The torch objects stay here (`Watched`); the plain facts go into `figures.Plan`, which the
checks and the log read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..figures import ROOT, Plan, Rows
from . import distributed
from .tensors import local, sample_stride

UPDATE_SAMPLE = 65536  # elements of a parameter kept to measure its update
_PASS_THROUGH = (nn.modules.loss._Loss, nn.modules.dropout._DropoutNd, nn.Identity, nn.Flatten, nn.Unflatten)
_UNITS: tuple[tuple[type[nn.Module] | tuple[type[nn.Module], ...], str], ...] = (
    ((nn.ReLU, nn.ReLU6), "relu"), (nn.Tanh, "tanh"), (nn.Sigmoid, "sigmoid"))


@dataclass
class WatchedModule:
    module: nn.Module
    name: str
    act_row: int  # -1: not watched
    grad_row: int
    unit: str | None


@dataclass
class Watched:
    plan: Plan
    model: nn.Module  # the watched model (the inner one of DDP)
    modules: list[WatchedModule] = field(default_factory=list)
    params: list[tuple[torch.Tensor, str, str]] = field(default_factory=list)  # (param, name, owner)
    grad_rows: list[tuple[torch.Tensor, int]] = field(default_factory=list)
    weight_rows: list[tuple[torch.Tensor, int]] = field(default_factory=list)
    update_rows: list[tuple[torch.Tensor, int, int]] = field(default_factory=list)  # (param, row, sample stride)
    outside: list[tuple[torch.Tensor, str, str]] = field(default_factory=list)  # trainable, not in the optimizer
    in_optimizer: set[int] = field(default_factory=set)  # id() of the parameters in an optimizer
    sensitive: list[tuple[str, nn.Module]] = field(default_factory=list)  # train/eval matters
    train_sensitive: list[tuple[str, nn.Module]] = field(default_factory=list)  # ... and should train
    aux_of: dict[int, int] = field(default_factory=dict)  # update row -> the row of its "before" sample
    # rows (and aux rows) whose figures on this rank repeat another rank's: left out of the merge
    duplicate: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    @property
    def n_aux(self) -> int:
        return len(self.update_rows)


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside DDP/DataParallel and torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) if type(model).__name__ in ("DistributedDataParallel", "DataParallel") \
            else getattr(model, "_orig_mod", None) if type(model).__name__ == "OptimizedModule" else None
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def compiled(model: nn.Module) -> bool:
    """torch.compile(model) or model.compile() (on it or on a wrapper around it)."""
    m = model
    while True:
        if type(m).__name__ == "OptimizedModule" or getattr(m, "_compiled_call_impl", None) is not None:
            return True
        inner = getattr(m, "module", None) if type(m).__name__ in ("DistributedDataParallel", "DataParallel") else None
        if not isinstance(inner, nn.Module):
            return any(getattr(sub, "_compiled_call_impl", None) is not None for sub in unwrap(model).modules())
        m = inner


def make(model: nn.Module, optimizers: list[torch.optim.Optimizer], want: dict[str, bool]) -> Watched:
    inner = unwrap(model)
    named = [(name or ROOT, m) for name, m in inner.named_modules()]
    types = {name: type_name(m) for name, m in named}
    rows = Rows()
    w = Watched(Plan(rows, types), inner)
    for name, m in named:
        # loss modules (a scalar), and modules that only pass their input on or mask it (their
        # figures repeat their neighbours', at the cost of a pass each)
        if isinstance(m, _PASS_THROUGH):
            continue
        if next(m.children(), None) is not None and next(m.parameters(recurse=False), None) is None:
            continue
        unit = next((u for cls, u in _UNITS if isinstance(m, cls)), None)
        arow = rows.add(name, "activations", name, types[name], param=False, unit=unit) if want["activations"] else -1
        # output gradients are of the backward as it ran: a GradScaler's loss scale included (runtime/amp.py)
        grow = rows.add(name, "gradients", name, types[name], param=False, of="backward") if want["gradients"] else -1
        w.modules.append(WatchedModule(m, name, arow, grow, unit))

    groups: dict[int, int] = {}  # id(param) -> flat index of its (optimizer, param group)
    flat = 0
    for opt in optimizers:
        for group in opt.param_groups:
            for p in group["params"]:
                groups.setdefault(id(p), flat)
            flat += 1
    w.plan.groups = flat
    w.in_optimizer = set(groups)
    for pname, p in inner.named_parameters():
        owner = pname.rpartition(".")[0] or ROOT
        otype = types.get(owner, "")
        w.params.append((p, pname, owner))
        if not p.requires_grad:
            continue
        if optimizers and id(p) not in groups:
            w.outside.append((p, pname, owner))
        embedding = otype in ("Embedding", "EmbeddingBag")
        meta = {"shape": list(p.shape), "ndim": p.dim(), "sharded": type(p).__name__ == "DTensor", "group": groups.get(id(p))}
        if want["gradients"]:
            r = rows.add(pname, "gradients", owner, otype, param=True, layer=p.dim() >= 2 and not embedding, **meta)
            w.grad_rows.append((p, r))
        if want["weights"]:
            w.weight_rows.append((p, rows.add(pname, "weights", owner, otype, param=True, **meta)))
        if want["updates"]:
            lp = local(p)
            k = sample_stride(lp.numel(), lp.shape[-1] if lp.dim() else 1, UPDATE_SAMPLE)
            r = rows.add(pname, "updates", owner, otype, param=True, stride=k, ratio=p.dim() >= 2, **meta)
            w.update_rows.append((p, r, k))
    w.aux_of = {r: len(rows) + j for j, (_, r, _) in enumerate(w.update_rows)}
    # parameters held whole on every rank (plain data parallel) merge from rank 0 alone; a DTensor
    # (FSDP2, HSDP) from the ranks at coordinate 0 of every mesh dimension it is not sharded over
    # (HSDP's replicas), so that each element is counted once; see distributed
    rank = distributed.rank()
    dup_of = {id(p): duplicate_on_rank(p, rank) for p, _, _ in w.params}
    duplicate = np.zeros(len(rows) + w.n_aux, dtype=bool)
    for p, r in w.grad_rows + w.weight_rows + [(p, r) for p, r, _ in w.update_rows]:
        duplicate[r] = dup_of[id(p)]
    for j, (p, _, _) in enumerate(w.update_rows):
        duplicate[len(rows) + j] = dup_of[id(p)]
    w.duplicate = duplicate

    for name, m in named:
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
            w.sensitive.append((name, m))
            w.train_sensitive.append((name, m))
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            w.sensitive.append((name, m))
            # a BatchNorm whose affine parameters are frozen is usually kept in eval on purpose
            if not (m.affine and not any(q.requires_grad for q in m.parameters(recurse=False))):
                w.train_sensitive.append((name, m))
        elif isinstance(m, nn.MultiheadAttention) and m.dropout > 0:
            w.sensitive.append((name, m))
            w.train_sensitive.append((name, m))
    w.plan.sensitive = [n for n, _ in w.train_sensitive]
    return w


def duplicate_on_rank(p: torch.Tensor, rank: int) -> bool:
    """Whether this rank's copy of a parameter repeats another rank's."""
    if type(p).__name__ != "DTensor":
        return rank != 0
    coord = p.device_mesh.get_coordinate()  # type: ignore[attr-defined]
    if coord is None:  # this rank holds none of it
        return True
    return any(c != 0 for c, pl in zip(coord, p.placements, strict=True) if not pl.is_shard())  # type: ignore[attr-defined]


def type_name(m: nn.Module) -> str:
    """A module's class name; for a module `fully_shard` wrapped (its class becomes a subclass of
    FSDPModule and the original, named FSDP<name>), the original's, as in the unsharded run."""
    cls = type(m)
    bases = cls.__bases__
    if len(bases) == 2 and bases[0].__name__ == "FSDPModule":
        cls = bases[1]
    return cls.__name__


def learning_rates(optimizers: list[Any]) -> tuple[float, ...]:
    """Every param group's learning rate, in the plan's flat group order (NaN where a group's lr
    is not a number, e.g. a tensor lr on a device: reading it would synchronise)."""
    out: list[float] = []
    for opt in optimizers:
        for group in opt.param_groups:
            lr = group.get("lr")
            out.append(float(lr) if isinstance(lr, (int, float)) else float("nan"))
    return tuple(out)
