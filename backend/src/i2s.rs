//! I2_S: bitnet.cpp's lossless 2-bit packing of ternary weights (GGML type 36).
//!
//! A weight matrix has `n` output rows of `k` inputs. Each row is cut into blocks of
//! [`BLOCK`] = 128 weights stored in [`BLOCK_BYTES`] = 32 bytes: byte `p` of a block holds
//! weights `p`, `p + 32`, `p + 64` and `p + 96` in bits 7:6, 5:4, 3:2 and 1:0, as the code
//! `w + 1` (so -1 -> 0, 0 -> 1, +1 -> 2; 3 never occurs). Rows whose `k` is not a multiple of
//! 128 are padded internally with zero weights; the bitnet.cpp byte image (codes followed by a
//! 32-byte tail whose first four bytes are the f32 scale) is read and written exactly whenever
//! `k` is a multiple of 128.

use crate::error::{Result, TernaryError};
use crate::quant::ActivationScale;

/// Weights per I2_S block.
pub const BLOCK: usize = 128;
/// Bytes per I2_S block.
pub const BLOCK_BYTES: usize = BLOCK / 4;
/// Size of the tail bitnet.cpp appends to an I2_S tensor (the f32 scale, then padding).
pub const BITNET_TAIL_BYTES: usize = 32;

/// How the per-tensor weight scale enters the float output `y` from the exact accumulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ScaleConvention {
    /// `y = acc / x_scale * weight_scale` (bitnet.cpp, HF `AutoBitLinear` of BitNet b1.58 2B4T).
    Multiply,
    /// `y = acc / (weight_scale * x_scale)` (HF `BitLinear` of Llama3-8B-1.58 / Falcon3, and the
    /// 1bitLLM absmean rule where the scale is `s = 1 / mean|W|`).
    Divide,
}

impl ScaleConvention {
    /// The float output for one exact accumulator, in the reference's order of operations.
    #[inline(always)]
    pub fn output(self, acc: i32, x_scale: f32, weight_scale: f32) -> f32 {
        match self {
            Self::Multiply => acc as f32 / x_scale * weight_scale,
            Self::Divide => acc as f32 / (weight_scale * x_scale),
        }
    }

    /// The value one ternary weight `t` stands for once dequantized.
    #[inline(always)]
    pub fn dequantize(self, t: i8, weight_scale: f32) -> f32 {
        match self {
            Self::Multiply => t as f32 * weight_scale,
            Self::Divide => t as f32 / weight_scale,
        }
    }
}

/// How the packed bytes of a ternary matrix are laid out, which decides the kernel family.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub enum PackedFormat {
    /// bitnet.cpp's I2_S: 2-bit codes, `[n, k_padded / 4]`.
    #[default]
    I2s,
    /// The LUT kernel's pattern indices ([`crate::lut`]), rows padded to whole tiles.
    Lut,
    /// I2_S for several tokens plus a base-3 copy (1.6 bits per weight) that decode reads
    /// ([`crate::base3`]): all I2_S rows, then all base-3 rows.
    I2sBase3,
    /// I2_S for several tokens plus a three-weight lookup-table copy (1.67 bits per weight) that
    /// decode reads ([`crate::lut3`]): all I2_S rows, then the copy's tiles (rows padded to
    /// whole tiles in both).
    I2sLut3,
}

impl std::fmt::Display for PackedFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::I2s => "i2s",
            Self::Lut => "lut",
            Self::I2sBase3 => "i2s+base3",
            Self::I2sLut3 => "i2s+lut3",
        })
    }
}

/// Shape and scale of a packed ternary matrix: everything but the codes themselves.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TernaryLayout {
    /// Output features (rows).
    pub n: usize,
    /// Input features (columns).
    pub k: usize,
    /// Per-tensor weight scale.
    pub scale: f32,
    /// How `scale` enters the output.
    pub convention: ScaleConvention,
    /// How the activations feeding this matrix compute their scale (HF and bitnet.cpp differ in
    /// the last bit; [`TernaryLayout::new`] picks HF's rule).
    pub activation: ActivationScale,
    /// How the packed bytes are laid out ([`TernaryLayout::new`] picks I2_S).
    #[serde(default)]
    pub format: PackedFormat,
}

