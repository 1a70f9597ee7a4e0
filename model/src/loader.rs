//! Weight loading and saving. **Every HF checkpoint key name lives in this module.**
//!
//! - Released xGen-MM directories (`config.json`, `model.safetensors` or sharded
//!   `model-0000N-of-0000M.safetensors` + `model.safetensors.index.json`, bf16 or f32), plain HF
//!   `Phi3ForCausalLM` and `SiglipVisionModel` safetensors.
//! - Loading is streamed: the model is built with lazily initialised parameters (no memory), every
//!   tensor is read from its file with a positioned read only when its parameter is filled, and
//!   the file's dtype is kept unless a cast is requested. Peak memory is the model at the file's
//!   precision plus one tensor.
//! - Before any data is read, the checkpoint is checked against the model: every missing tensor,
//!   wrong shape (reported in the checkpoint's `[out, in]` layout) or non-float dtype is an error
//!   naming the key, the file and both shapes; truncated files are detected from their headers.
//! - Our own checkpoints: `save_checkpoint` / `load_checkpoint` (burnpack via burn-store, atomic),
//!   and `export_hf` writes an HF-layout directory (safetensors + config.json) that loads back here
//!   and in the PyTorch reference.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use burn::store::burn_pack::Tensor as PackTensor;
use burn::store::{FloatCastAdapter, ModuleAdapter, ModuleSnapshot};
use burn::tensor::{Bytes, DType};
use serde_json::Value;

use crate::config::{Phi3Config, XGenMMConfig, siglip_from_hf_value};
use crate::error::ModelError;
use crate::layout::{Direction, TorchLayout};
use crate::phi3::Phi3ForCausalLM;
use crate::siglip::SiglipVisionTransformer;
use crate::xgenmm::{SpecialTokens, XGenMM};

/// Which checkpoint layout a file set follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointKind {
    /// xGen-MM: keys under `vlm.` (vision_encoder, vision_tokenizer, lang_model).
    XGenMM,
    /// A plain HF `Phi3ForCausalLM` (`model.*`, `lm_head.*`).
    Phi3,
    /// A plain HF `SiglipVisionModel` (keys with or without the `vision_model.` wrapper).
    Siglip,
    /// A standalone LAVIS `PerceiverResampler` state dict (`layers.N.0.*`, `layers.N.1.{0,1,3}.*`).
    Perceiver,
}

/// Maps LAVIS resampler layer keys (`N.0.x`, `N.1.0.x`, `N.1.1.x`, `N.1.3.x`, after `layers.`)
/// to ours (`N.attn.x`, `N.ff.norm.x`, `N.ff.fc1.x`, `N.ff.fc2.x`).
fn perceiver_layer_to_ours(rest: &str) -> Option<String> {
    let (n, tail) = rest.split_once('.')?;
    let mapped = if let Some(t) = tail.strip_prefix("0.") {
        format!("attn.{t}")
    } else if let Some(t) = tail.strip_prefix("1.0.") {
        format!("ff.norm.{t}")
    } else if let Some(t) = tail.strip_prefix("1.1.") {
        format!("ff.fc1.{t}")
    } else if let Some(t) = tail.strip_prefix("1.3.") {
        format!("ff.fc2.{t}")
    } else {
        return None;
    };
    Some(format!("{n}.{mapped}"))
}

/// The inverse of [`perceiver_layer_to_ours`].
fn perceiver_layer_to_hf(rest: &str) -> String {
    let Some((n, tail)) = rest.split_once('.') else {
        return rest.to_string();
    };
    let mapped = if let Some(t) = tail.strip_prefix("attn.") {
        format!("0.{t}")
    } else if let Some(t) = tail.strip_prefix("ff.norm.") {
        format!("1.0.{t}")
    } else if let Some(t) = tail.strip_prefix("ff.fc1.") {
        format!("1.1.{t}")
    } else if let Some(t) = tail.strip_prefix("ff.fc2.") {
        format!("1.3.{t}")
    } else {
        tail.to_string()
    };
    format!("{n}.{mapped}")
}

