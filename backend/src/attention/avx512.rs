//! AVX-512 path of the attention loops of [`super::dispatch`]: the same sums as the portable
//! loops, in the same order, reading an f16 cache as it is stored.

use std::arch::x86_64::*;

use super::dispatch::{RowLoops, Stored, by_count};
use crate::kernels::avx512::transpose_dwords;

/// The AVX-512 decode-row loops.
pub(super) struct Avx512;

/// Columns `0..dim / 16 * 16` of sixteen keys of `dim` floats: `kt[c * stride + t] =
/// keys[t * dim + c]`, transposed in registers (one scalar store per value was a tenth of a
/// prefill's attention). Returns how many columns it wrote.
///
/// # Safety
/// The CPU supports AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn transpose_keys(
    keys: &[f32],
    dim: usize,
    kt: &mut [f32],
    stride: usize,
) -> usize {
    let columns = dim / 16 * 16;
    assert!(keys.len() == 16 * dim && stride >= 16);
    if columns == 0 {
        return 0;
    }
    assert!(
        kt.len() >= (columns - 1) * stride + 16,
        "the columns must fit"
    );
    // SAFETY: sixteen rows of `4 * dim` bytes fill `keys`, each holding the `columns` read;
    // column `columns - 1` ends inside `kt`.
    unsafe {
        transpose_dwords(
            keys.as_ptr().cast(),
            4 * dim,
            columns,
            kt.as_mut_ptr().cast(),
            stride,
        )
    };
    columns
}

/// The values at `at` in the lanes of `mask` as f32, the other lanes +0.0.
///
/// # Safety
/// The CPU supports AVX-512F, BW and VL; the masked values are readable.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn load<S: Stored>(at: *const S, mask: __mmask16) -> __m512 {
    // SAFETY: masked loads touch only the lanes of `mask`, which the caller says are readable.
    unsafe {
        if S::HALF {
            _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, at.cast()))
        } else {
            _mm512_maskz_loadu_ps(mask, at.cast())
        }
    }
}

/// The mask of the first `n` (at most sixteen) lanes.
fn first_lanes(n: usize) -> __mmask16 {
    ((1u32 << n.min(16)) - 1) as u16
}

impl RowLoops for Avx512 {
    unsafe fn dot_scores<S: Stored>(
        queries: &[f32],
        keys: &[S],
        scale: f32,
        scores: &mut [f32],
    ) -> usize {
        // SAFETY: forwarded from the caller.
        unsafe { dot_scores(queries, keys, scale, scores) }
    }

    unsafe fn weighted_row<S: Stored>(
        probabilities: &[f32],
        values: &[S],
        out: &mut [f32],
    ) -> bool {
        // SAFETY: forwarded from the caller.
        unsafe { weighted_row(probabilities, values, out) };
        true
    }
}

/// `scores[p] = (queries · key p) * scale` for the keys of the leading whole groups of
/// sixteen in `keys` (one after another, `queries.len()` values each), summed as
/// [`crate::vectorize::lane_dot`] sums (sixteen lanes, the tail zero-padded, the lanes then
/// added in halvings), so the bits are the portable loop's on the keys as f32. Returns how
/// many it wrote.
///
/// A decode row's scores were one dot product per key, and per key the tail (a 3B head is 100
/// wide) went through the stack and the halvings took eight shuffles and additions: a tree of
/// 45 does the halvings of sixteen keys at once and the tail is a masked load.
///
/// # Safety
/// The CPU supports AVX-512F, BW and VL.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn dot_scores<S: Stored>(
    queries: &[f32],
    keys: &[S],
    scale: f32,
    scores: &mut [f32],
) -> usize {
    // SAFETY: as this function's.
    unsafe {
        // No head, or one wider than 128: the portable loop.
        by_count!(
            queries.len().div_ceil(16),
            [1, 2, 3, 4, 5, 6, 7, 8],
            |N| dot_groups::<S, N>(queries, keys, scale, scores),
            0
        )
    }
}

