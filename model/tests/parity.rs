//! Parity with the PyTorch reference (fixtures made by
//! `tests/fixtures/model/make_model_fixtures.py`): SigLIP (native and interpolated positions),
//! the resampler with a partly masked media sequence, Phi-3 with left padding, a sliding window
//! and LongRoPE, the KV cache against full recomputation, the composite with interleaved any-res
//! images, and greedy generation. All in f32 with max |diff| <= 1e-4.

mod common;

use blip3_model::loader::{self, CheckpointKind, LoadOptions, WeightSet};
use blip3_model::{
    GenerationConfig, ImageInput, KvCache, LogitsFor, MultimodalInput, PerceiverConfig,
};
use burn::prelude::*;
use common::*;

const TOL: f32 = 1e-4;

fn check_siglip(device: &Device) {
    let m = loader::load_siglip_dir(&fixture("siglip"), device, LoadOptions::default()).unwrap();
    let io = read("siglip_io.safetensors");
    for case in ["native", "odd"] {
        let x = io[&format!("{case}_pixels")].tensor::<4>(device);
        let y = values(m.forward(x));
        let d = max_abs_diff(&y, &io[&format!("{case}_out")].data);
        assert!(d <= TOL, "siglip {case}: max diff {d}");
    }
}

#[test]
fn siglip_matches_hf() {
    check_siglip(&Device::flex());
}

fn check_resampler(device: &Device) {
    let cfg = PerceiverConfig {
        dim: 64,
        dim_inner: 48,
        depth: 2,
        heads: 4,
        dim_head: 16,
        num_latents: 8,
        ff_mult: 4,
        layer_norm_eps: 1e-5,
    };
    let mut r = cfg.init(device);
    let ws = WeightSet::open_file(&fixture("resampler/model.safetensors")).unwrap();
    loader::load_weights(
        &mut r,
        &ws,
        CheckpointKind::Perceiver,
        LoadOptions::default(),
    )
    .unwrap();
    let io = read("resampler_io.safetensors");
    let media = io["media"].tensor::<3>(device);
    let valid: Vec<bool> = io["valid"].data.iter().map(|&v| v != 0.0).collect();
    let valid = Tensor::<2, Bool>::from_data(TensorData::new(valid, [3, 16]), device);
    let y = values(r.forward(media.clone(), Some(valid)));
    let d = max_abs_diff(&y, &io["out"].data);
    assert!(d <= TOL, "resampler masked: max diff {d}");
    let y = values(r.forward(media, None));
    let d = max_abs_diff(&y, &io["out_nomask"].data);
    assert!(d <= TOL, "resampler unmasked: max diff {d}");
    // The mask matters: the masked and unmasked outputs differ.
    assert!(max_abs_diff(&io["out"].data, &io["out_nomask"].data) > 1e-2);
}

#[test]
fn resampler_matches_reference_with_mask() {
    check_resampler(&Device::flex());
}

fn mask_rows(mask: &Arr) -> Vec<Vec<bool>> {
    let (b, t) = (mask.shape[0], mask.shape[1]);
    (0..b)
        .map(|i| (0..t).map(|j| mask.data[i * t + j] != 0.0).collect())
        .collect()
}

fn ids_tensor(a: &Arr, device: &Device) -> Tensor<2, Int> {
    Tensor::from_data(TensorData::new(a.ints(), a.shape.clone()), device)
}

/// Compares `[B, T, V]` logits at the positions where `mask` is true.
fn compare_masked(ours: &[f32], reference: &[f32], mask: &[Vec<bool>], v: usize) -> f32 {
    let t = mask[0].len();
    let mut worst = 0.0f32;
    for (b, row) in mask.iter().enumerate() {
        for (j, &m) in row.iter().enumerate() {
            if m {
                let o = (b * t + j) * v;
                worst = worst.max(max_abs_diff(&ours[o..o + v], &reference[o..o + v]));
            }
        }
    }
    worst
}

fn check_phi3(device: &Device) {
    let m = loader::load_phi3_dir(&fixture("phi3"), device, LoadOptions::default()).unwrap();
    let io = read("phi3_io.safetensors");
    let mask = mask_rows(&io["mask"]);
    let logits = m
        .forward_ids(ids_tensor(&io["ids"], device), &mask, None, LogitsFor::All)
        .unwrap();
    let v = logits.dims()[2];
    let d = compare_masked(&values(logits), &io["logits"].data, &mask, v);
    assert!(d <= TOL, "phi3 left padding: max diff {d}");
}

