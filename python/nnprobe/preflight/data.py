"""`inspect_data()`: become one with the data (Karpathy's recipe, step 1), automatically.

Class counts and imbalance, per-feature (tabular) or per-channel (images, signals) mean and std
from the core's one-pass statistics, non-finite values, constant features, exact duplicates within
a split and across data/test (rows hashed in parallel by the core, hash matches confirmed byte by
byte), outliers, and sequence targets that equal their inputs (a missing shift by one:
`target-in-input`).

Thresholds: `class-imbalance` when the largest class is more than 10x the smallest (SageMaker
Debugger's ClassImbalance). `unnormalized-inputs` (float inputs only; integer inputs are taken as
tokens or categories) when a feature's |mean| or std exceeds 10 (raw pixels, raw units), when
feature scales differ by more than 100x (with some std above 1), or when a feature sits more than
5 standard deviations away from zero (|mean| > 1): data in [0, 1] or standardised data stay
silent. Duplicates and overlap are errors/warnings from 1% of the samples (or any duplicate with
conflicting labels), info below. Outliers (|z| > 8 on some feature) are listed, not flagged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import core
from ..errors import InputError
from ..findings import Finding, Report

IMBALANCE_RATIO = 10.0
LARGE = 10.0
SCALE_RATIO = 100.0
OFFSET_SIGMAS = 5.0
OUTLIER_Z = 8.0
DUPLICATE_SHARE = 0.01
SAME_SHARE = 0.9  # target-in-input: share of positions where y[:, t] == x[:, t]
_PROGRESS_MIN = 20_000  # samples; a progress bar below that would only flicker


def _torch():
    import torch

    return torch


@dataclass
class _Split:
    x: np.ndarray
    y: np.ndarray | None
    source: str  # how the samples were read: "arrays", "dataset", "loader"
    shifted_inside: bool = False  # dict samples with input_ids and labels: the model shifts them itself


def _to_numpy(v: Any) -> np.ndarray:
    if isinstance(v, np.ndarray):
        return v
    torch = _torch() if "torch" in type(v).__module__ else None
    if torch is not None and isinstance(v, torch.Tensor):
        t = v.detach()
        if t.dtype == torch.bfloat16:
            t = t.float()
        return t.cpu().numpy()
    return np.asarray(v)


def _split_sample(s: Any) -> tuple[Any, Any]:
    if isinstance(s, dict):
        from .init import split_batch

        try:
            return split_batch(s)
        except InputError:
            return next(iter(s.values())), None
    if isinstance(s, (tuple, list)):
        return (s[0], s[1]) if len(s) >= 2 else (s[0], None)
    return s, None


def _progress(total: int | None, desc: str, enabled: bool | None) -> Any:
    from tqdm.auto import tqdm

    show = enabled if enabled is not None else (total is None or total >= _PROGRESS_MIN)
    # disable=None: tqdm turns itself off when stderr is not a terminal
    return tqdm(total=total, desc=desc, unit="samples", disable=None if show else True, leave=False)


def _read(data: Any, max_samples: int | None, progress: bool | None, what: str) -> _Split:
    if isinstance(data, (str, bytes)) or hasattr(data, "__fspath__"):
        raise InputError(f"{what}: inspect_data reads arrays, tensors, datasets and loaders, not a file name; load it "
                         "first (numpy.load(path), or pandas.read_csv(path).to_numpy())")
    # arrays and (X, y) pairs first: NumPy input never imports torch
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(hasattr(a, "shape") or isinstance(a, (list, np.ndarray)) for a in data):
        x, y = _to_numpy(data[0]), _to_numpy(data[1])
        if len(x) != len(y):
            raise InputError(f"{what}: X has {len(x)} samples and y has {len(y)}")
        n = len(x) if max_samples is None else min(len(x), max_samples)
        return _Split(x[:n], y[:n], "arrays")
    if hasattr(data, "shape"):
        x = _to_numpy(data)
        return _Split(x[:max_samples] if max_samples is not None else x, None, "arrays")
    torch = _torch()
    DataLoader, Dataset = torch.utils.data.DataLoader, torch.utils.data.Dataset
    if isinstance(data, DataLoader):
        ds = data.dataset
        default = data.collate_fn is torch.utils.data.default_collate or getattr(data.collate_fn, "__name__", "") == "default_collate"
        if hasattr(ds, "__getitem__") and hasattr(ds, "__len__") and default:
            return _read(ds, max_samples, progress, what)
        return _read_batches(iter(data), None, max_samples, progress, what, "loader")
    if isinstance(data, torch.utils.data.IterableDataset):  # no length: read as a loader would
        return _read_batches(iter(DataLoader(data, batch_size=256, num_workers=0)), None, max_samples, progress, what, "loader")
    if isinstance(data, torch.utils.data.TensorDataset):
        ts = data.tensors
        x = _to_numpy(ts[0])
        targets = _to_numpy(ts[1]) if len(ts) > 1 else None
        n = len(x) if max_samples is None else min(len(x), max_samples)
        return _Split(x[:n], None if targets is None else targets[:n], "arrays")
    if isinstance(data, Dataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        n = len(data) if max_samples is None else min(len(data), max_samples)
        if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
            sub = torch.utils.data.Subset(data, range(n)) if n < len(data) else data
            loader = DataLoader(sub, batch_size=256, shuffle=False, num_workers=0)
            return _read_batches(iter(loader), n, None, progress, what, "dataset")
        return _read_batches(iter(DataLoader(data, batch_size=256, num_workers=0)), None, max_samples, progress, what, "dataset")
    raise InputError(
        f"{what}: expected a Dataset, a DataLoader, an (X, y) pair or an array, got {type(data).__name__}"
    )


def _read_batches(batches: Any, total: int | None, max_samples: int | None, progress: bool | None, what: str, source: str) -> _Split:
    xs, ys = [], []
    n = 0
    hf = False
    with _progress(total, f"inspect_data ({what})", progress) as bar:
        for b in batches:
            hf = hf or (isinstance(b, dict) and "input_ids" in b and "labels" in b)
            x, y = _split_sample(b)
            x = _to_numpy(x)
            xs.append(x)
            if y is not None:
                ys.append(_to_numpy(y))
            n += len(x)
            bar.update(len(x))
            if max_samples is not None and n >= max_samples:
                break
    if not xs:
        raise InputError(f"{what}: no samples")
    x = np.concatenate(xs)
    y = np.concatenate(ys) if len(ys) == len(xs) else None
    if max_samples is not None:
        x, y = x[:max_samples], (None if y is None else y[:max_samples])
    return _Split(x, y, source, shifted_inside=hf)


def _classes(y: np.ndarray | None) -> np.ndarray | None:
    """Integer class labels, or None when y is not a classification target."""
    if y is None or y.ndim == 0 or len(y) == 0:
        return None
    if y.ndim == 2 and y.shape[1] > 1 and np.issubdtype(y.dtype, np.number):
        if np.all((y == 0) | (y == 1)) and np.all(y.sum(1) == 1):
            return y.argmax(1)  # one-hot
        return None
    if y.ndim != 1:
        return None
    if y.dtype == bool or np.issubdtype(y.dtype, np.integer):
        return y.astype(np.int64)
    # float targets are classes only when they are a few whole numbers (0./1. labels for BCE);
    # whole-numbered regression targets (ages, counts) have many values
    if np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        if len(np.unique(y)) <= 20:
            return y.astype(np.int64)
    return None


def _channel_axis(shape: tuple) -> int | None:
    """The axis holding features (tabular: 1) or channels (NCHW: 1, NHWC: last, [N, T, F]: last)."""
    nd = len(shape)
    if nd < 2:
        return None
    if nd == 2:
        return 1
    if nd == 4 and shape[-1] in (1, 3, 4) and shape[1] not in (1, 3, 4):
        return 3
    if nd == 3 and shape[1] > shape[2]:
        return 2
    return 1


class DataReport(Report):
    """What `inspect_data` measured, and its findings."""

    title = "data inspection"

    def __init__(self) -> None:
        super().__init__()
        self.n_samples = 0
        self.sample_shape: tuple = ()
        self.dtype = ""
        self.class_counts: dict[int, int] = {}
        self.test_class_counts: dict[int, int] = {}
        self.target_mean: np.ndarray | None = None  # regression targets (per output)
        self.target_std: np.ndarray | None = None
        self.feature_axis: int | None = None
        self.feature_mean = np.zeros(0)
        self.feature_std = np.zeros(0)
        self.constant_features: list[int] = []
        self.nonfinite_samples: list[int] = []
        self.duplicates = np.zeros((0, 2), dtype=np.int64)
        self.overlap = np.zeros((0, 2), dtype=np.int64)
        self.outliers: list[tuple[int, float]] = []
        self.n_test = 0

    def details(self) -> list[str]:
        out = [f"{self.n_samples} samples of shape {list(self.sample_shape)} ({self.dtype})"
               + (f"; test: {self.n_test}" if self.n_test else "")]
        if self.class_counts:
            counts = sorted(self.class_counts.items())
            shown = ", ".join(f"{k}: {v}" for k, v in counts[:10]) + (", ..." if len(counts) > 10 else "")
            out.append(f"classes ({len(counts)}): {shown}")
        if self.target_mean is not None and self.target_std is not None:
            out.append(f"regression targets: mean {_short(self.target_mean)}, std {_short(self.target_std)}")
        if self.feature_mean.size:
            what = "feature" if self.feature_axis == 1 and len(self.sample_shape) == 1 else "channel"
            out.append(f"per-{what} mean {_short(self.feature_mean)}, std {_short(self.feature_std)}")
        if self.outliers:
            shown = ", ".join(f"#{i} (|z| {z:.0f})" for i, z in self.outliers[:5])
            out.append(f"outliers (|z| > {OUTLIER_Z:.0f}): {len(self.outliers)} samples, e.g. {shown}")
        if len(self.duplicates):
            out.append(f"duplicate samples: {len(self.duplicates)}")
        if len(self.overlap):
            out.append(f"test samples also in the data: {len(self.overlap)}")
        return out


def _short(v: np.ndarray, k: int = 6) -> str:
    vals = ", ".join(f"{x:.3g}" for x in np.asarray(v).reshape(-1)[:k])
    return f"[{vals}{', ...' if np.asarray(v).size > k else ''}]"


def _feature_stats(x: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Per-feature/channel mean, std, min, max (core stats over strided views) and the count of
    non-finite values."""
    views = [x[(slice(None),) * axis + (c,)] for c in range(x.shape[axis])]  # strided views, no copies
    st = core.stats_rows(views)
    col = {f: i for i, f in enumerate(core.STATS_FIELDS)}
    nonfinite = int(st[:, col["nan"]].sum() + st[:, col["inf"]].sum())
    return st[:, col["mean"]], st[:, col["std"]], st[:, col["min"]], st[:, col["max"]], nonfinite


