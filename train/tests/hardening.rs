//! `blip3 train` against bad input, interruption and misuse (issue 9): bad numbers in the config,
//! an output directory that holds a run or is in use, a run whose step count is not a multiple of
//! the checkpoint interval, a killed run's leftovers, a corrupt newest checkpoint and a resume with
//! changed settings; and a run with per-decoder-layer checkpointing against one without. Each
//! runs the tiny model for a few steps on a small SFT corpus.

use std::path::Path;

use blip3_model::loader::load_checkpoint;
use blip3_model::params::{max_param_diff, param_values};
use blip3_train::checkpoint::{read_state, record_path, state_path};
use blip3_train::config::{Stage, TrainConfig};
use blip3_train::monitor::LogRow;
use blip3_train::run::RunState;
use blip3_train::{RunOptions, TrainError, train};
use burn::prelude::*;

/// Runs [`train`] while holding a process-wide lock: a run seeds Flex's process-global generator
/// and then initialises its model, so two runs at once (tests run in parallel) would draw each
/// other's numbers and start from different weights.
fn train_serial(
    cfg: &TrainConfig,
    options: &RunOptions,
) -> Result<blip3_train::run::TrainSummary, TrainError> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    train(cfg, options)
}

const RESUME: RunOptions = RunOptions {
    resume: true,
    overwrite: false,
};

/// 32 single-image conversations (one colour per answer) and a recipe over them.
fn corpus(dir: &Path) {
    std::fs::create_dir_all(dir.join("img")).unwrap();
    let answers = ["red", "green", "blue", "yellow"];
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
                {"from": "human", "value": "<image>\nWhat colour is it?"},
                {"from": "gpt", "value": answers[c]}
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

fn config(dir: &Path, out: &str, steps: usize, every: usize) -> TrainConfig {
    let mut cfg = TrainConfig::new(Stage::Sft, dir.join("mix.yaml"));
    cfg.out_dir = dir.join(out);
    cfg.seed = 9;
    cfg.data.batch_size = 2;
    cfg.data.num_workers = 1;
    cfg.data.max_len = 256;
    cfg.data.length_grouping = false;
    cfg.optim.lr = 1e-3;
    cfg.optim.total_steps = steps;
    cfg.optim.warmup_steps = 1;
    cfg.checkpoint.every_steps = every;
    cfg.checkpoint.keep_last = 10;
    cfg.checkpoint.export_hf = false;
    cfg.monitor.renderer = blip3_train::config::Renderer::Quiet;
    cfg
}

fn weights(dir: &Path) -> Vec<Vec<f32>> {
    param_values(&load_checkpoint(dir, &Device::flex()).unwrap())
}

fn train_rows(out: &Path) -> Vec<LogRow> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<LogRow>(l).unwrap())
        .filter(|r| r.split == "train")
        .collect()
}

/// Copies a finished run's directory as the state a run killed after checkpoint `keep` would
/// have left: later checkpoints, final model and summary gone, the metric log (which a killed
/// run writes up to the kill) kept in full.
fn killed_copy(from: &Path, to: &Path, keep: usize) {
    let ck = to.join("checkpoints");
    std::fs::create_dir_all(&ck).unwrap();
    for e in std::fs::read_dir(from.join("checkpoints")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), ck.join(e.file_name())).unwrap();
    }
    for name in ["metrics.jsonl", "metrics.csv", "config.toml"] {
        std::fs::copy(from.join(name), to.join(name)).unwrap();
    }
    for w in keep + 1..=20 {
        for r in ["model", "optim", "scheduler"] {
            let _ = std::fs::remove_file(record_path(&ck, r, w));
        }
        let _ = std::fs::remove_file(state_path(&ck, w));
    }
}

#[test]
fn bad_numbers_in_the_config_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("stage.toml");
    let write = |extra: &str| {
        std::fs::write(
            &file,
            format!("stage = \"sft\"\n[data]\ntrain = \"mix.yaml\"\n{extra}"),
        )
        .unwrap();
    };
    write("num_workers = 100000\n");
    let err = TrainConfig::load(&file).unwrap_err().to_string();
    assert!(err.contains("data.num_workers"), "{err}");
    assert!(err.contains("256"), "the cap is stated: {err}");
    assert!(err.contains("stage.toml"), "the file is named: {err}");
    write("num_workers = 256\n");
    TrainConfig::load(&file).unwrap();

    write("[optim]\nlr = 0.002\nmin_lr = 0.5\n");
    let err = TrainConfig::load(&file).unwrap_err().to_string();
    assert!(err.contains("optim.min_lr"), "{err}");
    write("[optim]\nlr = 0.002\nmin_lr = -1.0\n");
    assert!(TrainConfig::load(&file).is_err());
    write("[optim]\nlr = 0.002\nmin_lr = 0.002\n");
    TrainConfig::load(&file).unwrap();
}

