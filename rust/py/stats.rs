//! `stats`, `stats_many`, `stats_array` and the `TensorStats` result.

use super::{detached, guard, to_pyerr};
use crate::intake::{borrow, Borrowed};
use crate::stats::{self as kernel, Stats, Summary, HIST_BINS, HIST_LO};
use crate::view::TensorView;
use numpy::{PyArray1, PyArray2};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

/// The float fields in the order of `stats_array`'s columns.
pub const FIELDS: [&str; 11] = ["count", "nan", "inf", "zeros", "min", "max", "mean", "std", "l2", "absmax", "absmean"];

#[pyclass(frozen, module = "nnprobe", name = "TensorStats")]
pub struct TensorStats {
    s: Summary,
    dtype: &'static str,
    hist: Option<Vec<u64>>,
}

impl TensorStats {
    fn new(st: &Stats, dtype: &'static str) -> TensorStats {
        TensorStats { s: st.summary(), dtype, hist: st.hist.clone() }
    }
}

#[pymethods]
impl TensorStats {
    #[getter]
    fn count(&self, py: Python<'_>) -> PyResult<u64> {
        guard(py, || Ok(self.s.count))
    }
    #[getter]
    fn nan(&self, py: Python<'_>) -> PyResult<u64> {
        guard(py, || Ok(self.s.nan))
    }
    #[getter]
    fn inf(&self, py: Python<'_>) -> PyResult<u64> {
        guard(py, || Ok(self.s.inf))
    }
    #[getter]
    fn zeros(&self, py: Python<'_>) -> PyResult<u64> {
        guard(py, || Ok(self.s.zeros))
    }
    #[getter]
    fn min(&self, py: Python<'_>) -> PyResult<f64> {
        guard(py, || Ok(self.s.min))
    }
    #[getter]
    fn max(&self, py: Python<'_>) -> PyResult<f64> {
        guard(py, || Ok(self.s.max))
    }
    #[getter]
    fn mean(&self, py: Python<'_>) -> PyResult<f64> {
        guard(py, || Ok(self.s.mean))
    }
    #[getter]
    fn std(&self, py: Python<'_>) -> PyResult<f64> {
        guard(py, || Ok(self.s.std))
    }
    #[getter]
    fn l2(&self, py: Python<'_>) -> PyResult<f64> {
        guard(py, || Ok(self.s.l2))
    }
    #[getter]
    fn absmax(&self, py: Python<'_>) -> PyResult<f64> {
        guard(py, || Ok(self.s.absmax))
    }
    #[getter]
    fn absmean(&self, py: Python<'_>) -> PyResult<f64> {
        guard(py, || Ok(self.s.absmean))
    }
    #[getter]
    fn dtype(&self, py: Python<'_>) -> PyResult<&'static str> {
        guard(py, || Ok(self.dtype))
    }

    /// Histogram counts of floor(log2|x|) over finite non-zero values (64 bins), or None.
    #[getter]
    fn hist_counts<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyArray1<u64>>>> {
        guard(py, || Ok(self.hist.as_ref().map(|h| PyArray1::from_slice(py, h))))
    }

    /// The 65 bin edges in log2 units: bin i spans [edges[i], edges[i+1]); the end bins also
    /// hold what lies beyond them.
    #[getter]
    fn hist_edges<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyArray1<f64>>>> {
        guard(py, || {
            Ok(self.hist.as_ref().map(|_| {
                let edges: Vec<f64> = (0..=HIST_BINS as i32).map(|i| (HIST_LO + i) as f64).collect();
                PyArray1::from_vec(py, edges)
            }))
        })
    }

    /// The fields as a dict (histogram arrays included when present).
    fn as_dict<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyDict>> {
        guard(slf.py(), || {
            let d = PyDict::new(slf.py());
            for f in FIELDS.iter().chain(["dtype", "hist_edges", "hist_counts"].iter()) {
                d.set_item(*f, slf.getattr(*f)?)?;
            }
            Ok(d)
        })
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        guard(py, || {
            let s = &self.s;
            let hist = if self.hist.is_some() { ", hist=64 bins" } else { "" };
            let [min, max, mean, std, l2, absmax, absmean] = [s.min, s.max, s.mean, s.std, s.l2, s.absmax, s.absmean].map(short);
            Ok(format!(
                "TensorStats({}, count={}, nan={}, inf={}, zeros={}, min={min}, max={max}, mean={mean}, \
                 std={std}, l2={l2}, absmax={absmax}, absmean={absmean}{hist})",
                self.dtype, s.count, s.nan, s.inf, s.zeros
            ))
        })
    }
}

/// Six significant digits, like Python's `%.6g`.
fn short(v: f64) -> String {
    if !v.is_finite() {
        return if v.is_nan() { "nan".into() } else if v > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if v == 0.0 || (1e-4..1e6).contains(&v.abs()) {
        let digits = (5 - v.abs().log10().floor() as i32).clamp(0, 20) as usize;
        let s = format!("{v:.digits$}");
        if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s }
    } else {
        format!("{v:.5e}")
    }
}

fn borrow_all(xs: &Bound<'_, PyAny>) -> PyResult<Vec<Borrowed>> {
    let py = xs.py();
    let not_a_sequence = |e: PyErr| {
        let name = xs.get_type().name().map(|n| n.to_string()).unwrap_or_default();
        to_pyerr(py, crate::error::Error::Input(format!("expected a sequence of tensors or arrays, got {name} ({e}); pass a list")))
    };
    let items: Vec<Bound<'_, PyAny>> = xs.try_iter().map_err(not_a_sequence)?.collect::<PyResult<_>>()?;
    items
        .iter()
        .enumerate()
        .map(|(i, x)| {
            borrow(x).map_err(|e| {
                let msg = format!("item {i}: {}", e.message());
                to_pyerr(py, match e {
                    crate::error::Error::Dtype(_) => crate::error::Error::Dtype(msg),
                    crate::error::Error::Layout(_) => crate::error::Error::Layout(msg),
                    crate::error::Error::Device(_) => crate::error::Error::Device(msg),
                    crate::error::Error::Input(_) => crate::error::Error::Input(msg),
                    crate::error::Error::Internal(_) => crate::error::Error::Internal(msg),
                })
            })
        })
        .collect()
}

fn views(borrowed: &[Borrowed]) -> crate::error::Result<Vec<TensorView<'_>>> {
    borrowed.iter().map(|b| b.view()).collect()
}

