//! Strides and shapes: contiguity, overlap, view compatibility and reshape axis groups, with the
//! exact rules torch uses (c10 `compute_contiguous`, `compute_non_overlapping_and_dense`, ATen
//! `computeStride`). Pure arithmetic, checked against overflow; strides are in elements.

use crate::error::{Error, Result};
use crate::view::offset_extent;

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
        let mut require = 1isize;
        for &d in &perm {
            let n = self.shape[d];
            if n < 2 {
                return true;
            }
            if self.strides[d] != require {
                return false;
            }
            require = require.saturating_mul(n as isize);
        }
        true
    }

    /// Whether two different indices reach the same memory (a stride 0 on an axis of size > 1,
    /// or axes whose steps interleave). Exact: a sufficient test first, then an enumeration of
    /// the reached offsets when that test cannot decide.
    pub fn overlapping(&self) -> bool {
        if self.numel() <= 1 {
            return false;
        }
        let mut axes: Vec<(usize, usize)> = self
            .shape
            .iter()
            .zip(&self.strides)
            .filter(|(&n, _)| n > 1)
            .map(|(&n, &s)| (n, s.unsigned_abs()))
            .collect();
        if axes.iter().any(|a| a.1 == 0) {
            return true;
        }
        axes.sort_by_key(|a| a.1);
        let mut reach = 0usize; // the farthest offset the inner axes reach
        let mut separated = true;
        for &(n, s) in &axes {
            if s <= reach {
                separated = false;
                break;
            }
            reach = reach.saturating_add(s.saturating_mul(n - 1));
        }
        if separated {
            return false;
        }
        // Undecided: enumerate offsets (the view's numel is bounded by what was allocated).
        let mut seen = std::collections::HashSet::with_capacity(self.numel());
        let mut offsets = vec![0usize];
        for &(n, s) in &axes {
            offsets = offsets.iter().flat_map(|&o| (0..n).map(move |i| o + i * s)).collect();
        }
        !offsets.into_iter().all(|o| seen.insert(o))
    }

    /// Bytes between the lowest and the highest byte the tensor reaches.
    pub fn footprint_bytes(&self) -> usize {
        match offset_extent(&self.shape, &self.strides) {
            Ok(Some((lo, hi))) => ((hi - lo) as usize + 1) * self.itemsize,
            _ => 0,
        }
    }

    /// The strides `self.view(new_shape)` would have, or None where torch's `view` raises
    /// (numel differs, or the new shape would need a copy). A -1 is inferred as torch does.
    pub fn view_strides(&self, new_shape: &[i64]) -> Result<Option<Vec<isize>>> {
        let Some(new_shape) = infer_shape(new_shape, self.numel())? else {
            return Ok(None);
        };
        Ok(compute_stride(&self.shape, &self.strides, &new_shape))
    }
}

fn contiguous<'a>(axes: impl Iterator<Item = (&'a usize, &'a isize)>, numel: usize) -> bool {
    if numel == 0 {
        return true;
    }
    let mut expected = 1isize;
    for (&n, &s) in axes {
        if n != 1 {
            if s != expected {
                return false;
            }
            expected = expected.saturating_mul(n as isize);
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
            if known == 0 || numel % known != 0 {
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
pub fn compute_stride(old_shape: &[usize], old_strides: &[isize], new_shape: &[usize]) -> Option<Vec<isize>> {
    if old_shape.is_empty() {
        return Some(vec![1; new_shape.len()]);
    }
    let numel: usize = old_shape.iter().product();
    if numel == 0 && old_shape == new_shape {
        return Some(old_strides.to_vec());
    }
    let mut new_strides = vec![0isize; new_shape.len()];
    if numel == 0 {
        for d in (0..new_shape.len()).rev() {
            new_strides[d] = if d == new_shape.len() - 1 { 1 } else { (new_shape[d + 1].max(1) as isize) * new_strides[d + 1] };
        }
        return Some(new_strides);
    }
    let mut view_d = new_shape.len() as isize - 1;
    let mut chunk_base_stride = *old_strides.last()?;
    let mut tensor_numel = 1isize;
    let mut view_numel = 1isize;
    for tensor_d in (0..old_shape.len()).rev() {
        tensor_numel *= old_shape[tensor_d] as isize;
        let chunk_ends = tensor_d == 0
            || (old_shape[tensor_d - 1] != 1 && old_strides[tensor_d - 1] != tensor_numel * chunk_base_stride);
        if chunk_ends {
            while view_d >= 0 && (view_numel < tensor_numel || new_shape[view_d as usize] == 1) {
                new_strides[view_d as usize] = view_numel * chunk_base_stride;
                view_numel *= new_shape[view_d as usize] as isize;
                view_d -= 1;
            }
            if view_numel != tensor_numel {
                return None;
            }
            if tensor_d > 0 {
                chunk_base_stride = old_strides[tensor_d - 1];
                tensor_numel = 1;
                view_numel = 1;
            }
        }
    }
    if view_d != -1 {
        return None;
    }
    Some(new_strides)
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
        } else if self.overlapping() {
            out.push_str("Several indices share memory (a stride of 0 from .expand(), or interleaved strides from .as_strided()): writing into it in place changes many elements at once, and statistics count the shared elements once per index.");
        } else {
            out.push_str("It has gaps: it is a slice or a strided view into a larger buffer, so it is neither contiguous nor dense, and most .view() calls that merge axes need .contiguous() first.");
        }
        let fp = self.footprint_bytes();
        let bytes = numel * self.itemsize;
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
