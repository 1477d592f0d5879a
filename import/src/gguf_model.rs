//! A GGUF file of bitnet.cpp or llama.cpp -> [`BitNetModel`].
//!
//! Architectures: `bitnet-b1.58` and `bitnet-25` (BitNet b1.58 2B4T: ReLU², sub-norms),
//! `bitnet` (1bitLLM: SiLU, sub-norms) and `llama` with ternary projections (Llama3-8B-1.58,
//! Falcon3-1.58). Projections may be I2_S, TQ1_0, TQ2_0 or ternary-valued floats; everything
//! else F32, F16, BF16, Q8_0 or Q6_K. The weights follow bitnet.cpp's arithmetic: the scale
//! multiplies and activations scale by `127 / amax` rounded once.

use std::path::Path;

use bitnet_backend::{ActivationScale, I2sWeights, ScaleConvention};
use bitnet_model::{BitNetConfig, BitNetModel, FfnActivation, TernaryLinearSpec};
use burn::tensor::Device;

use crate::builder::{UsedNames, WeightSource, build_model};
use crate::error::{ImportError, Result};
use crate::ggml::{decode_float, decode_ternary, ternary_from_floats};
use crate::gguf::{GgufFile, GgufHeader, GgufTensor};
use crate::store::check_shape;

/// The GGUF architectures we run, with what tells their graphs apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GgufArch {
    /// `bitnet-b1.58` / `bitnet-25`: BitNet b1.58 2B4T.
    BitNet2b4t,
    /// `bitnet`: 1bitLLM's bitnet_b1_58 models as older bitnet.cpp converts them.
    OneBitLlm,
    /// `llama` with ternary projections. llama.cpp's converter interleaves the query and key
    /// rows for its rotation, which is undone at load.
    Llama,
}

impl GgufArch {
    fn parse(name: &str) -> Result<Self> {
        match name {
            "bitnet-b1.58" | "bitnet-25" => Ok(Self::BitNet2b4t),
            "bitnet" => Ok(Self::OneBitLlm),
            "llama" => Ok(Self::Llama),
            other => Err(ImportError::UnsupportedArchitecture(format!(
                "{other} (GGUF architectures supported: bitnet-b1.58, bitnet-25, bitnet, llama)"
            ))),
        }
    }
}

/// Loads a GGUF model file onto `device` (its tokenizer loads with
/// [`crate::load_tokenizer`] from the same path).
pub fn load_gguf_model(path: &Path, device: &Device) -> Result<BitNetModel> {
    let file = GgufFile::open(path)?;
    let (config, arch) = gguf_config(&file)?;
    let source = GgufSource {
        file: &file,
        arch,
        heads: (config.num_attention_heads, config.num_key_value_heads),
        used: UsedNames::default(),
    };
    if config.rope_freq_factors.is_some() {
        source.used.mark("rope_freqs.weight");
    }
    build_model(&source, &config, device)
}

