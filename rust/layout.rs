//! Strides and shapes: contiguity, overlap, view compatibility and reshape axis groups, with the
//! exact rules torch uses (c10 `compute_contiguous`, `compute_non_overlapping_and_dense`, ATen
//! `computeStride`). Pure arithmetic on shapes and strides, checked against overflow, never a
//! pass over the elements; strides are in elements.

use crate::error::{Error, Result};
use crate::view::offset_extent;

/// Whether two different indices of a view reach the same element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlap {
    No,
    Yes,
    /// Not decided: deciding it in general is a bounded subset-sum problem, and this view is past
    /// the bounded exact searches (`ENUMERATE_MAX` positions, `BITSET_MAX` offsets).
    Maybe,
}

impl Overlap {
    pub fn name(self) -> &'static str {
        match self {
            Overlap::No => "no",
            Overlap::Yes => "yes",
            Overlap::Maybe => "maybe",
        }
    }
}

/// The exact searches of `overlap` that the rules leave undecided: enumerating at most this many
/// index positions, or a bitset over at most this many offsets. Both are constants: the work and
/// the memory (512 KiB at most) do not grow with the view's element count.
const ENUMERATE_MAX: u128 = 1 << 16;
const BITSET_MAX: u128 = 1 << 22;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub shape: Vec<usize>,
    pub strides: Vec<isize>,
    pub itemsize: usize,
    pub offset: isize,
}

