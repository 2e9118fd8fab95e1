//! Dependency masks: gradients -> booleans, group-test coding and decoding, expected structures.
//!
//! `dependency_mask` backpropagates from output slices to the input and asks, for every input
//! slice along one axis, whether any gradient element there is non-zero. That reduction is
//! `nonzero_along`: any tensor (any dtype and strides), some axes kept, every other axis reduced
//! with "is any element non-zero", stopping at the first one.
//!
//! The group method needs only O(log n) backward passes: pass `2b` weights the outputs whose
//! index has bit b set, pass `2b + 1` those with bit b clear. An input slice that reaches exactly
//! one output sees exactly one pass of every pair, and the pattern spells that output's index;
//! one that reaches several sees both passes of some pair, and only the set of outputs consistent
//! with every pair can be given: `group_decode` returns that superset and marks the column
//! ambiguous, so the caller can settle it exactly.

use crate::error::{Error, Result};
use crate::pool;
use crate::view::{TensorView, Walk};
use crate::with_dtype;

/// The result of `nonzero_along`: row-major booleans over the kept axes.
#[derive(Debug, Clone, PartialEq)]
pub struct Reduced {
    pub shape: Vec<usize>,
    pub values: Vec<bool>,
    /// Whether a NaN or an infinity was seen (they count as non-zero).
    pub nonfinite: bool,
}

/// For every index over the `keep` axes (in the order given), whether any element of the
/// sub-tensor over the other axes has |x| > `tol` (NaN and infinities count as non-zero).
pub fn nonzero_along(view: &TensorView, keep: &[usize], tol: f64) -> Result<Reduced> {
    let nd = view.shape.len();
    for (k, &a) in keep.iter().enumerate() {
        if a >= nd {
            return Err(Error::Layout(format!("axis {a} is out of range for a {nd}-d tensor")));
        }
        if keep[..k].contains(&a) {
            return Err(Error::Layout(format!("axis {a} is listed twice in {keep:?}")));
        }
    }
    if tol.is_nan() || tol < 0.0 {
        return Err(Error::Input(format!("tol must be >= 0, got {tol}")));
    }
    let out_shape: Vec<usize> = keep.iter().map(|&a| view.shape[a]).collect();
    let out_strides: Vec<isize> = keep.iter().map(|&a| view.strides_elems[a]).collect();
    let rest: Vec<usize> = (0..nd).filter(|a| !keep.contains(a)).collect();
    let rest_shape: Vec<usize> = rest.iter().map(|&a| view.shape[a]).collect();
    let rest_strides: Vec<isize> = rest.iter().map(|&a| view.strides_elems[a]).collect();
    let n_out = out_shape.iter().try_fold(1usize, |a, &n| a.checked_mul(n)).ok_or_else(|| Error::Layout("too many slices".into()))?;
    let inner = Walk::new(&rest_shape, &rest_strides);

    // Tasks of consecutive output cells; each cell walks its own sub-tensor in memory order.
    let cells_per_task = (1usize << 16).checked_div(inner.len.max(1)).unwrap_or(1).max(1);
    let tasks = n_out.div_ceil(cells_per_task);
    let parts: Vec<(Vec<bool>, bool)> = pool::map_collect(tasks, |t| {
        let lo = t * cells_per_task;
        let hi = ((t + 1) * cells_per_task).min(n_out);
        let mut vals = Vec::with_capacity(hi - lo);
        let mut nonfinite = false;
        for cell in lo..hi {
            let base = cell_offset(cell, &out_shape, &out_strides);
            let (hit, nf) = with_dtype!(view.dtype, T => any_nonzero::<T>(view, &inner, base, tol));
            vals.push(hit);
            nonfinite |= nf;
        }
        (vals, nonfinite)
    });
    let mut values = Vec::with_capacity(n_out);
    let mut nonfinite = false;
    for (v, nf) in parts {
        values.extend(v);
        nonfinite |= nf;
    }
    Ok(Reduced { shape: out_shape, values, nonfinite })
}

/// Element offset of row-major cell `cell` over `shape` with `strides`.
fn cell_offset(mut cell: usize, shape: &[usize], strides: &[isize]) -> isize {
    let mut off = 0isize;
    for k in (0..shape.len()).rev() {
        let n = shape[k].max(1);
        off += (cell % n) as isize * strides[k];
        cell /= n;
    }
    off
}

