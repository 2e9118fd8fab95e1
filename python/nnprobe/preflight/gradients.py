"""`check_gradients()`: the analytic gradient against finite differences ("use gradient checking
to check for these errors by approximating the gradient using a numerical approach").

On a float64 deep copy of the model in eval mode (the model itself is not touched; the random
state is forked, and reseeded before every evaluation so that any randomness repeats):

- which modules hold a custom `torch.autograd.Function`: one forward with hooks on every module;
  the custom nodes in the graph between each module's inputs and its output belong to the
  innermost module that made them. Those modules are checked one by one, on the inputs they got
  in that forward, in the order they ran; when there are none, the whole model is checked.
- a module's check: f(params, inputs) = sum(output * R) for a fixed random R, a scalar that
  depends on every output element. Its analytic derivative along a random direction v (over the
  module's parameters and floating inputs) is <grad f, v>, from one backward; the numerical one
  is (f(x + h v) - f(x - h v)) / 2h, two forwards: the cost does not grow with the number of
  parameters. DIRECTIONS directions; h = H_REL * max(1, rms of the variables).
- they disagree when |numerical - analytic| > rtol * max(|numerical|, |analytic|) plus a floor
  for rounding (ATOL_REL of the summed magnitudes |grad_i v_i|, and a few float64 epsilons of
  |f| / h); a disagreement must
  hold at h and at h / 10, so that a ReLU kink crossed by one step does not count. float64
  central differences agree to about 1e-8 relative; a wrong backward is off by O(1).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError
from ..findings import CATALOGUE, Finding, Report

DIRECTIONS = 3
H_REL = 1e-6
ATOL_REL = 1e-8
ROUNDING = 1e-15  # a few float64 epsilons


@dataclass
class ModuleGradient:
    """The check of one module: the worst relative error over the directions, and each
    direction's (analytic, numerical) derivative."""

    name: str
    type: str
    error: float
    ok: bool
    derivatives: list[tuple[float, float]] = field(default_factory=list)


class GradientReport(Report):
    title = "gradient check"

    def __init__(self, findings: list[Finding], checked: list[ModuleGradient], notes: list[str]) -> None:
        super().__init__(findings)
        self.checked = checked
        self.notes = notes

    def details(self) -> list[str]:
        lines = [f"'{c.name}' ({c.type}): largest relative error {c.error:.2g} over {len(c.derivatives)} directions"
                 + ("" if c.ok else " (WRONG)") for c in self.checked]
        return lines + self.notes


def _torch() -> Any:
    import torch

    return torch


def check_gradients(model: Any, *inputs: Any, rtol: float = 1e-3, directions: int = DIRECTIONS, seed: int = 0) -> GradientReport:
    """Compares `model`'s backward with central finite differences on a float64 copy: module by
    module for the modules holding a custom torch.autograd.Function (in the order they run),
    else the whole model; names the first module whose backward is wrong (`gradient-mismatch`).
    `inputs` are the model's positional inputs (a small batch is enough)."""
    torch = _torch()
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"check_gradients() expects a torch.nn.Module, got {type(model).__name__}")
    if not inputs:
        raise InputError("check_gradients(model, *inputs) needs the model's inputs (a small batch is enough)")
    if not (isinstance(rtol, (int, float)) and rtol > 0):
        raise ValueError(f"rtol must be a positive number, got {rtol!r}")
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        m64 = copy.deepcopy(model).double().eval()
        xs = tuple(x.detach().double() if isinstance(x, torch.Tensor) and x.is_floating_point() else x for x in inputs)
        targets, notes = _custom_function_modules(m64, xs, seed)
        if not targets:
            targets = [("(root)", m64, xs, {})]
        checked: list[ModuleGradient] = []
        for name, mod, args, kwargs in targets:
            try:
                checked.append(_check_module(name, mod, args, kwargs, rtol, directions, seed))
            except Exception as e:  # noqa: BLE001 - a module that cannot run in float64 is reported, not fatal
                notes.append(f"'{name}' ({type(mod).__name__}) could not be checked: {type(e).__name__}: {e}")
    findings: list[Finding] = []
    wrong = [c for c in checked if not c.ok]
    if wrong:
        c = wrong[0]
        worst = max(c.derivatives, key=lambda d: abs(d[0] - d[1]))
        others = f"; {len(wrong) - 1} later module(s) disagree too" if len(wrong) > 1 else ""
        findings.append(Finding(
            "gradient-mismatch", "error",
            f"the backward of '{c.name}' ({c.type}) disagrees with finite differences: along a random direction the "
            f"analytic derivative is {worst[0]:.6g} and the numerical one {worst[1]:.6g} (relative error {c.error:.2g} "
            f"> rtol {rtol:g}){others}",
            module=None if c.name == "(root)" else c.name, hint=CATALOGUE["gradient-mismatch"].fix,
            data={"error": c.error, "rtol": rtol, "derivatives": c.derivatives, "wrong": [w.name for w in wrong]},
        ))
    return GradientReport(findings, checked, notes)


