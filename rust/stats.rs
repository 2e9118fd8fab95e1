//! The fused one-pass statistics kernel and its merge.
//!
//! A tensor is read once, in memory order, in blocks of `BLOCK` elements. Each block is summed
//! first on the assumption that every value is finite (no per-element branch); a non-finite value
//! makes the block's sums non-finite, and only such a block is read again, carefully, from L1.
//! Sums are kept in f64 relative to the block's first value and blocks are combined with Chan's
//! parallel update, so the mean and std stay accurate (about 1e-13 relative on float32 input)
//! even when the mean is far larger than the spread, and float32 values near 3e38 cannot overflow.
//!
//! float64 values beyond 2^450 (about 3e135) would square past the float64 range, and values
//! below 2^-450 would square to nothing. The sum of squared deviations is therefore kept in units
//! of a power of two, `m2 · 4^m2_exp`, and a block whose sums overflowed (or whose values are all
//! that small) is redone in units of 2^e (exact scalings): the std and l2 of any float64 values
//! come out finite and correct, like LAPACK's dnrm2. The exponent stays 0, and every scaling is
//! skipped, for values in between (every float32, bfloat16, float16 and integer value); the |x|
//! figure is kept as a running mean.

use crate::dtype::{Element, BF16, F16};
use crate::error::{Error, Result};
use crate::pool;
use crate::view::{TensorView, Walk};
use crate::with_dtype;

pub const BLOCK: usize = 2048;
/// Elements per parallel task: big enough to amortise scheduling, small enough to balance.
pub const TASK: usize = 1 << 20;
pub const HIST_BINS: usize = 64;
/// Bin i of the histogram counts finite non-zero x with floor(log2|x|) == HIST_LO + i; values
/// below 2^HIST_LO land in bin 0 and values at or above 2^(HIST_LO + 64) in bin 63.
pub const HIST_LO: i32 = -48;
/// Per-block scratch histogram: interleaved copies (independent increments) of 64 bins plus
/// a bin that swallows zeros and non-finite values.
pub type HistScratch = [[u32; HIST_BINS + 1]; HIST_COPIES];
/// Interleaved copies of the scratch histogram.
pub const HIST_COPIES: usize = 8;

/// Sums over one block whose values are all finite, relative to `shift`.
#[derive(Debug, Clone, Copy)]
pub struct BlockSums {
    pub n: u64,
    pub shift: f64,
    pub sum: f64,
    pub sumsq: f64,
    pub abs_sum: f64,
    pub min: f64,
    pub max: f64,
    pub zeros: u64,
}

impl BlockSums {
    fn is_finite(&self) -> bool {
        (self.sum + self.sumsq + self.abs_sum).is_finite()
    }
}

/// Running statistics of everything read so far; merged across blocks, tasks and ranks.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    pub count: u64,
    pub nan: u64,
    pub inf: u64,
    pub zeros: u64,
    pub finite: u64,
    pub mean: f64,
    /// Sum of squared deviations from the mean (finite values), in units of `4^m2_exp`.
    pub m2: f64,
    /// 0 unless float64 values beyond 2^±BIG_EXP were seen (then `m2` stays below 2^968 for up
    /// to 2^64 values, and above the range where squares lose digits).
    pub m2_exp: i32,
    /// Mean of |x| over the finite values.
    pub absmean: f64,
    pub min: f64,
    pub max: f64,
    pub hist: Option<Vec<u64>>,
}

/// Magnitudes from 2^-BIG_EXP to 2^BIG_EXP are summed unscaled: their squares (below 2^902)
/// summed over 2^64 values cannot overflow, and the squares of their differences (at least an
/// ulp, 2^-502) stay normal floats.
const BIG_EXP: i32 = 450;
/// 2^(BIG_EXP + 1): magnitudes below it need no scaling against overflow.
const BIG: f64 = f64::from_bits(((1023 + BIG_EXP + 1) as u64) << 52);
/// 2^-BIG_EXP: a block whose values are all smaller is summed scaled.
const TINY: f64 = f64::from_bits(((1023 - BIG_EXP) as u64) << 52);

/// The power of two to sum magnitudes up to `x` (finite) in: 0 for 2^-BIG_EXP <= x < 2^(BIG_EXP + 1);
/// larger, so the scaled values are below 2^(BIG_EXP + 1); smaller, so they are about 1. None for
/// 0, which needs no scale.
#[inline(always)]
fn exp_for(x: f64) -> Option<i32> {
    if x == 0.0 {
        return None;
    }
    let e = ((x.to_bits() >> 52) & 0x7ff) as i32 - 1023;
    Some(if e > BIG_EXP { e - BIG_EXP } else if e < -BIG_EXP { e } else { 0 })
}

/// `x · 2^e`, exact unless the result leaves the normal range (C's `ldexp`).
#[inline(always)]
fn scale(x: f64, e: i32) -> f64 {
    if e == 0 {
        return x;
    }
    let pow2 = |k: i32| f64::from_bits(((k + 1023) as u64) << 52); // 2^k for -1022 <= k <= 1023
    let mut x = x;
    let mut e = e.clamp(-2200, 2200);
    while e > 1023 {
        x *= pow2(1023);
        e -= 1023;
    }
    while e < -1022 {
        x *= pow2(-1022);
        e += 1022;
    }
    x * pow2(e)
}

/// `x · 2^e` for a figure whose true value is finite: a result that rounding pushed a few ulps
/// past the largest float64 is the largest float64, not Inf. (A true figure beyond the range,
/// such as the l2 of many values near it, is still Inf.)
#[inline(always)]
fn unscale(x: f64, e: i32) -> f64 {
    let r = scale(x, e);
    if r.is_infinite() && x.is_finite() && x.abs() <= scale(f64::MAX, -e) * (1.0 + 8.0 * f64::EPSILON) {
        f64::MAX.copysign(x)
    } else {
        r
    }
}

/// `v` limited to `[lo, hi]`, where the figure lies in exact arithmetic; a NaN stays NaN.
#[inline(always)]
fn within(v: f64, lo: f64, hi: f64) -> f64 {
    if v < lo { lo } else if v > hi { hi } else { v }
}

/// A sum of squares that rounding left a hair below zero is zero; a NaN stays NaN.
#[inline(always)]
fn non_negative(m2: f64) -> f64 {
    if m2 < 0.0 { 0.0 } else { m2 }
}

/// The figures a user reads; all but the counts are over finite values only.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub count: u64,
    pub nan: u64,
    pub inf: u64,
    pub zeros: u64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    pub std: f64,
    pub l2: f64,
    pub absmax: f64,
    pub absmean: f64,
}

