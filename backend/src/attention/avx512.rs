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