#[test]
fn a_short_last_window_stops_at_total_steps_and_a_killed_run_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path();
    corpus(tmp);
    // 5 steps in windows of 2: the third window has one step.
    let a = train_serial(&config(tmp, "a", 5, 2), &RunOptions::default()).unwrap();
    assert_eq!(a.steps, 5);
    let ck = tmp.join("a/checkpoints");
    let last: RunState = read_state(&ck, 3).unwrap();
    assert_eq!(last.steps, 5);
    assert!(!state_path(&ck, 4).exists());
    let steps: Vec<usize> = train_rows(&tmp.join("a")).iter().map(|r| r.step).collect();
    assert_eq!(steps, vec![1, 2, 3, 4, 5]);

    // Killed after checkpoint 1, mid-way through writing checkpoint 2.
    let b = tmp.join("b");
    killed_copy(&tmp.join("a"), &b, 1);
    let stale = b.join("checkpoints/.model-2.bpk.tmp-999999");
    std::fs::write(&stale, b"half a checkpoint").unwrap();
    let s = train_serial(&config(tmp, "b", 5, 2), &RESUME).unwrap();
    assert_eq!(s.resumed_from, Some(1));
    assert_eq!(s.steps, 5);
    assert!(
        !stale.exists(),
        "the killed run's temporary file is removed"
    );
    let steps: Vec<usize> = train_rows(&b).iter().map(|r| r.step).collect();
    assert_eq!(steps, vec![1, 2, 3, 4, 5], "the log holds each step once");
    let worst = max_param_diff(&weights(&a.final_dir), &weights(&s.final_dir)).unwrap();
    assert_eq!(worst, 0.0, "resumed weights differ by {worst}");
}

/// `precision.checkpoint_layers` through the whole run (config, stage settings, burn-train's
/// loop): the same weights as the run without it.
#[test]
fn a_run_with_layer_checkpointing_ends_with_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path();
    corpus(tmp);
    let plain = train_serial(&config(tmp, "plain", 4, 2), &RunOptions::default()).unwrap();
    let mut cfg = config(tmp, "layers", 4, 2);
    cfg.precision.checkpoint_layers = true;
    let layered = train_serial(&cfg, &RunOptions::default()).unwrap();
    assert_eq!(layered.steps, 4);
    let worst = max_param_diff(&weights(&plain.final_dir), &weights(&layered.final_dir)).unwrap();
    eprintln!("largest weight difference {worst:.2e}");
    assert!(worst <= 1e-5, "weights differ by {worst}");
    let (a, b) = (
        train_rows(&tmp.join("plain")),
        train_rows(&tmp.join("layers")),
    );
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        let (lx, ly) = (x.metrics["Loss"], y.metrics["Loss"]);
        assert!(
            (lx - ly).abs() <= 1e-5,
            "step {}: loss {lx} vs {ly}",
            x.step
        );
    }
}

#[test]
fn resume_falls_back_past_a_corrupt_newest_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path();
    corpus(tmp);
    let a = train_serial(&config(tmp, "a", 4, 1), &RunOptions::default()).unwrap();
    let b = tmp.join("b");
    killed_copy(&tmp.join("a"), &b, 4);
    // The newest model file truncated (a full disk, say), the one before corrupted in place.
    let m4 = record_path(&b.join("checkpoints"), "model", 4);
    let len = std::fs::metadata(&m4).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&m4)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let o3 = record_path(&b.join("checkpoints"), "optim", 3);
    let mut bytes = std::fs::read(&o3).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&o3, bytes).unwrap();

    let s = train_serial(&config(tmp, "b", 4, 1), &RESUME).unwrap();
    assert_eq!(s.resumed_from, Some(2));
    let passed: Vec<usize> = s.rejected_checkpoints.iter().map(|r| r.window).collect();
    assert_eq!(passed, vec![4, 3]);
    assert!(s.rejected_checkpoints[0].reason.contains("model-4.bpk"));
    assert!(s.rejected_checkpoints[1].reason.contains("optim-3.bpk"));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(b.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["rejected_checkpoints"][0]["window"], 4);
    let worst = max_param_diff(&weights(&a.final_dir), &weights(&s.final_dir)).unwrap();
    assert_eq!(worst, 0.0, "resumed weights differ by {worst}");

    // With no verifiable checkpoint left, --resume is an error naming the files, not a panic.
    for w in 1..=2 {
        std::fs::write(record_path(&b.join("checkpoints"), "scheduler", w), b"").unwrap();
    }
    for w in 3..=4 {
        std::fs::remove_file(state_path(&b.join("checkpoints"), w)).unwrap();
    }
    let err = train_serial(&config(tmp, "b", 4, 1), &RESUME).unwrap_err();
    assert!(matches!(err, TrainError::Checkpoint { .. }), "{err}");
    assert!(err.to_string().contains("scheduler-2.bpk"), "{err}");
}

