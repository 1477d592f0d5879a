//! NEON path (aarch64): `smull` / `smlal` multiply the 2-bit codes, read as signed bytes (0, 1,
//! 2), by the int8 activations into i16 lanes, and `sadalp` widens pairs of lanes into i32.
//!
//! Baseline NEON only: `sdot` (the dot-product extension) is not yet callable from stable Rust.
//! An i16 lane takes one product per multiply-accumulate, at most 2 * 128 = 256 in magnitude,
//! so 127 of them fit; lanes are widened every 64 products, never later.

use std::arch::aarch64::*;

use super::unpacking::{DecodingKernel, flush_runs, unpacked_blocks};
use crate::i2s::{BLOCK, BLOCK_BYTES};

pub(super) struct Neon;

/// Blocks of 128 weights summed in i16 before widening: 8 products per lane per block.
const GEMV_BLOCKS_PER_FLUSH: usize = 8;
/// 16-byte chunks of unpacked codes summed in i16 before widening: one product per lane each.
const CHUNKS_PER_FLUSH: usize = 64;
/// Rows interleaved in the one-token path, sharing each activation load.
const GEMV_ROWS: usize = 2;

impl DecodingKernel for Neon {
    unsafe fn gemv(codes: &[u8], row_bytes: usize, q: &[i8], out: &mut [i32]) {
        for (rows, out) in codes
            .chunks(GEMV_ROWS * row_bytes)
            .zip(out.chunks_mut(GEMV_ROWS))
        {
            if out.len() == GEMV_ROWS {
                let (a, b) = rows.split_at(row_bytes);
                // SAFETY: NEON is part of every aarch64 target; each row is `row_bytes`, q is
                // `4 * row_bytes`, as the caller guarantees.
                out.copy_from_slice(&unsafe { gemv_tile([a, b], q) });
            } else {
                // SAFETY: as above.
                out[0] = unsafe { gemv_tile([rows], q) }[0];
            }
        }
    }

    unsafe fn decode_row(row: &[u8], dst: &mut [u8]) {
        // SAFETY: forwarded from the caller (`dst.len() == 4 * row.len()`).
        unsafe { decode_row(row, dst) }
    }

    unsafe fn dot_tile<const R: usize, const T: usize>(
        codes: [&[u8]; R],
        qs: [&[i8]; T],
    ) -> [[i32; T]; R] {
        // SAFETY: forwarded from the caller (equal lengths, multiples of 128).
        unsafe { dot_tile(codes, qs) }
    }
}

/// The four groups of 16 codes in 16 packed bytes, each code in its own byte, as signed bytes:
/// byte `p` of a block holds weights `p`, `p + 32`, `p + 64` and `p + 96` in bits 7:6, 5:4, 3:2
/// and 1:0.
#[inline]
#[target_feature(enable = "neon")]
fn unpack(packed: uint8x16_t) -> [int8x16_t; 4] {
    let mask = vdupq_n_u8(3);
    [
        // A right shift by 6 leaves only the top two bits: no mask needed.
        vshrq_n_u8::<6>(packed),
        vandq_u8(vshrq_n_u8::<4>(packed), mask),
        vandq_u8(vshrq_n_u8::<2>(packed), mask),
        vandq_u8(packed, mask),
    ]
    .map(|codes| vreinterpretq_s8_u8(codes))
}

/// `acc += codes * x` lane by lane, the low eight bytes into `acc[0]` and the high into `acc[1]`.
#[inline]
#[target_feature(enable = "neon")]
fn multiply_add(acc: &mut [int16x8_t; 2], codes: int8x16_t, x: int8x16_t) {
    acc[0] = vmlal_s8(acc[0], vget_low_s8(codes), vget_low_s8(x));
    acc[1] = vmlal_high_s8(acc[1], codes, x);
}

/// `acc32 += ` the pairwise sums of both halves of `acc16`.
#[inline]
#[target_feature(enable = "neon")]
fn widen(acc32: int32x4_t, acc16: [int16x8_t; 2]) -> int32x4_t {
    vpadalq_s16(vpadalq_s16(acc32, acc16[0]), acc16[1])
}

