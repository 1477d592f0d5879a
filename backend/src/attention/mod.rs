//! Causal attention of new positions over a key/value cache, one pass per query row.
//!
//! Burn's formulation (two batched matmuls, a mask tensor, a softmax and the copies that make
//! the cache's keys contiguous) was a tenth of a decode step at 2 threads: the matmuls are
//! sixteen tiny products per layer. Here each row computes its scores, softmax and weighted sum
//! of values straight from the cache buffers, only over the positions it may see; in prefill,
//! blocks of four rows of a head do so together, sharing each load of keys and values.

use std::ops::Range;

use rayon::prelude::*;

use crate::glu::exp_non_positive;
use crate::kernels::Isa;
use crate::kv::CacheValue;
use crate::vectorize::{FloatLoop, lane_max, lane_sum, vectorized_on};
use dispatch::{block_scores, block_weighted_sum, row_scores, row_weighted_sum, transpose};

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod dispatch;

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

impl AttentionShape {
    /// `[batch, len, heads, dim]`: the position-major shape of the output.
    pub fn output_shape(&self) -> [usize; 4] {
        let heads = self.kv_heads * self.rows / self.len;
        [self.batch, self.len, heads, self.dim]
    }

    /// The row of the position-major output that query row `i` (of all
    /// `batch * kv_heads * rows`) fills.
    fn output_row(&self, i: usize) -> usize {
        let [_, len, heads, _] = self.output_shape();
        let rows = self.rows;
        let (b, head, j) = (
            i / (self.kv_heads * rows),
            i / rows % self.kv_heads,
            i % rows,
        );
        (b * len + j % len) * heads + head * rows / len + j / len
    }

    /// The rows of `out` (position-major) in the order of the query rows that fill them, so
    /// tasks taking runs of query rows get disjoint slices wherever those rows fall.
    fn output_rows<'o>(&self, out: &'o mut [f32]) -> Vec<&'o mut [f32]> {
        let mut slots: Vec<Option<&mut [f32]>> = out.chunks_exact_mut(self.dim).map(Some).collect();
        (0..slots.len())
            .map(|i| {
                slots[self.output_row(i)]
                    .take()
                    .expect("each output row belongs to one query row")
            })
            .collect()
    }
}

/// `softmax(q k^T * dim^-0.5, masked to positions <= the row's) v` for every query row.
///
/// - `q`: `[batch, kv_heads, rows, dim]`
/// - `keys`, `values`: `[batch, kv_heads, capacity, dim]`, positions `0..start + len` filled
/// - output: `[batch, len, heads, dim]` with `heads = kv_heads * rows / len`: query row `j` of
///   key/value head `h` is head `h * rows / len + j / len` at position `j % len`. Position-major,
///   as the output projection reads it, so no transposing copy follows (in decode, `len = 1`,
///   both orders are the same).
///
/// Scores are scaled after the dot product and the softmax divides before the weighted sum, as
/// Burn's ops do; the order of the sums depends only on the shape (sixteen lanes per dot
/// product, or one column of keys after another), so last bits may differ from a matrix product.
/// An f16 cache gives the bits of an f32 cache holding the same values: prefill rows run on a
/// whole head widened, a decode row's AVX-512 kernels widen each value as they load it, and
/// the other paths widen a few positions at a time.
///
/// # Panics
/// If the lengths do not match `shape` or `start + len > capacity`: callers check shapes first.
pub fn cached_attention<E: CacheValue>(
    q: &[f32],
    keys: &[E],
    values: &[E],
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
    let mut by_query_row = shape.output_rows(&mut out);
    let isa = Isa::selected().unwrap_or(Isa::Scalar);
    let attention = Attention::new(q, keys, values, shape, isa);
    let run = |first: usize, out: &mut [&mut [f32]]| {
        vectorized_on(
            isa,
            AttendRows {
                attention,
                first,
                out,
            },
        )
    };
    if q.len() * (start + len) <= INLINE_WORK {
        run(0, &mut by_query_row);
    } else {
        let task_rows = by_query_row
            .len()
            .div_ceil(4 * rayon::current_num_threads())
            .min(TASK_ROWS);
        by_query_row
            .par_chunks_mut(task_rows)
            .enumerate()
            .for_each(|(task, out)| run(task * task_rows, out));
    }
    drop(by_query_row);
    out
}

/// The inputs of one [`cached_attention`] call.
struct Attention<'a, E> {
    q: &'a [f32],
    keys: &'a [E],
    values: &'a [E],
    shape: AttentionShape,
    scale: f32,
    /// The path the float loops are compiled for, and the key loops take.
    isa: Isa,
}

