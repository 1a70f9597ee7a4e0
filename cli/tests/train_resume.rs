//! Kill-and-resume: a training run killed (SIGKILL) after a checkpoint and resumed with
//! `--resume` ends with the same weights as an uninterrupted run, and the step checkpoints are
//! atomic, step-based and pruned to the last K.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use blip3_data::synth::{SynthConfig, write_corpus};
use blip3_model::loader::load_checkpoint;
use blip3_model::params::{max_param_diff, param_values};
use burn::prelude::*;

fn blip3() -> Command {
    Command::new(env!("CARGO_BIN_EXE_blip3"))
}

fn write_config(dir: &Path, corpus: &Path, out: &str, steps: usize) -> PathBuf {
    let c = corpus.display();
    std::fs::write(
        dir.join("mix.yaml"),
        format!(
            "seed: 3\nsources:\n  - name: captions\n    kind: webdataset\n    paths: [\"{c}/pretrain/captions\"]\n    weight: 2\n  - name: docs\n    kind: jsonl_interleaved\n    paths: [\"{c}/pretrain/interleaved/docs.jsonl\"]\n    image_root: \"{c}/pretrain/interleaved\"\n    weight: 1\n"
        ),
    )
    .unwrap();
    let cfg = dir.join(format!("{out}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "stage = \"pretrain\"\nout_dir = \"{out}\"\nseed = 11\n[data]\ntrain = \"mix.yaml\"\nbatch_size = 4\nnum_workers = 2\nmax_len = 256\n[optim]\nlr = 1e-3\ntotal_steps = {steps}\nwarmup_steps = 5\nweight_decay = 0.01\ngrad_accum = 2\n[checkpoint]\nevery_steps = 10\nkeep_last = 2\nexport_hf = false\n[freeze]\nvision = false\n[monitor]\nrenderer = \"quiet\"\n"
        ),
    )
    .unwrap();
    cfg
}

fn params(dir: &Path) -> Vec<Vec<f32>> {
    param_values(&load_checkpoint(dir, &Device::flex()).unwrap())
}

#[test]
fn killed_and_resumed_run_matches_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus");
    write_corpus(&corpus, &SynthConfig::tiny()).unwrap();
    let steps = 80;

    // Uninterrupted reference run.
    let a = write_config(tmp.path(), &corpus, "a", steps);
    let st = blip3()
        .arg("train")
        .arg("--config")
        .arg(&a)
        .args(["--log", "warn"])
        .status()
        .unwrap();
    assert!(st.success());

    // The same run, killed once its first checkpoint is complete.
    let b = write_config(tmp.path(), &corpus, "b", steps);
    let mut child = blip3()
        .arg("train")
        .arg("--config")
        .arg(&b)
        .args(["--log", "error"])
        .spawn()
        .unwrap();
    let ckpt = tmp.path().join("b/checkpoints");
    let t0 = Instant::now();
    let killed_after = loop {
        if let Some(w) = blip3_train::checkpoint::latest_complete(&ckpt) {
            child.kill().unwrap();
            child.wait().unwrap();
            break w;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "no checkpoint appeared"
        );
        if let Some(st) = child.try_wait().unwrap() {
            panic!("run ended ({st}) before it could be killed");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(
        killed_after < steps / 10,
        "killed after window {killed_after}: nothing left to resume"
    );
    assert!(
        !tmp.path().join("b/final").exists(),
        "the killed run must not have finished"
    );

    let st = blip3()
        .arg("train")
        .arg("--config")
        .arg(&b)
        .arg("--resume")
        .args(["--log", "warn"])
        .status()
        .unwrap();
    assert!(st.success());
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("b/summary.json")).unwrap())
            .unwrap();
    assert!(summary["resumed_from"].as_u64().unwrap() >= killed_after as u64);
    assert_eq!(summary["steps"], steps);
    // The killed run's log rows after the checkpoint are gone: every step is logged once.
    let mut logged: Vec<u64> = std::fs::read_to_string(tmp.path().join("b/metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["split"] == "train")
        .map(|r| r["step"].as_u64().unwrap())
        .collect();
    logged.dedup();
    assert_eq!(logged, (1..=steps as u64).collect::<Vec<_>>());
    // No temporary file of the killed run is left.
    for e in std::fs::read_dir(tmp.path().join("b/checkpoints")).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().to_string();
        assert!(!name.contains(".tmp-"), "left behind: {name}");
    }

    let (pa, pb) = (
        params(&tmp.path().join("a/final")),
        params(&tmp.path().join("b/final")),
    );
    let worst = max_param_diff(&pa, &pb).expect("same parameter shapes");
    assert!(
        worst <= 1e-6,
        "resumed weights differ from the uninterrupted run by {worst}"
    );

    // Only the last K = 2 checkpoints are kept, each complete.
    let mut states: Vec<String> = std::fs::read_dir(tmp.path().join("a/checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("state-"))
        .collect();
    states.sort();
    assert_eq!(
        states,
        vec!["state-7.json".to_string(), "state-8.json".to_string()]
    );
    // The training log, CSV and loss plot are next to the checkpoints.
    for f in ["metrics.jsonl", "metrics.csv", "loss.png"] {
        assert!(tmp.path().join("a").join(f).exists(), "{f}");
    }
}
