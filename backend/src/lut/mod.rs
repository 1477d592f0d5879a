//! The lookup-table (TL) ternary kernel: exact for any shape, chosen at run time.
//!
//! Weights are grouped in pairs of columns; a pair's two ternary values are one of 9 patterns,
//! stored as a 4-bit table index (two pairs per byte: 2 bits per weight, like I2_S). For each
//! token, a table per column pair holds the 9 signed sums `w0 * q[2p] + w1 * q[2p + 1]` of its
//! int8 activations. The products are then lookups: `vpshufb` reads 32 rows' entries of one
//! table at once. The sums reach ±256, so each table is kept as a low-byte and a high-byte plane
//! and the two lookups are re-joined into exact i16 values (bitnet.cpp's TL kernels quantize the
//! tables to int8 instead, which is why they are not lossless). The i32 accumulators therefore
//! equal the I2_S kernels' exactly, and the float output follows the same formula.
//!
//! Layout: rows in tiles of [`TILE_ROWS`]; per tile, per byte column `j` (pairs `2j`, `2j + 1`
//! in the low and high nibble), the 32 rows' bytes in the order the AVX2 path unpacks them
//! (see [`position_of_row`]). Rows past `n` hold the all-zero pattern.

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;
mod scalar;

use rayon::prelude::*;

use crate::error::{Result, TernaryError};
use crate::i2s::{I2sView, I2sWeights, PackedFormat, TernaryLayout, check_packed};
use crate::kernels::{Isa, check_activations, finish_linear};
use crate::quant::QuantizedActivations;

/// Rows read by one table lookup (one AVX2 register of indices).
pub const TILE_ROWS: usize = 32;
/// Table bytes per column pair: 16 low bytes, then 16 high bytes.
const TABLE_BYTES: usize = 32;
/// Index of the pattern `(w0, w1) = (0, 0)`.
const ZERO_PATTERN: u8 = 4;

/// The 4-bit index of the pattern `(w0, w1)`, each in {-1, 0, 1}.
fn pattern(w0: i8, w1: i8) -> u8 {
    ((w0 + 1) * 3 + (w1 + 1)) as u8
}

/// Where row `r` of a tile sits among the tile's 32 index bytes: `vpunpck{l,h}bw` interleave
/// 8-byte groups within 128-bit lanes, so the middle two groups are swapped at packing time and
/// the unpacked i16 vectors come out in row order.
pub(crate) fn position_of_row(r: usize) -> usize {
    match r / 8 {
        1 => r + 8,
        2 => r - 8,
        _ => r,
    }
}

/// What one instruction set provides for the LUT kernel.
trait LutKernel {
    /// `out[r] = sum_p table(p, index(r, p))` for the 32 rows of one tile.
    ///
    /// # Safety
    /// The CPU supports the instruction set; `tile.len() == 32 * byte_columns`,
    /// `tables.len() == 2 * byte_columns * 32` and `byte_columns` is a multiple of 32.
    unsafe fn tile(tile: &[u8], tables: &[u8], out: &mut [i32; TILE_ROWS]);
}

/// Ternary weights in the LUT layout.
#[derive(Debug, Clone, PartialEq)]
pub struct LutWeights {
    layout: TernaryLayout,
    indices: Vec<u8>,
}

impl LutWeights {
    /// Bytes of the LUT layout of a matrix with this shape (rows padded to whole tiles).
    pub fn packed_len(layout: &TernaryLayout) -> usize {
        layout.with_format(PackedFormat::Lut).packed_len()
    }

    /// Storage per real weight, in bits (2, plus the row padding of the last tile).
    pub fn bits_per_weight(layout: &TernaryLayout) -> f64 {
        Self::packed_len(layout) as f64 * 8.0 / (layout.n * layout.k) as f64
    }

    /// Regroups I2_S weights into table indices.
    pub fn from_i2s(w: I2sView<'_>) -> Self {
        let layout = w.layout.with_format(PackedFormat::Lut);
        let byte_columns = layout.row_bytes();
        let mut indices = vec![ZERO_PATTERN * 0x11; Self::packed_len(&layout)];
        let value = |r: usize, c: usize| if c < layout.k { w.value(r, c) } else { 0 };
        for r in 0..layout.n {
            let tile = &mut indices[(r / TILE_ROWS) * TILE_ROWS * byte_columns..];
            let position = position_of_row(r % TILE_ROWS);
            for j in 0..byte_columns {
                let c = 4 * j;
                let low = pattern(value(r, c), value(r, c + 1));
                let high = pattern(value(r, c + 2), value(r, c + 3));
                tile[j * TILE_ROWS + position] = low | (high << 4);
            }
        }
        Self { layout, indices }
    }

