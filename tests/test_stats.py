"""stats / stats_many against float64 NumPy, on random shapes, strides and dtypes."""

import math
import os
import subprocess
import sys
from fractions import Fraction

import nnprobe
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp


def _sqrt(q: Fraction) -> float:
    """sqrt of an exact non-negative rational, to within an ulp, however large or small (Inf past
    the range)."""
    if q == 0:
        return 0.0
    k = (q.numerator.bit_length() - q.denominator.bit_length()) // 2  # q / 4^k is about 1
    try:
        return math.ldexp(math.sqrt(q / Fraction(4) ** k), k)
    except OverflowError:
        return math.inf


def reference(values: np.ndarray) -> dict:
    v = np.asarray(values, dtype=np.float64).ravel()
    fin = v[np.isfinite(v)]
    out = {"count": v.size, "nan": int(np.isnan(v).sum()), "inf": int(np.isinf(v).sum()), "zeros": int((fin == 0).sum())}
    if fin.size:
        if fin.size <= 5000:
            # exact rational arithmetic: the reference is the true value, rounded once
            xs = [Fraction(float(v)) for v in fin]
            mean_q = sum(xs) / len(xs)
            mean, std = float(mean_q), _sqrt(sum((x - mean_q) ** 2 for x in xs) / len(xs))
            l2 = _sqrt(sum(x * x for x in xs))
            absmean = float(sum(map(abs, xs)) / len(xs))
        else:  # correctly rounded sums, fast enough for millions of values (in units of 2^k: no overflow)
            k = math.frexp(float(np.abs(fin).max()))[1]  # in units of 2^k the values are about 1
            f = np.ldexp(fin, -k)
            m = math.fsum(f) / fin.size
            mean = math.ldexp(m, k)
            std = math.ldexp(math.sqrt(math.fsum((f - m) ** 2) / fin.size), k)
            l2 = math.ldexp(math.sqrt(math.fsum(f * f)), k)
            absmean = math.ldexp(math.fsum(np.abs(f)) / fin.size, k)
        out.update(
            min=fin.min(), max=fin.max(), mean=mean, std=std,
            l2=l2, absmax=np.abs(fin).max(), absmean=absmean,
        )
    else:
        out.update(min=math.nan, max=math.nan, mean=math.nan, std=math.nan, l2=0.0, absmax=math.nan, absmean=math.nan)
    return out


def assert_matches(s, ref, rel=1e-6):
    for k in ("count", "nan", "inf", "zeros"):
        assert getattr(s, k) == ref[k], k
    for k in ("min", "max", "absmax"):
        got, want = getattr(s, k), ref[k]
        assert (math.isnan(got) and math.isnan(want)) or got == want, (k, got, want)
    for k in ("mean", "std", "l2", "absmean"):
        got, want = getattr(s, k), ref[k]
        if math.isnan(want):
            assert math.isnan(got), k
        elif math.isinf(want):  # the true figure is beyond the float64 range
            # ... or a hair past its end, which the core keeps finite at the largest float64 (its bound)
            assert got == want or (got == sys.float_info.max and ref["absmax"] > sys.float_info.max / 2), (k, got, want)
        else:
            # absolute slack for a mean that is ~0 relative to the values' scale
            scale = ref["absmax"] if k == "mean" else 0.0
            assert abs(got - want) <= rel * abs(want) + 1e-12 * scale, (k, got, want)


float_dtypes = st.sampled_from([np.float16, np.float32, np.float64])
int_dtypes = st.sampled_from([np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64, np.bool_])


@st.composite
def strided_arrays(draw, dtypes=float_dtypes):
    dtype = draw(dtypes)
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=9))
    if np.issubdtype(dtype, np.floating):
        # every finite value, up to float64's 1.8e308 whose squares overflow (the core scales them)
        width = np.dtype(dtype).itemsize * 8
        elems = st.one_of(
            st.floats(width=width, allow_nan=False, allow_infinity=False),
            st.sampled_from([np.nan, np.inf, -np.inf, 0.0]),
        )
    elif dtype is np.bool_:
        elems = None
    else:
        info = np.iinfo(dtype)
        elems = st.integers(max(info.min, -(2**31)), min(info.max, 2**31))
    base = draw(hnp.arrays(dtype, shape, elements=elems))
    # a random view: transpose, reverse and step some axes
    if base.ndim:
        base = base.transpose(draw(st.permutations(range(base.ndim))))
        index = tuple(slice(None, None, draw(st.sampled_from([1, -1, 2, -2]))) for _ in range(base.ndim))
        base = base[index]
    return base