/// [`dot_scores`] for heads of `16 (C - 1) + 1..=16 C` values: the query stays in `C`
/// registers and each key is read front to back, so the keys stream in order (sixteen keys
/// read a register of each at a time were sixteen streams, slower from memory).
///
/// # Safety
/// As [`dot_scores`]'s; `queries.len()` is in that range.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn dot_groups<S: Stored, const C: usize>(
    queries: &[f32],
    keys: &[S],
    scale: f32,
    scores: &mut [f32],
) -> usize {
    let dim = queries.len();
    let done = (keys.len() / dim).min(scores.len()) / 16 * 16;
    // The last register's lanes past the head are +0.0, as in the portable loop's padding.
    let masks: [__mmask16; C] = std::array::from_fn(|c| first_lanes(dim - 16 * c));
    // SAFETY: the lanes of `masks[c]` are values 16c.. of the query, inside it.
    let q: [__m512; C] =
        std::array::from_fn(|c| unsafe { load(queries.as_ptr().add(16 * c), masks[c]) });
    for first in (0..done).step_by(16) {
        let group = &keys[first * dim..][..16 * dim];
        // A loop rather than `array::from_fn`, whose closure was compiled as a call per key.
        let mut lanes = [_mm512_setzero_ps(); 16];
        for (k, lanes) in lanes.iter_mut().enumerate() {
            let key = group[k * dim..].as_ptr();
            for c in 0..C {
                // SAFETY: the lanes of `masks[c]` are values 16c.. of key `k`, inside it.
                let x = unsafe { load(key.add(16 * c), masks[c]) };
                *lanes = _mm512_add_ps(*lanes, _mm512_mul_ps(q[c], x));
            }
        }
        let sums = _mm512_mul_ps(halvings(lanes), _mm512_set1_ps(scale));
        // SAFETY: first + 16 <= done <= scores.len().
        unsafe { _mm512_storeu_ps(scores.as_mut_ptr().add(first), sums) };
    }
    done
}

/// Columns a pass of [`weighted_row`] keeps in registers: eight of sixteen, eight independent
/// chains of additions (every head width up to 128 in one pass).
const ROW_PASS: usize = 128;

/// `out[c] = sum_p probabilities[p] * values[p][c]` for one query row, each sum from +0.0 in
/// order of `p` as the portable weighted sum adds it, so the bits are its bits on the values
/// as f32; `values` holds `probabilities.len()` positions of `out.len()` values.
///
/// The portable loop covers a 3B head (100 wide) in a pass of 96 columns, then the last
/// sixteen again in a pass of their own, one chain of additions as long as the head's sum;
/// here a pass covers up to 128 columns, the last register masked.
///
/// # Safety
/// The CPU supports AVX-512F, BW and VL.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn weighted_row<S: Stored>(probabilities: &[f32], values: &[S], out: &mut [f32]) {
    let dim = out.len();
    assert!(
        values.len() >= probabilities.len() * dim,
        "one row of values per probability"
    );
    for column in (0..dim).step_by(ROW_PASS) {
        let width = (dim - column).min(ROW_PASS);
        // SAFETY: as this function's; `column + width <= dim`.
        unsafe {
            by_count!(
                width.div_ceil(16),
                [1, 2, 3, 4, 5, 6, 7, 8],
                |N| weighted_pass::<S, N>(probabilities, values, column, width, out),
                unreachable!("a pass is at most {} registers", ROW_PASS / 16)
            )
        }
    }
}

/// [`weighted_row`] for columns `column..column + width` in `N` registers (`width` at most
/// `16 N`).
///
/// # Safety
/// As [`weighted_row`]'s; `column + width <= out.len()`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn weighted_pass<S: Stored, const N: usize>(
    probabilities: &[f32],
    values: &[S],
    column: usize,
    width: usize,
    out: &mut [f32],
) {
    let dim = out.len();
    let masks: [__mmask16; N] = std::array::from_fn(|r| first_lanes(width.saturating_sub(16 * r)));
    let mut acc = [_mm512_setzero_ps(); N];
    for (p, &probability) in probabilities.iter().enumerate() {
        let weight = _mm512_set1_ps(probability);
        let row = values[p * dim + column..].as_ptr();
        for r in 0..N {
            // SAFETY: the lanes of `masks[r]` are columns below `column + width <= dim` of
            // position `p`, inside `values`.
            let value = unsafe { load(row.add(16 * r), masks[r]) };
            acc[r] = _mm512_add_ps(acc[r], _mm512_mul_ps(weight, value));
        }
    }
    for r in 0..N {
        // SAFETY: the lanes of `masks[r]` are columns below `column + width <= out.len()`.
        unsafe { _mm512_mask_storeu_ps(out.as_mut_ptr().add(column + 16 * r), masks[r], acc[r]) };
    }
}