    /// Takes bytes in the LUT layout, checking their length and that every index is a pattern.
    pub fn from_bytes(layout: TernaryLayout, indices: Vec<u8>) -> Result<Self> {
        let layout = layout.with_format(PackedFormat::Lut);
        LutView::new(layout, &indices)?;
        if let Some(index) = indices.iter().position(|b| b & 0x0f > 8 || b >> 4 > 8) {
            return Err(TernaryError::InvalidTernary {
                what: "LUT weights (pattern index above 8)",
                value: indices[index] as i32,
                index,
            });
        }
        Ok(Self { layout, indices })
    }

    /// The borrowed form the kernels read.
    pub fn view(&self) -> LutView<'_> {
        LutView {
            layout: self.layout,
            indices: &self.indices,
        }
    }

    /// The ternary value of row `r`, column `c`.
    pub fn value(&self, r: usize, c: usize) -> i8 {
        self.view().value(r, c)
    }

    /// The same weights back in I2_S.
    pub fn to_i2s(&self) -> Result<I2sWeights> {
        self.view().to_i2s()
    }

    /// Shape, scale and conventions.
    pub fn layout(&self) -> TernaryLayout {
        self.layout
    }

    /// The index bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.indices
    }

    /// The layout and the index bytes, without a copy.
    pub fn into_parts(self) -> (TernaryLayout, Vec<u8>) {
        (self.layout, self.indices)
    }
}

/// Borrowed LUT-layout weights (what the kernels read, e.g. straight from a Burn tensor).
#[derive(Debug, Clone, Copy)]
pub struct LutView<'a> {
    /// Shape, scale and conventions.
    pub layout: TernaryLayout,
    /// The index bytes, [`LutWeights::packed_len`] of them.
    pub indices: &'a [u8],
}

impl<'a> LutView<'a> {
    /// Checks the length (the patterns are checked where untrusted bytes come in:
    /// [`LutWeights::from_bytes`]).
    pub fn new(layout: TernaryLayout, indices: &'a [u8]) -> Result<Self> {
        check_packed(&layout, PackedFormat::Lut, indices.len(), "LUT weights")?;
        Ok(Self { layout, indices })
    }

    /// The ternary value of row `r`, column `c`.
    pub fn value(&self, r: usize, c: usize) -> i8 {
        let byte_columns = self.layout.row_bytes();
        let tile = (r / TILE_ROWS) * TILE_ROWS * byte_columns;
        let byte = self.indices[tile + (c / 4) * TILE_ROWS + position_of_row(r % TILE_ROWS)];
        let index = if c % 4 < 2 { byte & 0x0f } else { byte >> 4 };
        if c.is_multiple_of(2) {
            (index / 3) as i8 - 1
        } else {
            (index % 3) as i8 - 1
        }
    }

    /// The same weights back in I2_S.
    pub fn to_i2s(&self) -> Result<I2sWeights> {
        let TernaryLayout { n, k, scale, .. } = self.layout;
        let values: Vec<i8> = (0..n * k).map(|i| self.value(i / k, i % k)).collect();
        let weights = I2sWeights::from_ternary(&values, n, k, scale, self.layout.convention)?;
        let (layout, codes) = weights.into_parts();
        I2sWeights::from_codes(layout.with_activation_scale(self.layout.activation), codes)
    }

    /// The dequantized weights `[n, k]`, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let TernaryLayout { n, k, scale, .. } = self.layout;
        (0..n * k)
            .map(|i| {
                self.layout
                    .convention
                    .dequantize(self.value(i / k, i % k), scale)
            })
            .collect()
    }
}

/// One token's tables: for each column pair, the low then the high bytes of the 9 sums (entries
/// 9..15 are zero and never looked up).
pub fn build_tables(q: &[i8], tables: &mut Vec<u8>) {
    let pairs = q.len() / 2;
    tables.clear();
    tables.resize(pairs * TABLE_BYTES, 0);
    for (pair, table) in q.chunks_exact(2).zip(tables.chunks_exact_mut(TABLE_BYTES)) {
        let (a0, a1) = (pair[0] as i16, pair[1] as i16);
        let mut index = 0;
        for w0 in [-a0, 0, a0] {
            for w1 in [-a1, 0, a1] {
                let [low, high] = (w0 + w1).to_le_bytes();
                table[index] = low;
                table[16 + index] = high;
                index += 1;
            }
        }
    }
}