impl Stats {
    pub fn new(hist: bool) -> Stats {
        Stats {
            count: 0,
            nan: 0,
            inf: 0,
            zeros: 0,
            finite: 0,
            mean: 0.0,
            m2: 0.0,
            m2_exp: 0,
            absmean: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            hist: hist.then(|| vec![0; HIST_BINS]),
        }
    }

    /// Adds `n` finite values of mean `mean`, sum of squared deviations `m2 · 4^m2_exp` and mean
    /// magnitude `absmean` (Chan et al.'s pairwise update, with the difference of the means taken
    /// in units of 2^e when they are beyond 2^BIG_EXP).
    fn add_moments(&mut self, n: u64, mean: f64, m2: f64, m2_exp: i32, absmean: f64) {
        if n == 0 {
            return;
        }
        if self.finite == 0 {
            (self.finite, self.mean, self.m2, self.m2_exp, self.absmean) = (n, mean, m2, m2_exp, absmean);
            return;
        }
        let total = self.finite.saturating_add(n);
        let (na, nb, nt) = (self.finite as f64, n as f64, total as f64);
        let wb = nb / nt;
        let ed = exp_for(self.mean.abs().max(mean.abs())).unwrap_or(0);
        if (ed, m2_exp, self.m2_exp) == (0, 0, 0) {
            // every value seen is ordinary (the only case for all but float64): no scaling
            let delta = mean - self.mean;
            self.mean += delta * wb;
            self.m2 += m2 + delta * delta * (na * wb);
            self.absmean += (absmean - self.absmean) * wb;
            self.finite = total;
            return;
        }
        let delta = scale(mean, -ed) - scale(self.mean, -ed);
        self.mean = unscale(scale(self.mean, -ed) + delta * wb, ed);
        // the units of the largest of the three terms; a term that is 0 has no units
        let k = [(self.m2 != 0.0, self.m2_exp), (m2 != 0.0, m2_exp), (delta != 0.0, ed)]
            .iter()
            .filter(|t| t.0)
            .map(|t| t.1)
            .max()
            .unwrap_or(0);
        let d = scale(delta, ed - k);
        self.m2 = scale(self.m2, 2 * (self.m2_exp - k)) + scale(m2, 2 * (m2_exp - k)) + d * d * (na * wb);
        self.m2_exp = k;
        self.absmean += (absmean - self.absmean) * wb;
        self.finite = total;
    }

    pub fn add_block(&mut self, b: &BlockSums) {
        self.count += b.n;
        self.zeros += b.zeros;
        self.min = self.min.min(b.min);
        self.max = self.max.max(b.max);
        if b.n > 0 {
            let n = b.n as f64;
            let d = b.sum / n;
            // finite sums of values beyond 2^BIG_EXP: their m2 in units of 4^e (exact scaling)
            let e = if b.min > -BIG && b.max < BIG { 0 } else { exp_for(b.min.abs().max(b.max.abs())).unwrap_or(0).max(0) };
            let m2 = scale(non_negative(b.sumsq - b.sum * d), -2 * e);
            self.add_moments(b.n, b.shift + d, m2, e, b.abs_sum / n);
        }
    }

    /// Combines two disjoint parts (Chan et al.'s pairwise update).
    pub fn merge(mut self, other: Stats) -> Stats {
        self.count += other.count;
        self.nan += other.nan;
        self.inf += other.inf;
        self.zeros += other.zeros;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.add_moments(other.finite, other.mean, other.m2, other.m2_exp, other.absmean);
        if let (Some(a), Some(b)) = (self.hist.as_mut(), other.hist.as_ref()) {
            a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        }
        self
    }

    /// The statistics of every element repeated `k` times (stride-0 axes). The counts cannot
    /// overflow (a view's element count fits in a u64, checked at intake); they saturate if not.
    pub fn repeated(mut self, k: u64) -> Stats {
        if k != 1 {
            for c in [&mut self.count, &mut self.nan, &mut self.inf, &mut self.zeros, &mut self.finite] {
                *c = c.saturating_mul(k);
            }
            self.m2 *= k as f64;
            if let Some(h) = self.hist.as_mut() {
                h.iter_mut().for_each(|c| *c = c.saturating_mul(k));
            }
        }
        self
    }

    pub fn summary(&self) -> Summary {
        let n = self.finite as f64;
        let any = self.finite > 0;
        let nan_unless = |v: f64| if any { v } else { f64::NAN };
        // l2^2 = m2 + n mean^2, in units of 4^e so that neither term overflows
        let e = [(self.m2 != 0.0, self.m2_exp), (self.mean != 0.0, exp_for(self.mean.abs()).unwrap_or(0))]
            .iter()
            .filter(|t| t.0)
            .map(|t| t.1)
            .max()
            .unwrap_or(0);
        let m = scale(self.mean, -e);
        let l2 = unscale((scale(self.m2, 2 * (self.m2_exp - e)) + n * m * m).sqrt(), e);
        let absmax = self.min.abs().max(self.max.abs());
        Summary {
            count: self.count,
            nan: self.nan,
            inf: self.inf,
            zeros: self.zeros,
            min: nan_unless(self.min),
            max: nan_unless(self.max),
            // rounding cannot take a figure past its exact bounds: min <= mean <= max,
            // std <= (max - min) / 2 (Popoviciu), absmax <= l2, absmean <= absmax
            mean: nan_unless(within(self.mean, self.min, self.max)),
            std: nan_unless(within(unscale((self.m2 / n).sqrt(), self.m2_exp), 0.0, self.max / 2.0 - self.min / 2.0)),
            l2: if any { within(l2, absmax, f64::INFINITY) } else { 0.0 },
            absmax: nan_unless(absmax),
            absmean: nan_unless(within(self.absmean, 0.0, absmax)),
        }
    }
}

/// Per-dtype block kernels; the float types with an x86 SIMD path override the generic ones.
pub trait Kernel: Element {
    fn block_fast(xs: &[Self]) -> BlockSums {
        block_fast_generic(xs)
    }
    fn hist_block(xs: &[Self], h: &mut HistScratch) {
        hist_generic(xs, h)
    }
    /// Both, on a block that is in L1 by then.
    fn block_fast_hist(xs: &[Self], h: &mut HistScratch) -> BlockSums {
        let b = Self::block_fast(xs);
        Self::hist_block(xs, h);
        b
    }
}

macro_rules! generic_kernel {
    ($($t:ty),*) => {$( impl Kernel for $t {} )*};
}
generic_kernel!(f64, i8, i16, i32, i64, u8, u16, u32, u64, crate::dtype::Bool8);

