//! Checkpoint loading: the full-size key set of the released checkpoint (metadata only), bad
//! checkpoints giving one-line errors that name the problem, dtype handling, sharded loading and
//! the native/HF save paths.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use blip3_model::loader::{self, CheckpointKind, LoadOptions};
use blip3_model::{ModelError, XGenMMConfig};
use burn::prelude::*;
use burn::tensor::DType;
use common::*;

/// The key/shape list of the released checkpoint, written out from the key patterns of
/// docs/model.md, "Key names".
fn spec_keys() -> BTreeMap<String, Vec<usize>> {
    let mut k = BTreeMap::new();
    let mut add = |name: String, shape: &[usize]| {
        k.insert(name, shape.to_vec());
    };
    let ve = "vlm.vision_encoder";
    add(
        format!("{ve}.embeddings.patch_embedding.weight"),
        &[1152, 3, 14, 14],
    );
    add(format!("{ve}.embeddings.patch_embedding.bias"), &[1152]);
    add(
        format!("{ve}.embeddings.position_embedding.weight"),
        &[729, 1152],
    );
    for n in 0..27 {
        let l = format!("{ve}.encoder.layers.{n}");
        for p in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            add(format!("{l}.self_attn.{p}.weight"), &[1152, 1152]);
            add(format!("{l}.self_attn.{p}.bias"), &[1152]);
        }
        for ln in ["layer_norm1", "layer_norm2"] {
            add(format!("{l}.{ln}.weight"), &[1152]);
            add(format!("{l}.{ln}.bias"), &[1152]);
        }
        add(format!("{l}.mlp.fc1.weight"), &[4304, 1152]);
        add(format!("{l}.mlp.fc1.bias"), &[4304]);
        add(format!("{l}.mlp.fc2.weight"), &[1152, 4304]);
        add(format!("{l}.mlp.fc2.bias"), &[1152]);
    }
    add(format!("{ve}.post_layernorm.weight"), &[1152]);
    add(format!("{ve}.post_layernorm.bias"), &[1152]);
    let vt = "vlm.vision_tokenizer";
    add(format!("{vt}.latents"), &[128, 1152]);
    add(format!("{vt}.projection.weight"), &[3072, 1152]);
    add(format!("{vt}.projection.bias"), &[3072]);
    add(format!("{vt}.norm.weight"), &[1152]);
    add(format!("{vt}.norm.bias"), &[1152]);
    for n in 0..6 {
        let l = format!("{vt}.layers.{n}");
        for ln in ["norm_media", "norm_latents"] {
            add(format!("{l}.0.{ln}.weight"), &[1152]);
            add(format!("{l}.0.{ln}.bias"), &[1152]);
        }
        add(format!("{l}.0.to_q.weight"), &[1536, 1152]);
        add(format!("{l}.0.to_kv.weight"), &[3072, 1152]);
        add(format!("{l}.0.to_out.weight"), &[1152, 1536]);
        add(format!("{l}.1.0.weight"), &[1152]);
        add(format!("{l}.1.0.bias"), &[1152]);
        add(format!("{l}.1.1.weight"), &[4608, 1152]);
        add(format!("{l}.1.3.weight"), &[1152, 4608]);
    }
    let lm = "vlm.lang_model";
    add(format!("{lm}.model.embed_tokens.weight"), &[32064, 3072]);
    add(
        format!("{lm}.model.embed_tokens.additional_embedding.weight"),
        &[3, 3072],
    );
    for n in 0..32 {
        let l = format!("{lm}.model.layers.{n}");
        add(format!("{l}.self_attn.qkv_proj.weight"), &[9216, 3072]);
        add(format!("{l}.self_attn.o_proj.weight"), &[3072, 3072]);
        add(format!("{l}.mlp.gate_up_proj.weight"), &[16384, 3072]);
        add(format!("{l}.mlp.down_proj.weight"), &[3072, 8192]);
        add(format!("{l}.input_layernorm.weight"), &[3072]);
        add(format!("{l}.post_attention_layernorm.weight"), &[3072]);
    }
    add(format!("{lm}.model.norm.weight"), &[3072]);
    add(format!("{lm}.lm_head.weight"), &[32064, 3072]);
    add(format!("{lm}.lm_head.bias"), &[32064]);
    add(format!("{lm}.lm_head.additional_fc.weight"), &[3, 3072]);
    add(format!("{lm}.lm_head.additional_fc.bias"), &[3]);
    k
}

