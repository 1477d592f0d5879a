//! I2_S with a base-3 copy for decode: the same ternary matrix twice, I2_S (2 bits per weight)
//! for batches of tokens and five weights per byte (1.6 bits per weight) for one token.
//!
//! Decode reads every weight once per token and is limited by memory bandwidth, so it reads the
//! smaller copy: 20% fewer bytes per token than I2_S. Prefill is limited by `vpdpbusd` and
//! reuses each weight for many tokens, so it keeps the I2_S kernels. The price is memory: the
//! pair takes 3.6 bits per weight.
//!
//! Base-3 rows: each run of five I2_S blocks (640 weights) is a group of [`GROUP_BYTES`] = 128
//! bytes where byte `p` holds weights `p`, `p + 128`, `p + 256`, `p + 384` and `p + 512` as the
//! trits `t0..t4` (`t = w + 1`, the I2_S code). A byte `q` yields them most significant first:
//! `t = (3 q) >> 8`, then `q = (3 q) mod 256` ([`trits`]); [`ENCODE`] maps the five trits back to
//! a byte that yields them (as llama.cpp's TQ1_0 does). Blocks left over after the last whole
//! group (the padded `k` is not always a multiple of 640) stay in I2_S bytes.
//!
//! That identity also makes the product exact with `vpdpbusd` on the stored bytes themselves:
//! `3 q_j = 256 t_j + q_(j+1)`, so `sum x t_j = (3 sum x q_j - sum x q_(j+1)) / 256`, and every
//! lane's two sums give an exact multiple of 256 ([`avx512`]).

#[cfg(target_arch = "x86_64")]
mod avx512;
mod scalar;

use rayon::prelude::*;

use crate::decode_copy::{CopyView, CopyWeights, DecodeCopy};
use crate::i2s::{BLOCK, BLOCK_BYTES, I2sWeights, PackedFormat, TernaryLayout};
use crate::kernels::{DecodeRows, Isa, gemv_group};
use crate::quant::QuantizedActivations;

/// I2_S blocks per base-3 group.
pub const GROUP_BLOCKS: usize = 5;
/// Weights per base-3 group.
pub const GROUP_WEIGHTS: usize = GROUP_BLOCKS * BLOCK;
/// Bytes per base-3 group: five trits per byte.
pub const GROUP_BYTES: usize = GROUP_WEIGHTS / 5;

/// The five trits a byte yields, most significant first.
const fn trits(byte: u8) -> [u8; 5] {
    let mut q = byte as u16;
    let mut out = [0; 5];
    let mut j = 0;
    while j < 5 {
        out[j] = ((3 * q) >> 8) as u8;
        q = (3 * q) & 0xff;
        j += 1;
    }
    out
}

/// `t0 * 81 + t1 * 27 + t2 * 9 + t3 * 3 + t4`: the index of five trits in [`ENCODE`].
const fn trits_index(t: [u8; 5]) -> usize {
    let mut value = 0;
    let mut j = 0;
    while j < 5 {
        value = value * 3 + t[j] as usize;
        j += 1;
    }
    value
}

/// A byte yielding each of the 243 trit patterns, found by decoding all 256 bytes (checked at
/// compile time that none is missing).
pub const ENCODE: [u8; 243] = {
    let mut table = [0u8; 243];
    let mut seen = [false; 243];
    let mut byte = 0;
    while byte < 256 {
        let index = trits_index(trits(byte as u8));
        if !seen[index] {
            seen[index] = true;
            table[index] = byte as u8;
        }
        byte += 1;
    }
    let mut index = 0;
    while index < 243 {
        assert!(seen[index], "every trit pattern has a byte");
        index += 1;
    }
    table
};

/// Whole groups and leftover I2_S blocks of a row padded to `k_padded` weights.
fn row_parts(k_padded: usize) -> (usize, usize) {
    let blocks = k_padded / BLOCK;
    (blocks / GROUP_BLOCKS, blocks % GROUP_BLOCKS)
}

/// Bytes of one base-3 row of `k_padded` weights (a multiple of the I2_S block).
pub fn base3_row_bytes(k_padded: usize) -> usize {
    let (groups, blocks) = row_parts(k_padded);
    groups * GROUP_BYTES + blocks * BLOCK_BYTES
}

/// The base-3 row of one I2_S row into `out` (its [`base3_row_bytes`]).
fn pack_row(i2s: &[u8], out: &mut [u8]) {
    let (groups, _) = row_parts(i2s.len() * 4);
    let (packed, tail) = out.split_at_mut(groups * GROUP_BYTES);
    let group_i2s = GROUP_BLOCKS * BLOCK_BYTES;
    for (group, out) in i2s
        .chunks_exact(group_i2s)
        .zip(packed.chunks_exact_mut(GROUP_BYTES))
    {
        let mut index = [0u8; GROUP_BYTES];
        for block in group.chunks_exact(BLOCK_BYTES) {
            // Weights p, p + 32, p + 64, p + 96 of the block are byte p's bits 7:6 .. 1:0, and
            // the group's byte 32 * quarter + p holds weight 32 * quarter + p of each block.
            for (quarter, index) in index.chunks_exact_mut(BLOCK_BYTES).enumerate() {
                let shift = 6 - 2 * quarter;
                for (index, &byte) in index.iter_mut().zip(block) {
                    *index = *index * 3 + ((byte >> shift) & 3);
                }
            }
        }
        for (out, &i) in out.iter_mut().zip(&index) {
            *out = ENCODE[i as usize];
        }
    }
    tail.copy_from_slice(&i2s[groups * group_i2s..]);
}

