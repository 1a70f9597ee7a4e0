//! Data parallelism through burn-train's multi-device strategy: two flex devices with batch `b`
//! each end with the same weights as one device with batch `2b` (within 1e-5).
//!
//! The loss is a mean over label tokens per device batch and the devices' gradients are averaged,
//! as in the reference (per-rank mean, DDP averaging), which equals the doubled batch exactly when
//! the halves hold equally many label tokens; every answer here has the same label count.

use std::path::Path;

use blip3_data::sample::{Origin, Role, Turn};
use blip3_data::template::ChatTemplate;
use blip3_data::tokenizer::Blip3Tokenizer;
use blip3_model::loader::load_checkpoint;
use blip3_model::params::{max_param_diff, param_values};
use blip3_train::config::{Stage, TrainConfig};
use blip3_train::{RunOptions, train};
use burn::prelude::*;

/// Answers whose conversations carry the same number of label tokens (checked below).
const ANSWERS: [&str; 4] = ["red", "ring", "yes", "no"];
const QUESTION: &str = "<image>\nWhat is it?";

fn corpus(dir: &Path) {
    let tok = Blip3Tokenizer::tiny().unwrap();
    let lens: Vec<usize> = ANSWERS
        .iter()
        .map(|a| {
            let turns = [
                Turn {
                    role: Role::User,
                    text: QUESTION.into(),
                },
                Turn {
                    role: Role::Assistant,
                    text: a.to_string(),
                },
            ];
            let e = ChatTemplate::default()
                .encode_conversation(&tok, &turns, &[8], &Origin::default())
                .unwrap();
            e.labels.iter().filter(|&&l| l != -100).count()
        })
        .collect();
    assert!(
        lens.iter().all(|&l| l == lens[0]),
        "answers must have equal label counts: {lens:?}"
    );
    std::fs::create_dir_all(dir.join("img")).unwrap();
    let mut rows = Vec::new();
    for i in 0..32 {
        let c = i % 4;
        let rgb = [[220, 30, 30], [30, 200, 40], [30, 40, 220], [230, 220, 30]][c];
        let (w, h) = (40 + (i * 7) % 30, 36 + (i * 5) % 20);
        image::RgbImage::from_pixel(w as u32, h as u32, image::Rgb(rgb))
            .save(dir.join(format!("img/{i}.png")))
            .unwrap();
        rows.push(serde_json::json!({
            "id": format!("s{i}"),
            "image": format!("img/{i}.png"),
            "conversations": [
                {"from": "human", "value": QUESTION},
                {"from": "gpt", "value": ANSWERS[c]}
            ]
        }));
    }
    std::fs::write(dir.join("sft.json"), serde_json::to_string(&rows).unwrap()).unwrap();
    std::fs::write(
        dir.join("mix.yaml"),
        "seed: 5\nsources:\n  - name: colors\n    kind: llava\n    paths: [\"sft.json\"]\n    image_root: \".\"\n    weight: 1\n",
    )
    .unwrap();
}

fn weights(dir: &Path) -> Vec<Vec<f32>> {
    param_values(&load_checkpoint(dir, &Device::flex()).unwrap())
}

fn config(dir: &Path, out: &str, devices: usize, batch: usize) -> TrainConfig {
    let mut cfg = TrainConfig::new(Stage::Sft, dir.join("mix.yaml"));
    cfg.out_dir = dir.join(out);
    cfg.seed = 9;
    cfg.data.batch_size = batch;
    cfg.data.num_workers = 1;
    cfg.data.max_len = 256;
    cfg.data.length_grouping = false;
    cfg.optim.lr = 1e-3;
    cfg.optim.total_steps = 6;
    cfg.optim.warmup_steps = 1;
    cfg.optim.grad_clip = Some(1.0);
    cfg.checkpoint.every_steps = 3;
    cfg.checkpoint.export_hf = false;
    cfg.monitor.renderer = blip3_train::config::Renderer::Quiet;
    if devices > 1 {
        cfg.devices.count = devices;
        cfg.devices.strategy = blip3_train::config::Strategy::Multi;
    }
    cfg
}

/// The initial weights of the runs (same seed, same preset).
fn weights_of_initial() -> Vec<Vec<f32>> {
    let tok = Blip3Tokenizer::tiny().unwrap();
    let device = Device::flex();
    device.seed(9);
    param_values(&blip3_model::XGenMMConfig::tiny(tok.initial_len()).init(&device))
}

#[test]
fn two_flex_devices_equal_one_device_with_the_doubled_batch() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path();
    corpus(tmp);
    let one = train(&config(tmp, "one", 1, 4), &RunOptions::default()).unwrap();
    let two = train(&config(tmp, "two", 2, 2), &RunOptions::default()).unwrap();
    assert_eq!(one.steps, 6);
    assert_eq!(two.steps, 6);
    let (a, b) = (weights(&one.final_dir), weights(&two.final_dir));
    let worst = max_param_diff(&a, &b).expect("same parameter shapes");
    assert!(worst <= 1e-5, "multi-device weights differ by {worst}");
    // Training did move the weights (a tiny learning rate would make the comparison vacuous).
    let moved = max_param_diff(&weights_of_initial(), &a).expect("same parameter shapes");
    assert!(moved > 1e-3, "weights moved by only {moved}");
}