/// Lane `k` of the result: the sixteen lanes of `lanes[k]` added as
/// `crate::vectorize::reduce_lanes` adds them (`x[i] += x[i + w]` for `w` = 8, 4, 2, 1), for
/// sixteen keys at once. Each step adds two registers that hold the two halves of what is left
/// of two keys' lanes, so the keys' sums meet in one register.
#[inline]
#[target_feature(enable = "avx512f")]
fn halvings(lanes: [__m512; 16]) -> __m512 {
    // Eight sums per key: halves[2e] holds keys e and e + 4, halves[2e + 1] keys e + 8 and
    // e + 12 (128-bit lane pairs 0-1 and 2-3), so that the steps below end in key order.
    let halves: [__m512; 8] = std::array::from_fn(|h| {
        let first = h / 2 + 8 * (h % 2);
        let (a, b) = (lanes[first], lanes[first + 4]);
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b01_00_01_00>(a, b),
            _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b),
        )
    });
    // Four sums per key: quarters[e], 128-bit lane L, holds key 4L + e.
    let quarters: [__m512; 4] = std::array::from_fn(|e| {
        let (a, b) = (halves[2 * e], halves[2 * e + 1]);
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b10_00_10_00>(a, b),
            _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b),
        )
    });
    // Two sums per key: pairs[o], lane L, holds keys 4L + 2o and 4L + 2o + 1.
    let pairs: [__m512; 2] = std::array::from_fn(|o| {
        let (a, b) = (
            _mm512_castps_pd(quarters[2 * o]),
            _mm512_castps_pd(quarters[2 * o + 1]),
        );
        _mm512_add_ps(
            _mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
            _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)),
        )
    });
    let (a, b) = (pairs[0], pairs[1]);
    _mm512_add_ps(
        _mm512_shuffle_ps::<0b10_00_10_00>(a, b),
        _mm512_shuffle_ps::<0b11_01_11_01>(a, b),
    )
}

/// Positions of a [`block_scores`] pass: four registers per query row.
const SCORE_PASS: usize = 64;

/// `scores[r][p] = (sum_c queries[r][c] * kt[c][p]) * scale` for the `R` rows of `queries` and
/// `p < end` (a multiple of sixteen; `kt` is `[dim, stride]`), each sum from +0.0 in order of
/// `c`, multiplied then added as the portable passes do, so the bits are theirs. Sixty-four
/// positions per pass while they last, then sixteen; the weights are broadcast from memory.
///
/// The portable passes took about twice the cycles per column: the compiler kept their
/// accumulators on the stack and stored each one at every column (see the end of
/// `score_pass`), and their weights went through bounds checks and register broadcasts.
///
/// # Safety
/// The CPU supports AVX-512F; `scores` has `R` rows of at least `end` values, and `kt` holds
/// `end` values of every column.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn block_scores<const R: usize>(
    queries: &[f32],
    kt: &[f32],
    end: usize,
    scale: f32,
    scores: &mut [Vec<f32>],
) {
    let dim = queries.len() / R;
    let stride = kt.len() / dim;
    assert!(
        end.is_multiple_of(16) && end <= stride && scores.len() == R,
        "whole groups of sixteen positions inside the columns, one row of scores per query"
    );
    assert!(
        scores.iter().all(|row| row.len() >= end),
        "rows hold the positions"
    );
    let wide = end / SCORE_PASS * SCORE_PASS;
    for p0 in (0..wide).step_by(SCORE_PASS) {
        // SAFETY: p0 + 64 <= end; as this function's.
        unsafe { score_pass::<R, 4>(queries, kt, p0, scale, scores) };
    }
    for p0 in (wide..end).step_by(16) {
        // SAFETY: p0 + 16 <= end; as this function's.
        unsafe { score_pass::<R, 1>(queries, kt, p0, scale, scores) };
    }
}

/// [`block_scores`] for positions `p0..p0 + 16 V`.
///
/// # Safety
/// As [`block_scores`]'s, with `p0 + 16 V <= end`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn score_pass<const R: usize, const V: usize>(
    queries: &[f32],
    kt: &[f32],
    p0: usize,
    scale: f32,
    scores: &mut [Vec<f32>],
) {
    let dim = queries.len() / R;
    let stride = kt.len() / dim;
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    for c in 0..dim {
        // A loop rather than `array::from_fn`, whose closure may be compiled as a call.
        let mut k = [_mm512_setzero_ps(); V];
        for (j, k) in k.iter_mut().enumerate() {
            // SAFETY: column c holds `stride >= p0 + 16 V` values.
            *k = unsafe { _mm512_loadu_ps(kt.as_ptr().add(c * stride + p0 + 16 * j)) };
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: row r < R of `queries` has `dim > c` values.
            let weight = _mm512_set1_ps(unsafe { *queries.get_unchecked(r * dim + c) });
            for (acc, &k) in acc.iter_mut().zip(&k) {
                *acc = _mm512_add_ps(*acc, _mm512_mul_ps(weight, k));
            }
        }
    }
    let scale = _mm512_set1_ps(scale);
    // Indexed by a constant range: zipped with the slice of rows (of a length known only at
    // run time) the accumulators lived on the stack, stored there at every column.
    for r in 0..R {
        let row = &mut scores[r];
        for (j, &sum) in acc[r].iter().enumerate() {
            // SAFETY: the row holds `end >= p0 + 16 V` values.
            unsafe {
                _mm512_storeu_ps(row.as_mut_ptr().add(p0 + 16 * j), _mm512_mul_ps(sum, scale))
            };
        }
    }
}

