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

/// Runs `f` with the GIL released; a panic (a bug) becomes an error instead of crossing the FFI.
pub fn detached<T: Send>(py: Python<'_>, f: impl FnOnce() -> crate::error::Result<T> + Send) -> PyResult<T> {
    let out = py.detach(|| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(Error::Internal(format!("internal error in nnprobe's core (please report): {what}")))
        })
    });
    out.map_err(|e| to_pyerr(py, e))
}
