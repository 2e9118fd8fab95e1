"""The data-flow graph of one forward pass, in the order the data really flows.

Two builders give the same `Graph`: torch.fx when the model traces symbolically, and otherwise a
real forward pass watched by forward hooks on torch.nn's own modules plus a function mode that
records the tensor functions called between them (so functional calls and untraceable control
flow are seen too). In both, torch.nn's built-in modules are single nodes (fx's leaf modules)
and user modules are traced through; edges follow tensors, not registration order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .deps import eval_mode, first_tensor
from .layout_trace import LayoutTrace, _caller, trace_layout

_CONTAINERS = ("Sequential", "ModuleList", "ModuleDict", "ParameterList", "ParameterDict")


def _torch():
    import torch

    return torch


@dataclass
class Node:
    """One step of the forward pass: a module call, a function/method call, an input or a parameter."""

    index: int
    kind: str  # "module", "function", "input", "param", "output"
    op: str  # the function or method name ("relu", "view", "add"), the module class name
    name: str  # a module's qualified name; for a function, the module whose forward called it
    module: Any = None
    inputs: list[int] = field(default_factory=list)  # producers of the tensor inputs, in order
    args: tuple = ()  # positional arguments with tensors replaced by None
    kwargs: dict = field(default_factory=dict)
    in_shapes: list[tuple | None] = field(default_factory=list)  # None: not a tensor of known shape
    out_shape: tuple | None = None
    where: str | None = None  # file:line of a function call (hooks builder)
    users: list[int] = field(default_factory=list)

    @property
    def label(self) -> str:
        """How a finding names this node: the module's name, or the function and where it was called."""
        if self.kind == "module":
            return f"'{self.name}'"
        owner = f" in '{self.name}'" if self.name else ""
        at = f" at {self.where}" if self.where else ""
        return f"{self.op}(){owner}{at}"


@dataclass
class Graph:
    nodes: list[Node]
    method: str  # "fx" or "hooks"
    outputs: list[int]  # producers of the model's output tensors, in order
    layout: LayoutTrace | None = None

    def finish(self) -> Graph:
        """Links users to producers. Only nodes whose values reach the model's output count as
        users: a `h.sum() > 0` taken for control flow does not make `h` fan out."""
        live = set(range(len(self.nodes)))
        if self.outputs:
            live, todo = set(), list(self.outputs)
            while todo:
                i = todo.pop()
                if i not in live:
                    live.add(i)
                    todo += self.nodes[i].inputs
        for n in self.nodes:
            n.users = []
        for n in self.nodes:
            if n.index not in live:
                continue
            for i in n.inputs:
                if n.index not in self.nodes[i].users:
                    self.nodes[i].users.append(n.index)
        return self

    def order(self) -> list[str]:
        """The module calls in data-flow order (what `lint` walks)."""
        return [n.name for n in self.nodes if n.kind == "module"]


def is_leaf_module(m: Any) -> bool:
    """torch.nn's own modules are single nodes (as fx's default tracer treats them)."""
    mod = type(m).__module__
    return (mod.startswith("torch.nn") or mod.startswith("torch.ao.nn")) and type(m).__name__ not in _CONTAINERS


def _as_args(example_input: Any) -> tuple[tuple, dict]:
    if isinstance(example_input, dict):
        return (), dict(example_input)
    if isinstance(example_input, tuple):
        return example_input, {}
    return (example_input,), {}


def _strip(v: Any) -> Any:
    torch = _torch()
    if isinstance(v, torch.Tensor):
        return None
    if isinstance(v, (list, tuple)):
        return type(v)(_strip(x) for x in v) if not hasattr(v, "_fields") else tuple(_strip(x) for x in v)
    if isinstance(v, dict):
        return {k: _strip(x) for k, x in v.items()}
    return v


def build(model: Any, example_input: Any, *, method: str = "auto", batch_dim: int = 0) -> Graph:
    """The graph of `model(example_input)` (a tensor, a tuple of positional inputs or a dict of
    keyword inputs), by torch.fx when it traces and `method` allows, else by hooks."""
    if method not in ("auto", "fx", "hooks"):
        raise ValueError(f"method must be 'auto', 'fx' or 'hooks', got {method!r}")
    if method in ("auto", "fx"):
        try:
            return _build_fx(model, example_input, batch_dim)
        except Exception:  # untraceable (data-dependent control flow, unsupported ops): use hooks
            if method == "fx":
                raise
    return _build_hooks(model, example_input, batch_dim)


