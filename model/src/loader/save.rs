//! Writing: native checkpoints (burnpack `model.bpk` + `config.json` + `special_tokens.json`), HF
//! safetensors with HF key names, and the HF-layout export; every file written atomically.

use std::path::Path;

use burn::module::Module;
use burn::prelude::*;
use burn::store::burn_pack::Tensor as PackTensor;
use burn::store::{FloatCastAdapter, ModuleAdapter, ModuleSnapshot};
use burn::tensor::DType;
use serde_json::Value;

use super::keys::{CheckpointKind, ours_to_hf};
use super::{read_config, read_json};
use crate::error::ModelError;
use crate::layout::{Direction, TorchLayout};
use crate::xgenmm::{SpecialTokens, XGenMM};

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
    let cfg = read_config(dir)?;
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
