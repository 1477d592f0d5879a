//! Writing bitnet.cpp-compatible GGUF files: I2_S projections, F32 embedding, head and norms
//! (lossless; bitnet.cpp reads F32 as well as its usual F16), and the tokenizer when the source
//! had one.

use std::collections::BTreeMap;
use std::path::Path;

use bitnet_model::{BitNetConfig, BitNetModel, FfnActivation};
use indicatif::ProgressBar;
use serde_json::Value;

use crate::error::{ImportError, Result};
use crate::ggml::{GgmlType, encode_i2s};
use crate::gguf::MetadataValue;
use crate::gguf_model::{gguf_name, interleave_rows};
use crate::model_tensors::{ModelTensor, model_tensors};
use crate::staged::StagedFile;
use crate::tokenizer::TokenizerFiles;

const ALIGNMENT: u64 = 32;
/// bitnet.cpp's `LLAMA_FTYPE_MOSTLY_I2_S`.
const FILE_TYPE_I2S: u32 = 40;

/// A tensor planned for a GGUF file: name, ggml dims (fastest first), type and byte length.
pub struct GgufTensorPlan {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    pub len: u64,
}

/// Streams a GGUF v3 file: the header first (every offset is known from the plan), then each
/// tensor in plan order. The file appears at its path only when complete.
pub struct GgufWriter {
    out: StagedFile,
    plan: Vec<GgufTensorPlan>,
    next: usize,
}

