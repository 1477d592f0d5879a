//! # bitnet-import
//!
//! Loading ternary checkpoints into `bitnet-model`: Hugging Face directories
//! (`config.json` + `model.safetensors` or sharded safetensors) of every supported family, with
//! packed u8 weights repacked to I2_S and latent float weights ternarized at load. The files are
//! memory-mapped and every tensor is checked against the configuration; anything missing,
//! extra, misshapen or corrupt is an [`ImportError`] that names it.
//!
//! Tokenizers load from the same directories or from GGUF metadata ([`load_tokenizer`]).

mod builder;
pub mod converted;
pub mod error;
pub mod export;
pub mod ggml;
pub mod gguf;
pub mod gguf_model;
pub mod gguf_write;
pub mod hf;
pub mod hf_config;
pub mod model_tensors;
mod staged;
pub mod store;
pub mod tokenizer;

pub use converted::{
    ConvertedWriter, StoredKind, is_converted, load_converted_model, save_converted,
};
pub use error::{ImportError, Result};
pub use export::{
    BYTE_LEVEL_END_OF_TEXT, byte_level_tokenizer_json, save_byte_level_tokenizer, save_hf_model,
    write_json,
};
pub use gguf::{GgufFile, GgufHeader, MetadataValue};
pub use gguf_model::load_gguf_model;
pub use gguf_write::{GgufTensorPlan, GgufWriter, save_gguf};
pub use hf::load_hf_model;
pub use hf_config::{Family, read_config};
pub use store::TensorStore;
pub use tokenizer::{TokenizerFiles, gguf_tokenizer, load_hf_tokenizer, load_tokenizer};

use std::path::Path;

use bitnet_model::BitNetModel;
use burn::tensor::Device;

/// The kinds of model file this crate loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFormat {
    /// A Hugging Face checkpoint directory.
    HfDir,
    /// A GGUF file (bitnet.cpp / llama.cpp).
    Gguf,
    /// Our converted, memory-mappable file.
    Converted,
}

/// What `path` holds, told by its content (a directory, or a file's magic bytes).
pub fn model_format(path: &Path) -> Result<ModelFormat> {
    if path.is_dir() {
        Ok(ModelFormat::HfDir)
    } else if !path.exists() {
        Err(ImportError::MissingFile {
            what: "model (an HF directory, a GGUF file or a converted file)",
            path: path.to_path_buf(),
        })
    } else if let Err(source) = std::fs::File::open(path) {
        // Named as unreadable, not as an unknown format, which the magic checks would say.
        Err(ImportError::Io {
            path: path.to_path_buf(),
            source,
        })
    } else if gguf::is_gguf(path) {
        Ok(ModelFormat::Gguf)
    } else if is_converted(path) {
        Ok(ModelFormat::Converted)
    } else {
        Err(ImportError::UnknownFormat {
            path: path.to_path_buf(),
        })
    }
}

/// Loads a model from an HF directory, a GGUF file or a converted file.
pub fn load_model(path: &Path, device: &Device) -> Result<BitNetModel> {
    match model_format(path)? {
        ModelFormat::HfDir => load_hf_model(path, device),
        ModelFormat::Gguf => load_gguf_model(path, device),
        ModelFormat::Converted => load_converted_model(path, device),
    }
}