/// Columns a [`block_weighted_sum`] pass keeps in registers per query row: five registers,
/// twenty accumulators for four rows. With six (a 700M head in one pass) the accumulators,
/// the position's values and the weight took all 32 registers, and the compiler stored every
/// accumulator at every position.
const WEIGHTED_PASS: usize = 80;

/// `out[r][c] = sum_p probabilities[r][p] * values[p][c]` for the `R` rows, each over its own
/// positions, each sum from +0.0 in order of `p`, multiplied then added: the portable
/// weighted sum's bits (whose order does not depend on how its passes split the columns). The
/// positions every row sees go through all rows together; the later ones per row.
///
/// # Safety
/// The CPU supports AVX-512F, BW and VL; `values` holds every position any row sees, `dim`
/// (`out[r].len()`) values each.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn block_weighted_sum<const R: usize>(
    probabilities: [&[f32]; R],
    values: &[f32],
    out: &mut [&mut [f32]],
) {
    let dim = out[0].len();
    let most = probabilities.iter().map(|p| p.len()).max().unwrap_or(0);
    assert!(
        out.len() == R && out.iter().all(|row| row.len() == dim) && values.len() >= most * dim,
        "one output row per query row, and the values of every position seen"
    );
    for column in (0..dim).step_by(WEIGHTED_PASS) {
        let width = (dim - column).min(WEIGHTED_PASS);
        // SAFETY: as this function's; `column + width <= dim`.
        unsafe {
            by_count!(
                width.div_ceil(16),
                [1, 2, 3, 4, 5],
                |V| weighted_block_pass::<R, V>(probabilities, values, column, width, out),
                unreachable!("a pass is at most {} registers", WEIGHTED_PASS / 16)
            )
        }
    }
}

/// [`block_weighted_sum`] for columns `column..column + width` in `V` registers per row
/// (`width` at most `16 V`, the last register masked).
///
/// # Safety
/// As [`block_weighted_sum`]'s, with `column + width <= dim`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn weighted_block_pass<const R: usize, const V: usize>(
    probabilities: [&[f32]; R],
    values: &[f32],
    column: usize,
    width: usize,
    out: &mut [&mut [f32]],
) {
    let dim = out[0].len();
    let masks: [__mmask16; V] = std::array::from_fn(|j| first_lanes(width.saturating_sub(16 * j)));
    let common = probabilities.iter().map(|p| p.len()).min().unwrap_or(0);
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    for p in 0..common {
        // SAFETY: position p is seen by every row, so `values` holds it.
        let value = unsafe { position_values(values, p * dim + column, &masks) };
        for (acc, probabilities) in acc.iter_mut().zip(&probabilities) {
            // SAFETY: p < common, the shortest row's length.
            add_weighted(acc, unsafe { *probabilities.get_unchecked(p) }, &value);
        }
    }
    // Indexed by a constant range, as in `score_pass`, so the accumulators stay in registers.
    for r in 0..R {
        let acc = &mut acc[r];
        for (p, &probability) in probabilities[r].iter().enumerate().skip(common) {
            // SAFETY: this row sees position p, so `values` holds it.
            let value = unsafe { position_values(values, p * dim + column, &masks) };
            add_weighted(acc, probability, &value);
        }
        let out = &mut out[r];
        for (j, &sum) in acc.iter().enumerate() {
            // SAFETY: the lanes of `masks[j]` are columns below `column + width <= dim`.
            unsafe { _mm512_mask_storeu_ps(out.as_mut_ptr().add(column + 16 * j), masks[j], sum) };
        }
    }
}

/// The values at `at` in the lanes of `masks` (sixteen per register), +0.0 in the others.
///
/// # Safety
/// The CPU supports AVX-512F, BW and VL; the masked lanes from `at` are inside `values`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn position_values<const V: usize>(
    values: &[f32],
    at: usize,
    masks: &[__mmask16; V],
) -> [__m512; V] {
    let mut loaded = [_mm512_setzero_ps(); V];
    for (j, (loaded, &mask)) in loaded.iter_mut().zip(masks).enumerate() {
        // SAFETY: as this function's.
        *loaded = unsafe { load(values.as_ptr().add(at + 16 * j), mask) };
    }
    loaded
}

/// `acc += probability * value` per lane, multiplied then added as the portable loop does.
#[inline]
#[target_feature(enable = "avx512f")]
fn add_weighted<const V: usize>(acc: &mut [__m512; V], probability: f32, value: &[__m512; V]) {
    let weight = _mm512_set1_ps(probability);
    for (acc, &v) in acc.iter_mut().zip(value) {
        *acc = _mm512_add_ps(*acc, _mm512_mul_ps(weight, v));
    }
}