macro_rules! simd_kernel {
    ($t:ty, $block:ident, $hist:ident) => {
        impl Kernel for $t {
            fn block_fast(xs: &[Self]) -> BlockSums {
                #[cfg(target_arch = "x86_64")]
                {
                    if crate::simd512::available() {
                        // SAFETY: the CPU has AVX-512 F/BW/VL/DQ (checked at run time).
                        return unsafe { crate::simd512::$block(xs) };
                    }
                    if crate::simd::available() {
                        // SAFETY: the CPU has AVX2, FMA and F16C (checked at run time).
                        return unsafe { crate::simd::$block(xs) };
                    }
                }
                block_fast_generic(xs)
            }
            fn hist_block(xs: &[Self], h: &mut HistScratch) {
                #[cfg(target_arch = "x86_64")]
                {
                    if crate::simd512::hist_available() {
                        // SAFETY: the CPU has what the kernel needs (checked at run time).
                        return unsafe { crate::simd512::$hist(xs, h) };
                    }
                    if crate::simd::available() {
                        // SAFETY: as above.
                        return unsafe { crate::simd::$hist(xs, h) };
                    }
                }
                hist_generic(xs, h)
            }
        }
    };
}
simd_kernel!(f32, block_f32, hist_f32);
simd_kernel!(BF16, block_bf16, hist_bf16);
simd_kernel!(F16, block_f16, hist_f16);

/// Whether unshifted sums lose too much to cancellation: the spread is below 1e-3 of the
/// magnitude (M2 < 1e-6 sum x^2), where sum x^2 - (sum x)^2/n keeps fewer than ~10 good digits.
fn cancels(b: &BlockSums) -> bool {
    b.shift == 0.0 && b.sumsq > 0.0 && b.sumsq - b.sum * b.sum / b.n as f64 <= 1e-6 * b.sumsq
}

/// Eight independent lanes so the compiler can vectorise without reassociating floats.
fn block_fast_generic<T: Element>(xs: &[T]) -> BlockSums {
    const L: usize = 8;
    let shift = xs.first().map_or(0.0, |x| x.to_f64());
    let (mut s, mut ss, mut a) = ([0f64; L], [0f64; L], [0f64; L]);
    let (mut mn, mut mx, mut z) = ([shift; L], [shift; L], [0u64; L]);
    let chunks = xs.chunks_exact(L);
    let rest = chunks.remainder();
    for c in chunks {
        for j in 0..L {
            let v = c[j].to_f64();
            let d = v - shift;
            s[j] += d;
            ss[j] += d * d;
            a[j] += v.abs();
            mn[j] = if v < mn[j] { v } else { mn[j] };
            mx[j] = if v > mx[j] { v } else { mx[j] };
            z[j] += (v == 0.0) as u64;
        }
    }
    for (j, x) in rest.iter().enumerate() {
        let v = x.to_f64();
        let d = v - shift;
        s[j] += d;
        ss[j] += d * d;
        a[j] += v.abs();
        mn[j] = mn[j].min(v);
        mx[j] = mx[j].max(v);
        z[j] += (v == 0.0) as u64;
    }
    BlockSums {
        n: xs.len() as u64,
        shift,
        sum: s.iter().sum(),
        sumsq: ss.iter().sum(),
        abs_sum: a.iter().sum(),
        min: mn.iter().copied().fold(f64::INFINITY, f64::min),
        max: mx.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        zeros: z.iter().sum(),
    }
}

/// The slow path for a block whose fast sums were not finite (it holds NaN or Inf, or float64
/// values whose squares overflow): classify every value, and sum the finite ones in units of 2^e
/// chosen from their largest magnitude. Each value stands `w` times (1, or its multiplicity in an
/// overlapping view).
fn add_careful(st: &mut Stats, xs: impl Iterator<Item = (f64, u64)> + Clone) {
    let (mut shift, mut big) = (None, 0f64);
    for (v, w) in xs.clone() {
        st.count = st.count.saturating_add(w);
        if v.is_nan() {
            st.nan = st.nan.saturating_add(w);
        } else if v.is_infinite() {
            st.inf = st.inf.saturating_add(w);
        } else {
            shift.get_or_insert(v);
            big = big.max(v.abs());
        }
    }
    let Some(shift) = shift else { return };
    let e = exp_for(big).unwrap_or(0);
    let sh = scale(shift, -e);
    let (mut n, mut sum, mut sumsq, mut abs) = (0u64, 0f64, 0f64, 0f64);
    for (v, w) in xs.filter(|(v, _)| v.is_finite()) {
        let vs = scale(v, -e);
        let (d, wf) = (vs - sh, w as f64);
        n = n.saturating_add(w);
        sum += wf * d;
        sumsq += wf * d * d;
        abs += wf * vs.abs();
        st.min = st.min.min(v);
        st.max = st.max.max(v);
        st.zeros = st.zeros.saturating_add(w * (v == 0.0) as u64);
    }
    let (nf, dm) = (n as f64, sum / n as f64);
    st.add_moments(n, unscale(sh + dm, e), non_negative(sumsq - sum * dm), e, unscale(abs / nf, e));
}

/// The histogram bin of a value, read from the exponent of its f64 form (exact for every float).
#[inline(always)]
pub fn hist_bin(v: f64) -> usize {
    let bits = v.to_bits();
    let e = ((bits >> 52) & 0x7ff) as i32;
    if e == 0x7ff || (bits << 1) == 0 {
        return HIST_BINS; // non-finite or zero: the discard bin
    }
    (e - 1023 - HIST_LO).clamp(0, HIST_BINS as i32 - 1) as usize
}

fn hist_generic<T: Element>(xs: &[T], h: &mut HistScratch) {
    for (i, x) in xs.iter().enumerate() {
        h[i % HIST_COPIES][hist_bin(x.to_f64())] += 1;
    }
}

fn flush_hist(scratch: &mut HistScratch, out: &mut [u64]) {
    for copy in scratch.iter_mut() {
        for (o, c) in out.iter_mut().zip(copy.iter()) {
            *o += *c as u64;
        }
        *copy = [0; HIST_BINS + 1];
    }
}

