//! AVX-512 kernels (x86-64 with AVX-512 F/BW/VL/DQ, e.g. AMD Zen 4, Intel Xeon since Skylake-SP).
//!
//! Why a second SIMD path: the AVX2 loop was bound by its accumulator latency and register
//! pressure, at about half the read bandwidth. With 32 registers, two vectors per iteration with
//! their own accumulators, zero-counting through mask registers and popcount (integer ports, not
//! the FP pipes), and the histogram fused into the same loop (its scalar increments run on the
//! load/store ports while the FP pipes do the sums), the pass keeps up with memory.
//!
//! The sums are not shifted here (that costs two subtractions per vector); the caller detects a
//! block whose spread is too small for unshifted sums to be exact enough and redoes it shifted.

#![cfg(target_arch = "x86_64")]

use crate::dtype::{BF16, F16};
use crate::stats::{BlockSums, HistScratch, HIST_BINS, HIST_LO};
use std::arch::x86_64::*;
use std::sync::OnceLock;

const PREFETCH_BYTES: usize = 512;

pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512dq")
            && is_x86_feature_detected!("popcnt")
            && is_x86_feature_detected!("f16c")
    })
}

/// Accumulators of one stream of vectors.
#[derive(Clone, Copy)]
struct Acc {
    s0: __m512d,
    s1: __m512d,
    q0: __m512d,
    q1: __m512d,
    a0: __m512d,
    a1: __m512d,
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,popcnt")]
fn acc_new() -> Acc {
    let z = _mm512_setzero_pd();
    Acc { s0: z, s1: z, q0: z, q1: z, a0: z, a1: z }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,popcnt")]
fn acc_add(acc: &mut Acc, x: __m512) {
    let lo = _mm512_cvtps_pd(_mm512_castps512_ps256(x));
    let hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(x))));
    acc.s0 = _mm512_add_pd(acc.s0, lo);
    acc.s1 = _mm512_add_pd(acc.s1, hi);
    acc.q0 = _mm512_fmadd_pd(lo, lo, acc.q0);
    acc.q1 = _mm512_fmadd_pd(hi, hi, acc.q1);
    acc.a0 = _mm512_add_pd(acc.a0, _mm512_abs_pd(lo));
    acc.a1 = _mm512_add_pd(acc.a1, _mm512_abs_pd(hi));
}

/// Byte marking a value the histogram skips; above every bin, so the block's lowest bin ignores it.
const DISCARD: u8 = 0xff;

/// Histogram by counting, not scattering: the block's bins go into a byte buffer, and each bin
/// value present is counted 64 bytes at a time with a compare into a mask and a popcount. A block
/// of real data spans few bins (about 15 for a Gaussian), so this beats one scalar increment per
/// element; a block spanning many bins falls back to increments.
const HIST_CHUNK: usize = 2048;

macro_rules! hist512 {
    ($hist:ident, $E:ty, |$q:ident| $load:expr) => {
        /// # Safety
        /// The CPU must support AVX-512 F/BW/VL/DQ.
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,f16c,popcnt")]
        pub unsafe fn $hist(xs: &[$E], h: &mut HistScratch) {
            let mut buf = [0u8; HIST_CHUNK + 64];
            let exp_bits = _mm512_set1_epi32(0x7f80_0000);
            let mag_bits = _mm512_set1_epi32(0x7fff_ffff);
            for chunk in xs.chunks(HIST_CHUNK) {
                let p = chunk.as_ptr();
                let n = chunk.len();
                // 1. the exponent byte of every value (the sign lands in bit 8 and is cut off),
                //    and how many are subnormal (exponent 0 but not zero: they belong in bin 0)
                let mut subnormal = 0u64;
                let mut i = 0;
                while i + 16 <= n {
                    let $q = p.add(i);
                    let bits = _mm512_castps_si512($load);
                    _mm_storeu_si128(buf.as_mut_ptr().add(i) as *mut __m128i, _mm512_cvtepi32_epi8(_mm512_srli_epi32::<23>(bits)));
                    subnormal += (_mm512_testn_epi32_mask(bits, exp_bits) & _mm512_test_epi32_mask(bits, mag_bits)).count_ones() as u64;
                    i += 16;
                }
                for (k, &x) in chunk[i..].iter().enumerate() {
                    let bits = x.to_f32().to_bits();
                    buf[i + k] = ((bits >> 23) & 0xff) as u8;
                    subnormal += ((bits & 0x7f80_0000) == 0 && (bits & 0x7fff_ffff) != 0) as u64;
                }
                // 2. exponents -> bins, 64 at a time (exponents 0 and 255: zero, subnormal and
                //    non-finite values are set aside); the block's lowest and highest bin
                let padded = n.div_ceil(64) * 64;
                buf[n..padded].fill(0);
                let (zero, full) = (_mm512_setzero_si512(), _mm512_set1_epi8(-1));
                let bias = _mm512_set1_epi8((127 + HIST_LO) as i8);
                let top = _mm512_set1_epi8(HIST_BINS as i8 - 1);
                let (mut lo, mut hi) = (full, zero);
                for j in (0..padded).step_by(64) {
                    let e = _mm512_loadu_si512(buf.as_ptr().add(j) as *const __m512i);
                    let skip = _mm512_cmpeq_epi8_mask(e, zero) | _mm512_cmpeq_epi8_mask(e, full);
                    let bin = _mm512_min_epu8(_mm512_subs_epu8(e, bias), top);
                    lo = _mm512_mask_min_epu8(lo, !skip, lo, bin);
                    hi = _mm512_mask_max_epu8(hi, !skip, hi, bin);
                    _mm512_storeu_si512(buf.as_mut_ptr().add(j) as *mut __m512i, _mm512_mask_mov_epi8(bin, skip, full));
                }
                h[0][0] += subnormal as u32;
                let mut lo_b = [0u8; 64];
                let mut hi_b = [0u8; 64];
                _mm512_storeu_si512(lo_b.as_mut_ptr() as *mut __m512i, lo);
                _mm512_storeu_si512(hi_b.as_mut_ptr() as *mut __m512i, hi);
                let lo = *lo_b.iter().min().unwrap_or(&DISCARD) as usize;
                let hi = *hi_b.iter().max().unwrap_or(&0) as usize;
                if lo > hi {
                    continue; // nothing but zeros, subnormals and non-finite values
                }
                // 3. count each bin present, 64 bytes per compare; scatter when the block is wide
                if hi - lo >= 24 {
                    for (k, &b) in buf[..n].iter().enumerate() {
                        h[k % crate::stats::HIST_COPIES][(b as usize).min(HIST_BINS)] += 1;
                    }
                    continue;
                }
                for bin in lo..=hi {
                    let target = _mm512_set1_epi8(bin as i8);
                    let mut count = 0u64;
                    for j in (0..padded).step_by(64) {
                        let v = _mm512_loadu_si512(buf.as_ptr().add(j) as *const __m512i);
                        count += _mm512_cmpeq_epi8_mask(v, target).count_ones() as u64;
                    }
                    h[0][bin] += count as u32;
                }
            }
        }
    };
}