impl GgufWriter {
    /// Writes the header of a file with this metadata and these tensors.
    pub fn create(
        path: &Path,
        metadata: &BTreeMap<String, MetadataValue>,
        plan: Vec<GgufTensorPlan>,
    ) -> Result<Self> {
        let mut header = Vec::new();
        header.extend_from_slice(b"GGUF");
        header.extend_from_slice(&3u32.to_le_bytes());
        header.extend_from_slice(&(plan.len() as u64).to_le_bytes());
        header.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (key, value) in metadata {
            put_string(&mut header, key);
            put_value(&mut header, value);
        }
        let mut offset = 0u64;
        for t in &plan {
            put_string(&mut header, &t.name);
            header.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                header.extend_from_slice(&d.to_le_bytes());
            }
            header.extend_from_slice(&t.ty.code().to_le_bytes());
            header.extend_from_slice(&offset.to_le_bytes());
            offset = (offset + t.len).div_ceil(ALIGNMENT) * ALIGNMENT;
        }
        let mut out = StagedFile::create(path)?;
        out.write(&header)?;
        out.pad(header.len() as u64, ALIGNMENT)?;
        Ok(Self { out, plan, next: 0 })
    }

    /// Writes the next planned tensor, which must be `name` with exactly its planned size.
    pub fn write_next(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let planned = self.plan.get(self.next).map(|t| (t.name.as_str(), t.len));
        if planned != Some((name, bytes.len() as u64)) {
            return Err(ImportError::Unsupported(format!(
                "GGUF writer expected {planned:?} next, got {name:?} of {} bytes",
                bytes.len()
            )));
        }
        self.next += 1;
        self.out.write(bytes)?;
        self.out.pad(bytes.len() as u64, ALIGNMENT)
    }

    /// Checks every tensor was written, then moves the file into place.
    pub fn finish(self) -> Result<()> {
        if let Some(missing) = self.plan.get(self.next) {
            return Err(ImportError::MissingTensor(missing.name.clone()));
        }
        self.out.finish()
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// The GGUF type code of a value.
fn value_type(value: &MetadataValue) -> u32 {
    use MetadataValue as V;
    match value {
        V::U8(_) => 0,
        V::I8(_) => 1,
        V::U16(_) => 2,
        V::I16(_) => 3,
        V::U32(_) => 4,
        V::I32(_) => 5,
        V::F32(_) => 6,
        V::Bool(_) => 7,
        V::String(_) => 8,
        V::Array(_) => 9,
        V::U64(_) => 10,
        V::I64(_) => 11,
        V::F64(_) => 12,
    }
}

fn put_value(out: &mut Vec<u8>, value: &MetadataValue) {
    use MetadataValue as V;
    out.extend_from_slice(&value_type(value).to_le_bytes());
    put_payload(out, value);
    fn put_payload(out: &mut Vec<u8>, value: &MetadataValue) {
        match value {
            V::U8(v) => out.push(*v),
            V::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
            V::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
            V::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
            V::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
            V::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
            V::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
            V::Bool(v) => out.push(*v as u8),
            V::String(s) => put_string(out, s),
            V::Array(items) => {
                // An empty array keeps the string element type (empty merges, for instance).
                let element = items.first().map_or(8, value_type);
                out.extend_from_slice(&element.to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                items.iter().for_each(|item| put_payload(out, item));
            }
            V::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
            V::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
            V::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        }
    }
}

/// The GGUF architecture whose graph computes `config`, or why none does.
pub fn gguf_architecture(config: &BitNetConfig) -> Result<&'static str> {
    let unsupported = |what: &str| {
        Err(ImportError::Unsupported(format!(
            "writing GGUF for a model with {what}"
        )))
    };
    if config.linear.rms_norm_eps.is_some() {
        return unsupported("per-projection RMSNorm (no bitnet.cpp graph has it)");
    }
    if config.rope_scaling.is_some() {
        return unsupported("Llama 3 RoPE scaling");
    }
    match (config.activation, config.sub_norms) {
        (FfnActivation::Relu2, true) => Ok("bitnet-b1.58"),
        (FfnActivation::Silu, true) => Ok("bitnet"),
        (FfnActivation::Silu, false) => Ok("llama"),
        (FfnActivation::Relu2, false) => unsupported("ReLU² without sub-norms"),
    }
}

/// The `{arch}.*` and `general.*` metadata of `config`.
pub fn gguf_metadata(config: &BitNetConfig, arch: &str) -> BTreeMap<String, MetadataValue> {
    use MetadataValue as V;
    let count = |n: usize| V::U32(n as u32);
    let mut m = BTreeMap::new();
    let mut put = |key: &str, value| {
        let key = key.replace("{arch}", arch);
        m.insert(key, value);
    };
    put("general.architecture", V::String(arch.into()));
    put("general.name", V::String("burn-bitnet".into()));
    put("general.file_type", V::U32(FILE_TYPE_I2S));
    put("general.quantization_version", V::U32(2));
    put("{arch}.vocab_size", count(config.vocab_size));
    put(
        "{arch}.context_length",
        count(config.max_position_embeddings),
    );
    put("{arch}.embedding_length", count(config.hidden_size));
    put(
        "{arch}.feed_forward_length",
        count(config.intermediate_size),
    );
    put("{arch}.block_count", count(config.num_hidden_layers));
    put(
        "{arch}.attention.head_count",
        count(config.num_attention_heads),
    );
    put(
        "{arch}.attention.head_count_kv",
        count(config.num_key_value_heads),
    );
    put("{arch}.rope.dimension_count", count(config.head_dim()));
    put("{arch}.rope.freq_base", V::F32(config.rope_theta as f32));
    put(
        "{arch}.attention.layer_norm_rms_epsilon",
        V::F32(config.rms_norm_eps as f32),
    );
    if config.head_dim.is_some() {
        put("{arch}.attention.key_length", count(config.head_dim()));
        put("{arch}.attention.value_length", count(config.head_dim()));
    }
    m
}

/// `tokenizer.*` metadata of a generated SentencePiece vocabulary of `vocab_size` pieces: `<unk>`,
/// `<s>`, `</s>`, the 256 byte pieces, then placeholder words `▁t0`, `▁t1`, ... (the kind
/// bitnet.cpp's parity files carry). For models that come without a tokenizer, such as the dummy
/// benchmark layouts: llama.cpp-family engines (bitnet.cpp, ik_llama.cpp) refuse to load a GGUF
/// that has none, and benchmarks feed token ids anyway.
pub fn placeholder_vocab(vocab_size: usize) -> Result<BTreeMap<String, MetadataValue>> {
    use MetadataValue as V;
    const SPECIALS: [(&str, i32); 3] = [("<unk>", 2), ("<s>", 3), ("</s>", 3)];
    const BYTE: i32 = 6;
    const NORMAL: i32 = 1;
    let fixed = SPECIALS.len() + 256;
    if vocab_size < fixed {
        return Err(ImportError::Unsupported(format!(
            "a placeholder vocabulary needs at least {fixed} tokens (3 specials and 256 bytes), \
             the model has {vocab_size}"
        )));
    }
    let pieces = SPECIALS
        .iter()
        .map(|&(text, ty)| (text.to_string(), ty))
        .chain((0..=255u8).map(|b| (format!("<0x{b:02X}>"), BYTE)))
        .chain((0..vocab_size - fixed).map(|i| (format!("\u{2581}t{i}"), NORMAL)));
    let (tokens, types): (Vec<_>, Vec<_>) = pieces
        .map(|(text, ty)| (V::String(text), V::I32(ty)))
        .unzip();
    Ok(BTreeMap::from([
        ("tokenizer.ggml.model".into(), V::String("llama".into())),
        ("tokenizer.ggml.pre".into(), V::String("default".into())),
        ("tokenizer.ggml.tokens".into(), V::Array(tokens)),
        ("tokenizer.ggml.token_type".into(), V::Array(types)),
        (
            "tokenizer.ggml.scores".into(),
            V::Array(vec![V::F32(0.0); vocab_size]),
        ),
        ("tokenizer.ggml.bos_token_id".into(), V::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), V::U32(2)),
    ]))
}

