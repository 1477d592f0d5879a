//! The unpacking kernels (scalar, AVX2, NEON): packed rows streamed for one token; for several,
//! a block of rows unpacked to one byte per code once and run against every token, in tiles of
//! [`ROW_TILE`] rows x [`TOKEN_TILE`] tokens, a block of tokens at a time.

use std::cell::RefCell;

use super::{SumLayout, TernaryKernel};
use crate::aligned::AlignedBytes;
use crate::i2s::{BLOCK, BLOCK_BYTES};

/// Rows decoded together in the multi-token path of the decoding kernels.
const ROW_TILE: usize = 2;
/// Tokens that share each load of decoded weights in the multi-token path.
const TOKEN_TILE: usize = 4;
/// Rows unpacked at once in the multi-token path (one byte per code: 48-260 KiB at the model
/// layouts' widths), which stay in L2 while each block of tokens runs against them.
const DECODED_ROWS: usize = 32;
/// Activation bytes per block of tokens in the multi-token path, which stay in L1 while every
/// unpacked row runs against them (at least one token tile, whatever the width).
const TOKEN_BLOCK_BYTES: usize = 16 * 1024;

/// Every [`DecodingKernel`] is a [`TernaryKernel`] through [`decoded_dots`].
impl<K: DecodingKernel> TernaryKernel for K {
    unsafe fn raw_dots(
        codes: &[u8],
        rb: usize,
        q: &[i8],
        m: usize,
        layout: SumLayout,
        out: &mut [i32],
    ) {
        // SAFETY: forwarded from the caller.
        unsafe { decoded_dots::<K>(codes, rb, q, m, layout, out) }
    }
}

/// A kernel that streams packed rows for one token and unpacks rows to one byte per code for
/// several, so that unpacking is paid once per row, not per token.
pub(super) trait DecodingKernel {
    /// `out[r] = sum_c code(r, c) * q[c]` for every packed row in `codes`.
    ///
    /// # Safety
    /// The CPU supports the instruction set; `codes.len() == out.len() * row_bytes` and
    /// `q.len() == 4 * row_bytes`, a multiple of the block.
    unsafe fn gemv(codes: &[u8], row_bytes: usize, q: &[i8], out: &mut [i32]);

    /// Unpacks one I2_S row into one code byte per weight, in column order.
    ///
    /// # Safety
    /// The CPU supports the instruction set; `dst.len() == 4 * row.len()`.
    unsafe fn decode_row(row: &[u8], dst: &mut [u8]);

    /// `out[r][t] = sum_c codes[r][c] * qs[t][c]` over unpacked codes.
    ///
    /// # Safety
    /// The CPU supports the instruction set; all slices have one length, a multiple of the block.
    unsafe fn dot_tile<const R: usize, const T: usize>(
        codes: [&[u8]; R],
        qs: [&[i8]; T],
    ) -> [[i32; T]; R];
}

/// Each packed block of an I2_S `row` with the part of `dst` its codes unpack into, one byte
/// per code ([`DecodingKernel::decode_row`]).
pub(super) fn unpacked_blocks<'a>(
    row: &'a [u8],
    dst: &'a mut [u8],
) -> impl Iterator<Item = (&'a [u8], &'a mut [u8])> {
    debug_assert_eq!(dst.len(), 4 * row.len());
    row.chunks_exact(BLOCK_BYTES)
        .zip(dst.chunks_exact_mut(BLOCK))
}

/// The runs of at most `per_flush` steps that `0..steps` is summed in by kernels whose lanes
/// are i16: each run is summed in i16 and widened to i32 after it, so no lane can overflow.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(super) fn flush_runs(
    steps: usize,
    per_flush: usize,
) -> impl Iterator<Item = std::ops::Range<usize>> {
    (0..steps)
        .step_by(per_flush)
        .map(move |start| start..(start + per_flush).min(steps))
}

