//! Our converted format: one file that loads by memory-mapping, with no repacking.
//!
//! Layout (all integers little-endian):
//!
//! | bytes | content |
//! |---|---|
//! | 0..8 | magic `BITNETCV` |
//! | 8..12 | format version (1) |
//! | 12..16 | reserved (0) |
//! | 16..24 | header length `H` |
//! | 24..24+H | header: UTF-8 JSON `{config, tensors: [{name, kind, shape or layout, offset, len}]}` |
//! | then | zero padding to a multiple of 64, then the data section |
//!
//! Each tensor starts at a multiple of 64 from the data section's start. `f32` tensors are
//! little-endian floats; `i2s` tensors are the backend's I2_S codes `[n, k_padded / 4]` exactly
//! as the kernels read them, with the layout (shape, scale, scale convention, activation rule)
//! in the header, so HF-derived and bitnet.cpp-derived models keep their exact arithmetic.

use std::fs::File;
use std::path::{Path, PathBuf};

use bitnet_backend::{I2sWeights, TernaryLayout};
use bitnet_model::{BitNetConfig, BitNetModel};
use burn::tensor::Device;
use indicatif::ProgressBar;
use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use crate::builder::{UsedNames, WeightSource, build_model};
use crate::error::{ImportError, Result};
use crate::model_tensors::{ModelTensor, model_tensors};
use crate::staged::StagedFile;
use crate::store::{check_shape, map_file};
use crate::tokenizer::TokenizerFiles;

const MAGIC: &[u8; 8] = b"BITNETCV";
const VERSION: u32 = 1;
const PREAMBLE: usize = 24;
const ALIGN: u64 = 64;

/// What a stored tensor holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StoredKind {
    /// Little-endian f32 values of this shape.
    F32 { shape: Vec<usize> },
    /// I2_S codes of this layout.
    I2s { layout: TernaryLayout },
}

