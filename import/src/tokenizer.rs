//! Tokenizers as checkpoints carry them: a Hugging Face directory (`tokenizer.json`,
//! `tokenizer_config.json`, `generation_config.json`, `config.json`) or GGUF metadata.

use std::collections::BTreeMap;
use std::path::Path;

use bitnet_model::{PreTokenizer, SpecialTokens, TokenType, Tokenizer, TokenizerVocab, VocabModel};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::converted::{converted_tokenizer, is_converted};
use crate::error::{ImportError, Result};
use crate::gguf::{GgufFile, GgufHeader, MetadataValue, is_gguf};

/// Loads the tokenizer at `path`: a model directory, a `tokenizer.json` (its directory's
/// configs supply BOS/EOS and the chat template) or a GGUF file.
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    if path.is_dir() {
        return load_hf_tokenizer(path);
    }
    if !path.is_file() {
        return Err(ImportError::MissingFile {
            what: "tokenizer",
            path: path.to_path_buf(),
        });
    }
    if is_gguf(path) {
        let file = GgufFile::open(path)?;
        return gguf_tokenizer(file.header()).map_err(|message| file.error(message));
    }
    if is_converted(path) {
        return match converted_tokenizer(path)? {
            Some(files) => files.tokenizer(path),
            None => Err(ImportError::NoTokenizer {
                path: path.to_path_buf(),
            }),
        };
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    hf_tokenizer(path, dir)
}

/// The tokenizer of an HF model directory.
pub fn load_hf_tokenizer(dir: &Path) -> Result<Tokenizer> {
    let file = dir.join("tokenizer.json");
    if !file.is_file() {
        return Err(ImportError::MissingFile {
            what: "tokenizer (tokenizer.json; or pass a tokenizer file)",
            path: file,
        });
    }
    hf_tokenizer(&file, dir)
}

/// The files of an HF tokenizer besides `tokenizer.json` that decide its special tokens and
/// chat template.
const HF_TOKENIZER_FILES: [&str; 4] = [
    "tokenizer_config.json",
    "generation_config.json",
    "config.json",
    "chat_template.jinja",
];

/// A tokenizer as its checkpoint stores it, kept verbatim so a converted model can carry it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TokenizerFiles {
    /// `tokenizer.json` and the HF files beside it, by file name.
    Hf { files: BTreeMap<String, String> },
    /// The `tokenizer.*` keys of GGUF metadata.
    Gguf {
        metadata: BTreeMap<String, MetadataValue>,
    },
}

impl TokenizerFiles {
    /// Reads the tokenizer files of a model directory, GGUF file or converted file (`None` when
    /// there is no tokenizer).
    pub fn read(path: &Path) -> Result<Option<Self>> {
        if is_converted(path) {
            return converted_tokenizer(path);
        }
        if is_gguf(path) {
            let file = GgufFile::open(path)?;
            let metadata = file
                .header()
                .metadata
                .iter()
                .filter(|(key, _)| key.starts_with("tokenizer."))
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect();
            return Ok(Some(Self::Gguf { metadata }));
        }
        let (file, dir) = if path.is_dir() {
            (path.join("tokenizer.json"), path)
        } else {
            (path.to_path_buf(), path.parent().unwrap_or(Path::new(".")))
        };
        if !file.is_file() {
            return Ok(None);
        }
        let mut files = BTreeMap::new();
        files.insert("tokenizer.json".to_string(), read_text(&file)?);
        for name in HF_TOKENIZER_FILES {
            let path = dir.join(name);
            if path.is_file() {
                files.insert(name.to_string(), read_text(&path)?);
            }
        }
        Ok(Some(Self::Hf { files }))
    }

