//! The buffer protocol (PEP 3118; in the limited API since Python 3.11): NumPy arrays of any
//! strides, read-only ones included, memoryviews, bytes.

use super::{Borrowed, Keepalive};
use crate::dtype::DType;
use crate::error::{Error, Result};
use pyo3::ffi;
use pyo3::prelude::*;
use std::ffi::CStr;

/// Owns a filled `Py_buffer` and releases it when dropped (always while attached to Python:
/// `Borrowed` never leaves the thread that holds it).
pub(crate) struct BufferGuard(Box<ffi::Py_buffer>);

impl Drop for BufferGuard {
    fn drop(&mut self) {
        // SAFETY: the buffer was filled by a successful PyObject_GetBuffer and is released once.
        unsafe { ffi::PyBuffer_Release(&mut *self.0) }
    }
}

pub(crate) fn supports(obj: &Bound<'_, PyAny>) -> bool {
    // SAFETY: obj is a valid object pointer while the Bound lives.
    unsafe { ffi::PyObject_CheckBuffer(obj.as_ptr()) == 1 }
}

fn format_dtype(format: &str, itemsize: usize) -> Result<DType> {
    let mut chars = format.chars().peekable();
    if let Some(&c) = chars.peek() {
        match c {
            '@' | '=' | '<' => {
                chars.next();
            }
            '>' | '!' if cfg!(target_endian = "little") => {
                return Err(Error::Dtype(format!(
                    "byte-swapped (big-endian, format {format:?}) arrays are not supported; \
                     use x.astype(x.dtype.newbyteorder('='))"
                )))
            }
            _ => {}
        }
    }
    let code: String = chars.collect();
    let kind = match code.as_str() {
        "?" => 'b',
        "b" | "h" | "i" | "l" | "q" | "n" => 'i',
        "B" | "H" | "I" | "L" | "Q" | "N" => 'u',
        "e" | "f" | "d" => 'f',
        _ => {
            return Err(Error::Dtype(format!(
                "unsupported element format {format:?} ({itemsize} bytes): nnprobe reads float16/32/64, \
                 integers and bool; convert with x.astype(numpy.float32) (complex: x.real or abs(x))"
            )))
        }
    };
    DType::from_kind(kind, itemsize)
}

pub(crate) fn borrow(obj: &Bound<'_, PyAny>) -> Result<Borrowed> {
    // SAFETY: Py_buffer is plain data; zeroed is the documented initial state.
    let mut raw: Box<ffi::Py_buffer> = Box::new(unsafe { std::mem::zeroed() });
    // SAFETY: obj is valid; on success the buffer must be released, which BufferGuard does.
    let rc = unsafe { ffi::PyObject_GetBuffer(obj.as_ptr(), &mut *raw, ffi::PyBUF_RECORDS_RO) };
    if rc != 0 {
        let err = PyErr::take(obj.py()).map(|e| e.to_string()).unwrap_or_default();
        return Err(Error::Input(format!("could not read the buffer of {}: {err}", super::type_name(obj))));
    }
    let guard = BufferGuard(raw);
    let b = &*guard.0;
    let itemsize = usize::try_from(b.itemsize).map_err(|_| Error::Internal("negative itemsize".into()))?;
    if itemsize == 0 {
        return Err(Error::Dtype(format!(
            "{} has elements of 0 bytes (an empty structured dtype?): nothing to read; use a dtype with at least one field",
            super::type_name(obj)
        )));
    }
    let format = if b.format.is_null() {
        "B".to_string()
    } else {
        // SAFETY: a non-null format is a NUL-terminated string owned by the buffer.
        unsafe { CStr::from_ptr(b.format) }.to_string_lossy().into_owned()
    };
    let dtype = format_dtype(&format, itemsize)?;
    let ndim = usize::try_from(b.ndim).map_err(|_| Error::Internal("negative ndim".into()))?;
    // SAFETY: with PyBUF_STRIDES the exporter fills shape and strides with ndim entries (or
    // leaves them null for a 0-d buffer).
    let (shape, strides_bytes): (Vec<isize>, Option<Vec<isize>>) = unsafe {
        if ndim == 0 || b.shape.is_null() {
            (vec![], Some(vec![]))
        } else {
            let shape = std::slice::from_raw_parts(b.shape, ndim).to_vec();
            let strides = if b.strides.is_null() { None } else { Some(std::slice::from_raw_parts(b.strides, ndim).to_vec()) };
            (shape, strides)
        }
    };
    let strides_bytes: Vec<isize> = match strides_bytes {
        Some(s) => s,
        None => {
            // no strides: compact row-major, checked
            let mut s = vec![itemsize as isize; shape.len()];
            for d in (0..shape.len().saturating_sub(1)).rev() {
                s[d] = s[d + 1].checked_mul(shape[d + 1].max(0)).ok_or_else(|| {
                    Error::Layout(format!("shape {shape:?} has more bytes than the address space"))
                })?;
            }
            s
        }
    };
    let mut strides_elems = Vec::with_capacity(ndim);
    for &s in &strides_bytes {
        if s % itemsize as isize != 0 {
            return Err(Error::Layout(format!(
                "byte strides {strides_bytes:?} are not multiples of the {itemsize}-byte itemsize \
                 (a field of a structured array?); copy it with numpy.ascontiguousarray(x)"
            )));
        }
        strides_elems.push(s / itemsize as isize);
    }
    let shape: Vec<usize> = shape.into_iter().map(|n| n.max(0) as usize).collect();
    let ptr = b.buf as *const u8;
    Ok(Borrowed { _keep: Keepalive::Buffer(guard), ptr, dtype, shape, strides_elems })
}
