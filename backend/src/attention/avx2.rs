//! AVX2 path of a decode row's loops in [`super::dispatch`]: the same sums as the portable
//! loops, in the same order, reading an f16 cache as it is stored. The portable loops' sixteen
//! lanes are two registers here, lanes 0..8 and 8..16.

use std::arch::x86_64::*;

use super::dispatch::{RowLoops, Stored, by_count};

/// The AVX2 (with FMA and F16C) decode-row loops.
pub(super) struct Avx2;

impl RowLoops for Avx2 {
    unsafe fn dot_scores<S: Stored>(
        queries: &[f32],
        keys: &[S],
        scale: f32,
        scores: &mut [f32],
    ) -> usize {
        if S::HALF && !queries.len().is_multiple_of(2) {
            // Masked loads of f16 come as pairs (dwords): an odd head is left to the portable loop.
            return 0;
        }
        // SAFETY: forwarded from the caller; the head is even when the values are halves.
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

    unsafe fn weighted_row<S: Stored>(
        probabilities: &[f32],
        values: &[S],
        out: &mut [f32],
    ) -> bool {
        let dim = out.len();
        if S::HALF && !dim.is_multiple_of(2) {
            return false;
        }
        assert!(
            values.len() >= probabilities.len() * dim,
            "one row of values per probability"
        );
        // Passes of equal width: a 3B head (100 wide, 13 registers) in two of 56 and 44 columns
        // rather than 96 and a last register whose one chain of additions is the whole row long.
        let registers = dim.div_ceil(8);
        let pass = 8 * registers.div_ceil(registers.div_ceil(PASS_REGISTERS).max(1));
        for column in (0..dim).step_by(pass.max(8)) {
            let width = (dim - column).min(pass);
            // SAFETY: forwarded from the caller; `column + width <= dim`, and `width` is even
            // when the values are halves (`dim` and `pass` are).
            unsafe {
                by_count!(
                    width.div_ceil(8),
                    [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
                    |N| weighted_pass::<S, N>(probabilities, values, column, width, out),
                    unreachable!("a pass is at most {} registers", PASS_REGISTERS)
                )
            }
        }
        true
    }
}

/// The first `n` values at `at` in f32 lanes (all eight when `n >= 8`), the other lanes +0.0.
///
/// # Safety
/// The CPU supports AVX2 and F16C; the first `min(n, 8)` values are readable, and `n` is even
/// (or at least 8) when they are halves.
#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn load<S: Stored>(at: *const S, n: usize) -> __m256 {
    // SAFETY: whole loads read eight values, masked ones only the lanes (for halves, the
    // pairs) below `n`, which the caller says are readable.
    unsafe {
        match (S::HALF, n >= 8) {
            (false, true) => _mm256_loadu_ps(at.cast()),
            (false, false) => _mm256_maskload_ps(at.cast(), first_lanes(n)),
            (true, true) => _mm256_cvtph_ps(_mm_loadu_si128(at.cast())),
            (true, false) => {
                let pairs = _mm256_castsi256_si128(first_lanes(n / 2));
                _mm256_cvtph_ps(_mm_maskload_epi32(at.cast(), pairs))
            }
        }
    }
}

/// All ones in the first `n` (at most eight) dword lanes: a mask for `vmaskmov`.
#[inline]
#[target_feature(enable = "avx2")]
fn first_lanes(n: usize) -> __m256i {
    let n = n.min(8) as i32;
    _mm256_cmpgt_epi32(
        _mm256_set1_epi32(n),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
    )
}

/// [`RowLoops::dot_scores`] for heads of `16 (C - 1) + 1..=16 C` values, eight keys at a time,
/// each read front to back; returns how many scores it wrote.
///
/// # Safety
/// The CPU supports AVX2 and F16C; `queries.len()` is in that range, and even when the keys
/// are halves.
#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn dot_groups<S: Stored, const C: usize>(
    queries: &[f32],
    keys: &[S],
    scale: f32,
    scores: &mut [f32],
) -> usize {
    let dim = queries.len();
    let done = (keys.len() / dim).min(scores.len()) / 8 * 8;
    // Values past the head load as +0.0, as the portable loop pads its last block.
    let widths: [[usize; 2]; C] =
        std::array::from_fn(|c| [0, 8].map(|h| dim.saturating_sub(16 * c + h)));
    // A half past the head (width 0) reads nothing, but its address may lie past the slice:
    // `wrapping_add`, which is defined there, where `add` is not.
    // SAFETY: each load reads at most the values of the query its width counts.
    let q: [[__m256; 2]; C] = std::array::from_fn(|c| {
        [0, 1].map(|h| unsafe { load(queries.as_ptr().wrapping_add(16 * c + 8 * h), widths[c][h]) })
    });
    for first in (0..done).step_by(8) {
        let group = &keys[first * dim..][..8 * dim];
        // Lanes i and i + 8 of each key added: the first halving of the portable loop's.
        let mut halves = [_mm256_setzero_ps(); 8];
        for (k, half) in halves.iter_mut().enumerate() {
            let key = group[k * dim..].as_ptr();
            let mut lanes = [_mm256_setzero_ps(); 2];
            for c in 0..C {
                for h in 0..2 {
                    // SAFETY: the load reads at most the values of key `k` its width counts.
                    let x = unsafe { load(key.wrapping_add(16 * c + 8 * h), widths[c][h]) };
                    lanes[h] = _mm256_add_ps(lanes[h], _mm256_mul_ps(q[c][h], x));
                }
            }
            *half = _mm256_add_ps(lanes[0], lanes[1]);
        }
        let sums = _mm256_mul_ps(halvings(halves), _mm256_set1_ps(scale));
        // SAFETY: first + 8 <= done <= scores.len().
        unsafe { _mm256_storeu_ps(scores.as_mut_ptr().add(first), sums) };
    }
    done
}