// Not derived: a derive would ask `E: Copy`, which the references do not need.
impl<E> Clone for Attention<'_, E> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<E> Copy for Attention<'_, E> {}

impl<'a, E> Attention<'a, E> {
    /// The inputs, scores scaled by `dim^-0.5`, computed on the path of `isa`.
    fn new(q: &'a [f32], keys: &'a [E], values: &'a [E], shape: AttentionShape, isa: Isa) -> Self {
        let scale = (shape.dim as f64).powf(-0.5) as f32;
        Self {
            q,
            keys,
            values,
            shape,
            scale,
            isa,
        }
    }
}

/// Rows `first..` of all `batch * kv_heads * rows` query rows, into `out` (one slice each).
struct AttendRows<'a, 'b, 'c, E> {
    attention: Attention<'a, E>,
    first: usize,
    out: &'b mut [&'c mut [f32]],
}

/// What a task reuses from row to row: the keys of `kt_head` transposed, the scores, the keys
/// and values of `widened_head` in f32 (an f16 cache's), a few positions' of them (`chunk`)
/// and a decode row's sums before the latest of those (`carried`).
struct Scratch {
    kt: Vec<f32>,
    kt_head: usize,
    scores: [Vec<f32>; BLOCK_ROWS],
    widened: [Vec<f32>; 2],
    widened_head: usize,
    chunk: Vec<f32>,
    carried: Vec<f32>,
}

impl<E: CacheValue> FloatLoop for AttendRows<'_, '_, '_, E> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let Self {
            attention,
            first,
            out,
        } = self;
        let rows = attention.shape.rows;
        let mut scratch = Scratch {
            kt: Vec::new(),
            kt_head: usize::MAX,
            scores: Default::default(),
            widened: Default::default(),
            widened_head: usize::MAX,
            chunk: Vec::new(),
            carried: Vec::new(),
        };
        let (mut row, mut rest) = (first, out);
        while !rest.is_empty() {
            // This head's rows in the task, in blocks (prefill) or one by one (decode).
            let head_rows = (rows - row % rows).min(rest.len());
            let (mine, tail) = rest.split_at_mut(head_rows);
            for block in mine.chunks_mut(BLOCK_ROWS) {
                if rows >= TRANSPOSED_ROWS && block.len() == BLOCK_ROWS {
                    attention.attend::<BLOCK_ROWS>(row, block, &mut scratch);
                    row += BLOCK_ROWS;
                } else {
                    for out in block.chunks_exact_mut(1) {
                        attention.attend::<1>(row, out, &mut scratch);
                        row += 1;
                    }
                }
            }
            rest = tail;
        }
    }
}

impl<E: CacheValue> Attention<'_, E> {
    /// Query rows `first..first + R` (one head's) into `out` (`R` rows).
    #[inline(always)]
    fn attend<const R: usize>(&self, first: usize, out: &mut [&mut [f32]], scratch: &mut Scratch) {
        let AttentionShape {
            rows,
            dim,
            capacity,
            start,
            len,
            ..
        } = self.shape;
        let head = first / rows;
        let mut seen = [0; R];
        for (r, seen) in seen.iter_mut().enumerate() {
            *seen = start + (first + r) % rows % len + 1;
        }
        let most = seen.iter().fold(0, |m, &s| m.max(s));
        let filled = (start + len) * dim;
        let keys = &self.keys[head * capacity * dim..][..filled];
        let values = &self.values[head * capacity * dim..][..filled];
        let queries = &self.q[first * dim..][..R * dim];
        let Scratch {
            kt,
            kt_head,
            scores,
            widened,
            widened_head,
            chunk,
            carried,
        } = scratch;
        let scores = &mut scores[..R];
        if rows < TRANSPOSED_ROWS {
            // One row (decode): one dot product per key, reading the cache as it is stored.
            let (probabilities, keys, values) =
                (&mut scores[0], &keys[..most * dim], &values[..most * dim]);
            probabilities.clear();
            probabilities.resize(most, 0.0);
            row_scores(self.isa, queries, keys, self.scale, probabilities, chunk);
            softmax(probabilities);
            row_weighted_sum(self.isa, probabilities, values, out, chunk, carried);
            return;
        }
        // Rows against transposed keys (a prefill's rows share them). An f32 cache is read in
        // place, an f16 one widened a whole head at a time.
        let (keys, values) = match (E::as_f32(keys), E::as_f32(values)) {
            (Some(keys), Some(values)) => (keys, values),
            _ => {
                let [wide_keys, wide_values] = widened;
                if *widened_head != head {
                    for (wide, stored) in [(&mut *wide_keys, keys), (&mut *wide_values, values)] {
                        wide.resize(filled, 0.0);
                        E::widen(stored, wide);
                    }
                    *widened_head = head;
                }
                (&wide_keys[..], &wide_values[..])
            }
        };
        if *kt_head != head {
            transpose(self.isa, keys, dim, kt);
            *kt_head = head;
        }
        let end = most.next_multiple_of(TAIL_PASS);
        column_scores::<R>(self.isa, queries, kt, end, self.scale, scores);
        // The positions past a row's own get -inf, so exp gives them 0 and the row's max and
        // sum are those of its own positions (lane_sum's tail adds into the lanes as the
        // padding's +0.0 does): each softmax runs over whole vectors, with no scalar tail.
        for (scores, &seen) in scores.iter_mut().zip(&seen) {
            let scores = &mut scores[..end];
            scores[seen..].fill(f32::NEG_INFINITY);
            softmax(scores);
        }
        let probabilities: [&[f32]; R] = std::array::from_fn(|r| &scores[r][..seen[r]]);
        let values = &values[..most * dim];
        if !block_weighted_sum::<R>(self.isa, probabilities, values, out) {
            weighted_sum::<R>(&probabilities, values, out, None);
        }
    }
}

