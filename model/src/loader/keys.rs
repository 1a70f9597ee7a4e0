//! The HF ↔ blip3 parameter key mapping of every checkpoint layout blip3 reads (docs/model.md
//! §"Key names"), and the inventory of a module's parameters in checkpoint layout.

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;

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
