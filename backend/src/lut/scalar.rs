//! Portable reference path of the LUT kernel: one table read per row and column pair.

use super::{LutKernel, TABLE_BYTES, TILE_ROWS, position_of_row};

pub(super) struct Scalar;

impl LutKernel for Scalar {
    unsafe fn tile(tile: &[u8], tables: &[u8], out: &mut [i32; TILE_ROWS]) {
        let entry = |table: &[u8], index: u8| {
            let index = index as usize;
            i16::from_le_bytes([table[index], table[16 + index]]) as i32
        };
        for (r, out) in out.iter_mut().enumerate() {
            let position = position_of_row(r);
            *out = tile
                .chunks_exact(TILE_ROWS)
                .zip(tables.chunks_exact(2 * TABLE_BYTES))
                .map(|(column, pair_tables)| {
                    let byte = column[position];
                    let (first, second) = pair_tables.split_at(TABLE_BYTES);
                    entry(first, byte & 0x0f) + entry(second, byte >> 4)
                })
                .sum();
        }
    }
}