impl Layout {
    pub fn new(shape: Vec<usize>, strides: Vec<isize>, itemsize: usize, offset: isize) -> Result<Layout> {
        if shape.len() != strides.len() {
            return Err(Error::Layout(format!(
                "shape {shape:?} has {} axes but strides {strides:?} has {}",
                shape.len(),
                strides.len()
            )));
        }
        if itemsize == 0 {
            return Err(Error::Layout("itemsize must be at least 1 byte".into()));
        }
        offset_extent(&shape, &strides)?;
        shape.iter().try_fold(1usize, |a, &n| a.checked_mul(n)).ok_or_else(|| {
            Error::Layout(format!("shape {shape:?} has more elements than the address space"))
        })?;
        Ok(Layout { shape, strides, itemsize, offset })
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// torch's `is_contiguous()`: size-1 axes may have any stride; an empty tensor is contiguous.
    pub fn c_contiguous(&self) -> bool {
        contiguous(self.shape.iter().rev().zip(self.strides.iter().rev()), self.numel())
    }

    /// The same rule with the axes reversed (Fortran order; a transposed contiguous matrix).
    pub fn f_contiguous(&self) -> bool {
        contiguous(self.shape.iter().zip(self.strides.iter()), self.numel())
    }

    /// torch's `is_non_overlapping_and_dense` flag: contiguous, or some permutation of the axes is.
    pub fn dense(&self) -> bool {
        if self.c_contiguous() {
            return true;
        }
        let nd = self.shape.len();
        if nd == 1 {
            return self.shape[0] < 2 || self.strides[0] == 1;
        }
        let mut perm: Vec<usize> = (0..nd).collect();
        // size < 2 axes last, the rest by increasing stride (torch's insertion order)
        perm.sort_by(|&a, &b| {
            let (sa, sb) = (self.shape[a] < 2, self.shape[b] < 2);
            sa.cmp(&sb).then(if sa { std::cmp::Ordering::Equal } else { self.strides[a].cmp(&self.strides[b]) })
        });
        // None once the required stride is past isize: no stride can equal it
        let mut require = Some(1isize);
        for &d in &perm {
            let n = self.shape[d];
            if n < 2 {
                return true;
            }
            if Some(self.strides[d]) != require {
                return false;
            }
            require = require.and_then(|r| r.checked_mul(isize::try_from(n).ok()?));
        }
        true
    }

    /// Whether two different indices reach the same element, decided from the shape and strides
    /// alone: `Yes` or `No` where a rule or a bounded exact search decides, `Maybe` otherwise.
    ///
    /// The axes of size > 1 are taken by |stride| (the sign does not change which offsets
    /// collide). A stride 0 overlaps; more positions than offsets in the span overlap (pigeonhole).
    /// An outermost axis whose stride exceeds the span of all the others cannot collide with them
    /// and is set aside (every axis set aside: no overlap); the strides are divided by their gcd. A
    /// stride that is a multiple k < n of a smaller axis's stride collides with it. What is left is
    /// decided exactly by enumerating its positions (at most `ENUMERATE_MAX`) or by a bitset of
    /// its offsets (span at most `BITSET_MAX`); past both, `Maybe`.
    pub fn overlap(&self) -> Overlap {
        let mut axes: Vec<(u128, u128)> = self
            .shape
            .iter()
            .zip(&self.strides)
            .filter(|(&n, _)| n > 1)
            .map(|(&n, &s)| (n as u128, s.unsigned_abs() as u128))
            .collect();
        if self.shape.contains(&0) || axes.is_empty() {
            return Overlap::No;
        }
        if axes.iter().any(|a| a.1 == 0) {
            return Overlap::Yes;
        }
        axes.sort_by_key(|&(n, s)| (s, n));
        // sizes and strides fit in usize/isize, so every span and product below fits in u128
        let span = |axes: &[(u128, u128)]| axes.iter().map(|&(n, s)| (n - 1) * s).sum::<u128>();
        let positions = |axes: &[(u128, u128)]| axes.iter().try_fold(1u128, |p, &(n, _)| p.checked_mul(n));
        while let Some(&(_, s)) = axes.last() {
            if s > span(&axes[..axes.len() - 1]) {
                axes.pop();
            } else {
                break;
            }
        }
        if axes.len() <= 1 {
            return Overlap::No;
        }
        let g = axes.iter().fold(0u128, |g, &(_, s)| gcd(g, s));
        axes.iter_mut().for_each(|a| a.1 /= g);
        let span = span(&axes);
        let positions = positions(&axes);
        if positions.is_none_or(|p| p > span + 1) {
            return Overlap::Yes;
        }
        for (j, &(_, sj)) in axes.iter().enumerate() {
            if axes[..j].iter().any(|&(ni, si)| sj % si == 0 && sj / si < ni) {
                return Overlap::Yes;
            }
        }
        match positions {
            Some(p) if p <= ENUMERATE_MAX => overlap_by_enumeration(&axes),
            _ if span < BITSET_MAX => overlap_by_bitset(&axes, span as usize + 1),
            _ => Overlap::Maybe,
        }
    }

    /// `overlap()` as a yes-or-no question, erring on the safe side: `Maybe` counts as overlapping
    /// (writing into it in place is not safe as far as nnprobe can tell).
    pub fn overlapping(&self) -> bool {
        self.overlap() != Overlap::No
    }

    /// Bytes between the lowest and the highest byte the tensor reaches (0 when it is empty), as
    /// a u128: a layout may describe more bytes than a usize counts.
    pub fn footprint_bytes(&self) -> u128 {
        match offset_extent(&self.shape, &self.strides) {
            Ok(Some((lo, hi))) => (hi.abs_diff(lo) as u128 + 1) * self.itemsize as u128,
            _ => 0,
        }
    }

    /// Bytes of the elements themselves (numel × itemsize), as a u128.
    pub fn element_bytes(&self) -> u128 {
        self.numel() as u128 * self.itemsize as u128
    }

    /// The strides `self.view(new_shape)` would have, or None where torch's `view` raises
    /// (numel differs, or the new shape would need a copy). A -1 is inferred as torch does.
    pub fn view_strides(&self, new_shape: &[i64]) -> Result<Option<Vec<isize>>> {
        let Some(new_shape) = infer_shape(new_shape, self.numel())? else {
            return Ok(None);
        };
        compute_stride(&self.shape, &self.strides, &new_shape)
    }
}

fn gcd(a: u128, b: u128) -> u128 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Exact overlap of a few positions: list their offsets, sort, look for a repeat.
fn overlap_by_enumeration(axes: &[(u128, u128)]) -> Overlap {
    let mut offsets = vec![0u128];
    for &(n, s) in axes {
        offsets = offsets.iter().flat_map(|&o| (0..n).map(move |i| o + i * s)).collect();
    }
    offsets.sort_unstable();
    if offsets.windows(2).any(|w| w[0] == w[1]) { Overlap::Yes } else { Overlap::No }
}

/// Exact overlap over a short span: the set of offsets reached, as a bitset, built axis by axis.
/// The n translates of the set by multiples of an axis's stride are disjoint exactly when their
/// union holds n times as many offsets.
fn overlap_by_bitset(axes: &[(u128, u128)], span: usize) -> Overlap {
    let words = span.div_ceil(64);
    let mut reach = vec![0u64; words];
    reach[0] = 1;
    let mut count = 1u128;
    let (mut union, mut tmp) = (vec![0u64; words], vec![0u64; words]);
    for &(n, s) in axes {
        // union = reach + {0, s, ..., (n-1)s}, by doubling along the binary digits of n
        union.copy_from_slice(&reach);
        let mut have = 1u128; // union holds the translates 0..have
        for bit in (0..127 - n.leading_zeros()).rev() {
            tmp.copy_from_slice(&union);
            or_shifted(&mut union, &tmp, have * s);
            have *= 2;
            if (n >> bit) & 1 == 1 {
                or_shifted(&mut union, &reach, have * s);
                have += 1;
            }
        }
        let got: u128 = union.iter().map(|w| w.count_ones() as u128).sum();
        if got != count * n {
            return Overlap::Yes;
        }
        count = got;
        std::mem::swap(&mut reach, &mut union);
    }
    Overlap::No
}

/// `dst |= src << k`: bit i of `src` sets bit i + k of `dst`; bits past the end fall off.
fn or_shifted(dst: &mut [u64], src: &[u64], k: u128) {
    let Ok(k) = usize::try_from(k) else { return };
    let (ws, bs) = (k / 64, (k % 64) as u32);
    for w in (ws..dst.len()).rev() {
        let lo = src[w - ws] << bs;
        let carry = if bs > 0 && w > ws { src[w - ws - 1] >> (64 - bs) } else { 0 };
        dst[w] |= lo | carry;
    }
}

fn contiguous<'a>(axes: impl Iterator<Item = (&'a usize, &'a isize)>, numel: usize) -> bool {
    if numel == 0 {
        return true;
    }
    // None once the expected stride is past isize: no stride can equal it
    let mut expected = Some(1isize);
    for (&n, &s) in axes {
        if n != 1 {
            if Some(s) != expected {
                return false;
            }
            expected = expected.and_then(|e| e.checked_mul(isize::try_from(n).ok()?));
        }
    }
    true
}