/// Lane `k` of the result: the eight lanes of `halves[k]` added as the portable loop's last
/// three halvings add them (`x[i] += x[i + w]` for `w` = 4, 2, 1), for eight keys at once.
#[inline]
#[target_feature(enable = "avx2")]
fn halvings(halves: [__m256; 8]) -> __m256 {
    // Four sums per key: quarters[e] holds key e in its low 128-bit lane, key e + 4 in its high.
    let quarters: [__m256; 4] = std::array::from_fn(|e| {
        let (a, b) = (halves[e], halves[e + 4]);
        _mm256_add_ps(
            _mm256_permute2f128_ps::<0x20>(a, b),
            _mm256_permute2f128_ps::<0x31>(a, b),
        )
    });
    // Two sums per key: pairs[o], lane L, holds keys 4L + 2o and 4L + 2o + 1.
    let pairs: [__m256; 2] = std::array::from_fn(|o| {
        let (a, b) = (quarters[2 * o], quarters[2 * o + 1]);
        _mm256_add_ps(
            _mm256_shuffle_ps::<0b01_00_01_00>(a, b),
            _mm256_shuffle_ps::<0b11_10_11_10>(a, b),
        )
    });
    let (a, b) = (pairs[0], pairs[1]);
    _mm256_add_ps(
        _mm256_shuffle_ps::<0b10_00_10_00>(a, b),
        _mm256_shuffle_ps::<0b11_01_11_01>(a, b),
    )
}

/// Most registers of sums a pass of [`RowLoops::weighted_row`] keeps, each an independent
/// chain of additions: twelve of the sixteen, a 700M head (96 wide) in one pass.
const PASS_REGISTERS: usize = 12;

/// [`RowLoops::weighted_row`] for columns `column..column + width` in `N` registers (`width`
/// at most `8 N`).
///
/// # Safety
/// The CPU supports AVX2 and F16C; `values` holds `probabilities.len()` rows of `out.len()`
/// values, `column + width <= out.len()`, and `width` is even when the values are halves.
#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn weighted_pass<S: Stored, const N: usize>(
    probabilities: &[f32],
    values: &[S],
    column: usize,
    width: usize,
    out: &mut [f32],
) {
    let dim = out.len();
    let widths: [usize; N] = std::array::from_fn(|r| width.saturating_sub(8 * r));
    let mut acc = [_mm256_setzero_ps(); N];
    for (p, &probability) in probabilities.iter().enumerate() {
        let weight = _mm256_set1_ps(probability);
        let row = values[p * dim + column..].as_ptr();
        for r in 0..N {
            // SAFETY: the load reads columns below `column + width <= dim` of position `p`.
            let value = unsafe { load(row.add(8 * r), widths[r]) };
            acc[r] = _mm256_add_ps(acc[r], _mm256_mul_ps(weight, value));
        }
    }
    for r in 0..N {
        let at = out[column + 8 * r..].as_mut_ptr();
        // SAFETY: the stores write columns below `column + width <= out.len()`.
        unsafe {
            if widths[r] >= 8 {
                _mm256_storeu_ps(at, acc[r]);
            } else {
                _mm256_maskstore_ps(at, first_lanes(widths[r]), acc[r]);
            }
        }
    }
}
