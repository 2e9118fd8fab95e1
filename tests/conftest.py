"""Shared test settings.

Hypothesis runs derandomized, so CI on a fresh clone sees the same cases every time; set
NNPROBE_HYPOTHESIS_EXPLORE=1 to let it search new random cases locally.
"""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile("explore" if os.environ.get("NNPROBE_HYPOTHESIS_EXPLORE") else "ci")


def pytest_addoption(parser):
    parser.addoption("--regen-golden", action="store_true", help="rewrite tests/golden/ from the current output")