#[test]
fn resume_with_settings_that_break_exactness_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path();
    corpus(tmp);
    let cfg = config(tmp, "a", 2, 1);
    train_serial(&cfg, &RunOptions::default()).unwrap();
    let before = std::fs::read_to_string(tmp.join("a/config.toml")).unwrap();

    let mut changed = cfg.clone();
    changed.data.batch_size = 4;
    let err = train_serial(&changed, &RESUME).unwrap_err().to_string();
    assert!(err.contains("data.batch_size (was 2, now 4)"), "{err}");
    assert!(err.contains("state-2.json"), "{err}");

    let mut changed = cfg.clone();
    changed.seed = 10;
    changed.optim.grad_accum = 2;
    let err = train_serial(&changed, &RESUME).unwrap_err().to_string();
    assert!(err.contains("seed"), "{err}");
    assert!(err.contains("optim.grad_accum"), "{err}");

    let recipe = std::fs::read_to_string(tmp.join("mix.yaml")).unwrap();
    std::fs::write(tmp.join("mix.yaml"), recipe.replace("seed: 5", "seed: 6")).unwrap();
    let err = train_serial(&cfg, &RESUME).unwrap_err().to_string();
    assert!(err.contains("data.train"), "{err}");
    std::fs::write(tmp.join("mix.yaml"), recipe).unwrap();

    // The refused runs left the run as it was.
    assert_eq!(
        std::fs::read_to_string(tmp.join("a/config.toml")).unwrap(),
        before
    );
    // Settings that do not affect the result may change.
    let mut fine = cfg.clone();
    fine.data.num_workers = 2;
    fine.checkpoint.keep_last = 3;
    fine.monitor.renderer = blip3_train::config::Renderer::Plain;
    let s = train_serial(&fine, &RESUME).unwrap();
    assert_eq!(s.resumed_from, Some(2));
}

#[test]
fn an_output_directory_holding_a_run_is_refused_unless_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path();
    corpus(tmp);
    let cfg = config(tmp, "a", 2, 1);
    train_serial(&cfg, &RunOptions::default()).unwrap();
    let out = tmp.join("a");
    let before = std::fs::read(out.join("final/model.bpk")).unwrap();

    let err = train_serial(&cfg, &RunOptions::default()).unwrap_err();
    assert!(matches!(err, TrainError::OutDir { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&out.display().to_string()), "{msg}");
    assert!(
        msg.contains("--overwrite") && msg.contains("--resume"),
        "{msg}"
    );
    assert_eq!(std::fs::read(out.join("final/model.bpk")).unwrap(), before);

    let both = RunOptions {
        resume: true,
        overwrite: true,
    };
    assert!(train_serial(&cfg, &both).is_err());

    // --overwrite clears the previous run first: one run's rows and checkpoints afterwards.
    let mut other = cfg.clone();
    other.optim.total_steps = 3;
    other.checkpoint.every_steps = 3;
    let s = train(
        &other,
        &RunOptions {
            overwrite: true,
            ..RunOptions::default()
        },
    )
    .unwrap();
    assert_eq!(s.steps, 3);
    let steps: Vec<usize> = train_rows(&out).iter().map(|r| r.step).collect();
    assert_eq!(steps, vec![1, 2, 3]);
    assert!(!state_path(&out.join("checkpoints"), 2).exists());
    assert!(state_path(&out.join("checkpoints"), 1).exists());
}

#[test]
fn a_second_run_in_a_locked_output_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path();
    corpus(tmp);
    let cfg = config(tmp, "a", 2, 1);
    let out = tmp.join("a");
    std::fs::create_dir_all(&out).unwrap();
    // What a running `blip3 train` holds.
    let held = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(out.join(blip3_train::outdir::LOCK_FILE))
        .unwrap();
    held.try_lock().unwrap();
    let err = train_serial(&cfg, &RunOptions::default()).unwrap_err();
    assert!(matches!(err, TrainError::OutDir { .. }), "{err}");
    assert!(err.to_string().contains("another `blip3 train`"), "{err}");
    assert!(
        !out.join("checkpoints").exists(),
        "the refused run wrote nothing"
    );
    drop(held);
    train_serial(&cfg, &RunOptions::default()).unwrap();
}
