"""Dependency masks: which output slices depend on which input slices, from backpropagation
(Karpathy's recipe: "use backprop to chart dependencies").

`mask[i, j]` is true when the gradient of output slice i (along `out_dim`) reaches input slice j
(along `dim`). Each output slice is weighted by random positive numbers before the backward pass,
so that outputs that sum to a constant (a softmax) or cancel each other cannot hide a dependency.

- "exact": one vector-Jacobian product per output slice, all of them in one vectorised backward
  (`is_grads_batched`), in chunks that bound memory.
- "group": 2 * ceil(log2 n_out) products (bit-coded groups of outputs). An input slice that reaches
  one output is decoded exactly; one that reaches several is marked ambiguous and its column is a
  superset. Enough to decide whether a batch is independent.
- "auto": for an identity expectation (the batch), group, then exact products only for the output
  rows the ambiguous columns leave open, so the mask is exact; for a causal expectation (every
  input reaches many outputs), exact.

The reduction of the gradients to booleans, the group codes and their decoding are the Rust core's.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import core
from ..errors import DeviceError, InputError
from ..findings import Finding, Report

METHODS = ("auto", "exact", "group")
EXPECTATIONS = ("identity", "causal")
# Bound on one vectorised backward (chunks of output rows): every row's VJP spans the whole
# input, so large chunks only add memory traffic (measured on CPU: 64 rows per call ran 2.5x
# slower than 4 to 16; benches/bench_deps.py).
_CHUNK_BYTES = 16 << 20
_CHUNK_ROWS = 16
# At most this many module outputs are examined to locate where a leak first appears.
_MAX_LOCATE = 256


def _torch():
    import torch

    return torch


def _roots(model: Any) -> list:
    nn = _torch().nn
    if isinstance(model, nn.Module):
        return [model]
    owner = getattr(model, "__self__", None)
    return [owner] if isinstance(owner, nn.Module) else []


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Every module of `model` in eval mode for the block; each module's own mode restored after."""
    saved = [(m, m.training) for root in _roots(model) for m in root.modules()]
    try:
        for root in _roots(model):
            root.eval()
        yield
    finally:
        for m, was in saved:
            m.training = was


def first_tensor(out: Any) -> Any:
    """The first floating tensor in a module's output (a tensor, tuple, list, dict or dataclass)."""
    torch = _torch()
    if isinstance(out, torch.Tensor):
        return out if out.is_floating_point() else None
    if isinstance(out, dict):
        items = list(out.values())
    elif isinstance(out, (tuple, list)):
        items = list(out)
    elif hasattr(out, "__dataclass_fields__"):
        items = [getattr(out, f) for f in out.__dataclass_fields__]
    else:
        return None
    for item in items:
        t = first_tensor(item)
        if t is not None:
            return t
    return None


def _reduce(g: Any, keep: list[int]) -> tuple[np.ndarray, bool]:
    """Booleans over the kept axes: is any gradient element there non-zero (the core on the CPU;
    on an accelerator a fused reduction there, and only the booleans come to the host)."""
    if g.device.type == "cpu":
        return core.nonzero_along(g.detach(), keep)
    torch = _torch()
    rest = tuple(a for a in range(g.ndim) if a not in keep)
    nz = g != 0
    if rest:
        nz = nz.any(dim=rest)
    nonfinite = bool((~torch.isfinite(g)).any().item())
    order = sorted(keep)
    nz = nz.permute([order.index(k) for k in keep]) if order != keep else nz
    return nz.cpu().numpy(), nonfinite


