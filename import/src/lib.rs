//! # bitnet-import
//!
//! Loading ternary checkpoints into `bitnet-backend` weights: Hugging Face safetensors
//! checkpoints, bitnet.cpp GGUF files and the converted on-disk format. The loaders land with
//! the import issues; until then the crate only reserves its place in the workspace.
