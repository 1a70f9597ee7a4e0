//! `blip3 eval` and `blip3 generate` from the command line: the Markdown report written next to
//! the JSON one, prediction files with nothing to score, and sampling arguments out of range
//! (rejected before any model is loaded).

mod common;

use std::path::PathBuf;
use std::process::Output;

use common::{blip3, tiny_model_dir};

fn fixture(name: &str) -> PathBuf {
    blip3_fixtures::fixture("eval").join(name)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn eval_writes_the_markdown_report_next_to_the_json() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    tiny_model_dir(&model);
    let json = tmp.path().join("out/report.json");
    let out = blip3()
        .args([
            "eval",
            "--suite",
            "synthetic",
            "--limit",
            "2",
            "--max-new-tokens",
            "4",
        ])
        .arg("--model")
        .arg(&model)
        .arg("--synth-dir")
        .arg(tmp.path().join("synth"))
        .arg("--out")
        .arg(&json)
        .args(["--no-progress", "--log", "warn"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let md = std::fs::read_to_string(tmp.path().join("out/report.md")).unwrap();
    assert!(md.starts_with("## blip3 eval: synthetic"), "{md}");
    // The same table as printed, and the JSON beside it.
    assert!(String::from_utf8_lossy(&out.stdout).contains(&md));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for b in report["benchmarks"].as_array().unwrap() {
        let name = b["name"].as_str().unwrap();
        assert!(md.contains(&format!("| {name} |")), "{name} not in {md}");
    }
    assert!(stderr(&out).contains("report.md"), "{}", stderr(&out));
}

#[test]
fn eval_score_with_nothing_to_score_fails() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, text) in [("empty.jsonl", ""), ("list.json", "[]")] {
        let preds = tmp.path().join(name);
        std::fs::write(&preds, text).unwrap();
        let out = blip3()
            .args(["eval", "score", "--task", "pope", "--predictions"])
            .arg(&preds)
            .arg("--annotations")
            .arg(fixture("pope_annotations.json"))
            .output()
            .unwrap();
        let err = stderr(&out);
        assert!(!out.status.success(), "{name}: {err}");
        assert!(
            err.contains("nothing to score") && err.contains(name),
            "{name}: {err}"
        );
        assert!(out.stdout.is_empty(), "{name}: printed a result");
    }
}

#[test]
fn sampling_arguments_out_of_range_are_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    // No model there: the arguments must be refused before loading one.
    let model = tmp.path().join("no-model");
    let cases: [(&[&str], &str); 5] = [
        (&["--temperature", "nan"], "finite number >= 0"),
        (&["--temperature=-1"], "finite number >= 0"),
        (&["--temperature", "1", "--top-p", "2"], "(0, 1]"),
        (&["--temperature", "1", "--top-p", "0"], "(0, 1]"),
        (&["--temperature", "1", "--top-k", "0"], "at least 1"),
    ];
    for (args, range) in cases {
        let out = blip3()
            .args(["generate", "--prompt", "hi", "--model"])
            .arg(&model)
            .args(args)
            .output()
            .unwrap();
        let err = stderr(&out);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(err.contains(range), "{args:?}: {err}");
        assert!(!err.contains("loading"), "{args:?}: {err}");
    }
    let out = blip3()
        .args([
            "eval",
            "--suite",
            "synthetic",
            "--temperature",
            "nan",
            "--model",
        ])
        .arg(&model)
        .arg("--out")
        .arg(tmp.path().join("r.json"))
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(
        !out.status.success() && err.contains("finite number >= 0"),
        "{err}"
    );
    assert!(!err.contains("loading"), "{err}");
}