@settings(max_examples=300, deadline=None)
@given(strided_arrays())
def test_float_arrays_match_numpy_float64(a):
    assert_matches(nnprobe.stats(a), reference(a))


@settings(max_examples=150, deadline=None)
@given(strided_arrays(int_dtypes))
def test_integer_and_bool_arrays_match_numpy(a):
    assert_matches(nnprobe.stats(a), reference(a), rel=1e-9)


@settings(max_examples=100, deadline=None)
@given(strided_arrays(st.sampled_from([np.float32])), st.sampled_from(["bfloat16", "float16", "float32", "float64"]))
def test_torch_tensors_of_every_float_dtype(a, dtype):
    t = torch.from_numpy(np.array(a)).to(getattr(torch, dtype))
    if t.dim() >= 2:
        t = t.transpose(0, -1)
    assert_matches(nnprobe.stats(t), reference(t.double().numpy()))


def test_large_float32_accuracy_within_spec():
    rng = np.random.default_rng(0)
    a = (rng.standard_normal(3_000_000) * 3 + 1e3).astype(np.float32)
    assert_matches(nnprobe.stats(a), reference(a), rel=1e-9)


def test_expanded_and_transposed_torch_views():
    base = torch.randn(5, 1, 7)
    for t in (base.expand(5, 4, 7), base.permute(2, 0, 1), torch.randn(8, 6)[::2, 1::3], torch.randn(4, 5).t()):
        assert_matches(nnprobe.stats(t), reference(t.double().numpy()))


def test_special_values_and_empty():
    a = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 1.5], dtype=np.float32)
    s = nnprobe.stats(a)
    assert (s.count, s.nan, s.inf, s.zeros) == (6, 1, 2, 2)
    assert_matches(s, reference(a))
    e = nnprobe.stats(torch.empty(0, 3))
    assert e.count == 0 and math.isnan(e.mean) and e.l2 == 0.0
    one = nnprobe.stats(torch.tensor(2.5))
    assert (one.count, one.mean, one.std) == (1, 2.5, 0.0)


def test_requires_grad_tensors_are_read_without_the_graph():
    w = torch.randn(10, 10, requires_grad=True)
    assert_matches(nnprobe.stats(w), reference(w.detach().double().numpy()))


def test_histogram_bins_log2_magnitudes():
    a = np.array([0.0, 1.0, 1.9, 2.0, -0.3, 1e-30, 3e20, np.nan], dtype=np.float32)
    s = nnprobe.stats(a, hist=True)
    edges, counts = s.hist_edges, s.hist_counts
    assert len(edges) == 65 and len(counts) == 64 and counts.sum() == 6
    fin = a[np.isfinite(a) & (a != 0)].astype(np.float64)
    want = np.zeros(64, dtype=np.int64)
    for v in fin:
        want[int(np.clip(np.floor(np.log2(abs(v))) - edges[0], 0, 63))] += 1
    np.testing.assert_array_equal(counts, want)
    assert nnprobe.stats(a).hist_counts is None