/// Whether any element of the walk starting at element offset `base` is non-zero; stops at the
/// first. Returns (hit, saw a non-finite value).
fn any_nonzero<T: crate::dtype::Element>(view: &TensorView, walk: &Walk, base: isize, tol: f64) -> (bool, bool) {
    let mut hit = false;
    let mut nonfinite = false;
    walk.for_runs(0, walk.len, |off, n, stride| {
        if hit {
            return;
        }
        let p = view.elem_ptr(base + off) as *const T;
        for i in 0..n as isize {
            // SAFETY: the view's contract makes every element its shape and strides reach
            // readable; `base + off + i * stride` is such an element (`off` includes the walk's base). Reads may be
            // unaligned (NumPy allows it).
            let v = unsafe { p.offset(i * stride).read_unaligned() }.to_f64();
            if v.is_nan() || v.abs() > tol {
                hit = true;
                nonfinite = !v.is_finite();
                return;
            }
        }
    });
    (hit, nonfinite)
}

/// Number of bits that index `n` outputs (0 for n <= 1).
fn bits_for(n: usize) -> usize {
    if n <= 1 {
        0
    } else {
        (usize::BITS - (n - 1).leading_zeros()) as usize
    }
}

/// Number of backward passes the group method needs for `n_out` outputs: two per bit of the
/// output index (one pass when there is a single output): at most 2 (log2 n + 1).
pub fn group_passes(n_out: usize) -> usize {
    match bits_for(n_out) {
        0 => 1,
        b => 2 * b,
    }
}

/// Which outputs each group pass weights: row-major [passes, n_out].
pub fn group_codes(n_out: usize) -> Result<Vec<bool>> {
    let passes = group_passes(n_out);
    let len = passes.checked_mul(n_out).ok_or_else(|| Error::Layout(format!("{n_out} outputs are too many")))?;
    let mut out = crate::error::filled_vec(len, false, "the group codes")?;
    if bits_for(n_out) == 0 {
        out.iter_mut().for_each(|v| *v = true);
        return Ok(out);
    }
    for p in 0..passes {
        let (bit, want) = (p / 2, p % 2 == 0);
        for i in 0..n_out {
            out[p * n_out + i] = ((i >> bit) & 1 == 1) == want;
        }
    }
    Ok(out)
}

/// What `group_decode` recovers.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// Row-major [n_out, n_in]: exact for unambiguous columns, a superset for ambiguous ones.
    pub mask: Vec<bool>,
    /// Per input column: it reaches more than one output, so its column is only a superset.
    pub ambiguous: Vec<bool>,
}

/// Decodes the group passes' hits (row-major [passes, n_in]: input j got a non-zero gradient in
/// pass p) into the mask of outputs consistent with every pass.
pub fn group_decode(hits: &[bool], n_out: usize, n_in: usize) -> Result<Decoded> {
    let passes = group_passes(n_out);
    if hits.len() != passes.checked_mul(n_in).ok_or_else(|| Error::Layout("too many inputs".into()))? {
        return Err(Error::Layout(format!(
            "expected hits of shape [{passes}, {n_in}] for {n_out} outputs, got {} values",
            hits.len()
        )));
    }
    let bits = bits_for(n_out);
    let cells = n_out.checked_mul(n_in).ok_or_else(|| Error::Layout(format!("a mask of [{n_out}, {n_in}] is too large")))?;
    let mut mask = crate::error::filled_vec(cells, false, "the dependency mask")?;
    let mut ambiguous = vec![false; n_in];
    for j in 0..n_in {
        if bits == 0 {
            if n_out == 1 {
                mask[j] = hits[j];
            }
            continue;
        }
        let mut both = 0;
        for b in 0..bits {
            let (one, zero) = (hits[2 * b * n_in + j], hits[(2 * b + 1) * n_in + j]);
            both += (one && zero) as usize;
        }
        ambiguous[j] = both > 0;
        for i in 0..n_out {
            mask[i * n_in + j] = (0..bits).all(|b| {
                let pass = if (i >> b) & 1 == 1 { 2 * b } else { 2 * b + 1 };
                hits[pass * n_in + j]
            });
        }
    }
    Ok(Decoded { mask, ambiguous })
}

/// The structure a dependency mask is expected to have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Output i depends on input i only (examples of a batch are independent).
    Identity,
    /// Output i depends on inputs j <= i only (autoregressive, causal).
    Causal,
}

impl Expect {
    pub fn parse(s: &str) -> Result<Expect> {
        match s {
            "identity" => Ok(Expect::Identity),
            "causal" => Ok(Expect::Causal),
            _ => Err(Error::Input(format!("expect must be 'identity' or 'causal', got {s:?}"))),
        }
    }
}