impl TernaryLayout {
    /// Validates the dimensions and the scale.
    pub fn new(n: usize, k: usize, scale: f32, convention: ScaleConvention) -> Result<Self> {
        if n == 0 || k == 0 {
            return Err(TernaryError::Dimension(format!(
                "a ternary matrix needs n > 0 and k > 0, got n={n}, k={k}"
            )));
        }
        let layout = Self {
            n,
            k,
            scale,
            convention,
            activation: ActivationScale::default(),
            format: PackedFormat::I2s,
        };
        n.checked_mul(layout.k_padded())
            .ok_or_else(|| TernaryError::Dimension(format!("n={n} x k={k} overflows")))?;
        check_scale("weight scale", scale)?;
        Ok(layout)
    }

    /// The same layout with another activation-scale rule (bitnet.cpp files use
    /// [`ActivationScale::Quotient`]).
    pub fn with_activation_scale(self, activation: ActivationScale) -> Self {
        Self { activation, ..self }
    }

    /// `k` rounded up to a whole number of blocks.
    pub fn k_padded(&self) -> usize {
        self.k.div_ceil(BLOCK) * BLOCK
    }

    /// Packed bytes per row: `k_padded / 4` (I2_S and LUT), plus the decode copy's row for
    /// [`PackedFormat::I2sBase3`] and [`PackedFormat::I2sLut3`].
    pub fn row_bytes(&self) -> usize {
        match self.format {
            PackedFormat::I2s | PackedFormat::Lut => self.k_padded() / 4,
            PackedFormat::I2sBase3 | PackedFormat::I2sLut3 => {
                self.k_padded() / 4 + self.decode_row_bytes()
            }
        }
    }

    /// Packed bytes of one row that a decode step (one token) reads: for
    /// [`PackedFormat::I2sBase3`] its base-3 row, as the AVX-512 and scalar paths read it (AVX2
    /// reads the I2_S row, [`crate::base3`]); for [`PackedFormat::I2sLut3`] its LUT3 row.
    pub fn decode_row_bytes(&self) -> usize {
        match self.format {
            PackedFormat::I2s | PackedFormat::Lut => self.row_bytes(),
            PackedFormat::I2sBase3 => crate::base3::base3_row_bytes(self.k_padded()),
            PackedFormat::I2sLut3 => crate::lut3::lut3_row_bytes(self.k),
        }
    }

    /// The same layout with the bytes in another format.
    pub fn with_format(self, format: PackedFormat) -> Self {
        Self { format, ..self }
    }

    /// Rows of packed bytes: `n`, or for the LUT formats `n` rounded up to whole tiles.
    pub fn packed_rows(&self) -> usize {
        match self.format {
            PackedFormat::I2s | PackedFormat::I2sBase3 => self.n,
            PackedFormat::Lut | PackedFormat::I2sLut3 => {
                self.n.div_ceil(crate::lut::TILE_ROWS) * crate::lut::TILE_ROWS
            }
        }
    }

    /// Packed bytes of the whole matrix (without bitnet.cpp's tail).
    pub fn packed_len(&self) -> usize {
        self.packed_rows() * self.row_bytes()
    }
}

/// Fails unless `layout` is in `format` and `len` is its packed length (`what` names the bytes).
pub(crate) fn check_packed(
    layout: &TernaryLayout,
    format: PackedFormat,
    len: usize,
    what: &'static str,
) -> Result<()> {
    if layout.format != format {
        return Err(TernaryError::Shape(format!(
            "{what}: a {format} view of weights in the {} format",
            layout.format
        )));
    }
    if len != layout.packed_len() {
        return Err(TernaryError::Length {
            what,
            expected: layout.packed_len(),
            actual: len,
        });
    }
    Ok(())
}

