//! AVX-512 VNNI path: `vpdpbusd` multiplies 64 unsigned codes by 64 signed activations and adds
//! the products straight into i32 lanes, so no intermediate widening is needed.

use std::arch::x86_64::*;

use super::TernaryKernel;
use super::avx2::decode_row;
use crate::i2s::{BLOCK, BLOCK_BYTES};

pub(super) struct Avx512Vnni;

/// Rows interleaved in the one-token path, sharing each activation load.
const GEMV_ROWS: usize = 2;

impl TernaryKernel for Avx512Vnni {
    unsafe fn gemv(codes: &[u8], row_bytes: usize, q: &[i8], out: &mut [i32]) {
        for (rows, out) in codes
            .chunks(GEMV_ROWS * row_bytes)
            .zip(out.chunks_mut(GEMV_ROWS))
        {
            if out.len() == GEMV_ROWS {
                let (a, b) = rows.split_at(row_bytes);
                // SAFETY: the caller guarantees AVX-512 VNNI; rows are `row_bytes`, q `4 * row_bytes`.
                out.copy_from_slice(&unsafe { gemv_tile([a, b], q) });
            } else {
                // SAFETY: as above.
                out[0] = unsafe { gemv_tile([rows], q) }[0];
            }
        }
    }

    unsafe fn decode_row(row: &[u8], dst: &mut [u8]) {
        // SAFETY: every AVX-512 CPU this path accepts also has AVX2 (checked by `Isa::is_supported`).
        unsafe { decode_row(row, dst) }
    }

    unsafe fn dot_tile<const R: usize, const T: usize>(
        codes: [&[u8]; R],
        qs: [&[i8]; T],
    ) -> [[i32; T]; R] {
        // SAFETY: the caller guarantees AVX-512 VNNI and equal lengths that are multiples of 128.
        unsafe { dot_tile(codes, qs) }
    }
}

/// Loads 64 bytes starting at `ptr`.
///
/// # Safety
/// `ptr` points to at least 64 readable bytes.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn load64<T>(ptr: *const T) -> __m512i {
    // SAFETY: the caller guarantees 64 readable bytes; loadu has no alignment requirement.
    unsafe { _mm512_loadu_si512(ptr.cast()) }
}

/// The 128 codes of one packed block as two vectors in column order: weights 0..64 are bits
/// 7:6 and 5:4 of the 32 bytes, weights 64..128 bits 3:2 and 1:0.
#[inline]
#[target_feature(enable = "avx2,avx512f,avx512bw")]
fn unpack_block(packed: __m256i) -> [__m512i; 2] {
    let mask = _mm256_set1_epi8(3);
    let group = |v: __m256i| _mm256_and_si256(v, mask);
    let g0 = group(_mm256_srli_epi16::<6>(packed));
    let g1 = group(_mm256_srli_epi16::<4>(packed));
    let g2 = group(_mm256_srli_epi16::<2>(packed));
    let g3 = group(packed);
    [
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(g0), g1),
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(g2), g3),
    ]
}

/// Sums `code * q` over `R` packed rows against one token.
///
/// # Safety
/// Every row is `q.len() / 4` bytes and `q.len()` is a multiple of 128.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vnni")]
unsafe fn gemv_tile<const R: usize>(rows: [&[u8]; R], q: &[i8]) -> [i32; R] {
    let blocks = q.len() / BLOCK;
    debug_assert!(rows.iter().all(|r| r.len() == blocks * BLOCK_BYTES));
    let mut acc = [_mm512_setzero_si512(); R];
    for b in 0..blocks {
        // SAFETY: b < blocks, so the 128 activations and 32 packed bytes of block b exist.
        let x: [__m512i; 2] =
            std::array::from_fn(|h| unsafe { load64(q.as_ptr().add(b * BLOCK + h * 64)) });
        for (acc, row) in acc.iter_mut().zip(rows) {
            // SAFETY: as above.
            let packed = unsafe { _mm256_loadu_si256(row.as_ptr().add(b * BLOCK_BYTES).cast()) };
            let c = unpack_block(packed);
            *acc = _mm512_dpbusd_epi32(*acc, c[0], x[0]);
            *acc = _mm512_dpbusd_epi32(*acc, c[1], x[1]);
        }
    }
    acc.map(|v| _mm512_reduce_add_epi32(v))
}

/// `out[r][t] = sum_c codes[r][c] * qs[t][c]` over unpacked codes.
///
/// # Safety
/// All slices have the same length, a multiple of 64.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn dot_tile<const R: usize, const T: usize>(
    codes: [&[u8]; R],
    qs: [&[i8]; T],
) -> [[i32; T]; R] {
    let chunks = qs[0].len() / 64;
    debug_assert!(codes.iter().all(|c| c.len() == chunks * 64));
    debug_assert!(qs.iter().all(|q| q.len() == chunks * 64));
    let mut acc = [[_mm512_setzero_si512(); T]; R];
    for ch in 0..chunks {
        // SAFETY: ch < chunks, so 64 bytes at ch * 64 exist in every slice.
        let w: [__m512i; R] =
            std::array::from_fn(|r| unsafe { load64(codes[r].as_ptr().add(ch * 64)) });
        for t in 0..T {
            // SAFETY: as above.
            let x = unsafe { load64(qs[t].as_ptr().add(ch * 64)) };
            for r in 0..R {
                acc[r][t] = _mm512_dpbusd_epi32(acc[r][t], w[r], x);
            }
        }
    }
    acc.map(|row| row.map(|v| _mm512_reduce_add_epi32(v)))
}
