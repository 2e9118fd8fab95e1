//! The thin #[pyfunction]/#[pyclass] layer: convert, run detached from the interpreter, wrap.

pub mod hash;
pub mod layout;
pub mod masks;
pub mod stats;

use crate::error::Error;
use pyo3::prelude::*;
use pyo3::types::PyType;

/// The single conversion of a core error into the matching class of `nnprobe.errors`.
pub fn to_pyerr(py: Python<'_>, e: Error) -> PyErr {
    let class = py
        .import("nnprobe.errors")
        .and_then(|m| m.getattr(e.python_class()))
        .and_then(|c| c.cast_into::<PyType>().map_err(PyErr::from));
    match class {
        Ok(c) => PyErr::from_type(c, e.message().to_string()),
        Err(_) => pyo3::exceptions::PyValueError::new_err(e.message().to_string()),
    }
}

/// A panic (a bug in nnprobe) as a core error, with its message.
fn panic_error(p: Box<dyn std::any::Any + Send>) -> Error {
    let what = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    Error::Internal(format!("internal error in nnprobe's core (please report): {what}"))
}

/// The body of every `#[pyfunction]`, `#[pymethods]` method and getter: a panic (a bug) becomes
/// an `NnprobeError` instead of PyO3's `PanicException`, a `BaseException` that `except
/// Exception` does not catch and that would end a training run.
pub fn guard<T>(py: Python<'_>, f: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| Err(to_pyerr(py, panic_error(p))))
}

/// Runs `f` with the GIL released; a panic (a bug) becomes an error instead of crossing the FFI.
pub fn detached<T: Send>(py: Python<'_>, f: impl FnOnce() -> crate::error::Result<T> + Send) -> PyResult<T> {
    let out = py.detach(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| Err(panic_error(p))));
    out.map_err(|e| to_pyerr(py, e))
}

/// A sequence of Python ints, any size: a clean `LayoutError` naming `what` if it is not one.
pub fn int_list(py: Python<'_>, obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<i128>> {
    obj.extract::<Vec<i128>>().map_err(|e| {
        to_pyerr(py, Error::Layout(format!("{what} must be a sequence of integers, got {} ({e})", super_type_name(obj))))
    })
}

/// The name of an object's type, for messages.
fn super_type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "object".into())
}

/// Converts checked: a value outside `T` is a `LayoutError` that names `what` and the value.
pub fn fit<T: TryFrom<i128>>(py: Python<'_>, v: i128, what: &str, rule: &str) -> PyResult<T> {
    T::try_from(v).map_err(|_| to_pyerr(py, Error::Layout(format!("{what} {v} is out of range: {rule}"))))
}
