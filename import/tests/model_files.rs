//! The converted format and GGUF export: round trips from every golden HF checkpoint, byte
//! equality with bitnet.cpp's own quantizer, tokenizers carried along, and corrupt files.

#[path = "../../backend/tests/common/mod.rs"]
mod common;
mod support;

use std::path::{Path, PathBuf};

use bitnet_import::{
    GgufFile, ImportError, TokenizerFiles, load_converted_model, load_gguf_model, load_hf_model,
    load_model, load_tokenizer, save_converted, save_gguf,
};
use burn::tensor::Device;
use indicatif::ProgressBar;

fn golden_models() -> Vec<PathBuf> {
    let Some(dir) = common::golden_dir() else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir.join("models"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    dirs
}

fn demo_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/tiny-shakespeare")
}

const PROMPT: [i64; 6] = [1, 17, 42, 99, 7, 250];

#[test]
fn converted_files_reproduce_every_golden_model_exactly() {
    let device = Device::flex();
    let tmp = tempfile::tempdir().unwrap();
    for dir in golden_models().into_iter().chain([demo_model()]) {
        let hf = load_hf_model(&dir, &device).unwrap();
        let path = tmp.path().join("model.bitnet");
        let tokenizer = TokenizerFiles::read(&dir).unwrap();
        save_converted(&hf, tokenizer.as_ref(), &path, &ProgressBar::hidden()).unwrap();
        let converted = load_converted_model(&path, &device).unwrap();
        assert_eq!(converted.config, hf.config, "{}", dir.display());
        assert_eq!(
            support::logits(&converted, &PROMPT, &device),
            support::logits(&hf, &PROMPT, &device),
            "{}",
            dir.display()
        );
        // `load_model` tells the formats apart by content.
        load_model(&path, &device).unwrap();
        if tokenizer.is_some() {
            let text = "ROMEO: But soft, what light?";
            let from_file = load_tokenizer(&path).unwrap();
            let from_dir = load_tokenizer(&dir).unwrap();
            assert_eq!(
                from_file.encode(text, true).unwrap(),
                from_dir.encode(text, true).unwrap()
            );
            assert_eq!(from_file.special(), from_dir.special());
        }
    }
}

#[test]
fn exported_gguf_files_load_back_with_the_same_logits() {
    let device = Device::flex();
    let tmp = tempfile::tempdir().unwrap();
    for dir in golden_models() {
        let hf = load_hf_model(&dir, &device).unwrap();
        let path = tmp.path().join("model.gguf");
        match save_gguf(&hf, None, &path, &ProgressBar::hidden()) {
            Ok(()) => {}
            // The per-projection RMSNorm variant has no bitnet.cpp graph.
            Err(e) if hf.config.linear.rms_norm_eps.is_some() => {
                assert!(e.to_string().contains("per-projection RMSNorm"), "{e}");
                continue;
            }
            Err(e) => panic!("{}: {e}", dir.display()),
        }
        let gguf = load_gguf_model(&path, &device).unwrap();
        common::assert_strict(
            &dir.display().to_string(),
            &support::logits(&gguf, &PROMPT, &device),
            &support::logits(&hf, &PROMPT, &device),
        );
    }
}

#[test]
fn demo_model_and_its_tokenizer_survive_gguf_export() {
    let device = Device::flex();
    let dir = demo_model();
    let hf = load_hf_model(&dir, &device).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("demo.gguf");
    let files = TokenizerFiles::read(&dir).unwrap();
    save_gguf(&hf, files.as_ref(), &path, &ProgressBar::hidden()).unwrap();
    let text = "ROMEO: But soft, what light through yonder window breaks?";
    assert_eq!(
        load_tokenizer(&path).unwrap().encode(text, true).unwrap(),
        load_tokenizer(&dir).unwrap().encode(text, true).unwrap()
    );
    let gguf = load_gguf_model(&path, &device).unwrap();
    common::assert_strict(
        "demo",
        &support::logits(&gguf, &PROMPT, &device),
        &support::logits(&hf, &PROMPT, &device),
    );
}

