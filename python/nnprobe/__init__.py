"""nnprobe: catches the mistakes that make neural-network training fail silently, while it runs."""

from .core import Layout, TensorStats
from .findings import CATALOGUE, Finding, explain
from .errors import DeviceError, DiagnosticError, DtypeError, InputError, LayoutError, NnprobeError
from .preflight.data import DataReport, inspect_data
from .preflight.deps import DependencyMask, DependencyReport, check_batch_independence, check_causal, dependency_mask
from .preflight.gradients import GradientReport, check_gradients
from .preflight.init import InitReport, check_init
from .preflight.layout_trace import LayoutTrace, trace_layout
from .preflight.lint import LintReport, lint
from .preflight.recipe import OverfitReport, ReproReport, check_reproducible, overfit_one_batch
from .preflight.doctor import DoctorReport, doctor
from .runtime import Probe, watch
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
    "DataReport",
    "DependencyMask",
    "DependencyReport",
    "DoctorReport",
    "GradientReport",
    "InitReport",
    "LayoutTrace",
    "LintReport",
    "OverfitReport",
    "ReproReport",
    "check_batch_independence",
    "check_causal",
    "check_gradients",
    "check_init",
    "check_reproducible",
    "dependency_mask",
    "doctor",
    "inspect_data",
    "lint",
    "overfit_one_batch",
    "trace_layout",
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
