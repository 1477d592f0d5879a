//! Arbitrary bytes as an HF checkpoint directory: the input is split at the first NUL into
//! `config.json` and `model.safetensors` (then the same safetensors as `tokenizer.json` text).
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let (config, weights) = data.split_at(split);
    let weights = weights.get(1..).unwrap_or_default();
    let dir = common::scratch();
    std::fs::write(dir.path().join("config.json"), config).expect("writing config.json");
    std::fs::write(dir.path().join("model.safetensors"), weights).expect("writing weights");
    common::load_everything(dir.path());
    std::fs::write(dir.path().join("tokenizer.json"), weights).expect("writing tokenizer.json");
    let _ = bitnet_import::load_tokenizer(dir.path());
});