/// Sums `code * q` over `R` packed rows against one token.
///
/// # Safety
/// Every row is `q.len() / 4` bytes and `q.len()` is a multiple of 128.
#[target_feature(enable = "neon")]
unsafe fn gemv_tile<const R: usize>(rows: [&[u8]; R], q: &[i8]) -> [i32; R] {
    let blocks = q.len() / BLOCK;
    debug_assert!(rows.iter().all(|r| r.len() == blocks * BLOCK_BYTES));
    let mut acc32 = [vdupq_n_s32(0); R];
    for run in flush_runs(blocks, GEMV_BLOCKS_PER_FLUSH) {
        let mut acc16 = [[vdupq_n_s16(0); 2]; R];
        for b in run {
            // SAFETY: b < blocks, so the 128 activations of block b exist.
            let x: [[int8x16_t; 2]; 4] = std::array::from_fn(|g| unsafe {
                let at = q.as_ptr().add(b * BLOCK + g * BLOCK_BYTES);
                [vld1q_s8(at), vld1q_s8(at.add(16))]
            });
            for (acc, row) in acc16.iter_mut().zip(rows) {
                // SAFETY: b < blocks, so the 32 packed bytes of block b exist in every row.
                let packed = unsafe {
                    let at = row.as_ptr().add(b * BLOCK_BYTES);
                    [unpack(vld1q_u8(at)), unpack(vld1q_u8(at.add(16)))]
                };
                for (g, x) in x.iter().enumerate() {
                    multiply_add(acc, packed[0][g], x[0]);
                    multiply_add(acc, packed[1][g], x[1]);
                }
            }
        }
        for (a32, a16) in acc32.iter_mut().zip(acc16) {
            *a32 = widen(*a32, a16);
        }
    }
    acc32.map(|v| vaddvq_s32(v))
}

/// Unpacks a packed row into one code per byte, in column order.
///
/// # Safety
/// `dst.len() == 4 * row.len()` and `row.len()` is a multiple of 32.
#[target_feature(enable = "neon")]
unsafe fn decode_row(row: &[u8], dst: &mut [u8]) {
    for (packed, dst) in unpacked_blocks(row, dst) {
        // SAFETY: `packed` is 32 bytes and `dst` 128, so each load and each 16-byte store of
        // group g's halves fits.
        unsafe {
            for half in 0..2 {
                let codes = unpack(vld1q_u8(packed.as_ptr().add(16 * half)));
                for (g, codes) in codes.into_iter().enumerate() {
                    let at = dst.as_mut_ptr().add(g * BLOCK_BYTES + 16 * half);
                    vst1q_u8(at, vreinterpretq_u8_s8(codes));
                }
            }
        }
    }
}

/// `out[r][t] = sum_c codes[r][c] * qs[t][c]` over unpacked codes.
///
/// # Safety
/// All slices have the same length, a multiple of 16.
#[target_feature(enable = "neon")]
unsafe fn dot_tile<const R: usize, const T: usize>(
    codes: [&[u8]; R],
    qs: [&[i8]; T],
) -> [[i32; T]; R] {
    let chunks = qs[0].len() / 16;
    debug_assert!(codes.iter().all(|c| c.len() == chunks * 16));
    debug_assert!(qs.iter().all(|q| q.len() == chunks * 16));
    let mut acc32 = [[vdupq_n_s32(0); T]; R];
    for run in flush_runs(chunks, CHUNKS_PER_FLUSH) {
        let mut acc16 = [[[vdupq_n_s16(0); 2]; T]; R];
        for ch in run {
            // A plain loop rather than `from_fn`: a closure would not inherit this function's
            // target features.
            let mut w = [vdupq_n_s8(0); R];
            for (w, codes) in w.iter_mut().zip(codes) {
                // SAFETY: ch < chunks, so 16 bytes at ch * 16 exist in every slice; codes are
                // at most 2, the same value as signed bytes.
                *w = unsafe { vreinterpretq_s8_u8(vld1q_u8(codes.as_ptr().add(ch * 16))) };
            }
            for t in 0..T {
                // SAFETY: as above.
                let x = unsafe { vld1q_s8(qs[t].as_ptr().add(ch * 16)) };
                for r in 0..R {
                    multiply_add(&mut acc16[r][t], w[r], x);
                }
            }
        }
        for r in 0..R {
            for t in 0..T {
                acc32[r][t] = widen(acc32[r][t], acc16[r][t]);
            }
        }
    }
    acc32.map(|row| row.map(|v| vaddvq_s32(v)))
}
