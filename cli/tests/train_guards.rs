//! `blip3 train` on misuse (issue 9), through the binary: an output directory holding a run needs
//! `--resume` or `--overwrite`, and a `--resume` of a CPU run past a corrupt newest checkpoint
//! falls back, says so, and touches no GPU API.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use blip3_data::synth::{SynthConfig, write_corpus};

fn blip3() -> Command {
    Command::new(env!("CARGO_BIN_EXE_blip3"))
}

fn write_config(dir: &Path, steps: usize, every: usize) -> PathBuf {
    let corpus = dir.join("corpus");
    write_corpus(&corpus, &SynthConfig::tiny()).unwrap();
    let c = corpus.display();
    std::fs::write(
        dir.join("mix.yaml"),
        format!(
            "seed: 3\nsources:\n  - name: captions\n    kind: webdataset\n    paths: [\"{c}/pretrain/captions\"]\n    weight: 1\n"
        ),
    )
    .unwrap();
    let cfg = dir.join("stage.toml");
    std::fs::write(
        &cfg,
        format!(
            "stage = \"pretrain\"\nout_dir = \"run\"\nseed = 11\n[data]\ntrain = \"mix.yaml\"\nbatch_size = 2\nnum_workers = 1\nmax_len = 128\n[optim]\nlr = 1e-3\ntotal_steps = {steps}\nwarmup_steps = 1\n[checkpoint]\nevery_steps = {every}\nkeep_last = 5\nexport_hf = false\n[monitor]\nrenderer = \"quiet\"\n[devices]\nkind = \"flex\"\n"
        ),
    )
    .unwrap();
    cfg
}

fn train(cfg: &Path, extra: &[&str]) -> Output {
    blip3()
        .arg("train")
        .arg("--config")
        .arg(cfg)
        .args(extra)
        .args(["--log", "warn"])
        .env_remove("BURN_DEVICE")
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn train_steps(out: &Path) -> Vec<u64> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["split"] == "train")
        .map(|r| r["step"].as_u64().unwrap())
        .collect()
}

#[test]
fn training_into_a_run_needs_resume_or_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path(), 2, 2);
    let out = tmp.path().join("run");
    let first = train(&cfg, &[]);
    assert!(first.status.success(), "{:?}", text(&first));

    let again = train(&cfg, &[]);
    let (_, err) = text(&again);
    assert!(!again.status.success());
    assert!(err.contains(&out.display().to_string()), "{err}");
    assert!(err.contains("holds a previous run"), "{err}");
    assert_eq!(
        train_steps(&out),
        vec![1, 2],
        "the refused run logged nothing"
    );

    let both = train(&cfg, &["--resume", "--overwrite"]);
    assert!(!both.status.success());

    let replaced = train(&cfg, &["--overwrite"]);
    assert!(replaced.status.success(), "{:?}", text(&replaced));
    assert_eq!(train_steps(&out), vec![1, 2], "one run in the log, not two");
}

#[test]
fn cpu_resume_past_a_corrupt_checkpoint_falls_back_without_touching_a_gpu_api() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path(), 4, 2);
    let out = tmp.path().join("run");
    let first = train(&cfg, &[]);
    assert!(first.status.success(), "{:?}", text(&first));

    // Killed while the final model was written, with the newest checkpoint cut short.
    let m2 = out.join("checkpoints/model-2.bpk");
    let len = std::fs::metadata(&m2).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&m2)
        .unwrap()
        .set_len(len - 1)
        .unwrap();
    std::fs::remove_dir_all(out.join("final")).unwrap();
    std::fs::remove_file(out.join("summary.json")).unwrap();

    // LD_DEBUG=libs makes the dynamic loader report every library the process opens.
    let resumed = blip3()
        .arg("train")
        .arg("--config")
        .arg(&cfg)
        .arg("--resume")
        .args(["--log", "warn"])
        .env_remove("BURN_DEVICE")
        .env_remove("XDG_RUNTIME_DIR")
        .env("LD_DEBUG", "libs")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&resumed);
    assert!(resumed.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("passed over checkpoint 2") && stdout.contains("model-2.bpk"),
        "{stdout}"
    );
    assert!(stderr.contains("falling back to checkpoint 1"), "{stderr}");
    for gpu in ["libvulkan", "libEGL", "libGL", "libcuda", "XDG_RUNTIME_DIR"] {
        assert!(
            !stderr.contains(gpu),
            "a flex resume touched a GPU API ({gpu})"
        );
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["resumed_from"], 1);
    assert_eq!(summary["steps"], 4);
    assert_eq!(train_steps(&out), vec![1, 2, 3, 4]);
}