/// [`TernaryKernel::raw_dots`] for a [`DecodingKernel`]: packed rows for one token; for several,
/// a block of rows unpacked once and reused for every token, a block of tokens at a time.
///
/// # Safety
/// As [`TernaryKernel::raw_dots`].
unsafe fn decoded_dots<K: DecodingKernel>(
    codes: &[u8],
    rb: usize,
    q: &[i8],
    m: usize,
    layout: SumLayout,
    out: &mut [i32],
) {
    let kp = rb * 4;
    if m == 1 {
        // SAFETY: forwarded from the caller.
        unsafe { K::gemv(codes, rb, q, out) };
        return;
    }
    thread_local! {
        static DECODED: RefCell<AlignedBytes<u8>> = RefCell::new(AlignedBytes::default());
    }
    let token_block = (TOKEN_BLOCK_BYTES / kp / TOKEN_TILE).max(1) * TOKEN_TILE;
    DECODED.with_borrow_mut(|decoded| {
        decoded.resize(DECODED_ROWS * kp);
        for (i, block) in codes.chunks(DECODED_ROWS * rb).enumerate() {
            for (row, dst) in block.chunks_exact(rb).zip(decoded.chunks_exact_mut(kp)) {
                // SAFETY: CPU support guaranteed by the caller; `dst` is 4 bytes per packed byte.
                unsafe { K::decode_row(row, dst) };
            }
            let block = &decoded[..block.len() * 4];
            for t0 in (0..m).step_by(token_block) {
                let tokens = t0..m.min(t0 + token_block);
                for (j, tile) in block.chunks(ROW_TILE * kp).enumerate() {
                    let r0 = i * DECODED_ROWS + j * ROW_TILE;
                    if tile.len() == ROW_TILE * kp {
                        token_tiles::<K, ROW_TILE>(tile, q, kp, tokens.clone(), (r0, layout), out);
                    } else {
                        token_tiles::<K, 1>(tile, q, kp, tokens.clone(), (r0, layout), out);
                    }
                }
            }
        }
    });
}

/// Runs `R` decoded rows (rows `r0..` of the output) against `tokens`, `TOKEN_TILE` at a time,
/// then one at a time.
fn token_tiles<K: DecodingKernel, const R: usize>(
    decoded: &[u8],
    q: &[i8],
    kp: usize,
    tokens: std::ops::Range<usize>,
    (r0, layout): (usize, SumLayout),
    out: &mut [i32],
) {
    let codes: [&[u8]; R] = std::array::from_fn(|r| &decoded[r * kp..(r + 1) * kp]);
    let token = |t: usize| &q[t * kp..(t + 1) * kp];
    let mut t = tokens.start;
    while t < tokens.end {
        let tile = if tokens.end - t >= TOKEN_TILE {
            TOKEN_TILE
        } else {
            1
        };
        if tile == TOKEN_TILE {
            // SAFETY: CPU support guaranteed by `decoded_dots`' caller; every slice is `kp` long.
            let sums = unsafe {
                K::dot_tile::<R, TOKEN_TILE>(codes, std::array::from_fn(|i| token(t + i)))
            };
            store(&sums, (r0, t), layout, out);
        } else {
            // SAFETY: as above.
            let sums = unsafe { K::dot_tile::<R, 1>(codes, [token(t)]) };
            store(&sums, (r0, t), layout, out);
        }
        t += tile;
    }
}

/// Writes a tile of sums for rows `r0..r0 + R` and tokens `t0..t0 + T` where `layout` puts them.
#[inline(always)]
fn store<const R: usize, const T: usize>(
    sums: &[[i32; T]; R],
    (r0, t0): (usize, usize),
    layout: SumLayout,
    out: &mut [i32],
) {
    for (r, row) in sums.iter().enumerate() {
        for (t, &sum) in row.iter().enumerate() {
            out[layout.index(r0 + r, t0 + t)] = sum;
        }
    }
}
