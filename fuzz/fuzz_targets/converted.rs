//! Arbitrary bytes as our converted format: header JSON, tensor table, data, tokenizer.
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    common::load_with_magic(data, b"BITNETCV", "model.bitnet")
});