/// The parity directory's HF checkpoint, exported by us, gives the very bytes bitnet.cpp's own
/// converter + `llama-quantize ... I2_S` wrote for every ternary tensor.
#[test]
fn exported_i2s_tensors_equal_bitnet_cpp_quantizer_output() {
    let parity = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/parity");
    let dir = parity.join("bitnet_b158_i2s");
    if !dir.is_dir() {
        eprintln!("SKIPPED: {} not found", dir.display());
        return;
    }
    let hf = load_hf_model(&dir.join("hf"), &Device::flex()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let ours = tmp.path().join("ours.gguf");
    save_gguf(&hf, None, &ours, &ProgressBar::hidden()).unwrap();
    let ours = GgufFile::open(&ours).unwrap();
    let theirs = GgufFile::open(&dir.join("bitnet_b158_i2s.i2_s.gguf")).unwrap();
    assert_eq!(ours.header().architecture(), theirs.header().architecture());
    let mut compared = 0;
    for info in &theirs.header().tensors {
        let (a, b) = (
            ours.tensor(&info.name).unwrap(),
            theirs.tensor(&info.name).unwrap(),
        );
        assert_eq!(a.dims, b.dims, "{}", info.name);
        if info.ggml_type == 36 {
            // Codes byte for byte; the f32 scale after them is ours exactly (1 / s), while
            // bitnet.cpp's converter rounds it through bf16, and its padding is uninitialized.
            let n = a.bytes.len() - 32;
            assert_eq!(a.bytes.len(), b.bytes.len(), "{}", info.name);
            assert!(a.bytes[..n] == b.bytes[..n], "{}: codes differ", info.name);
            let scale = |bytes: &[u8]| f32::from_le_bytes(bytes[n..n + 4].try_into().unwrap());
            let (ours, theirs) = (scale(a.bytes), scale(b.bytes));
            assert!(
                (ours - theirs).abs() <= theirs.abs() / 256.0,
                "{}: scale {ours} vs {theirs}",
                info.name
            );
            compared += 1;
        }
    }
    assert_eq!(compared, 14);
}

/// Writes `bytes` to a file in `dir` and returns the path.
fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn load_error(path: &Path) -> String {
    match load_model(path, &Device::flex()) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_converted_file_without_a_tokenizer_says_it_stores_none() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("demo.bitnet");
    let model = load_hf_model(&demo_model(), &Device::flex()).unwrap();
    save_converted(&model, None, &path, &ProgressBar::hidden()).unwrap();
    let err = load_tokenizer(&path).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, ImportError::NoTokenizer { .. }), "{message}");
    // The file is there: the message must not say it is missing.
    assert!(message.contains("demo.bitnet"), "{message}");
    assert!(!message.contains("does not exist"), "{message}");
}

#[test]
fn every_truncation_of_a_converted_file_is_an_error() {
    let device = Device::flex();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("demo.bitnet");
    let model = load_hf_model(&demo_model(), &device).unwrap();
    save_converted(&model, None, &path, &ProgressBar::hidden()).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let header_end = 24 + u64::from_le_bytes(bytes[16..24].try_into().unwrap()) as usize;
    // Every length through the header, then a spread of lengths through the data.
    let lengths = (9..header_end + 80).chain((header_end..bytes.len()).step_by(4099));
    for len in lengths {
        let file = write(tmp.path(), "cut.bitnet", &bytes[..len]);
        let message = load_error(&file);
        assert!(
            message.contains("truncated") || message.contains("header is not valid"),
            "{len}: {message}"
        );
    }
    let mut wrong_version = bytes.clone();
    wrong_version[8] = 9;
    let message = load_error(&write(tmp.path(), "v9.bitnet", &wrong_version));
    assert!(message.contains("format version 9"), "{message}");
    let mut garbled = bytes.clone();
    garbled[30] = b'#';
    let message = load_error(&write(tmp.path(), "garbled.bitnet", &garbled));
    assert!(message.contains("header is not valid"), "{message}");
    let message = load_error(&write(tmp.path(), "neither", b"not a model at all"));
    assert!(message.contains("neither"), "{message}");
}

#[test]
fn a_path_that_cannot_be_opened_is_named_unreadable_not_an_unknown_format() {
    let tmp = tempfile::tempdir().unwrap();
    // A socket exists but cannot be opened as a file (even by root, unlike a mode of 000).
    #[cfg(unix)]
    {
        let socket = tmp.path().join("model.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let message = load_error(&socket);
        assert!(message.starts_with("cannot read"), "{message}");
    }
    let message = load_error(&write(tmp.path(), "empty.gguf", b""));
    assert!(message.contains("is not a model"), "{message}");
}