/// Resolves a single -1 like torch's `infer_size`; None where numel cannot match.
pub fn infer_shape(shape: &[i64], numel: usize) -> Result<Option<Vec<usize>>> {
    let mut infer = None;
    let mut known = 1usize;
    for (i, &n) in shape.iter().enumerate() {
        if n == -1 {
            if infer.replace(i).is_some() {
                return Err(Error::Layout(format!("shape {shape:?}: only one dimension can be -1")));
            }
        } else if n < 0 {
            return Err(Error::Layout(format!("shape {shape:?}: invalid size {n}; sizes are >= 0, or -1 once")));
        } else {
            known = known
                .checked_mul(n as usize)
                .ok_or_else(|| Error::Layout(format!("shape {shape:?} overflows")))?;
        }
    }
    let mut out: Vec<usize> = shape.iter().map(|&n| n.max(0) as usize).collect();
    match infer {
        Some(i) => {
            // torch refuses to infer a -1 next to a zero ("can be any value")
            if known == 0 || !numel.is_multiple_of(known) {
                return Ok(None);
            }
            out[i] = numel / known;
        }
        None if known != numel => return Ok(None),
        None => {}
    }
    Ok(Some(out))
}

/// ATen's `computeStride`: the strides of a view with `new_shape`, or None where a copy is needed.
/// Sums and products are taken in i128 and checked: strides that do not fit an isize are a
/// `Layout` error, never a wrapped number.
pub fn compute_stride(old_shape: &[usize], old_strides: &[isize], new_shape: &[usize]) -> Result<Option<Vec<isize>>> {
    let overflow = || Error::Layout(format!("the strides of a view of shape {new_shape:?} overflow"));
    let mul = |a: i128, b: i128| a.checked_mul(b).ok_or_else(overflow);
    let to_isize = |v: Vec<i128>| v.into_iter().map(|x| isize::try_from(x).map_err(|_| overflow())).collect::<Result<Vec<_>>>();
    if old_shape.is_empty() {
        return Ok(Some(vec![1; new_shape.len()]));
    }
    let numel = old_shape.iter().try_fold(1usize, |a, &n| a.checked_mul(n)).ok_or_else(overflow)?;
    if numel == 0 && old_shape == new_shape {
        return Ok(Some(old_strides.to_vec()));
    }
    let mut new_strides = vec![0i128; new_shape.len()];
    if numel == 0 {
        for d in (0..new_shape.len()).rev() {
            new_strides[d] = if d == new_shape.len() - 1 { 1 } else { mul(new_shape[d + 1].max(1) as i128, new_strides[d + 1])? };
        }
        return to_isize(new_strides).map(Some);
    }
    let Some(&last) = old_strides.last() else {
        return Ok(None);
    };
    let mut view_d = new_shape.len() as isize - 1;
    let mut chunk_base_stride = last as i128;
    let mut tensor_numel = 1i128;
    let mut view_numel = 1i128;
    for tensor_d in (0..old_shape.len()).rev() {
        tensor_numel = mul(tensor_numel, old_shape[tensor_d] as i128)?;
        let chunk_ends = tensor_d == 0
            || (old_shape[tensor_d - 1] != 1 && old_strides[tensor_d - 1] as i128 != mul(tensor_numel, chunk_base_stride)?);
        if chunk_ends {
            while view_d >= 0 && (view_numel < tensor_numel || new_shape[view_d as usize] == 1) {
                new_strides[view_d as usize] = mul(view_numel, chunk_base_stride)?;
                view_numel = mul(view_numel, new_shape[view_d as usize] as i128)?;
                view_d -= 1;
            }
            if view_numel != tensor_numel {
                return Ok(None);
            }
            if tensor_d > 0 {
                chunk_base_stride = old_strides[tensor_d - 1] as i128;
                tensor_numel = 1;
                view_numel = 1;
            }
        }
    }
    if view_d != -1 {
        return Ok(None);
    }
    to_isize(new_strides).map(Some)
}

