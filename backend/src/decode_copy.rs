//! Ternary weights stored twice: I2_S, which batches of tokens read, then a smaller copy that
//! decode (one token) reads instead, because decode streams every weight once per token and is
//! limited by memory bandwidth. The copies are [`crate::base3`] (AVX-512) and [`crate::lut3`]
//! (AVX2); this is what they share: ownership, checking, and the split of the bytes.

use std::marker::PhantomData;

use crate::error::{Result, TernaryError};
use crate::i2s::{I2sView, I2sWeights, PackedFormat, TernaryLayout, check_packed};
use crate::kernels::{Isa, check_activations, quantize_for_group, ternary_linear_group_quantized};
use crate::quant::{ActivationSource, QuantizedActivations};

/// One kind of decode copy.
pub trait DecodeCopy: Copy + std::fmt::Debug + PartialEq {
    /// The packed format of I2_S plus this copy.
    const FORMAT: PackedFormat;
    /// What the bytes are, for errors about them.
    const WHAT: &'static str;
    /// The error when the copy says other weights than the I2_S part.
    const MISMATCH: &'static str;

    /// Whether `isa` decodes from this copy (the others read the I2_S part).
    fn read_by(isa: Isa) -> bool;

    /// One token's float outputs of the layers `ws` from their copies, on a supported `isa`
    /// that [`DecodeCopy::read_by`] this copy, the activations' shape checked.
    fn decode(isa: Isa, ws: &[CopyView<'_, Self>], x: &QuantizedActivations) -> Vec<Vec<f32>>;

    /// Writes the copy of `weights` into `copy`, the bytes after the I2_S part.
    fn pack(weights: &I2sWeights, layout: TernaryLayout, copy: &mut [u8]);
}

/// The float outputs of several layers sharing the activations `x`, each `[m, n]`: one token
/// from their copies, several from I2_S; bit for bit what the I2_S kernels give.
pub fn copy_linear_group_quantized<C: DecodeCopy>(
    isa: Isa,
    ws: &[CopyView<'_, C>],
    x: &QuantizedActivations,
) -> Result<Vec<Vec<f32>>> {
    let i2s: Vec<I2sView<'_>> = ws.iter().map(CopyView::i2s).collect();
    if x.m != 1 || !C::read_by(isa) {
        return ternary_linear_group_quantized(isa, &i2s, x);
    }
    isa.check_supported()?;
    for w in &i2s {
        check_activations(&w.layout, x)?;
    }
    Ok(C::decode(isa, ws, x))
}

/// Quantizes `x` (`[m, k]`, row-major) once and applies every layer of `ws` to it.
pub fn copy_linear_group<C: DecodeCopy>(
    isa: Isa,
    ws: &[CopyView<'_, C>],
    x: &[f32],
    m: usize,
) -> Result<Vec<Vec<f32>>> {
    let layouts: Vec<TernaryLayout> = ws.iter().map(|w| w.layout).collect();
    let xq = quantize_for_group(&layouts, &ActivationSource::Plain(x), m)?;
    copy_linear_group_quantized(isa, ws, &xq)
}

/// Bytes of the I2_S part: every packed row (the LUT3 copy pads rows to whole tiles, and the
/// I2_S part with them).
fn i2s_part_len(layout: &TernaryLayout) -> usize {
    layout.packed_rows() * layout.k_padded() / 4
}

/// Owned weights in an I2_S + copy format: the I2_S rows (as zero weights past `n`), then the
/// copy.
#[derive(Debug, Clone, PartialEq)]
pub struct CopyWeights<C: DecodeCopy> {
    layout: TernaryLayout,
    bytes: Vec<u8>,
    copy: PhantomData<C>,
}

impl<C: DecodeCopy> CopyWeights<C> {
    /// Adds the copy to I2_S weights.
    pub fn from_i2s(weights: &I2sWeights) -> Self {
        let layout = weights.layout().with_format(C::FORMAT);
        let mut bytes = vec![0; layout.packed_len()];
        let (i2s, copy) = bytes.split_at_mut(i2s_part_len(&layout));
        // Padding rows hold zero weights (code 1 in every field).
        i2s.fill(0x55);
        i2s[..weights.codes().len()].copy_from_slice(weights.codes());
        C::pack(weights, layout, copy);
        Self {
            layout,
            bytes,
            copy: PhantomData,
        }
    }

    /// Takes bytes in this format, checking their length and the I2_S codes, and that the copy
    /// holds the same weights (it is rebuilt from the I2_S part and compared).
    pub fn from_bytes(layout: TernaryLayout, bytes: Vec<u8>) -> Result<Self> {
        let view = CopyView::<C>::new(layout.with_format(C::FORMAT), &bytes)?;
        let i2s = I2sWeights::from_codes(view.i2s().layout, view.i2s().codes.to_vec())?;
        let rebuilt = Self::from_i2s(&i2s);
        if let Some(index) = rebuilt.bytes.iter().zip(&bytes).position(|(a, b)| a != b) {
            return Err(TernaryError::InvalidTernary {
                what: C::MISMATCH,
                value: bytes[index] as i32,
                index,
            });
        }
        Ok(rebuilt)
    }

    /// The borrowed form the kernels read.
    pub fn view(&self) -> CopyView<'_, C> {
        CopyView {
            layout: self.layout,
            bytes: &self.bytes,
            copy: PhantomData,
        }
    }

    /// Shape, scale and conventions.
    pub fn layout(&self) -> TernaryLayout {
        self.layout
    }

    /// The packed bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The layout and the packed bytes, without a copy.
    pub fn into_parts(self) -> (TernaryLayout, Vec<u8>) {
        (self.layout, self.bytes)
    }

    /// The I2_S weights alone.
    pub fn to_i2s(&self) -> Result<I2sWeights> {
        let i2s = self.view().i2s();
        I2sWeights::from_codes(i2s.layout, i2s.codes.to_vec())
    }
}

/// Borrowed I2_S + copy weights (e.g. straight from a Burn tensor).
#[derive(Debug, Clone, Copy)]
pub struct CopyView<'a, C: DecodeCopy> {
    /// Shape, scale and conventions.
    pub layout: TernaryLayout,
    /// The I2_S part, then the copy.
    pub bytes: &'a [u8],
    copy: PhantomData<C>,
}

impl<'a, C: DecodeCopy> CopyView<'a, C> {
    /// Checks the format and the length.
    pub fn new(layout: TernaryLayout, bytes: &'a [u8]) -> Result<Self> {
        check_packed(&layout, C::FORMAT, bytes.len(), C::WHAT)?;
        Ok(Self {
            layout,
            bytes,
            copy: PhantomData,
        })
    }

    /// The I2_S weights.
    pub fn i2s(&self) -> I2sView<'a> {
        let layout = self.layout.with_format(PackedFormat::I2s);
        I2sView {
            layout,
            codes: &self.bytes[..layout.packed_len()],
        }
    }

    /// The copy's bytes.
    pub(crate) fn copy_bytes(&self) -> &'a [u8] {
        &self.bytes[i2s_part_len(&self.layout)..]
    }
}
