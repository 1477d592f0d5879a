//! Configuration of a BitNet decoder: one struct covers every supported family, the importer maps
//! each family's `config.json` onto it.

use bitnet_backend::{ActivationScale, ScaleConvention};
use burn::config::Config;

use crate::error::ModelError;

pub use bitnet_backend::FfnActivation;

/// Llama 3's frequency-dependent RoPE scaling (`rope_type: llama3`).
#[derive(Config, Debug, PartialEq)]
pub struct Llama3RopeScaling {
    /// Scale applied to the low frequencies.
    pub factor: f64,
    /// Wavelength threshold (as a fraction of the original context) below which frequencies are
    /// scaled.
    pub low_freq_factor: f64,
    /// Wavelength threshold above which frequencies are kept.
    pub high_freq_factor: f64,
    /// Context length of the unscaled model.
    pub original_max_position_embeddings: usize,
}

/// How every ternary projection of a model is computed.
#[derive(Config, Debug, PartialEq)]
pub struct TernaryLinearSpec {
    /// How the per-tensor weight scale enters the output.
    pub convention: ScaleConvention,
    /// How activation scales are rounded (HF vs bitnet.cpp).
    #[config(default = "ActivationScale::Reciprocal")]
    pub activation_scale: ActivationScale,
    /// `Some(eps)`: each projection applies its own RMSNorm before quantizing (HF `BitLinear` with
    /// `use_rms_norm`).
    #[config(default = "None")]
    pub rms_norm_eps: Option<f64>,
}

/// A BitNet decoder-only language model.
#[derive(Config, Debug, PartialEq)]
pub struct BitNetConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than the query heads).
    pub num_key_value_heads: usize,
    /// The ternary projections.
    pub linear: TernaryLinearSpec,
    /// Per-head width; `hidden_size / num_attention_heads` when absent.
    #[config(default = "None")]
    pub head_dim: Option<usize>,
    /// Epsilon of the RMSNorms.
    #[config(default = 1e-5)]
    pub rms_norm_eps: f64,
    /// RoPE base.
    #[config(default = 10000.0)]
    pub rope_theta: f64,
    /// Llama 3 RoPE scaling, when the checkpoint uses it.
    #[config(default = "None")]
    pub rope_scaling: Option<Llama3RopeScaling>,
    /// Per-frequency divisors of the RoPE inverse frequencies (`[head_dim / 2]`), as GGUF files
    /// store Llama 3 scaling (`rope_freqs.weight`); applied after `rope_scaling`.
    #[config(default = "None")]
    pub rope_freq_factors: Option<Vec<f32>>,
    /// The longest context the model was trained for (the default context size).
    #[config(default = 2048)]
    pub max_position_embeddings: usize,
    /// Feed-forward activation.
    #[config(default = "FfnActivation::Silu")]
    pub activation: FfnActivation,
    /// RMSNorm before `o_proj` and before `down_proj` (2B4T `attn_sub_norm` / `ffn_sub_norm`,
    /// 1bitLLM `inner_attn_ln` / `ffn_layernorm`).
    #[config(default = false)]
    pub sub_norms: bool,
    /// The LM head reuses the token embedding.
    #[config(default = false)]
    pub tie_word_embeddings: bool,
}

impl BitNetConfig {
    /// Per-head width.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Parameters of the model as its reference counts them (every ternary weight one parameter,
    /// whatever its packing), so the figure matches the model card and llama-bench.
    pub fn num_parameters(&self) -> usize {
        let (h, ffn) = (self.hidden_size, self.intermediate_size);
        let q_width = self.num_attention_heads * self.head_dim();
        let kv_width = self.num_key_value_heads * self.head_dim();
        let norms = 2 * h + if self.sub_norms { q_width + ffn } else { 0 };
        let per_projection_norms = if self.linear.rms_norm_eps.is_some() {
            3 * h + q_width + 2 * h + ffn
        } else {
            0
        };
        let layer = h * (2 * q_width + 2 * kv_width) + 3 * h * ffn + norms + per_projection_norms;
        let head = if self.tie_word_embeddings {
            0
        } else {
            self.vocab_size * h
        };
        self.num_hidden_layers * layer + self.vocab_size * h + head + h
    }

    /// Checks that the dimensions describe a model the layers can build.
    pub fn validate(&self) -> crate::error::Result<()> {
        let fail = |msg: String| Err(ModelError::Config(msg));
        for (name, value) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if value == 0 {
                return fail(format!("{name} must be positive"));
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return fail(format!(
                "num_attention_heads={} is not a multiple of num_key_value_heads={}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        let head_dim = self.head_dim();
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return fail(format!("head_dim={head_dim} must be positive and even"));
        }
        if let Some(factors) = &self.rope_freq_factors {
            if factors.len() != head_dim / 2 {
                return fail(format!(
                    "{} RoPE frequency factors for head_dim={head_dim} (expected {})",
                    factors.len(),
                    head_dim / 2
                ));
            }
            if let Some(bad) = factors.iter().find(|f| !(f.is_finite() && **f > 0.0)) {
                return fail(format!(
                    "RoPE frequency factor {bad} is not positive and finite"
                ));
            }
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return fail(format!(
                "hidden_size={} is not a multiple of num_attention_heads={}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !(self.rms_norm_eps > 0.0 && self.rope_theta > 0.0) {
            return fail("rms_norm_eps and rope_theta must be positive".into());
        }
        Ok(())
    }
}
