//! Shared test support: the golden vectors in `../shared/golden` and seeded random data.
//! (The import crate's tests include this file too.)

#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::path::PathBuf;

use half::f16;
use safetensors::{Dtype, SafeTensors};

/// The manifest's strict limit, for runs that share every int8 rounding: max |got - want| <=
/// 1e-4 x max(|want|, 1).
pub fn assert_strict(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let absmax = want.iter().fold(1f32, |m, x| m.max(x.abs()));
    let max = got
        .iter()
        .zip(want)
        .fold(0f32, |m, (g, w)| m.max((g - w).abs()));
    assert!(
        max <= 1e-4 * absmax,
        "{what}: max|d| {max} (absmax {absmax})"
    );
}

/// The entry `name` of the golden `manifest.json` in `golden`.
pub fn manifest_case(golden: &std::path::Path, name: &str) -> serde_json::Value {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(golden.join("manifest.json")).unwrap()).unwrap();
    manifest["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no case {name:?} in the golden manifest"))
        .clone()
}

/// `../shared/golden` beside the repository (or `BITNET_GOLDEN_DIR`), if present.
pub fn golden_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("BITNET_GOLDEN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/golden"));
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "SKIPPED: golden vectors not found at {} (set BITNET_GOLDEN_DIR)",
            dir.display()
        );
        None
    }
}

/// A golden safetensors file read into memory.
pub struct Golden {
    bytes: Vec<u8>,
}

impl Golden {
    pub fn open(path: PathBuf) -> Self {
        let bytes =
            std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        Self { bytes }
    }

    fn tensors(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("golden file is valid safetensors")
    }

    pub fn names(&self) -> Vec<String> {
        self.tensors()
            .names()
            .into_iter()
            .map(String::from)
            .collect()
    }

    pub fn has(&self, name: &str) -> bool {
        self.tensors().tensor(name).is_ok()
    }

    pub fn shape(&self, name: &str) -> Vec<usize> {
        self.tensors()
            .tensor(name)
            .unwrap_or_else(|_| panic!("missing {name}"))
            .shape()
            .to_vec()
    }

    fn raw(&self, name: &str, dtype: Dtype) -> Vec<u8> {
        let t = self
            .tensors()
            .tensor(name)
            .unwrap_or_else(|_| panic!("missing {name}"));
        assert_eq!(t.dtype(), dtype, "{name} dtype");
        t.data().to_vec()
    }

    pub fn f32(&self, name: &str) -> Vec<f32> {
        let t = self
            .tensors()
            .tensor(name)
            .unwrap_or_else(|_| panic!("missing {name}"));
        match t.dtype() {
            Dtype::F32 => t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            Dtype::F16 => t
                .data()
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes(b.try_into().unwrap()).to_f32())
                .collect(),
            other => panic!("{name}: expected a float tensor, got {other:?}"),
        }
    }

    pub fn i32(&self, name: &str) -> Vec<i32> {
        self.raw(name, Dtype::I32)
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }

    pub fn i64(&self, name: &str) -> Vec<i64> {
        self.raw(name, Dtype::I64)
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }

    pub fn i8(&self, name: &str) -> Vec<i8> {
        self.raw(name, Dtype::I8)
            .into_iter()
            .map(|b| b as i8)
            .collect()
    }

    pub fn u8(&self, name: &str) -> Vec<u8> {
        self.raw(name, Dtype::U8)
    }
}

/// A small deterministic generator (SplitMix64), so failures reproduce from the printed seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    pub fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    pub fn ternary(&mut self) -> i8 {
        (self.next_u64() % 3) as i8 - 1
    }

    pub fn floats(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| self.f32() * 3.0).collect()
    }

    pub fn ternaries(&mut self, len: usize) -> Vec<i8> {
        (0..len).map(|_| self.ternary()).collect()
    }
}