impl StoredKind {
    /// Bytes of the tensor, if the size fits in a u64.
    fn byte_len(&self) -> Option<u64> {
        match self {
            Self::F32 { shape } => shape
                .iter()
                .try_fold(4u64, |acc, &d| acc.checked_mul(d as u64)),
            Self::I2s { layout } => (layout.n as u64).checked_mul(layout.row_bytes() as u64),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct TensorRecord {
    name: String,
    #[serde(flatten)]
    kind: StoredKind,
    offset: u64,
    len: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    config: BitNetConfig,
    /// The source checkpoint's tokenizer, so the one file is all `infer` needs.
    #[serde(default)]
    tokenizer: Option<TokenizerFiles>,
    tensors: Vec<TensorRecord>,
}

/// Whether `path` starts with the converted format's magic.
pub fn is_converted(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 8];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok_and(|_| &magic == MAGIC)
}

/// Writes a converted file tensor by tensor, so a model never needs to be in memory whole. The
/// file appears at its path only once [`ConvertedWriter::finish`] succeeds: a failed or
/// interrupted write leaves whatever was there before untouched.
pub struct ConvertedWriter {
    out: StagedFile,
    tensors: Vec<TensorRecord>,
    next: usize,
}

impl ConvertedWriter {
    /// Plans the file and writes its header; the tensors must then be written in this order.
    pub fn create(
        path: &Path,
        config: &BitNetConfig,
        tokenizer: Option<&TokenizerFiles>,
        tensors: Vec<(String, StoredKind)>,
    ) -> Result<Self> {
        let mut offset = 0u64;
        let mut records = Vec::with_capacity(tensors.len());
        for (name, kind) in tensors {
            let len = kind
                .byte_len()
                .ok_or_else(|| ImportError::Unsupported(format!("tensor {name:?} is too large")))?;
            records.push(TensorRecord {
                name,
                kind,
                offset,
                len,
            });
            offset = (offset + len).div_ceil(ALIGN) * ALIGN;
        }
        let header = Header {
            config: config.clone(),
            tokenizer: tokenizer.cloned(),
            tensors: records,
        };
        let json = serde_json::to_vec(&header).expect("the header serializes");
        let mut writer = Self {
            out: StagedFile::create(path)?,
            tensors: header.tensors,
            next: 0,
        };
        let mut preamble = Vec::with_capacity(PREAMBLE + json.len());
        preamble.extend_from_slice(MAGIC);
        preamble.extend_from_slice(&VERSION.to_le_bytes());
        preamble.extend_from_slice(&0u32.to_le_bytes());
        preamble.extend_from_slice(&(json.len() as u64).to_le_bytes());
        preamble.extend_from_slice(&json);
        let data_start = (preamble.len() as u64).div_ceil(ALIGN) * ALIGN;
        preamble.resize(data_start as usize, 0);
        writer.out.write(&preamble)?;
        Ok(writer)
    }

    /// Writes the next planned tensor, which must be `name` with exactly its planned size.
    pub fn write_next(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let Some(record) = self.tensors.get(self.next) else {
            return Err(ImportError::Unsupported(format!(
                "tensor {name:?} was not planned"
            )));
        };
        if record.name != name || record.len != bytes.len() as u64 {
            return Err(ImportError::Unsupported(format!(
                "expected tensor {:?} of {} bytes next, got {name:?} of {} bytes",
                record.name,
                record.len,
                bytes.len()
            )));
        }
        let len = record.len;
        self.next += 1;
        self.out.write(bytes)?;
        self.out.pad(len, ALIGN)
    }

    /// Checks every tensor was written, then moves the file into place.
    pub fn finish(self) -> Result<()> {
        if let Some(missing) = self.tensors.get(self.next) {
            return Err(ImportError::MissingTensor(missing.name.clone()));
        }
        self.out.finish()
    }
}

/// Writes `model` (and its tokenizer, if given) as a converted file at `path`, advancing
/// `progress` by each tensor's bytes.
pub fn save_converted(
    model: &BitNetModel,
    tokenizer: Option<&TokenizerFiles>,
    path: &Path,
    progress: &ProgressBar,
) -> Result<()> {
    let tensors = model_tensors(model)?;
    let plan = tensors
        .iter()
        .map(|(name, tensor)| {
            let kind = match tensor {
                ModelTensor::Float { shape, .. } => StoredKind::F32 {
                    shape: shape.clone(),
                },
                ModelTensor::Ternary(w) => StoredKind::I2s { layout: w.layout() },
            };
            (name.clone(), kind)
        })
        .collect();
    let mut writer = ConvertedWriter::create(path, &model.config, tokenizer, plan)?;
    for (name, tensor) in &tensors {
        let bytes = match tensor {
            ModelTensor::Float { values, .. } => f32_bytes(values),
            ModelTensor::Ternary(w) => w.codes().to_vec(),
        };
        writer.write_next(name, &bytes)?;
        progress.inc(bytes.len() as u64);
    }
    writer.finish()
}

/// Little-endian bytes of f32 values.
pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Loads a converted file onto `device`.
pub fn load_converted_model(path: &Path, device: &Device) -> Result<BitNetModel> {
    let file = ConvertedFile::open(path)?;
    let source = ConvertedSource {
        file: &file,
        used: UsedNames::default(),
    };
    build_model(&source, &file.header.config, device)
}

/// The tokenizer stored in a converted file, if it has one.
pub fn converted_tokenizer(path: &Path) -> Result<Option<TokenizerFiles>> {
    Ok(ConvertedFile::open(path)?.header.tokenizer)
}

struct ConvertedFile {
    path: PathBuf,
    map: Mmap,
    header: Header,
    data_start: u64,
}

impl ConvertedFile {
    fn open(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(ImportError::MissingFile {
                what: "converted model",
                path: path.to_path_buf(),
            });
        }
        let map = map_file(path)?;
        let (header, data_start) = parse(&map).map_err(|message| ImportError::Converted {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            map,
            header,
            data_start,
        })
    }

    fn error(&self, message: String) -> ImportError {
        ImportError::Converted {
            path: self.path.clone(),
            message,
        }
    }

    fn tensor(&self, name: &str) -> Result<(&StoredKind, &[u8])> {
        let record = self
            .header
            .tensors
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| ImportError::MissingTensor(name.to_string()))?;
        // `parse` proved the range lies inside the file.
        let start = (self.data_start + record.offset) as usize;
        Ok((&record.kind, &self.map[start..start + record.len as usize]))
    }
}

