//! I2_S with a three-weight lookup-table copy for decode: the same ternary matrix twice, I2_S
//! (2 bits per weight) for batches of tokens and 5 bits per three weights (1.67 bits per weight)
//! for one token, read with `vpshufb` lookups (bitnet.cpp's TL2 idea, kept exact).
//!
//! Decode reads every weight once per token and is limited by memory bandwidth, so it reads the
//! smaller copy: 17% fewer bytes per token than I2_S. This is the AVX2 counterpart of
//! [`crate::base3`], whose `vpdpbusd` trick has no AVX2 form (`vpmaddubsw` saturates on its
//! bytes); a 4-bit lookup costs about what I2_S's shifts and masks do. Prefill reuses each
//! weight for many tokens and keeps the I2_S kernels. The price is memory: 3.67 bits per weight.
//!
//! Patterns: three weights `(w0, w1, w2)` are one of 27 patterns `p = 9 (w0 + 1) + 3 (w1 + 1) +
//! (w2 + 1)`; pattern `26 - p` is its negation, so a 4-bit index `min(p, 26 - p)` (0..=13, 13 is
//! all zeros) and a sign bit name it. For each token, a table per column triple holds the 14 sums
//! `w . q` (at most 384 in magnitude) split as `l + 63 h` with `|l| <= 31`, `|h| <= 6`, so that
//! both parts are bytes that `vpsignb` negates and four triples' parts add up without overflow.
//!
//! Layout of the copy: rows in tiles of [`TILE_ROWS`] (the last one padded with zero rows),
//! columns in octets of eight triples (24 columns, `k` rounded up to whole octets; columns past
//! the activations count as zeros). Per tile and octet, five 32-byte vectors: four of indices
//! (row `r`'s byte of vector `i` holds triple `2i` in its low nibble and `2i + 1` in its high
//! nibble) and one of signs (bit `j` of row `r`'s byte is triple `j`'s), each row at
//! [`position_of_row`] as the LUT kernel places it.

#[cfg(target_arch = "x86_64")]
mod avx2;
mod scalar;

use std::cell::Cell;

use rayon::prelude::*;

use crate::decode_copy::{CopyView, CopyWeights, DecodeCopy};
use crate::i2s::{BLOCK, BLOCK_BYTES, I2sWeights, PackedFormat, TernaryLayout};
use crate::kernels::{DecodeRows, Isa, gemv_group};
pub(crate) use crate::lut::{TILE_ROWS, position_of_row};
use crate::quant::QuantizedActivations;

/// Column triples per octet: one sign byte per row.
pub const OCTET_TRIPLES: usize = 8;
/// Columns per octet.
pub const OCTET_COLUMNS: usize = 3 * OCTET_TRIPLES;
/// Bytes per row and octet: four bytes of indices and one of signs.
const OCTET_ROW_BYTES: usize = 5;
/// Table bytes per triple: the 16 `l` bytes, then the 16 `h` bytes.
pub const TABLE_BYTES: usize = 32;
/// The index of the all-zero pattern.
const ZERO_INDEX: u8 = 13;
/// `h` weighs 63: `l + 63 h` with both parts in i8 after four triples are added.
pub const HIGH_WEIGHT: i16 = 63;

/// The 4-bit index and the sign of the pattern of three ternary weights.
fn encode(w: [i8; 3]) -> (u8, bool) {
    let p = w.iter().fold(0, |p, &w| p * 3 + (w + 1) as u8);
    if p > ZERO_INDEX {
        (26 - p, true)
    } else {
        (p, false)
    }
}

/// The three weights of an index (before its sign).
const fn decode(index: u8) -> [i8; 3] {
    [
        (index / 9) as i8 - 1,
        (index / 3 % 3) as i8 - 1,
        (index % 3) as i8 - 1,
    ]
}

/// `(l, h)` with `v = l + 63 h` and `|l| <= 31`, for `|v| <= 384`.
pub fn split(v: i16) -> (i8, i8) {
    let h = (v + 31).div_euclid(HIGH_WEIGHT);
    ((v - HIGH_WEIGHT * h) as i8, h as i8)
}

