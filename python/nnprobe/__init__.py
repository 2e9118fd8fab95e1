"""nnprobe: catches the mistakes that make neural-network training fail silently, while it runs."""

from ._core import Layout, TensorStats
from .findings import CATALOGUE, Finding, explain
from .errors import DeviceError, DiagnosticError, DtypeError, InputError, LayoutError, NnprobeError
from .probe import Probe, watch
from .primitives import (
    STATS_FIELDS,
    get_num_threads,
    layout,
    reshape_groups,
    set_num_threads,
    stats,
    stats_many,
)

__version__ = "0.1.0"

__all__ = [
    "CATALOGUE",
    "STATS_FIELDS",
    "Finding",
    "explain",
    "DeviceError",
    "DiagnosticError",
    "DtypeError",
    "InputError",
    "Layout",
    "LayoutError",
    "NnprobeError",
    "Probe",
    "TensorStats",
    "get_num_threads",
    "layout",
    "reshape_groups",
    "set_num_threads",
    "stats",
    "stats_many",
    "watch",
]
