"""The exception tree. Every leaf also subclasses the built-in that users already catch."""


class NnprobeError(Exception):
    """Base class of every error nnprobe raises."""


class InputError(NnprobeError, TypeError):
    """The object is not an array nnprobe can read (a list, a sparse tensor, ...)."""


class DtypeError(NnprobeError, TypeError):
    """The element type is not supported (complex, float8, structured, byte-swapped)."""


class LayoutError(NnprobeError, ValueError):
    """Shapes or strides that do not describe a tensor, or a reshape that cannot be."""


class DeviceError(NnprobeError, ValueError):
    """The data is not in host memory (CUDA or meta tensors passed to a host-only primitive)."""


class OutputError(NnprobeError, OSError):
    """A log, event file or report cannot be written where it was asked to go."""


class DiagnosticError(NnprobeError, RuntimeError):
    """Raised by ``watch(..., strict=True)`` at the first error-severity finding."""

    def __init__(self, finding):
        super().__init__(str(finding))
        self.finding = finding


__all__ = ["DeviceError", "DiagnosticError", "DtypeError", "InputError", "LayoutError", "NnprobeError", "OutputError"]
