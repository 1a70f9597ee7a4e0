//! Reading safetensors files without mapping them: headers checked against the file size,
//! tensors read with positioned reads one at a time, sharded sets through
//! `model.safetensors.index.json`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use burn::tensor::DType;
use serde_json::Value;

use crate::error::ModelError;

/// Header entry of one tensor in a safetensors file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorMeta {
    /// Dtype string as written in the file (`F32`, `BF16`, ...).
    pub dtype: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Absolute byte range in the file.
    pub start: u64,
    /// End of the byte range (exclusive).
    pub end: u64,
}

/// An opened safetensors file: its header, validated against the file length.
#[derive(Debug, Clone)]
pub struct SafetensorsFile {
    /// The file.
    pub path: PathBuf,
    /// Tensors by key.
    pub tensors: BTreeMap<String, TensorMeta>,
}

fn dtype_size(dtype: &str) -> Option<usize> {
    Some(match dtype {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "I8" | "U8" | "BOOL" => 1,
        _ => return None,
    })
}

pub(super) fn float_dtype(dtype: &str) -> Option<DType> {
    match dtype {
        "F64" => Some(DType::F64),
        "F32" => Some(DType::F32),
        "F16" => Some(DType::F16),
        "BF16" => Some(DType::BF16),
        _ => None,
    }
}