/// Maps an HF checkpoint key to our parameter path (leaf names `weight`/`bias` are kept; the
/// store adapter renames LayerNorm/RMSNorm leaves). `None` for keys we do not load.
pub fn hf_to_ours(key: &str, kind: CheckpointKind) -> Option<String> {
    match kind {
        CheckpointKind::Phi3 => Some(key.to_string()),
        CheckpointKind::Siglip => {
            let k = key.strip_prefix("vision_model.").unwrap_or(key);
            (!k.starts_with("head.")).then(|| k.to_string())
        }
        CheckpointKind::XGenMM => {
            let k = key.strip_prefix("vlm.")?;
            if k.starts_with("vision_encoder.head.") {
                return None;
            }
            if let Some(rest) = k.strip_prefix("vision_tokenizer.layers.") {
                return Some(format!(
                    "vision_tokenizer.layers.{}",
                    perceiver_layer_to_ours(rest)?
                ));
            }
            Some(k.to_string())
        }
        CheckpointKind::Perceiver => match key.strip_prefix("layers.") {
            Some(rest) => Some(format!("layers.{}", perceiver_layer_to_ours(rest)?)),
            None => Some(key.to_string()),
        },
    }
}

/// The inverse of [`hf_to_ours`]: our path (with PyTorch leaf names) → HF key.
pub fn ours_to_hf(path: &str, kind: CheckpointKind) -> String {
    match kind {
        CheckpointKind::Phi3 | CheckpointKind::Siglip => path.to_string(),
        CheckpointKind::XGenMM => match path.strip_prefix("vision_tokenizer.layers.") {
            Some(rest) => format!(
                "vlm.vision_tokenizer.layers.{}",
                perceiver_layer_to_hf(rest)
            ),
            None => format!("vlm.{path}"),
        },
        CheckpointKind::Perceiver => match path.strip_prefix("layers.") {
            Some(rest) => format!("layers.{}", perceiver_layer_to_hf(rest)),
            None => path.to_string(),
        },
    }
}

/// Keys present in checkpoints that the model does not use (SigLIP's pooling head).
pub fn is_known_unused(key: &str, kind: CheckpointKind) -> bool {
    match kind {
        CheckpointKind::XGenMM => key.starts_with("vlm.vision_encoder.head."),
        CheckpointKind::Siglip => key
            .strip_prefix("vision_model.")
            .unwrap_or(key)
            .starts_with("head."),
        CheckpointKind::Phi3 | CheckpointKind::Perceiver => false,
    }
}

/// One parameter of a module as the checkpoint sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamInfo {
    /// Our path with PyTorch leaf names (`...layer_norm1.weight`).
    pub path: String,
    /// Shape in the checkpoint's layout (Linear weights `[out, in]`).
    pub shape: Vec<usize>,
}

/// Lists a module's parameters without materialising any of them (works on a lazily built
/// full-size model).
pub fn param_inventory<M: Module>(module: &M) -> Vec<ParamInfo> {
    struct V {
        path: Vec<String>,
        types: Vec<String>,
        out: Vec<ParamInfo>,
    }
    impl V {
        fn record(&mut self, shape: Vec<usize>) {
            let module_type = self
                .types
                .iter()
                .rev()
                .find(|t| t.starts_with("Struct:"))
                .cloned();
            let mut segs = self.path.clone();
            let leaf = segs.last().cloned().unwrap_or_default();
            let is_norm = matches!(
                module_type.as_deref(),
                Some("Struct:LayerNorm") | Some("Struct:RmsNorm")
            );
            if is_norm && let Some(last) = segs.last_mut() {
                *last = match leaf.as_str() {
                    "gamma" => "weight".into(),
                    "beta" => "bias".into(),
                    other => other.into(),
                };
            }
            let shape = if module_type.as_deref() == Some("Struct:Linear")
                && leaf == "weight"
                && shape.len() == 2
            {
                vec![shape[1], shape[0]]
            } else {
                shape
            };
            self.out.push(ParamInfo {
                path: segs.join("."),
                shape,
            });
        }
    }
    impl ModuleVisitor for V {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.path.push(name.to_string());
            self.types.push(container_type.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
            self.types.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.record(param.lazy_shape().to_vec());
        }
    }
    let mut v = V {
        path: Vec::new(),
        types: Vec::new(),
        out: Vec::new(),
    };
    module.visit(&mut v);
    v.out
}

