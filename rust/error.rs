//! One error enum for the core. The kernels return it; `py/` turns it into the matching class of
//! `nnprobe.errors` (the only place that knows the Python side of an error).

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A dtype the kernels do not handle (complex, float8, a structured NumPy dtype...).
    Dtype(String),
    /// Shapes, strides or offsets that do not describe a valid tensor, or a reshape that cannot be.
    Layout(String),
    /// Memory the core cannot read from the host (CUDA, meta).
    Device(String),
    /// An object that is not an array at all.
    Input(String),
    /// A bug in nnprobe; never expected.
    Internal(String),
}

impl Error {
    /// The name of the Python exception class in `nnprobe.errors`.
    pub fn python_class(&self) -> &'static str {
        match self {
            Error::Dtype(_) => "DtypeError",
            Error::Layout(_) => "LayoutError",
            Error::Device(_) => "DeviceError",
            Error::Input(_) => "InputError",
            Error::Internal(_) => "NnprobeError",
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Error::Dtype(m) | Error::Layout(m) | Error::Device(m) | Error::Input(m) | Error::Internal(m) => m,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// `vec![value; len]`, or a `Layout` error where the memory cannot be had: a size that a user's
/// number implies is never allowed to abort the process (a failed allocation aborts; it does not
/// panic).
pub fn filled_vec<T: Clone>(len: usize, value: T, what: &str) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| {
        Error::Layout(format!("{what} would need {len} entries of {} bytes: more memory than there is", std::mem::size_of::<T>()))
    })?;
    v.resize(len, value);
    Ok(v)
}
