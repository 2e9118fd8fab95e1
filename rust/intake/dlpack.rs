//! DLPack (`__dlpack__` / `__dlpack_device__`): torch tensors of every dtype, bfloat16 included.
//!
//! The capsule is kept, unrenamed, for as long as the data is read: when it is dropped, the
//! producer's capsule destructor sees a capsule nobody consumed and calls the deleter itself.

use super::{Borrowed, Keepalive};
use crate::dtype::DType;
use crate::error::{Error, Result};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use std::ffi::{c_void, CStr};

#[repr(C)]
struct DLDevice {
    device_type: i32,
    device_id: i32,
}

#[repr(C)]
struct DLDataType {
    code: u8,
    bits: u8,
    lanes: u16,
}

#[repr(C)]
struct DLTensor {
    data: *mut c_void,
    device: DLDevice,
    ndim: i32,
    dtype: DLDataType,
    shape: *mut i64,
    strides: *mut i64,
    byte_offset: u64,
}

#[repr(C)]
struct DLManagedTensor {
    dl_tensor: DLTensor,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut DLManagedTensor)>,
}

#[repr(C)]
struct DLManagedTensorVersioned {
    version: [u32; 2],
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut DLManagedTensorVersioned)>,
    flags: u64,
    dl_tensor: DLTensor,
}

const KDL_CPU: i32 = 1;
const KDL_CUDA_HOST: i32 = 3;
const KDL_ROCM_HOST: i32 = 11;

fn device_name(t: i32) -> &'static str {
    match t {
        2 => "CUDA",
        4 => "OpenCL",
        7 => "Vulkan",
        8 => "Metal",
        10 => "ROCm",
        13 => "CUDA managed",
        14 => "oneAPI",
        _ => "non-CPU",
    }
}

fn dtype_of(dt: &DLDataType) -> Result<DType> {
    if dt.lanes != 1 {
        return Err(Error::Dtype(format!("vector dtypes ({} lanes) are not supported", dt.lanes)));
    }
    let bytes = dt.bits as usize / 8;
    match dt.code {
        0 => DType::from_kind('i', bytes),
        1 => DType::from_kind('u', bytes),
        2 => DType::from_kind('f', bytes),
        4 => DType::from_kind('B', bytes),
        6 => DType::from_kind('b', bytes),
        5 => Err(Error::Dtype(format!(
            "complex{} tensors are not supported: pass x.real, x.imag or x.abs()",
            dt.bits
        ))),
        c => Err(Error::Dtype(format!(
            "DLPack type code {c} ({} bits; float8 or another exotic type) is not supported: convert with x.float()",
            dt.bits
        ))),
    }
}

/// The dtypes of torch that DLPack exports as what they are, by torch's name for them.
const TORCH_READABLE: [&str; 13] = [
    "float16", "bfloat16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
    "uint64", "bool",
];

/// `torch.dtype` and the readable dtype objects, looked up once torch is imported (never imported
/// here: an object can only be a torch tensor once someone else has imported torch).
struct TorchDtypes {
    dtype_class: Py<PyAny>,
    readable: Vec<Py<PyAny>>,
}

static TORCH_DTYPES: PyOnceLock<TorchDtypes> = PyOnceLock::new();

fn torch_dtypes(py: Python<'_>) -> Option<&TorchDtypes> {
    if let Some(t) = TORCH_DTYPES.get(py) {
        return Some(t);
    }
    let torch = py.import("sys").and_then(|s| s.getattr("modules")).and_then(|m| m.get_item("torch")).ok()?;
    let dtype_class = torch.getattr("dtype").ok()?.unbind();
    let readable = TORCH_READABLE.iter().filter_map(|n| torch.getattr(*n).ok().map(|d| d.unbind())).collect();
    let _ = TORCH_DTYPES.set(py, TorchDtypes { dtype_class, readable });
    TORCH_DTYPES.get(py)
}