/// Exact accumulators `acc[t][r] = sum_c q[t][c] * w[r][c]`, row-major `[m, n]`.
pub fn lut_matmul_i32(isa: Isa, w: LutView<'_>, x: &QuantizedActivations) -> Result<Vec<i32>> {
    let (m, n) = (x.m, w.layout.n);
    let acc = accumulators(isa, w, x)?;
    Ok((0..m * n).map(|i| acc[(i % n) * m + i / n]).collect())
}

/// The float output of the layer for `m` tokens, row-major `[m, n]`: the same formula and the
/// same bits as [`crate::kernels::ternary_linear_quantized`].
pub fn lut_linear_quantized(
    isa: Isa,
    w: LutView<'_>,
    x: &QuantizedActivations,
) -> Result<Vec<f32>> {
    let acc = accumulators(isa, w, x)?;
    Ok(finish_linear(&w.layout, x, &acc, None))
}

/// Quantizes `x` (`[m, k]`, row-major) per token and applies the layer: `[m, n]`.
pub fn lut_linear(isa: Isa, w: LutView<'_>, x: &[f32], m: usize) -> Result<Vec<f32>> {
    let layout = w.layout;
    if x.len() != m * layout.k {
        return Err(TernaryError::Shape(format!(
            "activations have {} values, expected m={m} x k={}",
            x.len(),
            layout.k
        )));
    }
    let xq = QuantizedActivations::new(x, m, layout.k, layout.k_padded(), layout.activation);
    lut_linear_quantized(isa, w, &xq)
}

/// `acc[r * m + t]` for all rows and tokens; tiles split across the rayon pool, each running
/// every token so its indices stay in cache while the tables stream past.
fn accumulators(isa: Isa, w: LutView<'_>, x: &QuantizedActivations) -> Result<Vec<i32>> {
    isa.check_supported()?;
    let layout = &w.layout;
    check_activations(layout, x)?;
    let (m, n) = (x.m, layout.n);
    let tile_bytes = TILE_ROWS * layout.row_bytes();
    let tables: Vec<Vec<u8>> = (0..m)
        .into_par_iter()
        .map(|t| {
            let mut table = Vec::new();
            build_tables(x.row(t), &mut table);
            table
        })
        .collect();
    let mut tiles = vec![[0i32; TILE_ROWS]; n.div_ceil(TILE_ROWS) * m];
    if m == 0 {
        return Ok(Vec::new());
    }
    tiles
        .par_chunks_mut(m)
        .zip(w.indices.par_chunks(tile_bytes))
        .for_each(|(out, tile)| {
            for (out, tables) in out.iter_mut().zip(&tables) {
                match isa {
                    // NEON has no LUT kernel of its own: the portable one gives the same sums.
                    Isa::Scalar | Isa::Neon => run::<scalar::Scalar>(tile, tables, out),
                    // The LUT kernel needs only byte shuffles: AVX-512 machines run the AVX2 one.
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx2 | Isa::Avx512Vnni => run::<avx2::Avx2>(tile, tables, out),
                    #[cfg(not(target_arch = "x86_64"))]
                    _ => unreachable!("check_supported rejects x86 paths on other architectures"),
                }
            }
        });
    let mut acc = vec![0i32; n * m];
    for (i, tile) in tiles.iter().enumerate() {
        let (tile_index, t) = (i / m, i % m);
        for (r_in, value) in tile.iter().enumerate() {
            let r = tile_index * TILE_ROWS + r_in;
            if r < n {
                acc[r * m + t] = *value;
            }
        }
    }
    Ok(acc)
}

fn run<K: LutKernel>(tile: &[u8], tables: &[u8], out: &mut [i32; TILE_ROWS]) {
    assert_eq!(tile.len() * 2, tables.len(), "one table per column pair");
    // SAFETY: `accumulators` checked the CPU supports K's instruction set; the tile is 32 rows
    // of whole I2_S blocks (32 byte columns each) and the lengths were asserted above.
    unsafe { K::tile(tile, tables, out) };
}
