"""The core against hostile input (issue 11, SPEC section 10): each reproducer of the issue, then
property tests over dtypes, shapes and strides against a float64 NumPy oracle.

Whatever the input, the core gives the right figure or raises an ``NnprobeError``; it never
aborts, hangs, panics (``PanicException`` is a ``BaseException``) or returns a wrong figure.
"""

import math
import subprocess
import sys
import warnings

import nnprobe
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from nnprobe.errors import DtypeError, InputError, LayoutError
from test_stats import assert_matches, reference


def quantized(x, dtype):
    with warnings.catch_warnings():  # torch 2.10+ deprecates the quantized dtypes; they still exist
        warnings.simplefilter("ignore")
        return torch.quantize_per_tensor(x, 0.1, 0, dtype)


# --- the reproducers -------------------------------------------------------------------


def test_bool_bytes_other_than_one_count_as_true():
    a = np.array([0, 2, 255], np.uint8).view(bool)
    s = nnprobe.stats(a)
    assert s.mean == pytest.approx(2 / 3) and s.max == 1.0 and s.l2 == pytest.approx(math.sqrt(2))
    assert nnprobe.stats(torch.from_numpy(a)).mean == pytest.approx(2 / 3)


def test_negative_bit_of_a_conjugate_view_is_resolved():
    y = torch.tensor([1 + 2j, 3 + 4j]).conj().imag  # holds [-2, -4]; the memory holds [2, 4]
    assert y.is_neg()
    s = nnprobe.stats(y)
    assert (s.mean, s.min, s.max) == (-3.0, -4.0, -2.0)
    assert nnprobe.stats_many([y])[0].mean == -3.0
    assert nnprobe._core.stats_array([y])[0][nnprobe.STATS_FIELDS.index("mean")] == -3.0
    z = torch.arange(1.0, 5.0)._neg_view()
    assert nnprobe.stats(z).mean == -2.5 and nnprobe.stats(z).max == -1.0


def test_complex_conjugate_and_quantized_tensors_are_refused_with_the_fix():
    with pytest.raises(DtypeError, match=r"x\.real"):
        nnprobe.stats(torch.tensor([1 + 2j]).conj())  # not "could not be exported" from the conj bit
    with pytest.raises(DtypeError, match="dequantize"):
        nnprobe.stats(quantized(torch.zeros(3), torch.qint8))
    if hasattr(torch, "uint4"):  # a shell dtype DLPack would hand over as plain bytes
        with pytest.raises(DtypeError, match="uint8"):
            nnprobe.stats(torch.zeros(3, dtype=torch.uint8).view(torch.uint4))


def test_float64_near_overflow_gives_finite_correct_std_and_l2():
    s = nnprobe.stats(np.array([2e154, -2e154]))
    assert s.std == pytest.approx(2e154, rel=1e-15) and s.l2 == pytest.approx(2e154 * math.sqrt(2), rel=1e-15)
    s = nnprobe.stats(np.array([1e155, 1e155]))
    assert s.std == 0.0 and s.mean == 1e155 and s.l2 == pytest.approx(1e155 * math.sqrt(2), rel=1e-15)
    # the largest finite values, in blocks and tasks of alternating signs (every block mean is 0)
    a = np.tile([1.7e308, -1.7e308], 600_000)
    s = nnprobe.stats(a)
    assert s.std == pytest.approx(1.7e308, rel=1e-12) and s.absmean == pytest.approx(1.7e308, rel=1e-12)
    assert s.l2 == math.inf  # the true l2 (1.9e311) is beyond float64: Inf, not NaN and not 0
    s = nnprobe.stats(np.array([1e300, -3.0, np.nan, 5.0, -1e300, 1e-300]))
    assert s.std == pytest.approx(1e300 * math.sqrt(2 / 5), rel=1e-15) and s.nan == 1


def run_isolated(code: str, timeout: float = 120) -> str:
    """Runs `code` in a fresh interpreter: an abort (a failed 77 GB allocation) or a hang would
    otherwise take the test session down with it. Returns its stdout; fails on any other exit."""
    r = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, timeout=timeout, check=False)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    return r.stdout


def test_layout_of_a_huge_unfold_is_decided_without_listing_offsets():
    out = run_isolated(
        "import torch, nnprobe\n"
        "lay = nnprobe.layout(torch.zeros(131072).unfold(0, 65536, 1))\n"
        "print(lay.overlap, lay.overlapping, 'share memory' in lay.explain(), lay.footprint_bytes)\n"
    )
    assert out.split() == ["yes", "True", "True", str(131072 * 4)]


def test_layout_of_an_enormous_as_strided_view_does_not_panic():
    x = torch.zeros(6200).as_strided((1024,) * 6, (1,) * 6)
    lay = nnprobe.layout(x)  # PanicException ("Hash table capacity overflow") before
    assert lay.overlap == "yes" and lay.overlapping and not lay.dense
    assert "share memory" in lay.explain()