/// The header and the data section's offset; every length and offset checked against the file.
fn parse(bytes: &[u8]) -> std::result::Result<(Header, u64), String> {
    if bytes.len() < PREAMBLE || &bytes[..8] != MAGIC {
        return Err(
            "not a converted burn-bitnet model (wrong magic, or truncated before byte 24)".into(),
        );
    }
    let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let version = word(8);
    if version != VERSION {
        return Err(format!(
            "format version {version}; this build reads version {VERSION} (re-run convert)"
        ));
    }
    let header_len = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
    let file_len = bytes.len() as u64;
    if header_len > file_len - PREAMBLE as u64 {
        return Err(format!(
            "header of {header_len} bytes does not fit in the {file_len}-byte file (truncated?)"
        ));
    }
    let json = &bytes[PREAMBLE..PREAMBLE + header_len as usize];
    let header: Header =
        serde_json::from_slice(json).map_err(|e| format!("header is not valid: {e}"))?;
    header.config.validate().map_err(|e| e.to_string())?;
    let data_start = (PREAMBLE as u64 + header_len).div_ceil(ALIGN) * ALIGN;
    let data_len = file_len.saturating_sub(data_start);
    let mut ranges = Vec::with_capacity(header.tensors.len());
    for t in &header.tensors {
        if let StoredKind::I2s { layout } = &t.kind {
            TernaryLayout::new(layout.n, layout.k, layout.scale, layout.convention)
                .map_err(|e| format!("tensor {:?}: {e}", t.name))?;
        }
        if t.kind.byte_len() != Some(t.len) {
            return Err(format!(
                "tensor {:?} claims {} bytes, its shape needs {:?}",
                t.name,
                t.len,
                t.kind.byte_len()
            ));
        }
        match t.offset.checked_add(t.len) {
            Some(end) if end <= data_len => ranges.push((t.offset, end, &t.name)),
            _ => {
                return Err(format!(
                    "tensor {:?} ({} bytes at {}) runs past the end of the file (truncated?)",
                    t.name, t.len, t.offset
                ));
            }
        }
    }
    ranges.sort();
    for pair in ranges.windows(2) {
        if pair[1].0 < pair[0].1 {
            return Err(format!(
                "tensors {:?} and {:?} overlap",
                pair[0].2, pair[1].2
            ));
        }
    }
    Ok((header, data_start))
}

struct ConvertedSource<'a> {
    file: &'a ConvertedFile,
    used: UsedNames,
}

impl ConvertedSource<'_> {
    fn tensor(&self, name: &str) -> Result<(&StoredKind, &[u8])> {
        self.used.mark(name);
        self.file.tensor(name)
    }
}

impl WeightSource for ConvertedSource<'_> {
    fn float(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        match self.tensor(name)? {
            (StoredKind::F32 { shape: stored }, bytes) => {
                check_shape(name, shape, stored)?;
                Ok(bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect())
            }
            (StoredKind::I2s { .. }, _) => Err(ImportError::Dtype {
                name: name.to_string(),
                dtype: "i2s (where f32 is expected)".into(),
            }),
        }
    }

    fn ternary(&self, prefix: &str, n: usize, k: usize) -> Result<I2sWeights> {
        let name = format!("{prefix}.weight");
        match self.tensor(&name)? {
            (StoredKind::I2s { layout }, bytes) => {
                check_shape(&name, &[n, k], &[layout.n, layout.k])?;
                I2sWeights::from_codes(*layout, bytes.to_vec())
                    .map_err(|source| ImportError::Ternary { name, source })
            }
            (StoredKind::F32 { .. }, _) => Err(self.file.error(format!(
                "tensor {name:?} is f32 where I2_S codes are expected"
            ))),
        }
    }

    fn unused(&self) -> Vec<String> {
        self.used
            .unused(self.file.header.tensors.iter().map(|t| &t.name))
    }

    fn total_bytes(&self) -> usize {
        self.file.map.len()
    }
}
