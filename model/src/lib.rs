//! # bitnet-model
//!
//! BitNet model families as Burn modules on top of `bitnet-backend`'s ternary linear layer:
//! [`BitLinear`], grouped-query [`Attention`] with RoPE, the gated [`FeedForward`] block (SiLU or
//! ReLU²), optional sub-norms, a preallocated [`KvCache`] and the causal LM [`BitNetModel`].
//!
//! One [`BitNetConfig`] covers BitNet b1.58 2B4T, Llama3-8B-1.58 / Falcon3-1.58 (with and
//! without per-projection RMSNorm), 1bitLLM's bitnet_b1_58 and Falcon-E; `bitnet-import` maps
//! each family's checkpoint onto it.

pub mod attention;
pub mod bitlinear;
pub mod cache;
pub mod config;
pub mod error;
pub mod feed_forward;
pub mod model;
pub mod norm;
pub mod rope;

pub use attention::Attention;
pub use bitlinear::{BitLinear, BitLinearConfig};
pub use cache::{KvCache, LayerCache};
pub use config::{BitNetConfig, FfnActivation, Llama3RopeScaling, TernaryLinearSpec};
pub use error::{ModelError, Result};
pub use feed_forward::FeedForward;
pub use model::{BitNetModel, DecoderLayer, HiddenStates};
pub use norm::{RmsNorm, RmsNormConfig};
pub use rope::RotaryEmbedding;
