//! RMSNorm in the reference's order of operations.

use bitnet_backend::rms_norm;
use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};

/// Configuration of [`RmsNorm`].
#[derive(Config, Debug)]
pub struct RmsNormConfig {
    /// Width of the normalized (last) dimension.
    pub d_model: usize,
    /// Added to the mean square before the square root.
    #[config(default = 1e-5)]
    pub epsilon: f64,
}

impl RmsNormConfig {
    /// A norm with unit weights.
    pub fn init(&self, device: &Device) -> RmsNorm {
        RmsNorm {
            weight: Param::from_tensor(Tensor::ones([self.d_model], device)),
            epsilon: self.epsilon,
        }
    }
}

/// `y = weight * (x * rsqrt(mean(x^2) + eps))`.
///
/// Burn's own `RmsNorm` divides by the root instead of multiplying by its reciprocal; that is one
/// rounding apart, and one rounding is enough to flip an int8 activation of the next ternary
/// layer. This module follows HF's `LlamaRMSNorm` so the quantized inputs match the reference.
#[derive(Module, Debug)]
pub struct RmsNorm {
    /// Per-feature gain, `[d_model]`.
    pub weight: Param<Tensor<1>>,
    /// Added to the mean square.
    pub epsilon: f64,
}

impl RmsNorm {
    /// A norm with the given gain.
    pub fn from_weight(weight: Tensor<1>, epsilon: f64) -> Self {
        Self {
            weight: Param::from_tensor(weight),
            epsilon,
        }
    }

    /// Bytes of the weight (f32).
    pub fn weight_bytes(&self) -> usize {
        4 * self.weight.dims()[0]
    }

    /// Normalizes over the last dimension (one backend op: a pass per row on the thread pool,
    /// Burn's ops with their gradients on autodiff devices). Fails if `x` is not `d_model` wide.
    ///
    /// # Shapes
    /// - `x`: `[..., d_model]`
    /// - output: `[..., d_model]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> crate::error::Result<Tensor<D>> {
        Ok(rms_norm(x, self.weight.val(), self.epsilon)?)
    }
}
