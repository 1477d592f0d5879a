//! Errors of the model layer.

use bitnet_backend::TernaryError;
use thiserror::Error;

/// What can go wrong when building or running a BitNet model.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum ModelError {
    /// A ternary weight or kernel rejected its input.
    #[error(transparent)]
    Ternary(#[from] TernaryError),
    /// A configuration value that cannot describe a model.
    #[error("invalid model configuration: {0}")]
    Config(String),
    /// A token id outside the vocabulary.
    #[error("token id {token} at position {position} is outside the vocabulary (size {vocab})")]
    TokenOutOfRange {
        token: i64,
        position: usize,
        vocab: usize,
    },
    /// A forward pass was asked for zero tokens.
    #[error("no tokens to process")]
    EmptyInput,
    /// The tokens do not fit in what is left of the context.
    #[error(
        "context overflow: {cached} cached + {new} new tokens exceed the context size of {context}"
    )]
    ContextOverflow {
        cached: usize,
        new: usize,
        context: usize,
    },
    /// A vocabulary or tokenizer file that cannot be used, or text it cannot encode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A chat template that does not parse or render.
    #[error("chat template: {0}")]
    Template(String),
    /// A sampling parameter outside its range.
    #[error("invalid sampling parameter: {0}")]
    Sampling(String),
    /// A text or window that perplexity cannot score.
    #[error("perplexity: {0}")]
    Perplexity(String),
    /// A layer was given a float layer it cannot turn into a ternary one.
    #[error("unsupported conversion: {0}")]
    Unsupported(String),
}

/// Result of model operations.
pub type Result<T> = std::result::Result<T, ModelError>;