/// Refuses a torch tensor whose dtype the core would not read as what it means, before anything
/// is exported: quantized tensors (their bytes are not their values), complex ones, float8 and
/// float4, and the shell dtypes (`torch.uint4`, `torch.bits8`...) that DLPack would hand over as
/// plain bytes. Other DLPack producers are judged by the DLPack type code alone.
fn check_torch_dtype(obj: &Bound<'_, PyAny>) -> Result<()> {
    let py = obj.py();
    let Ok(dtype) = obj.getattr(intern!(py, "dtype")) else {
        return Ok(());
    };
    // the common case without building a string: a readable torch dtype, or no torch dtype at all
    if let Some(t) = torch_dtypes(py) {
        if t.readable.iter().any(|d| d.bind(py).is(&dtype)) || !dtype.is_instance(t.dtype_class.bind(py)).unwrap_or(false) {
            return Ok(());
        }
    }
    let Ok(dtype) = dtype.str().map(|s| s.to_string()) else {
        return Ok(());
    };
    let Some(name) = dtype.strip_prefix("torch.") else {
        return Ok(());
    };
    if TORCH_READABLE.contains(&name) {
        return Ok(());
    }
    let quantized = obj.getattr(intern!(py, "is_quantized")).and_then(|q| q.is_truthy()).unwrap_or(false);
    Err(Error::Dtype(if quantized || name.starts_with("qint") || name.starts_with("quint") {
        format!("quantized tensors ({dtype}) store codes, not values: pass x.dequantize() (or x.int_repr() for the stored integers)")
    } else if name.starts_with("complex") {
        format!("complex tensors ({dtype}) are not supported: pass x.real, x.imag or x.abs()")
    } else if name.starts_with("float8") || name.starts_with("float4") {
        format!("{dtype} is not supported: convert with x.float()")
    } else {
        format!(
            "{dtype} is not supported (nnprobe reads float16, bfloat16, float32, float64, signed and unsigned \
             integers and bool): convert with x.float(), or x.view(torch.uint8) for the raw bytes"
        )
    }))
}

/// The strides (elements) of a compact row-major tensor, checked.
fn row_major(shape: &[usize]) -> Result<Vec<isize>> {
    let mut s = vec![1isize; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = isize::try_from(shape[d + 1].max(1))
            .ok()
            .and_then(|n| s[d + 1].checked_mul(n))
            .ok_or_else(|| Error::Layout(format!("shape {shape:?} has more elements than the address space")))?;
    }
    Ok(s)
}

fn describe(obj: &Bound<'_, PyAny>) -> String {
    let name = super::type_name(obj);
    let extra = ["dtype", "device", "layout"]
        .iter()
        .filter_map(|a| obj.getattr(*a).ok().and_then(|v| v.str().ok()).map(|s| format!("{a}={s}")))
        .collect::<Vec<_>>()
        .join(", ");
    if extra.is_empty() { name } else { format!("{name}({extra})") }
}

