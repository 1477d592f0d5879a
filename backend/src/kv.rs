//! New positions written straight into a KV cache buffer, keys rotated on the way, and what a
//! cache buffer may hold: f32 (exact) or f16 (half the bytes, llama.cpp's default cache type).
//!
//! Appending through Burn took the rotated keys as a tensor of their own and copied them into
//! the cache, and the values (a view with swapped axes) through a strided copy, both on one
//! thread: 1.2% of a 1-thread 700M prefill in `perf`, with a 2-thread prefill's other thread
//! waiting meanwhile.

use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use crate::kernels::{Isa, widen_halves};
use crate::rope::RotateRows;
use crate::rows::Rows;
use crate::vectorize::vectorized;

/// Values below which a write runs on the calling thread (decode).
const TASK_VALUES: usize = 16_384;

/// A value a KV cache buffer stores. Everything is computed in f32: an f16 cache rounds the
/// keys (after rotation) and values once, as they are written, and widens them as they are read.
pub trait CacheValue: Copy + Send + Sync + 'static {
    /// The values themselves when they are f32 (read in place), else `None`.
    fn as_f32(values: &[Self]) -> Option<&[f32]>;
    /// The bits of the values when they are f16 (widened by the kernels as they load them),
    /// else `None`.
    fn as_halves(values: &[Self]) -> Option<&[u16]>;
    /// [`CacheValue::as_f32`], to be written.
    fn as_f32_mut(values: &mut [Self]) -> Option<&mut [f32]>;
    /// `dst[i] = src[i]` as f32 (exact).
    fn widen(src: &[Self], dst: &mut [f32]);
    /// `dst[i] = src[i]` rounded to this type (to nearest, ties to even).
    fn narrow(src: &[f32], dst: &mut [Self]);
}

impl CacheValue for f32 {
    #[inline(always)]
    fn as_f32(values: &[Self]) -> Option<&[f32]> {
        Some(values)
    }

    #[inline(always)]
    fn as_halves(_: &[Self]) -> Option<&[u16]> {
        None
    }

    #[inline(always)]
    fn as_f32_mut(values: &mut [Self]) -> Option<&mut [f32]> {
        Some(values)
    }

    #[inline(always)]
    fn widen(src: &[Self], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }

    fn narrow(src: &[f32], dst: &mut [Self]) {
        dst.copy_from_slice(src);
    }
}

impl CacheValue for f16 {
    #[inline(always)]
    fn as_f32(_: &[Self]) -> Option<&[f32]> {
        None
    }

    #[inline(always)]
    fn as_halves(values: &[Self]) -> Option<&[u16]> {
        Some(values.reinterpret_cast())
    }

    fn as_f32_mut(_: &mut [Self]) -> Option<&mut [f32]> {
        None
    }

    /// Through the kernels' `vcvtph2ps` (`half`'s slice conversion calls an F16C function per
    /// eight values, which cost more than the reads it saves).
    #[inline(always)]
    fn widen(src: &[Self], dst: &mut [f32]) {
        let isa = Isa::selected().unwrap_or(Isa::Scalar);
        widen_halves(isa, src.reinterpret_cast(), dst);
    }

    fn narrow(src: &[f32], dst: &mut [Self]) {
        dst.convert_from_f32_slice(src);
    }
}