def inspect_data(data: Any, *, test: Any = None, max_samples: int | None = None, progress: bool | None = None) -> DataReport:
    """Inspects `data` (a Dataset, a DataLoader, an (X, y) pair or an array) and, with `test`,
    its overlap with a test split. `max_samples` caps the samples read from each; `progress`
    forces the progress bar on or off (default: on for long scans on a terminal)."""
    rep = DataReport()
    train = _read(data, max_samples, progress, "data")
    x, y = train.x, train.y
    if x.ndim == 0:
        raise InputError("data: a scalar is not a dataset")
    if len(x) == 0:
        raise InputError("data: no samples to inspect (an empty array or dataset); pass at least one sample")
    rep.n_samples, rep.sample_shape, rep.dtype = int(len(x)), tuple(x.shape[1:]), str(x.dtype)
    idx_words = "sample" if train.source != "loader" else "sample (in loader order)"
    findings: list[Finding] = []

    # classes
    cls = _classes(y)
    if cls is not None and len(cls):
        vals, counts = np.unique(cls, return_counts=True)
        rep.class_counts = {int(v): int(c) for v, c in zip(vals, counts)}
        if len(vals) >= 2:
            big, small = int(np.argmax(counts)), int(np.argmin(counts))
            ratio = counts[big] / counts[small]
            if ratio > IMBALANCE_RATIO:
                findings.append(Finding(
                    "class-imbalance", "warning",
                    f"class {vals[big]} has {counts[big]} samples and class {vals[small]} only {counts[small]}: "
                    f"ratio {ratio:.1f} (> {IMBALANCE_RATIO:.0f})",
                    hint="reweight the loss (weight=) or resample (WeightedRandomSampler); initialise the final bias to "
                    "the log class frequencies; report per-class metrics",
                    data={"ratio": float(ratio), "counts": rep.class_counts},
                ))

    elif y is not None and len(y) and np.issubdtype(y.dtype, np.floating):
        yt = y.reshape(len(y), -1).astype(np.float64)
        rep.target_mean, rep.target_std = np.nanmean(yt, axis=0), np.nanstd(yt, axis=0)

    # per-feature / per-channel statistics
    xf = x.reshape(len(x), -1) if x.ndim > 1 else x.reshape(-1, 1)
    is_float = np.issubdtype(x.dtype, np.floating)
    axis = _channel_axis(x.shape) or 1  # 1 for a flat array too (one feature column after the reshape)
    rep.feature_axis = axis
    if len(x) and (is_float or np.issubdtype(x.dtype, np.integer) or x.dtype == bool):
        src = x if x.ndim >= 2 else x.reshape(-1, 1)
        mean, std, lo, hi, nonfinite = _feature_stats(src, axis)
        rep.feature_mean, rep.feature_std = mean, std
        if nonfinite:
            bad = np.nonzero(~np.isfinite(xf).all(axis=1))[0]
            rep.nonfinite_samples = bad.tolist()
            findings.append(Finding(
                "non-finite-data", "error",
                f"{nonfinite} NaN/Inf values in {len(bad)} samples, e.g. {idx_words}s {bad[:5].tolist()}",
                hint="drop or impute those samples; check the loading and preprocessing code",
                data={"values": nonfinite, "samples": bad[:100].tolist()},
            ))
        constant = np.nonzero((lo == hi) & np.isfinite(lo))[0] if len(x) > 1 else np.zeros(0, dtype=np.int64)
        if x.ndim == 2 or x.ndim == 1:
            rep.constant_features = constant.tolist()
        else:  # per channel, plus per-element constants in the flattened sample
            small = len(x) > 1 and xf.shape[1] <= 1 << 16
            per_elem = np.nonzero(xf.min(axis=0) == xf.max(axis=0))[0] if small else np.zeros(0, dtype=np.int64)
            rep.constant_features = per_elem.tolist()
        if rep.constant_features and len(x) > 1:
            what = "features" if x.ndim <= 2 else "input elements (flattened)"
            findings.append(Finding(
                "constant-features", "info",
                f"{len(rep.constant_features)} of {xf.shape[1] if x.ndim > 2 else len(mean)} {what} never change, "
                f"e.g. {rep.constant_features[:8]}",
                hint="drop them, or guard the normalisation with an epsilon",
                data={"features": rep.constant_features[:1000]},
            ))
        if is_float:
            findings += _normalisation(mean, std, lo, hi, axis, x.ndim)
            rep.outliers = _outliers(xf if x.ndim == 2 else None, mean, std)

    # exact duplicates within the split, overlap with the test split
    dup = core.duplicate_rows(xf)
    rep.duplicates = dup
    if len(dup):
        conflicts = int(np.sum(y[dup[:, 0]] != y[dup[:, 1]])) if y is not None and y.ndim == 1 else 0
        share = len(dup) / max(1, len(x))
        sev = "warning" if share >= DUPLICATE_SHARE or conflicts else "info"
        extra = f"; {conflicts} of them with a different label" if conflicts else ""
        findings.append(Finding(
            "duplicate-samples", sev,
            f"{len(dup)} samples ({share:.1%}) repeat an earlier one exactly, e.g. {idx_words} {dup[0, 0]} = {dup[0, 1]}{extra}",
            hint="deduplicate before splitting" + ("; fix the conflicting labels" if conflicts else ""),
            data={"count": int(len(dup)), "share": share, "conflicting_labels": conflicts, "pairs": dup[:100].tolist()},
        ))
    if test is not None:
        ts = _read(test, max_samples, progress, "test")
        tx = ts.x.reshape(len(ts.x), -1) if ts.x.ndim > 1 else ts.x.reshape(-1, 1)
        rep.n_test = int(len(tx))
        tcls = _classes(ts.y)
        if tcls is not None:
            vals, counts = np.unique(tcls, return_counts=True)
            rep.test_class_counts = {int(v): int(c) for v, c in zip(vals, counts)}
        if tx.shape[1:] != xf.shape[1:]:
            raise InputError(f"test samples have {tx.shape[1]} values each, the data's have {xf.shape[1]}")
        if tx.dtype != xf.dtype:
            tx = tx.astype(xf.dtype)
        ov = core.overlap_rows(xf, tx)
        rep.overlap = ov
        if len(ov):
            share = len(ov) / max(1, len(tx))
            findings.append(Finding(
                "train-test-overlap", "error" if share >= DUPLICATE_SHARE else "warning",
                f"{len(ov)} test samples ({share:.1%}) also appear in the data, e.g. test {ov[0, 0]} = {idx_words} {ov[0, 1]}",
                hint="deduplicate across splits before training; split by a key (user, document) when samples repeat",
                data={"count": int(len(ov)), "share": share, "pairs": ov[:100].tolist()},
            ))

    if not train.shifted_inside:
        findings += _target_shift(x, y)
    rep.findings = findings
    return rep


