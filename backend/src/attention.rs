//! Causal attention of new positions over a key/value cache, one pass per query row.
//!
//! Burn's formulation (two batched matmuls, a mask tensor, a softmax and the copies that make
//! the cache's keys contiguous) was a tenth of a decode step at 2 threads: the matmuls are
//! sixteen tiny products per layer. Here each row computes its scores, softmax and weighted sum
//! of values straight from the cache buffers, only over the positions it may see.

use rayon::prelude::*;

use crate::glu::exp_non_positive;
use crate::vectorize::{FloatLoop, lane_dot, lane_sum, vectorized};

/// Most query rows per rayon task (a decode step has one row per query head, so its tasks get
/// fewer, enough for every thread to share the keys and values to stream; a prefill's tasks
/// get many, so each transposes a head's keys once for many rows).
const TASK_ROWS: usize = 128;
/// Multiply-adds below which everything runs on the calling thread (the first few positions).
const INLINE_WORK: usize = 1 << 14;
/// Query rows per key/value head from which scores are computed against the keys transposed
/// (sixteen keys per vector, no reduction per score) rather than as one dot product per key
/// (one reduction each, but no transposing): prefill, not decode.
const TRANSPOSED_ROWS: usize = 8;

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
/// Burn's ops do; the order of the sums depends only on the shape (sixteen lanes per dot
/// product, or one column of keys after another), so last bits may differ from a matrix product.
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
        let all_rows = batch * kv_heads * rows;
        let task_rows = all_rows
            .div_ceil(4 * rayon::current_num_threads())
            .min(TASK_ROWS);
        out.par_chunks_mut(task_rows * dim)
            .enumerate()
            .for_each(|(task, out)| run(task * task_rows, out));
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
        let transposed = rows >= TRANSPOSED_ROWS;
        let mut scores = Vec::with_capacity(start + len);
        // The keys of `kt_head`, transposed (see `transpose`).
        let (mut kt, mut kt_head) = (Vec::new(), usize::MAX);
        for (i, out) in self.out.chunks_exact_mut(dim).enumerate() {
            let row = self.first + i;
            let (head, j) = (row / rows, row % rows);
            let seen = start + j % len + 1;
            let keys = &self.keys[head * capacity * dim..][..(start + len) * dim];
            let values = &self.values[head * capacity * dim..][..seen * dim];
            let query = &self.q[row * dim..][..dim];
            scores.clear();
            if transposed {
                if kt_head != head {
                    transpose(keys, dim, &mut kt);
                    kt_head = head;
                }
                column_scores(query, &kt, seen, &mut scores);
                for score in &mut scores {
                    *score *= self.scale;
                }
            } else {
                // A plain loop: an iterator adapter's closure would be a call compiled without
                // the path's features.
                for key in keys.chunks_exact(dim).take(seen) {
                    scores.push(lane_dot(query, key) * self.scale);
                }
            }
            let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
            for s in &mut scores {
                *s = exp_non_positive(*s - max);
            }
            let total = lane_sum(&scores);
            for s in &mut scores {
                *s /= total;
            }
            weighted_sum(&scores, values, out);
        }
    }
}

/// Columns a pass of [`column_scores`] and [`weighted_sum`] keeps in registers: four vectors
/// of sixteen, four independent chains of additions.
const PASS: usize = 64;

/// `scores[p] = sum_c query[c] * kt[c][p]` for `p < seen` (`kt` is `[dim, stride]`, `stride` a
/// multiple of [`PASS`]), each sum in order of `c`, sixty-four positions per pass.
#[inline(always)]
fn column_scores(query: &[f32], kt: &[f32], seen: usize, scores: &mut Vec<f32>) {
    let stride = kt.len() / query.len();
    scores.resize(seen.next_multiple_of(PASS), 0.0);
    for (p0, scores) in scores.chunks_exact_mut(PASS).enumerate() {
        let mut acc = [0f32; PASS];
        for (&q, column) in query.iter().zip(kt.chunks_exact(stride)) {
            accumulate(&mut acc, q, &column[p0 * PASS..][..PASS]);
        }
        scores.copy_from_slice(&acc);
    }
    scores.truncate(seen);
}

/// `out[c] = sum_p probabilities[p] * values[p][c]`, each sum in order of `p`: sixty-four
/// columns per pass, then sixteen (head widths are 64, 96, 100, 128), then one.
#[inline(always)]
fn weighted_sum(probabilities: &[f32], values: &[f32], out: &mut [f32]) {
    let dim = out.len();
    let wide = weighted_passes::<PASS>(probabilities, values, dim, out);
    let narrow = weighted_passes::<16>(probabilities, values, dim, &mut out[wide..]);
    weighted_passes::<1>(probabilities, values, dim, &mut out[wide + narrow..]);
}

