//! Memory-mapped safetensors checkpoints, single file or sharded, read tensor by tensor.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, Metadata};

use crate::error::{ImportError, Result};

/// One mapped shard and its parsed header.
struct Shard {
    map: Mmap,
    data_start: usize,
    metadata: Metadata,
}

/// A raw tensor borrowed from the mapped file.
pub struct RawTensor<'a> {
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Little-endian bytes.
    pub bytes: &'a [u8],
}

/// The tensors of a checkpoint directory. Every name handed out is recorded so the importer can
/// reject tensors it did not use.
pub struct TensorStore {
    shards: Vec<Shard>,
    location: BTreeMap<String, usize>,
    used: RefCell<BTreeSet<String>>,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ImportError + '_ {
    move |source| ImportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Maps `path` read-only.
pub(crate) fn map_file(path: &Path) -> Result<Mmap> {
    let file = File::open(path).map_err(io_error(path))?;
    // SAFETY: the map is read-only and lives as long as its owner; a file truncated by another
    // process while mapped is outside what any mmap-based loader can guard.
    unsafe { Mmap::map(&file) }.map_err(io_error(path))
}

impl TensorStore {
    /// Opens `model.safetensors`, or the shards listed in `model.safetensors.index.json`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        if single.is_file() {
            return Self::open_files(&[single]);
        }
        if !index.is_file() {
            return Err(ImportError::MissingFile {
                what: "weights (model.safetensors or model.safetensors.index.json)",
                path: single,
            });
        }
        let text = std::fs::read_to_string(&index).map_err(io_error(&index))?;
        let config_error = |message: String| ImportError::Config {
            path: index.clone(),
            message,
        };
        let parsed: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| config_error(e.to_string()))?;
        let weight_map = parsed
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| config_error("no \"weight_map\" object".into()))?;
        let mut files = BTreeSet::new();
        for file in weight_map.values() {
            let name = file
                .as_str()
                .ok_or_else(|| config_error(format!("shard name {file} is not a string")))?;
            // Shards live beside the index; a path component could escape the directory.
            if Path::new(name).components().count() != 1 || name == ".." {
                return Err(config_error(format!(
                    "shard name {name:?} is not a file name"
                )));
            }
            files.insert(dir.join(name));
        }
        Self::open_files(&files.into_iter().collect::<Vec<_>>())
    }

    /// Maps and validates each file.
    pub fn open_files(paths: &[PathBuf]) -> Result<Self> {
        let mut shards = Vec::new();
        let mut location = BTreeMap::new();
        for path in paths {
            if !path.is_file() {
                return Err(ImportError::MissingFile {
                    what: "safetensors shard",
                    path: path.clone(),
                });
            }
            let map = map_file(path)?;
            let (header, metadata) =
                SafeTensors::read_metadata(&map).map_err(|e| ImportError::Safetensors {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            for name in metadata.tensors().keys() {
                if location.insert(name.clone(), shards.len()).is_some() {
                    return Err(ImportError::Safetensors {
                        path: path.clone(),
                        message: format!("tensor {name:?} appears in more than one shard"),
                    });
                }
            }
            shards.push(Shard {
                map,
                data_start: 8 + header,
                metadata,
            });
        }
        Ok(Self {
            shards,
            location,
            used: RefCell::new(BTreeSet::new()),
        })
    }

    /// Whether the checkpoint has a tensor of this name.
    pub fn contains(&self, name: &str) -> bool {
        self.location.contains_key(name)
    }

    /// Total bytes of tensor data.
    pub fn total_bytes(&self) -> usize {
        self.shards.iter().map(|s| s.map.len() - s.data_start).sum()
    }

    /// The raw tensor `name`, marked as used.
    pub fn raw(&self, name: &str) -> Result<RawTensor<'_>> {
        let &index = self
            .location
            .get(name)
            .ok_or_else(|| ImportError::MissingTensor(name.to_string()))?;
        let shard = &self.shards[index];
        let info = shard
            .metadata
            .info(name)
            .ok_or_else(|| ImportError::MissingTensor(name.to_string()))?;
        let (start, end) = info.data_offsets;
        // `read_metadata` checked that the offsets tile the data section exactly.
        let bytes = &shard.map[shard.data_start + start..shard.data_start + end];
        self.used.borrow_mut().insert(name.to_string());
        Ok(RawTensor {
            dtype: info.dtype,
            shape: info.shape.clone(),
            bytes,
        })
    }

    /// Marks a tensor as deliberately ignored (e.g. HF's cached RoPE `inv_freq` buffers).
    pub fn ignore(&self, name: &str) {
        self.used.borrow_mut().insert(name.to_string());
    }

    /// Tensor names nobody asked for.
    pub fn unused(&self) -> Vec<String> {
        let used = self.used.borrow();
        self.location
            .keys()
            .filter(|name| !used.contains(*name))
            .cloned()
            .collect()
    }

    /// A float tensor (f32, f16 or bf16) as f32, after checking its shape.
    pub fn float(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let raw = self.raw(name)?;
        check_shape(name, shape, &raw.shape)?;
        let values = match raw.dtype {
            Dtype::F32 => raw
                .bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => raw
                .bytes
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => raw
                .bytes
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => return Err(dtype_error(name, other)),
        };
        Ok(values)
    }

    /// A `u8` tensor's bytes, after checking its shape.
    pub fn bytes(&self, name: &str, shape: &[usize]) -> Result<&[u8]> {
        let raw = self.raw(name)?;
        check_shape(name, shape, &raw.shape)?;
        match raw.dtype {
            Dtype::U8 | Dtype::I8 => Ok(raw.bytes),
            other => Err(dtype_error(name, other)),
        }
    }
}

fn dtype_error(name: &str, dtype: Dtype) -> ImportError {
    ImportError::Dtype {
        name: name.to_string(),
        dtype: format!("{dtype:?}"),
    }
}

/// Fails unless `actual == expected`.
pub fn check_shape(name: &str, expected: &[usize], actual: &[usize]) -> Result<()> {
    if expected == actual {
        Ok(())
    } else {
        Err(ImportError::Shape {
            name: name.to_string(),
            expected: expected.to_vec(),
            actual: actual.to_vec(),
        })
    }
}
