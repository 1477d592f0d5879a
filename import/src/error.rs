//! Errors of the importers: every bad file or option is named, never a panic.

use std::path::PathBuf;

use bitnet_backend::TernaryError;
use bitnet_model::ModelError;
use thiserror::Error;

/// What can go wrong while importing a checkpoint.
#[derive(Debug, Error)]
pub enum ImportError {
    /// A file could not be opened or read (the cause is the error's source, shown after it by
    /// `{:#}` in anyhow or by walking `source()`).
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file or directory could not be created or written.
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A required file is absent.
    #[error("missing {what}: {path} does not exist")]
    MissingFile { what: &'static str, path: PathBuf },
    /// A model file was given as the tokenizer but carries none.
    #[error("no tokenizer in {path}: the file stores none, so pass a tokenizer file")]
    NoTokenizer { path: PathBuf },
    /// `config.json` (or the shard index) is not valid JSON of the expected form.
    #[error("invalid {path}: {message}")]
    Config { path: PathBuf, message: String },
    /// The checkpoint's architecture is not one we implement.
    #[error("unsupported architecture {0:?}")]
    UnsupportedArchitecture(String),
    /// A configuration option we do not implement.
    #[error("unsupported option: {0}")]
    Unsupported(String),
    /// A model path that is neither a directory nor a file of a format we read.
    #[error(
        "{path} is not a model: neither an HF checkpoint directory nor a GGUF file (starting with \
         \"GGUF\") nor a converted model (starting with \"BITNETCV\")"
    )]
    UnknownFormat { path: PathBuf },
    /// A safetensors file is truncated or corrupt.
    #[error("corrupt safetensors file {path}: {message}")]
    Safetensors { path: PathBuf, message: String },
    /// A GGUF file that is truncated, corrupt or holds something we cannot use.
    #[error("invalid GGUF file {path}: {message}")]
    Gguf { path: PathBuf, message: String },
    /// A converted model file that is truncated, corrupt or of another version.
    #[error("invalid converted model {path}: {message}")]
    Converted { path: PathBuf, message: String },
    /// A tensor the model needs is not in the checkpoint.
    #[error("missing tensor {0:?}")]
    MissingTensor(String),
    /// The checkpoint holds tensors the model does not use.
    #[error("unexpected tensor(s) in the checkpoint: {}", .0.join(", "))]
    ExtraTensors(Vec<String>),
    /// A tensor's shape disagrees with the configuration.
    #[error("tensor {name:?} has shape {actual:?}, the config implies {expected:?}")]
    Shape {
        name: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    /// A tensor is stored in a dtype we cannot read for its role.
    #[error("tensor {name:?} has unsupported dtype {dtype}")]
    Dtype { name: String, dtype: String },
    /// A tensor's values are invalid (a packed code of 3, a NaN scale, ...): the source says how.
    #[error("invalid tensor {name:?}")]
    Ternary { name: String, source: TernaryError },
    /// The model rejected the configuration.
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// Result of import operations.
pub type Result<T> = std::result::Result<T, ImportError>;
