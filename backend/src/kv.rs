//! New positions written straight into a KV cache buffer, keys rotated on the way.
//!
//! Appending through Burn took the rotated keys as a tensor of their own and copied them into
//! the cache, and the values (a view with swapped axes) through a strided copy, both on one
//! thread: 1.2% of a 1-thread 700M prefill in `perf`, with a 2-thread prefill's other thread
//! waiting meanwhile.

use rayon::prelude::*;

use crate::rope::RotateRows;
use crate::rows::Rows;
use crate::vectorize::vectorized;

/// Values below which a write runs on the calling thread (decode).
const TASK_VALUES: usize = 16_384;

/// Writes the rows of `new` (`[batch, heads, len, dim]` as rows, read where they lie) into
/// `cache` (`[batch, heads, capacity, dim]`, contiguous) at positions `start..start + len` of
/// each sequence: rotated as [`crate::rope::rotate_half`] rotates them (same bits) when
/// `tables` (`cos`, `sin`: `[len, dim]`) are given, else copied.
///
/// # Panics
/// If the lengths do not fit together or `start + len > capacity`: callers check shapes.
pub fn write_positions(
    cache: &mut [f32],
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
    let write = |(sequence, buffer): (usize, &mut [f32])| {
        let y = &mut buffer[start * dim..(start + len) * dim];
        let first_row = sequence * len;
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
                for (i, (&got, &old)) in cache.iter().zip(&before).enumerate() {
                    let (sequence, position) = (i / (capacity * dim), i / dim % capacity);
                    let expected = if (start..start + len).contains(&position) {
                        want[(sequence * len + position - start) * dim + i % dim]
                    } else {
                        old
                    };
                    assert_eq!(got, expected, "start {start}, len {len}, value {i}");
                }
            }
        }
    }
}