/// Which old axes become which new axes in a reshape: the finest split of both shapes into
/// consecutive groups of equal size. Size-1 axes join the group that follows them; those left at
/// the end form groups with an empty other side. An empty tensor is one group.
pub fn reshape_groups(old: &[usize], new: &[usize]) -> Result<Vec<(Vec<usize>, Vec<usize>)>> {
    let numel = |s: &[usize]| s.iter().try_fold(1usize, |a, &n| a.checked_mul(n));
    let (a, b) = (numel(old), numel(new));
    if a.is_none() || a != b {
        return Err(Error::Layout(format!(
            "cannot reshape {old:?} ({} elements) into {new:?} ({} elements)",
            a.map_or("too many".into(), |v| v.to_string()),
            b.map_or("too many".into(), |v| v.to_string())
        )));
    }
    if a == Some(0) {
        return Ok(vec![((0..old.len()).collect(), (0..new.len()).collect())]);
    }
    let mut groups = vec![];
    let (mut i, mut j) = (0, 0);
    while i < old.len() && j < new.len() {
        let (mut gi, mut gj) = (vec![i], vec![j]);
        let (mut pi, mut pj) = (old[i], new[j]);
        i += 1;
        j += 1;
        while pi != pj {
            // equal totals guarantee an axis is left on the smaller side; checked all the same
            let short = || Error::Internal(format!("reshape_groups({old:?}, {new:?}) ran out of axes"));
            if pi < pj {
                pi *= old.get(i).ok_or_else(short)?;
                gi.push(i);
                i += 1;
            } else {
                pj *= new.get(j).ok_or_else(short)?;
                gj.push(j);
                j += 1;
            }
        }
        groups.push((gi, gj));
    }
    groups.extend((i..old.len()).map(|k| (vec![k], vec![])));
    groups.extend((j..new.len()).map(|k| (vec![], vec![k])));
    Ok(groups)
}

