//! `TensorView`: the one input type of every kernel. A base pointer, a dtype, a shape and strides
//! counted in elements (any sign, zero included), and the walk over it in memory order.

use crate::dtype::{DType, Element};
use crate::error::{Error, Result};
use std::marker::PhantomData;

#[derive(Debug, Clone)]
pub struct TensorView<'a> {
    /// Address of element [0, 0, ...] (strides may point before it).
    ptr: *const u8,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub strides_elems: Vec<isize>,
    _borrow: PhantomData<&'a [u8]>,
}

// SAFETY: a view only ever reads, and the constructor's contract keeps the memory alive and
// readable for 'a; reading from several threads at once is then sound.
unsafe impl Send for TensorView<'_> {}
unsafe impl Sync for TensorView<'_> {}

impl<'a> TensorView<'a> {
    /// # Safety
    /// For 'a, every element `ptr + sum(i_k * strides_elems[k]) * itemsize` with
    /// `0 <= i_k < shape[k]` must be readable memory holding a valid value of `dtype`
    /// (any bit pattern is valid for every dtype: Bool is read as a byte, `!= 0`).
    pub unsafe fn from_raw(ptr: *const u8, dtype: DType, shape: Vec<usize>, strides_elems: Vec<isize>) -> Result<Self> {
        if shape.len() != strides_elems.len() {
            return Err(Error::Layout(format!(
                "shape {shape:?} and strides {strides_elems:?} have different lengths"
            )));
        }
        let view = TensorView { ptr, dtype, shape, strides_elems, _borrow: PhantomData };
        view.extent()?; // overflow check of every reachable offset
        view.checked_numel()?; // and of the element count, which the statistics count in a u64
        Ok(view)
    }

    /// A view into a slice, checked: every element the shape and strides reach lies inside it.
    pub fn from_slice<T: Element>(data: &'a [T], shape: &[usize], strides_elems: &[isize], offset: usize) -> Result<Self> {
        let view = TensorView {
            ptr: data.as_ptr().wrapping_add(offset) as *const u8,
            dtype: T::DTYPE,
            shape: shape.to_vec(),
            strides_elems: strides_elems.to_vec(),
            _borrow: PhantomData,
        };
        if shape.len() != strides_elems.len() {
            return Err(Error::Layout("shape and strides have different lengths".into()));
        }
        view.checked_numel()?;
        if let Some((lo, hi)) = view.extent()? {
            let lo = offset as isize + lo;
            let hi = offset as isize + hi;
            if lo < 0 || hi >= data.len() as isize {
                return Err(Error::Layout(format!(
                    "shape {shape:?} with strides {strides_elems:?} at offset {offset} reaches elements \
                     {lo}..={hi} of a buffer of {}",
                    data.len()
                )));
            }
        }
        Ok(view)
    }

    /// A contiguous 1-D view of a slice.
    pub fn from_contiguous<T: Element>(data: &'a [T]) -> Self {
        TensorView {
            ptr: data.as_ptr() as *const u8,
            dtype: T::DTYPE,
            shape: vec![data.len()],
            strides_elems: vec![1],
            _borrow: PhantomData,
        }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The element count, or a `Layout` error where it does not fit in a usize.
    pub fn checked_numel(&self) -> Result<usize> {
        self.shape.iter().try_fold(1usize, |a, &n| a.checked_mul(n)).ok_or_else(|| {
            Error::Layout(format!("shape {:?} has more elements than the address space", self.shape))
        })
    }

    /// The lowest and highest element offsets reached, or None when the view is empty.
    pub fn extent(&self) -> Result<Option<(isize, isize)>> {
        offset_extent(&self.shape, &self.strides_elems)
    }

    /// The walk in memory order; see `Walk`.
    pub fn walk(&self) -> Walk {
        Walk::new(&self.shape, &self.strides_elems)
    }

    /// Pointer to the element `offset_elems` from element [0, ...].
    pub(crate) fn elem_ptr(&self, offset_elems: isize) -> *const u8 {
        self.ptr.wrapping_offset(offset_elems * self.dtype.itemsize() as isize)
    }
}

/// Lowest and highest element offsets reachable by `shape`/`strides`, with overflow checks.
pub fn offset_extent(shape: &[usize], strides: &[isize]) -> Result<Option<(isize, isize)>> {
    if shape.contains(&0) {
        return Ok(None);
    }
    let overflow = || Error::Layout(format!("shape {shape:?} with strides {strides:?} overflows the address space"));
    let (mut lo, mut hi) = (0isize, 0isize);
    for (&n, &s) in shape.iter().zip(strides) {
        let n1 = isize::try_from(n - 1).map_err(|_| overflow())?;
        let reach = n1.checked_mul(s).ok_or_else(overflow)?;
        if reach < 0 {
            lo = lo.checked_add(reach).ok_or_else(overflow)?;
        } else {
            hi = hi.checked_add(reach).ok_or_else(overflow)?;
        }
    }
    Ok(Some((lo, hi)))
}

/// A tensor's elements as runs in memory order: size-1 axes dropped, negative strides turned
/// positive, axes sorted by stride and merged where they are contiguous with each other.
/// Stride-0 axes (from `expand`) are walked once and counted `repeat` times: statistics do not
/// depend on the order of the elements, so walking memory in order keeps reads sequential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Walk {
    /// Offset (elements) of the lowest address reached, from element [0, ...].
    pub base: isize,
    /// (size, stride) from outermost to innermost, strides > 0; never empty for a non-empty view.
    pub dims: Vec<(usize, isize)>,
    /// How many times each walked element stands in the tensor.
    pub repeat: u64,
    /// Elements walked (without the repeat).
    pub len: usize,
}

