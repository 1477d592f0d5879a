//! Writing a model back out as an HF checkpoint in BitNet b1.58 2B4T's packed layout
//! (`BitNetForCausalLM`: u8 codes `[ceil(n/4), k]` + `weight_scale`), which our importer and HF
//! transformers both load; and the byte-level tokenizer the demo model is trained with.

use std::path::Path;

use bitnet_backend::ScaleConvention;
use bitnet_model::{BitNetModel, FfnActivation};
use safetensors::{Dtype, tensor::TensorView};
use serde_json::{Value, json};

use crate::error::{ImportError, Result};
use crate::model_tensors::{ModelTensor, model_tensors};

/// Bytes and shape of one tensor to write.
struct Entry {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

/// Writes `config.json`, `generation_config.json` and `model.safetensors` for `model` into `dir`
/// (created if needed). Float tensors are stored as F32 so the export is lossless.
///
/// Only models of the 2B4T layout can be written this way (multiply scale convention, ReLU²,
/// sub-norms, no per-projection norm, default RoPE); anything else is
/// [`ImportError::Unsupported`]. Trainable layers must be packed first.
pub fn save_hf_model(model: &BitNetModel, dir: &Path, bos: u32, eos: u32) -> Result<()> {
    let c = &model.config;
    let layout_problem = if c.linear.convention != ScaleConvention::Multiply {
        Some("the divide scale convention")
    } else if c.activation != FfnActivation::Relu2 || !c.sub_norms {
        Some("a feed-forward block other than ReLU² with sub-norms")
    } else if c.linear.rms_norm_eps.is_some() {
        Some("per-projection RMSNorm")
    } else if c.rope_scaling.is_some() || c.rope_freq_factors.is_some() {
        Some("RoPE scaling")
    } else {
        None
    };
    if let Some(problem) = layout_problem {
        return Err(ImportError::Unsupported(format!(
            "exporting a model with {problem}: only the BitNet b1.58 2B4T layout can be written"
        )));
    }
    let mut entries = Vec::new();
    for (name, tensor) in model_tensors(model)? {
        match tensor {
            ModelTensor::Float { shape, values } => entries.push(Entry {
                name,
                dtype: Dtype::F32,
                shape,
                bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            }),
            ModelTensor::Ternary(weights) => {
                let layout = weights.layout();
                let prefix = name.strip_suffix(".weight").unwrap_or(&name);
                entries.push(Entry {
                    name: format!("{prefix}.weight_scale"),
                    dtype: Dtype::F32,
                    shape: vec![1],
                    bytes: layout.scale.to_le_bytes().to_vec(),
                });
                entries.push(Entry {
                    name,
                    dtype: Dtype::U8,
                    shape: vec![layout.n.div_ceil(4), layout.k],
                    bytes: weights.to_hf_packed(),
                });
            }
        }
    }

    std::fs::create_dir_all(dir).map_err(|source| write_error(dir, source))?;
    let views = entries
        .iter()
        .map(|e| {
            let view = TensorView::new(e.dtype, e.shape.clone(), &e.bytes)
                .map_err(|err| ImportError::Unsupported(format!("tensor {}: {err}", e.name)))?;
            Ok((e.name.as_str(), view))
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata = Some([("format".to_string(), "pt".to_string())].into());
    let path = dir.join("model.safetensors");
    safetensors::serialize_to_file(views, metadata, &path).map_err(|e| {
        ImportError::Safetensors {
            path: path.clone(),
            message: e.to_string(),
        }
    })?;
    write_json(&dir.join("config.json"), &hf_config(model, bos, eos))?;
    write_json(
        &dir.join("generation_config.json"),
        &json!({"bos_token_id": bos, "eos_token_id": eos}),
    )
}

fn hf_config(model: &BitNetModel, bos: u32, eos: u32) -> Value {
    let c = &model.config;
    let mut config = json!({
        "architectures": ["BitNetForCausalLM"],
        "model_type": "bitnet",
        "attention_bias": false,
        "attention_dropout": 0.0,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "hidden_act": "relu2",
        "hidden_size": c.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": c.intermediate_size,
        "max_position_embeddings": c.max_position_embeddings,
        "num_attention_heads": c.num_attention_heads,
        "num_hidden_layers": c.num_hidden_layers,
        "num_key_value_heads": c.num_key_value_heads,
        "quantization_config": {
            "linear_class": "autobitlinear",
            "quant_method": "bitnet",
            "quantization_mode": "offline"
        },
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "tie_word_embeddings": c.tie_word_embeddings,
        "torch_dtype": "float32",
        "use_cache": true,
        "vocab_size": c.vocab_size
    });
    if let Some(head_dim) = c.head_dim {
        config["head_dim"] = json!(head_dim);
    }
    config
}

/// Id of `<|endoftext|>` in the byte-level tokenizer (after the 256 bytes).
pub const BYTE_LEVEL_END_OF_TEXT: u32 = 256;

/// Writes the byte-level tokenizer of [`byte_level_tokenizer_json`] as `tokenizer.json` and a
/// `tokenizer_config.json` that adds no BOS (a byte-level model is trained on raw text).
pub fn save_byte_level_tokenizer(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| write_error(dir, source))?;
    write_json(&dir.join("tokenizer.json"), &byte_level_tokenizer_json())?;
    write_json(
        &dir.join("tokenizer_config.json"),
        &json!({
            "add_bos_token": false,
            "bos_token": "<|endoftext|>",
            "eos_token": "<|endoftext|>",
            "tokenizer_class": "PreTrainedTokenizerFast"
        }),
    )
}

/// A GPT-2 style byte-level `tokenizer.json` whose token `b` is the byte `b` (no merges), plus
/// `<|endoftext|>` as token 256: the tokenizer of a byte-level model.
pub fn byte_level_tokenizer_json() -> Value {
    let vocab: serde_json::Map<String, Value> = byte_level_alphabet()
        .into_iter()
        .enumerate()
        .map(|(byte, c)| (c.to_string(), json!(byte)))
        .chain([("<|endoftext|>".to_string(), json!(BYTE_LEVEL_END_OF_TEXT))])
        .collect();
    let byte_level = json!({
        "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false
    });
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [{
            "id": BYTE_LEVEL_END_OF_TEXT, "content": "<|endoftext|>", "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true
        }],
        "normalizer": null,
        "pre_tokenizer": byte_level,
        "post_processor": null,
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": false, "vocab": vocab, "merges": []
        }
    })
}

/// GPT-2's byte-to-character map: printable Latin-1 bytes stand for themselves, the others are
/// shifted to code points from 256 up, so every byte is one visible character.
fn byte_level_alphabet() -> Vec<char> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
    let mut shifted = 256;
    (0u32..256)
        .map(|b| {
            let code = if printable(b) {
                b
            } else {
                shifted += 1;
                shifted - 1
            };
            char::from_u32(code).expect("code points below 512 are characters")
        })
        .collect()
}

/// Writes `value` as pretty JSON.
pub fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("JSON values serialize");
    std::fs::write(path, text + "\n").map_err(|source| write_error(path, source))
}

fn write_error(path: &Path, source: std::io::Error) -> ImportError {
    ImportError::Write {
        path: path.to_path_buf(),
        source,
    }
}