/// stats(x, hist=False) -> TensorStats: one pass over any torch tensor or NumPy array.
#[pyfunction]
#[pyo3(signature = (x, *, hist = false))]
pub fn stats(py: Python<'_>, x: &Bound<'_, PyAny>, hist: bool) -> PyResult<TensorStats> {
    guard(py, || {
        let b = borrow(x).map_err(|e| to_pyerr(py, e))?;
        let dtype = b.dtype().name();
        let v = b.view().map_err(|e| to_pyerr(py, e))?;
        let st = detached(py, || kernel::stats(&v, hist))?;
        Ok(TensorStats::new(&st, dtype))
    })
}

/// stats_many(xs, hist=False) -> list[TensorStats]: a batch, parallel across tensors.
#[pyfunction]
#[pyo3(signature = (xs, *, hist = false))]
pub fn stats_many<'py>(py: Python<'py>, xs: &Bound<'py, PyAny>, hist: bool) -> PyResult<Bound<'py, PyList>> {
    guard(py, || {
        let borrowed = borrow_all(xs)?;
        let vs = views(&borrowed).map_err(|e| to_pyerr(py, e))?;
        let all = detached(py, || kernel::stats_many(&vs, hist))?;
        let out: Vec<TensorStats> = all.iter().zip(&borrowed).map(|(s, b)| TensorStats::new(s, b.dtype().name())).collect();
        PyList::new(py, out.into_iter().map(|s| Bound::new(py, s)).collect::<PyResult<Vec<_>>>()?)
    })
}

/// stats_array(xs) -> float64 array [len(xs), 11] in `STATS_FIELDS` order: the same figures as
/// `stats_many` without building an object per tensor (what `watch` keeps as history).
#[pyfunction]
pub fn stats_array<'py>(py: Python<'py>, xs: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyArray2<f64>>> {
    guard(py, || {
        let borrowed = borrow_all(xs)?;
        let vs = views(&borrowed).map_err(|e| to_pyerr(py, e))?;
        let all = detached(py, || kernel::stats_many(&vs, false))?;
        let rows: Vec<Vec<f64>> = all
            .iter()
            .map(|st| {
                let s = st.summary();
                vec![s.count as f64, s.nan as f64, s.inf as f64, s.zeros as f64, s.min, s.max, s.mean, s.std, s.l2, s.absmax, s.absmean]
            })
            .collect();
        if rows.is_empty() {
            return Ok(PyArray2::<f64>::zeros(py, [0, FIELDS.len()], false));
        }
        Ok(PyArray2::from_vec2(py, &rows)?)
    })
}

/// read_floor(x) -> float: a plain sum of a float32 array, the benchmarks' read-bandwidth floor.
#[pyfunction]
pub fn read_floor(py: Python<'_>, x: &Bound<'_, PyAny>) -> PyResult<f64> {
    guard(py, || {
        let b = borrow(x).map_err(|e| to_pyerr(py, e))?;
        let v = b.view().map_err(|e| to_pyerr(py, e))?;
        detached(py, || {
            let w = v.walk();
            if v.dtype != crate::dtype::DType::F32 || w.dims.len() != 1 || w.dims[0].1 != 1 || w.repeat != 1 {
                return Err(crate::error::Error::Layout("read_floor takes a contiguous float32 array".into()));
            }
            // SAFETY: a contiguous float32 run of w.len elements starting at the walk's base.
            let xs = unsafe { std::slice::from_raw_parts(v.elem_ptr(w.base) as *const f32, w.len) };
            Ok(kernel::read_floor(xs))
        })
    })
}