#[test]
fn phi3_left_padding_matches_hf() {
    check_phi3(&Device::flex());
}

#[test]
fn phi3_sliding_window_matches_hf() {
    let device = Device::flex();
    let m =
        loader::load_phi3_dir(&fixture("phi3_window"), &device, LoadOptions::default()).unwrap();
    let io = read("phi3_window_io.safetensors");
    let mask = vec![vec![true; 10]];
    let y = values(
        m.forward_ids(ids_tensor(&io["ids"], &device), &mask, None, LogitsFor::All)
            .unwrap(),
    );
    let d = max_abs_diff(&y, &io["logits"].data);
    assert!(d <= TOL, "sliding window: max diff {d}");
}

#[test]
fn phi3_longrope_matches_hf_beyond_original_length() {
    let device = Device::flex();
    let m =
        loader::load_phi3_dir(&fixture("phi3_longrope"), &device, LoadOptions::default()).unwrap();
    let io = read("phi3_longrope_io.safetensors");
    for (ids, logits, t) in [
        ("ids_long", "logits_long", 12),
        ("ids_short", "logits_short", 6),
    ] {
        let mask = vec![vec![true; t]];
        let y = values(
            m.forward_ids(ids_tensor(&io[ids], &device), &mask, None, LogitsFor::All)
                .unwrap(),
        );
        let d = max_abs_diff(&y, &io[logits].data);
        assert!(d <= TOL, "longrope {ids}: max diff {d}");
    }
}

/// Prefill with the KV cache, then feed the reference's generated tokens one at a time: every
/// step's logits must equal a full recompute (HF's, over prompt + tokens so far), and the greedy
/// choice must reproduce HF's 20 generated ids.
#[test]
fn kv_cache_equals_full_recompute_and_greedy_matches_hf() {
    let device = Device::flex();
    let m = loader::load_phi3_dir(&fixture("phi3"), &device, LoadOptions::default()).unwrap();
    let io = read("phi3_io.safetensors");
    let mask = mask_rows(&io["mask"]);
    let (b, t) = (mask.len(), mask[0].len());
    let generated = io["generated"].ints();
    let n_new = io["generated"].shape[1];
    let full = &io["full_logits"];
    let v = full.shape[2];
    let s_total = full.shape[1];
    let at = |row: usize, pos: usize| {
        &full.data[(row * s_total + pos) * v..(row * s_total + pos + 1) * v]
    };

    let mut cache = KvCache::new();
    let mut logits = m
        .forward_ids(
            ids_tensor(&io["ids"], &device),
            &mask,
            Some(&mut cache),
            LogitsFor::Last,
        )
        .unwrap();
    let mut ours_greedy = vec![Vec::new(); b];
    for step in 0..n_new {
        let l = values(logits.clone());
        for row in 0..b {
            let mine = &l[row * v..(row + 1) * v];
            let d = max_abs_diff(mine, at(row, t + step - 1));
            assert!(d <= TOL, "step {step} row {row}: cached vs full diff {d}");
            let arg = mine
                .iter()
                .enumerate()
                .fold(0, |best, (i, x)| if *x > mine[best] { i } else { best });
            ours_greedy[row].push(arg as i64);
        }
        let next: Vec<i64> = (0..b).map(|row| generated[row * n_new + step]).collect();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(next, [b, 1]), &device);
        logits = m
            .forward_ids(ids, &vec![vec![true]; b], Some(&mut cache), LogitsFor::Last)
            .unwrap();
    }
    for row in 0..b {
        assert_eq!(
            ours_greedy[row],
            generated[row * n_new..(row + 1) * n_new].to_vec(),
            "row {row}"
        );
    }
    assert_eq!(cache.len(), t + n_new - 1 + 1);
}

struct CompositeCase {
    input: MultimodalInput,
    logits: Arr,
    mask: Vec<Vec<bool>>,
    generated: Vec<i64>,
    n_new: usize,
}

fn composite_case(device: &Device) -> CompositeCase {
    let io = read("xgenmm_io.safetensors");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("xgenmm_io.json")).unwrap()).unwrap();
    let mut input = MultimodalInput::default();
    for s in meta["samples"].as_array().unwrap() {
        input.input_ids.push(
            s["input_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect(),
        );
        let imgs = s["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|im| ImageInput {
                pixels: io[im["tensor"].as_str().unwrap()].tensor::<4>(device),
                grid: im["grid"].as_array().map(|g| {
                    (
                        g[0].as_u64().unwrap() as usize,
                        g[1].as_u64().unwrap() as usize,
                    )
                }),
                original_size: (
                    im["original_size"][0].as_u64().unwrap() as usize,
                    im["original_size"][1].as_u64().unwrap() as usize,
                ),
            })
            .collect();
        input.images.push(imgs);
    }
    let gen_arr = &io["generated"];
    CompositeCase {
        input,
        mask: mask_rows(&io["mask"]),
        logits: Arr {
            data: io["logits"].data.clone(),
            shape: io["logits"].shape.clone(),
        },
        generated: gen_arr.ints(),
        n_new: gen_arr.shape[1],
    }
}