def _normalisation(mean: np.ndarray, std: np.ndarray, lo: np.ndarray, hi: np.ndarray, axis: int, ndim: int) -> list[Finding]:
    ok = np.isfinite(mean) & np.isfinite(std) & (hi > lo)
    if not ok.any():
        return []
    m, s = mean[ok], std[ok]
    idx = np.nonzero(ok)[0]
    what = "feature" if ndim <= 2 else "channel"
    reasons = []
    k_large = np.nonzero((np.abs(m) > LARGE) | (s > LARGE))[0]
    if len(k_large):
        k = k_large[np.argmax(np.maximum(np.abs(m[k_large]), s[k_large]))]
        reasons.append(f"{what} {idx[k]} has mean {m[k]:.3g} and std {s[k]:.3g} (> {LARGE:.0f})")
    ratio = s.max() / s.min()
    if ratio > SCALE_RATIO and s.max() > 1.0:
        reasons.append(f"{what} stds range from {s.min():.3g} ({what} {idx[np.argmin(s)]}) to {s.max():.3g} "
                       f"({what} {idx[np.argmax(s)]}): {ratio:.0f}x")
    off = np.nonzero((np.abs(m) > OFFSET_SIGMAS * s) & (np.abs(m) > 1.0))[0]
    if len(off) and not len(k_large):
        k = off[0]
        reasons.append(f"{what} {idx[k]} sits at {m[k]:.3g} +- {s[k]:.3g}, {abs(m[k]) / s[k]:.0f} stds from zero")
    if not reasons:
        return []
    return [Finding(
        "unnormalized-inputs", "warning", "; ".join(reasons),
        hint=f"standardise per {what}: subtract the training set's mean and divide by its std",
        data={"mean": mean.tolist()[:1024], "std": std.tolist()[:1024], "axis": axis},
    )]