/// Writes `model` as a bitnet.cpp I2_S GGUF at `path`, with the tokenizer when one is given.
///
/// A model whose scales divide (HF `BitLinear`, 1bitLLM) is written with each scale inverted,
/// which is exact up to one f32 rounding of the scale. bitnet.cpp's own kernels also need every
/// projection's input width to be a multiple of 128.
pub fn save_gguf(
    model: &BitNetModel,
    tokenizer: Option<&TokenizerFiles>,
    path: &Path,
    progress: &ProgressBar,
) -> Result<()> {
    let config = &model.config;
    let arch = gguf_architecture(config)?;
    let mut metadata = gguf_metadata(config, arch);
    if let Some(tokenizer) = tokenizer {
        metadata.extend(tokenizer_metadata(tokenizer)?);
    }
    let mut tensors = Vec::new();
    for (name, tensor) in model_tensors(model)? {
        let gguf = gguf_name(&name);
        let (dims, ty, bytes) = match tensor {
            ModelTensor::Float { shape, values } => {
                let dims = shape.iter().rev().map(|&d| d as u64).collect();
                (dims, GgmlType::F32, crate::converted::f32_bytes(&values))
            }
            ModelTensor::Ternary(weights) => {
                let heads = if arch != "llama" {
                    None
                } else if name.ends_with("q_proj.weight") {
                    Some(config.num_attention_heads)
                } else if name.ends_with("k_proj.weight") {
                    Some(config.num_key_value_heads)
                } else {
                    None
                };
                let weights = match heads {
                    Some(heads) => {
                        interleave_rows(&weights, heads).map_err(ImportError::Unsupported)?
                    }
                    None => weights,
                };
                let layout = weights.layout();
                let bytes = encode_i2s(&weights)
                    .map_err(|e| ImportError::Unsupported(format!("tensor {name:?}: {e}")))?;
                (vec![layout.k as u64, layout.n as u64], GgmlType::I2S, bytes)
            }
        };
        tensors.push((gguf, dims, ty, bytes));
    }
    let plan = tensors
        .iter()
        .map(|(name, dims, ty, bytes)| GgufTensorPlan {
            name: name.clone(),
            dims: dims.clone(),
            ty: *ty,
            len: bytes.len() as u64,
        })
        .collect();
    let mut writer = GgufWriter::create(path, &metadata, plan)?;
    for (name, _, _, bytes) in &tensors {
        writer.write_next(name, bytes)?;
        progress.inc(bytes.len() as u64);
    }
    writer.finish()
}

