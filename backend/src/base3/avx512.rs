//! AVX-512 VNNI base-3 decode: `vpdpbusd` on the stored bytes themselves, no trit decoding.
//!
//! For each of a byte's five trits, `a += q_j * x` and `b += q_(j+1) * x` with `q_(j+1) = 3 q_j`
//! (mod 256, three byte additions). Since `3 q_j = 256 t_j + q_(j+1)` for every byte,
//! `3 a - b = 256 sum t_j x` lane by lane: an exact multiple of 256 that an arithmetic shift
//! divides out. The sums may wrap in i32 on the way; the true `3 a - b` (at most 256 * 254 * K / 16
//! per lane) fits, so the wrapped arithmetic gives it exactly.

use std::arch::x86_64::*;

use super::{GROUP_BYTES, GROUP_WEIGHTS};
use crate::kernels::avx512::{load64, packed_tile};
use crate::kernels::prefetch_distance;

/// Rows per tile: sixteen independent accumulator chains, every activation load shared by eight
/// rows (four rows per tile decoded 4% slower on the 3B layout).
const ROWS: usize = 8;

/// `out[r] = sum_c code(r, c) * q[c]` for the base-3 rows in `rows`.
///
/// # Safety
/// The CPU supports AVX-512 VNNI; `rows` holds whole rows of `rb` bytes (`groups` groups, then
/// I2_S blocks), `out` one value per row and `q` one token padded like the rows.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn row_sums(rows: &[u8], rb: usize, groups: usize, q: &[i8], out: &mut [i32]) {
    assert!(rows.len() == out.len() * rb && q.len() >= groups * GROUP_WEIGHTS);
    let ahead = prefetch_distance(ROWS * rb);
    let mut r = 0;
    while r < out.len() {
        let tile = &rows[r * rb..];
        // SAFETY (all three): forwarded from the caller; each tile is that many whole rows.
        let done = match out.len() - r {
            ROWS.. => {
                let sums = unsafe { row_tile::<ROWS>(tile, rb, groups, q, ahead) };
                out[r..r + ROWS].copy_from_slice(&sums);
                ROWS
            }
            4.. => {
                let sums = unsafe { row_tile::<4>(tile, rb, groups, q, ahead) };
                out[r..r + 4].copy_from_slice(&sums);
                4
            }
            _ => {
                out[r] = unsafe { row_tile::<1>(tile, rb, groups, q, ahead) }[0];
                1
            }
        };
        r += done;
    }
}

/// `3 q mod 256` in every byte, as two byte additions.
///
/// Written plainly, LLVM folds the chain `q, 3 q, 9 q, ..` into multiplications by constants,
/// which AVX-512 lacks for bytes: it emitted five instructions each (`vpmaddubsw`, shifts,
/// `vpternlogq`) and decode ran at two thirds of the speed. An empty `asm` block between the two
/// additions hides `2 q` from that fold.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn times_three(q: __m512i) -> __m512i {
    let mut twice = _mm512_add_epi8(q, q);
    // SAFETY: the block is empty: it executes nothing and touches no memory or flags.
    unsafe {
        std::arch::asm!("/* {0} */", inout(zmm_reg) twice, options(pure, nomem, nostack, preserves_flags))
    };
    _mm512_add_epi8(twice, q)
}

/// The sums of the `R` rows in `rows`, prefetching the bytes `ahead` of each group read.
///
/// # Safety
/// As [`row_sums`], with `rows` starting with `R` whole rows.
#[inline]
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vnni")]
unsafe fn row_tile<const R: usize>(
    rows: &[u8],
    rb: usize,
    groups: usize,
    q: &[i8],
    ahead: usize,
) -> [i32; R] {
    let mut a = [_mm512_setzero_si512(); R];
    let mut b = [_mm512_setzero_si512(); R];
    for g in 0..groups {
        for r in 0..R {
            let next = rows.as_ptr().wrapping_add(r * rb + g * GROUP_BYTES + ahead);
            // Hints only (no fault past the end): the rows are short streams, as in I2_S decode.
            _mm_prefetch::<_MM_HINT_T1>(next.cast());
            _mm_prefetch::<_MM_HINT_T1>(next.wrapping_add(64).cast());
        }
        for h in 0..2 {
            let mut bytes = [_mm512_setzero_si512(); R];
            for (r, bytes) in bytes.iter_mut().enumerate() {
                // SAFETY: g < groups, so the group's 128 bytes lie inside row r.
                *bytes = unsafe { load64(rows.as_ptr().add(r * rb + g * GROUP_BYTES + 64 * h)) };
            }
            for j in 0..5 {
                let at = g * GROUP_WEIGHTS + j * GROUP_BYTES + 64 * h;
                // SAFETY: at + 64 <= (g + 1) * GROUP_WEIGHTS <= q.len().
                let x = unsafe { load64(q.as_ptr().add(at)) };
                for r in 0..R {
                    a[r] = _mm512_dpbusd_epi32(a[r], bytes[r], x);
                    bytes[r] = times_three(bytes[r]);
                    b[r] = _mm512_dpbusd_epi32(b[r], bytes[r], x);
                }
            }
        }
    }
    let tail_start = groups * GROUP_BYTES;
    let tail = if rb > tail_start {
        let mut tails = [&rows[..0]; R];
        for (r, tail) in tails.iter_mut().enumerate() {
            *tail = &rows[r * rb + tail_start..(r + 1) * rb];
        }
        // SAFETY: the leftover I2_S blocks of every row and the token's matching activations.
        unsafe { packed_tile::<R, 1>(tails, [&q[groups * GROUP_WEIGHTS..]], ahead) }
    } else {
        [[0; 1]; R]
    };
    let mut sums = [0; R];
    for r in 0..R {
        let three_a = _mm512_add_epi32(a[r], _mm512_add_epi32(a[r], a[r]));
        let exact = _mm512_srai_epi32::<8>(_mm512_sub_epi32(three_a, b[r]));
        sums[r] = _mm512_reduce_add_epi32(exact).wrapping_add(tail[r][0]);
    }
    sums
}