def _custom_function_modules(model: Any, xs: tuple[Any, ...], seed: int) -> tuple[list[tuple[str, Any, Any, Any]], list[str]]:
    """(name, module, args, kwargs) of the innermost modules whose forward made custom autograd
    Function nodes, in the order they finished running, with the inputs they got."""
    torch = _torch()
    from torch.autograd.function import BackwardCFunction

    names = {id(m): n or "(root)" for n, m in model.named_modules()}
    calls: list[tuple[Any, Any, Any, Any]] = []

    def hook(module: Any, args: Any, kwargs: Any, out: Any) -> None:
        calls.append((module, args, kwargs, out))

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in model.modules()]
    try:
        xg = tuple(x.clone().requires_grad_(True) if isinstance(x, torch.Tensor) and x.is_floating_point() else x for x in xs)
        torch.manual_seed(seed)
        model(*xg)
    finally:
        for h in handles:
            h.remove()
    owner: dict[int, int] = {}  # custom node -> index of the first (innermost) call that contains it
    for k, (_, args, kwargs, out) in enumerate(calls):
        stop = {id(t.grad_fn) for t in _tensors((args, kwargs)) if t.grad_fn is not None}
        seen: set[int] = set()
        todo = [t.grad_fn for t in _tensors(out) if t.grad_fn is not None]
        while todo:
            node = todo.pop()
            if node is None or id(node) in seen or id(node) in stop:
                continue
            seen.add(id(node))
            if isinstance(node, BackwardCFunction):
                owner.setdefault(id(node), k)
            todo.extend(n for n, _ in node.next_functions)
    order = sorted(set(owner.values()))
    out_list = []
    for k in order:
        module, args, kwargs, _ = calls[k]
        det = lambda v: v.detach() if isinstance(v, torch.Tensor) else v  # noqa: E731
        out_list.append((names.get(id(module), type(module).__name__), module, tuple(det(a) for a in args),
                         {key: det(v) for key, v in kwargs.items()}))
    # a module called several times is checked once, on its first inputs
    first: dict[str, Any] = {}
    for item in out_list:
        first.setdefault(item[0], item)
    return list(first.values()), []


def _tensors(obj: Any, depth: int = 0) -> list[Any]:
    torch = _torch()
    if isinstance(obj, torch.Tensor):
        return [obj]
    if depth > 4:
        return []
    if isinstance(obj, (tuple, list)):
        return [t for v in obj for t in _tensors(v, depth + 1)]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v, depth + 1)]
    if hasattr(obj, "__dataclass_fields__"):
        return [t for f in obj.__dataclass_fields__ for t in _tensors(getattr(obj, f, None), depth + 1)]
    return []


def _check_module(name: str, mod: Any, args: tuple[Any, ...], kwargs: dict[str, Any], rtol: float, k_dirs: int,
                  seed: int) -> ModuleGradient:
    torch = _torch()
    from torch.func import functional_call

    params = {n: p.detach() for n, p in mod.named_parameters() if p.requires_grad}
    arg_idx = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.is_floating_point()]
    kw_keys = [key for key, v in kwargs.items() if isinstance(v, torch.Tensor) and v.is_floating_point()]
    variables = list(params.values()) + [args[i] for i in arg_idx] + [kwargs[key] for key in kw_keys]
    if not variables:
        return ModuleGradient(name, type(mod).__name__, 0.0, True)
    gen = torch.Generator(device=variables[0].device).manual_seed(seed + 1)
    projection: list[Any] = []

    def f(vals: list[Any]) -> Any:
        p = dict(zip(params, vals[: len(params)]))
        a = list(args)
        for i, v in zip(arg_idx, vals[len(params): len(params) + len(arg_idx)]):
            a[i] = v
        kw = dict(kwargs)
        for key, v in zip(kw_keys, vals[len(params) + len(arg_idx):]):
            kw[key] = v
        torch.manual_seed(seed)  # any randomness in forward repeats
        outs = [t for t in _tensors(functional_call(mod, p, tuple(a), kw)) if t.is_floating_point()]
        if not projection:
            projection.extend(torch.randn(t.shape, generator=gen, device=t.device, dtype=t.dtype) for t in outs)
        return sum((t * r).sum() for t, r in zip(outs, projection))

    leaves = [v.detach().clone().requires_grad_(True) for v in variables]
    value = f(leaves)
    if not isinstance(value, torch.Tensor) or not value.requires_grad:
        return ModuleGradient(name, type(mod).__name__, 0.0, True)
    grads = torch.autograd.grad(value, leaves, allow_unused=True)
    grads = [torch.zeros_like(v) if g is None else g.detach() for g, v in zip(grads, leaves)]
    fval = float(value.detach())
    rms = math.sqrt(sum(float((v.detach() ** 2).sum()) for v in variables) / max(1, sum(v.numel() for v in variables)))
    h0 = H_REL * max(1.0, rms)
    worst, ok, derivs = 0.0, True, []
    with torch.no_grad():
        for _ in range(k_dirs):
            dirs = [torch.randn(v.shape, generator=gen, device=v.device, dtype=v.dtype) for v in variables]
            analytic = sum(float((g * d).sum()) for g, d in zip(grads, dirs))
            magnitude = sum(float((g * d).abs().sum()) for g, d in zip(grads, dirs))
            bad_at = []
            numerical = math.nan
            for h in (h0, h0 / 10):
                plus = float(f([v + h * d for v, d in zip(variables, dirs)]))
                minus = float(f([v - h * d for v, d in zip(variables, dirs)]))
                num = (plus - minus) / (2 * h)
                if h == h0:
                    numerical = num
                err = abs(num - analytic)
                scale = max(abs(num), abs(analytic))
                floor = ATOL_REL * magnitude + ROUNDING * abs(fval) / h  # cancellation; rounding of plus - minus
                bad_at.append(err > rtol * scale + floor)
                if h == h0:
                    rel = err / scale if scale > 0 else 0.0
                if not bad_at[-1]:
                    break
            derivs.append((analytic, numerical))
            worst = max(worst, rel)
            if all(bad_at) and len(bad_at) == 2:
                ok = False
    return ModuleGradient(name, type(mod).__name__, worst, ok, derivs)