macro_rules! kernels512 {
    ($block:ident, $E:ty, |$q:ident| $load:expr) => {
        /// Block sums, unshifted.
        ///
        /// # Safety
        /// The CPU must support AVX-512 F/BW/VL/DQ.
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,f16c,popcnt")]
        pub unsafe fn $block(xs: &[$E]) -> BlockSums {
            let n = xs.len();
            let p = xs.as_ptr();
            let mut acc_a = acc_new();
            let mut acc_b = acc_new();
            let mut vmin = _mm512_set1_ps(f32::INFINITY);
            let mut vmax = _mm512_set1_ps(f32::NEG_INFINITY);
            let zero = _mm512_setzero_ps();
            let mut zeros = 0u64;
            let mut i = 0;
            while i + 32 <= n {
                let $q = p.add(i);
                _mm_prefetch::<_MM_HINT_T0>(($q as *const i8).wrapping_add(PREFETCH_BYTES));
                let xa: __m512 = $load;
                let $q = p.add(i + 16);
                _mm_prefetch::<_MM_HINT_T0>(($q as *const i8).wrapping_add(PREFETCH_BYTES));
                let xb: __m512 = $load;
                vmin = _mm512_min_ps(vmin, _mm512_min_ps(xa, xb));
                vmax = _mm512_max_ps(vmax, _mm512_max_ps(xa, xb));
                zeros += (_mm512_cmp_ps_mask::<_CMP_EQ_OQ>(xa, zero) as u32).count_ones() as u64
                    + (_mm512_cmp_ps_mask::<_CMP_EQ_OQ>(xb, zero) as u32).count_ones() as u64;
                acc_add(&mut acc_a, xa);
                acc_add(&mut acc_b, xb);
                i += 32;
            }
            let sum = _mm512_reduce_add_pd(_mm512_add_pd(_mm512_add_pd(acc_a.s0, acc_a.s1), _mm512_add_pd(acc_b.s0, acc_b.s1)));
            let sumsq = _mm512_reduce_add_pd(_mm512_add_pd(_mm512_add_pd(acc_a.q0, acc_a.q1), _mm512_add_pd(acc_b.q0, acc_b.q1)));
            let abs_sum = _mm512_reduce_add_pd(_mm512_add_pd(_mm512_add_pd(acc_a.a0, acc_a.a1), _mm512_add_pd(acc_b.a0, acc_b.a1)));
            let mut b = BlockSums {
                n: n as u64,
                shift: 0.0,
                sum,
                sumsq,
                abs_sum,
                min: _mm512_reduce_min_ps(vmin) as f64,
                max: _mm512_reduce_max_ps(vmax) as f64,
                zeros,
            };
            for &x in &xs[i..] {
                let v = x.to_f32() as f64;
                b.sum += v;
                b.sumsq += v * v;
                b.abs_sum += v.abs();
                b.min = b.min.min(v);
                b.max = b.max.max(v);
                b.zeros += (v == 0.0) as u64;
            }
            b
        }
    };
}

trait ToF32: Copy {
    fn to_f32(self) -> f32;
}
impl ToF32 for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}
impl ToF32 for BF16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        BF16::to_f32(self)
    }
}
impl ToF32 for F16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        F16::to_f32(self)
    }
}

kernels512!(block_f32, f32, |q| _mm512_loadu_ps(q));
kernels512!(block_bf16, BF16, |q| _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(
    _mm256_loadu_si256(q as *const __m256i)
))));
kernels512!(block_f16, F16, |q| _mm512_cvtph_ps(_mm256_loadu_si256(q as *const __m256i)));

hist512!(hist_f32, f32, |q| _mm512_loadu_ps(q));
hist512!(hist_bf16, BF16, |q| _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(
    _mm256_loadu_si256(q as *const __m256i)
))));
hist512!(hist_f16, F16, |q| _mm512_cvtph_ps(_mm256_loadu_si256(q as *const __m256i)));
