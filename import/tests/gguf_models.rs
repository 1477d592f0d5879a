//! GGUF files written by bitnet.cpp's own converter and quantizer (../shared/parity), loaded
//! directly: logits against bitnet.cpp's, against HF transformers' (golden) and against the
//! same model loaded from its HF directory.

#[path = "../../backend/tests/common/mod.rs"]
mod common;
mod support;

use std::path::{Path, PathBuf};

use bitnet_import::{load_gguf_model, load_hf_model, load_tokenizer};
use bitnet_model::BitNetModel;
use burn::tensor::Device;
use common::Golden;

/// `../shared/parity` (or `BITNET_PARITY_DIR`), if present.
fn parity_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("BITNET_PARITY_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/parity"));
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "SKIPPED: bitnet.cpp parity files not found at {}",
            dir.display()
        );
        None
    }
}

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// Max and mean |got - want| relative to max |want|.
fn relative_diff(got: &[f32], want: &[f32]) -> (f32, f32) {
    assert_eq!(got.len(), want.len());
    let scale = max_abs(want).max(1e-6);
    let d: Vec<f32> = got.iter().zip(want).map(|(g, w)| (g - w).abs()).collect();
    (
        max_abs(&d) / scale,
        d.iter().sum::<f32>() / d.len() as f32 / scale,
    )
}

/// The manifest's hard limit: max |d| <= 10% and mean |d| <= 1% of max |want|.
fn assert_hard(what: &str, got: &[f32], want: &[f32]) {
    let (max, mean) = relative_diff(got, want);
    assert!(
        max <= 0.1 && mean <= 0.01,
        "{what}: max|d| {max:.4}, mean|d| {mean:.5} of max|logit|"
    );
}

struct Prompt {
    ids: Vec<i64>,
    /// bitnet.cpp's logits at every prompt position, `[T * vocab]`.
    logits: Vec<f32>,
}

fn bitnet_cpp_run(path: &Path) -> Vec<Prompt> {
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    json["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| Prompt {
            ids: p["input_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_i64().unwrap())
                .collect(),
            logits: p["prompt_logits"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|row| row.as_array().unwrap().iter())
                .map(|v| v.as_f64().unwrap() as f32)
                .collect(),
        })
        .collect()
}

