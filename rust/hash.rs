//! Row hashing for duplicate and train/test overlap detection in data.
//!
//! A row is `x[i]` of a tensor whose first axis indexes samples; its bytes are its elements in C
//! order (so a transposed copy of the same data hashes the same). Every row gets a 64-bit hash
//! in parallel; rows are then grouped by hash in 256 buckets sorted in parallel, and rows whose
//! hashes agree are compared byte for byte, so a hash collision never reports a false duplicate.
//! "Equal" means byte-identical: -0.0 differs from 0.0, and a NaN equals a NaN with the same bits.

use crate::error::{Error, Result};
use crate::pool;
use crate::view::TensorView;
use std::sync::Mutex;

const SECRET: [u64; 4] = [0xa076_1d64_78bd_642f, 0xe703_7ed1_a0b4_28db, 0x8ebc_6af0_9c88_c6e3, 0x5899_65cc_7537_4cc3];
const ROWS_PER_TASK: usize = 8192;
const BUCKET_BITS: u32 = 8;

/// The 128-bit product folded to 64 bits (the mixing step of wyhash).
#[inline(always)]
fn mum(a: u64, b: u64) -> u64 {
    let r = (a as u128).wrapping_mul(b as u128);
    (r as u64) ^ ((r >> 64) as u64)
}

#[inline(always)]
fn word(bytes: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    let n = bytes.len().min(8);
    w[..n].copy_from_slice(&bytes[..n]);
    u64::from_le_bytes(w)
}

/// A fast 64-bit hash of a byte string (wyhash-style: 16 bytes per 128-bit multiply).
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let len = bytes.len() as u64;
    let mut h = SECRET[0] ^ len.wrapping_mul(SECRET[1]);
    let mut chunks = bytes.chunks_exact(16);
    for c in &mut chunks {
        h = mum(word(&c[..8]) ^ SECRET[1], word(&c[8..]) ^ h);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let (a, b) = if rest.len() > 8 { (word(&rest[..8]), word(&rest[8..])) } else { (word(rest), 0) };
        h = mum(a ^ SECRET[2], b ^ h ^ rest.len() as u64);
    }
    mum(h ^ SECRET[3], SECRET[0] ^ len)
}

/// Reads rows of a view as bytes in C order: a borrowed slice when the row is C-contiguous, a
/// gather into the caller's buffer otherwise.
struct Rows<'v, 'a> {
    view: &'v TensorView<'a>,
    n: usize,
    row_shape: Vec<usize>,
    row_strides: Vec<isize>,
    row_elems: usize,
    itemsize: usize,
    contiguous: bool,
}

impl<'v, 'a> Rows<'v, 'a> {
    fn new(view: &'v TensorView<'a>) -> Result<Self> {
        let Some((&n, row_shape)) = view.shape.split_first() else {
            return Err(Error::Layout("a 0-d tensor has no rows; pass an array whose first axis indexes samples".into()));
        };
        let row_shape = row_shape.to_vec();
        let row_strides = view.strides_elems[1..].to_vec();
        let row_elems = row_shape.iter().try_fold(1usize, |a, &k| a.checked_mul(k)).ok_or_else(|| Error::Layout("rows are too large".into()))?;
        let mut expect = 1isize;
        let mut contiguous = true;
        for (&k, &s) in row_shape.iter().zip(&row_strides).rev() {
            if k > 1 && s != expect {
                contiguous = false;
            }
            expect = expect.saturating_mul(k as isize);
        }
        Ok(Rows { view, n, row_shape, row_strides, row_elems, itemsize: view.dtype.itemsize(), contiguous })
    }

    fn row_bytes(&self) -> usize {
        self.row_elems * self.itemsize
    }