/// The (i, j) where the mask (row-major [n_out, n_in]) departs from `expect` by depending on
/// an input it should not, in row-major order.
pub fn leaks(mask: &[bool], n_out: usize, n_in: usize, expect: Expect) -> Result<Vec<(usize, usize)>> {
    if Some(mask.len()) != n_out.checked_mul(n_in) {
        return Err(Error::Layout(format!("a mask of {} values is not [{n_out}, {n_in}]", mask.len())));
    }
    let mut out = vec![];
    for i in 0..n_out {
        for j in 0..n_in {
            let allowed = match expect {
                Expect::Identity => i == j,
                Expect::Causal => j <= i,
            };
            if mask[i * n_in + j] && !allowed {
                out.push((i, j));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::BF16;

    /// A tiny deterministic generator for the tests (no dependencies).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            self.0 >> 33
        }
    }

    /// Brute force over the index space in C order.
    fn brute(data: &[f32], shape: &[usize], keep: &[usize]) -> Vec<bool> {
        let out_shape: Vec<usize> = keep.iter().map(|&a| shape[a]).collect();
        let mut out = vec![false; out_shape.iter().product()];
        for (flat, &x) in data.iter().enumerate().take(shape.iter().product()) {
            let mut idx = vec![0; shape.len()];
            let mut r = flat;
            for k in (0..shape.len()).rev() {
                idx[k] = r % shape[k];
                r /= shape[k];
            }
            let mut cell = 0;
            for (k, &a) in keep.iter().enumerate() {
                cell = cell * out_shape[k] + idx[a];
            }
            out[cell] |= x != 0.0;
        }
        out
    }

    #[test]
    fn nonzero_along_matches_brute_force_on_random_sparse_tensors() {
        let mut rng = Lcg(7);
        let shapes: &[&[usize]] = &[&[4, 5], &[3, 4, 5], &[2, 3, 1, 4], &[6], &[2, 0, 3]];
        for shape in shapes {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = (0..n).map(|_| if rng.next().is_multiple_of(5) { 1.5 } else { 0.0 }).collect();
            let strides = c_strides(shape);
            let view = TensorView::from_slice(&data, shape, &strides, 0).unwrap();
            let nd = shape.len();
            let mut keeps: Vec<Vec<usize>> = vec![vec![], (0..nd).collect()];
            keeps.extend((0..nd).map(|a| vec![a]));
            if nd >= 2 {
                keeps.push(vec![nd - 1, 0]);
            }
            for keep in keeps {
                let got = nonzero_along(&view, &keep, 0.0).unwrap();
                assert_eq!(got.values, brute(&data, shape, &keep), "shape {shape:?} keep {keep:?}");
                assert!(!got.nonfinite);
            }
        }
    }

    fn c_strides(shape: &[usize]) -> Vec<isize> {
        let mut s = vec![1isize; shape.len()];
        for k in (0..shape.len().saturating_sub(1)).rev() {
            s[k] = s[k + 1] * shape[k + 1].max(1) as isize;
        }
        s
    }

    #[test]
    fn nonzero_along_walks_transposed_and_negative_strides() {
        // a 3x4 matrix stored transposed, with one non-zero at logical [2, 1]
        let mut data = vec![0f32; 12];
        data[3 + 2] = -2.0; // column-major: element [i, j] at j*3 + i: [2, 1]
        let view = TensorView::from_slice(&data, &[3, 4], &[1, 3], 0).unwrap();
        assert_eq!(nonzero_along(&view, &[0], 0.0).unwrap().values, vec![false, false, true]);
        assert_eq!(nonzero_along(&view, &[1], 0.0).unwrap().values, vec![false, true, false, false]);
        // reversed rows: logical row r is stored row 2 - r
        let view = TensorView::from_slice(&data, &[4, 3], &[-3, 1], 9).unwrap();
        let got = nonzero_along(&view, &[0], 0.0).unwrap().values;
        assert_eq!(got, vec![false, false, true, false]);
    }

    #[test]
    fn tolerance_nan_and_other_dtypes() {
        let data = [0.0f64, 1e-9, 0.0, f64::NAN];
        let view = TensorView::from_slice(&data, &[4], &[1], 0).unwrap();
        let r = nonzero_along(&view, &[0], 1e-6).unwrap();
        assert_eq!(r.values, vec![false, false, false, true]);
        assert!(r.nonfinite);
        let bf = [BF16::from_f32(0.0), BF16::from_f32(-3.0)];
        let view = TensorView::from_slice(&bf, &[2], &[1], 0).unwrap();
        assert_eq!(nonzero_along(&view, &[0], 0.0).unwrap().values, vec![false, true]);
        let b = [0u8, 1, 0];
        let view = TensorView::from_slice(&b, &[3], &[1], 0).unwrap();
        assert_eq!(nonzero_along(&view, &[0], 0.0).unwrap().values, vec![false, true, false]);
        assert!(nonzero_along(&view, &[1], 0.0).is_err());
        assert!(nonzero_along(&view, &[0, 0], 0.0).is_err());
        assert!(nonzero_along(&view, &[0], -1.0).is_err());
    }

    #[test]
    fn group_passes_stay_within_the_log_bound() {
        for n in 1..=1025usize {
            let p = group_passes(n) as f64;
            assert!(p <= 2.0 * ((n as f64).log2() + 1.0), "n {n}: {p} passes");
        }
        assert_eq!(group_passes(256), 16);
        assert_eq!(group_passes(1), 1);
        assert_eq!(group_passes(2), 2);
    }

    #[test]
    fn impossible_sizes_are_errors_not_aborts() {
        assert!(group_codes(usize::MAX / 2).is_err());
        assert!(group_codes(1 << 50).is_err());
        let hits = vec![false; group_passes(1 << 50) * 4];
        assert!(group_decode(&hits, 1 << 50, 4).is_err());
    }

    /// The hits the group passes would see for a given true mask (row-major [n_out, n_in]).
    fn simulate(mask: &[bool], n_out: usize, n_in: usize) -> Vec<bool> {
        let codes = group_codes(n_out).unwrap();
        let passes = group_passes(n_out);
        let mut hits = vec![false; passes * n_in];
        for p in 0..passes {
            for j in 0..n_in {
                hits[p * n_in + j] = (0..n_out).any(|i| codes[p * n_out + i] && mask[i * n_in + j]);
            }
        }
        hits
    }

    #[test]
    fn group_decoding_is_exact_when_each_input_reaches_at_most_one_output() {
        let mut rng = Lcg(3);
        for &(n_out, n_in) in &[(1usize, 1usize), (1, 5), (2, 2), (7, 7), (256, 256), (33, 20)] {
            for _ in 0..5 {
                let mut mask = vec![false; n_out * n_in];
                for j in 0..n_in {
                    if !rng.next().is_multiple_of(4) {
                        let i = rng.next() as usize % n_out;
                        mask[i * n_in + j] = true;
                    }
                }
                let d = group_decode(&simulate(&mask, n_out, n_in), n_out, n_in).unwrap();
                assert_eq!(d.mask, mask, "n_out {n_out} n_in {n_in}");
                assert!(d.ambiguous.iter().all(|a| !a));
            }
        }
    }

    #[test]
    fn group_decoding_gives_a_superset_and_flags_shared_inputs() {
        let mut rng = Lcg(11);
        let (n_out, n_in) = (16, 12);
        for _ in 0..50 {
            let mask: Vec<bool> = (0..n_out * n_in).map(|_| rng.next().is_multiple_of(9)).collect();
            let d = group_decode(&simulate(&mask, n_out, n_in), n_out, n_in).unwrap();
            for j in 0..n_in {
                let reach = (0..n_out).filter(|&i| mask[i * n_in + j]).count();
                assert_eq!(d.ambiguous[j], reach > 1);
                for i in 0..n_out {
                    assert!(!mask[i * n_in + j] || d.mask[i * n_in + j], "lost a dependency");
                    if reach <= 1 {
                        assert_eq!(mask[i * n_in + j], d.mask[i * n_in + j]);
                    }
                }
            }
            // the verdict agrees: an identity-expecting check finds a leak iff there is one
            let truth = leaks(&mask, n_out, n_in, Expect::Identity).unwrap();
            let got = leaks(&d.mask, n_out, n_in, Expect::Identity).unwrap();
            assert_eq!(truth.is_empty(), got.is_empty());
        }
        assert!(group_decode(&[true; 3], 4, 2).is_err());
    }

    #[test]
    fn leaks_follow_the_expected_structure() {
        // 3x3: diagonal, plus [0, 2] (future) and [2, 0] (past)
        let mut m = vec![false; 9];
        for (i, j) in [(0, 0), (1, 1), (2, 2), (0, 2), (2, 0)] {
            m[i * 3 + j] = true;
        }
        assert_eq!(leaks(&m, 3, 3, Expect::Identity).unwrap(), vec![(0, 2), (2, 0)]);
        assert_eq!(leaks(&m, 3, 3, Expect::Causal).unwrap(), vec![(0, 2)]);
        assert!(leaks(&m, 2, 3, Expect::Causal).is_err());
        assert!(Expect::parse("diagonal").is_err());
    }
}
