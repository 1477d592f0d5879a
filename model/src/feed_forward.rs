//! The gated feed-forward block.

use bitnet_backend::gated_activation;
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
        let [gate, up] = BitLinear::forward_group([&self.gate_proj, &self.up_proj], x)?;
        let h = gated_activation(gate, up, self.activation)?;
        let h = match &self.sub_norm {
            Some(norm) => norm.forward(h)?,
            None => h,
        };
        self.down_proj.forward(h)
    }
}
