//! Arbitrary bytes as a GGUF file: header, metadata, tensor table, tensor data, model and
//! tokenizer construction.
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| common::load_with_magic(data, b"GGUF", "model.gguf"));