    /// Calls `f` with the bytes of row `i` (C order).
    fn with_row<R>(&self, i: usize, buf: &mut Vec<u8>, f: impl FnOnce(&[u8]) -> R) -> R {
        let base = i as isize * self.view.strides_elems[0];
        if self.row_elems == 0 {
            return f(&[]);
        }
        if self.contiguous {
            // SAFETY: the view's contract makes the row's `row_elems` elements readable, and a
            // C-contiguous row holds them in one run of `row_bytes` bytes from its first element.
            let s = unsafe { std::slice::from_raw_parts(self.view.elem_ptr(base), self.row_bytes()) };
            return f(s);
        }
        buf.clear();
        buf.resize(self.row_bytes(), 0);
        let nd = self.row_shape.len();
        let mut idx = vec![0usize; nd];
        for e in 0..self.row_elems {
            let off = base + idx.iter().zip(&self.row_strides).map(|(&k, &s)| k as isize * s).sum::<isize>();
            // SAFETY: `off` is an element the view's shape and strides reach, so it is readable;
            // the destination is this element's slot in `buf`, sized above.
            unsafe {
                std::ptr::copy_nonoverlapping(self.view.elem_ptr(off), buf.as_mut_ptr().add(e * self.itemsize), self.itemsize);
            }
            for k in (0..nd).rev() {
                idx[k] += 1;
                if idx[k] < self.row_shape[k] {
                    break;
                }
                idx[k] = 0;
            }
        }
        f(buf)
    }

    fn equal(&self, i: usize, other: &Rows, j: usize, bi: &mut Vec<u8>, bj: &mut Vec<u8>) -> bool {
        self.with_row(i, bi, |a| other.with_row(j, bj, |b| a == b))
    }

    fn hashes(&self, hasher: fn(&[u8]) -> u64) -> Vec<u64> {
        let tasks = self.n.div_ceil(ROWS_PER_TASK);
        let parts = pool::map_collect(tasks, |t| {
            let mut buf = Vec::new();
            (t * ROWS_PER_TASK..((t + 1) * ROWS_PER_TASK).min(self.n))
                .map(|i| self.with_row(i, &mut buf, hasher))
                .collect::<Vec<u64>>()
        });
        parts.concat()
    }
}

/// The 64-bit hash of every row of `view` (rows along the first axis).
pub fn row_hashes(view: &TensorView) -> Result<Vec<u64>> {
    Ok(Rows::new(view)?.hashes(hash_bytes))
}

/// (hash, row) pairs split into buckets by the hash's top bits, each sorted (in parallel).
fn buckets(hashes: &[u64]) -> Vec<Vec<(u64, usize)>> {
    let nb = 1usize << BUCKET_BITS;
    let mut split: Vec<Vec<(u64, usize)>> = (0..nb).map(|_| Vec::with_capacity(hashes.len() / nb + 1)).collect();
    for (i, &h) in hashes.iter().enumerate() {
        split[(h >> (64 - BUCKET_BITS)) as usize].push((h, i));
    }
    // each task takes its own bucket out of its mutex: no copy, no sharing
    let cells: Vec<Mutex<Vec<(u64, usize)>>> = split.into_iter().map(Mutex::new).collect();
    pool::map_collect(nb, |b| {
        let mut v = cells[b].lock().map(|mut g| std::mem::take(&mut *g)).unwrap_or_default();
        v.sort_unstable();
        v
    })
}

/// Every row equal to an earlier row: (row, the first row equal to it), sorted by row.
pub fn duplicate_rows(view: &TensorView) -> Result<Vec<(usize, usize)>> {
    duplicate_rows_with(view, hash_bytes)
}

