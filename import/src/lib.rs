//! # bitnet-import
//!
//! Loading ternary checkpoints into `bitnet-model`: Hugging Face directories
//! (`config.json` + `model.safetensors` or sharded safetensors) of every supported family, with
//! packed u8 weights repacked to I2_S and latent float weights ternarized at load. The files are
//! memory-mapped and every tensor is checked against the configuration; anything missing,
//! extra, misshapen or corrupt is an [`ImportError`] that names it.
//!
//! Tokenizers load from the same directories or from GGUF metadata ([`load_tokenizer`]).

pub mod error;
pub mod export;
pub mod gguf;
pub mod hf;
pub mod hf_config;
pub mod store;
pub mod tokenizer;

pub use error::{ImportError, Result};
pub use export::{
    BYTE_LEVEL_END_OF_TEXT, byte_level_tokenizer_json, save_byte_level_tokenizer, save_hf_model,
    write_json,
};
pub use gguf::{GgufFile, GgufHeader, MetadataValue};
pub use hf::load_hf_model;
pub use hf_config::{Family, read_config};
pub use store::TensorStore;
pub use tokenizer::{gguf_tokenizer, load_hf_tokenizer, load_tokenizer};
