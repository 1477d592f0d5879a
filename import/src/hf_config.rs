//! `config.json` of each supported Hugging Face family, mapped onto [`BitNetConfig`].

use std::path::Path;

use bitnet_backend::ScaleConvention;
use bitnet_model::{BitNetConfig, FfnActivation, Llama3RopeScaling, TernaryLinearSpec};
use serde::Deserialize;
use serde_json::Value;

use crate::error::{ImportError, Result};

/// The checkpoint families, told apart by `architectures` (1bitLLM's config says
/// `model_type: llama`, so `model_type` alone cannot be trusted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `BitNetForCausalLM`: BitNet b1.58 2B4T (packed u8 weights, `weight_scale` multiplies,
    /// `attn_sub_norm` / `ffn_sub_norm`, ReLU²).
    BitNet2b4t,
    /// `LlamaForCausalLM` with `quant_method: bitnet`: Llama3-8B-1.58, Falcon3-1.58 and Falcon-E
    /// (packed u8 weights; `linear_class` picks the scale convention).
    LlamaBitnet,
    /// `BitnetForCausalLM` of 1bitLLM: latent fp16 weights ternarized at load,
    /// `inner_attn_ln` / `ffn_layernorm` sub-norms.
    OneBitLlm,
}

impl Family {
    /// Whether the checkpoint stores packed u8 weights with a `weight_scale` (otherwise latent
    /// float weights).
    pub fn packed_weights(self) -> bool {
        !matches!(self, Self::OneBitLlm)
    }

    /// Names of the attention and feed-forward sub-norms, when the family has them.
    pub fn sub_norm_names(self) -> Option<(&'static str, &'static str)> {
        match self {
            Self::BitNet2b4t => Some(("self_attn.attn_sub_norm", "mlp.ffn_sub_norm")),
            Self::OneBitLlm => Some(("self_attn.inner_attn_ln", "mlp.ffn_layernorm")),
            Self::LlamaBitnet => None,
        }
    }
}

#[derive(Debug, Deserialize)]
struct QuantizationConfig {
    quant_method: Option<String>,
    linear_class: Option<String>,
    quantization_mode: Option<String>,
    #[serde(default)]
    use_rms_norm: bool,
    rms_norm_eps: Option<f64>,
}

#[derive(Debug, Deserialize)]
struct HfConfig {
    #[serde(default)]
    architectures: Vec<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    rope_parameters: Option<Value>,
    max_position_embeddings: Option<usize>,
    hidden_act: Option<String>,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    quantization_config: Option<QuantizationConfig>,
}