impl Layout {
    /// One paragraph a person can read: what the strides mean and what they allow.
    pub fn explain(&self, dtype: Option<&str>) -> String {
        let what = dtype.map_or(format!("{}-byte", self.itemsize), |d| d.to_string());
        let mut out = format!(
            "A {what} tensor of shape {:?} with strides {:?} (in elements) at offset {}. ",
            self.shape, self.strides, self.offset
        );
        let numel = self.numel();
        if numel == 0 {
            out.push_str("It is empty, so every layout question is trivially satisfied and any view of the same (zero) size works.");
            return out;
        }
        if self.c_contiguous() {
            out.push_str("It is C-contiguous (row-major): the last axis moves fastest, so .view() to any shape with the same number of elements works without a copy.");
        } else if self.f_contiguous() {
            out.push_str("It is not C-contiguous but F-contiguous: the first axis moves fastest, as after .t() or .permute() of a contiguous tensor. A .view() that merges axes fails; .reshape() copies, or call .contiguous() first.");
        } else if self.dense() {
            let mut order: Vec<usize> = (0..self.shape.len()).filter(|&d| self.shape[d] > 1).collect();
            order.sort_by_key(|&d| std::cmp::Reverse(self.strides[d]));
            out.push_str(&format!(
                "It is dense but permuted: memory holds axes in the order {order:?} (outermost first), as after .permute(). A .view() only merges axes that are adjacent in memory; .contiguous() makes it row-major."
            ));
        } else {
            match self.overlap() {
                Overlap::Yes => out.push_str("Several indices share memory (a stride of 0 from .expand(), or interleaved strides from .as_strided() or .unfold()): writing into it in place changes many elements at once, and statistics count the shared elements once per index."),
                Overlap::Maybe => out.push_str("Its strides interleave in a way nnprobe does not decide exactly, so it may overlap (several indices may share memory): treat it as overlapping, do not write into it in place, and call .contiguous() for a copy that owns its elements."),
                Overlap::No => out.push_str("It has gaps: it is a slice or a strided view into a larger buffer, so it is neither contiguous nor dense, and most .view() calls that merge axes need .contiguous() first."),
            }
        }
        let fp = self.footprint_bytes();
        let bytes = self.element_bytes();
        out.push_str(&format!(" It spans {fp} bytes of memory for {bytes} bytes of elements."));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lay(shape: &[usize], strides: &[isize]) -> Layout {
        Layout::new(shape.to_vec(), strides.to_vec(), 4, 0).unwrap()
    }

    #[test]
    fn contiguity_follows_torch() {
        assert!(lay(&[2, 3], &[3, 1]).c_contiguous());
        assert!(!lay(&[2, 3], &[1, 2]).c_contiguous());
        assert!(lay(&[2, 3], &[1, 2]).f_contiguous());
        assert!(lay(&[2, 1, 3], &[3, 99, 1]).c_contiguous()); // size-1 stride is free
        assert!(lay(&[0, 3], &[7, 7]).c_contiguous()); // empty
        assert!(lay(&[2, 3, 4], &[4, 8, 1]).dense()); // permuted
        assert!(!lay(&[2, 3], &[6, 2]).dense()); // gaps
    }

    #[test]
    fn overlap_detection() {
        assert!(lay(&[4, 3], &[0, 1]).overlapping()); // expand
        assert!(!lay(&[4, 3], &[3, 1]).overlapping());
        assert!(lay(&[3, 3], &[1, 1]).overlapping()); // sliding window
        assert!(!lay(&[2, 2], &[3, 2]).overlapping()); // {0,2,3,5}
        assert!(!lay(&[3, 2], &[2, 3]).overlapping()); // {0,2,4,3,5,7}: interleaved, disjoint
        assert!(lay(&[3, 2], &[2, 4]).overlapping()); // 4 = 2*2
    }

    /// Brute force: list every offset.
    fn brute_overlap(shape: &[usize], strides: &[isize]) -> bool {
        let mut offsets = vec![0isize];
        for (&n, &s) in shape.iter().zip(strides) {
            offsets = offsets.iter().flat_map(|&o| (0..n as isize).map(move |i| o + i * s)).collect();
        }
        let k = offsets.len();
        offsets.sort_unstable();
        offsets.dedup();
        offsets.len() != k
    }

    #[test]
    fn overlap_is_exact_on_small_views() {
        // every shape up to 3 axes of size <= 4 with strides in -7..=7
        let mut rng = 12345u64;
        let mut next = |m: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % m
        };
        for _ in 0..20_000 {
            let nd = next(5) as usize;
            let shape: Vec<usize> = (0..nd).map(|_| next(5) as usize).collect();
            let strides: Vec<isize> = (0..nd).map(|_| next(15) as isize - 7).collect();
            let l = lay(&shape, &strides);
            assert_eq!(l.overlapping(), brute_overlap(&shape, &strides), "{shape:?} {strides:?}");
            assert_ne!(l.overlap(), Overlap::Maybe);
        }
    }

