"""`lint()`: structural mistakes, read from the data-flow graph of one forward pass.

- `bias-before-norm`: a Linear/Conv bias that a normalisation removes. A normalisation subtracts
  a mean over some axes; a bias varies only along its layer's channel axis, so it is removed
  exactly when the channel axis is not among the axes averaged over: BatchNorm (per channel, over
  batch and space), InstanceNorm and GroupNorm with one channel per group (over space) cancel a
  conv bias; LayerNorm over the features and GroupNorm with several channels per group do not
  (they remove only the bias's mean), and RMSNorm subtracts nothing. The channel axis is followed
  through reshapes, permutes and residual additions on the way.
- `dropout-before-batchnorm`: a Dropout whose output reaches a BatchNorm through shape ops only.
- `activation-on-logits` (with `loss_fn`): the model's output comes from an activation that a loss
  wanting raw logits undoes or cannot undo (CrossEntropyLoss, BCEWithLogitsLoss);
  `logits-into-nll`: NLLLoss fed by anything but a log_softmax.
- `stacked-linear`: two linear maps (Linear/Conv) with only shape ops or Dropout between them.
- `view-mixes-batch`: a reshape/view in the forward pass that splits the batch axis.

Findings about a pair name the first layer of the pair.
"""

from __future__ import annotations

from typing import Any

from ..findings import Finding, Report
from ..primitives import reshape_groups
from .graph import Graph, Node, build

_SHAPE_OPS = {
    "view", "reshape", "flatten", "unflatten", "permute", "transpose", "contiguous", "squeeze", "unsqueeze",
    "t", "T", "mT", "swapaxes", "swapdims", "movedim", "moveaxis", "view_as", "reshape_as", "clone", "to",
    "float", "double", "half", "bfloat16", "type", "type_as", "detach", "getitem", "__getitem__",
    "Flatten", "Unflatten", "Identity",
}
_DROPOUT_OPS = {"dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
                "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout"}
_ADD_OPS = {"add", "add_", "__add__", "__radd__", "__iadd__", "iadd", "sub", "sub_", "__sub__", "__isub__", "isub"}
_LINEAR_MODULES = {"Linear", "LazyLinear", "Bilinear", "NonDynamicallyQuantizableLinear",
                   "Conv1d", "Conv2d", "Conv3d", "LazyConv1d", "LazyConv2d", "LazyConv3d",
                   "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"}
_LINEAR_FUNCS = {"linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d"}
_BATCHNORMS = {"BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "LazyBatchNorm1d", "LazyBatchNorm2d",
               "LazyBatchNorm3d", "SyncBatchNorm", "batch_norm"}
# Activations that a loss wanting raw logits cannot undo (bounded, clipped or squashed logits).
_BAD_ON_LOGITS = {
    "ReLU", "ReLU6", "Softmax", "Softmax2d", "Sigmoid", "Tanh", "Hardtanh", "Hardsigmoid", "Softplus", "GELU",
    "SiLU", "ELU", "SELU", "CELU", "Mish", "Hardswish", "LogSigmoid", "Softmin", "Threshold",
    "relu", "relu_", "relu6", "softmax", "sigmoid", "sigmoid_", "tanh", "tanh_", "hardtanh", "hardsigmoid",
    "softplus", "gelu", "silu", "elu", "selu", "celu", "mish", "hardswish", "logsigmoid", "softmin", "threshold",
}
_LOG_SOFTMAX = {"LogSoftmax", "log_softmax"}
_LOGIT_LOSSES = {"CrossEntropyLoss": "CrossEntropyLoss", "cross_entropy": "cross_entropy",
                 "BCEWithLogitsLoss": "BCEWithLogitsLoss", "binary_cross_entropy_with_logits": "binary_cross_entropy_with_logits",
                 "MultiLabelSoftMarginLoss": "MultiLabelSoftMarginLoss", "multilabel_soft_margin_loss": "multilabel_soft_margin_loss"}
_NLL_LOSSES = {"NLLLoss", "nll_loss"}


