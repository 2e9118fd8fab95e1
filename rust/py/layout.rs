//! `Layout` and `reshape_groups`. Every method and getter runs inside `guard`.

use super::{fit, guard, int_list, to_pyerr};
use crate::layout;
use pyo3::prelude::*;

#[pyclass(frozen, module = "nnprobe", name = "Layout")]
pub struct Layout {
    inner: layout::Layout,
    dtype: Option<String>,
}

/// Sizes: each in 0..=usize::MAX.
fn sizes(py: Python<'_>, obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<usize>> {
    int_list(py, obj, what)?.into_iter().map(|n| fit(py, n, &format!("{what}: size"), "a size is an integer from 0 to 2**64 - 1")).collect()
}

/// A target shape for a view: sizes >= 0 and at most one -1 (checked by the kernel).
fn target_shape(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<Vec<i64>> {
    int_list(py, obj, "shape")?.into_iter().map(|n| fit(py, n, "shape: size", "a size is an integer from 0 to 2**63 - 1, or -1 once")).collect()
}

#[pymethods]
impl Layout {
    #[new]
    #[pyo3(signature = (shape, strides, itemsize, offset = 0, dtype = None))]
    fn new(py: Python<'_>, shape: &Bound<'_, PyAny>, strides: &Bound<'_, PyAny>, itemsize: i128, offset: i128, dtype: Option<String>) -> PyResult<Layout> {
        guard(py, || {
            let shape = sizes(py, shape, "shape")?;
            let strides = int_list(py, strides, "strides")?
                .into_iter()
                .map(|s| fit(py, s, "stride", "strides fit in a signed 64-bit integer"))
                .collect::<PyResult<Vec<isize>>>()?;
            let itemsize = fit(py, itemsize, "itemsize", "an itemsize is >= 1 byte")?;
            let offset = fit(py, offset, "offset", "offsets fit in a signed 64-bit integer")?;
            let inner = layout::Layout::new(shape, strides, itemsize, offset).map_err(|e| to_pyerr(py, e))?;
            Ok(Layout { inner, dtype })
        })
    }
    #[getter]
    fn shape(&self, py: Python<'_>) -> PyResult<Vec<usize>> {
        guard(py, || Ok(self.inner.shape.clone()))
    }
    /// Strides in elements.
    #[getter]
    fn strides(&self, py: Python<'_>) -> PyResult<Vec<isize>> {
        guard(py, || Ok(self.inner.strides.clone()))
    }
    #[getter]
    fn itemsize(&self, py: Python<'_>) -> PyResult<usize> {
        guard(py, || Ok(self.inner.itemsize))
    }
    #[getter]
    fn offset(&self, py: Python<'_>) -> PyResult<isize> {
        guard(py, || Ok(self.inner.offset))
    }
    #[getter]
    fn dtype(&self, py: Python<'_>) -> PyResult<Option<String>> {
        guard(py, || Ok(self.dtype.clone()))
    }
    #[getter]
    fn c_contiguous(&self, py: Python<'_>) -> PyResult<bool> {
        guard(py, || Ok(self.inner.c_contiguous()))
    }
    #[getter]
    fn f_contiguous(&self, py: Python<'_>) -> PyResult<bool> {
        guard(py, || Ok(self.inner.f_contiguous()))
    }
    /// Non-overlapping and dense: some permutation of the axes is contiguous.
    #[getter]
    fn dense(&self, py: Python<'_>) -> PyResult<bool> {
        guard(py, || Ok(self.inner.dense()))
    }
    /// Whether two indices may share memory: True where they do, and where nnprobe cannot decide
    /// (`overlap == "maybe"`); decided from the shape and strides alone.
    #[getter]
    fn overlapping(&self, py: Python<'_>) -> PyResult<bool> {
        guard(py, || Ok(self.inner.overlapping()))
    }
    /// "no", "yes", or "maybe" where the strides interleave past what is decided exactly.
    #[getter]
    fn overlap(&self, py: Python<'_>) -> PyResult<&'static str> {
        guard(py, || Ok(self.inner.overlap().name()))
    }
    /// Bytes from the lowest to the highest byte reached (a Python int of any size).
    #[getter]
    fn footprint_bytes(&self, py: Python<'_>) -> PyResult<u128> {
        guard(py, || Ok(self.inner.footprint_bytes()))
    }
    /// Whether `x.view(shape)` succeeds (torch's rule; one -1 is inferred).
    fn can_view(&self, py: Python<'_>, shape: &Bound<'_, PyAny>) -> PyResult<bool> {
        guard(py, || {
            let shape = target_shape(py, shape)?;
            Ok(self.inner.view_strides(&shape).map_err(|e| to_pyerr(py, e))?.is_some())
        })
    }
    /// The strides `x.view(shape)` would have, or None where it would raise.
    fn view_strides(&self, py: Python<'_>, shape: &Bound<'_, PyAny>) -> PyResult<Option<Vec<isize>>> {
        guard(py, || {
            let shape = target_shape(py, shape)?;
            self.inner.view_strides(&shape).map_err(|e| to_pyerr(py, e))
        })
    }
    fn explain(&self, py: Python<'_>) -> PyResult<String> {
        guard(py, || Ok(self.inner.explain(self.dtype.as_deref())))
    }
    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        guard(py, || {
            let l = &self.inner;
            let py_bool = |b: bool| if b { "True" } else { "False" };
            Ok(format!(
                "Layout(shape={:?}, strides={:?}, itemsize={}, offset={}, c_contiguous={}, f_contiguous={}, dense={}, overlap='{}', footprint_bytes={})",
                l.shape,
                l.strides,
                l.itemsize,
                l.offset,
                py_bool(l.c_contiguous()),
                py_bool(l.f_contiguous()),
                py_bool(l.dense()),
                l.overlap().name(),
                l.footprint_bytes()
            ))
        })
    }
}

/// reshape_groups(old_shape, new_shape) -> list[tuple[tuple[int, ...], tuple[int, ...]]]
#[pyfunction]
pub fn reshape_groups(py: Python<'_>, old_shape: &Bound<'_, PyAny>, new_shape: &Bound<'_, PyAny>) -> PyResult<Vec<(Vec<usize>, Vec<usize>)>> {
    guard(py, || {
        let (old, new) = (sizes(py, old_shape, "old_shape")?, sizes(py, new_shape, "new_shape")?);
        layout::reshape_groups(&old, &new).map_err(|e| to_pyerr(py, e))
    })
}
