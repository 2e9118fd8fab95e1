//! `Layout` and `reshape_groups`.

use super::to_pyerr;
use crate::layout;
use pyo3::prelude::*;

#[pyclass(frozen, module = "nnprobe", name = "Layout")]
pub struct Layout {
    inner: layout::Layout,
    dtype: Option<String>,
}

#[pymethods]
impl Layout {
    #[new]
    #[pyo3(signature = (shape, strides, itemsize, offset = 0, dtype = None))]
    fn new(py: Python<'_>, shape: Vec<usize>, strides: Vec<isize>, itemsize: usize, offset: isize, dtype: Option<String>) -> PyResult<Layout> {
        let inner = layout::Layout::new(shape, strides, itemsize, offset).map_err(|e| to_pyerr(py, e))?;
        Ok(Layout { inner, dtype })
    }
    #[getter]
    fn shape(&self) -> Vec<usize> {
        self.inner.shape.clone()
    }
    /// Strides in elements.
    #[getter]
    fn strides(&self) -> Vec<isize> {
        self.inner.strides.clone()
    }
    #[getter]
    fn itemsize(&self) -> usize {
        self.inner.itemsize
    }
    #[getter]
    fn offset(&self) -> isize {
        self.inner.offset
    }
    #[getter]
    fn dtype(&self) -> Option<String> {
        self.dtype.clone()
    }
    #[getter]
    fn c_contiguous(&self) -> bool {
        self.inner.c_contiguous()
    }
    #[getter]
    fn f_contiguous(&self) -> bool {
        self.inner.f_contiguous()
    }
    /// Non-overlapping and dense: some permutation of the axes is contiguous.
    #[getter]
    fn dense(&self) -> bool {
        self.inner.dense()
    }
    #[getter]
    fn overlapping(&self) -> bool {
        self.inner.overlapping()
    }
    #[getter]
    fn footprint_bytes(&self) -> usize {
        self.inner.footprint_bytes()
    }
    /// Whether `x.view(shape)` succeeds (torch's rule; one -1 is inferred).
    fn can_view(&self, py: Python<'_>, shape: Vec<i64>) -> PyResult<bool> {
        Ok(self.inner.view_strides(&shape).map_err(|e| to_pyerr(py, e))?.is_some())
    }
    /// The strides `x.view(shape)` would have, or None where it would raise.
    fn view_strides(&self, py: Python<'_>, shape: Vec<i64>) -> PyResult<Option<Vec<isize>>> {
        self.inner.view_strides(&shape).map_err(|e| to_pyerr(py, e))
    }
    fn explain(&self) -> String {
        self.inner.explain(self.dtype.as_deref())
    }
    fn __repr__(&self) -> String {
        let l = &self.inner;
        format!(
            "Layout(shape={:?}, strides={:?}, itemsize={}, offset={}, c_contiguous={}, f_contiguous={}, dense={}, overlapping={}, footprint_bytes={})",
            l.shape, l.strides, l.itemsize, l.offset, l.c_contiguous(), l.f_contiguous(), l.dense(), l.overlapping(), l.footprint_bytes()
        )
        .replace("true", "True")
        .replace("false", "False")
    }
}

/// reshape_groups(old_shape, new_shape) -> list[tuple[tuple[int, ...], tuple[int, ...]]]
#[pyfunction]
pub fn reshape_groups(py: Python<'_>, old_shape: Vec<usize>, new_shape: Vec<usize>) -> PyResult<Vec<(Vec<usize>, Vec<usize>)>> {
    layout::reshape_groups(&old_shape, &new_shape).map_err(|e| to_pyerr(py, e))
}
