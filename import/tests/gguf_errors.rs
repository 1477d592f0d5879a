//! Corrupt GGUF files, made by damaging a real bitnet.cpp file: every one is an error that
//! names the problem, never a panic. (README's robustness table lists these cases.)

use std::path::{Path, PathBuf};

use bitnet_import::{GgufFile, load_gguf_model};
use burn::tensor::Device;

fn source() -> Option<Vec<u8>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/parity/bitnet2b4t_pub/bitnet2b4t_pub.i2_s.gguf");
    if !path.is_file() {
        eprintln!("SKIPPED: {} not found", path.display());
        return None;
    }
    Some(std::fs::read(path).unwrap())
}

fn load_error(dir: &Path, bytes: &[u8]) -> String {
    let path = dir.join("damaged.gguf");
    std::fs::write(&path, bytes).unwrap();
    match load_gguf_model(&path, &Device::flex()) {
        Ok(_) => panic!("a damaged file loaded"),
        Err(e) => e.to_string(),
    }
}

fn assert_error(dir: &Path, bytes: &[u8], expected: &str) {
    let message = load_error(dir, bytes);
    assert!(
        message.contains(expected),
        "expected {expected:?} in: {message}"
    );
}

/// Byte position just after the first occurrence of `needle`.
fn after(bytes: &[u8], needle: &[u8]) -> usize {
    bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("needle present")
        + needle.len()
}

/// Position of the tensor description fields of `name`: (dims, type, offset).
fn tensor_fields(bytes: &[u8], name: &str, n_dims: usize) -> (usize, usize, usize) {
    let dims = after(bytes, name.as_bytes()) + 4;
    let ty = dims + 8 * n_dims;
    (dims, ty, ty + 4)
}

/// A copy of `bytes` with `edit` applied.
fn damaged(bytes: &[u8], edit: &dyn Fn(&mut Vec<u8>)) -> Vec<u8> {
    let mut copy = bytes.to_vec();
    edit(&mut copy);
    copy
}