def test_undecided_overlap_is_said_not_guessed():
    lay = nnprobe.Layout([512, 512, 512], [(1 << 20) + 7, (1 << 21) + 3, (1 << 29) + 1], 4)
    assert lay.overlap == "maybe" and lay.overlapping  # erring on the safe side
    assert "may overlap" in lay.explain()


def test_layout_sizes_are_checked_not_wrapped():
    assert nnprobe.Layout([2**61], [1], 16).footprint_bytes == 2**65  # wrapped to 0 before
    assert str(2**65) in nnprobe.Layout([2**61], [1], 16).explain()
    for shape, strides, itemsize in [([2**64], [1], 1), ([-1], [1], 4), ([2**62, 4], [1, 1], 1), ([3], [2**63], 4), ([3], [1], 0)]:
        with pytest.raises(LayoutError):
            nnprobe.Layout(shape, strides, itemsize)
    with pytest.raises(LayoutError, match="integers"):
        nnprobe.Layout("ab", [1], 4)
    with pytest.raises(LayoutError):
        nnprobe.layout(torch.zeros(0, 2)).view_strides((0, 2**40, 2**40))  # strides past int64
    with pytest.raises(LayoutError):
        nnprobe.layout(torch.zeros(4)).can_view([2**70])
    with pytest.raises(LayoutError):
        nnprobe.reshape_groups([-1], [1])


def test_layout_of_odd_objects_is_a_clean_error_or_a_layout():
    lay = nnprobe.layout(memoryview(b"abc"))  # AttributeError before
    assert (lay.shape, lay.strides, lay.dtype, lay.c_contiguous) == ([3], [1], "uint8", True)
    with pytest.raises(DtypeError, match="at least one field"):
        nnprobe.layout(np.zeros(3, dtype=[]))  # ZeroDivisionError before
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns that nested tensors are a prototype
        nested = torch.nested.nested_tensor([torch.zeros(2), torch.zeros(3)])
    with pytest.raises(LayoutError, match="unbind"):
        nnprobe.layout(nested)  # RuntimeError before
    m = memoryview(b"ab")
    m.release()
    with pytest.raises(InputError, match="live"):
        nnprobe.layout(m)
    with pytest.raises(InputError, match="unbind"):
        nnprobe.stats(nested)
    with pytest.raises(InputError, match="sequence"):
        nnprobe.stats_many(3)
    with pytest.raises(DtypeError):
        nnprobe.stats(np.zeros(3, dtype=[]))


def test_stats_of_enormous_overlapping_and_expanded_views_are_exact_and_quick():
    # each would walk 2^60 or 4e9 positions one by one; a regression hangs, so in a subprocess
    out = run_isolated(
        "import torch, nnprobe\n"
        "base = torch.arange(6200, dtype=torch.float64) % 17 - 8\n"
        "s = nnprobe.stats(base.as_strided((1024,) * 6, (1,) * 6))\n"
        "print(s.count, s.zeros, s.min, s.max, repr(s.mean), repr(s.std))\n"
        "s = nnprobe.stats(torch.zeros(1).expand(2**62))\n"
        "print(s.count, s.zeros, s.mean)\n"
        "s = nnprobe.stats(torch.arange(131072, dtype=torch.float32).unfold(0, 65536, 1))\n"
        "print(s.count, repr(s.mean))\n",
        timeout=120,
    ).splitlines()
    # the oracle: how many positions reach each element is six boxcars of 1024 convolved
    mult = np.ones(1, dtype=np.int64)
    for _ in range(6):
        mult = np.convolve(mult, np.ones(1024, dtype=np.int64))
    x = np.arange(mult.size) % 17 - 8.0
    mean = math.fsum(mult * x) / 2**60  # the products are exact: mult < 2^51, |x| <= 8
    std = math.sqrt(math.fsum(mult * (x - mean) ** 2) / 2**60)
    count, zeros, lo, hi, got_mean, got_std = out[0].split()
    assert (int(count), int(zeros), lo, hi) == (2**60, int(mult[x == 0].sum()), "-8.0", "8.0")
    assert abs(float(got_mean) - mean) < 1e-12 and float(got_std) == pytest.approx(std, rel=1e-12)
    assert out[1].split() == [str(2**62), str(2**62), "0.0"]
    count, got_mean = out[2].split()
    assert int(count) == 65537 * 65536 and float(got_mean) == pytest.approx(65535.5, rel=1e-14)


# --- property tests: every dtype, shape and stride against a float64 NumPy oracle ---------------

READABLE = [torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
            torch.float16, torch.bfloat16, torch.float32, torch.float64]