fn load(path: &Path, device: &Device) -> BitNetModel {
    load_gguf_model(path, device).unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

#[test]
fn bitnet_cpp_i2s_file_matches_bitnet_cpp_and_the_hf_reference() {
    let Some(dir) = parity_dir() else { return };
    let dir = dir.join("bitnet_b158_i2s");
    let device = Device::flex();
    let model = load(&dir.join("bitnet_b158_i2s.i2_s.gguf"), &device);
    let hf = load_hf_model(&dir.join("hf"), &device).unwrap();
    let golden = Golden::open(dir.join("bitnet_b158_i2s.golden.safetensors"));
    for (i, prompt) in bitnet_cpp_run(&dir.join("out-i2_s.json"))
        .iter()
        .enumerate()
    {
        let ours = support::logits(&model, &prompt.ids, &device);
        assert_hard(&format!("prompt {i} vs bitnet.cpp"), &ours, &prompt.logits);
        let reference = golden.f32(&format!("seq{i}.logits"));
        assert_hard(&format!("prompt {i} vs HF transformers"), &ours, &reference);
        let from_hf = support::logits(&hf, &prompt.ids, &device);
        assert_hard(&format!("prompt {i} vs the HF directory"), &ours, &from_hf);
    }
}

#[test]
fn float_and_i2s_files_of_one_model_agree() {
    // Same ternary weights; only the embedding differs (F32 in one, F16 in the other).
    let Some(dir) = parity_dir() else { return };
    let device = Device::flex();
    for (model, prompt) in [
        ("bitnet_b158_i2s", vec![19, 447, 480]),
        ("bitnet2b4t_pub", vec![111, 154, 73]),
    ] {
        let dir = dir.join(model);
        let f32_model = load(&dir.join(format!("{model}.f32.gguf")), &device);
        let i2s_model = load(&dir.join(format!("{model}.i2_s.gguf")), &device);
        common::assert_strict(
            model,
            &support::logits(&f32_model, &prompt, &device),
            &support::logits(&i2s_model, &prompt, &device),
        );
    }
}

#[test]
fn i2s_file_with_rows_bitnet_cpp_cannot_run_matches_the_reference() {
    // K = 64 and 172 are not multiples of 128: bitnet.cpp's own logits for this file are wrong,
    // while its bytes are exact flattened blocks.
    let Some(dir) = parity_dir() else { return };
    let Some(golden_dir) = common::golden_dir() else {
        return;
    };
    let device = Device::flex();
    let model = load(
        &dir.join("bitnet2b4t_pub/bitnet2b4t_pub.i2_s.gguf"),
        &device,
    );
    let hf = load_hf_model(&golden_dir.join("models/bitnet2b4t_pub"), &device).unwrap();
    let golden = Golden::open(golden_dir.join("bitnet2b4t_pub.golden.safetensors"));
    let case = common::manifest_case(&golden_dir, "bitnet2b4t_pub");
    for sequence in case["sequences"].as_array().unwrap() {
        let id = sequence["id"].as_str().unwrap();
        let ids: Vec<i64> = sequence["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_i64().unwrap())
            .collect();
        let ours = support::logits(&model, &ids, &device);
        assert_hard(id, &ours, &golden.f32(&format!("{id}.logits")));
        common::assert_strict(id, &ours, &support::logits(&hf, &ids, &device));
    }
}

#[test]
fn tokenizer_and_hyper_parameters_come_from_the_metadata() {
    let Some(dir) = parity_dir() else { return };
    let path = dir.join("bitnet2b4t_pub/bitnet2b4t_pub.i2_s.gguf");
    let model = load(&path, &Device::flex());
    let c = &model.config;
    assert_eq!(
        (c.vocab_size, c.hidden_size, c.intermediate_size),
        (320, 64, 172)
    );
    assert_eq!((c.num_attention_heads, c.num_key_value_heads), (4, 2));
    assert_eq!(c.rope_theta, 500000.0);
    assert!(c.sub_norms && c.tie_word_embeddings);
    let tokenizer = load_tokenizer(&path).unwrap();
    assert_eq!(tokenizer.vocab_size(), 320);
    assert!(tokenizer.chat_template().is_some());
}

#[test]
fn f16_embedding_gives_an_exact_half_head_that_matches_the_f32_head() {
    let Some(dir) = parity_dir() else { return };
    let dir = dir.join("bitnet_b158_i2s");
    let device = Device::flex();
    let with_half = load(&dir.join("bitnet_b158_i2s.i2_s.gguf"), &device);
    let head = with_half
        .half_head
        .as_ref()
        .expect("an F16 embedding is exact in 16 bits");
    assert_eq!(head.format(), "f16");
    assert_eq!(
        head.shape(),
        [with_half.config.vocab_size, with_half.config.hidden_size]
    );
    let without = BitNetModel {
        half_head: None,
        ..load(&dir.join("bitnet_b158_i2s.i2_s.gguf"), &device)
    };
    let rebuilt = BitNetModel {
        half_head: None,
        ..load(&dir.join("bitnet_b158_i2s.i2_s.gguf"), &device)
    }
    .with_half_head();
    assert_eq!(rebuilt.half_head.map(|h| h.format()), Some("f16"));
    for prompt in bitnet_cpp_run(&dir.join("out-i2_s.json")) {
        // Decode-sized calls: one to eight positions use the 16-bit head.
        let ids = &prompt.ids[..prompt.ids.len().min(8)];
        let got = support::logits(&with_half, ids, &device);
        common::assert_strict(
            "16-bit head vs f32 head",
            &got,
            &support::logits(&without, ids, &device),
        );
    }
}