/// Reads walk positions [start, end) of `view` into a fresh `Stats`.
fn stats_range<T: Kernel>(view: &TensorView, start: usize, end: usize, hist: bool) -> Stats {
    let walk = view.walk();
    let mut st = Stats::new(hist);
    let mut scratch: Box<HistScratch> = Box::new([[0; HIST_BINS + 1]; HIST_COPIES]);
    let mut since_flush = 0usize;
    let mut feed = |st: &mut Stats, xs: &[T]| {
        let b = if st.hist.is_some() { T::block_fast_hist(xs, &mut scratch) } else { T::block_fast(xs) };
        if !b.is_finite() || (b.min > -TINY && b.max < TINY && (b.min != 0.0 || b.max != 0.0)) {
            // non-finite values or sums, or float64 values so small that their squares vanish
            add_careful(st, xs.iter().map(|x| (x.to_f64(), 1)));
        } else if cancels(&b) {
            st.add_block(&block_fast_generic(xs)); // shifted by the first value
        } else {
            st.add_block(&b);
        }
        if let Some(out) = st.hist.as_mut() {
            since_flush += xs.len();
            if since_flush > (1 << 30) {
                flush_hist(&mut scratch, out);
                since_flush = 0;
            }
        }
    };
    let mut buf: Vec<T> = Vec::with_capacity(BLOCK);
    walk.for_runs(start, end, |off, n, stride| {
        let p = view.elem_ptr(off) as *const T;
        if stride == 1 && n >= 64 && (p as usize).is_multiple_of(std::mem::align_of::<T>()) {
            // SAFETY: the view's contract makes these n elements readable; p is aligned.
            let run = unsafe { std::slice::from_raw_parts(p, n) };
            run.chunks(BLOCK).for_each(|c| feed(&mut st, c));
        } else {
            for i in 0..n as isize {
                // SAFETY: as above; the gather may be unaligned (NumPy allows it).
                buf.push(unsafe { p.offset(i * stride).read_unaligned() });
                if buf.len() == BLOCK {
                    feed(&mut st, &buf);
                    buf.clear();
                }
            }
        }
    });
    if !buf.is_empty() {
        feed(&mut st, &buf);
    }
    if let Some(out) = st.hist.as_mut() {
        flush_hist(&mut scratch, out);
    }
    st
}

fn stats_typed<T: Kernel>(view: &TensorView, hist: bool) -> Result<Stats> {
    let walk = view.walk();
    if let Some(plan) = Revisits::plan(&walk)? {
        let st = match plan.width {
            1 => by_multiplicity::<T, u8>(view, &walk, &plan, hist),
            2 => by_multiplicity::<T, u16>(view, &walk, &plan, hist),
            4 => by_multiplicity::<T, u32>(view, &walk, &plan, hist),
            _ => by_multiplicity::<T, u64>(view, &walk, &plan, hist),
        }?;
        return Ok(st.repeated(walk.repeat));
    }
    let tasks = walk.len.div_ceil(TASK);
    let st = pool::map_reduce(
        tasks,
        |t| stats_range::<T>(view, t * TASK, ((t + 1) * TASK).min(walk.len), hist),
        Stats::merge,
    );
    Ok(st.unwrap_or_else(|| Stats::new(hist)).repeated(walk.repeat))
}

/// The multiplicity array of an overlapping view may take this many bytes (it is the view's span
/// of distinct offsets times 1 to 8 bytes).
const MULT_MAX_BYTES: usize = 1 << 28;
/// An overlapping view whose multiplicities do not fit is walked position by position up to this
/// many positions (seconds of reading); past it, `stats` refuses it rather than hang.
pub const WALK_MAX: usize = 1 << 34;

/// How an overlapping view (from `as_strided` or `unfold`: its positions revisit memory) is read:
/// each distinct offset once, with the number of positions that reach it. Stride-0 axes are
/// already out of the walk (`Walk::repeat`); this covers the axes whose strides interleave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Revisits {
    /// The gcd of the walk's strides: every offset reached is `base + gcd * k`.
    gcd: usize,
    /// Offsets `k` the multiplicities cover: 0..span.
    span: usize,
    /// Bytes per multiplicity: enough for the largest one (1, 2, 4 or 8).
    width: usize,
}