/// The unused SigLIP pooling head of the released checkpoint.
fn spec_head_keys() -> BTreeMap<String, Vec<usize>> {
    let h = "vlm.vision_encoder.head";
    [
        (format!("{h}.probe"), vec![1, 1, 1152]),
        (format!("{h}.attention.in_proj_weight"), vec![3456, 1152]),
        (format!("{h}.attention.in_proj_bias"), vec![3456]),
        (format!("{h}.attention.out_proj.weight"), vec![1152, 1152]),
        (format!("{h}.attention.out_proj.bias"), vec![1152]),
        (format!("{h}.layernorm.weight"), vec![1152]),
        (format!("{h}.layernorm.bias"), vec![1152]),
        (format!("{h}.mlp.fc1.weight"), vec![4304, 1152]),
        (format!("{h}.mlp.fc1.bias"), vec![4304]),
        (format!("{h}.mlp.fc2.weight"), vec![1152, 4304]),
        (format!("{h}.mlp.fc2.bias"), vec![1152]),
    ]
    .into_iter()
    .collect()
}

#[test]
fn full_size_key_set_matches_the_released_checkpoint() {
    let cfg = XGenMMConfig::xgenmm_phi3_mini_v1_5();
    // Lazily initialised: building the 4.4B model allocates no parameter memory.
    let model = cfg.init(&Device::flex());
    let ours: BTreeMap<String, Vec<usize>> =
        loader::expected_hf_keys(&model, CheckpointKind::XGenMM)
            .into_iter()
            .collect();
    let spec = spec_keys();
    let missing: Vec<_> = spec.keys().filter(|k| !ours.contains_key(*k)).collect();
    let extra: Vec<_> = ours.keys().filter(|k| !spec.contains_key(*k)).collect();
    assert!(
        missing.is_empty(),
        "keys of the spec the model lacks: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "keys the model wants that the spec lacks: {extra:?}"
    );
    for (k, shape) in &spec {
        assert_eq!(&ours[k], shape, "shape of {k}");
    }
    // Every key maps onto a model parameter, and the head keys are the only known-unused ones.
    for k in spec.keys() {
        assert!(
            loader::hf_to_ours(k, CheckpointKind::XGenMM).is_some(),
            "{k}"
        );
    }
    for k in spec_head_keys().keys() {
        assert!(loader::is_known_unused(k, CheckpointKind::XGenMM), "{k}");
    }
    // Parameter counts re-derived from the shapes equal the reference's printout (docs/model.md,
    // "Sizes and presets"):
    // 4,359,257,219 including the unused head.
    let count = |m: &BTreeMap<String, Vec<usize>>| -> usize {
        m.values().map(|s| s.iter().product::<usize>()).sum()
    };
    assert_eq!(count(&spec) + count(&spec_head_keys()), 4_359_257_219);
    assert_eq!(model.num_params() + count(&spec_head_keys()), 4_359_257_219);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Rewrites one shard of the composite fixture through `edit` (which may drop or alter tensors).
fn rewrite_shard(
    dir: &Path,
    shard: &str,
    edit: impl Fn(&str, Vec<usize>, Vec<u8>) -> Option<(Vec<usize>, Vec<u8>)>,
) {
    let path = dir.join(shard);
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut kept: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (k, v) in st.tensors() {
        if let Some((shape, data)) = edit(&k, v.shape().to_vec(), v.data().to_vec()) {
            kept.push((k.to_string(), shape, data));
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = kept
        .iter()
        .map(|(k, s, d)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
}

fn load_err(dir: &Path) -> String {
    match loader::load_xgenmm_dir(dir, &Device::flex(), LoadOptions::default()) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => {
            let s = e.to_string();
            assert_eq!(s.lines().count(), 1, "one-line error expected: {s}");
            s
        }
    }
}

const SHARD2: &str = "model-00002-of-00002.safetensors";

#[test]
fn missing_tensor_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture("xgenmm"), tmp.path());
    // The index lists the key, so drop it from the index too (as a broken export would).
    let victim = "vlm.vision_tokenizer.layers.1.0.to_q.weight";
    rewrite_shard(tmp.path(), SHARD2, |k, s, d| {
        (k != victim).then_some((s, d))
    });
    let idx_path = tmp.path().join("model.safetensors.index.json");
    let mut idx: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&idx_path).unwrap()).unwrap();
    idx["weight_map"].as_object_mut().unwrap().remove(victim);
    std::fs::write(&idx_path, idx.to_string()).unwrap();
    let e = load_err(tmp.path());
    assert!(
        e.contains(victim) && e.contains("missing") && e.contains("[64, 64]"),
        "{e}"
    );
}

#[test]
fn index_pointing_at_the_wrong_shard_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture("xgenmm"), tmp.path());
    let victim = "vlm.vision_tokenizer.layers.1.0.to_q.weight";
    rewrite_shard(tmp.path(), SHARD2, |k, s, d| {
        (k != victim).then_some((s, d))
    });
    let e = load_err(tmp.path());
    assert!(e.contains(victim) && e.contains("index.json"), "{e}");
}