/// The base-3 copy, as a [`DecodeCopy`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Base3;

impl DecodeCopy for Base3 {
    const FORMAT: PackedFormat = PackedFormat::I2sBase3;
    const WHAT: &'static str = "I2_S + base-3 weights";
    const MISMATCH: &'static str =
        "I2_S + base-3 weights (the base-3 copy differs from the I2_S codes)";

    fn read_by(isa: Isa) -> bool {
        reads_base3(isa)
    }

    fn decode(isa: Isa, ws: &[I2sBase3View<'_>], x: &QuantizedActivations) -> Vec<Vec<f32>> {
        let rows: Vec<Base3Rows<'_>> = ws.iter().map(I2sBase3View::base3).collect();
        gemv_group(isa, &rows, x)
    }

    fn pack(weights: &I2sWeights, layout: TernaryLayout, copy: &mut [u8]) {
        let (rb, base3_rb) = (weights.layout().row_bytes(), layout.decode_row_bytes());
        // On the pool: a 3B model has 3.2 G weights to repack at load time.
        weights
            .codes()
            .par_chunks_exact(rb)
            .zip(copy.par_chunks_exact_mut(base3_rb))
            .for_each(|(row, out)| pack_row(row, out));
    }
}

/// Owned weights in the I2_S + base-3 format: all I2_S rows, then all base-3 rows.
pub type I2sBase3Weights = CopyWeights<Base3>;

/// Borrowed I2_S + base-3 weights (e.g. straight from a Burn tensor).
pub type I2sBase3View<'a> = CopyView<'a, Base3>;

impl<'a> I2sBase3View<'a> {
    /// The base-3 copy.
    pub fn base3(&self) -> Base3Rows<'a> {
        Base3Rows {
            layout: self.layout,
            bytes: self.copy_bytes(),
        }
    }
}

/// The base-3 rows of an [`I2sBase3View`]: what decode reads.
#[derive(Debug, Clone, Copy)]
pub struct Base3Rows<'a> {
    layout: TernaryLayout,
    bytes: &'a [u8],
}

impl Base3Rows<'_> {
    /// Bytes per base-3 row.
    fn row_bytes(&self) -> usize {
        base3_row_bytes(self.layout.k_padded())
    }

    /// The ternary value of row `r`, column `c`.
    pub fn value(&self, r: usize, c: usize) -> i8 {
        let row = &self.bytes[r * self.row_bytes()..(r + 1) * self.row_bytes()];
        let (group, within) = (c / GROUP_WEIGHTS, c % GROUP_WEIGHTS);
        let (groups, _) = row_parts(self.layout.k_padded());
        let code = if group < groups {
            let byte = row[group * GROUP_BYTES + within % GROUP_BYTES];
            trits(byte)[within / GROUP_BYTES]
        } else {
            crate::i2s::code_at(&row[groups * GROUP_BYTES..], c - groups * GROUP_WEIGHTS)
        };
        code as i8 - 1
    }
}

impl DecodeRows for Base3Rows<'_> {
    fn layout(&self) -> TernaryLayout {
        self.layout
    }

    fn row_sums(&self, isa: Isa, r0: usize, q: &[i8], out: &mut [i32]) {
        let rb = self.row_bytes();
        let rows = &self.bytes[r0 * rb..(r0 + out.len()) * rb];
        let groups = row_parts(self.layout.k_padded()).0;
        assert_eq!(q.len(), self.layout.k_padded(), "one padded token");
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the caller checked the CPU supports the path; rows and token asserted.
            Isa::Avx512Vnni => unsafe { avx512::row_sums(rows, rb, groups, q, out) },
            _ => scalar::row_sums(rows, rb, groups, q, out),
        }
    }
}

/// Whether `isa` decodes from the base-3 copy (AVX2 reads I2_S: `vpmaddubsw` would saturate on
/// the stored bytes, and decoding trits costs more than the bytes it saves).
pub fn reads_base3(isa: Isa) -> bool {
    matches!(isa, Isa::Scalar | Isa::Avx512Vnni)
}

/// The float outputs of several layers sharing the activations, each `[m, n]`: one token from
/// the base-3 copies, several from I2_S; bit for bit what the I2_S kernels give.
pub use crate::decode_copy::copy_linear_group_quantized as i2s_base3_linear_group_quantized;

/// Quantizes `x` (`[m, k]`, row-major) once and applies every layer to it.
pub use crate::decode_copy::copy_linear_group as i2s_base3_linear_group;
