"""`check_init()`: the loss at initialisation against its expected value, and the final layer's
bias against the data's prior (Karpathy's recipe: "verify loss @ init", "init well").

Pretrained input: at the first BatchNorm whose running statistics have seen data, the batch's
per-channel statistics against them (`pretrained-input-mismatch`, judged as `watch` judges it at
the first step: `checks/inputs/pretrained_input.py`).

Expected loss: ln C for C-class cross-entropy (and NLL on log_softmax), ln 2 per label for binary
cross-entropy, the target variance for MSE (what a model predicting the target mean scores).
`loss-at-init` fires when the first loss is more than `LOSS_RATIO` times that value: the logits
or outputs start badly scaled (TheDeepChecker flags a loss off by more than 1x its expected
value; 1.5x is stricter and still leaves a default-initialised network silent).

Prior: the log class frequencies (classification), the label frequencies (multi-label), the
target mean (regression). `final-bias-init` fires when the final bias is far from it: for
classes, when KL(prior || softmax(bias)) (the loss the bias alone wastes, in nats) exceeds
`KL_LIMIT` and the batch's sampling noise; for regression, when the bias is more than half a
target standard deviation from the target mean (on average over outputs).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..errors import InputError
from ..findings import Finding, Report
from .deps import first_tensor

LOSS_RATIO = 1.5
KL_LIMIT = 0.1
Z_LIMIT = 0.5

_CLASS_LOSSES = {"CrossEntropyLoss", "cross_entropy", "NLLLoss", "nll_loss"}
_BINARY_LOSSES = {"BCEWithLogitsLoss", "binary_cross_entropy_with_logits", "BCELoss", "binary_cross_entropy"}
_REGRESSION_LOSSES = {"MSELoss", "mse_loss"}


def _torch():
    import torch

    return torch


@contextlib.contextmanager
def preserved(model: Any) -> Iterator[None]:
    """Runs a forward pass as training would (train mode) and leaves no trace: buffers (BatchNorm
    running statistics), every module's mode and the random number generators are restored."""
    torch = _torch()
    mods = list(model.modules()) if isinstance(model, torch.nn.Module) else []
    modes = [(m, m.training) for m in mods]
    buffers = [(b, b.detach().clone()) for m in mods[:1] for b in m.buffers()]
    devices = sorted({b.device.index or 0 for m in mods[:1] for b in m.parameters() if b.device.type == "cuda"})
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        for m, was in modes:
            m.training = was


def split_batch(batch: Any) -> tuple[Any, Any]:
    """(inputs, targets) of a batch: a pair, a longer tuple (all but the last are inputs), or a
    dict with an input and a target key."""
    if isinstance(batch, dict):
        xs = [k for k in ("x", "input", "inputs", "image", "images", "pixel_values", "input_ids", "features") if k in batch]
        ys = [k for k in ("y", "target", "targets", "label", "labels") if k in batch]
        if xs and ys:
            return batch[xs[0]], batch[ys[0]]
        raise InputError(f"cannot tell inputs from targets in a dict batch with keys {sorted(batch)}")
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return (batch[0] if len(batch) == 2 else tuple(batch[:-1])), batch[-1]
    raise InputError(f"a batch must be (inputs, targets), got {type(batch).__name__}")


def call_model(model: Any, x: Any) -> Any:
    return model(*x) if isinstance(x, tuple) else model(x)


class InitReport(Report):
    """The loss at initialisation, what it should be, and the final bias against the prior."""

    title = "init check"

    def __init__(self, findings: list[Finding], *, loss: float, expected: float | None, loss_kind: str | None,
                 final_layer: str | None, prior: Any, notes: list[str]) -> None:
        super().__init__(findings)
        self.loss = loss
        self.expected = expected
        self.loss_kind = loss_kind
        self.final_layer = final_layer
        self.prior = prior
        self.notes = notes

    def details(self) -> list[str]:
        exp = f" (expected about {self.expected:.4g} for {self.loss_kind})" if self.expected is not None else ""
        lines = [f"loss at init {self.loss:.4g}{exp}"]
        if self.final_layer:
            lines.append(f"final layer '{self.final_layer}'")
        return lines + self.notes