class LintReport(Report):
    """Structural findings, with the module calls in the order the data flowed."""

    title = "lint"

    def __init__(self, findings: list[Finding], graph: Graph) -> None:
        super().__init__(findings)
        self.graph = graph
        self.method = graph.method
        self.order = graph.order()

    def details(self) -> list[str]:
        shown = " -> ".join(self.order[:12]) + (" -> ..." if len(self.order) > 12 else "")
        return [f"data flow ({self.method}, {len(self.order)} module calls): {shown}"]


def loss_name(loss_fn: Any) -> str | None:
    """The class name of a loss module, or the name of a torch.nn.functional loss."""
    if loss_fn is None:
        return None
    mod = type(loss_fn).__module__
    if mod.startswith("torch.nn"):
        return type(loss_fn).__name__
    name = getattr(loss_fn, "__name__", None)
    if name and getattr(loss_fn, "__module__", "").startswith("torch.nn"):
        return name
    return None


def lint(model: Any, example_input: Any, *, loss_fn: Any = None, method: str = "auto", batch_dim: int = 0) -> LintReport:
    """Structure in the order the data really flows: torch.fx when the model traces, a real forward
    pass with hooks otherwise (`method` forces one: "fx" or "hooks"). The model runs once in eval
    mode without gradients; nothing in it changes."""
    g = build(model, example_input, method=method, batch_dim=batch_dim)
    findings: list[Finding] = []
    for n in g.nodes:
        findings += _bias_before_norm(g, n)
        findings += _dropout_before_batchnorm(g, n)
        findings += _stacked_linear(g, n)
    findings += _loss_input(g, loss_name(loss_fn))
    if g.layout is not None:
        findings += g.layout.findings
    return LintReport(_dedupe(findings), g)


def _dedupe(findings: list[Finding]) -> list[Finding]:
    seen, out = set(), []
    for f in findings:
        key = (f.code, f.module, f.message)
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out


def _is_linear(n: Node) -> bool:
    return (n.kind == "module" and n.op in _LINEAR_MODULES) or (n.kind == "function" and n.op in _LINEAR_FUNCS)


def _has_bias(n: Node) -> bool:
    if n.kind == "module":
        return getattr(n.module, "bias", None) is not None
    # F.linear(x, w, b) / F.conv2d(x, w, b, ...): the bias is the third tensor input
    return len(n.inputs) >= 3


def _is_shape_op(n: Node) -> bool:
    return n.op in _SHAPE_OPS


def _is_dropout(n: Node) -> bool:
    if n.op not in _DROPOUT_OPS:
        return False
    p = getattr(n.module, "p", None) if n.kind == "module" else n.kwargs.get("p", n.args[1] if len(n.args) > 1 else 0.5)
    return not isinstance(p, (int, float)) or p > 0


def _single_user(g: Graph, n: Node) -> Node | None:
    return g.nodes[n.users[0]] if len(n.users) == 1 else None


def _map_axes(n: Node, axes: set[int]) -> set[int] | None:
    """Where axes of a shape op's input land in its output; None if that cannot be followed."""
    src, dst = (n.in_shapes[0] if n.in_shapes else None), n.out_shape
    if src is None or dst is None:
        return None
    if n.op in ("permute", "transpose", "t", "T", "mT", "swapaxes", "swapdims", "movedim", "moveaxis"):
        order = _permutation(n, len(src))
        if order is None:
            return None
        return {order.index(a) for a in axes}
    if tuple(src) == tuple(dst):
        return set(axes)
    if n.op in ("getitem", "__getitem__"):
        return None
    try:
        groups = reshape_groups(src, dst)
    except Exception:  # noqa: BLE001 - shapes lint cannot follow: the axis is not followed
        return None
    out: set[int] = set()
    for old, new in groups:
        if any(a in axes and src[a] != 1 for a in old):
            out |= {b for b in new if dst[b] != 1}
    return out


