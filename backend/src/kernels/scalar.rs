//! Portable reference path: plain loops over the I2_S layout.

use super::unpacking::{DecodingKernel, unpacked_blocks};
use crate::i2s::{BLOCK, BLOCK_BYTES};

pub(super) struct Scalar;

/// The f32 of the f16 with bits `half`, without branches (so that it vectorizes): `half`'s
/// `f16::to_f32` for every bit pattern (NaNs quieted, payload kept).
#[inline(always)]
pub(super) fn f16_to_f32(half: u16) -> f32 {
    let half = u32::from(half);
    let (sign, magnitude) = ((half & 0x8000) << 16, half & 0x7fff);
    // A finite half's exponent and mantissa, moved to an f32's places, read as the value times
    // 2^-112 (subnormal halves as subnormal f32s), so one multiplication by 2^112 rescales it
    // exactly.
    let finite = (f32::from_bits(magnitude << 13) * f32::from_bits(0x7780_0000)).to_bits();
    let mantissa = magnitude & 0x3ff;
    let quiet = ((mantissa + 0x3ff) & 0x400) << 12;
    let special = 0x7f80_0000 | quiet | mantissa << 13;
    f32::from_bits(sign | if magnitude >= 0x7c00 { special } else { finite })
}

/// The four weights byte `p` of a block holds sit at `p + GROUP * 32` for these groups, in bits
/// `SHIFTS[group]`.
const SHIFTS: [u32; 4] = [6, 4, 2, 0];

impl DecodingKernel for Scalar {
    unsafe fn gemv(codes: &[u8], row_bytes: usize, q: &[i8], out: &mut [i32]) {
        for (row, out) in codes.chunks_exact(row_bytes).zip(out) {
            *out = row
                .chunks_exact(BLOCK_BYTES)
                .zip(q.chunks_exact(BLOCK))
                .map(|(block, q)| {
                    let mut sum = 0i32;
                    for (group, shift) in SHIFTS.iter().enumerate() {
                        let q = &q[group * BLOCK_BYTES..(group + 1) * BLOCK_BYTES];
                        for (&byte, &x) in block.iter().zip(q) {
                            sum += ((byte >> shift) & 3) as i32 * x as i32;
                        }
                    }
                    sum
                })
                .sum();
        }
    }

    unsafe fn decode_row(row: &[u8], dst: &mut [u8]) {
        for (block, dst) in unpacked_blocks(row, dst) {
            for (group, shift) in SHIFTS.iter().enumerate() {
                let dst = &mut dst[group * BLOCK_BYTES..(group + 1) * BLOCK_BYTES];
                for (d, &byte) in dst.iter_mut().zip(block) {
                    *d = (byte >> shift) & 3;
                }
            }
        }
    }

    unsafe fn dot_tile<const R: usize, const T: usize>(
        codes: [&[u8]; R],
        qs: [&[i8]; T],
    ) -> [[i32; T]; R] {
        std::array::from_fn(|r| {
            std::array::from_fn(|t| {
                codes[r]
                    .iter()
                    .zip(qs[t])
                    .map(|(&c, &x)| c as i32 * x as i32)
                    .sum()
            })
        })
    }
}
