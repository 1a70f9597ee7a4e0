//! Training-step tests on the tiny composite: one pre-training step and the DPO loss against the
//! PyTorch reference (fixture made by tests/fixtures/model/make_model_fixtures.py), finite
//! differences, frozen parts, LoRA counting and merging, global-norm clipping, mixed precision.

use std::path::PathBuf;
use std::sync::Arc;

use blip3_model::loader::{self, LoadOptions};
use blip3_model::params::{param_dtypes, param_values};
use blip3_model::{ImageInput, LoraConfig, MultimodalInput, XGenMM};
use blip3_shaders::gemm::{MatmulPath, extension_calls, with_path};
use blip3_train::config::{DpoReference, FreezeSection, Stage};
use blip3_train::optim::{frozen_copy, set_trainable, trainable_params};
use blip3_train::stage::{
    StageModel, StageSettings, StepGuard, VlmBatch, global_grad_norm, scale_grads,
};
use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;
use burn::tensor::DType;
use burn::train::TrainStep;

fn fixture(name: &str) -> PathBuf {
    blip3_fixtures::fixture("model").join(name)
}

struct Fx {
    tensors: std::collections::HashMap<String, (Vec<f32>, Vec<usize>)>,
    meta: serde_json::Value,
}

fn read_fixture() -> Fx {
    let bytes = std::fs::read(fixture("train_step_io.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors = std::collections::HashMap::new();
    for (k, v) in st.tensors() {
        assert_eq!(v.dtype(), safetensors::Dtype::F32, "{k}");
        let data = v
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        tensors.insert(k.to_string(), (data, v.shape().to_vec()));
    }
    let meta =
        serde_json::from_str(&std::fs::read_to_string(fixture("train_step_io.json")).unwrap())
            .unwrap();
    Fx { tensors, meta }
}

fn image(fx: &Fx, i: u64, device: &Device) -> ImageInput {
    let (data, shape) = &fx.tensors[&format!("img{i}")];
    ImageInput {
        pixels: Tensor::from_data(TensorData::new(data.clone(), shape.clone()), device),
        grid: None,
        original_size: (32, 32),
    }
}

fn ints(v: &serde_json::Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

fn settings(stage: Stage, guard: Arc<StepGuard>) -> StageSettings {
    StageSettings {
        stage,
        loss_scale: 1.0,
        dpo_beta: 0.1,
        dpo_reference: DpoReference::PolicyCopy,
        compute_dtype: None,
        checkpoint_layers: false,
        grad_clip: None,
        guard,
        noised_negatives: None,
    }
}

/// A pretraining stage model of `policy` (no reference, default settings).
fn pretrain_model(policy: XGenMM) -> StageModel {
    StageModel::new(
        policy,
        None,
        settings(Stage::Pretrain, Arc::new(StepGuard::new(3))),
    )
}

/// The fixture model with rank-4 LoRA adapters (no dropout) on every target, only they trainable.
fn lora_policy(device: &Device) -> XGenMM {
    let cfg = LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        targets: LoraConfig::TARGETS.iter().map(|s| s.to_string()).collect(),
    };
    let m = loader::load_xgenmm_dir(&fixture("xgenmm"), device, LoadOptions::default())
        .unwrap()
        .train();
    set_trainable(m, &FreezeSection::default(), Some(&cfg), device)
}

fn load_policy(device: &Device) -> XGenMM {
    let m = loader::load_xgenmm_dir(&fixture("xgenmm"), device, LoadOptions::default()).unwrap();
    let m = m.train();
    set_trainable(m, &FreezeSection::default(), None, device)
}

fn pretrain_batch(fx: &Fx, device: &Device) -> VlmBatch {
    let ids: Vec<Vec<u32>> = fx.meta["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| ints(r).iter().map(|&x| x as u32).collect())
        .collect();
    let labels: Vec<Vec<i64>> = fx.meta["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(ints)
        .collect();
    let images = fx.meta["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|i| image(fx, i.as_u64().unwrap(), device))
                .collect()
        })
        .collect();
    VlmBatch {
        input: MultimodalInput {
            input_ids: ids,
            images,
            labels: Some(labels),
        },
        rejected: None,
    }
}

fn dpo_batch(fx: &Fx, device: &Device) -> VlmBatch {
    let d = &fx.meta["dpo"];
    let prompt: Vec<u32> = ints(&d["prompt"]).iter().map(|&x| x as u32).collect();
    let img = || vec![image(fx, d["image"].as_u64().unwrap(), device)];
    let side = |ans: &serde_json::Value| {
        let a: Vec<u32> = ints(ans).iter().map(|&x| x as u32).collect();
        let mut ids = prompt.clone();
        ids.extend(&a);
        let mut lab = vec![-100i64; prompt.len()];
        lab.extend(a.iter().map(|&x| x as i64));
        MultimodalInput {
            input_ids: vec![ids],
            images: vec![img()],
            labels: Some(vec![lab]),
        }
    };
    VlmBatch {
        input: side(&d["chosen"]),
        rejected: Some(side(&d["rejected"])),
    }
}

/// The gradient of a named parameter, in PyTorch layout, from GradientsParams.
fn grad_of(model: &XGenMM, grads: &GradientsParams, key: &str) -> Vec<f32> {
    let lm = &model.lang_model;
    let vt = &model.vision_tokenizer;
    let v2 = |p: &Param<Tensor<2>>, t: bool| {
        let g = grads
            .get::<2>(p.id)
            .unwrap_or_else(|| panic!("no grad for {key}"));
        let g = if t { g.transpose() } else { g };
        g.into_data().try_into_vec_as::<f32>().unwrap()
    };
    let v1 = |p: &Param<Tensor<1>>| {
        grads
            .get::<1>(p.id)
            .unwrap()
            .into_data()
            .try_into_vec_as::<f32>()
            .unwrap()
    };
    match key {
        "lang_model.lm_head.weight" => v2(&lm.lm_head.weight, false),
        "lang_model.lm_head.bias" => v1(lm.lm_head.bias.as_ref().unwrap()),
        "lang_model.lm_head.additional_fc.weight" => {
            v2(&lm.lm_head.additional_fc.as_ref().unwrap().weight, true)
        }
        "lang_model.model.layers.0.self_attn.qkv_proj.weight" => {
            v2(&lm.model.layers[0].self_attn.qkv_proj.weight, true)
        }
        "lang_model.model.layers.1.mlp.down_proj.weight" => {
            v2(&lm.model.layers[1].mlp.down_proj.weight, true)
        }
        "lang_model.model.embed_tokens.weight" => v2(&lm.model.embed_tokens.weight, false),
        "lang_model.model.embed_tokens.additional_embedding.weight" => v2(
            &lm.model
                .embed_tokens
                .additional_embedding
                .as_ref()
                .unwrap()
                .weight,
            false,
        ),
        "lang_model.model.norm.weight" => v1(&lm.model.norm.gamma),
        "vision_tokenizer.latents" => v2(&vt.latents, false),
        "vision_tokenizer.layers.0.0.to_kv.weight" => v2(&vt.layers[0].attn.to_kv.weight, true),
        "vision_tokenizer.projection.weight" => v2(&vt.projection.weight, true),
        other => panic!("unmapped key {other}"),
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn pretraining_step_matches_pytorch() {
    // Burn's matmul, then every linear layer's product (forward and backward) through the
    // vendor-GEMM extension, which is Burn's matmul inside the extension on flex.
    for path in [MatmulPath::Burn, MatmulPath::Extension] {
        let before = extension_calls();
        with_path(path, || {
            let device = Device::flex().autodiff();
            let fx = read_fixture();
            let policy = load_policy(&device);
            let model = pretrain_model(policy);
            let out = TrainStep::step(&model, pretrain_batch(&fx, &device));
            let loss = out.item.loss_value() as f32;
            let want = fx.tensors["loss"].0[0];
            assert!(
                (loss - want).abs() <= 1e-4,
                "{path:?}: loss {loss} vs {want}"
            );
            for key in fx.meta["grad_keys"].as_array().unwrap() {
                let key = key.as_str().unwrap();
                let ours = grad_of(&model.policy, &out.grads, key);
                let d = max_diff(&ours, &fx.tensors[&format!("grad.{key}")].0);
                assert!(d <= 1e-4, "{path:?}: grad {key}: max diff {d}");
            }
            // The frozen ViT received no gradient.
            let vit = &model.policy.vision_encoder.encoder.layers[0].mlp.fc1.weight;
            assert!(out.grads.get::<2>(vit.id).is_none());
        });
        let calls = extension_calls() - before;
        assert_eq!(
            calls > 0,
            path == MatmulPath::Extension,
            "{path:?}: {calls} extension calls"
        );
    }
}

/// Per-decoder-layer activation checkpointing: the same loss and, for every parameter, the
/// same gradient as one backward (and so the PyTorch reference's), with LoRA adapters too.
#[test]
fn layer_checkpointing_gives_the_gradients_of_one_backward() {
    let device = Device::flex().autodiff();
    let fx = read_fixture();
    for lora in [false, true] {
        let policy = if lora {
            lora_policy(&device)
        } else {
            load_policy(&device)
        };
        let plain = StageModel::new(
            policy.clone(),
            None,
            settings(Stage::Pretrain, Arc::new(StepGuard::new(3))),
        );
        let mut layered_settings = settings(Stage::Pretrain, Arc::new(StepGuard::new(3)));
        layered_settings.checkpoint_layers = true;
        let layered = StageModel::new(policy, None, layered_settings);
        let a = TrainStep::step(&plain, pretrain_batch(&fx, &device));
        let b = TrainStep::step(&layered, pretrain_batch(&fx, &device));
        // The layers run on the inner backend in the forward: equal up to float rounding.
        let (la, lb) = (a.item.loss_value(), b.item.loss_value());
        assert!((la - lb).abs() <= 1e-5, "lora {lora}: loss {la} vs {lb}");
        if !lora {
            let want = fx.tensors["loss"].0[0];
            assert!((b.item.loss_value() as f32 - want).abs() <= 1e-4);
        }
        let (compared, worst) = gradient_difference(&layered.policy, &a.grads, &b.grads);
        eprintln!("lora {lora}: {compared} gradients, worst relative difference {worst:.2e}");
        assert_eq!(compared, a.grads.len(), "lora {lora}");
        assert!(compared > 10, "lora {lora}: only {compared} gradients");
        assert!(worst <= 1e-5, "lora {lora}: gradients differ by {worst}");
    }
}

/// How many parameters of `module` have a gradient in both `a` and `b`, and the largest
/// difference between them relative to the larger gradient's scale. Panics when a parameter
/// has a gradient on one side only.
fn gradient_difference<M: Module>(
    module: &M,
    a: &GradientsParams,
    b: &GradientsParams,
) -> (usize, f32) {
    struct Compare<'a> {
        a: &'a GradientsParams,
        b: &'a GradientsParams,
        compared: usize,
        worst: f32,
    }
    impl burn::module::ModuleVisitor for Compare<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let (x, y) = (self.a.get::<D>(param.id), self.b.get::<D>(param.id));
            assert_eq!(x.is_some(), y.is_some(), "a gradient on one side only");
            if let (Some(x), Some(y)) = (x, y) {
                let x = x.into_data().try_into_vec_as::<f32>().unwrap();
                let y = y.into_data().try_into_vec_as::<f32>().unwrap();
                let scale = x.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
                self.worst = self.worst.max(max_diff(&x, &y) / scale);
                self.compared += 1;
            }
        }
    }
    let mut cmp = Compare {
        a,
        b,
        compared: 0,
        worst: 0.0,
    };
    module.visit(&mut cmp);
    (cmp.compared, cmp.worst)
}

/// DPO with per-decoder-layer checkpointing: the same loss and gradients as one backward, with
/// a separate reference model and with LoRA against its own base.
#[test]
fn dpo_with_layer_checkpointing_gives_the_gradients_of_one_backward() {
    let device = Device::flex().autodiff();
    let fx = read_fixture();
    for lora in [false, true] {
        let (policy, reference, kind) = if lora {
            (lora_policy(&device), None, DpoReference::LoraBase)
        } else {
            let policy = load_policy(&device);
            let reference = frozen_copy(policy.clone());
            (policy, Some(reference), DpoReference::PolicyCopy)
        };
        let make = |layered: bool| {
            let mut s = settings(Stage::Dpo, Arc::new(StepGuard::new(3)));
            s.dpo_reference = kind;
            s.checkpoint_layers = layered;
            StageModel::new(policy.clone(), reference.clone(), s)
        };
        let (plain, layered) = (make(false), make(true));
        let a = TrainStep::step(&plain, dpo_batch(&fx, &device));
        let b = TrainStep::step(&layered, dpo_batch(&fx, &device));
        let (la, lb) = (a.item.loss_value(), b.item.loss_value());
        assert!(
            (la - lb).abs() <= 1e-5,
            "lora {lora}: dpo loss {la} vs {lb}"
        );
        let (compared, worst) = gradient_difference(&layered.policy, &a.grads, &b.grads);
        eprintln!("dpo lora {lora}: {compared} gradients, worst relative difference {worst:.2e}");
        assert_eq!(compared, a.grads.len(), "lora {lora}");
        assert!(compared > 10, "lora {lora}: only {compared} gradients");
        assert!(worst <= 1e-5, "lora {lora}: gradients differ by {worst}");
    }
}

#[test]
fn dpo_loss_and_gradients_match_the_reference_formula() {
    let device = Device::flex().autodiff();
    let fx = read_fixture();
    let policy = load_policy(&device);
    // The reference: the fixture's perturbed copy, frozen, with fresh parameter ids.
    let mut reference = blip3_model::XGenMMConfig::from_hf_json(
        &std::fs::read_to_string(fixture("xgenmm/config.json")).unwrap(),
        "config.json",
    )
    .unwrap()
    .init(&device);
    let ws = loader::WeightSet::open_file(&fixture("dpo_reference.safetensors")).unwrap();
    loader::load_weights(
        &mut reference,
        &ws,
        loader::CheckpointKind::XGenMM,
        LoadOptions::default(),
    )
    .unwrap();
    let reference = frozen_copy(reference);
    let model = StageModel::new(
        policy,
        Some(reference),
        settings(Stage::Dpo, Arc::new(StepGuard::new(3))),
    );
    let out = TrainStep::step(&model, dpo_batch(&fx, &device));
    let loss = out.item.loss_value() as f32;
    let want = fx.tensors["dpo_loss"].0[0];
    assert!((loss - want).abs() <= 1e-5, "dpo loss {loss} vs {want}");
    for key in fx.meta["grad_keys"].as_array().unwrap() {
        let key = key.as_str().unwrap();
        let ours = grad_of(&model.policy, &out.grads, key);
        let d = max_diff(&ours, &fx.tensors[&format!("dpo_grad.{key}")].0);
        assert!(d <= 1e-5, "dpo grad {key}: max diff {d}");
    }
    // Reward accuracy is reported: one pair, reward margin sign decides it.
    let pol = &fx.tensors["dpo_policy_logps"].0;
    let rf = &fx.tensors["dpo_ref_logps"].0;
    let expect_acc = if (pol[0] - rf[0]) > (pol[1] - rf[1]) {
        1.0
    } else {
        0.0
    };
    assert_eq!(out.item.reward_accuracy, Some(expect_acc));
}

/// Adds `eps` to element `index` of the parameter `id`.
struct Nudge {
    id: ParamId,
    index: usize,
    eps: f64,
}

impl ModuleMapper for Nudge {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if param.id != self.id {
            return param;
        }
        let (id, eps, index) = (param.id, self.eps, self.index);
        let t = param.val();
        let shape = t.shape();
        let mut v = t.clone().into_data().try_into_vec_as::<f32>().unwrap();
        v[index] += eps as f32;
        Param::initialized(
            id,
            Tensor::from_data(TensorData::new(v, shape), &t.device()),
        )
    }
}

/// Central finite differences on a few entries of several parameters, for both losses.
#[test]
fn gradients_match_finite_differences() {
    let fx = read_fixture();
    let plain = Device::flex();
    let ad = plain.clone().autodiff();
    for stage in [Stage::Pretrain, Stage::Dpo] {
        let guard = Arc::new(StepGuard::new(3));
        let policy = load_policy(&ad);
        let reference = (stage == Stage::Dpo).then(|| frozen_copy(policy.clone()));
        let model = StageModel::new(policy, reference, settings(stage, guard.clone()));
        let batch = |d: &Device| {
            if stage == Stage::Dpo {
                dpo_batch(&fx, d)
            } else {
                pretrain_batch(&fx, d)
            }
        };
        let out = TrainStep::step(&model, batch(&ad));
        let plain_model = model.clone().valid();
        let targets = [
            (
                plain_model.policy.lang_model.lm_head.weight.id,
                2,
                5 * 64 + 3,
            ),
            (plain_model.policy.vision_tokenizer.latents.id, 2, 17),
            (
                plain_model.policy.lang_model.model.layers[1]
                    .self_attn
                    .qkv_proj
                    .weight
                    .id,
                2,
                64 * 7 + 9,
            ),
        ];
        for (id, _rank, index) in targets {
            let analytic = out
                .grads
                .get::<2>(id)
                .unwrap()
                .into_data()
                .try_into_vec_as::<f32>()
                .unwrap()[index] as f64;
            let eps = 1e-2;
            let loss_at = |e: f64| {
                let m = plain_model.clone().map(&mut Nudge { id, index, eps: e });
                let o = burn::train::InferenceStep::step(&m, batch(&plain));
                o.loss_value()
            };
            let fd = (loss_at(eps) - loss_at(-eps)) / (2.0 * eps);
            let tol = 2e-3 + 0.02 * fd.abs().max(analytic.abs());
            assert!(
                (fd - analytic).abs() <= tol,
                "{stage:?} param {id}: fd {fd} vs analytic {analytic}"
            );
        }
    }
}

#[test]
fn frozen_parts_stay_bit_identical_and_trained_parts_move() {
    let device = Device::flex().autodiff();
    let fx = read_fixture();
    let freeze = FreezeSection {
        vision: true,
        resampler: true,
        lm: false,
        embeddings: true,
    };
    let policy = loader::load_xgenmm_dir(&fixture("xgenmm"), &device, LoadOptions::default())
        .unwrap()
        .train();
    let policy = set_trainable(policy, &freeze, None, &device);
    let vit0 = param_values(&policy.vision_encoder.clone().valid());
    let res0 = policy.vision_tokenizer.latents.val().into_data();
    let emb0 = policy
        .lang_model
        .model
        .embed_tokens
        .weight
        .val()
        .into_data();
    let qkv0 = policy.lang_model.model.layers[0]
        .self_attn
        .qkv_proj
        .weight
        .val()
        .into_data();
    let mut model = pretrain_model(policy);
    let mut optim = AdamWConfig::new().with_weight_decay(0.1).init();
    for _ in 0..3 {
        let out = TrainStep::step(&model, pretrain_batch(&fx, &device));
        model = TrainStep::optimize(model, &mut optim, 1e-2.into(), out.grads);
    }
    let p = &model.policy;
    assert_eq!(
        param_values(&p.vision_encoder.clone().valid()),
        vit0,
        "ViT changed"
    );
    assert_eq!(
        p.vision_tokenizer.latents.val().into_data(),
        res0,
        "frozen resampler changed"
    );
    assert_eq!(
        p.lang_model.model.embed_tokens.weight.val().into_data(),
        emb0,
        "frozen embeddings changed"
    );
    assert_ne!(
        p.lang_model.model.layers[0]
            .self_attn
            .qkv_proj
            .weight
            .val()
            .into_data(),
        qkv0,
        "LM did not train"
    );
}

#[test]
fn lora_has_the_expected_trainable_count_and_merging_reproduces_the_adapted_forward() {
    let device = Device::flex().autodiff();
    let fx = read_fixture();
    let lora = LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        targets: vec!["qkv_proj".into(), "down_proj".into()],
    };
    let freeze = FreezeSection {
        vision: true,
        resampler: true,
        lm: true,
        embeddings: true,
    };
    let policy = loader::load_xgenmm_dir(&fixture("xgenmm"), &device, LoadOptions::default())
        .unwrap()
        .train();
    let policy = set_trainable(policy, &freeze, Some(&lora), &device);
    // 2 layers; qkv_proj 64 -> 192, down_proj 128 -> 64: r * (d_in + d_out) each.
    let expected = 2 * (4 * (64 + 192) + 4 * (128 + 64));
    assert_eq!(trainable_params(&policy), expected);

    // Train a couple of steps so B is non-zero, then merge.
    let mut model = pretrain_model(policy);
    let mut optim = AdamWConfig::new().init();
    for _ in 0..2 {
        let out = TrainStep::step(&model, pretrain_batch(&fx, &device));
        model = TrainStep::optimize(model, &mut optim, 5e-2.into(), out.grads);
    }
    let adapted = model.policy.clone().valid();
    let merged = adapted.clone().merge_lora();
    assert!(!merged.lang_model.has_lora());
    let plain = Device::flex();
    let batch = pretrain_batch(&fx, &plain);
    let a = adapted
        .forward(&batch.input)
        .unwrap()
        .logits
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap();
    let b = merged
        .forward(&batch.input)
        .unwrap()
        .logits
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap();
    let base = adapted
        .clone()
        .without_lora()
        .forward(&batch.input)
        .unwrap()
        .logits
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap();
    assert!(
        max_diff(&a, &b) <= 1e-4,
        "merged forward differs by {}",
        max_diff(&a, &b)
    );
    assert!(max_diff(&a, &base) > 1e-3, "the adapters had no effect");
}