/// [`weighted_sum`] for the whole passes of `N` columns in `out` (the last columns of each
/// value row), returning how many columns they covered.
#[inline(always)]
fn weighted_passes<const N: usize>(
    probabilities: &[f32],
    values: &[f32],
    dim: usize,
    out: &mut [f32],
) -> usize {
    let offset = dim - out.len();
    let mut covered = 0;
    for (pass, out) in out.chunks_exact_mut(N).enumerate() {
        let mut acc = [0f32; N];
        for (&probability, value) in probabilities.iter().zip(values.chunks_exact(dim)) {
            accumulate(&mut acc, probability, &value[offset + pass * N..][..N]);
        }
        out.copy_from_slice(&acc);
        covered += N;
    }
    covered
}

/// `acc += weight * x` over one pass. Indexing a fixed-size array with constant bounds lets the
/// compiler unroll it and keep `acc` in registers (over iterators it stayed on the stack).
#[inline(always)]
fn accumulate<const N: usize>(acc: &mut [f32; N], weight: f32, x: &[f32]) {
    let x: &[f32; N] = x.try_into().expect("one pass of values");
    for i in 0..N {
        acc[i] += weight * x[i];
    }
}

/// `kt[c * stride + p] = keys[p * dim + c]`: the keys of one head as columns, zero-padded to
/// a `stride` that is a multiple of [`PASS`].
#[inline(always)]
fn transpose(keys: &[f32], dim: usize, kt: &mut Vec<f32>) {
    let stride = (keys.len() / dim).next_multiple_of(PASS);
    kt.clear();
    kt.resize(stride * dim, 0.0);
    for (p, key) in keys.chunks_exact(dim).enumerate() {
        for (c, &k) in key.iter().enumerate() {
            kt[c * stride + p] = k;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Isa;
    use crate::vectorize::vectorized_on;

    /// Every path gives the same bits, and the last row of the last head matches the formula
    /// in f64.
    fn check(rows: usize, dim: usize, len: usize) {
        let (batch, kv_heads, capacity, start) = (2, 3, 80, 63);
        let shape = AttentionShape {
            batch,
            kv_heads,
            rows,
            dim,
            capacity,
            start,
            len,
        };
        let heads = batch * kv_heads;
        let value = |i: usize| ((i * 7919) % 211) as f32 / 50.0 - 2.1;
        let q: Vec<f32> = (0..heads * rows * dim).map(value).collect();
        let keys: Vec<f32> = (0..heads * capacity * dim).map(|i| value(i + 5)).collect();
        let values: Vec<f32> = (0..keys.len()).map(|i| value(i + 9)).collect();
        let run = |isa| {
            let mut out = vec![0f32; q.len()];
            let (q, keys, values) = (&q[..], &keys[..], &values[..]);
            let scale = (dim as f64).powf(-0.5) as f32;
            let all = AttendRows {
                q,
                keys,
                values,
                shape,
                scale,
                first: 0,
                out: &mut out,
            };
            vectorized_on(isa, all);
            out
        };
        let want = run(Isa::Scalar);
        for isa in Isa::supported() {
            assert_eq!(run(isa), want, "{isa}, rows {rows}, dim {dim}");
        }
        assert_eq!(cached_attention(&q, &keys, &values, shape), want);
        let (head, row) = (heads - 1, rows - 1);
        let seen = start + row % len + 1;
        let query = &q[(head * rows + row) * dim..][..dim];
        let at = |table: &[f32], p: usize, c: usize| table[(head * capacity + p) * dim + c] as f64;
        let scores: Vec<f64> = (0..seen)
            .map(|p| {
                let dot: f64 = (0..dim).map(|c| query[c] as f64 * at(&keys, p, c)).sum();
                dot / (dim as f64).sqrt()
            })
            .collect();
        let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let total: f64 = weights.iter().sum();
        for c in 0..dim {
            let exact: f64 = (0..seen)
                .map(|p| weights[p] / total * at(&values, p, c))
                .sum();
            let got = want[(head * rows + row) * dim + c] as f64;
            assert!(
                (got - exact).abs() < 1e-5,
                "rows {rows}, dim {dim}, {c}: {got} vs {exact}"
            );
        }
    }

    #[test]
    fn dot_product_scores_on_every_path() {
        // One row per query head in decode; a grouped decode of two heads.
        check(1, 100, 1);
        check(2, 37, 1);
    }

    #[test]
    fn column_scores_on_every_path() {
        // Rows of several heads and positions, head widths around the passes of 64 and 16.
        check(12, 37, 4);
        check(17, 96, 17);
        check(8, 128, 2);
    }
}