impl Revisits {
    /// None: walk it position by position (fewer than twice as many positions as offsets).
    fn plan(walk: &Walk) -> Result<Option<Revisits>> {
        if walk.dims.len() < 2 {
            return Ok(None); // one axis of stride > 0 never revisits
        }
        let gcd = walk.dims.iter().fold(0usize, |g, &(_, s)| gcd(g, s as usize));
        // the walk's extent was checked when the view was built: (n - 1) * s sums within isize
        let span = walk.dims.iter().map(|&(n, s)| (n - 1) * (s as usize / gcd)).sum::<usize>() + 1;
        if walk.len / 2 <= span {
            return Ok(None);
        }
        // with every other index fixed, an axis reaches distinct offsets: no offset is reached
        // more often than the positions over all axes but the longest
        let longest = walk.dims.iter().map(|d| d.0).max().unwrap_or(1);
        let width = match (walk.len / longest) as u64 {
            0..=0xff => 1,
            0x100..=0xffff => 2,
            0x1_0000..=0xffff_ffff => 4,
            _ => 8,
        };
        if span.saturating_mul(width) <= MULT_MAX_BYTES {
            return Ok(Some(Revisits { gcd, span, width }));
        }
        if walk.len > WALK_MAX {
            return Err(Error::Layout(format!(
                "this overlapping view (from as_strided or unfold) has {} positions over only {span} distinct \
                 elements, too many to read one by one: take the statistics of the tensor it is a view of, \
                 or of a slice of it",
                walk.len
            )));
        }
        Ok(None)
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// An unsigned integer of one width, with arithmetic modulo 2^bits.
trait Mult: Copy + Send {
    const ZERO: Self;
    const ONE: Self;
    fn add(self, o: Self) -> Self;
    fn sub(self, o: Self) -> Self;
    fn get(self) -> u64;
}

macro_rules! mult {
    ($($t:ty),*) => {$(
        impl Mult for $t {
            const ZERO: Self = 0;
            const ONE: Self = 1;
            #[inline(always)]
            fn add(self, o: Self) -> Self { self.wrapping_add(o) }
            #[inline(always)]
            fn sub(self, o: Self) -> Self { self.wrapping_sub(o) }
            #[inline(always)]
            fn get(self) -> u64 { self as u64 }
        }
    )*};
}
mult!(u8, u16, u32, u64);

/// Statistics of an overlapping view from the multiplicity of each offset. The multiplicities are
/// the convolution of one comb {0, s, ..., (n-1)s} per axis, built in place: a running sum along
/// stride s, then a difference at n*s. The arithmetic is modulo 2^bits of `W`; every true value
/// fits (`Revisits::plan`), and the steps are additions and subtractions, so the results are exact.
fn by_multiplicity<T: Kernel, W: Mult>(view: &TensorView, walk: &Walk, plan: &Revisits, hist: bool) -> Result<Stats> {
    let span = plan.span;
    let mut m = crate::error::filled_vec(span, W::ZERO, "the multiplicities of an overlapping view")?;
    m[0] = W::ONE;
    for &(n, s) in &walk.dims {
        let s = s as usize / plan.gcd;
        for o in s..span {
            m[o] = m[o].add(m[o - s]);
        }
        let ns = n * s; // <= (n - 1) * s + s < 2 * span
        for o in (ns..span).rev() {
            m[o] = m[o].sub(m[o - ns]);
        }
    }
    let mut st = Stats::new(hist);
    let mut buf: Vec<(f64, u64)> = Vec::with_capacity(BLOCK);
    let flush = |st: &mut Stats, buf: &mut Vec<(f64, u64)>| {
        add_careful(st, buf.iter().copied());
        if let Some(h) = st.hist.as_mut() {
            for &(v, w) in buf.iter() {
                if let Some(c) = h.get_mut(hist_bin(v)) {
                    *c = c.saturating_add(w);
                }
            }
        }
        buf.clear();
    };
    let step = plan.gcd as isize;
    for (k, w) in m.iter().enumerate() {
        let w = w.get();
        if w == 0 {
            continue;
        }
        // SAFETY: offset k is reached by some position of the walk (its multiplicity is not 0),
        // and the view's contract makes every reached element readable; reads may be unaligned.
        let v = unsafe { (view.elem_ptr(walk.base + k as isize * step) as *const T).read_unaligned() }.to_f64();
        buf.push((v, w));
        if buf.len() == BLOCK {
            flush(&mut st, &mut buf);
        }
    }
    flush(&mut st, &mut buf);
    Ok(st)
}

/// Statistics of every element of `view` (one pass; parallel above `TASK` elements).
pub fn stats(view: &TensorView, hist: bool) -> Result<Stats> {
    with_dtype!(view.dtype, T => stats_typed::<T>(view, hist))
}

/// Elements in a batch below which `stats_many` runs on the calling thread: waking the pool costs
/// more than such a pass while the training framework's threads hold the cores.
pub const SEQUENTIAL_MAX: usize = 1 << 21;

/// Statistics of many tensors, in parallel across them (and within the big ones); a batch of
/// fewer than `SEQUENTIAL_MAX` elements in all runs on the calling thread, without the pool.
pub fn stats_many(views: &[TensorView], hist: bool) -> Result<Vec<Stats>> {
    let total = views.iter().fold(0usize, |n, v| n.saturating_add(v.numel()));
    if total < SEQUENTIAL_MAX {
        return views.iter().map(|v| stats(v, hist)).collect();
    }
    pool::map_collect(views.len(), |i| stats(&views[i], hist)).into_iter().collect()
}

/// The sum of a float32 buffer with nothing else: the read-bandwidth floor for the benchmarks.
pub fn read_floor(xs: &[f32]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::available() {
        // SAFETY: the CPU has AVX2 (checked at run time).
        return unsafe { crate::simd::sum_f32(xs) };
    }
    xs.chunks(BLOCK).map(|c| c.iter().map(|&x| x as f64).sum::<f64>()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::BF16;
    use crate::view::TensorView;

    /// Two-pass float64 reference over a list of values.
    fn reference(vals: &[f64]) -> Summary {
        let fin: Vec<f64> = vals.iter().copied().filter(|v| v.is_finite()).collect();
        let n = fin.len() as f64;
        let mean = fin.iter().sum::<f64>() / n;
        let var = fin.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
        Summary {
            count: vals.len() as u64,
            nan: vals.iter().filter(|v| v.is_nan()).count() as u64,
            inf: vals.iter().filter(|v| v.is_infinite()).count() as u64,
            zeros: fin.iter().filter(|&&v| v == 0.0).count() as u64,
            min: fin.iter().copied().fold(f64::INFINITY, f64::min),
            max: fin.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            mean,
            std: var.sqrt(),
            l2: fin.iter().map(|v| v * v).sum::<f64>().sqrt(),
            absmax: fin.iter().map(|v| v.abs()).fold(0.0, f64::max),
            absmean: fin.iter().map(|v| v.abs()).sum::<f64>() / n,
        }
    }

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs().max(1e-300) || (a.is_nan() && b.is_nan())
    }

    fn assert_matches(got: Summary, want: Summary) {
        assert_eq!((got.count, got.nan, got.inf, got.zeros), (want.count, want.nan, want.inf, want.zeros));
        assert_eq!(got.min, want.min);
        assert_eq!(got.max, want.max);
        assert_eq!(got.absmax, want.absmax);
        for (g, w, name) in [(got.mean, want.mean, "mean"), (got.std, want.std, "std"), (got.l2, want.l2, "l2"), (got.absmean, want.absmean, "absmean")] {
            assert!(close(g, w, 1e-9), "{name}: got {g}, want {w}");
        }
    }

    /// A deterministic pseudo-random sequence (xorshift), so the tests need no crate.
    fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32
            })
            .collect()
    }

    #[test]
    fn float32_matches_float64_reference_across_blocks_and_tasks() {
        for n in [1, 7, 8, 63, 64, 2047, 2048, 2049, 10_000, TASK + 123] {
            let xs = noise(n, n as u64);
            let got = stats(&TensorView::from_contiguous(&xs), false).unwrap().summary();
            assert_matches(got, reference(&xs.iter().map(|&x| x as f64).collect::<Vec<_>>()));
        }
    }

    #[test]
    fn non_finite_values_are_counted_and_excluded() {
        let mut xs = noise(5000, 3);
        xs[10] = f32::NAN;
        xs[2100] = f32::INFINITY;
        xs[4999] = f32::NEG_INFINITY;
        xs[0] = 0.0;
        let got = stats(&TensorView::from_contiguous(&xs), false).unwrap().summary();
        assert_matches(got, reference(&xs.iter().map(|&x| x as f64).collect::<Vec<_>>()));
        assert_eq!((got.nan, got.inf), (1, 2));
    }

    #[test]
    fn all_nan_and_empty_give_nan_figures_without_panicking() {
        let xs = [f32::NAN; 100];
        let s = stats(&TensorView::from_contiguous(&xs), true).unwrap().summary();
        assert_eq!((s.count, s.nan), (100, 100));
        assert!(s.mean.is_nan() && s.min.is_nan());
        assert_eq!(s.l2, 0.0);
        let empty: [f32; 0] = [];
        let e = stats(&TensorView::from_contiguous(&empty), true).unwrap().summary();
        assert_eq!(e.count, 0);
        assert!(e.std.is_nan());
    }

    #[test]
    fn large_mean_small_spread_keeps_the_std() {
        let xs: Vec<f32> = noise(100_000, 9).iter().map(|x| 1.0e4 + x * 1e-2).collect();
        let got = stats(&TensorView::from_contiguous(&xs), false).unwrap().summary();
        let want = reference(&xs.iter().map(|&x| x as f64).collect::<Vec<_>>());
        assert!(close(got.std, want.std, 1e-9), "{} vs {}", got.std, want.std);
    }

    #[test]
    fn values_near_float32_max_do_not_overflow() {
        let xs = vec![3.0e38f32; 4096];
        let s = stats(&TensorView::from_contiguous(&xs), false).unwrap().summary();
        assert!(close(s.l2, 3.0e38f32 as f64 * 64.0, 1e-12), "{}", s.l2);
        assert_eq!(s.inf, 0);
    }

    #[test]
    fn float64_near_overflow_keeps_std_and_l2() {
        let s = stats(&TensorView::from_contiguous(&[2e154, -2e154]), false).unwrap().summary();
        assert!(close(s.std, 2e154, 1e-15) && close(s.l2, 2e154 * 2f64.sqrt(), 1e-15), "{s:?}");
        let s = stats(&TensorView::from_contiguous(&[1e155, 1e155]), false).unwrap().summary();
        assert!(s.std == 0.0 && close(s.l2, 1e155 * 2f64.sqrt(), 1e-15) && s.mean == 1e155, "{s:?}");
        // alternating signs (an even count: the mean is 0): zero block means, so only the
        // blocks' own m2 carries the scale; across tasks too
        for big in [1e150, 1e300, 1.7e308] {
            let xs: Vec<f64> = (0..TASK + 5000).map(|i| if i % 2 == 0 { big } else { -big }).collect();
            let s = stats(&TensorView::from_contiguous(&xs), false).unwrap().summary();
            let n = xs.len() as f64;
            assert!(close(s.std, big, 1e-12) && close(s.absmean, big, 1e-12), "{big}: {s:?}");
            assert!(s.mean.abs() <= big * 1e-12);
            // the l2 of 1.7e308 a million times is beyond the float64 range: Inf, never NaN
            let l2 = big * n.sqrt();
            assert!(if l2.is_finite() { close(s.l2, l2, 1e-12) } else { s.l2 == f64::INFINITY }, "{big}: {s:?}");
        }
        // huge and ordinary values together, with a NaN in the block
        let xs = [1e300, -3.0, f64::NAN, 5.0, -1e300, 1e-300];
        let s = stats(&TensorView::from_contiguous(&xs), false).unwrap().summary();
        assert_eq!((s.count, s.nan, s.min, s.max), (6, 1, -1e300, 1e300));
        assert!(close(s.std, 1e300 * (2.0f64 / 5.0).sqrt(), 1e-15) && close(s.l2, 1e300 * 2f64.sqrt(), 1e-15), "{s:?}");
        // rounding does not push a figure just below the largest float64 past it
        let s = stats(&TensorView::from_contiguous(&[f64::MAX, 0.0, 0.0, 0.0]), false).unwrap().summary();
        assert!(s.l2 == f64::MAX && close(s.mean, f64::MAX / 4.0, 1e-15) && close(s.std, f64::MAX * 3f64.sqrt() / 4.0, 1e-15), "{s:?}");
        // the true l2 of two values of 1.7e308 is beyond the float64 range: Inf, not NaN
        let s = stats(&TensorView::from_contiguous(&[1.7e308, 1.7e308]), false).unwrap().summary();
        assert!(s.l2.is_infinite() && s.std == 0.0 && s.mean == 1.7e308, "{s:?}");
    }

    #[test]
    fn float64_near_underflow_keeps_std_and_l2() {
        let s = stats(&TensorView::from_contiguous(&[1e-200, 3e-200]), false).unwrap().summary();
        assert!(close(s.std, 1e-200, 1e-15) && close(s.l2, 1e-200 * 10f64.sqrt(), 1e-15) && close(s.mean, 2e-200, 1e-15), "{s:?}");
        // subnormals, across blocks and tasks, with zeros and a symmetric (zero) mean
        let xs: Vec<f64> = (0..TASK + 3000).map(|i| [5e-324, -5e-324, 0.0, 1e-310][i % 4]).collect();
        let s = stats(&TensorView::from_contiguous(&xs), false).unwrap().summary();
        // (5e-324 is 2^-1074, too small to count beside 1e-310: mean b/4, std b sqrt(3)/4)
        assert!(close(s.std, 1e-310 * 3f64.sqrt() / 4.0, 1e-12) && close(s.mean, 2.5e-311, 1e-12), "{s:?}");
        assert!(close(s.l2, 1e-310 * ((TASK + 3000) as f64 / 4.0).sqrt(), 1e-12), "{s:?}");
        // a block of zeros then tiny values: the zeros impose no units
        let mut ys = vec![0.0; 4096];
        ys.extend([1e-300, 2e-300]);
        let s = stats(&TensorView::from_contiguous(&ys), false).unwrap().summary();
        assert!(close(s.l2, 1e-300 * 5f64.sqrt(), 1e-15) && s.std > 0.0, "{s:?}");
    }

    #[test]
    fn scale_is_ldexp() {
        assert_eq!(scale(3.0, 0), 3.0);
        assert_eq!(scale(3.0, 1000), 3.0 * 2f64.powi(1000));
        assert_eq!(scale(1.5, -1074), 2f64.powi(-1073)); // one rounding: 1.5 ulp ties to even
        assert_eq!(scale(f64::MAX, -2000 + 1023), f64::MAX * 2f64.powi(-1000) * 2f64.powi(-1000) * 2f64.powi(1023));
        assert_eq!(scale(2f64.powi(-1070), 2000), 2f64.powi(930));
        assert_eq!(exp_for(1.0), Some(0));
        assert_eq!(exp_for(0.0), None);
        assert_eq!(exp_for(2f64.powi(460)), Some(10));
        assert_eq!(exp_for(2f64.powi(-460)), Some(-460));
        assert_eq!(exp_for(TINY), Some(0));
        assert_eq!(exp_for(TINY / 2.0), Some(-451));
    }

    #[test]
    fn strided_and_negative_views_match_the_reference() {
        let xs = noise(60, 5);
        // rows of 6, every other column, reversed rows
        let v = TensorView::from_slice(&xs, &[10, 3], &[-6, 2], 54).unwrap();
        let mut vals = vec![];
        for r in 0..10isize {
            for c in 0..3isize {
                vals.push(xs[(54 - 6 * r + 2 * c) as usize] as f64);
            }
        }
        assert_matches(stats(&v, false).unwrap().summary(), reference(&vals));
    }

    /// Every position's value, listed (for small views).
    fn positions(xs: &[f32], shape: &[usize], strides: &[isize], offset: isize) -> Vec<f64> {
        let mut offs = vec![offset];
        for (&n, &s) in shape.iter().zip(strides) {
            offs = offs.iter().flat_map(|&o| (0..n as isize).map(move |i| o + i * s)).collect();
        }
        offs.iter().map(|&o| xs[o as usize] as f64).collect()
    }

    #[test]
    fn overlapping_views_read_by_multiplicity_match_the_positions() {
        let mut xs = noise(400, 41);
        xs[7] = f32::NAN;
        xs[30] = f32::INFINITY;
        xs[3] = 0.0;
        let cases: &[(&[usize], &[isize], isize)] = &[
            (&[40, 20], &[1, 1], 0),          // unfold
            (&[30, 10, 3], &[2, 4, 6], 1),    // gcd 2
            (&[6, 6, 6, 6], &[3, -5, 7, 2], 100), // negative stride, interleaved
            (&[9, 9, 4], &[1, 1, 0], 5),      // with a stride-0 axis
            (&[200, 3], &[1, 100], 0),        // few revisits: walked
        ];
        for &(shape, strides, offset) in cases {
            let v = TensorView::from_slice(&xs, shape, strides, offset as usize).unwrap();
            let got = stats(&v, true).unwrap();
            let vals = positions(&xs, shape, strides, offset);
            assert_matches(got.summary(), reference(&vals));
            let mut want_h = vec![0u64; HIST_BINS];
            for &v in &vals {
                if let Some(c) = want_h.get_mut(hist_bin(v)) {
                    *c += 1;
                }
            }
            assert_eq!(got.hist.unwrap(), want_h, "{shape:?} {strides:?}");
        }
        let plan = |shape: &[usize], strides: &[isize]| Revisits::plan(&Walk::new(shape, strides)).unwrap();
        assert_eq!(plan(&[40, 20], &[1, 1]), Some(Revisits { gcd: 1, span: 59, width: 1 }));
        assert_eq!(plan(&[200, 3], &[1, 100]), None);
        assert_eq!(plan(&[1024; 6], &[1; 6]).map(|p| (p.span, p.width)), Some((6139, 8)));
        // 2^40 positions whose multiplicities would take 1.2 GB: refused, never walked
        let huge = Revisits::plan(&Walk::new(&[1 << 20, 1 << 20], &[1, 300]));
        assert!(matches!(huge, Err(Error::Layout(m)) if m.contains("overlapping view")));
    }

    #[test]
    fn an_enormous_overlapping_view_is_read_once_per_element() {
        // as_strided((1024,) * 6, (1,) * 6): 2^60 positions over 6139 elements
        let xs: Vec<f64> = (0..6200).map(|i| (i % 17) as f64 - 8.0).collect();
        let v = TensorView::from_slice(&xs, &[1024; 6], &[1; 6], 0).unwrap();
        let s = stats(&v, false).unwrap().summary();
        // the multiplicities by brute force: six boxcars of 1024 convolved (in f64: exact below 2^53)
        let mut m = vec![1f64];
        for _ in 0..6 {
            let mut next = vec![0f64; m.len() + 1023];
            for (o, &c) in m.iter().enumerate() {
                next[o..o + 1024].iter_mut().for_each(|x| *x += c);
            }
            m = next;
        }
        let total: f64 = m.iter().sum();
        let mean = m.iter().zip(&xs).map(|(c, x)| c * x).sum::<f64>() / total;
        let var = m.iter().zip(&xs).map(|(c, x)| c * (x - mean) * (x - mean)).sum::<f64>() / total;
        assert_eq!(s.count, 1u64 << 60);
        assert_eq!(s.zeros, m.iter().zip(&xs).filter(|(_, &x)| x == 0.0).map(|(c, _)| *c as u64).sum::<u64>());
        assert!((s.mean - mean).abs() < 1e-12 && close(s.std, var.sqrt(), 1e-12), "{s:?} vs {mean} {}", var.sqrt());
        assert_eq!((s.min, s.max), (-8.0, 8.0));
    }

    #[test]
    fn stride_zero_counts_each_repeat() {
        let xs = [1.0f32, 2.0, 4.0];
        let v = TensorView::from_slice(&xs, &[5, 3], &[0, 1], 0).unwrap();
        let vals: Vec<f64> = (0..5).flat_map(|_| xs.iter().map(|&x| x as f64)).collect();
        assert_matches(stats(&v, false).unwrap().summary(), reference(&vals));
    }

    #[test]
    fn integer_and_bfloat16_inputs() {
        let ints: Vec<i64> = (-500..500).collect();
        let s = stats(&TensorView::from_contiguous(&ints), false).unwrap().summary();
        assert_matches(s, reference(&ints.iter().map(|&x| x as f64).collect::<Vec<_>>()));
        let bf: Vec<BF16> = noise(3000, 11).iter().map(|&x| BF16::from_f32(x)).collect();
        let s = stats(&TensorView::from_contiguous(&bf), false).unwrap().summary();
        assert_matches(s, reference(&bf.iter().map(|x| x.to_f32() as f64).collect::<Vec<_>>()));
    }

    #[test]
    fn histogram_counts_log2_bins() {
        let xs = [0.0f32, 1.0, 1.5, 2.0, -0.25, 1e-30, 1e30, f32::NAN, f32::INFINITY];
        let s = stats(&TensorView::from_contiguous(&xs), true).unwrap();
        let h = s.hist.unwrap();
        let bin = |e: i32| (e - HIST_LO) as usize;
        assert_eq!(h[bin(0)], 2); // 1.0, 1.5
        assert_eq!(h[bin(1)], 1); // 2.0
        assert_eq!(h[bin(-2)], 1); // -0.25
        assert_eq!(h[0], 1); // 1e-30 clamps low
        assert_eq!(h[HIST_BINS - 1], 1); // 1e30 clamps high
        assert_eq!(h.iter().sum::<u64>(), 6); // zero, NaN and Inf are not binned
    }

    #[test]
    fn histogram_simd_and_generic_agree() {
        let xs: Vec<f32> = noise(10_000, 21).iter().enumerate().map(|(i, x)| x * 10f32.powi((i % 20) as i32 - 10)).collect();
        let mut a: HistScratch = [[0; HIST_BINS + 1]; HIST_COPIES];
        let mut b: HistScratch = [[0; HIST_BINS + 1]; HIST_COPIES];
        f32::hist_block(&xs, &mut a);
        hist_generic(&xs, &mut b);
        let total = |h: &HistScratch| (0..=HIST_BINS).map(|i| h.iter().map(|c| c[i]).sum::<u32>()).collect::<Vec<_>>();
        assert_eq!(total(&a), total(&b));
    }

    #[test]
    fn histogram_kernels_agree_with_the_generic_one_when_the_scale_moves() {
        // blocks whose densest exponents move, ReLU-like zeros, subnormals, non-finite values,
        // both clamped ends, lengths that are not multiples of 64, several blocks per call
        let base = noise(20_000, 77);
        for case in 0..8 {
            let xs: Vec<f32> = base
                .iter()
                .enumerate()
                .map(|(i, &x)| {
                    let scale = match case {
                        0 => 1.0,
                        1 => 2f32.powi((i / 2048) as i32 * 7 - 20),         // moves every block
                        2 => 2f32.powi((i % 97) as i32 - 48),                // spans everything
                        3 => if i % 2 == 0 { 0.0 } else { 1e-3 },            // half zeros
                        4 => if i % 5 == 0 { 1e-41 } else { 3e20 },          // subnormal, high clamp
                        5 => if i % 300 == 0 { f32::NAN } else if i % 301 == 0 { f32::NEG_INFINITY } else { 1e-20 },
                        6 => 2f32.powi(((i * 7919) % 31) as i32 - 15),
                        _ => if i < 64 { 1e30 } else { 1.0 },                // a misleading first vector
                    };
                    x * scale
                })
                .collect();
            for len in [xs.len(), 64, 63, 2048 + 65, 5000] {
                let xs = &xs[..len];
                let mut a: HistScratch = [[0; HIST_BINS + 1]; HIST_COPIES];
                let mut b: HistScratch = [[0; HIST_BINS + 1]; HIST_COPIES];
                let mut f: HistScratch = [[0; HIST_BINS + 1]; HIST_COPIES];
                for c in xs.chunks(BLOCK) {
                    f32::hist_block(c, &mut a); // as stats_range feeds it: one block at a time
                    f32::block_fast_hist(c, &mut f);
                }
                hist_generic(xs, &mut b);
                let total = |h: &HistScratch| (0..HIST_BINS).map(|i| h.iter().map(|c| c[i]).sum::<u32>()).collect::<Vec<_>>();
                assert_eq!(total(&a), total(&b), "case {case}, {len} values");
                assert_eq!(total(&f), total(&b), "fused, case {case}, {len} values");
                let bf: Vec<BF16> = xs.iter().map(|&x| BF16::from_f32(x)).collect();
                let (mut a, mut b): (HistScratch, HistScratch) = ([[0; HIST_BINS + 1]; HIST_COPIES], [[0; HIST_BINS + 1]; HIST_COPIES]);
                BF16::hist_block(&bf, &mut a);
                hist_generic(&bf, &mut b);
                assert_eq!(total(&a), total(&b), "bf16 case {case}, {len} values");
            }
        }
    }

    #[test]
    fn every_kernel_path_agrees_with_the_generic_one() {
        let xs: Vec<f32> = noise(5000, 33).iter().enumerate().map(|(i, x)| if i % 7 == 0 { 0.0 } else { x * 10f32.powi((i % 9) as i32 - 4) }).collect();
        let want = block_fast_generic(&xs);
        let mut want_h: HistScratch = [[0; HIST_BINS + 1]; HIST_COPIES];
        hist_generic(&xs, &mut want_h);
        let total = |h: &HistScratch| (0..HIST_BINS).map(|i| h.iter().map(|c| c[i]).sum::<u32>()).collect::<Vec<_>>();
        let same = |b: BlockSums| {
            let (m1, m2) = (b.shift + b.sum / b.n as f64, want.shift + want.sum / want.n as f64);
            assert!((m1 - m2).abs() < 1e-12, "{m1} vs {m2}");
            assert_eq!((b.min, b.max, b.zeros, b.n), (want.min, want.max, want.zeros, want.n));
            assert!((b.abs_sum - want.abs_sum).abs() < 1e-9 * want.abs_sum);
        };
        // SAFETY (every unsafe call below): each kernel runs only after `available()` confirmed
        // the CPU features it is compiled for.
        #[cfg(target_arch = "x86_64")]
        {
            if crate::simd::available() {
                same(unsafe { crate::simd::block_f32(&xs) });
            }
            if crate::simd512::hist_available() {
                let mut h: HistScratch = [[0; HIST_BINS + 1]; HIST_COPIES];
                same(unsafe { crate::simd512::block_f32(&xs) });
                unsafe { crate::simd512::hist_f32(&xs, &mut h) };
                assert_eq!(total(&h), total(&want_h));
                let mut wide: Vec<f32> = (0..3000).map(|i| 2f32.powi(i % 120 - 60) * if i % 3 == 0 { -1.0 } else { 1.0 }).collect();
                wide.extend([f32::MIN_POSITIVE / 8.0, -f32::MIN_POSITIVE / 3.0, 0.0, -0.0, f32::NAN, f32::INFINITY, 1e38, 1e-40]);
                let mut narrow_special: Vec<f32> = (0..100).map(|i| 1.0 + i as f32 / 128.0).collect();
                narrow_special.extend([f32::MIN_POSITIVE / 8.0, 0.0, f32::NAN, f32::NEG_INFINITY]);
                let (mut c, mut d): (HistScratch, HistScratch) = ([[0; HIST_BINS + 1]; HIST_COPIES], [[0; HIST_BINS + 1]; HIST_COPIES]);
                unsafe { crate::simd512::hist_f32(&narrow_special, &mut c) };
                hist_generic(&narrow_special, &mut d);
                assert_eq!(total(&c), total(&d));
                let (mut a, mut b): (HistScratch, HistScratch) = ([[0; HIST_BINS + 1]; HIST_COPIES], [[0; HIST_BINS + 1]; HIST_COPIES]);
                unsafe { crate::simd512::hist_f32(&wide, &mut a) };
                hist_generic(&wide, &mut b);
                assert_eq!(total(&a), total(&b));
            }
        }
        let mut h: HistScratch = [[0; HIST_BINS + 1]; HIST_COPIES];
        same(f32::block_fast_hist(&xs, &mut h));
        assert_eq!(total(&h), total(&want_h));
    }

    #[test]
    fn merge_is_the_same_as_one_pass() {
        let xs = noise(9000, 17);
        let whole = stats(&TensorView::from_contiguous(&xs), true).unwrap();
        let a = stats(&TensorView::from_contiguous(&xs[..3000]), true).unwrap();
        let b = stats(&TensorView::from_contiguous(&xs[3000..]), true).unwrap();
        let m = a.merge(b);
        assert_eq!(m.hist, whole.hist);
        assert!(close(m.summary().std, whole.summary().std, 1e-12));
    }
}