@dataclass
class DependencyMask:
    """`mask[i, j]`: output slice i (along `out_dim`) depends on input slice j (along `dim`)."""

    mask: np.ndarray
    dim: int
    out_dim: int
    expect: str
    method: str
    passes: int
    exact: bool = True
    ambiguous: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    notes: list[str] = field(default_factory=list)

    @property
    def leaks(self) -> list[tuple[int, int]]:
        """The (i, j) that break the expected structure (identity for a batch: output i depends on
        input j != i; causal: on a later input j > i). With `exact` false (the group method with
        ambiguous columns) the pairs in ambiguous columns are candidates."""
        return [(int(i), int(j)) for i, j in core.mask_leaks(self.mask, self.expect)]

    def __repr__(self) -> str:
        n_out, n_in = self.mask.shape
        how = f"{self.method}, {self.passes} backward passes" + ("" if self.exact else f", {int(self.ambiguous.sum())} ambiguous columns")
        return f"DependencyMask({n_out} outputs x {n_in} inputs, expect {self.expect}, {len(self.leaks)} leaks; {how})"

    def plot(self, path: Any) -> Any:
        """Writes the mask as an SVG image (dependencies black) to `path` (a .svg file: it opens in
        any browser, and needs no plotting library)."""
        from pathlib import Path

        from ..report.svg import matrix

        if Path(path).suffix.lower() != ".svg":
            raise InputError(f"plot() writes SVG: give a path ending in .svg, not {str(path)!r}")
        title = f"dependencies along dim {self.dim}, expect {self.expect}: {len(self.leaks)} leaks"
        page = matrix(self.mask, title=title, xlabel=f"input slice (dim {self.dim})", ylabel=f"output slice (dim {self.out_dim})")
        Path(path).write_text(page, encoding="utf-8")
        return path


class _Run:
    """One forward pass on a leaf copy of the input (or, for token inputs, on the output of the
    first nn.Embedding), in eval mode, optionally recording every submodule's output in the order
    the modules finish and following the layout of every tensor."""

    def __init__(self, model: Any, x: Any, *, dim: int, record: bool, trace: bool) -> None:
        torch = _torch()
        if not callable(model):
            raise InputError(f"model must be a callable (a module or a function), got {type(model).__name__}")
        if not isinstance(x, torch.Tensor):
            raise InputError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.device.type == "meta":
            raise DeviceError("x is a meta tensor (a shape without data): the dependencies are measured by running the "
                              "model on values; pass a real batch (or torch.randn(x.shape) of the same shape)")
        roots = _roots(model)
        handles: list = []
        captured: list = []
        self.records: list[tuple[str, Any, Any]] = []
        if x.is_floating_point():
            self.leaf = x.detach().clone().requires_grad_(True)
            feed = self.leaf
        else:
            embeddings = [m for r in roots for m in r.modules() if isinstance(m, torch.nn.Embedding)]
            if not embeddings:
                raise InputError(
                    f"x is a {x.dtype} tensor: gradients need a floating input. For a token model pass the "
                    "embeddings and a callable that starts after the embedding"
                )

            def take_embedding(mod: Any, inp: Any, out: Any) -> Any:
                if captured:
                    return None
                leaf = out.detach().requires_grad_(True)
                captured.append(leaf)
                return leaf

            handles += [m.register_forward_hook(take_embedding) for m in embeddings]
            feed = x
        if record:
            for root in roots:
                for name, m in root.named_modules():
                    if m is not root:
                        handles.append(m.register_forward_hook(self._recorder(name)))
        tracer: Any = contextlib.nullcontext()
        if trace:
            from .layout_trace import trace_layout

            tracer = trace_layout(batch_dim=dim, batch_size=int(x.shape[dim]), root=roots[0] if roots else None)
        try:
            with torch.enable_grad(), eval_mode(model), tracer as tr:
                self.trace = tr
                out = model(feed)
        finally:
            for h in handles:
                h.remove()
        if not x.is_floating_point():
            if not captured:
                raise InputError("the model did not call its nn.Embedding; pass floating embeddings instead")
            self.leaf = captured[0]
        self.out = first_tensor(out)
        if self.out is None:
            raise InputError(f"the model returned {type(out).__name__} with no floating tensor in it")

    def _recorder(self, name: str) -> Any:
        def record(mod: Any, inp: Any, out: Any) -> None:
            t = first_tensor(out)
            if t is not None and t.requires_grad and len(self.records) < _MAX_LOCATE:
                self.records.append((name, t, first_tensor(inp)))

        return record


def _weights(out: Any, seed: int) -> Any:
    torch = _torch()
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(out.shape, generator=g, dtype=torch.float64) + 0.5).to(dtype=out.dtype, device=out.device)