#[test]
fn global_norm_clipping_scales_all_gradients_together() {
    let device = Device::flex().autodiff();
    let fx = read_fixture();
    let policy = load_policy(&device);
    let model = pretrain_model(policy);
    let out = TrainStep::step(&model, pretrain_batch(&fx, &device));
    let mut grads = out.grads;
    let norm = global_grad_norm(&model, &grads);
    // Direct computation.
    let keys = fx.meta["grad_keys"].as_array().unwrap();
    let before: Vec<Vec<f32>> = keys
        .iter()
        .map(|k| grad_of(&model.policy, &grads, k.as_str().unwrap()))
        .collect();
    let target = norm / 4.0;
    scale_grads(&model, &mut grads, target / norm);
    let after_norm = global_grad_norm(&model, &grads);
    assert!(
        (after_norm - target).abs() <= 1e-4 * target,
        "{after_norm} vs {target}"
    );
    for (k, b) in keys.iter().zip(before) {
        let a = grad_of(&model.policy, &grads, k.as_str().unwrap());
        let ratio = (target / norm) as f32;
        assert!(
            a.iter()
                .zip(&b)
                .all(|(x, y)| (x - y * ratio).abs() <= 1e-6 + 1e-5 * y.abs())
        );
    }
}

#[test]
fn bf16_mixed_precision_keeps_f32_master_gradients() {
    let device = Device::flex().autodiff();
    let fx = read_fixture();
    let policy = load_policy(&device);
    let mut s = settings(Stage::Pretrain, Arc::new(StepGuard::new(3)));
    s.compute_dtype = Some(DType::BF16);
    let model = StageModel::new(policy.clone(), None, s);
    let out = TrainStep::step(&model, pretrain_batch(&fx, &device));
    let w = &model.policy.lang_model.lm_head.weight;
    assert_eq!(w.val().dtype(), DType::F32, "master weights stay f32");
    let g = out
        .grads
        .get::<2>(w.id)
        .expect("gradient reaches the f32 master weight");
    assert_eq!(g.dtype(), DType::F32);
    // The bf16 loss is close to the f32 reference loss.
    let want = fx.tensors["loss"].0[0] as f64;
    assert!(
        (out.item.loss_value() - want).abs() < 0.05 * want.abs().max(1.0),
        "{} vs {want}",
        out.item.loss_value()
    );
    // And the gradient is close to the f32 one.
    let f32_model = pretrain_model(policy);
    let out32 = TrainStep::step(&f32_model, pretrain_batch(&fx, &device));
    let a = g.into_data().try_into_vec_as::<f32>().unwrap();
    let b = out32
        .grads
        .get::<2>(f32_model.policy.lang_model.lm_head.weight.id)
        .unwrap()
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap();
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(
        max_diff(&a, &b) <= 0.05 * scale,
        "bf16 grad too far from f32: {} (scale {scale})",
        max_diff(&a, &b)
    );
}

