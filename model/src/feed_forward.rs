//! The gated feed-forward block.

use bitnet_backend::{gated_activation, gated_rms_norm_ternary_linear};
use burn::module::Module;
use burn::tensor::Tensor;

use crate::bitlinear::BitLinear;
use crate::config::FfnActivation;
use crate::error::Result;
use crate::norm::RmsNorm;

/// `down(sub_norm(act(gate(x)) * up(x)))`.
#[derive(Module, Debug)]
pub struct FeedForward {
    /// Gate projection, `hidden -> intermediate`.
    pub gate_proj: BitLinear,
    /// Up projection, `hidden -> intermediate`.
    pub up_proj: BitLinear,
    /// Down projection, `intermediate -> hidden`.
    pub down_proj: BitLinear,
    /// RMSNorm before `down_proj` (2B4T `ffn_sub_norm`, 1bitLLM `ffn_layernorm`).
    pub sub_norm: Option<RmsNorm>,
    /// Activation of the gate.
    #[module(skip)]
    pub activation: FfnActivation,
}

impl FeedForward {
    /// Packs trainable projections (see [`BitLinear::pack`]).
    pub fn pack(self) -> Result<Self> {
        Ok(Self {
            gate_proj: self.gate_proj.pack()?,
            up_proj: self.up_proj.pack()?,
            down_proj: self.down_proj.pack()?,
            ..self
        })
    }

    /// # Shapes
    /// - `x`: `[batch, len, hidden]`
    /// - output: `[batch, len, hidden]`
    pub fn forward(&self, x: Tensor<3>) -> Result<Tensor<3>> {
        self.run(None, x)
    }

    /// [`FeedForward::forward`] of `norm(x)` (the decoder layer's post-attention norm),
    /// normalized inside the quantization of gate and up when they are packed.
    pub fn forward_normed(&self, norm: &RmsNorm, x: Tensor<3>) -> Result<Tensor<3>> {
        self.run(Some(norm), x)
    }

    fn run(&self, norm: Option<&RmsNorm>, x: Tensor<3>) -> Result<Tensor<3>> {
        let layers = [&self.gate_proj, &self.up_proj];
        let [gate, up] = BitLinear::forward_group_normed(norm, layers, x)?;
        if let Some(norm) = &self.sub_norm
            && self.down_proj.fusable()
        {
            // The activation and the sub-norm run inside the down projection's quantization.
            let y = gated_rms_norm_ternary_linear(
                gate,
                up,
                self.activation,
                norm.weight.val(),
                norm.epsilon,
                &self.down_proj.weight()?,
            )?;
            return Ok(y);
        }
        let h = gated_activation(gate, up, self.activation)?;
        let [y] = BitLinear::forward_group_normed(self.sub_norm.as_ref(), [&self.down_proj], h)?;
        Ok(y)
    }
}