/// The HF keys and shapes a module expects from a checkpoint of `kind`.
pub fn expected_hf_keys<M: Module>(module: &M, kind: CheckpointKind) -> Vec<(String, Vec<usize>)> {
    param_inventory(module)
        .into_iter()
        .map(|p| (ours_to_hf(&p.path, kind), p.shape))
        .collect()
}

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

fn float_dtype(dtype: &str) -> Option<DType> {
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

fn read_range(path: &Path, start: u64, end: u64) -> Result<Vec<u8>, ModelError> {
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

/// Options for loading.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// Cast every float tensor to this dtype (`None` keeps the file's dtype).
    pub dtype: Option<DType>,
}

/// What a load did.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Tensors loaded.
    pub loaded: usize,
    /// Known-unused tensors skipped (e.g. SigLIP's pooling head).
    pub skipped_known: usize,
    /// Other tensors in the files that the model has no place for.
    pub unexpected: Vec<String>,
}

/// Loads a weight set into `module`, checking keys, shapes and dtypes first.
pub fn load_weights<M: Module + ModuleSnapshot>(
    module: &mut M,
    weights: &WeightSet,
    kind: CheckpointKind,
    opts: LoadOptions,
) -> Result<LoadReport, ModelError> {
    let inventory = param_inventory(module);
    let mut sources: HashMap<String, (usize, String)> = HashMap::new();
    let mut report = LoadReport::default();
    for (fi, f) in weights.files.iter().enumerate() {
        for key in f.tensors.keys() {
            match hf_to_ours(key, kind) {
                Some(ours) => {
                    sources.insert(ours, (fi, key.clone()));
                }
                None if is_known_unused(key, kind) => report.skipped_known += 1,
                None => report.unexpected.push(key.clone()),
            }
        }
    }
    let missing: Vec<&ParamInfo> = inventory
        .iter()
        .filter(|p| !sources.contains_key(&p.path))
        .collect();
    if let Some(first) = missing.first() {
        return Err(ModelError::MissingTensor {
            dir: weights.origin.clone(),
            key: ours_to_hf(&first.path, kind),
            expected: first.shape.clone(),
            more: if missing.len() > 1 {
                format!(", and {} more", missing.len() - 1)
            } else {
                String::new()
            },
        });
    }
    let mut tensors = Vec::with_capacity(inventory.len());
    for p in &inventory {
        let (fi, key) = &sources[&p.path];
        let file = &weights.files[*fi];
        let meta = &file.tensors[key];
        let dtype = float_dtype(&meta.dtype).ok_or_else(|| ModelError::DType {
            path: file.path.display().to_string(),
            key: key.clone(),
            found: meta.dtype.clone(),
        })?;
        if meta.shape != p.shape {
            return Err(ModelError::ShapeMismatch {
                path: file.path.display().to_string(),
                key: key.clone(),
                expected: p.shape.clone(),
                found: meta.shape.clone(),
            });
        }
        let (path, start, end) = (file.path.clone(), meta.start, meta.end);
        tensors.push(PackTensor::deferred(
            p.path.clone(),
            dtype,
            meta.shape.clone(),
            None,
            (end - start) as usize,
            move || {
                read_range(&path, start, end)
                    .map(Bytes::from_bytes_vec)
                    .map_err(|e| burn::store::burn_pack::Error::IoError(e.to_string()))
            },
        ));
    }
    report.loaded = tensors.len();
    let adapter: Box<dyn ModuleAdapter> = match opts.dtype {
        Some(d) => Box::new(TorchLayout(Direction::TorchToBurn).chain(FloatCastAdapter::to(d))),
        None => Box::new(TorchLayout(Direction::TorchToBurn)),
    };
    let result = module.apply(tensors, None, Some(adapter), false);
    if let Some(e) = result.errors.first() {
        return Err(ModelError::checkpoint(&weights.origin, e.to_string()));
    }
    if let Some((path, _)) = result.missing.first() {
        return Err(ModelError::checkpoint(
            &weights.origin,
            format!("parameter {path} was not filled"),
        ));
    }
    Ok(report)
}