/// Writes the rows of `new` (`[batch, heads, len, dim]` as rows, read where they lie) into
/// `cache` (`[batch, heads, capacity, dim]`, contiguous) at positions `start..start + len` of
/// each sequence: rotated as [`crate::rope::rotate_half`] rotates them (same bits) when
/// `tables` (`cos`, `sin`: `[len, dim]`) are given, else copied; then rounded to the cache's
/// type.
///
/// # Panics
/// If the lengths do not fit together or `start + len > capacity`: callers check shapes.
pub fn write_positions<E: CacheValue>(
    cache: &mut [E],
    capacity: usize,
    new: &Rows<'_>,
    start: usize,
    tables: Option<(&[f32], &[f32])>,
) {
    let dim = new.width();
    let sequences = cache.len() / (capacity * dim).max(1);
    assert!(dim > 0 && cache.len() == sequences * capacity * dim);
    assert!(new.count().is_multiple_of(sequences.max(1)));
    let len = new.count() / sequences.max(1);
    assert!(
        start + len <= capacity,
        "the new positions must fit the cache"
    );
    if let Some((cos, sin)) = tables {
        assert!(cos.len() == len * dim && sin.len() == cos.len() && dim.is_multiple_of(2));
    }
    let write = |(sequence, buffer): (usize, &mut [E])| {
        let first_row = sequence * len;
        let stored = &mut buffer[start * dim..(start + len) * dim];
        // An f16 cache gets the f32 rows through a buffer, rounded as they are stored.
        let mut widened = Vec::new();
        let y = match E::as_f32_mut(stored) {
            Some(y) => y,
            None => {
                widened.resize(len * dim, 0.0);
                &mut widened[..]
            }
        };
        match tables {
            Some((cos, sin)) => vectorized(RotateRows {
                y,
                x: new,
                cos,
                sin,
                first_row,
            }),
            None => {
                for (y, x) in y.chunks_exact_mut(dim).zip(new.from_row(first_row)) {
                    y.copy_from_slice(x);
                }
            }
        }
        if !widened.is_empty() {
            E::narrow(&widened, &mut buffer[start * dim..(start + len) * dim]);
        }
    };
    let sequences = cache.chunks_exact_mut(capacity * dim).enumerate();
    if new.count() * dim <= TASK_VALUES {
        sequences.for_each(write);
    } else {
        cache
            .par_chunks_exact_mut(capacity * dim)
            .enumerate()
            .for_each(write);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rope::rotate_half;

    /// Positions `start..start + len` of every sequence hold the (rotated) rows, read through
    /// a swapped view; everything else is untouched.
    #[test]
    fn new_rows_land_at_their_positions_and_nothing_else_moves() {
        let (batch, heads, capacity, dim) = (2, 3, 9, 6);
        for (start, len) in [(0, 9), (4, 3), (8, 1), (0, 600)] {
            let (capacity, len) = if len > capacity {
                (len, len)
            } else {
                (capacity, len)
            };
            // `new` as a `[batch, len, heads, dim]` buffer viewed as `[batch, heads, len, dim]`.
            let stored: Vec<f32> = (0..batch * len * heads * dim)
                .map(|i| (i % 37) as f32 * 0.25 - 3.0)
                .collect();
            let view = || {
                let strides = vec![len * heads * dim, dim, heads * dim];
                Rows::strided(&stored[..], 0, vec![batch, heads, len], strides, dim).unwrap()
            };
            let cos: Vec<f32> = (0..len * dim).map(|i| (i as f32 * 0.3).cos()).collect();
            let sin: Vec<f32> = (0..len * dim).map(|i| (i as f32 * 0.3).sin()).collect();
            let rotated = rotate_half(&view(), &cos, &sin);
            let plain: Vec<f32> = view().from_row(0).flatten().copied().collect();
            for (tables, want) in [(Some((&cos[..], &sin[..])), &rotated), (None, &plain)] {
                let before: Vec<f32> = (0..batch * heads * capacity * dim)
                    .map(|i| -(i as f32))
                    .collect();
                let mut cache = before.clone();
                write_positions(&mut cache, capacity, &view(), start, tables);
                // An f16 cache holds the same values rounded, and is untouched elsewhere too.
                let mut halves: Vec<f16> = before.iter().map(|&v| f16::from_f32(v)).collect();
                write_positions(&mut halves, capacity, &view(), start, tables);
                for (i, (&got, &old)) in cache.iter().zip(&before).enumerate() {
                    let (sequence, position) = (i / (capacity * dim), i / dim % capacity);
                    let expected = if (start..start + len).contains(&position) {
                        want[(sequence * len + position - start) * dim + i % dim]
                    } else {
                        old
                    };
                    assert_eq!(got, expected, "start {start}, len {len}, value {i}");
                    assert_eq!(halves[i], f16::from_f32(expected), "f16, value {i}");
                }
            }
        }
    }
}
