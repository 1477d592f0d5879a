//! # bitnet-model
//!
//! BitNet model families as Burn modules on top of `bitnet-backend`'s ternary linear layer:
//! [`BitLinear`], grouped-query [`Attention`] with RoPE, the gated [`FeedForward`] block (SiLU or
//! ReLU²), optional sub-norms, a preallocated [`KvCache`] and the causal LM [`BitNetModel`];
//! and what generation needs around it: [`Tokenizer`], [`ChatTemplate`], [`Sampler`] and the
//! cache-keeping [`Session`].
//!
//! One [`BitNetConfig`] covers BitNet b1.58 2B4T, Llama3-8B-1.58 / Falcon3-1.58 (with and
//! without per-projection RMSNorm), 1bitLLM's bitnet_b1_58 and Falcon-E; `bitnet-import` maps
//! each family's checkpoint onto it.

pub mod attention;
pub mod bitlinear;
pub mod cache;
pub mod chat;
pub mod config;
pub mod error;
pub mod feed_forward;
pub mod generate;
pub mod model;
pub mod norm;
pub mod perplexity;
mod pool;
pub mod profile;
pub mod rope;
pub mod sampling;
pub mod tokenizer;
pub mod train;

pub use attention::Attention;
pub use bitlinear::{BitLinear, BitLinearConfig, TernaryParam, ternarize};
pub use cache::{CacheType, KvCache, LayerCache};
pub use chat::{ChatMessage, ChatTemplate, Conversation, TurnText};
pub use config::{BitNetConfig, FfnActivation, Llama3RopeScaling, TernaryLinearSpec};
pub use error::{ModelError, Result};
pub use feed_forward::FeedForward;
pub use generate::{GenerateOptions, Generation, GenerationStats, Session, StopReason};
pub use model::{BitNetModel, DecoderLayer, HiddenStates};
pub use norm::{RmsNorm, RmsNormConfig};
pub use perplexity::{Window, perplexity, token_nll, token_nll_with_cache, windows};
pub use profile::ForwardProfile;
pub use rope::RotaryEmbedding;
pub use sampling::{Sampler, SamplerConfig};
pub use tokenizer::{
    PreTokenizer, SpecialTokens, TextStream, TokenType, Tokenizer, TokenizerVocab, VocabModel,
};
pub use train::{WarmupCosine, next_token_loss};