fn duplicate_rows_with(view: &TensorView, hasher: fn(&[u8]) -> u64) -> Result<Vec<(usize, usize)>> {
    let rows = Rows::new(view)?;
    let hashes = rows.hashes(hasher);
    let bks = buckets(&hashes);
    let parts = pool::map_collect(bks.len(), |b| {
        let (mut bi, mut bj) = (Vec::new(), Vec::new());
        let mut found = vec![];
        let v = &bks[b];
        let mut start = 0;
        while start < v.len() {
            let mut end = start + 1;
            while end < v.len() && v[end].0 == v[start].0 {
                end += 1;
            }
            if end - start > 1 {
                // rows with this hash, in row order; each is a copy of the first equal one or new
                let mut reps: Vec<usize> = vec![];
                for &(_, r) in &v[start..end] {
                    match reps.iter().find(|&&p| rows.equal(r, &rows, p, &mut bi, &mut bj)) {
                        Some(&p) => found.push((r, p)),
                        None => reps.push(r),
                    }
                }
            }
            start = end;
        }
        found
    });
    let mut out = parts.concat();
    out.sort_unstable();
    Ok(out)
}

/// Every row of `b` equal to some row of `a`: (row of b, the first equal row of a), sorted.
pub fn overlap_rows(a: &TensorView, b: &TensorView) -> Result<Vec<(usize, usize)>> {
    overlap_rows_with(a, b, hash_bytes)
}

