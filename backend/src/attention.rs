//! Causal attention of new positions over a key/value cache, one pass per query row.
//!
//! Burn's formulation (two batched matmuls, a mask tensor, a softmax and the copies that make
//! the cache's keys contiguous) was a tenth of a decode step at 2 threads: the matmuls are
//! sixteen tiny products per layer. Here each row computes its scores, softmax and weighted sum
//! of values straight from the cache buffers, only over the positions it may see.

use rayon::prelude::*;

use crate::glu::exp_non_positive;
use crate::vectorize::{FloatLoop, lane_dot, lane_sum, vectorized};

/// Query rows per rayon task.
const TASK_ROWS: usize = 16;
/// Multiply-adds below which everything runs on the calling thread (decode at short contexts).
const INLINE_WORK: usize = 1 << 16;

/// The dimensions of one [`cached_attention`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    /// Independent sequences.
    pub batch: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Query rows per key/value head: the query heads sharing it, each with `len` positions.
    pub rows: usize,
    /// Width of a head.
    pub dim: usize,
    /// Positions the cache buffers hold.
    pub capacity: usize,
    /// Position of the first new query.
    pub start: usize,
    /// New positions; query row `j` is at position `start + j % len`.
    pub len: usize,
}

/// `softmax(q k^T * dim^-0.5, masked to positions <= the row's) v` for every query row.
///
/// - `q`: `[batch, kv_heads, rows, dim]`
/// - `keys`, `values`: `[batch, kv_heads, capacity, dim]`, positions `0..start + len` filled
/// - output: `[batch, kv_heads, rows, dim]`
///
/// Scores are scaled after the dot product and the softmax divides before the weighted sum, as
/// Burn's ops do; sums run in sixteen lanes, so last bits may differ from a matrix product.
///
/// # Panics
/// If the lengths do not match `shape` or `start + len > capacity`: callers check shapes first.
pub fn cached_attention(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    shape: AttentionShape,
) -> Vec<f32> {
    let AttentionShape {
        batch,
        kv_heads,
        rows,
        dim,
        capacity,
        start,
        len,
    } = shape;
    assert!(len > 0 && rows.is_multiple_of(len) && start + len <= capacity);
    assert_eq!(
        q.len(),
        batch * kv_heads * rows * dim,
        "queries must match the shape"
    );
    assert_eq!(
        keys.len(),
        batch * kv_heads * capacity * dim,
        "keys must match the shape"
    );
    assert_eq!(values.len(), keys.len(), "values must match the keys");
    let mut out = vec![0f32; q.len()];
    if out.is_empty() {
        return out;
    }
    let scale = (dim as f64).powf(-0.5) as f32;
    let run = |first: usize, out: &mut [f32]| {
        vectorized(AttendRows {
            q,
            keys,
            values,
            shape,
            scale,
            first,
            out,
        })
    };
    if q.len() * (start + len) <= INLINE_WORK {
        run(0, &mut out);
    } else {
        out.par_chunks_mut(TASK_ROWS * dim)
            .enumerate()
            .for_each(|(task, out)| run(task * TASK_ROWS, out));
    }
    out
}

/// Rows `first..` of all `batch * kv_heads * rows` query rows, into `out`.
struct AttendRows<'a> {
    q: &'a [f32],
    keys: &'a [f32],
    values: &'a [f32],
    shape: AttentionShape,
    scale: f32,
    first: usize,
    out: &'a mut [f32],
}

impl FloatLoop for AttendRows<'_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let AttentionShape {
            rows,
            dim,
            capacity,
            start,
            len,
            ..
        } = self.shape;
        let mut scores = Vec::with_capacity(start + len);
        for (i, out) in self.out.chunks_exact_mut(dim).enumerate() {
            let row = self.first + i;
            let (head, j) = (row / rows, row % rows);
            let seen = start + j % len + 1;
            let keys = &self.keys[head * capacity * dim..][..seen * dim];
            let values = &self.values[head * capacity * dim..][..seen * dim];
            let query = &self.q[row * dim..][..dim];
            scores.clear();
            scores.extend(
                keys.chunks_exact(dim)
                    .map(|key| lane_dot(query, key) * self.scale),
            );
            let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
            for s in &mut scores {
                *s = exp_non_positive(*s - max);
            }
            let total = lane_sum(&scores);
            out.fill(0.0);
            for (&weight, value) in scores.iter().zip(values.chunks_exact(dim)) {
                let probability = weight / total;
                for (o, &v) in out.iter_mut().zip(value) {
                    *o += probability * v;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Isa;
    use crate::vectorize::vectorized_on;

    #[test]
    fn every_path_gives_the_same_bits_and_follows_the_formula() {
        let shape = AttentionShape {
            batch: 2,
            kv_heads: 3,
            rows: 6,
            dim: 37,
            capacity: 11,
            start: 6,
            len: 3,
        };
        let value = |i: usize| ((i * 7919) % 211) as f32 / 50.0 - 2.1;
        let q: Vec<f32> = (0..2 * 3 * 6 * 37).map(value).collect();
        let keys: Vec<f32> = (0..2 * 3 * 11 * 37).map(|i| value(i + 5)).collect();
        let values: Vec<f32> = (0..keys.len()).map(|i| value(i + 9)).collect();
        let run = |isa| {
            let mut out = vec![0f32; q.len()];
            let (q, keys, values) = (&q[..], &keys[..], &values[..]);
            let scale = (37f64).powf(-0.5) as f32;
            vectorized_on(
                isa,
                AttendRows {
                    q,
                    keys,
                    values,
                    shape,
                    scale,
                    first: 0,
                    out: &mut out,
                },
            );
            out
        };
        let want = run(Isa::Scalar);
        for isa in Isa::supported() {
            assert_eq!(run(isa), want, "{isa}");
        }
        assert_eq!(cached_attention(&q, &keys, &values, shape), want);
        // Row 4 of head 5 is at position 6 + 4 % 3 = 7: it sees positions 0..=7, in f64.
        let (head, row, dim) = (5, 4, 37);
        let query = &q[(head * 6 + row) * dim..][..dim];
        let scores: Vec<f64> = (0..8)
            .map(|p| {
                let key = &keys[(head * 11 + p) * dim..][..dim];
                query
                    .iter()
                    .zip(key)
                    .map(|(&a, &b)| a as f64 * b as f64)
                    .sum::<f64>()
                    / (dim as f64).sqrt()
            })
            .collect();
        let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let total: f64 = weights.iter().sum();
        for i in 0..dim {
            let exact: f64 = (0..8)
                .map(|p| weights[p] / total * values[(head * 11 + p) * dim + i] as f64)
                .sum();
            let got = want[(head * 6 + row) * dim + i] as f64;
            assert!((got - exact).abs() < 1e-5, "{i}: {got} vs {exact}");
        }
    }
}