/// Reads `dir/config.json` into a model configuration and the family that decides tensor names.
pub fn read_config(dir: &Path) -> Result<(BitNetConfig, Family)> {
    let path = dir.join("config.json");
    if !path.is_file() {
        return Err(ImportError::MissingFile {
            what: "model configuration",
            path,
        });
    }
    let text = std::fs::read_to_string(&path).map_err(|source| ImportError::Io {
        path: path.clone(),
        source,
    })?;
    let hf: HfConfig = serde_json::from_str(&text).map_err(|e| ImportError::Config {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let config = map_config(&hf)?;
    config.0.validate()?;
    Ok(config)
}

fn unsupported(message: String) -> ImportError {
    ImportError::Unsupported(message)
}

fn map_config(hf: &HfConfig) -> Result<(BitNetConfig, Family)> {
    let architecture = match hf.architectures.as_slice() {
        [one] => one.as_str(),
        [] => return Err(ImportError::UnsupportedArchitecture("(none listed)".into())),
        many => return Err(ImportError::UnsupportedArchitecture(many.join(", "))),
    };
    let quant = hf.quantization_config.as_ref();
    let family = match architecture {
        "BitNetForCausalLM" => Family::BitNet2b4t,
        "BitnetForCausalLM" => Family::OneBitLlm,
        "LlamaForCausalLM" => match quant.and_then(|q| q.quant_method.as_deref()) {
            Some("bitnet") => Family::LlamaBitnet,
            other => {
                return Err(unsupported(format!(
                    "LlamaForCausalLM with quant_method {other:?} is not a ternary model \
                     (expected quantization_config.quant_method = \"bitnet\")"
                )));
            }
        },
        other => return Err(ImportError::UnsupportedArchitecture(other.to_string())),
    };
    if hf.attention_bias || hf.mlp_bias {
        return Err(unsupported("attention_bias / mlp_bias = true".into()));
    }
    let linear = linear_spec(family, quant)?;
    let activation = match hf.hidden_act.as_deref() {
        Some("silu") => FfnActivation::Silu,
        Some("relu2") => FfnActivation::Relu2,
        None if family == Family::BitNet2b4t => FfnActivation::Relu2,
        None => FfnActivation::Silu,
        Some(other) => return Err(unsupported(format!("hidden_act {other:?}"))),
    };
    let (rope_theta, rope_scaling) = rope(hf)?;
    let mut config = BitNetConfig::new(
        hf.vocab_size,
        hf.hidden_size,
        hf.intermediate_size,
        hf.num_hidden_layers,
        hf.num_attention_heads,
        hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
        linear,
    )
    .with_head_dim(hf.head_dim)
    .with_rope_theta(rope_theta)
    .with_rope_scaling(rope_scaling)
    .with_activation(activation)
    .with_sub_norms(family.sub_norm_names().is_some())
    .with_tie_word_embeddings(hf.tie_word_embeddings);
    if let Some(eps) = hf.rms_norm_eps {
        config = config.with_rms_norm_eps(eps);
    }
    if let Some(max) = hf.max_position_embeddings {
        config = config.with_max_position_embeddings(max);
    }
    Ok((config, family))
}

fn linear_spec(family: Family, quant: Option<&QuantizationConfig>) -> Result<TernaryLinearSpec> {
    let convention = match family {
        Family::BitNet2b4t => ScaleConvention::Multiply,
        Family::OneBitLlm => ScaleConvention::Divide,
        Family::LlamaBitnet => match quant.and_then(|q| q.linear_class.as_deref()) {
            None | Some("bitlinear") => ScaleConvention::Divide,
            Some("autobitlinear") => ScaleConvention::Multiply,
            Some(other) => return Err(unsupported(format!("linear_class {other:?}"))),
        },
    };
    if let Some(mode) = quant.and_then(|q| q.quantization_mode.as_deref())
        && mode != "offline"
    {
        return Err(unsupported(format!(
            "quantization_mode {mode:?} (only offline, pre-packed checkpoints are supported)"
        )));
    }
    let mut spec = TernaryLinearSpec::new(convention);
    if let Some(q) = quant
        && q.use_rms_norm
    {
        spec = spec.with_rms_norm_eps(Some(q.rms_norm_eps.unwrap_or(1e-6)));
    }
    Ok(spec)
}

/// RoPE base and scaling from either the v4 keys (`rope_theta`, `rope_scaling`) or the v5
/// `rope_parameters` object.
fn rope(hf: &HfConfig) -> Result<(f64, Option<Llama3RopeScaling>)> {
    let params = hf.rope_parameters.as_ref().or(hf.rope_scaling.as_ref());
    let theta = hf
        .rope_theta
        .or_else(|| params.and_then(|p| p.get("rope_theta")?.as_f64()))
        .unwrap_or(10000.0);
    let Some(params) = params.filter(|p| !p.is_null()) else {
        return Ok((theta, None));
    };
    let kind = params
        .get("rope_type")
        .or_else(|| params.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    match kind {
        "default" => Ok((theta, None)),
        "llama3" => {
            let number = |key: &str| {
                params
                    .get(key)
                    .and_then(Value::as_f64)
                    .ok_or_else(|| unsupported(format!("llama3 rope scaling without {key:?}")))
            };
            Ok((
                theta,
                Some(Llama3RopeScaling::new(
                    number("factor")?,
                    number("low_freq_factor")?,
                    number("high_freq_factor")?,
                    number("original_max_position_embeddings")? as usize,
                )),
            ))
        }
        other => Err(unsupported(format!("rope scaling type {other:?}"))),
    }
}
