//! AVX2 + FMA + F16C: eight 16-bit values widened per instruction, four accumulators.

use std::arch::x86_64::*;

use super::{ACCUMULATORS, Half, LANES, reduce_lanes};

/// How far ahead of the values multiplied their cache lines are requested, in bytes, as the
/// ternary kernels do (`kernels::prefetch::MIN_PREFETCH_BYTES`): with the hardware prefetcher
/// alone the 3B head streamed at 30-32 GiB/s on one Zen 5 core, with this at 36-37.
const PREFETCH_BYTES: usize = 8192;

/// The order of [`super::scalar::dot`], eight lanes per instruction.
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C; `row.len() == x.len()`.
pub(super) unsafe fn dot<H: Half>(row: &[H], x: &[f32]) -> f32 {
    debug_assert_eq!(row.len(), x.len());
    // SAFETY: forwarded from the caller; both 16-bit formats are a `u16` in memory.
    let sum = unsafe {
        if H::BF16 {
            dot_groups::<true>(row.as_ptr().cast(), x)
        } else {
            dot_groups::<false>(row.as_ptr().cast(), x)
        }
    };
    let tail = x.len() / LANES * LANES;
    row[tail..]
        .iter()
        .zip(&x[tail..])
        .fold(sum, |sum, (w, &v)| w.widen().mul_add(v, sum))
}

/// Eight values of the 16-bit row at `ptr`, widened to f32.
///
/// # Safety
/// AVX2 and F16C; `ptr` points to eight readable values.
#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn widen<const BF16: bool>(ptr: *const u16) -> __m256 {
    // SAFETY: the caller guarantees 16 readable bytes.
    let packed = unsafe { _mm_loadu_si128(ptr.cast()) };
    if BF16 {
        // A BF16 is the upper half of the f32 with the same value.
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(packed)))
    } else {
        _mm256_cvtph_ps(packed)
    }
}

/// The reduced sum over the whole groups of eight columns.
///
/// # Safety
/// AVX2, FMA and F16C; `row` points to `x.len()` values.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_groups<const BF16: bool>(row: *const u16, x: &[f32]) -> f32 {
    let groups = x.len() / LANES;
    let mut acc = [_mm256_setzero_ps(); ACCUMULATORS];
    // Group g goes to accumulator g % 4; unrolled so the accumulators stay in registers.
    let mut g = 0;
    while g < groups {
        // One cache line (32 values) per round of the accumulators. Past the end of the row
        // the hint reads the next rows the task sums (or nothing: a prefetch never faults).
        _mm_prefetch::<_MM_HINT_T1>(row.wrapping_add(g * LANES + PREFETCH_BYTES / 2).cast());
        for (j, acc) in acc.iter_mut().enumerate().take(groups - g) {
            let c = (g + j) * LANES;
            // SAFETY: g + j < groups, so eight values of the row and of x exist at c.
            unsafe {
                let w = widen::<BF16>(row.add(c));
                *acc = _mm256_fmadd_ps(w, _mm256_loadu_ps(x.as_ptr().add(c)), *acc);
            }
        }
        g += ACCUMULATORS;
    }
    let lanes = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut s = [0f32; LANES];
    // SAFETY: `s` holds eight f32.
    unsafe { _mm256_storeu_ps(s.as_mut_ptr(), lanes) };
    reduce_lanes(s)
}