fn overlap_rows_with(a: &TensorView, b: &TensorView, hasher: fn(&[u8]) -> u64) -> Result<Vec<(usize, usize)>> {
    let (ra, rb) = (Rows::new(a)?, Rows::new(b)?);
    if a.dtype != b.dtype || ra.row_shape.iter().product::<usize>() != rb.row_shape.iter().product::<usize>() {
        return Err(Error::Layout(format!(
            "rows of {} {:?} and {} {:?} cannot be compared; give both the same dtype and row shape",
            a.dtype.name(),
            ra.row_shape,
            b.dtype.name(),
            rb.row_shape
        )));
    }
    let ha = ra.hashes(hasher);
    let hb = rb.hashes(hasher);
    let bka = buckets(&ha);
    let bkb = buckets(&hb);
    let parts = pool::map_collect(bka.len(), |k| {
        let (mut bi, mut bj) = (Vec::new(), Vec::new());
        let (va, vb) = (&bka[k], &bkb[k]);
        let mut found = vec![];
        for &(h, row_b) in vb {
            let lo = va.partition_point(|&(x, _)| x < h);
            for &(x, row_a) in &va[lo..] {
                if x != h {
                    break;
                }
                if rb.equal(row_b, &ra, row_a, &mut bi, &mut bj) {
                    found.push((row_b, row_a));
                    break;
                }
            }
        }
        found
    });
    let mut out = parts.concat();
    out.sort_unstable();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn c_strides(shape: &[usize]) -> Vec<isize> {
        let mut s = vec![1isize; shape.len()];
        for k in (0..shape.len().saturating_sub(1)).rev() {
            s[k] = s[k + 1] * shape[k + 1].max(1) as isize;
        }
        s
    }

    /// Brute force: every row against every earlier row.
    fn brute_dups(data: &[f32], n: usize, width: usize) -> Vec<(usize, usize)> {
        let row = |i: usize| &data[i * width..(i + 1) * width];
        let mut out = vec![];
        for i in 0..n {
            if let Some(j) = (0..i).find(|&j| row(j).iter().zip(row(i)).all(|(a, b)| a.to_bits() == b.to_bits())) {
                out.push((i, j));
            }
        }
        out
    }

    #[test]
    fn hash_depends_on_every_byte_and_the_length() {
        let base = vec![7u8; 37];
        let h0 = hash_bytes(&base);
        for k in 0..base.len() {
            let mut v = base.clone();
            v[k] ^= 1;
            assert_ne!(hash_bytes(&v), h0, "byte {k}");
        }
        assert_ne!(hash_bytes(&[0u8; 8]), hash_bytes(&[0u8; 9]));
        assert_ne!(hash_bytes(&[]), hash_bytes(&[0u8]));
        // no collisions on a million distinct small rows
        let mut seen = HashMap::new();
        for i in 0u64..1_000_000 {
            assert!(seen.insert(hash_bytes(&i.to_le_bytes()), i).is_none());
        }
    }

    #[test]
    fn duplicates_match_brute_force() {
        let (n, width) = (300, 3);
        let mut state = 1u64;
        let data: Vec<f32> = (0..n * width)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((state >> 60) % 3) as f32 // few values: many duplicate rows
            })
            .collect();
        let view = TensorView::from_slice(&data, &[n, width], &c_strides(&[n, width]), 0).unwrap();
        let got = duplicate_rows(&view).unwrap();
        assert_eq!(got, brute_dups(&data, n, width));
        assert!(!got.is_empty());
    }

    #[test]
    fn strided_rows_hash_like_contiguous_copies() {
        // logical 4x3 matrix stored column-major; rows 0 and 2 equal
        let logical = [[1f32, 2., 3.], [4., 5., 6.], [1., 2., 3.], [0., -0., 1.]];
        let mut colmajor = vec![0f32; 12];
        for i in 0..4 {
            for j in 0..3 {
                colmajor[j * 4 + i] = logical[i][j];
            }
        }
        let flat: Vec<f32> = logical.iter().flatten().copied().collect();
        let t = TensorView::from_slice(&colmajor, &[4, 3], &[1, 4], 0).unwrap();
        let c = TensorView::from_slice(&flat, &[4, 3], &[3, 1], 0).unwrap();
        assert_eq!(row_hashes(&t).unwrap(), row_hashes(&c).unwrap());
        assert_eq!(duplicate_rows(&t).unwrap(), vec![(2, 0)]);
        // overlap between differently strided splits
        let test = [4f32, 5., 6., 9., 9., 9., 0., 0., 1.];
        let tv = TensorView::from_slice(&test, &[3, 3], &[3, 1], 0).unwrap();
        // [0, 0, 1] differs from [0, -0, 1] in its bytes: not an exact duplicate
        assert_eq!(overlap_rows(&t, &tv).unwrap(), vec![(0, 1)]);
        let bad = [1f64, 2., 3.];
        let bv = TensorView::from_slice(&bad, &[1, 3], &[3, 1], 0).unwrap();
        assert!(overlap_rows(&t, &bv).is_err());
        let scalar = TensorView::from_slice(&bad, &[], &[], 0).unwrap();
        assert!(row_hashes(&scalar).is_err());
    }

    #[test]
    fn hash_collisions_are_settled_by_comparing_bytes() {
        // every row hashes to the same value: only the byte comparison keeps them apart
        let collide: fn(&[u8]) -> u64 = |_| 42;
        let data: Vec<f32> = vec![1., 2., 3., 4., 1., 2., 5., 6., 3., 4.];
        let v = TensorView::from_slice(&data, &[5, 2], &[2, 1], 0).unwrap();
        assert_eq!(duplicate_rows_with(&v, collide).unwrap(), vec![(2, 0), (4, 1)]);
        assert_eq!(duplicate_rows_with(&v, collide).unwrap(), duplicate_rows(&v).unwrap());
        let test: Vec<f32> = vec![5., 6., 7., 8., 3., 4.];
        let t = TensorView::from_slice(&test, &[3, 2], &[2, 1], 0).unwrap();
        assert_eq!(overlap_rows_with(&v, &t, collide).unwrap(), vec![(0, 3), (2, 1)]);
        assert_eq!(overlap_rows(&v, &t).unwrap(), vec![(0, 3), (2, 1)]);
    }

    #[test]
    fn empty_rows_and_empty_tensors() {
        let data: [f32; 0] = [];
        let v = TensorView::from_slice(&data, &[3, 0], &[0, 1], 0).unwrap();
        assert_eq!(duplicate_rows(&v).unwrap(), vec![(1, 0), (2, 0)]);
        let v = TensorView::from_slice(&data, &[0, 4], &[4, 1], 0).unwrap();
        assert!(duplicate_rows(&v).unwrap().is_empty());
    }
}