def _final_layer(model: Any, x: Any) -> Any:
    """The Linear/Conv module that produces the model's output (looking through shape ops,
    Dropout and a final log_softmax), from the data-flow graph; None when it is not one."""
    from .graph import build
    from .lint import _LINEAR_MODULES, _LOG_SOFTMAX, _producer

    try:
        g = build(model, x)
    except Exception:  # noqa: BLE001 - no graph (an untraceable model): the check falls back
        return None
    if not g.outputs:
        return None
    p = _producer(g, g.outputs[0])
    if p.op in _LOG_SOFTMAX and p.inputs:
        p = _producer(g, p.inputs[0])
    if p.kind == "module" and p.op in _LINEAR_MODULES:
        return p
    return None


def _reduction_scale(loss_fn: Any, out: Any, y: Any, kind: str) -> float:
    """Divides a 'sum' reduction back to a per-sample (classes) or per-element mean."""
    if getattr(loss_fn, "reduction", "mean") != "sum":
        return 1.0
    if kind in _CLASS_LOSSES:
        return 1.0 / max(1, y.numel())
    return 1.0 / max(1, out.numel())


def check_init(model: Any, batch: Any, loss_fn: Any, *, prior: Any = None) -> InitReport:
    """Loss at initialisation against ln C (cross-entropy) or the target variance (MSE), and the
    final layer's bias against the data's prior. `prior` overrides the batch's estimate: class
    frequencies (or counts) for classification, per-output target means for regression (e.g.
    from `inspect_data` over the whole dataset)."""
    from .lint import loss_name

    torch = _torch()
    x, y = split_batch(batch)
    kind = loss_name(loss_fn)
    bn_seen: list[tuple[str, Any, dict[str, Any]]] = []
    handles = _watch_pretrained_bn(model, bn_seen)
    try:
        with preserved(model), torch.no_grad():
            if isinstance(model, torch.nn.Module):
                model.train()
            out_raw = call_model(model, x)
            out = first_tensor(out_raw)
            loss_t = loss_fn(out_raw if out is None else out, y)
    finally:
        for h in handles:
            h.remove()
    loss = float(loss_t.detach().float().mean()) * (_reduction_scale(loss_fn, out, y, kind) if kind and out is not None else 1.0)
    findings: list[Finding] = _pretrained_input(bn_seen)
    notes: list[str] = []
    expected = None
    prior_used: Any = None
    final = _final_layer(model, x)
    if out is None or kind is None:
        notes.append(f"no expected initial loss is known for {type(loss_fn).__name__}; only the value is reported")
        return InitReport(findings, loss=loss, expected=None, loss_kind=kind, final_layer=None, prior=None, notes=notes)
    out = out.detach().float()
    yt = torch.as_tensor(y).detach()

    if kind in _CLASS_LOSSES and out.ndim >= 1:
        c = int(out.shape[1]) if out.ndim >= 2 else int(out.shape[0])
        expected = math.log(c)
        if yt.is_floating_point() and yt.shape == out.shape:  # class probabilities as targets
            counts = yt.transpose(0, 1).reshape(c, -1).sum(1).cpu().double().numpy() if yt.ndim > 1 else yt.cpu().double().numpy()
        else:
            yv = yt.reshape(-1).long()
            yv = yv[(yv >= 0) & (yv < c)]
            counts = np.bincount(yv.cpu().numpy(), minlength=c).astype(np.float64)
        n = float(counts.sum())
        p = _prior_array(prior, c) if prior is not None else (counts + 0.5) / (n + 0.5 * c)
        prior_used = p
        noise = 2.0 * (c - 1) / (2.0 * max(n, 1.0)) if prior is None else 0.0
        findings += _class_bias(final, p, c, KL_LIMIT + noise)
    elif kind in _BINARY_LOSSES:
        expected = math.log(2.0)
        if yt.shape == out.shape and out.ndim >= 1:
            dims = [d for d in range(out.ndim) if d != out.ndim - 1] if out.ndim > 1 else [0]
            p = yt.float().mean(dim=dims).cpu().double().numpy().reshape(-1)
            n = yt.numel() / max(1, p.size)
            if prior is not None:
                p = np.asarray(prior, dtype=np.float64).reshape(-1)
            prior_used = p
            if kind in ("BCEWithLogitsLoss", "binary_cross_entropy_with_logits"):
                noise = 0.0 if prior is not None else 2.0 / max(n, 1.0)
                findings += _binary_bias(final, p, KL_LIMIT + noise)
    elif kind in _REGRESSION_LOSSES:
        yf = yt.float()
        if yf.shape != out.shape:
            yf = yf.reshape(out.shape) if yf.numel() == out.numel() else yf
        per_out = yf.reshape(-1, yf.shape[-1]) if yf.ndim > 1 else yf.reshape(-1, 1)
        mean = per_out.mean(0).cpu().double().numpy()
        var = per_out.var(0, unbiased=False).cpu().double().numpy()
        expected = float(var.mean())
        if prior is not None:
            mean = np.asarray(prior, dtype=np.float64).reshape(-1)
        prior_used = mean
        findings += _regression_bias(final, mean, np.sqrt(var))
    else:
        notes.append(f"no expected initial loss is known for {kind}; only the value is reported")

    if expected is not None and math.isfinite(loss) and loss > LOSS_RATIO * expected + 1e-12:
        findings.insert(0, Finding(
            "loss-at-init", "warning",
            f"the loss at initialisation is {loss:.4g}, {loss / max(expected, 1e-300):.1f}x its expected value "
            f"{expected:.4g} ({_expected_words(kind, out)})",
            module=None, hint="scale down the last layer's weights at init (e.g. x0.1) and set its bias to the data's "
            "prior; check the input normalisation",
            data={"loss": loss, "expected": expected, "ratio": loss / max(expected, 1e-300)},
        ))
    elif expected is not None and not math.isfinite(loss):
        findings.insert(0, Finding(
            "loss-at-init", "error", f"the loss at initialisation is {loss}", hint="look for NaN/Inf in the data and the model",
            data={"loss": loss, "expected": expected},
        ))
    if final is None:
        notes.append("the final layer is not a Linear/Conv module: its bias was not checked")
    return InitReport(findings, loss=loss, expected=expected, loss_kind=kind,
                      final_layer=final.name if final is not None else None, prior=prior_used, notes=notes)


