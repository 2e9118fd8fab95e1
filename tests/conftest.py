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


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` are skipped where torch sees no CUDA device."""
    if not any(item.get_closest_marker("cuda") for item in items):
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (benches/gpu_check.sh runs these)")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(skip)
