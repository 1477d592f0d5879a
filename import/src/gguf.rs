//! GGUF (v2/v3) headers: metadata of every type and tensor descriptions.
//!
//! Every count, length and offset in the file is untrusted: each read is bounds-checked against
//! the bytes that remain, and nothing is allocated from a count before the file has shown that
//! it holds at least that many elements.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{ImportError, Result};
use crate::ggml::GgmlType;
use crate::store::map_file;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most four dimensions.
const MAX_DIMS: u32 = 4;
/// Nested arrays deeper than this are not something any writer produces.
const MAX_ARRAY_DEPTH: u32 = 4;

/// One metadata value (serialized with its type, so a copy keeps every width exactly).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum MetadataValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<MetadataValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl MetadataValue {
    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a signed integer, if it is an integer that fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Self::I8(v) => Some(v.into()),
            Self::I16(v) => Some(v.into()),
            Self::I32(v) => Some(v.into()),
            Self::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// The value as a float, if it is a float.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            _ => None,
        }
    }

    /// The value as a string, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a bool, if it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(v) => Some(v),
            _ => None,
        }
    }

    /// The elements, if the value is an array.
    pub fn as_array(&self) -> Option<&[MetadataValue]> {
        match self {
            Self::Array(values) => Some(values),
            _ => None,
        }
    }
}

/// A tensor as the header describes it (dimensions in ggml order: fastest-varying first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    /// The ggml type code.
    pub ggml_type: u32,
    /// Offset from the start of the data section.
    pub offset: u64,
}

/// A parsed GGUF header.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufHeader {
    pub version: u32,
    pub metadata: BTreeMap<String, MetadataValue>,
    pub tensors: Vec<TensorInfo>,
    /// Alignment of the data section and of every tensor in it.
    pub alignment: u64,
    /// Where the data section starts in the file.
    pub data_offset: u64,
}

/// A memory-mapped GGUF file.
pub struct GgufFile {
    path: PathBuf,
    map: Mmap,
    header: GgufHeader,
    /// Index into `header.tensors` by name.
    index: BTreeMap<String, usize>,
}

/// A tensor's bytes, borrowed from the mapped file.
#[derive(Debug, Clone, Copy)]
pub struct GgufTensor<'a> {
    pub name: &'a str,
    pub ty: GgmlType,
    /// Dimensions in ggml order (fastest-varying first).
    pub dims: &'a [u64],
    pub bytes: &'a [u8],
}

impl GgufTensor<'_> {
    /// The shape in row-major order (slowest-varying first), as our tensors use it.
    pub fn shape(&self) -> Vec<usize> {
        // `check_tensors` proved the element count fits in memory, so every dim fits in usize.
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// Number of values.
    pub fn elements(&self) -> usize {
        self.dims.iter().product::<u64>() as usize
    }
}

impl GgufFile {
    /// Maps and parses `path`.
    pub fn open(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(ImportError::MissingFile {
                what: "GGUF file",
                path: path.to_path_buf(),
            });
        }
        let map = map_file(path)?;
        let header = GgufHeader::parse(&map)
            .and_then(|header| {
                check_tensors(&header, map.len() as u64)?;
                Ok(header)
            })
            .map_err(|message| ImportError::Gguf {
                path: path.to_path_buf(),
                message,
            })?;
        let mut index = BTreeMap::new();
        for (i, tensor) in header.tensors.iter().enumerate() {
            if index.insert(tensor.name.clone(), i).is_some() {
                return Err(ImportError::Gguf {
                    path: path.to_path_buf(),
                    message: format!("tensor {:?} appears twice", tensor.name),
                });
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            map,
            header,
            index,
        })
    }

    /// The tensor `name`, or a missing-tensor error.
    pub fn tensor(&self, name: &str) -> Result<GgufTensor<'_>> {
        let &i = self
            .index
            .get(name)
            .ok_or_else(|| ImportError::MissingTensor(name.to_string()))?;
        let info = &self.header.tensors[i];
        let ty = GgmlType::from_code(info.ggml_type).map_err(|e| self.error(e))?;
        // `check_tensors` proved this range lies inside the file.
        let len = tensor_len(info).map_err(|e| self.error(e))?;
        let start = (self.header.data_offset + info.offset) as usize;
        Ok(GgufTensor {
            name: &info.name,
            ty,
            dims: &info.dims,
            bytes: &self.map[start..start + len as usize],
        })
    }

    /// Whether the file has a tensor of this name.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// The parsed header.
    pub fn header(&self) -> &GgufHeader {
        &self.header
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// An error about this file.
    pub fn error(&self, message: impl Into<String>) -> ImportError {
        ImportError::Gguf {
            path: self.path.clone(),
            message: message.into(),
        }
    }
}

