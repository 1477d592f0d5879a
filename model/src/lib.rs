//! # bitnet-model
//!
//! BitNet model families as Burn modules: the decoder blocks, KV cache, sampling and tokenizer
//! that run on top of `bitnet-backend`'s ternary linear layer. The modules land with the model
//! issue; until then the crate only reserves its place in the workspace.
