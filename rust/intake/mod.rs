//! Python objects -> (DType, TensorView), zero-copy: the buffer protocol (NumPy arrays, memoryviews)
//! and DLPack (torch tensors of every dtype, bfloat16 included). The only code that knows those
//! formats. A `Borrowed` keeps the producer's memory alive while a kernel reads it.

mod buffer;
mod dlpack;

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::view::TensorView;
use pyo3::prelude::*;
use pyo3::types::PyAnyMethods;

pub(crate) enum Keepalive {
    Buffer(#[allow(dead_code)] buffer::BufferGuard),
    Capsule(#[allow(dead_code)] Py<PyAny>),
}

pub struct Borrowed {
    _keep: Keepalive,
    ptr: *const u8,
    dtype: DType,
    shape: Vec<usize>,
    strides_elems: Vec<isize>,
}

impl Borrowed {
    pub fn view(&self) -> Result<TensorView<'_>> {
        // SAFETY: `_keep` holds the exporter's buffer or capsule, which keeps the memory alive and
        // unmoved while `self` lives; shape, strides and dtype are the exporter's own description.
        unsafe { TensorView::from_raw(self.ptr, self.dtype, self.shape.clone(), self.strides_elems.clone()) }
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "object".into())
}

/// Borrows the memory behind `obj` without copying.
pub fn borrow(obj: &Bound<'_, PyAny>) -> Result<Borrowed> {
    if buffer::supports(obj) {
        return buffer::borrow(obj);
    }
    if obj.hasattr(pyo3::intern!(obj.py(), "__dlpack__")).unwrap_or(false) {
        return dlpack::borrow(obj);
    }
    Err(Error::Input(format!(
        "expected a torch.Tensor or a NumPy array (anything with __dlpack__ or the buffer protocol), \
         got {}; convert it with torch.as_tensor(x) or numpy.asarray(x)",
        type_name(obj)
    )))
}
