"""The core against hostile input (issue 11, SPEC section 10): each reproducer of the issue, then
property tests over dtypes, shapes and strides against a float64 NumPy oracle.

Whatever the input, the core gives the right figure or raises an ``NnprobeError``; it never
aborts, hangs, panics (``PanicException`` is a ``BaseException``) or returns a wrong figure.
"""

import math

import numpy as np
import pytest
import torch

import nnprobe
from nnprobe.errors import NnprobeError


# --- the reproducers -------------------------------------------------------------------


def test_bool_bytes_other_than_one_count_as_true():
    a = np.array([0, 2, 255], np.uint8).view(bool)
    s = nnprobe.stats(a)
    assert s.mean == pytest.approx(2 / 3) and s.max == 1.0 and s.l2 == pytest.approx(math.sqrt(2))
    assert nnprobe.stats(torch.from_numpy(a)).mean == pytest.approx(2 / 3)