@contextlib.contextmanager
def _quiet_forward(model: Any) -> Iterator[None]:
    """Eval mode and no autograd: running the model for its structure changes nothing in it
    (BatchNorm's running statistics are not updated)."""
    with eval_mode(model), _torch().no_grad():
        yield


def _batch_size(args: tuple, kwargs: dict, batch_dim: int) -> int | None:
    torch = _torch()
    for v in list(args) + list(kwargs.values()):
        if isinstance(v, torch.Tensor) and v.ndim > batch_dim:
            return int(v.shape[batch_dim])
    return None


def _build_fx(model: Any, example_input: Any, batch_dim: int) -> Graph:
    import torch.fx as fx
    from torch.fx.passes.shape_prop import ShapeProp

    tracer = fx.Tracer()
    tracer.record_stack_traces = True  # where each functional call was written
    graph = tracer.trace(model)
    gm = fx.GraphModule(tracer.root, graph)
    root_name = type(model).__name__
    args, kwargs = _as_args(example_input)
    if kwargs:
        raise TypeError("fx shape propagation takes positional inputs")
    with _quiet_forward(model):
        gm.eval()
        ShapeProp(gm).propagate(*args)
        # the layout is followed on the model's own forward, so findings name the user's lines
        # (fx's generated code has none)
        with trace_layout(batch_dim=batch_dim, batch_size=_batch_size(args, kwargs, batch_dim), root=model) as layout:
            model(*args)
    index: dict[Any, int] = {}
    nodes: list[Node] = []
    outputs: list[int] = []

    def shape_of(n: Any) -> tuple | None:
        """The node's tensor shape (the first tensor's for a tuple output), None for non-tensors."""
        meta = n.meta.get("tensor_meta")
        while not hasattr(meta, "shape") and isinstance(meta, (tuple, list)) and meta:
            meta = meta[0]  # TensorMetadata is itself a named tuple: test for .shape first
        if isinstance(meta, dict) and meta:
            meta = next(iter(meta.values()))
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None

    for n in gm.graph.nodes:
        tensor_inputs = [a for a in n.all_input_nodes if a in index and shape_of(a) is not None]
        stack = n.meta.get("nn_module_stack") or {}
        owner = next(reversed(stack.values()))[0] if stack else root_name
        if n.op == "placeholder":
            node = Node(len(nodes), "input", "input", str(n.target))
        elif n.op == "get_attr":
            node = Node(len(nodes), "param", "param", str(n.target))
        elif n.op == "call_module":
            sub = gm.get_submodule(n.target)
            node = Node(len(nodes), "module", type(sub).__name__, str(n.target), module=sub)
        elif n.op in ("call_function", "call_method"):
            op = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", str(n.target))
            node = Node(len(nodes), "function", op, owner, where=_where(n.stack_trace))
        elif n.op == "output":
            outs = n.args[0]
            flat = list(outs) if isinstance(outs, (tuple, list)) else list(outs.values()) if isinstance(outs, dict) else [outs]
            outputs = [index[a] for a in flat if isinstance(a, fx.Node) and a in index and shape_of(a) is not None]
            continue
        else:
            continue
        node.inputs = [index[a] for a in tensor_inputs]
        node.in_shapes = [shape_of(a) for a in tensor_inputs]
        node.out_shape = shape_of(n)
        node.args = tuple(_fx_strip(a) for a in n.args)
        node.kwargs = {k: _fx_strip(v) for k, v in n.kwargs.items()}
        index[n] = node.index
        nodes.append(node)
    return Graph(nodes, "fx", outputs, layout).finish()


def _where(stack_trace: str | None) -> str | None:
    """file:line of the innermost frame of an fx node's recorded stack trace."""
    if not stack_trace:
        return None
    import os
    import re

    torch_dir = os.path.dirname(_torch().__file__)
    frames = [(f, n) for f, n in re.findall(r'File "([^"]+)", line (\d+)', stack_trace)
              if not os.path.abspath(f).startswith(torch_dir)]
    return f"{os.path.basename(frames[-1][0])}:{frames[-1][1]}" if frames else None