pub(crate) fn borrow(obj: &Bound<'_, PyAny>) -> Result<Borrowed> {
    let py = obj.py();
    let device = obj
        .call_method0(intern!(py, "__dlpack_device__"))
        .and_then(|d| d.extract::<(i32, i32)>());
    match device {
        Ok((t, _)) if t == KDL_CPU || t == KDL_CUDA_HOST || t == KDL_ROCM_HOST => {}
        Ok((t, id)) => {
            return Err(Error::Device(format!(
                "{} lives on a {} device ({id}); nnprobe.stats reads host memory: pass x.cpu(), or \
                 let watch() reduce it on the device (device_stats=\"auto\")",
                describe(obj),
                device_name(t)
            )))
        }
        Err(e) => {
            return Err(Error::Device(format!(
                "cannot locate the memory of {} ({e}); meta tensors have no data, pass a real tensor",
                describe(obj)
            )))
        }
    }
    // DLPack refuses tensors that require grad; reading them needs no graph.
    let mut obj = obj.clone();
    if obj.getattr(intern!(py, "requires_grad")).and_then(|r| r.is_truthy()).unwrap_or(false) {
        if let Ok(d) = obj.call_method0(intern!(py, "detach")) {
            obj = d;
        }
    }
    check_torch_dtype(&obj)?;
    // torch's negative bit is lazy: the memory holds x while the tensor means -x (`z.conj().imag`,
    // `x._neg_view()`). DLPack hands over the memory as it is (torch exports a negative view
    // without a word), so such a view is resolved first: a copy, for such views only. Never a
    // figure of the wrong sign. (The conjugate bit only exists on complex tensors, refused above.)
    let negative = match obj.getattr(intern!(py, "is_neg")) {
        Ok(f) => f.call0().and_then(|v| v.is_truthy()).map_err(|e| {
            Error::Input(format!("{}.is_neg() failed ({e}); pass a plain tensor, e.g. x.clone()", describe(&obj)))
        })?,
        Err(_) => false, // not a torch tensor: no such bit
    };
    if negative {
        obj = obj.call_method0(intern!(py, "resolve_neg")).map_err(|e| {
            Error::Input(format!("{}.resolve_neg() failed ({e}); pass x.clone() instead", describe(&obj)))
        })?;
    }
    let capsule = obj.call_method0(intern!(py, "__dlpack__")).map_err(|e| {
        let sparse = obj.getattr("is_sparse").and_then(|v| v.is_truthy()).unwrap_or(false)
            || obj.getattr("layout").and_then(|v| v.str()).map(|s| s != "torch.strided").unwrap_or(false);
        let nested = obj.getattr("is_nested").and_then(|v| v.is_truthy()).unwrap_or(false);
        let hint = if nested {
            "nested tensors have no single strided buffer: pass the tensors of x.unbind() to stats_many"
        } else if sparse {
            "sparse tensors have no strided data: pass x.to_dense()"
        } else {
            "pass x.detach().cpu().contiguous()"
        };
        Error::Input(format!("{} could not be exported through DLPack ({e}); {hint}", describe(&obj)))
    })?;
    // SAFETY: capsule is a live object; PyCapsule_GetName returns its name or null.
    let name_ptr = unsafe { ffi::PyCapsule_GetName(capsule.as_ptr()) };
    if name_ptr.is_null() {
        // SAFETY: attached to the interpreter (we hold `py`); clears the error GetName set.
        unsafe { ffi::PyErr_Clear() };
        return Err(Error::Input(format!("__dlpack__ of {} did not return a capsule", describe(&obj))));
    }
    // SAFETY: a non-null capsule name is a NUL-terminated string.
    let name = unsafe { CStr::from_ptr(name_ptr) }.to_owned();
    // SAFETY: the name was just read from this capsule, so GetPointer succeeds and returns the
    // struct the DLPack standard puts behind that name.
    let tensor: &DLTensor = unsafe {
        let p = ffi::PyCapsule_GetPointer(capsule.as_ptr(), name.as_ptr());
        if p.is_null() {
            ffi::PyErr_Clear();
            return Err(Error::Input("DLPack capsule holds a null pointer".into()));
        }
        match name.to_bytes() {
            b"dltensor" => &(*(p as *const DLManagedTensor)).dl_tensor,
            b"dltensor_versioned" => &(*(p as *const DLManagedTensorVersioned)).dl_tensor,
            other => {
                return Err(Error::Input(format!(
                    "a capsule named {:?} is not a DLPack tensor",
                    String::from_utf8_lossy(other)
                )))
            }
        }
    };
    let dtype = dtype_of(&tensor.dtype)?;
    let ndim = usize::try_from(tensor.ndim).map_err(|_| Error::Input("negative ndim in DLPack tensor".into()))?;
    // SAFETY: DLPack guarantees `ndim` entries behind shape, and behind strides unless null.
    let (shape_i, strides): (Vec<i64>, Option<Vec<i64>>) = unsafe {
        if ndim == 0 {
            (vec![], Some(vec![]))
        } else {
            let shape = std::slice::from_raw_parts(tensor.shape, ndim).to_vec();
            let strides = (!tensor.strides.is_null()).then(|| std::slice::from_raw_parts(tensor.strides, ndim).to_vec());
            (shape, strides)
        }
    };
    let shape: Vec<usize> = shape_i
        .iter()
        .map(|&n| usize::try_from(n).map_err(|_| Error::Layout(format!("negative size in shape {shape_i:?}"))))
        .collect::<Result<_>>()?;
    let strides_elems: Vec<isize> = match strides {
        Some(s) => s.into_iter().map(|v| v as isize).collect(), // isize is i64 on every target nnprobe builds for
        None => row_major(&shape)?, // null strides: compact row-major (DLPack < 1.0)
    };
    let ptr = (tensor.data as *const u8).wrapping_add(tensor.byte_offset as usize);
    Ok(Borrowed { _keep: Keepalive::Capsule(capsule.unbind()), ptr, dtype, shape, strides_elems })
}