def _watch_pretrained_bn(model: Any, seen: list[tuple[str, Any, dict[str, Any]]]) -> list[Any]:
    """One-time pre-hooks on the BatchNorms whose running statistics have seen data: the first to
    run records its input's per-channel statistics against the running ones."""
    torch = _torch()
    if not isinstance(model, torch.nn.Module):
        return []
    from ..checks.inputs.pretrained_input import bn_input_figures
    from ..runtime.taps import pretrained_bn

    def make(name: str, m: Any) -> Any:
        def hook(module: Any, args: Any) -> None:
            x = args[0] if args else None
            if seen or not isinstance(x, torch.Tensor) or x.dim() < 2 or not x.is_floating_point():
                return None
            xd = x.detach().double()
            dims = [0] + list(range(2, xd.dim()))
            v = torch.stack([xd.mean(dims), xd.var(dims, unbiased=False), m.running_mean.double(), m.running_var.double()])
            v = v.cpu().numpy()
            seen.append((name, module, bn_input_figures(v[0], v[1], v[2], v[3], float(m.eps))))
            return None

        return hook

    return [m.register_forward_pre_hook(make(name, m)) for name, m in model.named_modules() if pretrained_bn(m)]


def _pretrained_input(seen: list[tuple[str, Any, dict[str, Any]]]) -> list[Finding]:
    from ..checks.inputs.pretrained_input import judge_bn_input
    from ..findings import CATALOGUE

    out = []
    for name, module, figures in seen[:1]:
        r = judge_bn_input(name, f"'{name}' ({type(module).__name__})", figures, None)
        if r is not None:
            out.append(Finding(r.code, CATALOGUE[r.code].severity, r.message, module=name, hint=CATALOGUE[r.code].fix,
                               data=r.data))
    return out


def _expected_words(kind: str, out: Any) -> str:
    if kind in _CLASS_LOSSES:
        return f"ln C for C = {out.shape[1] if out.ndim >= 2 else out.shape[0]} classes"
    if kind in _BINARY_LOSSES:
        return "ln 2 for a prediction of 0.5"
    return "the target variance"