pub(crate) fn check_scale(what: &'static str, value: f32) -> Result<()> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(TernaryError::InvalidScale { what, value })
    }
}

/// Byte offset and bit shift of weight `c` inside a packed row.
#[inline(always)]
fn code_position(c: usize) -> (usize, u32) {
    let block = c / BLOCK;
    let within = c % BLOCK;
    let byte = block * BLOCK_BYTES + within % BLOCK_BYTES;
    let shift = 6 - 2 * (within / BLOCK_BYTES) as u32;
    (byte, shift)
}

/// The 2-bit code of weight `c` in a packed row.
#[inline(always)]
pub(crate) fn code_at(row: &[u8], c: usize) -> u8 {
    let (byte, shift) = code_position(c);
    (row[byte] >> shift) & 3
}

/// A borrowed packed ternary matrix: what the kernels read.
#[derive(Debug, Clone, Copy)]
pub struct I2sView<'a> {
    pub layout: TernaryLayout,
    pub codes: &'a [u8],
}

impl<'a> I2sView<'a> {
    /// Checks that `codes` holds exactly the packed bytes `layout` describes.
    pub fn new(layout: TernaryLayout, codes: &'a [u8]) -> Result<Self> {
        check_packed(&layout, PackedFormat::I2s, codes.len(), "I2_S codes")?;
        Ok(Self { layout, codes })
    }

    /// The packed bytes of row `r`.
    pub fn row(&self, r: usize) -> &'a [u8] {
        let rb = self.layout.row_bytes();
        &self.codes[r * rb..(r + 1) * rb]
    }

    /// Ternary value of weight (r, c).
    pub fn value(&self, r: usize, c: usize) -> i8 {
        code_at(self.row(r), c) as i8 - 1
    }

    /// All ternary values, row-major `[n, k]`.
    pub fn ternary_values(&self) -> Vec<i8> {
        let TernaryLayout { n, k, .. } = self.layout;
        (0..n)
            .flat_map(|r| (0..k).map(move |c| (r, c)))
            .map(|(r, c)| self.value(r, c))
            .collect()
    }

    /// Dequantized float weights, row-major `[n, k]`.
    pub fn dequantize(&self) -> Vec<f32> {
        let TernaryLayout {
            scale, convention, ..
        } = self.layout;
        self.ternary_values()
            .into_iter()
            .map(|t| convention.dequantize(t, scale))
            .collect()
    }

    /// Returns the index of the first code 3 (not a ternary value), if any. Padding columns are
    /// not checked: they meet zero activations, so their codes never reach an accumulator.
    pub fn find_invalid_code(&self) -> Option<usize> {
        // A byte holds a code 3 iff some slot has both bits set; test eight bytes at a time so
        // loading a large model is not dominated by this check.
        const LOW_BITS: u64 = 0x5555_5555_5555_5555;
        let has_three = |bytes: &[u8]| {
            let mut word = [0u8; 8];
            word[..bytes.len()].copy_from_slice(bytes);
            let w = u64::from_le_bytes(word);
            w & (w >> 1) & LOW_BITS != 0
        };
        let k = self.layout.k;
        (0..self.layout.n)
            .filter(|&r| self.row(r).chunks(8).any(has_three))
            .find_map(|r| {
                (0..k)
                    .find(|&c| code_at(self.row(r), c) == 3)
                    .map(|c| r * k + c)
            })
    }
}

/// An owned packed ternary matrix in I2_S layout.
#[derive(Debug, Clone, PartialEq)]
pub struct I2sWeights {
    layout: TernaryLayout,
    codes: Vec<u8>,
}

