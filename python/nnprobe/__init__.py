"""nnprobe: catches the mistakes that make neural-network training fail silently, while it runs."""

from .core import Layout, TensorStats
from .errors import DeviceError, DiagnosticError, DtypeError, InputError, LayoutError, NnprobeError, OutputError
from .findings import CATALOGUE, Finding, explain
from .options import DeviceStats, Every
from .preflight.data import DataReport, inspect_data
from .preflight.deps import DependencyMask, DependencyReport, check_batch_independence, check_causal, dependency_mask
from .preflight.doctor import DoctorReport, doctor
from .preflight.gradients import GradientReport, check_gradients
from .preflight.init import InitReport, check_init
from .preflight.layout_trace import LayoutTrace, trace_layout
from .preflight.lint import LintReport, lint
from .preflight.recipe import OverfitReport, ReproReport, check_reproducible, overfit_one_batch
from .primitives import STATS_FIELDS, get_num_threads, layout, reshape_groups, set_num_threads, stats, stats_many
from .runtime import Probe, watch

__version__ = "0.2.0"

__all__ = [
    "CATALOGUE",
    "DataReport",
    "DependencyMask",
    "DependencyReport",
    "DeviceError",
    "DeviceStats",
    "DiagnosticError",
    "DoctorReport",
    "DtypeError",
    "Every",
    "Finding",
    "GradientReport",
    "InitReport",
    "InputError",
    "Layout",
    "LayoutError",
    "LayoutTrace",
    "LintReport",
    "NnprobeError",
    "OutputError",
    "OverfitReport",
    "Probe",
    "ReproReport",
    "STATS_FIELDS",
    "TensorStats",
    "check_batch_independence",
    "check_causal",
    "check_gradients",
    "check_init",
    "check_reproducible",
    "dependency_mask",
    "doctor",
    "explain",
    "get_num_threads",
    "inspect_data",
    "layout",
    "lint",
    "overfit_one_batch",
    "reshape_groups",
    "set_num_threads",
    "stats",
    "stats_many",
    "trace_layout",
    "watch",
]
