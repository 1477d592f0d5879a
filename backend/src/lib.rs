//! # bitnet-backend
//!
//! Packed ternary weights in bitnet.cpp's I2_S layout, exact per-token int8 activation
//! quantization, SIMD ternary matrix kernels chosen at run time, and the Burn backend extension
//! ([`TernaryOps`]) that lets a Burn model run a ternary linear layer on Flex, NdArray and
//! Autodiff devices. The extension is the default feature `burn`; without it the crate is the
//! formats and kernels on plain slices, and does not build Burn.
//!
//! Lossless means: the int32 accumulators equal the exact `sum(q * w)` of the int8 activations
//! and ternary weights, and the float output follows the reference formula bit for bit.

pub mod aligned;
pub mod attention;
pub mod base3;
pub mod decode_copy;
pub mod error;
#[cfg(feature = "burn")]
pub mod extension;
pub mod glu;
pub mod half_matrix;
pub mod i2s;
pub mod int8_matrix;
pub mod kernels;
pub mod kv;
pub mod lut;
pub mod lut3;
pub mod norm;
pub mod quant;
pub mod rope;
pub mod rows;
pub mod select;
#[cfg(test)]
mod test_support;
mod vectorize;

pub use base3::{I2sBase3View, I2sBase3Weights};
pub use error::{Result, TernaryError};
#[cfg(feature = "burn")]
pub use extension::{
    TernaryLinearExt, TernaryOps, TernaryWeight, cache_write, cached_attention, gated_activation,
    gated_rms_norm_ternary_linear, rms_norm, rms_norm_ternary_linear_group, rotary_embedding,
    ternary_linear, ternary_linear_group,
};
pub use glu::FfnActivation;
pub use half_matrix::HalfMatrix;
pub use i2s::{I2sView, I2sWeights, PackedFormat, ScaleConvention, TernaryLayout};
pub use int8_matrix::Int8Matrix;
pub use kernels::Isa;
pub use lut::{LutView, LutWeights};
pub use lut3::{I2sLut3View, I2sLut3Weights};
pub use quant::{ActivationScale, ActivationSource, NormWeight, QuantizedActivations};
pub use select::KernelChoice;