#[test]
fn transposed_tensor_names_key_and_both_shapes() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture("xgenmm"), tmp.path());
    // to_kv is [128, 64] (non-square, so a transposition changes the shape).
    let victim = "vlm.vision_tokenizer.layers.0.0.to_kv.weight";
    rewrite_shard(tmp.path(), SHARD2, |k, s, d| {
        if k == victim {
            Some((vec![s[1], s[0]], d))
        } else {
            Some((s, d))
        }
    });
    let e = load_err(tmp.path());
    assert!(
        e.contains(victim) && e.contains("[64, 128]") && e.contains("[128, 64]"),
        "{e}"
    );
}

#[test]
fn truncated_file_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture("xgenmm"), tmp.path());
    let p = tmp.path().join(SHARD2);
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 1000]).unwrap();
    let e = load_err(tmp.path());
    assert!(e.contains("truncated") && e.contains(SHARD2), "{e}");
    // A file cut inside its header too.
    std::fs::write(&p, &bytes[..4]).unwrap();
    let e = load_err(tmp.path());
    assert!(e.contains("truncated") && e.contains(SHARD2), "{e}");
}

#[test]
fn config_missing_a_required_field_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture("xgenmm"), tmp.path());
    let cfg_path = tmp.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["vision_encoder_config"]["vision_config"]
        .as_object_mut()
        .unwrap()
        .remove("hidden_size");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let e = load_err(tmp.path());
    assert!(
        e.contains("config.json") && e.contains("hidden_size"),
        "{e}"
    );
}

#[test]
fn missing_directory_is_an_io_error() {
    let e = loader::load_xgenmm_dir(
        Path::new("/nonexistent/blip3"),
        &Device::flex(),
        LoadOptions::default(),
    )
    .err()
    .unwrap();
    assert!(matches!(e, ModelError::Io { .. }), "{e}");
    assert!(e.to_string().contains("/nonexistent/blip3/config.json"));
}

fn first_param_dtype(m: &blip3_model::XGenMM) -> DType {
    m.lang_model.model.layers[0]
        .self_attn
        .qkv_proj
        .weight
        .val()
        .dtype()
}

/// bf16 export keeps bf16 on load (no f32 copy), `--dtype f32` casts, and both still compute the
/// reference logits (bf16 within bf16 rounding); the native checkpoint round-trips exactly.
#[test]
fn dtype_handling_and_round_trips() {
    let device = Device::flex();
    let model =
        loader::load_xgenmm_dir(&fixture("xgenmm"), &device, LoadOptions::default()).unwrap();
    assert_eq!(first_param_dtype(&model), DType::F32);
    let tmp = tempfile::tempdir().unwrap();

    // HF export in bf16, reloaded as-is and cast to f32.
    let hf = tmp.path().join("hf_bf16");
    loader::export_hf(&model, &hf, Some(DType::BF16)).unwrap();
    let ws = loader::WeightSet::open_dir(&hf).unwrap();
    assert!(ws.files[0].tensors.values().all(|m| m.dtype == "BF16"));
    let bf = loader::load_xgenmm_dir(&hf, &device, LoadOptions::default()).unwrap();
    assert_eq!(first_param_dtype(&bf), DType::BF16);
    let f32m = loader::load_xgenmm_dir(
        &hf,
        &device,
        LoadOptions {
            dtype: Some(DType::F32),
        },
    )
    .unwrap();
    assert_eq!(first_param_dtype(&f32m), DType::F32);

    let ids = Tensor::<2, Int>::from_data([[1i64, 5, 6, 7, 8]], &device);
    let mask = vec![vec![true; 5]];
    let reference = values(
        model
            .lang_model
            .forward_ids(ids.clone(), &mask, None, blip3_model::LogitsFor::All)
            .unwrap(),
    );
    let from_bf16 = values(
        bf.lang_model
            .forward_ids(ids.clone(), &mask, None, blip3_model::LogitsFor::All)
            .unwrap(),
    );
    let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(max_abs_diff(&reference, &from_bf16) < 0.05 * scale.max(1.0));

    // Native checkpoint: identical logits.
    let native = tmp.path().join("native");
    loader::save_checkpoint(&model, &native).unwrap();
    let back = loader::load_checkpoint(&native, &device).unwrap();
    let again = values(
        back.lang_model
            .forward_ids(ids.clone(), &mask, None, blip3_model::LogitsFor::All)
            .unwrap(),
    );
    assert_eq!(reference, again);
    assert_eq!(back.special_tokens(), model.special_tokens());

    // f32 HF export round-trips exactly, through the same loader as released checkpoints.
    let hf32 = tmp.path().join("hf_f32");
    loader::export_hf(&model, &hf32, None).unwrap();
    let m2 = loader::load_xgenmm_dir(&hf32, &device, LoadOptions::default()).unwrap();
    let again = values(
        m2.lang_model
            .forward_ids(ids, &mask, None, blip3_model::LogitsFor::All)
            .unwrap(),
    );
    assert_eq!(reference, again);
}