/// `tokenizer.*` metadata: copied from a GGUF source, or built from an HF BPE `tokenizer.json`.
fn tokenizer_metadata(files: &TokenizerFiles) -> Result<BTreeMap<String, MetadataValue>> {
    use MetadataValue as V;
    let files = match files {
        TokenizerFiles::Gguf { metadata } => return Ok(metadata.clone()),
        TokenizerFiles::Hf { files } => files,
    };
    let unsupported = |what: &str| ImportError::Unsupported(format!("tokenizer.json: {what}"));
    let json: Value = files
        .get("tokenizer.json")
        .and_then(|t| serde_json::from_str(t).ok())
        .ok_or_else(|| unsupported("missing or not JSON"))?;
    let model = &json["model"];
    if model["type"] != "BPE" || model["byte_fallback"] == true {
        return Err(unsupported(
            "only byte-level BPE vocabularies can be written to GGUF (SentencePiece-style \
             tokenizer.json files cannot yet)",
        ));
    }
    let mut tokens: Vec<Option<String>> = Vec::new();
    let mut types = Vec::new();
    let mut place = |token: &str, id: u64, control: bool| {
        let id = id as usize;
        if tokens.len() <= id {
            tokens.resize(id + 1, None);
            types.resize(id + 1, V::I32(1));
        }
        tokens[id] = Some(token.to_string());
        types[id] = V::I32(if control { 3 } else { 1 });
    };
    for (token, id) in model["vocab"]
        .as_object()
        .ok_or_else(|| unsupported("no vocab"))?
    {
        place(
            token,
            id.as_u64().ok_or_else(|| unsupported("bad id"))?,
            false,
        );
    }
    for added in json["added_tokens"].as_array().into_iter().flatten() {
        let (Some(content), Some(id)) = (added["content"].as_str(), added["id"].as_u64()) else {
            return Err(unsupported("malformed added_tokens"));
        };
        place(content, id, added["special"] == true);
    }
    let tokens = tokens
        .into_iter()
        .enumerate()
        .map(|(id, t)| {
            t.map(V::String)
                .ok_or_else(|| unsupported(&format!("no token has id {id}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let merges = model["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| match m {
            Value::String(s) => Some(V::String(s.clone())),
            Value::Array(pair) => Some(V::String(format!(
                "{} {}",
                pair[0].as_str()?,
                pair.get(1)?.as_str()?
            ))),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| unsupported("malformed merges"))?;
    let tokenizer = files_tokenizer(files)?;
    let special = tokenizer.special();
    let pre = if json["pre_tokenizer"]
        .to_string()
        .contains("(?i:'s|'t|'re|'ve|'m|'ll|'d)")
    {
        "llama-bpe"
    } else {
        "default"
    };
    let mut m = BTreeMap::new();
    m.insert("tokenizer.ggml.model".into(), V::String("gpt2".into()));
    m.insert("tokenizer.ggml.pre".into(), V::String(pre.into()));
    m.insert("tokenizer.ggml.tokens".into(), V::Array(tokens));
    m.insert("tokenizer.ggml.token_type".into(), V::Array(types));
    m.insert("tokenizer.ggml.merges".into(), V::Array(merges));
    m.insert(
        "tokenizer.ggml.add_bos_token".into(),
        V::Bool(special.add_bos),
    );
    if let Some(bos) = special.bos {
        m.insert("tokenizer.ggml.bos_token_id".into(), V::U32(bos));
    }
    if let Some(&eos) = special.eos.first() {
        m.insert("tokenizer.ggml.eos_token_id".into(), V::U32(eos));
    }
    if let Some(template) = tokenizer.chat_template() {
        m.insert("tokenizer.chat_template".into(), V::String(template.into()));
    }
    Ok(m)
}

fn files_tokenizer(files: &BTreeMap<String, String>) -> Result<bitnet_model::Tokenizer> {
    TokenizerFiles::Hf {
        files: files.clone(),
    }
    .tokenizer(Path::new("tokenizer.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_placeholder_vocabulary_has_one_piece_per_token_or_names_the_shortfall() {
        let vocab = placeholder_vocab(300).unwrap();
        for key in ["tokens", "token_type", "scores"] {
            let values = vocab[&format!("tokenizer.ggml.{key}")].as_array().unwrap();
            assert_eq!(values.len(), 300, "{key}");
        }
        let error = placeholder_vocab(258).unwrap_err().to_string();
        assert!(
            error.contains("at least 259") && error.contains("has 258"),
            "{error}"
        );
    }
}