impl I2sWeights {
    /// Wraps already-packed codes, checking their length and that no code is 3.
    pub fn from_codes(layout: TernaryLayout, codes: Vec<u8>) -> Result<Self> {
        let view = I2sView::new(layout, &codes)?;
        if let Some(index) = view.find_invalid_code() {
            return Err(TernaryError::InvalidTernary {
                what: "I2_S codes",
                value: 2,
                index,
            });
        }
        Ok(Self { layout, codes })
    }

    /// Packs row-major ternary values `[n, k]` in {-1, 0, 1}.
    pub fn from_ternary(
        values: &[i8],
        n: usize,
        k: usize,
        scale: f32,
        convention: ScaleConvention,
    ) -> Result<Self> {
        let layout = TernaryLayout::new(n, k, scale, convention)?;
        check_len("ternary values", n * k, values.len())?;
        if let Some((index, &v)) = values
            .iter()
            .enumerate()
            .find(|(_, v)| !(-1..=1).contains(*v))
        {
            return Err(TernaryError::InvalidTernary {
                what: "ternary values",
                value: v as i32,
                index,
            });
        }
        Ok(Self::pack(layout, |r, c| values[r * k + c]))
    }

    /// Ternarizes latent float weights `[n, k]` by absmean, the 1bitLLM / BitNet b1.58 rule:
    /// `s = 1 / max(mean|W|, 1e-5)`, `W_t = clamp(round_half_even(W * s), -1, 1)`, and the
    /// layer computes `acc / (s * x_scale)` (so the convention is [`ScaleConvention::Divide`]).
    pub fn from_latent(weights: &[f32], n: usize, k: usize) -> Result<Self> {
        check_len("latent weights", n * k, weights.len())?;
        if let Some(index) = weights.iter().position(|w| !w.is_finite()) {
            return Err(TernaryError::InvalidScale {
                what: "latent weight (non-finite value)",
                value: weights[index],
            });
        }
        let s = absmean_scale(weights);
        let layout = TernaryLayout::new(n, k, s, ScaleConvention::Divide)?;
        Ok(Self::pack(layout, |r, c| {
            (weights[r * k + c] * s).round_ties_even().clamp(-1.0, 1.0) as i8
        }))
    }

    /// Repacks HF's u8 layout `[ceil(n/4), k]`: plane `i` (bits `2i..2i+1`) of packed row `r`
    /// holds weight row `r + i * ceil(n/4)` as the code `w + 1`.
    pub fn from_hf_packed(
        packed: &[u8],
        n: usize,
        k: usize,
        scale: f32,
        convention: ScaleConvention,
    ) -> Result<Self> {
        let layout = TernaryLayout::new(n, k, scale, convention)?;
        let planes = n.div_ceil(4);
        check_len("HF packed weights", planes * k, packed.len())?;
        let code = |r: usize, c: usize| (packed[(r % planes) * k + c] >> (2 * (r / planes))) & 3;
        if let Some(index) = (0..n * k).find(|&i| code(i / k, i % k) == 3) {
            return Err(TernaryError::InvalidTernary {
                what: "HF packed weights",
                value: 2,
                index,
            });
        }
        Ok(Self::pack(layout, |r, c| code(r, c) as i8 - 1))
    }

    /// Writes HF's u8 layout `[ceil(n/4), k]`, the inverse of [`I2sWeights::from_hf_packed`]
    /// (slots of rows past `n` in the last plane stay 0).
    pub fn to_hf_packed(&self) -> Vec<u8> {
        let TernaryLayout { n, k, .. } = self.layout;
        let planes = n.div_ceil(4);
        let view = self.view();
        let mut packed = vec![0u8; planes * k];
        for r in 0..n {
            let (row, shift) = (r % planes, 2 * (r / planes));
            for c in 0..k {
                packed[row * k + c] |= ((view.value(r, c) + 1) as u8) << shift;
            }
        }
        packed
    }

