"""The core against hostile input (issue 11, SPEC section 10): each reproducer of the issue, then
property tests over dtypes, shapes and strides against a float64 NumPy oracle.

Whatever the input, the core gives the right figure or raises an ``NnprobeError``; it never
aborts, hangs, panics (``PanicException`` is a ``BaseException``) or returns a wrong figure.
"""

import math
import warnings

import numpy as np
import pytest
import torch

import nnprobe
from nnprobe.errors import NnprobeError


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
    from nnprobe.errors import DtypeError

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