def _prior_array(prior: Any, c: int) -> np.ndarray:
    """Class frequencies from counts or frequencies (a sequence, an array or a {class: value} dict),
    with no class at exactly zero."""
    if isinstance(prior, dict):
        p = np.array([float(prior.get(k, 0.0)) for k in range(c)])
    else:
        p = np.asarray(prior, dtype=np.float64).reshape(-1)
    if p.size != c:
        raise InputError(f"prior has {p.size} classes, the model outputs {c}")
    if p.sum() > 1.0 + 1e-6:  # counts: add half a sample to every class
        p = (p + 0.5) / (p.sum() + 0.5 * c)
    p = np.maximum(p, 1e-6)
    return p / p.sum()


def _bias_of(final: Any) -> np.ndarray | None:
    b = getattr(final.module, "bias", None) if final is not None else None
    return None if b is None else b.detach().double().cpu().numpy().reshape(-1)


def _class_bias(final: Any, p: np.ndarray, c: int, limit: float) -> list[Finding]:
    if final is None:
        return []
    b = _bias_of(final)
    bias = np.zeros(c) if b is None else b
    if bias.size != c:
        return []
    logq = bias - bias.max() - np.log(np.exp(bias - bias.max()).sum())
    kl = float(np.sum(p * (np.log(p) - logq)))
    if kl <= limit:
        return []
    target = np.log(p)
    what = "has no bias" if b is None else "has a bias"
    return [Finding(
        "final-bias-init", "info",
        f"final layer {final.label} {what} {'' if b is None else 'that is '}far from the log class frequencies: "
        f"KL(prior || softmax(bias)) = {kl:.3f} nats wasted at init (class frequencies {_short(p)})",
        module=final.name,
        hint=f"initialise {final.name}.bias to the log class frequencies {_short(target)}"
        + (" (create it with bias=True)" if b is None else ""),
        data={"kl": kl, "prior": p.tolist(), "log_prior": target.tolist()},
    )]


def _binary_bias(final: Any, p: np.ndarray, limit: float) -> list[Finding]:
    if final is None:
        return []
    b = _bias_of(final)
    bias = np.zeros(p.size) if b is None else b
    if bias.size != p.size:
        return []
    p = np.clip(p, 1e-4, 1 - 1e-4)
    q = 1.0 / (1.0 + np.exp(-bias))
    kl = float(np.mean(p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))))
    if kl <= limit:
        return []
    target = np.log(p / (1 - p))
    return [Finding(
        "final-bias-init", "info",
        f"the bias of final layer {final.label} predicts {_short(q)} where the labels' frequency is {_short(p)}: "
        f"{kl:.3f} nats wasted at init",
        module=final.name, hint=f"initialise {final.name}.bias to log(p / (1 - p)) = {_short(target)}",
        data={"kl": kl, "prior": p.tolist(), "logit_prior": target.tolist()},
    )]


def _regression_bias(final: Any, mean: np.ndarray, std: np.ndarray) -> list[Finding]:
    if final is None:
        return []
    b = _bias_of(final)
    bias = np.zeros(mean.size) if b is None else b
    if bias.size != mean.size:
        return []
    scale = np.maximum(std, 1e-8 * np.maximum(1.0, np.abs(mean)))
    z = float(np.sqrt(np.mean(((bias - mean) / scale) ** 2)))
    if z <= Z_LIMIT:
        return []
    return [Finding(
        "final-bias-init", "info",
        f"the bias {_short(bias)} of final layer {final.label} is {z:.1f} target standard deviations from the target mean "
        f"{_short(mean)}: the first iterations only learn the offset (hockey-stick loss curve)",
        module=final.name, hint=f"initialise {final.name}.bias to the target mean {_short(mean)}"
        + (" (create it with bias=True)" if b is None else ""),
        data={"z": z, "target_mean": mean.tolist(), "bias": bias.tolist()},
    )]


def _short(v: np.ndarray, k: int = 4) -> str:
    vals = ", ".join(f"{x:.3g}" for x in np.asarray(v).reshape(-1)[:k])
    return f"[{vals}{', ...' if np.asarray(v).size > k else ''}]"