impl SafetensorsFile {
    /// Reads and validates the header of `path` (no tensor data is read).
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        let shown = path.display().to_string();
        let mut f = File::open(path).map_err(|e| ModelError::io(path, e))?;
        let file_len = f.metadata().map_err(|e| ModelError::io(path, e))?.len();
        let mut len_bytes = [0u8; 8];
        f.read_exact(&mut len_bytes).map_err(|_| {
            ModelError::checkpoint(
                &shown,
                format!("truncated: only {file_len} bytes, no header"),
            )
        })?;
        let header_len = u64::from_le_bytes(len_bytes);
        if header_len > 100_000_000 || 8 + header_len > file_len {
            return Err(ModelError::checkpoint(
                &shown,
                format!(
                    "truncated or not safetensors: header of {header_len} bytes in a {file_len}-byte file"
                ),
            ));
        }
        let mut header = vec![0u8; header_len as usize];
        f.read_exact(&mut header)
            .map_err(|e| ModelError::io(path, e))?;
        let v: Value = serde_json::from_slice(&header)
            .map_err(|e| ModelError::checkpoint(&shown, format!("bad header JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| ModelError::checkpoint(&shown, "header is not a JSON object"))?;
        let data_start = 8 + header_len;
        let mut tensors = BTreeMap::new();
        for (key, meta) in obj {
            if key == "__metadata__" {
                continue;
            }
            let bad = |m: &str| ModelError::checkpoint(&shown, format!("tensor {key:?}: {m}"));
            let dtype = meta
                .get("dtype")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("no dtype"))?;
            let shape: Vec<usize> = meta
                .get("shape")
                .and_then(Value::as_array)
                .ok_or_else(|| bad("no shape"))?
                .iter()
                .map(|d| d.as_u64().map(|d| d as usize))
                .collect::<Option<_>>()
                .ok_or_else(|| bad("bad shape"))?;
            let offs: Vec<u64> = meta
                .get("data_offsets")
                .and_then(Value::as_array)
                .and_then(|a| a.iter().map(Value::as_u64).collect::<Option<Vec<_>>>())
                .filter(|a| a.len() == 2)
                .ok_or_else(|| bad("bad data_offsets"))?;
            let size =
                dtype_size(dtype).ok_or_else(|| bad(&format!("unsupported dtype {dtype}")))?;
            // Checked: a shape whose byte size overflows (e.g. [2^62] of I64 wraps to 0 bytes) or
            // offsets past the end of the address space must not pass as a small tensor.
            let nbytes = shape
                .iter()
                .try_fold(1usize, |acc, &d| acc.checked_mul(d))
                .and_then(|numel| numel.checked_mul(size))
                .and_then(|n| u64::try_from(n).ok());
            if offs[1] < offs[0] || nbytes != Some(offs[1] - offs[0]) {
                return Err(bad(&format!(
                    "data_offsets {:?} do not match shape {shape:?} of {dtype}",
                    offs
                )));
            }
            let (start, end) = match (
                data_start.checked_add(offs[0]),
                data_start.checked_add(offs[1]),
            ) {
                (Some(start), Some(end)) => (start, end),
                _ => (u64::MAX, u64::MAX),
            };
            if end > file_len {
                return Err(ModelError::checkpoint(
                    &shown,
                    format!(
                        "truncated: tensor {key:?} ends at byte {end} but the file has {file_len}"
                    ),
                ));
            }
            tensors.insert(
                key.clone(),
                TensorMeta {
                    dtype: dtype.to_string(),
                    shape,
                    start,
                    end,
                },
            );
        }
        Ok(Self {
            path: path.to_path_buf(),
            tensors,
        })
    }

    /// Reads one tensor's raw little-endian bytes with a positioned read.
    pub fn read_bytes(&self, key: &str) -> Result<Vec<u8>, ModelError> {
        let meta = self.tensors.get(key).ok_or_else(|| {
            ModelError::checkpoint(self.path.display(), format!("no tensor {key:?}"))
        })?;
        read_range(&self.path, meta.start, meta.end)
    }
}

pub(super) fn read_range(path: &Path, start: u64, end: u64) -> Result<Vec<u8>, ModelError> {
    let f = File::open(path).map_err(|e| ModelError::io(path, e))?;
    let mut buf = vec![0u8; (end - start) as usize];
    f.read_exact_at(&mut buf, start)
        .map_err(|e| ModelError::io(path, e))?;
    Ok(buf)
}

/// All safetensors files of a checkpoint.
#[derive(Debug, Clone)]
pub struct WeightSet {
    /// The directory (or file) the set was opened from, for messages.
    pub origin: String,
    /// The files.
    pub files: Vec<SafetensorsFile>,
}

impl WeightSet {
    /// Opens a directory: `model.safetensors.index.json` if present (every listed file must exist
    /// and hold its keys), else every `*.safetensors` file in it.
    pub fn open_dir(dir: &Path) -> Result<Self, ModelError> {
        let origin = dir.display().to_string();
        let index = dir.join("model.safetensors.index.json");
        let mut names: Vec<String> = Vec::new();
        let mut expected: Vec<(String, String)> = Vec::new();
        if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(|e| ModelError::io(&index, e))?;
            let v: Value = serde_json::from_str(&text).map_err(|e| {
                ModelError::checkpoint(index.display(), format!("invalid JSON: {e}"))
            })?;
            let map = v
                .get("weight_map")
                .and_then(Value::as_object)
                .ok_or_else(|| {
                    ModelError::checkpoint(index.display(), "no \"weight_map\" object")
                })?;
            for (k, f) in map {
                let f = f.as_str().ok_or_else(|| {
                    ModelError::checkpoint(
                        index.display(),
                        format!("weight_map[{k:?}] is not a string"),
                    )
                })?;
                if !names.iter().any(|n| n == f) {
                    names.push(f.to_string());
                }
                expected.push((k.clone(), f.to_string()));
            }
        } else {
            let rd = std::fs::read_dir(dir).map_err(|e| ModelError::io(dir, e))?;
            for entry in rd {
                let entry = entry.map_err(|e| ModelError::io(dir, e))?;
                let name = entry.file_name().to_string_lossy().to_string();
                if name.ends_with(".safetensors") {
                    names.push(name);
                }
            }
            names.sort();
            if names.is_empty() {
                return Err(ModelError::checkpoint(
                    &origin,
                    "no *.safetensors file found",
                ));
            }
        }
        let files = names
            .iter()
            .map(|n| SafetensorsFile::open(&dir.join(n)))
            .collect::<Result<Vec<_>, _>>()?;
        for (key, file) in expected {
            let f = files.iter().find(|x| x.path.ends_with(&file));
            if !f.is_some_and(|f| f.tensors.contains_key(&key)) {
                return Err(ModelError::checkpoint(
                    index.display(),
                    format!("lists {key:?} in {file:?}, which does not hold it"),
                ));
            }
        }
        Ok(Self { origin, files })
    }

    /// Opens a single safetensors file.
    pub fn open_file(path: &Path) -> Result<Self, ModelError> {
        Ok(Self {
            origin: path.display().to_string(),
            files: vec![SafetensorsFile::open(path)?],
        })
    }
}
