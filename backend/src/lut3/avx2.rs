//! AVX2 LUT3 decode: per triple, two `vpshufb` lookups (the `l` and `h` bytes of 32 rows'
//! sums) and two `vpsignb` for the rows whose pattern is negated.
//!
//! Four triples' bytes are added in i8 (at most 4 x 31 and 4 x 6), interleaved and joined by
//! `vpmaddubsw` with `(1, 63)` into i16 sums `l + 63 h` of at most 4 x 384 = 1536 (|q| <= 128); two
//! such per octet, so the i16 lanes take [`OCTETS_PER_FLUSH`] octets (<= 24576) before widening.

use std::arch::x86_64::*;

use super::{OCTET_ROW_BYTES, OCTET_TRIPLES, TABLE_BYTES, TILE_ROWS};
use crate::kernels::prefetch_distance;
use crate::lut::avx2::{TileSums, broadcast_16};

/// Octets summed in i16 before widening to i32.
const OCTETS_PER_FLUSH: usize = 8;

/// The exact sums of the 32 rows of one tile against one token's tables.
///
/// # Safety
/// The CPU supports AVX2; `tile` is whole octets of 160 bytes and `tables` holds
/// `8 * TABLE_BYTES` bytes per octet.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn tile_sums(tile: &[u8], tables: &[u8]) -> [i32; TILE_ROWS] {
    let octet_bytes = OCTET_ROW_BYTES * TILE_ROWS;
    let octet_tables = OCTET_TRIPLES * TABLE_BYTES;
    let octets = tile.len() / octet_bytes;
    assert!(tile.len() == octets * octet_bytes && tables.len() == octets * octet_tables);
    let nibble = _mm256_set1_epi8(0x0f);
    let one = _mm256_set1_epi8(1);
    let join = _mm256_set1_epi16(0x3f01);
    let ahead = prefetch_distance(octet_bytes);
    let mut wide = TileSums::new();
    let mut octet = 0;
    while octet < octets {
        let run_end = (octet + OCTETS_PER_FLUSH).min(octets);
        let (mut rows_low, mut rows_high) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        while octet < run_end {
            for line in 0..3 {
                let next = tile
                    .as_ptr()
                    .wrapping_add(octet * octet_bytes + ahead + 64 * line);
                // A hint only (no fault past the end): the tiles of a task are one stream that
                // the hardware prefetcher alone left stalled on DRAM.
                _mm_prefetch::<_MM_HINT_T1>(next.cast());
            }
            // SAFETY: octet < octets: its five vectors and eight tables are in bounds.
            let (vectors, table) = unsafe {
                let at = tile.as_ptr().add(octet * octet_bytes);
                let vectors: [__m256i; 5] =
                    std::array::from_fn(|i| _mm256_loadu_si256(at.add(32 * i).cast()));
                (vectors, tables.as_ptr().add(octet * octet_tables))
            };
            // vpsignb zeroes where its sign byte is 0, so every byte must stay nonzero once bit
            // j of it is shifted into bit 7: with bit 0 set, the 16-bit shift left by 7 - j
            // (which moves every bit of a byte within it, or up into the next one) leaves that
            // 1 at bit 7 - j for j >= 1; triple 0's own sign is bit 0, so its byte gets the 1
            // after the shift instead.
            let marked = _mm256_or_si256(vectors[4], one);
            let first_sign = _mm256_or_si256(_mm256_slli_epi16::<7>(vectors[4]), one);
            for quad in 0..2 {
                let (mut low, mut high) = (_mm256_setzero_si256(), _mm256_setzero_si256());
                for pair in 0..2 {
                    let indices = vectors[2 * quad + pair];
                    let patterns = [
                        _mm256_and_si256(indices, nibble),
                        _mm256_and_si256(_mm256_srli_epi16::<4>(indices), nibble),
                    ];
                    for (half, pattern) in patterns.into_iter().enumerate() {
                        let j = 4 * quad + 2 * pair + half;
                        let sign = if j == 0 {
                            first_sign
                        } else {
                            shift_sign(marked, j)
                        };
                        // SAFETY: j < 8: triple j's 32 table bytes are in this octet's tables.
                        let (l, h) = unsafe {
                            let at = table.add(j * TABLE_BYTES);
                            (broadcast_16(at), broadcast_16(at.add(16)))
                        };
                        let l = _mm256_sign_epi8(_mm256_shuffle_epi8(l, pattern), sign);
                        let h = _mm256_sign_epi8(_mm256_shuffle_epi8(h, pattern), sign);
                        low = _mm256_add_epi8(low, l);
                        high = _mm256_add_epi8(high, h);
                    }
                }
                let lower = _mm256_maddubs_epi16(join, _mm256_unpacklo_epi8(low, high));
                let upper = _mm256_maddubs_epi16(join, _mm256_unpackhi_epi8(low, high));
                rows_low = _mm256_add_epi16(rows_low, lower);
                rows_high = _mm256_add_epi16(rows_high, upper);
            }
            octet += 1;
        }
        wide.add_widened(rows_low, rows_high);
    }
    wide.rows()
}

/// `signs` shifted left by `7 - j` bits in each 16-bit lane (`j` in 1..=7): bit `j` of every
/// byte lands in its bit 7.
#[inline]
#[target_feature(enable = "avx2")]
fn shift_sign(signs: __m256i, j: usize) -> __m256i {
    match j {
        1 => _mm256_slli_epi16::<6>(signs),
        2 => _mm256_slli_epi16::<5>(signs),
        3 => _mm256_slli_epi16::<4>(signs),
        4 => _mm256_slli_epi16::<3>(signs),
        5 => _mm256_slli_epi16::<2>(signs),
        6 => _mm256_slli_epi16::<1>(signs),
        _ => signs,
    }
}
