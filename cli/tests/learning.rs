//! Learning: the main job (`blip3 demo`) trains the tiny model through the five stages on the
//! synthetic corpus, and each stage must improve its held-out check by a clear margin:
//!
//! | stage | check | required |
//! |---|---|---|
//! | pre-training | caption CIDEr (0-shot) | +0.12 |
//! | SFT | VQA accuracy (chat) | +0.12 |
//! | interleaved SFT | VQA accuracy | no drop beyond 0.05 |
//! | DPO | faithful-vs-hallucinated preference (held-out pairs) | +0.10 |
//! | DPO | POPE accuracy | no drop beyond 0.05 |
//! | safety | attack success rate on unsafe prompts | −0.25 |
//!
//! The run is shortened (`--steps-scale`) to fit the CI budget; the margins hold with room at
//! that scale.

use std::process::Command;

#[derive(serde::Deserialize, Debug)]
struct Row {
    stage: String,
    check: String,
    before: f64,
    after: f64,
}

#[test]
fn five_stages_improve_their_held_out_checks() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("demo");
    let status = Command::new(env!("CARGO_BIN_EXE_blip3"))
        .args([
            "demo",
            "--corpus",
            "default",
            "--steps-scale",
            "0.6",
            "--eval-items",
            "64",
            "--seed",
            "7",
        ])
        // A relative output folder, as users type it (the default is `runs/demo`).
        .current_dir(tmp.path())
        .args(["--out", "demo"])
        .args(["--log", "warn"])
        .status()
        .unwrap();
    assert!(status.success());
    let rows: Vec<Row> =
        serde_json::from_str(&std::fs::read_to_string(out.join("demo_report.json")).unwrap())
            .unwrap();
    let get = |stage: &str, check: &str| {
        rows.iter()
            .find(|r| r.stage == stage && r.check == check)
            .unwrap_or_else(|| panic!("no {check} row for {stage}: {rows:?}"))
    };
    let r = get("pretrain", "caption CIDEr");
    assert!(r.after >= r.before + 0.12, "pre-training CIDEr {r:?}");
    let r = get("sft", "VQA accuracy");
    assert!(r.after >= r.before + 0.12, "SFT VQA {r:?}");
    let r = get("sft-interleave", "VQA accuracy");
    assert!(r.after >= r.before - 0.05, "interleaved SFT VQA {r:?}");
    let r = get("dpo", "faithful-caption preference");
    assert!(r.after >= r.before + 0.10, "DPO preference {r:?}");
    let r = get("dpo", "POPE accuracy");
    assert!(r.after >= r.before - 0.05, "DPO POPE {r:?}");
    let r = get("safety", "unsafe-prompt ASR");
    assert!(r.after <= r.before - 0.25, "safety ASR {r:?}");
    // Every stage left its final model, metrics log, loss plot and HF export.
    for stage in ["pretrain", "sft", "sft-interleave", "dpo", "safety"] {
        for f in [
            "final/model.bpk",
            "export/model.safetensors",
            "metrics.jsonl",
            "loss.png",
            "summary.json",
        ] {
            assert!(out.join(stage).join(f).exists(), "{stage}/{f}");
        }
    }
}