def _permutation(n: Node, nd: int) -> list[int] | None:
    args = [a for a in n.args[1:]] if n.args and n.args[0] is None else list(n.args)
    if n.op == "permute":
        dims = args if args and not isinstance(args[0], (list, tuple)) else (args[0] if args else n.kwargs.get("dims"))
        if dims is None:
            return None
        order = [int(d) % nd for d in dims]
    elif n.op in ("t", "T"):
        order = list(range(nd))[::-1]
    elif n.op == "mT":
        order = list(range(nd - 2)) + [nd - 1, nd - 2]
    elif n.op in ("transpose", "swapaxes", "swapdims"):
        if len(args) < 2:
            return None
        a, b = int(args[0]) % nd, int(args[1]) % nd
        order = list(range(nd))
        order[a], order[b] = order[b], order[a]
    else:
        return None
    return order if sorted(order) == list(range(nd)) else None


def _mean_axes(n: Node) -> set[int] | None:
    """The axes a normalisation averages over (its mean is subtracted per group of the others);
    None for a node that subtracts no mean."""
    shape = n.in_shapes[0] if n.in_shapes else None
    if shape is None:
        return None
    nd = len(shape)
    op, m = n.op, n.module
    if op in _BATCHNORMS:
        return {0} | set(range(2, nd))
    if op.startswith("InstanceNorm") or op == "instance_norm":
        spatial = int(op[-2]) if op.startswith("InstanceNorm") and op[-2].isdigit() else nd - 2
        first = nd - spatial
        return set(range(first, nd))
    if op == "GroupNorm" or op == "group_norm":
        groups = m.num_groups if m is not None else (n.args[1] if len(n.args) > 1 else n.kwargs.get("num_groups"))
        channels = shape[1] if nd > 1 else 1
        return set(range(2, nd)) if groups == channels else set(range(1, nd))
    if op == "LayerNorm" or op == "layer_norm":
        shape = m.normalized_shape if m is not None else (n.args[1] if len(n.args) > 1 else n.kwargs.get("normalized_shape"))
        k = len(shape) if isinstance(shape, (list, tuple)) else 1
        return set(range(nd - k, nd))
    return None


def _bias_before_norm(g: Graph, n: Node) -> list[Finding]:
    if not _is_linear(n) or not _has_bias(n) or n.out_shape is None:
        return []
    nd = len(n.out_shape)
    if n.op in ("Linear", "LazyLinear", "Bilinear", "NonDynamicallyQuantizableLinear", "linear"):
        axes = {nd - 1}
    else:  # convolutions: channels at axis 1, or 0 for an unbatched input
        spatial = int(n.op[-2]) if n.op[-2].isdigit() else nd - 2
        axes = {1} if nd == spatial + 2 else {0}
    cur = n
    while True:
        nxt = _single_user(g, cur)
        if nxt is None or not nxt.inputs:
            return []
        if _is_shape_op(nxt) and nxt.inputs[0] == cur.index:
            mapped = _map_axes(nxt, axes)
            if mapped is None:
                return []
            axes = mapped
        elif nxt.op in _ADD_OPS and nxt.out_shape is not None and cur.out_shape is not None:
            # a residual addition carries the bias through unchanged (aligned from the right)
            shift = len(nxt.out_shape) - len(cur.out_shape)
            if shift < 0:
                return []
            axes = {a + shift for a in axes}
        else:
            mean_axes = _mean_axes(nxt) if nxt.inputs[0] == cur.index else None
            if mean_axes is not None and axes and not (axes & mean_axes):
                return [Finding(
                    "bias-before-norm", "warning",
                    f"the bias of {n.label} ({n.op}) feeds {nxt.label} ({nxt.op}), which subtracts a mean "
                    "per channel and removes it: the bias is wasted",
                    module=n.name if n.kind == "module" else (n.name or None),
                    hint=f"create {n.label} with bias=False",
                    data={"layer": n.label, "norm": nxt.label, "norm_type": nxt.op},
                )]
            return []
        cur = nxt


