//! `row_hashes`, `duplicate_rows` and `overlap_rows`: exact duplicates in data, hashed in parallel.

use super::{detached, guard, to_pyerr};
use crate::hash as kernel;
use crate::intake::borrow;
use numpy::{PyArray1, PyArrayMethods};
use pyo3::prelude::*;

fn pairs<'py>(py: Python<'py>, p: Vec<(usize, usize)>) -> PyResult<Bound<'py, PyAny>> {
    let n = p.len();
    let flat: Vec<i64> = p.into_iter().flat_map(|(a, b)| [a as i64, b as i64]).collect();
    Ok(PyArray1::from_vec(py, flat).reshape([n, 2])?.into_any())
}

/// row_hashes(x) -> uint64 array: a 64-bit hash of each row's bytes (rows along the first axis).
#[pyfunction]
pub fn row_hashes<'py>(py: Python<'py>, x: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyArray1<u64>>> {
    guard(py, || {
        let b = borrow(x).map_err(|e| to_pyerr(py, e))?;
        let v = b.view().map_err(|e| to_pyerr(py, e))?;
        let h = detached(py, || kernel::row_hashes(&v))?;
        Ok(PyArray1::from_vec(py, h))
    })
}

/// duplicate_rows(x) -> int64 array [k, 2]: (row, first earlier row with the same bytes).
#[pyfunction]
pub fn duplicate_rows<'py>(py: Python<'py>, x: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    guard(py, || {
        let b = borrow(x).map_err(|e| to_pyerr(py, e))?;
        let v = b.view().map_err(|e| to_pyerr(py, e))?;
        let p = detached(py, || kernel::duplicate_rows(&v))?;
        pairs(py, p)
    })
}

/// overlap_rows(a, b) -> int64 array [k, 2]: (row of b, first row of a with the same bytes).
#[pyfunction]
pub fn overlap_rows<'py>(py: Python<'py>, a: &Bound<'py, PyAny>, b: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    guard(py, || {
        let ba = borrow(a).map_err(|e| to_pyerr(py, e))?;
        let bb = borrow(b).map_err(|e| to_pyerr(py, e))?;
        let va = ba.view().map_err(|e| to_pyerr(py, e))?;
        let vb = bb.view().map_err(|e| to_pyerr(py, e))?;
        let p = detached(py, || kernel::overlap_rows(&va, &vb))?;
        pairs(py, p)
    })
}