@settings(max_examples=50, deadline=None)
@given(strided_arrays(st.sampled_from([np.float32, np.float64, np.float16])))
def test_histogram_matches_numpy_log2(a):
    s = nnprobe.stats(a, hist=True)
    v = np.asarray(a, dtype=np.float64).ravel()
    v = np.abs(v[np.isfinite(v) & (v != 0)])
    want = np.bincount(np.clip(np.floor(np.log2(v)) - s.hist_edges[0], 0, 63).astype(int), minlength=64)
    np.testing.assert_array_equal(s.hist_counts, want)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 9000),
    scales=st.lists(st.integers(-140, 130), min_size=1, max_size=4),
    spread=st.floats(0.0, 30.0),
    zeros=st.floats(0.0, 1.0),
    specials=st.integers(0, 20),
    seed=st.integers(0, 2**32 - 1),
    dtype=st.sampled_from(["float32", "bfloat16", "float16"]),
)
def test_histogram_of_blocks_whose_scale_moves_matches_numpy(n, scales, spread, zeros, specials, seed, dtype):
    # the AVX-512 kernel counts a window of exponents in registers, placed where the blocks so far
    # were densest, and everything else one by one: scales that move between blocks, zeros
    # (skipped), subnormals (bin 0), non-finite values and both clamped ends must all count exactly
    rng = np.random.default_rng(seed)
    part = np.array_split(np.arange(n), len(scales))
    e = np.concatenate([rng.normal(sc, spread, len(p)) for sc, p in zip(scales, part)]) if n else np.zeros(0)
    a = (np.exp2(np.clip(e, -160, 127)) * rng.choice([-1.0, 1.0], n)).astype(np.float32)
    a[rng.random(n) < zeros] = 0.0
    if n:
        pool = np.array([np.nan, np.inf, -np.inf, 1e-45, -3e-42, 1e-40, np.finfo(np.float32).max, 0.0, -0.0], dtype=np.float32)
        a[rng.integers(0, n, specials)] = rng.choice(pool, specials)
    t = torch.from_numpy(a).to(getattr(torch, dtype))
    s = nnprobe.stats(t, hist=True)
    v = t.double().numpy()
    v = np.abs(v[np.isfinite(v) & (v != 0)])
    want = np.bincount(np.clip(np.floor(np.log2(v)) - s.hist_edges[0], 0, 63).astype(int), minlength=64)
    np.testing.assert_array_equal(s.hist_counts, want)


def test_stats_many_matches_stats_and_stats_array():
    xs = [torch.randn(100, 3), np.arange(12, dtype=np.int32).reshape(3, 4).T, torch.randn(2_500_000), torch.zeros(0)]
    many = nnprobe.stats_many(xs)
    for x, s in zip(xs, many):
        one = nnprobe.stats(x)
        assert repr(one) == repr(s)
    arr = nnprobe._core.stats_array(xs)
    assert arr.shape == (4, len(nnprobe.STATS_FIELDS))
    for row, s in zip(arr, many):
        for f, v in zip(nnprobe.STATS_FIELDS, row):
            assert (math.isnan(v) and math.isnan(getattr(s, f))) or v == getattr(s, f)


def test_thread_count_does_not_change_results():
    a = np.random.default_rng(1).standard_normal(5_000_000).astype(np.float32)
    before = nnprobe.get_num_threads()
    try:
        nnprobe.set_num_threads(1)
        one = nnprobe.stats(a, hist=True)
        nnprobe.set_num_threads(0)
        many = nnprobe.stats(a, hist=True)
    finally:
        nnprobe.set_num_threads(before)
    assert one.count == many.count and one.min == many.min
    assert abs(one.std - many.std) <= 1e-12 * one.std
    np.testing.assert_array_equal(one.hist_counts, many.hist_counts)


def test_repr_and_as_dict_are_readable():
    s = nnprobe.stats(np.array([1.0, 2.0, 3.0]), hist=True)
    assert repr(s).startswith("TensorStats(float64, count=3,") and "mean=2," in repr(s)
    d = s.as_dict()
    assert d["mean"] == 2.0 and d["hist_counts"].sum() == 3


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_usable_in_a_forked_child_after_parallel_use():
    """DataLoader workers fork; a pool created before the fork must not deadlock the child."""
    code = (
        "import os, numpy as np, nnprobe\n"
        "a = np.ones(4_000_000, dtype=np.float32)\n"
        "nnprobe.stats(a)\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    s = nnprobe.stats(a); os._exit(0 if s.count == a.size else 3)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "raise SystemExit(os.waitstatus_to_exitcode(status))\n"
    )
    r = subprocess.run([sys.executable, "-W", "ignore", "-c", code], timeout=60, check=False)
    assert r.returncode == 0