fn read_json(path: &Path) -> Result<Value, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| ModelError::config(path.display(), format!("invalid JSON: {e}")))
}

/// Reads the special token ids from a `tokenizer.json` beside the weights: `<image>` from its
/// added tokens when present (else the id implied by `initial_tokenizer_len`), and the padding
/// id from `<pad>` (else the config's).
pub fn special_tokens_from_dir(
    dir: &Path,
    cfg: &XGenMMConfig,
) -> Result<SpecialTokens, ModelError> {
    let mut tokens = SpecialTokens::from_config(cfg);
    let path = dir.join("tokenizer.json");
    if !path.exists() {
        return Ok(tokens);
    }
    let v = read_json(&path)?;
    let added = v
        .get("added_tokens")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let find = |name: &str| {
        added.iter().find_map(|t| {
            (t.get("content").and_then(Value::as_str) == Some(name))
                .then(|| t.get("id").and_then(Value::as_u64))
                .flatten()
                .map(|x| x as u32)
        })
    };
    if let Some(id) = find("<image>") {
        tokens.image = id;
    }
    if let Some(id) = find("<pad>") {
        tokens.pad = id;
    } else if let Some(p) = cfg.text.pad_token_id {
        tokens.pad = p;
    }
    Ok(tokens)
}

/// Loads a released (or exported) xGen-MM HF directory.
pub fn load_xgenmm_dir(
    dir: &Path,
    device: &Device,
    opts: LoadOptions,
) -> Result<XGenMM, ModelError> {
    let cfg_path = dir.join("config.json");
    let cfg = XGenMMConfig::from_hf_value(&read_json(&cfg_path)?, &cfg_path.display().to_string())?;
    let weights = WeightSet::open_dir(dir)?;
    let tokens = special_tokens_from_dir(dir, &cfg)?;
    let mut model = cfg.init(device).with_special_tokens(tokens);
    let report = load_weights(&mut model, &weights, CheckpointKind::XGenMM, opts)?;
    if !report.unexpected.is_empty() {
        log::warn!(
            "{}: {} unexpected tensors ignored, e.g. {}",
            dir.display(),
            report.unexpected.len(),
            report.unexpected[0]
        );
    }
    Ok(model)
}

/// Loads a plain HF `Phi3ForCausalLM` directory (config.json + safetensors).
pub fn load_phi3_dir(
    dir: &Path,
    device: &Device,
    opts: LoadOptions,
) -> Result<Phi3ForCausalLM, ModelError> {
    let cfg_path = dir.join("config.json");
    let cfg = Phi3Config::from_hf_value(&read_json(&cfg_path)?, &cfg_path.display().to_string())?;
    let weights = WeightSet::open_dir(dir)?;
    let mut model = cfg.init(device);
    load_weights(&mut model, &weights, CheckpointKind::Phi3, opts)?;
    Ok(model)
}

/// Loads a plain HF `SiglipVisionModel` directory (config.json + safetensors).
pub fn load_siglip_dir(
    dir: &Path,
    device: &Device,
    opts: LoadOptions,
) -> Result<SiglipVisionTransformer, ModelError> {
    let cfg_path = dir.join("config.json");
    let cfg = siglip_from_hf_value(&read_json(&cfg_path)?, &cfg_path.display().to_string())?;
    let weights = WeightSet::open_dir(dir)?;
    let mut model = cfg.init(device);
    load_weights(&mut model, &weights, CheckpointKind::Siglip, opts)?;
    Ok(model)
}