/// `softmax(scores)` in place: `exp(s - max)`, each divided by their sum.
#[inline(always)]
fn softmax(scores: &mut [f32]) {
    let max = lane_max(scores);
    for s in scores.iter_mut() {
        *s = exp_non_positive(*s - max);
    }
    let total = lane_sum(scores);
    for s in scores.iter_mut() {
        *s /= total;
    }
}

/// Columns a pass of [`column_scores`] and [`weighted_sum`] keeps in registers for a single
/// query row: four vectors of sixteen, four independent chains of additions.
const PASS: usize = 64;
/// Columns a pass of [`weighted_sum`] keeps in registers for a single query row (decode).
const DECODE_PASS: usize = 96;
/// Positions of the narrow passes that finish a block's scores: a causal block's positions
/// end anywhere, and rounding them up to a whole wide pass computed a third more scores than
/// a 128-token prefill needs.
const TAIL_PASS: usize = 16;
/// Query rows of one head that share each load of keys and values in prefill: the transposed
/// keys and the values of a head are tens of kilobytes, read from L2 once per block of rows
/// rather than once per row (attention was 7% of a 700M prefill, most of it those loads).
const BLOCK_ROWS: usize = 4;

/// `scores[r][p] = (sum_c queries[r][c] * kt[c][p]) * scale` for the `R` rows of `queries` and
/// `p < end` (a multiple of [`TAIL_PASS`]; `kt` is `[dim, stride]`, `stride` a multiple of
/// [`PASS`]), each sum in order of `c`: the path's kernel ([`block_scores`]), or for a single
/// row sixty-four positions per pass, then sixteen, and for a block of rows sixteen per pass,
/// scaled as each pass stores its sums. The rows' buffers only grow: every position below `end`
/// is written.
#[inline(always)]
fn column_scores<const R: usize>(
    isa: Isa,
    queries: &[f32],
    kt: &[f32],
    end: usize,
    scale: f32,
    scores: &mut [Vec<f32>],
) {
    for scores in scores.iter_mut() {
        if scores.len() < end {
            scores.resize(end, 0.0);
        }
    }
    if block_scores::<R>(isa, queries, kt, end, scale, scores) {
        return;
    }
    // A block of rows in narrow passes only: four rows of sixteen are eight AVX2 registers of
    // accumulators, four of 64 were 32, which the compiler kept on the stack (with the same
    // change in `weighted_sum`, prefill attention took a quarter to two fifths less time on a
    // Zen 1: *Twenty-seventh session* in `benches/README.md`). Each sum runs in the same order
    // at any width: same bits.
    let wide = if R == 1 {
        score_passes::<PASS, R>(queries, kt, 0..end, scale, scores)
    } else {
        0
    };
    score_passes::<TAIL_PASS, R>(queries, kt, wide..end, scale, scores);
}