/// [`split`] without a division, so that the table loop vectorizes: `floor((v + 31) / 63)` as
/// `floor((v + 409) / 63) - 6` on `25..=793`, where multiplying by `ceil(2^16 / 63)` and shifting
/// is exact (a unit test checks every `|v| <= 384`).
#[inline(always)]
fn split_by_multiplying(v: i16) -> (i16, i16) {
    let h = (((v + 409) as u32 * 1041) >> 16) as i16 - 6;
    (v - HIGH_WEIGHT * h, h)
}

/// Octets of a row of `k` weights (I2_S's padding to whole blocks is not stored again).
fn octets(k: usize) -> usize {
    k.div_ceil(OCTET_COLUMNS)
}

/// Column triples of a row of `k` weights (whole octets).
pub fn triples(k: usize) -> usize {
    octets(k) * OCTET_TRIPLES
}

/// Bytes of one row of the copy (five per octet).
pub fn lut3_row_bytes(k: usize) -> usize {
    octets(k) * OCTET_ROW_BYTES
}

/// One I2_S row as ternary values, zero past its padded width up to whole triples.
fn row_values(row: &[u8], out: &mut [i8]) {
    out.fill(0);
    for (block, values) in row.chunks_exact(BLOCK_BYTES).zip(out.chunks_mut(BLOCK)) {
        for (p, &byte) in block.iter().enumerate() {
            for quarter in 0..4 {
                values[quarter * BLOCK_BYTES + p] = ((byte >> (6 - 2 * quarter)) & 3) as i8 - 1;
            }
        }
    }
}

/// The copy's tile of the (up to) 32 I2_S rows in `rows` (`rb` bytes each) into `out`.
fn pack_tile(rows: &[u8], rb: usize, k: usize, out: &mut [u8]) {
    let mut values = vec![0i8; (3 * triples(k)).max(4 * rb)];
    out.fill(0);
    for r in 0..TILE_ROWS {
        let position = position_of_row(r);
        match rows.get(r * rb..(r + 1) * rb) {
            Some(row) => row_values(row, &mut values),
            None => values.fill(0),
        }
        for (octet, vectors) in out
            .chunks_exact_mut(OCTET_ROW_BYTES * TILE_ROWS)
            .enumerate()
        {
            for j in 0..OCTET_TRIPLES {
                let c = (octet * OCTET_TRIPLES + j) * 3;
                let (index, negative) = encode([values[c], values[c + 1], values[c + 2]]);
                vectors[(j / 2) * TILE_ROWS + position] |= index << (4 * (j % 2));
                vectors[4 * TILE_ROWS + position] |= u8::from(negative) << j;
            }
        }
    }
}

/// The LUT3 copy, as a [`DecodeCopy`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lut3;

impl DecodeCopy for Lut3 {
    const FORMAT: PackedFormat = PackedFormat::I2sLut3;
    const WHAT: &'static str = "I2_S + LUT3 weights";
    const MISMATCH: &'static str =
        "I2_S + LUT3 weights (the LUT3 copy or padding differs from the I2_S codes)";

    fn read_by(isa: Isa) -> bool {
        reads_lut3(isa)
    }

    fn decode(isa: Isa, ws: &[I2sLut3View<'_>], x: &QuantizedActivations) -> Vec<Vec<f32>> {
        thread_local! {
            // Reused across tokens: up to 92 KB of tables per call at the 3B layout's FFN.
            static TABLES: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
        }
        let mut tables = TABLES.take();
        build_tables(&x.q, x.k, &mut tables);
        let rows: Vec<TokenRows<'_>> = ws
            .iter()
            .map(|w| TokenRows {
                copy: w.lut3(),
                tables: &tables,
                activation_sum: x.sums[0],
            })
            .collect();
        let outputs = gemv_group(isa, &rows, x);
        TABLES.set(tables);
        outputs
    }

    fn pack(weights: &I2sWeights, layout: TernaryLayout, copy: &mut [u8]) {
        let (codes, rb, k) = (weights.codes(), weights.layout().row_bytes(), layout.k);
        // On the pool: a 3B model has 3.2 G weights to repack at load time.
        copy.par_chunks_exact_mut(TILE_ROWS * lut3_row_bytes(k))
            .enumerate()
            .for_each(|(tile, out)| {
                let rows = &codes[(tile * TILE_ROWS * rb).min(codes.len())..];
                pack_tile(rows, rb, k, out);
            });
    }
}

/// Owned weights in the I2_S + LUT3 format: all I2_S rows (the rows of the last tile's padding
/// included, as zeros), then the copy's tiles.
pub type I2sLut3Weights = CopyWeights<Lut3>;

/// Borrowed I2_S + LUT3 weights (e.g. straight from a Burn tensor).
pub type I2sLut3View<'a> = CopyView<'a, Lut3>;

impl<'a> I2sLut3View<'a> {
    /// The LUT3 copy.
    pub fn lut3(&self) -> Lut3Tiles<'a> {
        Lut3Tiles {
            layout: self.layout,
            tiles: self.copy_bytes(),
        }
    }
}