def _outliers(xf: np.ndarray | None, mean: np.ndarray, std: np.ndarray) -> list[tuple[int, float]]:
    """Samples with some feature more than OUTLIER_Z stds from its mean (tabular data)."""
    if xf is None or len(xf) < 10:
        return []
    ok = std > 0
    if not ok.any():
        return []
    found: list[tuple[int, float]] = []
    m, s = mean[ok].astype(np.float32), std[ok].astype(np.float32)
    step = 1 << 16
    for start in range(0, len(xf), step):
        block = xf[start:start + step][:, ok].astype(np.float32, copy=False)
        with np.errstate(invalid="ignore", over="ignore"):
            z = np.nanmax(np.abs((block - m) / s), axis=1) if block.size else np.zeros(0)
        hits = np.nonzero(z > OUTLIER_Z)[0]
        found += [(int(start + i), float(z[i])) for i in hits]
    found.sort(key=lambda t: -t[1])
    return found


def _target_shift(x: np.ndarray, y: np.ndarray | None) -> list[Finding]:
    """target-in-input: token sequences (x, y) of the same shape [N, T >= 2] whose targets equal the
    inputs at the same position in more than SAME_SHARE of positions, and more often than with
    the shift y[:, t] == x[:, t+1]: the model is asked for the token it is given (the shift by
    one is missing). Float sequences are left alone: an autoencoder's targets are its inputs."""
    if y is None or x.shape != y.shape or x.ndim != 2 or x.shape[1] < 2:
        return []
    if not (np.issubdtype(x.dtype, np.integer) and np.issubdtype(y.dtype, np.integer)):
        return []
    same = float(np.mean(x == y))
    shifted = float(np.mean(x[:, 1:] == y[:, :-1]))
    if same > SAME_SHARE and same > shifted:
        first = int(np.argmax((x == y).all(axis=1))) if (x == y).all(axis=1).any() else 0
        return [Finding(
            "target-in-input", "error",
            f"the targets equal the inputs at the same position in {same:.0%} of positions (y[:, t] == x[:, t]; "
            f"with the shift y[:, t] == x[:, t+1] only {shifted:.0%}), e.g. sample {first}: the model is shown the "
            "token it must predict",
            hint="shift by one: inputs = tokens[:, :-1], targets = tokens[:, 1:]",
            data={"same_position": same, "shifted": shifted, "example": first},
        )]
    return []
