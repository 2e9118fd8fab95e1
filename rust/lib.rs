//! nnprobe's Rust core. The kernels (stats, layout, view, pool) are plain Rust that `cargo test`
//! checks without a Python; `intake/` and `py/` are the only parts that know Python.

pub mod dtype;
pub mod error;
pub mod hash;
pub mod layout;
pub mod masks;
pub mod pool;
#[cfg(target_arch = "x86_64")]
pub mod simd;
#[cfg(target_arch = "x86_64")]
pub mod simd512;
pub mod stats;
pub mod view;

#[cfg(feature = "python")]
mod intake;
#[cfg(feature = "python")]
mod py;

#[cfg(feature = "python")]
#[pyo3::pymodule]
mod _core {
    use pyo3::prelude::*;

    #[pymodule_export]
    use crate::py::stats::{read_floor, stats, stats_array, stats_many, TensorStats};
    #[pymodule_export]
    use crate::py::layout::{reshape_groups, Layout};
    #[pymodule_export]
    use crate::py::masks::{group_codes, group_decode, mask_leaks, nonzero_along};
    #[pymodule_export]
    use crate::py::hash::{duplicate_rows, overlap_rows, row_hashes};

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        crate::pool::register_fork_handler();
        m.add("STATS_FIELDS", crate::py::stats::FIELDS.to_vec())?;
        m.add("HIST_LO", crate::stats::HIST_LO)?;
        m.add("HIST_BINS", crate::stats::HIST_BINS)?;
        Ok(())
    }

    /// Threads for the passes over data (0: one per core). In a forked child it is always 1.
    #[pyfunction]
    fn set_num_threads(py: Python<'_>, n: usize) -> PyResult<()> {
        crate::py::guard(py, || {
            crate::pool::set_num_threads(n);
            Ok(())
        })
    }

    #[pyfunction]
    fn get_num_threads(py: Python<'_>) -> PyResult<usize> {
        crate::py::guard(py, || Ok(crate::pool::num_threads()))
    }
}
