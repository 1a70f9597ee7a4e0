//! Weight loading and saving. **Every HF checkpoint key name lives in this module** (in
//! [`keys`]).
//!
//! Files: [`keys`] (the HF ↔ blip3 key mapping and the parameter inventory), [`weights`]
//! (reading safetensors headers and tensors, sharded sets), [`save`] (native checkpoints and the
//! HF export); loading into a module is here.
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

mod keys;
mod save;
mod weights;

pub use keys::{
    CheckpointKind, ParamInfo, expected_hf_keys, hf_to_ours, is_known_unused, ours_to_hf,
    param_inventory,
};
pub use save::{export_hf, load_checkpoint, save_checkpoint, save_hf_safetensors, write_atomic};
pub use weights::{SafetensorsFile, TensorMeta, WeightSet};
use weights::{float_dtype, read_range};

use std::collections::HashMap;
use std::path::Path;

use burn::module::{Module, Param};
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
use crate::xgenmm::XGenMM;

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

/// Reads a model directory's `config.json` (a released xGen-MM config, an export, or a native
/// checkpoint's), with errors naming the file.
pub fn read_config(dir: &Path) -> Result<XGenMMConfig, ModelError> {
    let path = dir.join("config.json");
    XGenMMConfig::from_hf_value(&read_json(&path)?, &path.display().to_string())
}

/// Loads a released (or exported) xGen-MM HF directory. The special token ids are the ones the
/// config implies ([`SpecialTokens::from_config`]: `<image>` = `initial_tokenizer_len`, `<pad>` one
/// before it, as the reference tokenizer adds them); the tokenizer is not read here.
/// `blip3-processor` sets the ids from the tokenizer when it loads a model directory.
pub fn load_xgenmm_dir(
    dir: &Path,
    device: &Device,
    opts: LoadOptions,
) -> Result<XGenMM, ModelError> {
    let cfg = read_config(dir)?;
    let weights = WeightSet::open_dir(dir)?;
    let mut model = cfg.init(device);
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