#[test]
fn non_finite_losses_are_skipped_then_stop_the_run() {
    let device = Device::flex().autodiff();
    let fx = read_fixture();
    let guard = Arc::new(StepGuard::new(2));
    let policy = load_policy(&device);
    // Poison a weight so every loss is NaN.
    let id = policy.lang_model.lm_head.weight.id;
    let policy = policy.map(&mut Nudge {
        id,
        index: 0,
        eps: f64::NAN,
    });
    let model = StageModel::new(policy, None, settings(Stage::Pretrain, guard.clone()));
    let out = TrainStep::step(&model, pretrain_batch(&fx, &device));
    assert!(out.item.skipped && out.grads.is_empty());
    assert!(guard.failure().is_none());
    let _ = TrainStep::step(&model, pretrain_batch(&fx, &device));
    assert_eq!(guard.skipped(), 2);
    assert!(guard.failure().unwrap().contains("non-finite"));
}

/// DPO with the extra rejected answer generated from a noised image: the loss averages the two
/// preference terms, so it differs from the plain pair loss, and gradients still flow.
#[test]
fn dpo_with_noised_image_negatives_adds_a_second_term() {
    use blip3_train::stage::NoisedNegatives;
    let device = Device::flex().autodiff();
    let fx = read_fixture();
    let policy = load_policy(&device);
    let reference = frozen_copy(policy.clone());
    let mut s = settings(Stage::Dpo, Arc::new(StepGuard::new(3)));
    s.noised_negatives = Some(NoisedNegatives {
        noise_std: 1.0,
        max_tokens: 4,
        end_id: 97,
        eos_id: 98,
        pad_id: 99,
    });
    let guard = s.guard.clone();
    let model = StageModel::new(policy, Some(reference), s);
    let out = TrainStep::step(&model, dpo_batch(&fx, &device));
    assert!(guard.failure().is_none(), "{:?}", guard.failure());
    assert!(!out.item.skipped);
    let plain = fx.tensors["dpo_loss"].0[0] as f64;
    let loss = out.item.loss_value();
    assert!(
        loss.is_finite() && (loss - plain).abs() > 1e-4,
        "{loss} vs plain {plain}"
    );
    let w = &model.policy.lang_model.lm_head.weight;
    assert!(out.grads.get::<2>(w.id).is_some());
}

/// A released-style bf16 checkpoint used as a stage's `init` is trained with f32 master weights
/// (so gradients and AdamW state are f32), not in bf16.
#[test]
fn bf16_checkpoint_init_trains_with_f32_master_weights() {
    let device = Device::flex();
    let (model, _) = blip3_train::run::initial_model("tiny", "tiny", &device).expect("tiny");
    let dir = tempfile::tempdir().expect("tempdir");
    loader::export_hf(&model, dir.path(), Some(DType::BF16)).expect("export");
    let spec = dir.path().to_string_lossy().to_string();
    let (loaded, _) = blip3_train::run::initial_model(&spec, "tiny", &device).expect("load");
    let dtypes = param_dtypes(&loaded);
    assert!(!dtypes.is_empty());
    assert!(dtypes.iter().all(|d| *d == DType::F32), "{dtypes:?}");
}