/// The LUT3 copy of an [`I2sLut3View`]: what decode reads.
#[derive(Debug, Clone, Copy)]
pub struct Lut3Tiles<'a> {
    layout: TernaryLayout,
    tiles: &'a [u8],
}

impl<'a> Lut3Tiles<'a> {
    fn tile_bytes(&self) -> usize {
        TILE_ROWS * lut3_row_bytes(self.layout.k)
    }

    /// The bytes of tile `i` (rows `32 i` to `32 i + 31`).
    fn tile(&self, i: usize) -> &'a [u8] {
        let tile_bytes = self.tile_bytes();
        &self.tiles[i * tile_bytes..(i + 1) * tile_bytes]
    }

    /// The ternary value of row `r`, column `c`.
    pub fn value(&self, r: usize, c: usize) -> i8 {
        let tile = &self.tiles[r / TILE_ROWS * self.tile_bytes()..];
        let (triple, within) = (c / 3, c % 3);
        let (octet, j) = (triple / OCTET_TRIPLES, triple % OCTET_TRIPLES);
        let vectors = &tile[octet * OCTET_ROW_BYTES * TILE_ROWS..];
        let position = position_of_row(r % TILE_ROWS);
        let index = (vectors[(j / 2) * TILE_ROWS + position] >> (4 * (j % 2))) & 0x0f;
        let negative = (vectors[4 * TILE_ROWS + position] >> j) & 1 == 1;
        let w = decode(index)[within];
        if negative { -w } else { w }
    }
}

/// One token's tables for rows of `k` weights: for each column triple, the `l` then the `h`
/// bytes of the 14 sums of its activations `q` (entries 14 and 15 are zero and never looked up;
/// activations past the end of `q` count as zeros).
pub fn build_tables(q: &[i8], k: usize, tables: &mut Vec<u8>) {
    let count = triples(k);
    tables.clear();
    tables.resize(count * TABLE_BYTES, 0);
    let whole = (q.len() / 3).min(count);
    let (inside, past) = tables.split_at_mut(whole * TABLE_BYTES);
    for (a, table) in q.chunks_exact(3).zip(inside.chunks_exact_mut(TABLE_BYTES)) {
        fill_table([a[0], a[1], a[2]], table);
    }
    // The triple `q` ends in (if any), zero-extended; the rest stay all-zero tables.
    if let Some(table) = past.chunks_exact_mut(TABLE_BYTES).next() {
        let mut a = [0; 3];
        let rest = &q[(3 * whole).min(q.len())..];
        a[..rest.len().min(3)].copy_from_slice(&rest[..rest.len().min(3)]);
        fill_table(a, table);
    }
}

/// Each index's weights, one array per position, in the 16 lanes of a table (14 and 15 zero).
const TABLE_WEIGHTS: [[i16; 16]; 3] = {
    let mut weights = [[0; 16]; 3];
    let mut index = 0;
    while index <= ZERO_INDEX {
        let w = decode(index);
        let mut j = 0;
        while j < 3 {
            weights[j][index as usize] = w[j] as i16;
            j += 1;
        }
        index += 1;
    }
    weights
};

/// One triple's table: [`split`] of every index's sum, written as sixteen-lane array arithmetic
/// that compiles to a few vector instructions (a table per triple is built for every token).
#[inline]
fn fill_table(a: [i8; 3], table: &mut [u8]) {
    let (low, high) = table.split_at_mut(16);
    for i in 0..16 {
        let v = (0..3).fold(0i16, |v, j| v + TABLE_WEIGHTS[j][i] * a[j] as i16);
        let (l, h) = split_by_multiplying(v);
        low[i] = l as u8;
        high[i] = h as u8;
    }
}