fn check_composite(device: &Device) {
    let model =
        loader::load_xgenmm_dir(&fixture("xgenmm"), device, LoadOptions::default()).unwrap();
    let case = composite_case(device);
    let out = model.forward(&case.input).unwrap();
    assert_eq!(out.fused.mask, case.mask, "fused attention mask");
    assert_eq!(
        out.logits.dims().to_vec(),
        case.logits.shape,
        "logits shape"
    );
    let v = case.logits.shape[2];
    let d = compare_masked(&values(out.logits), &case.logits.data, &case.mask, v);
    assert!(d <= TOL, "composite: max diff {d}");
    // Vision tokens inserted: (1+2)*8 + (1+3)*8 and (1+4)*8 + 8.
    assert_eq!(out.fused.vision_tokens, vec![56, 48]);

    let cfg = GenerationConfig {
        max_new_tokens: case.n_new,
        pad_id: model.special_tokens().pad,
        ..Default::default()
    };
    let mut streamed = vec![Vec::new(); 2];
    let generated = model
        .generate(&case.input, &cfg, |row, tok| {
            streamed[row].push(tok);
            true
        })
        .unwrap();
    for (row, g) in generated.iter().enumerate() {
        let want: Vec<u32> = case.generated[row * case.n_new..(row + 1) * case.n_new]
            .iter()
            .map(|&x| x as u32)
            .collect();
        assert_eq!(g.token_ids, want, "greedy row {row}");
        assert_eq!(streamed[row], want, "streamed row {row}");
    }
}

#[test]
fn composite_logits_and_greedy_generation_match_reference() {
    check_composite(&Device::flex());
}

/// The same parity checks on every GPU device that works here: wgpu where an adapter exists (CI
/// may install Mesa's lavapipe), and Vulkan (SPIR-V) and CUDA in builds with those features.
#[test]
fn parity_on_wgpu_where_available() {
    for (name, device) in gpu_devices() {
        eprintln!("parity on {name}");
        check_siglip(&device);
        check_resampler(&device);
        check_phi3(&device);
        check_composite(&device);
        eprintln!("parity on {name}: ok");
    }
}

/// The same parity checks with every linear layer's product sent through the vendor-GEMM
/// extension (`BLIP3_MATMUL=extension` for this thread: Burn's matmul inside the extension on
/// flex and wgpu, cuBLAS on CUDA), on flex and every GPU device here: the model's routing
/// (`model/src/linear.rs`) computes the same layers, and it was taken.
#[test]
fn parity_with_products_through_the_matmul_extension() {
    use blip3_shaders::gemm::{MatmulPath, extension_calls, with_path};
    let devices = std::iter::once(("flex", Device::flex())).chain(gpu_devices());
    for (name, device) in devices {
        let before = extension_calls();
        with_path(MatmulPath::Extension, || {
            check_siglip(&device);
            check_resampler(&device);
            check_phi3(&device);
            check_composite(&device);
        });
        let calls = extension_calls() - before;
        eprintln!("parity through the extension on {name}: ok ({calls} products)");
        assert!(
            calls > 50,
            "{name}: only {calls} products went through the extension"
        );
    }
}

/// A software Vulkan adapter (lavapipe/llvmpipe, what CI has) is recognised as one, so the CLI
/// can warn that `--device wgpu` there is slower than `flex`.
#[test]
fn software_wgpu_adapters_are_recognised() {
    let Some(device) = wgpu_device() else { return };
    let Some(id) = device.identity() else {
        panic!("a wgpu device reports its identity")
    };
    let software = ["llvmpipe", "lavapipe", "swiftshader"]
        .iter()
        .any(|s| id.name.to_lowercase().contains(s));
    let found = blip3_model::device::software_adapter(&device);
    assert_eq!(found.is_some(), software || id.physical.is_none(), "{id:?}");
    if software {
        assert_eq!(found.as_deref(), Some(id.name.as_str()));
    }
}