    #[test]
    fn overlap_of_huge_views_is_decided_without_listing_offsets() {
        // unfold(0, 65536, 1) of 131072 elements: 4.3e9 positions over 131072 offsets
        assert_eq!(lay(&[65537, 65536], &[1, 1]).overlap(), Overlap::Yes);
        // as_strided((1024,) * 6, (1,) * 6): 2^60 positions
        assert_eq!(lay(&[1024; 6], &[1; 6]).overlap(), Overlap::Yes);
        // a big dense permuted tensor, and one with gaps
        assert_eq!(lay(&[1 << 20, 1 << 20, 1 << 10], &[1 << 10, 1 << 30, 1]).overlap(), Overlap::No);
        assert_eq!(lay(&[1 << 20, 1 << 20], &[3 << 20, 3]).overlap(), Overlap::No);
        // many positions, short span, decided by the bitset: {0..1000 step 3} + {0..1000 step 5}
        assert_eq!(lay(&[300, 200], &[3, 5]).overlap(), Overlap::Yes);
        assert_eq!(lay(&[5, 3000], &[3000, 1]).overlap(), Overlap::No); // s == span + 1 peels
        assert_eq!(lay(&[2, 2, 1 << 18], &[(1 << 18) + 1, (1 << 18) + 2, 1]).overlap(), Overlap::Yes);
        // big strides with few positions: enumerated
        assert_eq!(lay(&[3, 3], &[1_000_000_000, 1_000_000_001]).overlap(), Overlap::No);
        // many positions over a long span that no rule decides: said honestly
        let undecided = lay(&[1 << 9, 1 << 9, 1 << 9], &[(1 << 20) + 7, (1 << 21) + 3, (1 << 29) + 1]);
        assert_eq!(undecided.overlap(), Overlap::Maybe);
        assert!(undecided.overlapping());
        assert!(undecided.explain(None).contains("may overlap"));
    }

    #[test]
    fn sizes_are_checked_not_wrapped() {
        let l = Layout::new(vec![1 << 61], vec![1], 16, 0).unwrap();
        assert_eq!(l.footprint_bytes(), 1u128 << 65);
        assert!(l.explain(None).contains(&format!("{} bytes of memory", 1u128 << 65)));
        assert!(Layout::new(vec![1 << 62, 4], vec![1, 1], 1, 0).is_err()); // numel past usize
        assert!(Layout::new(vec![1 << 62], vec![4], 1, 0).is_err()); // offsets past isize
        // a view of an empty tensor with sizes whose strides would overflow
        let empty = lay(&[0, 2], &[2, 1]);
        assert!(empty.view_strides(&[0, 1 << 40, 1 << 40]).is_err());
    }

    #[test]
    fn view_strides_match_known_torch_cases() {
        let t = lay(&[2, 3, 4], &[12, 4, 1]);
        assert_eq!(t.view_strides(&[6, 4]).unwrap(), Some(vec![4, 1]));
        assert_eq!(t.view_strides(&[-1]).unwrap(), Some(vec![1]));
        assert_eq!(t.view_strides(&[5, -1]).unwrap(), None);
        let tr = lay(&[4, 3], &[1, 4]); // transpose of [3, 4]
        assert_eq!(tr.view_strides(&[12]).unwrap(), None);
        assert_eq!(tr.view_strides(&[2, 2, 3]).unwrap(), Some(vec![2, 1, 4]));
        assert!(t.view_strides(&[-1, -1]).is_err());
    }

    #[test]
    fn reshape_groups_cases() {
        let g = reshape_groups(&[2, 3, 4], &[6, 4]).unwrap();
        assert_eq!(g, vec![(vec![0, 1], vec![0]), (vec![2], vec![1])]);
        let g = reshape_groups(&[2, 1, 3], &[2, 3]).unwrap();
        assert_eq!(g, vec![(vec![0], vec![0]), (vec![1, 2], vec![1])]);
        let g = reshape_groups(&[6], &[2, 3, 1]).unwrap();
        assert_eq!(g, vec![(vec![0], vec![0, 1]), (vec![], vec![2])]);
        assert!(reshape_groups(&[2, 3], &[5]).is_err());
        assert_eq!(reshape_groups(&[0, 3], &[0]).unwrap().len(), 1);
    }
}