READABLE += [getattr(torch, n) for n in ("uint16", "uint32", "uint64") if hasattr(torch, n)]
REFUSED = [torch.complex64, torch.complex128] + [
    getattr(torch, n) for n in ("complex32", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz") if hasattr(torch, n)]
QUANTIZED = [torch.qint8, torch.quint8, torch.qint32]

FLOATS = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),  # up to 1.8e308: float64 squares overflow
    st.floats(-10, 10),
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e-310]),
)


@st.composite
def shapes(draw, max_numel=4000):
    """0 to 10 axes; sizes 0 to 5, smaller when there are many axes (8+ dims of size 1 or 2)."""
    nd = draw(st.integers(0, 10))
    side = 5 if nd <= 4 else 2
    shape = [draw(st.integers(0 if draw(st.integers(0, 9)) == 0 else 1, side)) for _ in range(nd)]
    assume(math.prod(shape) <= max_numel)
    return shape


def torch_values(draw, dtype, shape):
    n = math.prod(shape)
    if dtype.is_floating_point or dtype.is_complex:
        vals = draw(hnp.arrays(np.float64, n, elements=FLOATS))
        with np.errstate(over="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # complex32 is "experimental"
            if dtype.is_complex:
                t = torch.complex(torch.from_numpy(vals), torch.from_numpy(vals[::-1].copy())).to(dtype)
            else:
                t = torch.from_numpy(vals).to(dtype)
    elif dtype == torch.bool:
        t = torch.from_numpy(draw(hnp.arrays(np.bool_, n)))
    else:
        info = torch.iinfo(dtype)
        lo, hi = max(info.min, -(2**63)), min(info.max, 2**63 - 1)
        vals = draw(hnp.arrays(np.int64 if lo < 0 else np.uint64, n, elements=st.integers(lo, hi)))
        t = torch.from_numpy(vals).to(dtype)
    return t.reshape(shape)


@st.composite
def torch_views(draw, dtypes):
    """A tensor of one of `dtypes`, then a view of it: permuted, stepped, expanded or negated."""
    dtype = draw(st.sampled_from(dtypes))
    t = torch_values(draw, dtype, draw(shapes()))
    if t.dim():
        t = t.permute(draw(st.permutations(range(t.dim()))))
        t = t[tuple(slice(None, None, draw(st.sampled_from([1, 2, 3]))) for _ in range(t.dim()))]
        k = draw(st.integers(0, t.dim() - 1))
        if t.shape[k] == 1:
            t = t.expand(*[3 if i == k else -1 for i in range(t.dim())])
    if dtype.is_floating_point and draw(st.booleans()):
        t = t._neg_view()  # the negative bit, as after z.conj().imag
    return t


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(torch_views(READABLE))
def test_every_readable_torch_dtype_matches_float64_numpy(t):
    want = reference(t.to(torch.float64).resolve_neg().numpy())
    assert_matches(nnprobe.stats(t), want, rel=1e-6 if t.dtype.is_floating_point else 1e-9)
    assert_matches(nnprobe.stats_many([t])[0], want, rel=1e-6 if t.dtype.is_floating_point else 1e-9)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(st.data())
def test_every_other_torch_dtype_is_refused_with_a_dtype_error(data):
    dtype = data.draw(st.sampled_from(REFUSED + QUANTIZED))
    shape = data.draw(shapes(max_numel=200))
    if dtype in QUANTIZED:
        t = quantized(torch.zeros(shape), dtype)
    else:
        t = torch_values(data.draw, dtype, shape)
        if dtype.is_complex and data.draw(st.booleans()):
            t = t.conj()
    with pytest.raises(DtypeError):
        nnprobe.stats(t)
    with pytest.raises(DtypeError, match="item 1"):
        nnprobe.stats_many([torch.zeros(1), t])


@st.composite
def strided_views(draw):
    """Any shape (8+ axes, 0-size) with any element strides (negative, zero, overlapping), over a
    buffer made just big enough: (buffer, offset, shape, strides in elements)."""
    dtype = draw(st.sampled_from([np.float64, np.float32, np.float16, np.int8, np.int64, np.uint16, np.bool_]))
    shape = draw(shapes())
    strides = [draw(st.integers(-6, 6)) for _ in shape]
    offs = [(n - 1) * s for n, s in zip(shape, strides) if n > 0]
    lo, hi = sum(o for o in offs if o < 0), sum(o for o in offs if o > 0)
    if np.issubdtype(dtype, np.floating):
        buf = draw(hnp.arrays(dtype, hi - lo + 1, elements=st.one_of(st.floats(width=np.dtype(dtype).itemsize * 8), st.just(0.0))))
    else:
        buf = draw(hnp.arrays(dtype, hi - lo + 1))
    return buf, -lo, shape, strides


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(strided_views(), st.booleans())
def test_any_strides_match_the_materialized_copy(view, hist):
    buf, offset, shape, strides = view
    a = np.lib.stride_tricks.as_strided(buf[offset:], shape, [s * buf.itemsize for s in strides], writeable=False)
    want = reference(np.array(a))
    rel = 1e-6 if a.dtype.kind == "f" else 1e-9
    s = nnprobe.stats(a, hist=hist)  # through the buffer protocol
    assert_matches(s, want, rel=rel)
    if hist:
        v = np.asarray(a, dtype=np.float64).ravel()
        v = np.abs(v[np.isfinite(v) & (v != 0)])
        want_h = np.bincount(np.clip(np.floor(np.log2(v)) - s.hist_edges[0], 0, 63).astype(int), minlength=64)
        np.testing.assert_array_equal(s.hist_counts, want_h)
    if all(st >= 0 for st in strides):  # torch has no negative strides; through DLPack
        t = torch.from_numpy(buf).as_strided(shape, strides, offset)
        assert_matches(nnprobe.stats(t), want, rel=rel)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(st.data())
def test_conjugate_and_negative_views_of_complex_tensors(data):
    shape = data.draw(shapes(max_numel=500))
    z = torch_values(data.draw, data.draw(st.sampled_from([torch.complex64, torch.complex128])), shape)
    views = [z.conj().imag, z.conj().real, z.imag, z.conj().conj().imag, z.conj().imag._neg_view()]
    if z.dim() >= 2:
        views.append(z.conj().transpose(0, -1).imag)
    for v in views:
        assert_matches(nnprobe.stats(v), reference(v.resolve_neg().numpy()))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(
    st.lists(st.one_of(st.integers(0, 6), st.integers(-(2**70), 2**70)), max_size=10).flatmap(
        lambda shape: st.tuples(
            st.just(shape),
            st.lists(st.one_of(st.integers(-8, 8), st.integers(-(2**70), 2**70)), min_size=len(shape), max_size=len(shape)),
        )
    ),
    st.one_of(st.integers(1, 16), st.integers(-(2**70), 2**70)),
)
def test_layout_of_any_numbers_is_a_layout_or_a_layout_error(shape_strides, itemsize):
    shape, strides = shape_strides
    try:
        lay = nnprobe.Layout(shape, strides, itemsize)
    except LayoutError:
        return
    assert lay.overlap in ("no", "yes", "maybe") and lay.overlapping == (lay.overlap != "no")
    assert isinstance(lay.footprint_bytes, int) and lay.footprint_bytes >= 0
    assert isinstance(lay.explain(), str) and repr(lay).startswith("Layout(")
    assert all(isinstance(f, bool) for f in (lay.c_contiguous, lay.f_contiguous, lay.dense))
    for target in ([-1], shape, [0], list(reversed(shape))):
        try:
            lay.can_view(target)
        except LayoutError:
            pass
    if 0 < math.prod(shape) <= 5000:
        offsets = [0]
        for n, s in zip(shape, strides):
            offsets = [o + i * s for o in offsets for i in range(n)]
        assert lay.overlap == ("yes" if len(set(offsets)) < len(offsets) else "no")
        assert lay.footprint_bytes == (max(offsets) - min(offsets) + 1) * itemsize


def test_huge_expanded_views_count_exactly():
    # seeded sizes whose products reach 2^62; a regression would hang, so in a subprocess
    out = run_isolated(
        "import random, math, torch, numpy as np, nnprobe\n"
        "rng = random.Random(11)\n"
        "base = torch.tensor([1.0, -2.0, float('nan'), 0.0])\n"
        "for _ in range(200):\n"
        "    nd = rng.randint(1, 6)\n"
        "    sizes = [rng.choice([1, 2, 3, 1000, 2**20, 2**31]) for _ in range(nd)]\n"
        "    if math.prod(sizes) * 16 > 2**62: continue  # NumPy counts bytes in an int64\n"
        "    x = base.expand(*sizes, 4) if rng.random() < 0.5 else np.broadcast_to(base.numpy(), (*sizes, 4))\n"
        "    s = nnprobe.stats(x)\n"
        "    n = math.prod(sizes)\n"
        "    assert (s.count, s.nan, s.zeros) == (4 * n, n, n), (sizes, s)\n"
        "    assert abs(s.mean + 1 / 3) < 1e-15 and s.min == -2.0 and s.absmean == 1.0, (sizes, s)\n"
        "print('ok')\n",
        timeout=120,
    )
    assert out.strip() == "ok"


def test_a_huge_thread_count_is_capped_not_spawned():
    before = nnprobe.get_num_threads()
    try:
        nnprobe.set_num_threads(100_000)  # would start 100000 threads (minutes) before
        assert nnprobe.get_num_threads() <= 4 * (__import__("os").cpu_count() or 1)
        assert nnprobe.stats(np.ones(3_000_000, np.float32)).count == 3_000_000
    finally:
        nnprobe.set_num_threads(before)