/// The model configuration in the metadata (`{arch}.*` keys).
fn gguf_config(file: &GgufFile) -> Result<(BitNetConfig, GgufArch)> {
    let header = file.header();
    let arch_name = header.architecture().map_err(|e| file.error(e))?;
    let arch = GgufArch::parse(arch_name)?;
    let meta = Metadata {
        header,
        prefix: arch_name,
    };
    let count = |key: &str| meta.count(key).map_err(|e| file.error(e));
    let hidden = count("embedding_length")?;
    let heads = count("attention.head_count")?;
    let kv_heads = meta
        .optional_count("attention.head_count_kv")
        .map_err(|e| file.error(e))?
        .unwrap_or(heads);
    let embedding = file.tensor("token_embd.weight")?;
    let vocab = match meta
        .optional_count("vocab_size")
        .map_err(|e| file.error(e))?
    {
        Some(v) => v,
        None => embedding.shape()[0],
    };
    let head_dim = match meta.optional_count("attention.key_length") {
        Ok(Some(d)) => d,
        _ => hidden / heads.max(1),
    };
    if let Some(rot) = meta
        .optional_count("rope.dimension_count")
        .map_err(|e| file.error(e))?
        && rot != head_dim
    {
        return Err(ImportError::Unsupported(format!(
            "partial rotary embedding ({arch_name}.rope.dimension_count = {rot}, head dim \
             {head_dim})"
        )));
    }
    if let Some(kind) = meta.optional_str("rope.scaling.type") {
        let factor = meta.optional_float("rope.scaling.factor").unwrap_or(1.0);
        if !(kind == "none" || (kind == "linear" && factor == 1.0)) {
            return Err(ImportError::Unsupported(format!(
                "RoPE scaling {kind:?} with factor {factor}"
            )));
        }
    }
    let (activation, sub_norms) = match arch {
        GgufArch::BitNet2b4t => (FfnActivation::Relu2, true),
        GgufArch::OneBitLlm => (FfnActivation::Silu, true),
        GgufArch::Llama => (FfnActivation::Silu, false),
    };
    let linear = TernaryLinearSpec::new(ScaleConvention::Multiply)
        .with_activation_scale(ActivationScale::Quotient);
    let mut config = BitNetConfig::new(
        vocab,
        hidden,
        count("feed_forward_length")?,
        count("block_count")?,
        heads,
        kv_heads,
        linear,
    )
    .with_head_dim((head_dim * heads != hidden).then_some(head_dim))
    .with_activation(activation)
    .with_sub_norms(sub_norms)
    // bitnet.cpp's graphs always tie the head; llama.cpp's tie when `output.weight` is absent.
    .with_tie_word_embeddings(!file.contains("output.weight"));
    if let Some(eps) = meta.optional_float("attention.layer_norm_rms_epsilon") {
        config = config.with_rms_norm_eps(eps);
    }
    if let Some(theta) = meta.optional_float("rope.freq_base") {
        config = config.with_rope_theta(theta);
    }
    if let Some(context) = meta
        .optional_count("context_length")
        .map_err(|e| file.error(e))?
    {
        config = config.with_max_position_embeddings(context);
    }
    if file.contains("rope_freqs.weight") {
        let factors = float_tensor(file, "rope_freqs.weight", &[head_dim / 2])?;
        config = config.with_rope_freq_factors(Some(factors));
    }
    config.validate()?;
    Ok((config, arch))
}

/// Typed access to the `{arch}.*` metadata keys.
struct Metadata<'a> {
    header: &'a GgufHeader,
    prefix: &'a str,
}

impl Metadata<'_> {
    fn value(&self, key: &str) -> Option<&crate::gguf::MetadataValue> {
        self.header.metadata.get(&format!("{}.{key}", self.prefix))
    }

    fn optional_count(&self, key: &str) -> std::result::Result<Option<usize>, String> {
        match self.value(key) {
            None => Ok(None),
            Some(v) => match v.as_u64().and_then(|v| usize::try_from(v).ok()) {
                Some(n) => Ok(Some(n)),
                None => Err(format!("{}.{key} = {v:?} is not a count", self.prefix)),
            },
        }
    }

    fn count(&self, key: &str) -> std::result::Result<usize, String> {
        self.optional_count(key)?
            .ok_or_else(|| format!("metadata key \"{}.{key}\" is missing", self.prefix))
    }

    fn optional_float(&self, key: &str) -> Option<f64> {
        self.value(key).and_then(|v| v.as_f64())
    }

    fn optional_str(&self, key: &str) -> Option<&str> {
        self.value(key).and_then(|v| v.as_str())
    }
}

/// A float tensor of `file` in row-major `shape`.
fn float_tensor(file: &GgufFile, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
    let tensor = file.tensor(name)?;
    check_shape(name, shape, &tensor.shape())?;
    if tensor.ty.is_ternary() {
        return Err(ImportError::Dtype {
            name: name.to_string(),
            dtype: format!(
                "{:?} (a ternary type, where floats are expected)",
                tensor.ty
            ),
        });
    }
    decode_float(tensor.ty, tensor.bytes, tensor.elements()).map_err(|e| file.error(e))
}

/// The GGUF name of a canonical (HF-style) tensor name.
pub fn gguf_name(canonical: &str) -> String {
    match canonical {
        "model.embed_tokens.weight" => return "token_embd.weight".into(),
        "model.norm.weight" => return "output_norm.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        _ => {}
    }
    let Some(rest) = canonical.strip_prefix("model.layers.") else {
        return canonical.to_string();
    };
    let (layer, part) = rest.split_once('.').unwrap_or((rest, ""));
    let part = match part {
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "self_attn.attn_sub_norm.weight" => "attn_sub_norm.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        "mlp.ffn_sub_norm.weight" => "ffn_sub_norm.weight",
        other => other,
    };
    format!("blk.{layer}.{part}")
}

