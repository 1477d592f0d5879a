//! # burn-bitnet
//!
//! Fast, lossless inference of ternary (1.58-bit) LLMs as a plugin backend for Burn.
//!
//! - [`backend`]: packed ternary formats, exact activation quantization, SIMD kernels and the
//!   Burn extension ([`backend::TernaryOps`]).
//! - [`model`]: BitNet models as Burn modules.
//! - [`import`]: Hugging Face checkpoints, GGUF and the converted format.

pub use bitnet_backend as backend;
pub use bitnet_import as import;
pub use bitnet_model as model;