/// [`column_scores`] for the whole passes of `N` positions in `positions`, returning where
/// they stopped.
#[inline(always)]
fn score_passes<const N: usize, const R: usize>(
    queries: &[f32],
    kt: &[f32],
    positions: Range<usize>,
    scale: f32,
    scores: &mut [Vec<f32>],
) -> usize {
    let dim = queries.len() / R;
    let stride = kt.len() / dim;
    let stop = positions.start + positions.len() / N * N;
    for p0 in (positions.start..stop).step_by(N) {
        let mut acc = [[0f32; N]; R];
        for (c, column) in kt.chunks_exact(stride).enumerate() {
            let column = &column[p0..][..N];
            // The rows' values for this column first: indexed inside the loop below, LLVM
            // vectorized the 16-position pass across columns with gathers (15% of a prefill).
            let weights: [f32; R] = std::array::from_fn(|r| queries[r * dim + c]);
            for (acc, weight) in acc.iter_mut().zip(weights) {
                accumulate(acc, weight, column);
            }
        }
        for (scores, acc) in scores.iter_mut().zip(&acc) {
            for (score, &sum) in scores[p0..][..N].iter_mut().zip(acc) {
                *score = sum * scale;
            }
        }
    }
    stop
}

/// `out[r][c] = sum_p probabilities[r][p] * values[p][c]` for the `R` rows (each over its own
/// positions), each sum in order of `p`: for a single row a first pass of 96 columns, then
/// sixty-four columns per pass, 32 and 16, for a block of rows passes of 16 (see
/// [`column_scores`]), and the last sixteen again for what is left (head widths are 64, 96,
/// 100, 128).
#[inline(always)]
fn weighted_sum<const R: usize>(
    probabilities: &[impl AsRef<[f32]>],
    values: &[f32],
    out: &mut [&mut [f32]],
    base: Option<[&[f32]; R]>,
) {
    let dim = out[0].len();
    let mut done = 0;
    if R == 1 {
        // A decode row keeps six chains in a pass of 96 (the 700M and 3B head widths): passes
        // of 64 and 32 one after the other each waited on the latency of their additions.
        done += weighted_passes::<DECODE_PASS, R>(probabilities, values, 0, out, base);
        done += weighted_passes::<PASS, R>(probabilities, values, done, out, base);
        done += weighted_passes::<32, R>(probabilities, values, done, out, base);
    }
    // A block of rows in passes of sixteen only, as in `column_scores`.
    done += weighted_passes::<16, R>(probabilities, values, done, out, base);
    if done < dim && dim >= 16 {
        // The last sixteen columns again, overlapping the passes before: the columns computed
        // twice get the same bits (same sums in the same order), and the few left over do not
        // take one latency-bound chain of scalar additions each (as long as the rest of a 3B
        // head's sum).
        weighted_passes::<16, R>(probabilities, values, dim - 16, out, base);
    } else {
        weighted_passes::<1, R>(probabilities, values, done, out, base);
    }
}

/// [`weighted_sum`] for the whole passes of `N` columns from column `offset` on, returning how
/// many columns they covered. The positions every row sees go through all rows together; the
/// few that only later rows see follow, per row, in order.
#[inline(always)]
fn weighted_passes<const N: usize, const R: usize>(
    probabilities: &[impl AsRef<[f32]>],
    values: &[f32],
    offset: usize,
    out: &mut [&mut [f32]],
    base: Option<[&[f32]; R]>,
) -> usize {
    let dim = out[0].len();
    let common = probabilities
        .iter()
        .fold(usize::MAX, |m, p| m.min(p.as_ref().len()));
    let passes = (dim - offset) / N;
    for column in (offset..offset + passes * N).step_by(N) {
        let mut acc = [[0f32; N]; R];
        if let Some(base) = base {
            for (acc, base) in acc.iter_mut().zip(base) {
                acc.copy_from_slice(&base[column..][..N]);
            }
        }
        for (p, value) in values.chunks_exact(dim).take(common).enumerate() {
            let value = &value[column..][..N];
            for (acc, probabilities) in acc.iter_mut().zip(probabilities) {
                accumulate(acc, probabilities.as_ref()[p], value);
            }
        }
        for ((acc, probabilities), out) in acc.iter_mut().zip(probabilities).zip(out.iter_mut()) {
            let later = values
                .chunks_exact(dim)
                .zip(probabilities.as_ref())
                .skip(common);
            for (value, &probability) in later {
                accumulate(acc, probability, &value[column..][..N]);
            }
            out[column..][..N].copy_from_slice(acc);
        }
    }
    passes * N
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

#[cfg(test)]
mod tests;
