"""trace_layout: axis provenance against a coordinate-coded oracle, and view-mixes-batch on the
spec's cases, planted and fixed."""

import nnprobe
import numpy as np
import pytest
import torch
from checks_zoo import TimeMajorMixer
from hypothesis import given, settings
from hypothesis import strategies as st

B, T, C = 4, 3, 5
RADIX = 16


def coded(shape):
    """A float64 tensor whose every element spells its own multi-index (base 16 per axis)."""
    idx = np.indices(shape).reshape(len(shape), -1)
    vals = sum(idx[a] * RADIX**a for a in range(len(shape)))
    return torch.from_numpy(vals.reshape(shape).astype(np.float64))


def oracle_axes(y, ndim_in):
    """For every axis of y, the input axes whose coordinate changes along it."""
    v = y.numpy().astype(np.int64)
    coords = np.stack([(v // RADIX**a) % RADIX for a in range(ndim_in)])  # [ndim_in, *y.shape]
    out = []
    for k in range(y.ndim):
        varying = set()
        for a in range(ndim_in):
            c = np.moveaxis(coords[a], k, 0)
            if c.shape[0] > 1 and (c != c[:1]).any():
                varying.add(a)
        out.append(varying)
    return out


def traced_axes(labels, batch_dim=0):
    out = []
    for lab in labels:
        s = set()
        for part in lab.split("*"):
            if part == "batch":
                s.add(batch_dim)
            elif part.startswith("x0."):
                s.add(int(part[3:]))
            elif part == "mixed":
                return None
            # "?" (no input axis made it, e.g. the new axis of a stack) and "1" add nothing
        out.append(s)
    return out


OPS = [
    ("permute", lambda x: x.permute(1, 0, 2)),
    ("transpose+reshape", lambda x: x.transpose(1, 2).reshape(B, -1)),
    ("flatten", lambda x: x.flatten(1)),
    ("squeeze/unsqueeze", lambda x: x.unsqueeze(1).unsqueeze(-1).squeeze(1)),
    ("int index", lambda x: x[:, 1]),
    ("slices and None", lambda x: x[1:, None, :, :2]),
    ("ellipsis", lambda x: x[..., 0]),
    ("cat features", lambda x: torch.cat([x, x + 0], dim=2)),
    ("cat batch", lambda x: torch.cat([x, x], dim=0)),
    ("stack", lambda x: torch.stack([x, x], dim=1)),
    ("fuse time into batch", lambda x: x.reshape(B * T, C)),
    ("unfuse", lambda x: x.reshape(B * T, C).view(B, T, C).permute(2, 0, 1)),
    ("movedim", lambda x: x.movedim(0, -1)),
    ("mT", lambda x: x.mT.contiguous()),
    ("unflatten", lambda x: x.flatten(1).unflatten(1, (T, C))),
    ("expand", lambda x: x[:, None].expand(B, 2, T, C).flatten(1, 2)),
    ("elementwise broadcast", lambda x: x * torch.ones(C, dtype=x.dtype) + x[:1]),
]


@pytest.mark.parametrize("name, op", OPS, ids=[n for n, _ in OPS])
def test_axis_provenance_matches_the_coordinate_oracle(name, op):
    x = coded((B, T, C))
    with nnprobe.trace_layout() as trace:
        y = op(x)
    assert trace.errors == 0
    assert trace.findings == []
    labels = trace.axes_of(y)
    assert labels is not None, name
    got = traced_axes(labels)
    assert got is not None, labels
    assert got == oracle_axes(y, 3), (name, labels)


# The spec's table: a reshape/view splits the batch (fires) or keeps/fuses it whole (silent).
CASES = [
    ("[T,B,C].view(B, -1)", (T, B, C), 1, lambda x: x.view(B, -1), True),
    ("permute first", (T, B, C), 1, lambda x: x.permute(1, 0, 2).reshape(B, -1), False),
    ("[T,B,C].view(T*B, C)", (T, B, C), 1, lambda x: x.view(T * B, C), False),
    ("[B,T].view(-1)", (B, T), 0, lambda x: x.view(-1), False),
    ("[B,T,C].view(B*T, C).view(B, T, C)", (B, T, C), 0, lambda x: x.view(B * T, C).view(B, T, C), False),
    ("[T*B].view(B, T) after fusing time-major", (T, B, C), 1, lambda x: x.reshape(T * B, C).view(B, T, C), True),
    ("split the batch into halves", (B, C), 0, lambda x: x.view(2, B // 2, C), True),
    ("flatten(0, 1) of [T,B,C] then per-example rows", (T, B, C), 1, lambda x: x.flatten(0, 1).view(B, -1), True),
    ("batch kept, features regrouped", (B, T, C), 0, lambda x: x.reshape(B, C, T), False),
    ("uneven rows straddle examples", (B, 3), 0, lambda x: x.reshape(6, 2), True),
    ("unsqueeze/squeeze never split", (B, C), 0, lambda x: x.unsqueeze(0).squeeze(0).unsqueeze(-1), False),
]


@pytest.mark.parametrize("name, shape, batch_dim, op, fires", CASES, ids=[c[0] for c in CASES])
def test_view_mixes_batch_follows_the_spec_rule(name, shape, batch_dim, op, fires):
    x = torch.randn(*shape)
    with nnprobe.trace_layout(batch_dim=batch_dim) as trace:
        op(x)
    assert (trace.codes() == {"view-mixes-batch"}) is fires, name
    assert trace.ok is not fires
    if fires:
        f = trace.findings[0]
        assert f.severity == "error"
        assert f.data["where"].startswith("test_layout_trace.py:")
        assert f.data["batch_size"] == B


def test_a_model_with_the_classic_bug_is_named_and_its_fix_is_silent():
    x = torch.randn(B, T, C)
    with nnprobe.trace_layout(root=None) as trace:
        TimeMajorMixer()(x)
    (f,) = trace.findings
    assert f.code == "view-mixes-batch" and f.module == "TimeMajorMixer"
    with nnprobe.trace_layout() as trace:
        y = TimeMajorMixer(fixed=True)(x)
    assert trace.findings == [] and y.shape == (B, 2)


def test_tracing_changes_no_result_and_reports_once_per_place():
    torch.manual_seed(0)
    model = TimeMajorMixer()
    x = torch.randn(B, T, C)
    want = model(x)
    with nnprobe.trace_layout() as trace:
        got = [model(x) for _ in range(3)]
    assert all(torch.equal(g, want) for g in got)
    assert len(trace.findings) == 1  # the same line three times is one finding


def test_a_buffer_seen_first_does_not_steal_the_batch():
    pos = torch.randn(50, C)  # a positional table used before the input
    x = torch.randn(B, T, C)
    with nnprobe.trace_layout(batch_size=B) as trace:
        h = x + pos[:T]
        h.transpose(0, 1).reshape(B, -1)
    assert trace.codes() == {"view-mixes-batch"}
    with nnprobe.trace_layout() as trace:
        trace.mark(x)
        (x + pos[:T]).reshape(B, -1)
    assert trace.findings == []
    assert trace.axes_of(x) == ["batch", "x0.1", "x0.2"]


def splits_batch_brute_force(old_shape, batch_dim, new_shape):
    """Oracle, straight from the spec's words: a boundary of the result falls strictly inside the
    batch axis when, across that boundary (row-major flat index f = hi * p + lo), the example index
    is decided neither by hi alone nor by lo alone."""
    total = int(np.prod(old_shape))
    s_b = int(np.prod(old_shape[batch_dim + 1:]))
    n_b = old_shape[batch_dim]
    f = np.arange(total)
    b = (f // s_b) % n_b
    for k in range(1, len(new_shape)):
        p = int(np.prod(new_shape[k:]))
        if p in (1, total):
            continue
        decided_by_hi = all(len(set(b[f // p == h])) == 1 for h in range(total // p))
        decided_by_lo = all(len(set(b[f % p == r])) == 1 for r in range(p))
        if not (decided_by_hi or decided_by_lo):
            return True
    return False


def factorisations(n, parts):
    """Every ordered way of writing n as a product of `parts` factors."""
    if parts == 1:
        return [(n,)]
    return [(d,) + rest for d in range(1, n + 1) if n % d == 0 for rest in factorisations(n // d, parts - 1)]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=1, max_size=3), st.integers(2, 6), st.integers(0, 3), st.data())
def test_split_rule_matches_the_brute_force_reading_of_the_spec(others, batch, position, data):
    position = min(position, len(others))
    old = tuple(others[:position]) + (batch,) + tuple(others[position:])
    total = int(np.prod(old))
    parts = data.draw(st.integers(1, 4))
    new = data.draw(st.sampled_from(factorisations(total, parts)))
    with nnprobe.trace_layout(batch_dim=position) as trace:
        torch.zeros(old).reshape(new)
    assert (trace.codes() == {"view-mixes-batch"}) is splits_batch_brute_force(old, position, new), (old, new)
