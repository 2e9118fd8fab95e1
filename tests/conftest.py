"""Shared test settings.

Hypothesis runs derandomized, so CI on a fresh clone sees the same cases every time; set
NNPROBE_HYPOTHESIS_EXPLORE=1 to let it search new random cases locally.
"""

import os

import pytest
from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile("explore" if os.environ.get("NNPROBE_HYPOTHESIS_EXPLORE") else "ci")


def pytest_addoption(parser):
    parser.addoption("--regen-golden", action="store_true", help="rewrite tests/golden/ from the current output")


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Two shared cores: torch's spinning OpenMP threads slow small models down badly under load."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
