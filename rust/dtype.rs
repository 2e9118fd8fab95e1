//! The element types the kernels read, and the one place a runtime dtype becomes a generic call.

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F16,
    BF16,
    F32,
    F64,
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
    Bool,
}

impl DType {
    pub fn itemsize(self) -> usize {
        match self {
            DType::I8 | DType::U8 | DType::Bool => 1,
            DType::F16 | DType::BF16 | DType::I16 | DType::U16 => 2,
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::F64 | DType::I64 | DType::U64 => 8,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::F32 => "float32",
            DType::F64 => "float64",
            DType::I8 => "int8",
            DType::I16 => "int16",
            DType::I32 => "int32",
            DType::I64 => "int64",
            DType::U8 => "uint8",
            DType::U16 => "uint16",
            DType::U32 => "uint32",
            DType::U64 => "uint64",
            DType::Bool => "bool",
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F16 | DType::BF16 | DType::F32 | DType::F64)
    }

    /// From a kind letter ('f' float, 'i' signed, 'u' unsigned, 'b' bool, 'B' bfloat) and a
    /// size in bytes, the way DLPack and the buffer protocol both describe types.
    pub fn from_kind(kind: char, itemsize: usize) -> Result<DType> {
        Ok(match (kind, itemsize) {
            ('f', 2) => DType::F16,
            ('f', 4) => DType::F32,
            ('f', 8) => DType::F64,
            ('B', 2) => DType::BF16,
            ('i', 1) => DType::I8,
            ('i', 2) => DType::I16,
            ('i', 4) => DType::I32,
            ('i', 8) => DType::I64,
            ('u', 1) => DType::U8,
            ('u', 2) => DType::U16,
            ('u', 4) => DType::U32,
            ('u', 8) => DType::U64,
            ('b', 1) => DType::Bool,
            _ => {
                return Err(Error::Dtype(format!(
                    "unsupported element type (kind {kind:?}, {itemsize} bytes): nnprobe reads float16, \
                     bfloat16, float32, float64, signed and unsigned integers and bool; convert \
                     the tensor first (e.g. x.float(), or x.real/x.abs() for complex values)"
                )))
            }
        })
    }
}

/// bfloat16 as stored: the high half of a float32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(transparent)]
pub struct BF16(pub u16);

/// IEEE half precision as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(transparent)]
pub struct F16(pub u16);

impl BF16 {
    #[inline(always)]
    pub fn to_f32(self) -> f32 {
        f32::from_bits((self.0 as u32) << 16)
    }
    /// Round to nearest even (what torch does); for tests and tools.
    pub fn from_f32(x: f32) -> BF16 {
        let b = x.to_bits();
        if x.is_nan() {
            return BF16(((b >> 16) as u16) | 0x40);
        }
        let round = ((b >> 16) & 1) + 0x7fff;
        BF16((b.wrapping_add(round) >> 16) as u16)
    }
}

impl F16 {
    #[inline(always)]
    pub fn to_f32(self) -> f32 {
        let h = self.0 as u32;
        let sign = (h & 0x8000) << 16;
        let exp = (h >> 10) & 0x1f;
        let man = h & 0x3ff;
        let bits = if exp == 0 {
            if man == 0 {
                sign
            } else {
                // Subnormal half: value = man * 2^-24, exact in f32.
                let v = man as f32 * f32::from_bits(0x3380_0000); // 2^-24
                return if sign != 0 { -v } else { v };
            }
        } else if exp == 0x1f {
            sign | 0x7f80_0000 | (man << 13)
        } else {
            sign | ((exp + 112) << 23) | (man << 13)
        };
        f32::from_bits(bits)
    }
}

/// An element the kernels can read. Every value is read as f64 (exact for every float type;
/// integers above 2^53 round, which statistics tolerate).
pub trait Element: Copy + Send + Sync + 'static {
    const DTYPE: DType;
    fn to_f64(self) -> f64;
}

macro_rules! element_as {
    ($($t:ty => $d:ident),*) => {$(
        impl Element for $t {
            const DTYPE: DType = DType::$d;
            #[inline(always)]
            fn to_f64(self) -> f64 { self as f64 }
        }
    )*};
}
element_as!(f32 => F32, f64 => F64, i8 => I8, i16 => I16, i32 => I32, i64 => I64,
            u8 => U8, u16 => U16, u32 => U32, u64 => U64);

/// A bool as torch and NumPy store it: one byte. Read as `byte != 0`, as NumPy and torch do: a
/// bool array viewed from other bytes (`np.uint8(...).view(bool)`) may hold 2 or 255, which are
/// true, never 2 or 255. (A Rust `bool` must not be used: any byte but 0 and 1 is invalid for it.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(transparent)]
pub struct Bool8(pub u8);

impl Element for Bool8 {
    const DTYPE: DType = DType::Bool;
    #[inline(always)]
    fn to_f64(self) -> f64 {
        (self.0 != 0) as u8 as f64
    }
}
impl Element for BF16 {
    const DTYPE: DType = DType::BF16;
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self.to_f32() as f64
    }
}
impl Element for F16 {
    const DTYPE: DType = DType::F16;
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self.to_f32() as f64
    }
}

/// Calls `$body` with `$T` bound to the Rust element type of `$dtype`: the single dispatch.
#[macro_export]
macro_rules! with_dtype {
    ($dtype:expr, $T:ident => $body:expr) => {{
        use $crate::dtype::{Bool8, DType, BF16, F16};
        match $dtype {
            DType::F16 => { type $T = F16; $body }
            DType::BF16 => { type $T = BF16; $body }
            DType::F32 => { type $T = f32; $body }
            DType::F64 => { type $T = f64; $body }
            DType::I8 => { type $T = i8; $body }
            DType::I16 => { type $T = i16; $body }
            DType::I32 => { type $T = i32; $body }
            DType::I64 => { type $T = i64; $body }
            DType::U8 => { type $T = u8; $body }
            DType::U16 => { type $T = u16; $body }
            DType::U32 => { type $T = u32; $body }
            DType::U64 => { type $T = u64; $body }
            DType::Bool => { type $T = Bool8; $body }
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_conversions_are_exact() {
        assert_eq!(F16(0x3c00).to_f32(), 1.0);
        assert_eq!(F16(0xc000).to_f32(), -2.0);
        assert_eq!(F16(0x0001).to_f32(), 2f32.powi(-24));
        assert_eq!(F16(0x7bff).to_f32(), 65504.0);
        assert!(F16(0x7c00).to_f32().is_infinite());
        assert!(F16(0x7e00).to_f32().is_nan());
        assert_eq!(BF16(0x3f80).to_f32(), 1.0);
        assert_eq!(BF16::from_f32(1.0).0, 0x3f80);
        assert_eq!(BF16::from_f32(3.0).to_f32(), 3.0);
    }

    #[test]
    fn bool_bytes_other_than_one_are_true() {
        assert_eq!([Bool8(0), Bool8(1), Bool8(2), Bool8(255)].map(|b| b.to_f64()), [0.0, 1.0, 1.0, 1.0]);
    }
}