impl Walk {
    pub fn new(shape: &[usize], strides: &[isize]) -> Walk {
        if shape.contains(&0) {
            return Walk { base: 0, dims: vec![], repeat: 1, len: 0 };
        }
        let mut base = 0isize;
        let mut repeat = 1u64;
        let mut dims: Vec<(usize, isize)> = Vec::with_capacity(shape.len());
        for (&n, &s) in shape.iter().zip(strides) {
            if n == 1 {
                continue;
            }
            if s == 0 {
                repeat = repeat.saturating_mul(n as u64);
                continue;
            }
            if s < 0 {
                base += s * (n as isize - 1);
                dims.push((n, -s));
            } else {
                dims.push((n, s));
            }
        }
        dims.sort_by_key(|d| std::cmp::Reverse(d.1));
        let mut merged: Vec<(usize, isize)> = Vec::with_capacity(dims.len());
        for (n, s) in dims.into_iter().rev() {
            // walking from the innermost: merge an outer axis whose stride spans the inner run exactly
            match merged.last_mut() {
                Some(inner) if s == inner.1 * inner.0 as isize => inner.0 *= n,
                _ => merged.push((n, s)),
            }
        }
        merged.reverse();
        if merged.is_empty() {
            merged.push((1, 1));
        }
        let len = merged.iter().map(|d| d.0).product();
        Walk { base, dims: merged, repeat, len }
    }

    /// Calls `f(offset_elems, run_len, run_stride)` for every run of the innermost axis that
    /// intersects the walk positions `[start, end)`, in order.
    pub fn for_runs(&self, start: usize, end: usize, mut f: impl FnMut(isize, usize, isize)) {
        if start >= end || self.dims.is_empty() {
            return;
        }
        let nd = self.dims.len();
        let (inner_n, inner_s) = self.dims[nd - 1];
        // multi-index of `start`
        let mut idx = vec![0usize; nd];
        let mut rem = start;
        for k in (0..nd).rev() {
            idx[k] = rem % self.dims[k].0;
            rem /= self.dims[k].0;
        }
        let mut pos = start;
        while pos < end {
            let off: isize = self.base + idx.iter().zip(&self.dims).map(|(&i, d)| i as isize * d.1).sum::<isize>();
            let run = (inner_n - idx[nd - 1]).min(end - pos);
            f(off, run, inner_s);
            pos += run;
            idx[nd - 1] += run;
            // carry
            let mut k = nd - 1;
            while idx[k] == self.dims[k].0 && k > 0 {
                idx[k] = 0;
                idx[k - 1] += 1;
                k -= 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(w: &Walk) -> Vec<isize> {
        let mut out = vec![];
        w.for_runs(0, w.len, |o, n, s| out.extend((0..n as isize).map(|i| o + i * s)));
        out
    }

    fn brute(shape: &[usize], strides: &[isize]) -> Vec<isize> {
        let mut out = vec![0isize];
        for (&n, &s) in shape.iter().zip(strides) {
            out = out.iter().flat_map(|&o| (0..n as isize).map(move |i| o + i * s)).collect();
        }
        out
    }

    #[test]
    fn transposed_view_walks_as_one_contiguous_run() {
        let w = Walk::new(&[3, 4], &[1, 3]);
        assert_eq!(w.dims, vec![(12, 1)]);
        assert_eq!(w.base, 0);
    }

    #[test]
    fn walk_visits_the_same_offsets_as_the_index_space() {
        let cases: &[(&[usize], &[isize])] = &[
            (&[2, 3, 4], &[12, 4, 1]),
            (&[2, 3, 4], &[1, 2, 6]),
            (&[3, 4], &[-4, 1]),
            (&[3, 4], &[8, 2]),
            (&[5, 2, 3], &[0, 3, -1]),
            (&[1, 1], &[7, 9]),
            (&[], &[]),
        ];
        for (shape, strides) in cases {
            let w = Walk::new(shape, strides);
            let mut got: Vec<isize> = offsets(&w).iter().flat_map(|&o| std::iter::repeat_n(o, w.repeat as usize)).collect();
            let mut want = brute(shape, strides);
            got.sort();
            want.sort();
            assert_eq!(got, want, "shape {shape:?} strides {strides:?}");
        }
    }

    #[test]
    fn partial_ranges_cover_the_walk_exactly() {
        let w = Walk::new(&[3, 5, 7], &[70, 1, 10]);
        let all = offsets(&w);
        let mut parts = vec![];
        for (a, b) in [(0, 4), (4, 13), (13, 50), (50, 105)] {
            w.for_runs(a, b, |o, n, s| parts.extend((0..n as isize).map(|i| o + i * s)));
        }
        assert_eq!(parts, all);
    }

    #[test]
    fn from_slice_rejects_out_of_bounds() {
        let data = [0f32; 10];
        assert!(TensorView::from_slice(&data, &[3, 4], &[4, 1], 0).is_err());
        assert!(TensorView::from_slice(&data, &[2, 5], &[5, 1], 0).is_ok());
        assert!(TensorView::from_slice(&data, &[5], &[-1], 3).is_err());
        assert!(TensorView::from_slice(&data, &[5], &[-1], 4).is_ok());
    }
}
