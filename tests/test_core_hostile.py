"""The core against hostile input (issue 11, SPEC section 10): each reproducer of the issue, then
property tests over dtypes, shapes and strides against a float64 NumPy oracle.

Whatever the input, the core gives the right figure or raises an ``NnprobeError``; it never
aborts, hangs, panics (``PanicException`` is a ``BaseException``) or returns a wrong figure.
"""

import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import nnprobe
from nnprobe.errors import DtypeError, InputError, LayoutError, NnprobeError


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
    r = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, timeout=timeout)
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