def _dropout_before_batchnorm(g: Graph, n: Node) -> list[Finding]:
    if not _is_dropout(n):
        return []
    todo, seen = list(n.users), set()
    while todo:
        u = g.nodes[todo.pop()]
        if u.index in seen:
            continue
        seen.add(u.index)
        if u.op in _BATCHNORMS:
            return [Finding(
                "dropout-before-batchnorm", "warning",
                f"{n.label} ({n.op}) feeds {u.label} ({u.op}) directly: the BatchNorm's running statistics are "
                "learned on dropped-out activations and do not match what it sees in eval mode (variance shift)",
                module=n.name if n.kind == "module" else (n.name or None),
                hint="move the Dropout after the BatchNorm (or after the last BatchNorm only)",
                data={"dropout": n.label, "batchnorm": u.label},
            )]
        if _is_shape_op(u):
            todo += u.users
    return []


def _stacked_linear(g: Graph, n: Node) -> list[Finding]:
    if not _is_linear(n) or n.kind != "module":
        return []
    cur = n
    while True:
        nxt = _single_user(g, cur)
        if nxt is None or not nxt.inputs or nxt.inputs[0] != cur.index:
            return []
        if _is_shape_op(nxt) or _is_dropout(nxt):
            cur = nxt
            continue
        if _is_linear(nxt):
            # a bottleneck narrower than both ends is a deliberate low-rank factorisation (LoRA's A then
            # B): worth knowing; otherwise almost always a forgotten activation (SPEC section 6)
            low_rank = _bottleneck(n, nxt)
            return [Finding(
                "stacked-linear", "info" if low_rank else "warning",
                f"{n.label} ({n.op}) feeds {nxt.label} ({nxt.op}) with no nonlinearity between: together they "
                "are one linear map" + (" (a low-rank bottleneck, perhaps on purpose)" if low_rank else ""),
                module=n.name, hint="add an activation between them, or merge them into one layer",
                data={"first": n.label, "second": nxt.label, "low_rank": low_rank},
            )]
        return []


def _bottleneck(first: Node, second: Node) -> bool:
    """The width between two linear maps is smaller than both their outer widths."""
    a, b = first.module, second.module
    inner = getattr(a, "out_features", getattr(a, "out_channels", None))
    outer = (getattr(a, "in_features", getattr(a, "in_channels", None)), getattr(b, "out_features", getattr(b, "out_channels", None)))
    return isinstance(inner, int) and all(isinstance(w, int) and inner < w for w in outer)


def _producer(g: Graph, idx: int) -> Node:
    """The node that made the values of node `idx`, looking through shape ops and Dropout."""
    n = g.nodes[idx]
    while (_is_shape_op(n) or n.op in _DROPOUT_OPS) and n.inputs:
        n = g.nodes[n.inputs[0]]
    return n


def _loss_input(g: Graph, loss: str | None) -> list[Finding]:
    if loss is None or not g.outputs:
        return []
    p = _producer(g, g.outputs[0])
    if loss in _LOGIT_LOSSES:
        bad = p.op in _BAD_ON_LOGITS
        if p.op in _LOG_SOFTMAX and loss not in ("CrossEntropyLoss", "cross_entropy"):
            bad = True  # log-probabilities (all <= 0) as sigmoid logits: every probability <= 0.5
        if bad:
            return [Finding(
                "activation-on-logits", "error",
                f"the model's output comes from {p.label} ({p.op}) and goes into {loss}, which applies its own "
                "softmax/sigmoid and wants raw logits",
                module=p.name if p.kind == "module" else (p.name or None),
                hint=f"remove the final {p.op}; apply softmax/sigmoid only when you need probabilities",
                data={"activation": p.label, "loss": loss},
            )]
    if loss in _NLL_LOSSES and p.op not in _LOG_SOFTMAX and p.kind in ("module", "function"):
        return [Finding(
            "logits-into-nll", "error",
            f"the model's output comes from {p.label} ({p.op}), not a log_softmax, and goes into {loss}, which "
            "wants log-probabilities",
            module=p.name if p.kind == "module" else (p.name or None),
            hint="end the model with log_softmax, or use CrossEntropyLoss on the raw logits",
            data={"producer": p.label, "loss": loss},
        )]
    return []