/// A copy with the tables of the one token decode multiplies it by, and that token's sum.
#[derive(Debug, Clone, Copy)]
struct TokenRows<'a> {
    copy: Lut3Tiles<'a>,
    tables: &'a [u8],
    activation_sum: i32,
}

impl DecodeRows for TokenRows<'_> {
    const ROW_ALIGN: usize = TILE_ROWS;

    fn layout(&self) -> TernaryLayout {
        self.copy.layout
    }

    fn row_sums(&self, isa: Isa, r0: usize, q: &[i8], out: &mut [i32]) {
        let layout = self.copy.layout;
        assert_eq!(q.len(), layout.k_padded(), "one padded token");
        assert_eq!(r0 % TILE_ROWS, 0, "tasks start at whole tiles");
        let octets = octets(layout.k);
        assert_eq!(self.tables.len(), octets * OCTET_TRIPLES * TABLE_BYTES);
        for (i, out) in out.chunks_mut(TILE_ROWS).enumerate() {
            let tile = self.copy.tile(r0 / TILE_ROWS + i);
            let sums = match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the caller checked the CPU supports the path (AVX-512 machines have
                // AVX2); the tile and the tables were asserted to match `octets`.
                Isa::Avx2 | Isa::Avx512Vnni => unsafe { avx2::tile_sums(tile, self.tables) },
                _ => scalar::tile_sums(tile, q),
            };
            // Exact sums of `w * q`, turned into the sums of `(w + 1) * q` decode subtracts from.
            for (out, sum) in out.iter_mut().zip(sums) {
                *out = sum + self.activation_sum;
            }
        }
    }
}

/// Whether `isa` decodes from the LUT3 copy (NEON has no kernel for it and reads I2_S).
pub fn reads_lut3(isa: Isa) -> bool {
    matches!(isa, Isa::Scalar | Isa::Avx2 | Isa::Avx512Vnni)
}

/// The float outputs of several layers sharing the activations, each `[m, n]`: one token from
/// the LUT3 copies, several from I2_S; bit for bit what the I2_S kernels give.
pub use crate::decode_copy::copy_linear_group_quantized as i2s_lut3_linear_group_quantized;

/// Quantizes `x` (`[m, k]`, row-major) once and applies every layer to it.
pub use crate::decode_copy::copy_linear_group as i2s_lut3_linear_group;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pattern_encodes_and_decodes() {
        for p in 0..27u8 {
            let w = [(p / 9) as i8 - 1, (p / 3 % 3) as i8 - 1, (p % 3) as i8 - 1];
            let (index, negative) = encode(w);
            assert!(index <= ZERO_INDEX);
            let back = decode(index).map(|v| if negative { -v } else { v });
            assert_eq!(back, w, "pattern {p}");
        }
        assert_eq!(encode([0, 0, 0]), (ZERO_INDEX, false));
    }

    #[test]
    fn every_sum_splits_into_two_small_bytes() {
        for v in -384..=384 {
            let (l, h) = split(v);
            assert!(l.abs() <= 31 && h.abs() <= 6, "{v}");
            assert_eq!(l as i16 + HIGH_WEIGHT * h as i16, v);
            assert_eq!(split_by_multiplying(v), (l as i16, h as i16), "{v}");
        }
    }

    #[test]
    fn tables_hold_the_split_sums_of_every_index() {
        // Extreme and mixed activations, a token ending inside a triple, and triples past it.
        for q in [
            vec![127i8; 7],
            vec![-128; 7],
            vec![-128, 127, -1, 5, 0, 77, -3],
        ] {
            let mut tables = Vec::new();
            build_tables(&q, 30, &mut tables);
            assert_eq!(tables.len(), 16 * TABLE_BYTES);
            for (t, table) in tables.chunks_exact(TABLE_BYTES).enumerate() {
                let a = |j: usize| q.get(3 * t + j).copied().unwrap_or(0) as i16;
                for index in 0..16u8 {
                    let v = if index <= ZERO_INDEX {
                        let w = decode(index);
                        (0..3).map(|j| w[j] as i16 * a(j)).sum()
                    } else {
                        0
                    };
                    let (l, h) = split(v);
                    let i = index as usize;
                    assert_eq!(
                        (table[i] as i8, table[16 + i] as i8),
                        (l, h),
                        "t={t} {index}"
                    );
                }
            }
        }
    }
}