/// Writes `path` atomically: `write` fills a temporary sibling, which is then renamed.
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), ModelError>,
) -> Result<(), ModelError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    write(&tmp)?;
    std::fs::rename(&tmp, path).map_err(|e| ModelError::io(path, e))
}

struct PackView {
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    tensor: PackTensor,
}

impl safetensors::View for PackView {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        // Errors here cannot be returned through the trait; a failed device read yields an empty
        // buffer, which safetensors then rejects with a length error naming the file.
        std::borrow::Cow::Owned(
            self.tensor
                .to_bytes()
                .map(|b| b.to_vec())
                .unwrap_or_default(),
        )
    }
    fn data_len(&self) -> usize {
        self.tensor.byte_len()
    }
}

fn to_st_dtype(d: DType) -> Option<safetensors::Dtype> {
    Some(match d {
        DType::F64 => safetensors::Dtype::F64,
        DType::F32 => safetensors::Dtype::F32,
        DType::F16 => safetensors::Dtype::F16,
        DType::BF16 => safetensors::Dtype::BF16,
        _ => return None,
    })
}

/// Writes a module's parameters as one safetensors file with HF keys of `kind` (PyTorch layout),
/// optionally cast to `dtype`. Tensors are produced one at a time while writing.
pub fn save_hf_safetensors<M: Module + ModuleSnapshot>(
    module: &M,
    path: &Path,
    kind: CheckpointKind,
    dtype: Option<DType>,
) -> Result<(), ModelError> {
    let adapter: Box<dyn ModuleAdapter> = match dtype {
        Some(d) => Box::new(TorchLayout(Direction::BurnToTorch).chain(FloatCastAdapter::to(d))),
        None => Box::new(TorchLayout(Direction::BurnToTorch)),
    };
    let tensors = module.collect(None, Some(adapter), false);
    let mut views = Vec::with_capacity(tensors.len());
    for t in tensors {
        let st = to_st_dtype(t.dtype).ok_or_else(|| {
            ModelError::checkpoint(
                path.display(),
                format!("cannot save {:?} tensor {}", t.dtype, t.name),
            )
        })?;
        let key = ours_to_hf(&t.name, kind);
        views.push((
            key,
            PackView {
                dtype: st,
                shape: t.shape.to_vec(),
                tensor: t,
            },
        ));
    }
    views.sort_by(|a, b| a.0.cmp(&b.0));
    write_atomic(path, |tmp| {
        safetensors::serialize_to_file(views, None, tmp)
            .map_err(|e| ModelError::checkpoint(path.display(), e.to_string()))
    })
}

/// Exports an xGen-MM model as an HF-layout directory: `model.safetensors` (keys `vlm.*`, PyTorch
/// layout) and `config.json`. Copy the tokenizer files beside it to make it self-contained.
pub fn export_hf(model: &XGenMM, dir: &Path, dtype: Option<DType>) -> Result<(), ModelError> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    save_hf_safetensors(
        model,
        &dir.join("model.safetensors"),
        CheckpointKind::XGenMM,
        dtype,
    )?;
    let mut cfg = model.config().to_hf_value();
    if let Some(d) = dtype {
        cfg["torch_dtype"] = Value::String(
            match d {
                DType::BF16 => "bfloat16",
                DType::F16 => "float16",
                _ => "float32",
            }
            .into(),
        );
    }
    let cfg_path = dir.join("config.json");
    write_atomic(&cfg_path, |tmp| {
        let text = serde_json::to_string_pretty(&cfg).unwrap_or_default();
        std::fs::write(tmp, text).map_err(|e| ModelError::io(tmp, e))
    })
}