fn put_u64(bytes: &mut [u8], at: usize, v: u64) {
    bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn every_truncation_is_an_error() {
    let Some(bytes) = source() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("source.gguf");
    std::fs::write(&path, &bytes).unwrap();
    let file = GgufFile::open(&path).unwrap();
    let data = file.header().data_offset as usize;
    // Every length through the header (every section boundary among them), then each tensor's
    // start and end in the data section.
    let mut lengths: Vec<usize> = (0..=data).collect();
    for t in &file.header().tensors {
        let start = data + t.offset as usize;
        lengths.extend([start, start + 1, start + 33]);
    }
    lengths.push(bytes.len() - 1);
    for len in lengths.into_iter().filter(|&l| l < bytes.len()) {
        let message = load_error(tmp.path(), &bytes[..len]);
        assert!(
            message.contains("truncated") || message.contains("wrong magic"),
            "length {len}: {message}"
        );
    }
}

#[test]
fn damaged_headers_name_the_problem() {
    let Some(bytes) = source() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let damaged = |edit: &dyn Fn(&mut Vec<u8>)| damaged(&bytes, edit);
    assert_error(dir, &damaged(&|b| b[0] = b'X'), "wrong magic");
    assert_error(
        dir,
        &damaged(&|b| put_u32(b, 4, 1)),
        "unsupported GGUF version 1",
    );
    assert_error(
        dir,
        &damaged(&|b| put_u32(b, 4, 4)),
        "unsupported GGUF version 4",
    );
    assert_error(dir, &damaged(&|b| put_u64(b, 8, u64::MAX)), "tensor count");
    assert_error(
        dir,
        &damaged(&|b| put_u64(b, 16, 1 << 40)),
        "metadata count",
    );
    // The first key's length.
    assert_error(
        dir,
        &damaged(&|b| put_u64(b, 24, u64::MAX / 2)),
        "truncated",
    );
    // An array claiming more elements than the file holds.
    let tokens = after(&bytes, b"tokenizer.ggml.tokens") + 4 + 4;
    assert_error(
        dir,
        &damaged(&|b| put_u64(b, tokens, 1 << 50)),
        "array length",
    );
    // A metadata value of an unknown type.
    let arch_type = after(&bytes, b"general.architecture");
    assert_error(
        dir,
        &damaged(&|b| put_u32(b, arch_type, 99)),
        "unknown metadata type 99",
    );
}

#[test]
fn bad_tensor_descriptions_name_the_tensor() {
    let Some(bytes) = source() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let damaged = |edit: &dyn Fn(&mut Vec<u8>)| damaged(&bytes, edit);
    let (dims, ty, offset) = tensor_fields(&bytes, "output_norm.weight", 1);
    assert_error(
        dir,
        &damaged(&|b| put_u64(b, offset, 1 << 40)),
        "runs past the end of the file",
    );
    assert_error(
        dir,
        &damaged(&|b| put_u64(b, offset, u64::MAX - 31)),
        "runs past the end of the file",
    );
    assert_error(dir, &damaged(&|b| put_u64(b, offset, 0)), "overlap");
    assert_error(dir, &damaged(&|b| put_u64(b, offset, 3)), "not aligned");
    assert_error(
        dir,
        &damaged(&|b| put_u32(b, ty, 2)),
        "unsupported ggml tensor type 2 (Q4_0)",
    );
    assert_error(
        dir,
        &damaged(&|b| put_u32(b, ty, 1000)),
        "unsupported ggml tensor type 1000",
    );
    // A shape that disagrees with the metadata (embedding_length 64).
    assert_error(
        dir,
        &damaged(&|b| put_u64(b, dims, 32)),
        "\"output_norm.weight\" has shape [32], the config implies [64]",
    );
    assert_error(dir, &damaged(&|b| put_u64(b, dims, u64::MAX)), "overflow");
    let n_dims = after(&bytes, b"output_norm.weight");
    assert_error(dir, &damaged(&|b| put_u32(b, n_dims, 7)), "7 dimensions");
}

#[test]
fn bad_tensor_data_and_metadata_name_the_problem() {
    let Some(bytes) = source() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let path = dir.join("source.gguf");
    std::fs::write(&path, &bytes).unwrap();
    let file = GgufFile::open(&path).unwrap();
    let q = file.tensor("blk.0.attn_q.weight").unwrap();
    let data = file.header().data_offset as usize;
    let q_start = data
        + file
            .header()
            .tensors
            .iter()
            .find(|t| t.name == "blk.0.attn_q.weight")
            .unwrap()
            .offset as usize;
    let scale_at = q_start + q.elements() / 4;
    let damaged = |edit: &dyn Fn(&mut Vec<u8>)| damaged(&bytes, edit);
    let nan = damaged(&|b| b[scale_at..scale_at + 4].copy_from_slice(&f32::NAN.to_le_bytes()));
    assert_error(dir, &nan, "blk.0.attn_q.weight");
    assert!(load_error(dir, &nan).contains("NaN"));
    let zero = damaged(&|b| b[scale_at..scale_at + 4].copy_from_slice(&0f32.to_le_bytes()));
    assert_error(dir, &zero, "blk.0.attn_q.weight");
    assert_error(dir, &damaged(&|b| b[q_start] = 0xFF), "code 3");
    // The architecture value (the key prefixes also spell it; only the value is changed).
    let arch = after(&bytes, b"general.architecture") + 4 + 8;
    assert_error(
        dir,
        &damaged(&|b| b[arch..arch + 9].copy_from_slice(b"mamba-25x")),
        "unsupported architecture",
    );
    // A required hyper-parameter that is missing (its key renamed).
    let key = after(&bytes, b"bitnet-25.block_count") - 5;
    assert_error(
        dir,
        &damaged(&|b| b[key..key + 5].copy_from_slice(b"xxxxx")),
        "bitnet-25.block_count",
    );
}
