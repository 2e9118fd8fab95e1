"""layout().can_view against torch.Tensor.view, contiguity against torch, reshape_groups against brute force."""

import itertools
import math

import nnprobe
import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st


@st.composite
def strided_tensors(draw):
    nd = draw(st.integers(0, 4))
    shape = [draw(st.integers(0, 5)) for _ in range(nd)]
    strides = [draw(st.integers(0, 12)) for _ in range(nd)]
    offset = draw(st.integers(0, 3))
    span = offset + sum((n - 1) * s for n, s in zip(shape, strides) if n > 0) + 1
    t = torch.arange(max(span, 1), dtype=torch.float32).as_strided(shape, strides, offset)
    return t


@st.composite
def target_shapes(draw, numel):
    # shapes of the same numel (mostly) built from its factors, sometimes with a -1, sometimes wrong
    factors = [p for p in range(2, 13) if numel and numel % p == 0]
    shape = []
    rem = numel
    while rem > 1 and factors:
        f = draw(st.sampled_from([p for p in factors if rem % p == 0] or [rem]))
        shape.append(f)
        rem //= f
    if rem != 1 or numel == 0:
        shape.append(rem)
    for _ in range(draw(st.integers(0, 2))):
        shape.insert(draw(st.integers(0, len(shape))), 1)
    shape = draw(st.permutations(shape))
    if draw(st.booleans()) and shape and 0 not in shape:
        shape = list(shape)
        shape[draw(st.integers(0, len(shape) - 1))] = -1
    if draw(st.integers(0, 9)) == 0:
        shape = list(shape) + [2]
    return tuple(shape)


@settings(max_examples=3000, deadline=None)
@given(st.data())
def test_can_view_agrees_with_torch_view(data):
    t = data.draw(strided_tensors())
    shape = data.draw(target_shapes(t.numel()))
    lay = nnprobe.layout(t)
    try:
        v = t.view(shape)
        ok = True
    except RuntimeError:
        ok = False
    assert lay.can_view(shape) == ok, (tuple(t.shape), t.stride(), shape)
    if ok:
        assert tuple(lay.view_strides(shape)) == v.stride()


@settings(max_examples=1000, deadline=None)
@given(strided_tensors())
def test_contiguity_and_density_agree_with_torch(t):
    from torch._prims_common import is_non_overlapping_and_dense_or_false as is_non_overlapping_and_dense

    lay = nnprobe.layout(t)
    assert lay.c_contiguous == t.is_contiguous()
    assert lay.f_contiguous == t.t().is_contiguous() if t.dim() == 2 else True
    assert lay.dense == is_non_overlapping_and_dense(t)
    offsets = [t.storage_offset() + sum(i * s for i, s in zip(idx, t.stride())) for idx in itertools.product(*map(range, t.shape))]
    assert lay.overlapping == (len(offsets) != len(set(offsets)))
    want_fp = (max(offsets) - min(offsets) + 1) * 4 if offsets else 0
    assert lay.footprint_bytes == want_fp


def brute_groups(old, new):
    """The finest split into consecutive groups with equal products, by trying every boundary."""
    po = [math.prod(old[:i]) for i in range(len(old) + 1)]
    pn = [math.prod(new[:j]) for j in range(len(new) + 1)]
    if math.prod(old) == 0:
        return [(tuple(range(len(old))), tuple(range(len(new))))]
    # boundaries where both prefixes agree; at equal products take the earliest j (ones go right)
    bounds, i, j = [(0, 0)], 0, 0
    while (i, j) != (len(old), len(new)):
        cands = [(a, b) for a in range(i, len(old) + 1) for b in range(j, len(new) + 1)
                 if (a, b) != (i, j) and po[a] == pn[b] and a > i and b > j]
        if not cands:
            break
        a, b = min(cands, key=lambda c: (c[0] + c[1], c))
        bounds.append((a, b))
        i, j = a, b
    groups = [(tuple(range(a0, a1)), tuple(range(b0, b1))) for (a0, b0), (a1, b1) in zip(bounds, bounds[1:])]
    groups += [((k,), ()) for k in range(i, len(old))] + [((), (k,)) for k in range(j, len(new))]
    return groups


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.integers(1, 6), max_size=5), st.data())
def test_reshape_groups_agree_with_brute_force(old, data):
    numel = math.prod(old)
    new = list(data.draw(target_shapes(numel)))
    new = [numel // math.prod(n for n in new if n != -1) if n == -1 else n for n in new]
    if math.prod(new) != numel:
        return
    got = nnprobe.reshape_groups(old, new)
    assert got == brute_groups(old, new)
    for a, b in got:
        assert math.prod(old[k] for k in a) == math.prod(new[k] for k in b)


def test_numpy_arrays_have_layouts_too():
    a = np.zeros((4, 6), dtype=np.float32)[:, ::2]
    lay = nnprobe.layout(a)
    assert lay.strides == [6, 2] and not lay.c_contiguous and not lay.dense
    assert "gaps" in lay.explain()


def test_explain_names_the_fix():
    x = torch.randn(7, 4, 16).permute(1, 0, 2)
    text = nnprobe.layout(x).explain()
    assert "permute" in text and ".contiguous()" in text
    assert "expand" in nnprobe.layout(torch.randn(3, 1).expand(3, 5)).explain()