    /// Builds the tokenizer; `origin` names where the files came from in errors.
    pub fn tokenizer(&self, origin: &Path) -> Result<Tokenizer> {
        match self {
            Self::Gguf { metadata } => {
                let header = GgufHeader {
                    version: 3,
                    metadata: metadata.clone(),
                    tensors: Vec::new(),
                    alignment: 32,
                    data_offset: 0,
                };
                gguf_tokenizer(&header).map_err(|message| ImportError::Config {
                    path: origin.to_path_buf(),
                    message,
                })
            }
            Self::Hf { files } => {
                let text = files
                    .get("tokenizer.json")
                    .ok_or_else(|| ImportError::Config {
                        path: origin.to_path_buf(),
                        message: "the stored tokenizer has no tokenizer.json".into(),
                    })?;
                let tokenizer = Tokenizer::from_json_str(
                    text,
                    &origin.display().to_string(),
                    SpecialTokens::default(),
                )?;
                with_hf_specials(tokenizer, |name| {
                    let Some(text) = files.get(name) else {
                        return Ok(None);
                    };
                    parse_json(text, &origin.join(name)).map(Some)
                })
            }
        }
    }
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| ImportError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_json(text: &str, path: &Path) -> Result<Value> {
    serde_json::from_str(text).map_err(|e| ImportError::Config {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// A token id, or a list of them, as the HF configs write `eos_token_id`.
fn token_ids(value: Option<&Value>) -> Vec<u32> {
    match value {
        Some(Value::Array(items)) => items.iter().flat_map(|v| token_ids(Some(v))).collect(),
        Some(v) => v
            .as_u64()
            .and_then(|id| u32::try_from(id).ok())
            .into_iter()
            .collect(),
        None => Vec::new(),
    }
}

/// A special token written as a string or as `{"content": ...}` in `tokenizer_config.json`.
fn token_text(value: Option<&Value>) -> Option<&str> {
    match value? {
        Value::String(s) => Some(s),
        Value::Object(map) => map.get("content")?.as_str(),
        _ => None,
    }
}

fn hf_tokenizer(file: &Path, dir: &Path) -> Result<Tokenizer> {
    let tokenizer = Tokenizer::from_json_file(file, SpecialTokens::default())?;
    with_hf_specials(tokenizer, |name| {
        let path = dir.join(name);
        if !path.is_file() {
            return Ok(None);
        }
        let text = read_text(&path)?;
        if name.ends_with(".json") {
            parse_json(&text, &path).map(Some)
        } else {
            Ok(Some(Value::String(text)))
        }
    })
}

/// BOS/EOS and the chat template from the HF files `read` returns by name (JSON files parsed,
/// `chat_template.jinja` as a string).
fn with_hf_specials(
    tokenizer: Tokenizer,
    read: impl Fn(&str) -> Result<Option<Value>>,
) -> Result<Tokenizer> {
    let tokenizer_config = read("tokenizer_config.json")?.unwrap_or_default();
    let generation = read("generation_config.json")?.unwrap_or_default();
    let config = read("config.json")?.unwrap_or_default();
    let by_text =
        |key: &str| token_text(tokenizer_config.get(key)).and_then(|t| tokenizer.token_id(t));

    let bos = [&generation, &config]
        .iter()
        .find_map(|c| token_ids(c.get("bos_token_id")).first().copied())
        .or_else(|| by_text("bos_token"));
    let mut eos = token_ids(generation.get("eos_token_id"));
    eos.extend(token_ids(config.get("eos_token_id")));
    eos.extend(by_text("eos_token"));
    eos.sort_unstable();
    eos.dedup();
    let add_bos = tokenizer_config
        .get("add_bos_token")
        .and_then(Value::as_bool)
        .unwrap_or(bos.is_some());
    let special = SpecialTokens { bos, eos, add_bos };
    let template = chat_template(&tokenizer_config, || match read("chat_template.jinja")? {
        Some(Value::String(s)) => Ok(Some(s)),
        _ => Ok(None),
    })?;
    Ok(tokenizer.with_special(special).with_chat_template(template))
}

/// `chat_template` from `tokenizer_config.json` (a string, or named templates of which the
/// `default` one is used) or from `chat_template.jinja`, which newer transformers write.
fn chat_template(
    tokenizer_config: &Value,
    jinja: impl FnOnce() -> Result<Option<String>>,
) -> Result<Option<String>> {
    match tokenizer_config.get("chat_template") {
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(named)) => {
            let default = named
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template")?.as_str());
            Ok(default.map(str::to_string))
        }
        _ => jinja(),
    }
}

/// The tokenizer in GGUF metadata (`tokenizer.ggml.*`); the error names the bad key.
pub fn gguf_tokenizer(header: &GgufHeader) -> std::result::Result<Tokenizer, String> {
    let model = header
        .get("tokenizer.ggml.model")?
        .as_str()
        .ok_or("tokenizer.ggml.model is not a string")?;
    let tokens = strings(header, "tokenizer.ggml.tokens")?;
    let types = match header.metadata.get("tokenizer.ggml.token_type") {
        None => vec![TokenType::Normal; tokens.len()],
        Some(value) => array(value, "tokenizer.ggml.token_type")?
            .iter()
            .map(|v| {
                let code = v.as_i64().and_then(|c| i32::try_from(c).ok());
                code.ok_or_else(|| format!("token type {v:?} is not an integer"))
                    .and_then(|c| TokenType::from_gguf(c).map_err(|e| e.to_string()))
            })
            .collect::<std::result::Result<Vec<_>, _>>()?,
    };
    let vocab_model = match model {
        "llama" => VocabModel::SentencePiece {
            scores: array(
                header.get("tokenizer.ggml.scores")?,
                "tokenizer.ggml.scores",
            )?
            .iter()
            .map(|v| v.as_f64().map(|s| s as f32))
            .collect::<Option<Vec<_>>>()
            .ok_or("tokenizer.ggml.scores holds a non-float")?,
        },
        "gpt2" => {
            let pre = match header.metadata.get("tokenizer.ggml.pre") {
                Some(v) => v.as_str().ok_or("tokenizer.ggml.pre is not a string")?,
                None => "default",
            };
            VocabModel::BytePairs {
                merges: strings(header, "tokenizer.ggml.merges")?
                    .into_iter()
                    .map(|merge| match merge.split_once(' ') {
                        Some((l, r)) => Ok((l.to_string(), r.to_string())),
                        None => Err(format!("merge {merge:?} is not two tokens")),
                    })
                    .collect::<std::result::Result<Vec<_>, _>>()?,
                pre_tokenizer: PreTokenizer::from_gguf_name(pre).map_err(|e| e.to_string())?,
            }
        }
        other => {
            return Err(format!(
                "unsupported tokenizer model {other:?} (supported: llama, gpt2)"
            ));
        }
    };
    let id = |key: &str| -> std::result::Result<Option<u32>, String> {
        match header.metadata.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64().and_then(|id| u32::try_from(id).ok()) {
                Some(id) if (id as usize) < tokens.len() => Ok(Some(id)),
                _ => Err(format!("{key} {v:?} is not a token id of the vocabulary")),
            },
        }
    };
    let bos = id("tokenizer.ggml.bos_token_id")?;
    let eos = [
        id("tokenizer.ggml.eos_token_id")?,
        id("tokenizer.ggml.eot_token_id")?,
    ]
    .into_iter()
    .flatten()
    .collect();
    let add_bos = match header.metadata.get("tokenizer.ggml.add_bos_token") {
        Some(v) => v
            .as_bool()
            .ok_or("tokenizer.ggml.add_bos_token is not a bool")?,
        None => bos.is_some(),
    };
    let unknown = id("tokenizer.ggml.unknown_token_id")?;
    let template = match header.metadata.get("tokenizer.chat_template") {
        Some(v) => Some(
            v.as_str()
                .ok_or("tokenizer.chat_template is not a string")?
                .to_string(),
        ),
        None => None,
    };
    let vocab = TokenizerVocab {
        tokens,
        types,
        model: vocab_model,
        unknown,
    };
    let special = SpecialTokens { bos, eos, add_bos };
    Tokenizer::from_vocab(vocab, special)
        .map(|t| t.with_chat_template(template))
        .map_err(|e| e.to_string())
}

fn array<'a>(
    value: &'a MetadataValue,
    key: &str,
) -> std::result::Result<&'a [MetadataValue], String> {
    value
        .as_array()
        .ok_or_else(|| format!("{key} is not an array"))
}

fn strings(header: &GgufHeader, key: &str) -> std::result::Result<Vec<String>, String> {
    array(header.get(key)?, key)?
        .iter()
        .map(|v| v.as_str().map(str::to_string))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| format!("{key} holds a non-string"))
}
