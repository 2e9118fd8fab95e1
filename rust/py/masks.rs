//! `nonzero_along`, `group_codes`, `group_decode` and `mask_leaks`: the dependency-mask kernels.

use super::{detached, guard, to_pyerr};
use crate::error::Error;
use crate::intake::borrow;
use crate::masks::{self as kernel, Expect};
use crate::view::TensorView;
use numpy::{PyArray1, PyArrayMethods};
use pyo3::prelude::*;

/// A 2-D boolean input (a NumPy bool array) as row-major values and its shape.
fn bool_matrix(view: &TensorView, what: &str) -> crate::error::Result<(Vec<bool>, usize, usize)> {
    if view.shape.len() != 2 {
        return Err(Error::Layout(format!("{what} must be 2-d, got shape {:?}", view.shape)));
    }
    let (r, c) = (view.shape[0], view.shape[1]);
    Ok((kernel::nonzero_along(view, &[0, 1], 0.0)?.values, r, c))
}

fn bool_array<'py>(py: Python<'py>, values: Vec<bool>, shape: &[usize]) -> PyResult<Bound<'py, PyAny>> {
    Ok(PyArray1::from_vec(py, values).reshape(shape.to_vec())?.into_any())
}

/// nonzero_along(x, keep, *, tol=0.0) -> (bool array over the kept axes, saw_nonfinite)
#[pyfunction]
#[pyo3(signature = (x, keep, *, tol = 0.0))]
pub fn nonzero_along<'py>(py: Python<'py>, x: &Bound<'py, PyAny>, keep: Vec<usize>, tol: f64) -> PyResult<(Bound<'py, PyAny>, bool)> {
    guard(py, || {
        let b = borrow(x).map_err(|e| to_pyerr(py, e))?;
        let v = b.view().map_err(|e| to_pyerr(py, e))?;
        let r = detached(py, || kernel::nonzero_along(&v, &keep, tol))?;
        Ok((bool_array(py, r.values, &r.shape)?, r.nonfinite))
    })
}

/// group_codes(n_out) -> bool array [passes, n_out]: the outputs each group pass weights.
#[pyfunction]
pub fn group_codes<'py>(py: Python<'py>, n_out: usize) -> PyResult<Bound<'py, PyAny>> {
    guard(py, || {
        let passes = kernel::group_passes(n_out);
        bool_array(py, kernel::group_codes(n_out).map_err(|e| to_pyerr(py, e))?, &[passes, n_out])
    })
}

/// group_decode(hits, n_out) -> (mask [n_out, n_in], ambiguous [n_in]).
#[pyfunction]
pub fn group_decode<'py>(py: Python<'py>, hits: &Bound<'py, PyAny>, n_out: usize) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    guard(py, || {
        let b = borrow(hits).map_err(|e| to_pyerr(py, e))?;
        let v = b.view().map_err(|e| to_pyerr(py, e))?;
        let (d, n_in) = detached(py, || {
            let (values, _, n_in) = bool_matrix(&v, "hits")?;
            Ok((kernel::group_decode(&values, n_out, n_in)?, n_in))
        })?;
        Ok((bool_array(py, d.mask, &[n_out, n_in])?, bool_array(py, d.ambiguous, &[n_in])?))
    })
}

/// mask_leaks(mask, expect) -> list of (i, j) where mask departs from "identity" or "causal".
#[pyfunction]
pub fn mask_leaks(py: Python<'_>, mask: &Bound<'_, PyAny>, expect: &str) -> PyResult<Vec<(usize, usize)>> {
    guard(py, || {
        let expect = Expect::parse(expect).map_err(|e| to_pyerr(py, e))?;
        let b = borrow(mask).map_err(|e| to_pyerr(py, e))?;
        let v = b.view().map_err(|e| to_pyerr(py, e))?;
        detached(py, || {
            let (values, r, c) = bool_matrix(&v, "mask")?;
            kernel::leaks(&values, r, c, expect)
        })
    })
}