def _fx_strip(v: Any) -> Any:
    import torch.fx as fx

    if isinstance(v, fx.Node):
        return None
    if isinstance(v, (list, tuple)):
        return type(v)(_fx_strip(x) for x in v)
    if isinstance(v, dict):
        return {k: _fx_strip(x) for k, x in v.items()}
    return v


def _build_hooks(model: Any, example_input: Any, batch_dim: int) -> Graph:
    torch = _torch()
    from torch.overrides import TorchFunctionMode
    from torch.utils.weak import WeakIdKeyDictionary

    args, kwargs = _as_args(example_input)
    roots = [model] if isinstance(model, torch.nn.Module) else []
    names = {id(m): n for r in roots for n, m in r.named_modules()}
    producer: Any = WeakIdKeyDictionary()
    keep: list = []  # tensors seen, alive until the graph is built (ids stay unique)
    nodes: list[Node] = []
    depth = [0]

    def source(t: Any) -> int:
        i = producer.get(t)
        if i is None:
            kind = "param" if isinstance(t, torch.nn.Parameter) else "input"
            node = Node(len(nodes), kind, kind, "", out_shape=tuple(t.shape))
            nodes.append(node)
            producer[t] = i = node.index
            keep.append(t)
        return i

    def tensors_in(v: Any) -> list:
        out: list = []
        if isinstance(v, torch.Tensor):
            out.append(v)
        elif isinstance(v, (list, tuple)):
            for x in v:
                out += tensors_in(x)
        elif isinstance(v, dict):
            for x in v.values():
                out += tensors_in(x)
        return out

    def add(node: Node, ins: list, out: Any) -> None:
        node.inputs = [source(t) for t in ins]
        node.in_shapes = [tuple(t.shape) for t in ins]
        outs = tensors_in(out)
        node.out_shape = tuple(outs[0].shape) if outs else None
        nodes.append(node)
        for t in outs:
            producer[t] = node.index
            keep.append(t)

    pending: dict[int, list] = {}

    def pre(mod: Any, a: tuple, kw: dict) -> None:
        if depth[0] == 0:
            pending[id(mod)] = tensors_in(a) + tensors_in(kw)
            for t in pending[id(mod)]:
                source(t)
        depth[0] += 1

    def post(mod: Any, a: tuple, kw: dict, out: Any) -> None:
        depth[0] -= 1
        if depth[0] == 0:
            ins = pending.pop(id(mod), [])
            add(Node(len(nodes), "module", type(mod).__name__, names.get(id(mod), type(mod).__name__), module=mod), ins, out)

    class Recorder(TorchFunctionMode):
        def __torch_function__(self, func, types, a=(), kw=None):  # noqa: ANN001
            kw = kw or {}
            out = func(*a, **kw)
            if depth[0] == 0:
                try:
                    outs = tensors_in(out)
                    if outs:
                        op = getattr(func, "__name__", str(func))
                        if op == "__get__":
                            op = getattr(getattr(func, "__self__", None), "__name__", op)
                        where, owner = _caller(names)
                        node = Node(len(nodes), "function", op, owner or "", where=where)
                        node.args = tuple(_strip(x) for x in a)
                        node.kwargs = {k: _strip(v) for k, v in kw.items()}
                        add(node, tensors_in(a) + tensors_in(kw), out)
                except Exception:  # noqa: BLE001 - recording never breaks the forward pass
                    pass
            return out

    handles = []
    for r in roots:
        for m in r.modules():
            if is_leaf_module(m):
                handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
                handles.append(m.register_forward_hook(post, with_kwargs=True))
    try:
        size = _batch_size(args, kwargs, batch_dim)
        with _quiet_forward(model), trace_layout(batch_dim=batch_dim, batch_size=size, root=model if roots else None) as layout:
            for t in tensors_in(args) + tensors_in(kwargs):
                source(t)
            with Recorder():
                out = model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    first = first_tensor(out)
    outs = tensors_in(out)
    if first is not None:
        outs = [first] + [t for t in outs if t is not first]
    outputs = [producer[t] for t in outs if producer.get(t) is not None]
    return Graph(nodes, "hooks", outputs, layout).finish()
