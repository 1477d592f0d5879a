//! AVX2 path of the LUT kernel: `vpshufb` looks up 32 rows of one column pair at once.
//!
//! Each lookup is done twice, on the table's low-byte and high-byte planes, and the two results
//! are interleaved (`vpunpck{l,h}bw`) into exact i16 sums. A table entry is at most 256 in
//! magnitude, so the i16 accumulators take one I2_S block (64 pairs, <= 16384) before they are
//! widened to i32.

use std::arch::x86_64::*;

use super::{LutKernel, TABLE_BYTES, TILE_ROWS};

pub(super) struct Avx2;

/// Byte columns (two pairs each) summed in i16 before widening: one 128-column block.
const COLUMNS_PER_FLUSH: usize = 32;

impl LutKernel for Avx2 {
    unsafe fn tile(tile: &[u8], tables: &[u8], out: &mut [i32; TILE_ROWS]) {
        // SAFETY: the caller guarantees AVX2 and the lengths `tile_sums` reads.
        *out = unsafe { tile_sums(tile, tables) };
    }
}

/// The 32 rows' sums of one tile.
///
/// # Safety
/// `tile.len() == 32 * columns`, `tables.len() == 64 * columns`, `columns` a multiple of 32.
#[target_feature(enable = "avx2")]
unsafe fn tile_sums(tile: &[u8], tables: &[u8]) -> [i32; TILE_ROWS] {
    let nibble = _mm256_set1_epi8(0x0f);
    let mut wide = TileSums::new();
    for (block, block_tables) in tile
        .chunks_exact(COLUMNS_PER_FLUSH * TILE_ROWS)
        .zip(tables.chunks_exact(COLUMNS_PER_FLUSH * 2 * TABLE_BYTES))
    {
        let mut rows_low = _mm256_setzero_si256();
        let mut rows_high = _mm256_setzero_si256();
        for (column, pair_tables) in block
            .chunks_exact(TILE_ROWS)
            .zip(block_tables.chunks_exact(2 * TABLE_BYTES))
        {
            // SAFETY: `column` is 32 bytes and `pair_tables` 64 (two tables of 16 + 16 bytes).
            let (indices, table) = unsafe {
                (
                    _mm256_loadu_si256(column.as_ptr().cast()),
                    pair_tables.as_ptr(),
                )
            };
            let first = _mm256_and_si256(indices, nibble);
            let second = _mm256_and_si256(_mm256_srli_epi16::<4>(indices), nibble);
            for (pattern, offset) in [(first, 0), (second, TABLE_BYTES)] {
                // SAFETY: `offset + 32 <= 64`: the low and high planes of one pair's table.
                let (low, high) = unsafe {
                    (
                        broadcast_16(table.add(offset)),
                        broadcast_16(table.add(offset + 16)),
                    )
                };
                let low = _mm256_shuffle_epi8(low, pattern);
                let high = _mm256_shuffle_epi8(high, pattern);
                rows_low = _mm256_add_epi16(rows_low, _mm256_unpacklo_epi8(low, high));
                rows_high = _mm256_add_epi16(rows_high, _mm256_unpackhi_epi8(low, high));
            }
        }
        wide.add_widened(rows_low, rows_high);
    }
    wide.rows()
}

/// The i32 sums of a tile's 32 rows, eight rows per vector, in row order.
pub(crate) struct TileSums([__m256i; 4]);

impl TileSums {
    #[target_feature(enable = "avx2")]
    pub(crate) fn new() -> Self {
        Self([_mm256_setzero_si256(); 4])
    }

    /// Adds i16 sums of rows 0-15 (`low`) and 16-31 (`high`), each in row order.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) fn add_widened(&mut self, low: __m256i, high: __m256i) {
        for (i, sums) in [low, high].into_iter().enumerate() {
            let lower = _mm256_cvtepi16_epi32(_mm256_castsi256_si128(sums));
            let upper = _mm256_cvtepi16_epi32(_mm256_extracti128_si256::<1>(sums));
            self.0[2 * i] = _mm256_add_epi32(self.0[2 * i], lower);
            self.0[2 * i + 1] = _mm256_add_epi32(self.0[2 * i + 1], upper);
        }
    }

    /// The 32 sums.
    #[target_feature(enable = "avx2")]
    pub(crate) fn rows(self) -> [i32; TILE_ROWS] {
        let mut out = [0i32; TILE_ROWS];
        for (chunk, sums) in out.chunks_exact_mut(8).zip(self.0) {
            // SAFETY: `chunk` is 8 i32 = 32 writable bytes.
            unsafe { _mm256_storeu_si256(chunk.as_mut_ptr().cast(), sums) };
        }
        out
    }
}

/// 16 bytes at `ptr` in both 128-bit lanes (`vpshufb` looks up within each lane).
///
/// # Safety
/// `ptr` points to at least 16 readable bytes.
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn broadcast_16(ptr: *const u8) -> __m256i {
    // SAFETY: the caller guarantees 16 readable bytes.
    unsafe { _mm256_broadcastsi128_si256(_mm_loadu_si128(ptr.cast())) }
}