    /// Reads bitnet.cpp's I2_S tensor bytes: `n*k/4` code bytes then a 32-byte tail whose first
    /// four bytes are the little-endian f32 scale. `k` must be a multiple of 128.
    pub fn from_bitnet_bytes(bytes: &[u8], n: usize, k: usize) -> Result<Self> {
        require_block_multiple(k)?;
        let body = n
            .checked_mul(k)
            .ok_or_else(|| TernaryError::Dimension(format!("n={n} x k={k} overflows")))?
            / 4;
        check_len(
            "bitnet.cpp I2_S tensor",
            body + BITNET_TAIL_BYTES,
            bytes.len(),
        )?;
        let scale = f32::from_le_bytes(bytes[body..body + 4].try_into().expect("4 bytes"));
        let layout = TernaryLayout::new(n, k, scale, ScaleConvention::Multiply)?;
        Self::from_codes(layout, bytes[..body].to_vec())
    }

    /// Writes bitnet.cpp's I2_S tensor bytes (codes, then the scale and zero padding).
    ///
    /// bitnet.cpp always multiplies by its scale; a [`ScaleConvention::Divide`] matrix is written
    /// with the scale `1 / scale`, which is exact only up to one f32 rounding.
    pub fn to_bitnet_bytes(&self) -> Result<Vec<u8>> {
        require_block_multiple(self.layout.k)?;
        let scale = match self.layout.convention {
            ScaleConvention::Multiply => self.layout.scale,
            ScaleConvention::Divide => 1.0 / self.layout.scale,
        };
        let mut bytes = Vec::with_capacity(self.codes.len() + BITNET_TAIL_BYTES);
        bytes.extend_from_slice(&self.codes);
        bytes.extend_from_slice(&scale.to_le_bytes());
        bytes.resize(self.codes.len() + BITNET_TAIL_BYTES, 0);
        Ok(bytes)
    }

    /// The shape and scale.
    pub fn layout(&self) -> TernaryLayout {
        self.layout
    }

    /// The packed codes, `[n, k_padded / 4]` bytes.
    pub fn codes(&self) -> &[u8] {
        &self.codes
    }

    /// Consumes the matrix, returning its layout and packed codes.
    pub fn into_parts(self) -> (TernaryLayout, Vec<u8>) {
        (self.layout, self.codes)
    }

    /// A borrowed view for the kernels.
    pub fn view(&self) -> I2sView<'_> {
        I2sView {
            layout: self.layout,
            codes: &self.codes,
        }
    }

    /// Packs `value(r, c)` (in {-1, 0, 1}) for every weight; padding columns get zero weights.
    fn pack(layout: TernaryLayout, value: impl Fn(usize, usize) -> i8) -> Self {
        let rb = layout.row_bytes();
        // Code 1 (zero weight) in all four slots of every byte: padding needs no second pass.
        let mut codes = vec![0b0101_0101u8; layout.packed_len()];
        for (r, row) in codes.chunks_exact_mut(rb).enumerate() {
            for c in 0..layout.k {
                let (byte, shift) = code_position(c);
                let code = (value(r, c) + 1) as u8;
                row[byte] = (row[byte] & !(3 << shift)) | (code << shift);
            }
        }
        Self { layout, codes }
    }
}

/// `s = 1 / max(mean|W|, 1e-5)`, with the mean accumulated in f64 and rounded once.
pub fn absmean_scale(weights: &[f32]) -> f32 {
    let sum: f64 = weights.iter().map(|w| w.abs() as f64).sum();
    let mean = (sum / weights.len().max(1) as f64) as f32;
    1.0 / mean.max(1e-5)
}

fn check_len(what: &'static str, expected: usize, actual: usize) -> Result<()> {
    if expected == actual {
        Ok(())
    } else {
        Err(TernaryError::Length {
            what,
            expected,
            actual,
        })
    }
}

fn require_block_multiple(k: usize) -> Result<()> {
    if k.is_multiple_of(BLOCK) {
        Ok(())
    } else {
        Err(TernaryError::Shape(format!(
            "bitnet.cpp I2_S tensors need k to be a multiple of {BLOCK}, got k={k}"
        )))
    }
}
