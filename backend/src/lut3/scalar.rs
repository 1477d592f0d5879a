//! Portable LUT3 decode: each row's patterns decoded and multiplied one by one, no tables; the
//! reference the AVX2 path must equal.

use super::{OCTET_ROW_BYTES, OCTET_TRIPLES, TILE_ROWS, decode, position_of_row};

/// The exact sums `sum_c w(r, c) * q[c]` of the 32 rows of one tile and one padded token `q`.
pub(super) fn tile_sums(tile: &[u8], q: &[i8]) -> [i32; TILE_ROWS] {
    let activation = |c: usize| q.get(c).copied().unwrap_or(0) as i32;
    let mut sums = [0i32; TILE_ROWS];
    for (r, sum) in sums.iter_mut().enumerate() {
        let position = position_of_row(r);
        for (octet, vectors) in tile.chunks_exact(OCTET_ROW_BYTES * TILE_ROWS).enumerate() {
            let signs = vectors[4 * TILE_ROWS + position];
            for j in 0..OCTET_TRIPLES {
                let index = (vectors[(j / 2) * TILE_ROWS + position] >> (4 * (j % 2))) & 0x0f;
                let sign = if (signs >> j) & 1 == 1 { -1 } else { 1 };
                let c = (octet * OCTET_TRIPLES + j) * 3;
                let dot: i32 = (0..3)
                    .map(|i| decode(index)[i] as i32 * activation(c + i))
                    .sum();
                *sum += sign * dot;
            }
        }
    }
    sums
}
