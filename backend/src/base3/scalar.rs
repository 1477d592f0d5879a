//! Portable base-3 decode: each byte's trits decoded and multiplied one by one, the reference
//! the AVX-512 path must equal.

use super::{GROUP_BYTES, GROUP_WEIGHTS, trits};
use crate::i2s::code_at;

/// `out[r] = sum_c code(r, c) * q[c]` for the base-3 rows in `rows` (`rb` bytes each, `groups`
/// whole groups then I2_S blocks) and one padded token `q`.
pub(super) fn row_sums(rows: &[u8], rb: usize, groups: usize, q: &[i8], out: &mut [i32]) {
    for (row, out) in rows.chunks_exact(rb).zip(out) {
        let (packed, tail) = row.split_at(groups * GROUP_BYTES);
        let mut sum = 0i32;
        for (g, group) in packed.chunks_exact(GROUP_BYTES).enumerate() {
            let x = &q[g * GROUP_WEIGHTS..(g + 1) * GROUP_WEIGHTS];
            for (p, &byte) in group.iter().enumerate() {
                for (j, t) in trits(byte).into_iter().enumerate() {
                    sum += t as i32 * x[j * GROUP_BYTES + p] as i32;
                }
            }
        }
        let x = &q[groups * GROUP_WEIGHTS..];
        for (c, &x) in x.iter().enumerate() {
            sum += code_at(tail, c) as i32 * x as i32;
        }
        *out = sum;
    }
}