def _vjp_rows(out: Any, leaf: Any, go: Any, vectorised: bool) -> Any:
    """The gradients of `out` weighted by each row of `go` ([k, *out.shape]) w.r.t. `leaf`, as
    [k, *leaf.shape]: one vectorised backward, or one backward per row. None if unreachable."""
    torch = _torch()
    if vectorised:
        (g,) = torch.autograd.grad(out, leaf, go, retain_graph=True, is_grads_batched=True, allow_unused=True)
        return g
    rows = [torch.autograd.grad(out, leaf, go[k], retain_graph=True, allow_unused=True)[0] for k in range(go.shape[0])]
    if all(r is None for r in rows):
        return None
    return torch.stack([r if r is not None else torch.zeros_like(leaf) for r in rows])


def _hits(run: _Run, weights: Any, select: np.ndarray, dim: int, out_dim: int) -> tuple[np.ndarray, int, bool]:
    """For each row of `select` (which output slices a backward pass weights): the input slices
    its gradient reaches. Returns (hits [passes, n_in], passes, saw_nonfinite).

    The rows go through one vectorised backward per chunk (`is_grads_batched`). Where that is
    slower than plain backward passes (on a CPU, batching a convolution's backward costs more
    than it saves: benches/bench_deps.py), the first two chunks are timed both ways and the
    faster way does the rest; an op without a batching rule always takes the plain way. Either
    way each row is one vector-Jacobian product, and the result is the same."""
    torch = _torch()
    out, leaf = run.out, run.leaf
    n_out, n_in = out.shape[out_dim], leaf.shape[dim]
    k_all = select.shape[0]
    hits = np.zeros((k_all, n_in), dtype=bool)
    if k_all == 0 or not out.requires_grad:
        return hits, 0, False
    per_pass = (leaf.numel() + 2 * out.numel()) * max(leaf.element_size(), 4)
    chunk = max(1, min(k_all, _CHUNK_ROWS, _CHUNK_BYTES // max(per_pass, 1)))
    nonfinite = False
    shape = [1] * (out.ndim + 1)
    shape[1 + out_dim] = n_out
    vectorised: bool | None = True
    timing: dict[bool, float] = {}
    for i, start in enumerate(range(0, k_all, chunk)):
        sel = torch.as_tensor(select[start:start + chunk], device=out.device)
        go = weights.unsqueeze(0) * sel.view([sel.shape[0]] + shape[1:]).to(weights.dtype)
        way = vectorised
        if way is None:  # still measuring: the second chunk goes the plain way
            way = False
        t0 = time.perf_counter()
        try:
            g = _vjp_rows(out, leaf, go, way)
        except (RuntimeError, NotImplementedError):
            if not way:
                raise
            way, vectorised = False, False  # no batching rule for some op
            g = _vjp_rows(out, leaf, go, False)
        if i < 2 and vectorised is not False and out.device.type == "cpu" and k_all > 2 * chunk:
            timing[way] = (time.perf_counter() - t0) / sel.shape[0]
            vectorised = None if len(timing) < 2 else timing[True] <= timing[False]
        elif vectorised is None:
            vectorised = True
        if g is None:
            continue
        h, nf = _reduce(g, [0, 1 + dim])
        hits[start:start + sel.shape[0]] = h
        nonfinite |= nf
    return hits, k_all, nonfinite


def _mask(run: _Run, *, dim: int, out_dim: int, method: str, expect: str, seed: int = 0) -> DependencyMask:
    out, leaf = run.out, run.leaf
    n_out, n_in = int(out.shape[out_dim]), int(leaf.shape[dim])
    weights = _weights(out, seed)
    notes: list[str] = []
    if not out.requires_grad:
        notes.append("the output does not depend on the input at all (no gradient path)")
    if method == "auto":
        method = "group" if expect == "identity" else "exact"
        refine = True
    else:
        refine = False
    ambiguous = np.zeros(n_in, dtype=bool)
    if method == "exact":
        hits, passes, nf = _hits(run, weights, np.eye(n_out, dtype=bool), dim, out_dim)
        mask = hits
        used = "exact"
    else:
        codes = core.group_codes(n_out)
        hits, passes, nf = _hits(run, weights, codes, dim, out_dim)
        mask, ambiguous = core.group_decode(np.ascontiguousarray(hits), n_out)
        used = "group"
        if refine and ambiguous.any():
            rows = np.nonzero(mask[:, ambiguous].any(axis=1))[0]
            select = np.zeros((len(rows), n_out), dtype=bool)
            select[np.arange(len(rows)), rows] = True
            exact_rows, extra, nf2 = _hits(run, weights, select, dim, out_dim)
            cols = np.nonzero(ambiguous)[0]
            mask = mask.copy()
            mask[:, cols] = False
            mask[np.ix_(rows, cols)] = exact_rows[:, cols]
            passes += extra
            nf |= nf2
            ambiguous = np.zeros(n_in, dtype=bool)
            used = "group+exact"
    if nf:
        notes.append("some gradients were NaN or infinite; they count as dependencies")
    return DependencyMask(
        mask=np.asarray(mask, dtype=bool), dim=dim, out_dim=out_dim, expect=expect, method=used, passes=int(passes),
        exact=not ambiguous.any(), ambiguous=np.asarray(ambiguous, dtype=bool), notes=notes,
    )


def _normalize(dim: int, ndim: int, what: str) -> int:
    if not -ndim <= dim < ndim:
        raise InputError(f"{what}={dim} is out of range for a {ndim}-d tensor")
    return dim % ndim


def dependency_mask(model: Any, x: Any, *, dim: int = 0, out_dim: int | None = None, method: str = "auto",
                    expect: str | None = None, seed: int = 0) -> DependencyMask:
    """Which output slices depend on which input slices along `dim` (the batch, or a time axis).

    `model` is any callable (a module or a function); its modules are in eval mode for the check
    and restored after it. `x` is a floating tensor (for a module with an nn.Embedding an integer
    tensor of tokens also works: the dependencies are then on the embedding's output). `expect`
    is the structure `.leaks` compares with: "identity" (default for dim 0) or "causal"
    (default for any other dim). `method`: "exact", "group" or "auto" (see the module's doc).
    """
    if method not in METHODS:
        raise InputError(f"method must be one of {METHODS}, got {method!r}")
    dim = _normalize(dim, getattr(x, "ndim", 0) or 1, "dim")
    expect = expect or ("identity" if dim == 0 else "causal")
    if expect not in EXPECTATIONS:
        raise InputError(f"expect must be one of {EXPECTATIONS}, got {expect!r}")
    run = _Run(model, x, dim=dim, record=False, trace=False)
    od = _normalize(dim if out_dim is None else out_dim, run.out.ndim, "out_dim")
    return _mask(run, dim=dim, out_dim=od, method=method, expect=expect, seed=seed)


class DependencyReport(Report):
    """The result of `check_batch_independence` or `check_causal`: the mask and its findings."""

    def __init__(self, title: str, mask: DependencyMask, findings: list[Finding], location: str | None) -> None:
        super().__init__(findings)
        self.title = title
        self.mask = mask
        self.location = location

    @property
    def leaks(self) -> list[tuple[int, int]]:
        return self.mask.leaks

    def details(self) -> list[str]:
        n_out, n_in = self.mask.mask.shape
        lines = [f"{n_out} output x {n_in} input slices, method {self.mask.method}, {self.mask.passes} backward passes"]
        return lines + self.mask.notes


def _shows_leak(run: _Run, h: Any, j: int, *, dim: int, expect: str) -> bool | None:
    """Whether intermediate `h` already shows the leak into input slice j: for the batch, a slice
    of h other than j that depends on input j; for causality, a position before j that does. The
    axis of h is the one of the input's length (`dim` if several are); None when there is none."""
    torch = _torch()
    n = int(run.leaf.shape[dim])
    axes = [a for a in range(h.ndim) if h.shape[a] == n]
    if len(axes) > 1:
        axes = [dim] if dim in axes else []
    if len(axes) != 1 or not h.requires_grad:
        return None
    a = axes[0]
    pos = torch.arange(n, device=h.device)
    sel = (pos != j) if expect == "identity" else (pos < j)
    shape = [1] * h.ndim
    shape[a] = n
    go = _weights(h, 1) * sel.view(shape).to(h.dtype)
    try:
        (g,) = torch.autograd.grad(h, run.leaf, go, retain_graph=True, allow_unused=True)
    except RuntimeError:
        return None
    if g is None:
        return False
    reach, _ = _reduce(g, [dim])
    return bool(reach[j])


def _locate(run: _Run, leak: tuple[int, int], *, dim: int, expect: str) -> tuple[str | None, str]:
    """The first module (in the order modules finish) whose output shows the leak. When its input
    shows it already, the leak came from its parent's own forward (a functional op between
    submodules): the parent is named. Returns (module, words for the message)."""
    _, j = leak
    skipped = False
    for name, h_out, h_in in run.records:
        shown = _shows_leak(run, h_out, j, dim=dim, expect=expect)
        if shown is None:
            skipped = True
            continue
        if not shown:
            continue
        if h_in is not None and _shows_leak(run, h_in, j, dim=dim, expect=expect):
            parent = name.rpartition(".")[0]
            if parent:
                return parent, f"it first appears in '{parent}' (in its own forward, before '{name}')"
            return None, f"it first appears in the model's own forward, before '{name}'"
        return name, f"it first appears in '{name}'"
    if run.records and not skipped:
        return None, "it first appears in the model's own forward, after its last submodule"
    return None, "the first module where it appears could not be found"


def _check(model: Any, x: Any, *, dim: int, expect: str, method: str) -> DependencyReport:
    torch = _torch()
    if not isinstance(x, torch.Tensor):
        raise InputError(f"x must be a torch.Tensor, got {type(x).__name__}")
    dim = _normalize(dim, x.ndim, "dim")
    n = int(x.shape[dim])
    if n < 2:
        what = "examples" if expect == "identity" else "positions"
        raise InputError(f"a dependency check needs at least 2 {what} along dim {dim}, got {n}")
    run = _Run(model, x, dim=dim, record=True, trace=expect == "identity")
    out_dim = _normalize(dim, run.out.ndim, "out_dim")
    dm = _mask(run, dim=dim, out_dim=out_dim, method=method, expect=expect)
    leaks = dm.leaks
    findings: list[Finding] = []
    location = None
    layout = list(run.trace.findings) if run.trace is not None else []
    if leaks:
        location, said = _locate(run, leaks[0], dim=dim, expect=expect)
        where = "; " + said
        i, j = leaks[0]
        if expect == "identity":
            mixed_rows = len({i for i, _ in leaks})
            hint = ("look at the module named, and at any view/reshape before it; an op reducing over the batch "
                    "(mean/sum over dim 0, BatchNorm in train mode) also mixes")
            if layout:
                first = layout[0]
                at = f" in {first.data['where']}" if first.data.get("where") else ""
                where += f"; {first.data['op']} {first.data['in_shape']} -> {first.data['out_shape']}{at} splits the batch"
                hint = first.hint
            findings.append(Finding(
                "batch-mixing", "error",
                f"output {i} depends on input {j} along dim {dim}: {len(leaks)} cross-example dependencies, "
                f"{mixed_rows} of {dm.mask.shape[0]} outputs affected{where}",
                module=location, hint=hint,
                data={"leaks": len(leaks), "first": (i, j), "method": dm.method, "passes": dm.passes},
            ))
        else:
            ahead = max(jj - ii for ii, jj in leaks)
            findings.append(Finding(
                "causal-leak", "error",
                f"position {i} of the output depends on the later input position {j} along dim {dim}: "
                f"{len(leaks)} future dependencies, up to {ahead} step{'s' if ahead > 1 else ''} ahead{where}",
                module=location,
                hint="check the attention mask (torch.triu(..., diagonal=1) masks the future) and the "
                "convolution padding (pad k-1 on the left only, or trim the right end)",
                data={"leaks": len(leaks), "first": (i, j), "max_ahead": ahead, "method": dm.method, "passes": dm.passes},
            ))
    findings += layout
    title = "batch independence" if expect == "identity" else "causality"
    return DependencyReport(title, dm, findings, location)


def check_batch_independence(model: Any, x: Any, *, method: str = "auto") -> DependencyReport:
    """Expects output example i to depend on input example i only (dim 0, eval mode): else
    `batch-mixing`, naming the first module where the mixing appears, and `view-mixes-batch` for
    a view/reshape on the way that splits the batch."""
    return _check(model, x, dim=0, expect="identity", method=method)


def check_causal(model: Any, x: Any, *, dim: int = 1, method: str = "auto") -> DependencyReport:
    """Expects output position t to depend on input positions <= t along `dim` (eval mode): else
    `causal-leak`, naming the first module where the future leaks in."""
    return _check(model, x, dim=dim, expect="causal", method=method)