/// Whether `path` starts with the GGUF magic.
pub fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok_and(|_| &magic == MAGIC)
}

impl GgufHeader {
    /// Parses the header at the start of `bytes`; the error names what is wrong and where.
    pub fn parse(bytes: &[u8]) -> std::result::Result<Self, String> {
        let mut r = Reader { bytes, at: 0 };
        if r.take(4, "magic")? != MAGIC {
            return Err("not a GGUF file (wrong magic)".into());
        }
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(format!("unsupported GGUF version {version} (2 and 3 are)"));
        }
        let tensor_count = r.u64("tensor count")?;
        let kv_count = r.u64("metadata count")?;
        // A key-value pair takes at least 12 bytes, a tensor description at least 24.
        r.check_count(kv_count, 12, "metadata count")?;
        r.check_count(tensor_count, 24, "tensor count")?;
        let mut metadata = BTreeMap::new();
        for _ in 0..kv_count {
            let key = r.string("metadata key")?;
            let kind = r.u32("metadata type")?;
            let value = r
                .value(kind, 0)
                .map_err(|e| format!("metadata {key:?}: {e}"))?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(format!("metadata key {key:?} appears twice"));
            }
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => return Err(format!("general.alignment {v:?} is not a power of two")),
            },
        };
        let mut tensors = Vec::new();
        for index in 0..tensor_count {
            let name = r
                .string("tensor name")
                .map_err(|e| format!("tensor #{index}: {e}"))?;
            let n_dims = r.u32("dimension count")?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(format!(
                    "tensor {name:?} has {n_dims} dimensions (1 to 4 allowed)"
                ));
            }
            let dims = (0..n_dims)
                .map(|_| r.u64("dimension"))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let ggml_type = r.u32("tensor type")?;
            let offset = r.u64("tensor offset")?;
            if offset % alignment != 0 {
                return Err(format!(
                    "tensor {name:?} offset {offset} is not aligned to {alignment}"
                ));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                offset,
            });
        }
        let data_offset = (r.at as u64).div_ceil(alignment) * alignment;
        Ok(Self {
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
        })
    }

    /// A metadata value, or an error naming the missing key.
    pub fn get(&self, key: &str) -> std::result::Result<&MetadataValue, String> {
        self.metadata
            .get(key)
            .ok_or_else(|| format!("metadata key {key:?} is missing"))
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> std::result::Result<&str, String> {
        self.get("general.architecture")?
            .as_str()
            .ok_or_else(|| "general.architecture is not a string".into())
    }
}

/// Bytes of one tensor, from its type and dimensions (every product overflow-checked).
fn tensor_len(info: &TensorInfo) -> std::result::Result<u64, String> {
    let ty =
        GgmlType::from_code(info.ggml_type).map_err(|e| format!("tensor {:?}: {e}", info.name))?;
    let elements = info
        .dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&e| e > 0 && usize::try_from(e).is_ok())
        .ok_or_else(|| {
            format!(
                "tensor {:?} has dimensions {:?} (zero or too many values)",
                info.name, info.dims
            )
        })?;
    ty.byte_len(elements, info.dims[0])
        .map_err(|e| format!("tensor {:?}: {e}", info.name))
}