/// Saves a native checkpoint (burnpack `model.bpk`, keeping parameter ids, plus `config.json`
/// and `special_tokens.json`), each file written atomically.
pub fn save_checkpoint(model: &XGenMM, dir: &Path) -> Result<(), ModelError> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let bpk = dir.join("model.bpk");
    write_atomic(&bpk, |tmp| {
        let mut store = burn::store::BurnpackStore::from_file(tmp).overwrite(true);
        model
            .save_into(&mut store)
            .map_err(|e| ModelError::checkpoint(tmp.display(), e.to_string()))
    })?;
    let cfg = serde_json::to_string_pretty(&model.config().to_hf_value()).unwrap_or_default();
    write_atomic(&dir.join("config.json"), |tmp| {
        std::fs::write(tmp, cfg).map_err(|e| ModelError::io(tmp, e))
    })?;
    let tok = serde_json::to_string(&model.special_tokens()).unwrap_or_default();
    write_atomic(&dir.join("special_tokens.json"), |tmp| {
        std::fs::write(tmp, tok).map_err(|e| ModelError::io(tmp, e))
    })
}

/// Loads a native checkpoint written by [`save_checkpoint`].
pub fn load_checkpoint(dir: &Path, device: &Device) -> Result<XGenMM, ModelError> {
    let cfg_path = dir.join("config.json");
    let cfg = XGenMMConfig::from_hf_value(&read_json(&cfg_path)?, &cfg_path.display().to_string())?;
    let tok_path = dir.join("special_tokens.json");
    let tokens = if tok_path.exists() {
        serde_json::from_value(read_json(&tok_path)?)
            .map_err(|e| ModelError::config(tok_path.display(), e.to_string()))?
    } else {
        SpecialTokens::from_config(&cfg)
    };
    let mut model = cfg.init(device).with_special_tokens(tokens);
    let bpk = dir.join("model.bpk");
    if !bpk.exists() {
        return Err(ModelError::io(
            &bpk,
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ));
    }
    let mut store = burn::store::BurnpackStore::from_file(&bpk);
    let res = model
        .load_from(&mut store)
        .map_err(|e| ModelError::checkpoint(bpk.display(), e.to_string()))?;
    if let Some(e) = res.errors.first() {
        return Err(ModelError::checkpoint(bpk.display(), e.to_string()));
    }
    if let Some((p, _)) = res.missing.first() {
        return Err(ModelError::checkpoint(
            bpk.display(),
            format!("missing parameter {p}"),
        ));
    }
    Ok(model)
}

/// Loads a model directory of either kind: a native checkpoint (`model.bpk`) or an HF layout.
pub fn load_model_dir(
    dir: &Path,
    device: &Device,
    opts: LoadOptions,
) -> Result<XGenMM, ModelError> {
    if dir.join("model.bpk").exists() {
        let model = load_checkpoint(dir, device)?;
        Ok(match opts.dtype {
            Some(d) => cast_module(model, d),
            None => model,
        })
    } else {
        load_xgenmm_dir(dir, device, opts)
    }
}

/// Casts every float parameter of a module to `dtype`.
pub fn cast_module<M: Module>(module: M, dtype: DType) -> M {
    struct Caster(DType);
    impl burn::module::ModuleMapper for Caster {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let d = self.0;
            param.map(move |t| t.cast(d))
        }
    }
    module.map(&mut Caster(dtype))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resampler_keys_round_trip() {
        for hf in [
            "vlm.vision_tokenizer.layers.3.0.to_kv.weight",
            "vlm.vision_tokenizer.layers.0.1.0.bias",
            "vlm.vision_tokenizer.layers.5.1.1.weight",
            "vlm.vision_tokenizer.layers.5.1.3.weight",
            "vlm.vision_tokenizer.latents",
            "vlm.lang_model.lm_head.additional_fc.bias",
        ] {
            let ours = hf_to_ours(hf, CheckpointKind::XGenMM).unwrap();
            assert_eq!(ours_to_hf(&ours, CheckpointKind::XGenMM), hf);
        }
        assert_eq!(
            hf_to_ours("vlm.vision_encoder.head.probe", CheckpointKind::XGenMM),
            None
        );
        assert!(is_known_unused(
            "vlm.vision_encoder.head.probe",
            CheckpointKind::XGenMM
        ));
    }
}