/// A GGUF file answering for the canonical names.
struct GgufSource<'a> {
    file: &'a GgufFile,
    arch: GgufArch,
    /// Query and key/value heads (to undo llama.cpp's row interleaving).
    heads: (usize, usize),
    used: UsedNames,
}

impl GgufSource<'_> {
    fn tensor(&self, canonical: &str) -> Result<(String, GgufTensor<'_>)> {
        let name = gguf_name(canonical);
        let tensor = self.file.tensor(&name)?;
        self.used.mark(&name);
        Ok((name, tensor))
    }

    /// Heads whose rows llama.cpp interleaved in this projection, if any.
    fn interleaved_heads(&self, prefix: &str) -> Option<usize> {
        if self.arch != GgufArch::Llama {
            return None;
        }
        if prefix.ends_with("q_proj") {
            Some(self.heads.0)
        } else if prefix.ends_with("k_proj") {
            Some(self.heads.1)
        } else {
            None
        }
    }
}

impl WeightSource for GgufSource<'_> {
    fn float(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let gguf = gguf_name(name);
        self.used.mark(&gguf);
        float_tensor(self.file, &gguf, shape)
    }

    fn ternary(&self, prefix: &str, n: usize, k: usize) -> Result<I2sWeights> {
        let (name, tensor) = self.tensor(&format!("{prefix}.weight"))?;
        check_shape(&name, &[n, k], &tensor.shape())?;
        let weights = if tensor.ty.is_ternary() {
            decode_ternary(tensor.ty, tensor.bytes, n, k).map_err(|e| {
                self.file
                    .error(format!("tensor {name:?} ({:?}): {e}", tensor.ty))
            })?
        } else {
            let values = float_tensor(self.file, &name, &[n, k])?;
            ternary_from_floats(&values, n, k).ok_or_else(|| {
                self.file.error(format!(
                    "tensor {name:?} ({:?}) holds weights that are not one scale times -1/0/+1: \
                     not a ternary model",
                    tensor.ty
                ))
            })?
        };
        match self.interleaved_heads(prefix) {
            Some(heads) => deinterleave_rows(&weights, heads).map_err(|e| self.file.error(e)),
            None => Ok(weights),
        }
    }

    fn unused(&self) -> Vec<String> {
        self.used
            .unused(self.file.header().tensors.iter().map(|t| &t.name))
    }

    fn total_bytes(&self) -> usize {
        self.file.bytes().len()
    }
}

/// Undoes llama.cpp's `permute`: within each head, GGUF row `2i + j` is HF row `j * d/2 + i`.
fn deinterleave_rows(
    weights: &I2sWeights,
    heads: usize,
) -> std::result::Result<I2sWeights, String> {
    permute_head_rows(weights, heads, |within, half| {
        2 * (within % half) + within / half
    })
}

/// Interleaves rows as llama.cpp's converter does (the inverse of [`deinterleave_rows`]).
pub(crate) fn interleave_rows(
    weights: &I2sWeights,
    heads: usize,
) -> std::result::Result<I2sWeights, String> {
    permute_head_rows(weights, heads, |within, half| {
        (within % 2) * half + within / 2
    })
}

/// Row `within` of each head of the result is row `source(within, head_dim / 2)` of the same
/// head of `weights`.
fn permute_head_rows(
    weights: &I2sWeights,
    heads: usize,
    source: impl Fn(usize, usize) -> usize,
) -> std::result::Result<I2sWeights, String> {
    let layout = weights.layout();
    let head_dim = layout.n / heads.max(1);
    if heads == 0 || !layout.n.is_multiple_of(heads) || !head_dim.is_multiple_of(2) {
        return Err(format!(
            "{} rows do not split into {heads} heads of even width",
            layout.n
        ));
    }
    let row_bytes = layout.row_bytes();
    let mut codes = Vec::with_capacity(weights.codes().len());
    for row in 0..layout.n {
        let (head, within) = (row / head_dim, row % head_dim);
        let from = head * head_dim + source(within, head_dim / 2);
        codes.extend_from_slice(&weights.codes()[from * row_bytes..(from + 1) * row_bytes]);
    }
    I2sWeights::from_codes(layout, codes).map_err(|e| e.to_string())
}