/// Every tensor lies inside the data section and no two overlap.
fn check_tensors(header: &GgufHeader, file_len: u64) -> std::result::Result<(), String> {
    if header.tensors.is_empty() {
        // A vocabulary-only file may end right after its header, without padding.
        return Ok(());
    }
    let data_len = file_len.checked_sub(header.data_offset).ok_or_else(|| {
        format!(
            "the data section would start at byte {} but the file has {file_len} bytes (truncated)",
            header.data_offset
        )
    })?;
    let mut ranges = Vec::with_capacity(header.tensors.len());
    for info in &header.tensors {
        let len = tensor_len(info)?;
        let end = info.offset.checked_add(len).filter(|&e| e <= data_len);
        let Some(end) = end else {
            return Err(format!(
                "tensor {:?} ({len} bytes at data offset {}) runs past the end of the file \
                 ({data_len} data bytes; truncated?)",
                info.name, info.offset
            ));
        };
        ranges.push((info.offset, end, &info.name));
    }
    ranges.sort();
    for pair in ranges.windows(2) {
        let ((_, end, a), (start, _, b)) = (pair[0], pair[1]);
        if start < end {
            return Err(format!("tensors {a:?} and {b:?} overlap"));
        }
    }
    Ok(())
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64, what: &str) -> std::result::Result<&'a [u8], String> {
        let remaining = self.bytes.len() - self.at;
        match usize::try_from(n) {
            Ok(n) if n <= remaining => {
                let slice = &self.bytes[self.at..self.at + n];
                self.at += n;
                Ok(slice)
            }
            _ => Err(format!(
                "truncated at byte {}: {what} needs {n} bytes, {remaining} remain",
                self.at
            )),
        }
    }

    /// Rejects a count that the remaining bytes cannot hold, before anything is allocated.
    fn check_count(
        &self,
        count: u64,
        min_size: u64,
        what: &str,
    ) -> std::result::Result<(), String> {
        let remaining = (self.bytes.len() - self.at) as u64;
        if count.saturating_mul(min_size) > remaining {
            return Err(format!(
                "{what} {count} at byte {} cannot fit in the {remaining} bytes that remain \
                 (truncated or corrupt)",
                self.at
            ));
        }
        Ok(())
    }

    fn array<const N: usize>(&mut self, what: &str) -> std::result::Result<[u8; N], String> {
        let slice = self.take(N as u64, what)?;
        Ok(slice.try_into().expect("take returned N bytes"))
    }

    fn u32(&mut self, what: &str) -> std::result::Result<u32, String> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> std::result::Result<u64, String> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn string(&mut self, what: &str) -> std::result::Result<String, String> {
        let len = self.u64(what)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what} is not valid UTF-8"))
    }

    fn value(&mut self, kind: u32, depth: u32) -> std::result::Result<MetadataValue, String> {
        use MetadataValue as V;
        Ok(match kind {
            0 => V::U8(self.array("u8").map(u8::from_le_bytes)?),
            1 => V::I8(self.array("i8").map(i8::from_le_bytes)?),
            2 => V::U16(self.array("u16").map(u16::from_le_bytes)?),
            3 => V::I16(self.array("i16").map(i16::from_le_bytes)?),
            4 => V::U32(self.u32("u32")?),
            5 => V::I32(self.array("i32").map(i32::from_le_bytes)?),
            6 => V::F32(self.array("f32").map(f32::from_le_bytes)?),
            7 => match self.array::<1>("bool")? {
                [0] => V::Bool(false),
                [1] => V::Bool(true),
                [b] => return Err(format!("bool byte {b} is neither 0 nor 1")),
            },
            8 => V::String(self.string("string")?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err("arrays nested too deeply".into());
                }
                let element = self.u32("array type")?;
                let len = self.u64("array length")?;
                self.check_count(len, element_min_size(element)?, "array length")?;
                let values = (0..len)
                    .map(|_| self.value(element, depth + 1))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                V::Array(values)
            }
            10 => V::U64(self.u64("u64")?),
            11 => V::I64(self.array("i64").map(i64::from_le_bytes)?),
            12 => V::F64(self.array("f64").map(f64::from_le_bytes)?),
            other => return Err(format!("unknown metadata type {other}")),
        })
    }
}

/// The fewest bytes one element of a metadata type occupies.
fn element_min_size(kind: u32) -> std::result::Result<u64, String> {
    match kind {
        0 | 1 | 7 => Ok(1),
        2 | 3 => Ok(2),
        4..=6 => Ok(4),
        8 | 10..=12 => Ok(8),
        9 => Ok(12),
        other => Err(format!("unknown array element type {other}")),
    }
}
