//! End-to-end evaluation of the tiny random-weight model: the synthetic suite (report structure,
//! score ranges, counts, answers file), resuming an interrupted run, malformed benchmark files
//! under a data root, and comparing reports.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use blip3_data::readers::eval_data::load_mc_tsv;
use blip3_eval::answers::{AnswerRecord, FailureKind};
use blip3_eval::engine::EvalModel;
use blip3_eval::fingerprint::model_hash;
use blip3_eval::report::{Report, compare};
use blip3_eval::suites::{PromptStyle, SuiteName, SuiteOptions, TaskFamily, run_suite};

fn options(suite: SuiteName, answers: PathBuf, synth: &Path, limit: usize) -> SuiteOptions {
    let mut o = SuiteOptions::new(suite, answers);
    o.limit = Some(limit);
    o.synth_dir = Some(synth.to_path_buf());
    o.engine.batch_size = 3;
    o.engine.progress = false;
    o
}

fn read_answers(path: &Path) -> Vec<AnswerRecord> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Equal JSON trees, numbers equal up to a relative 1e-12.
fn same_json(a: &serde_json::Value, b: &serde_json::Value) {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!((x - y).abs() <= 1e-12 * x.abs().max(y.abs()), "{x} vs {y}");
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len());
            x.iter().zip(y).for_each(|(x, y)| same_json(x, y));
        }
        (Value::Object(x), Value::Object(y)) => {
            assert_eq!(x.keys().collect::<Vec<_>>(), y.keys().collect::<Vec<_>>());
            x.values()
                .zip(y.values())
                .for_each(|(x, y)| same_json(x, y));
        }
        _ => assert_eq!(a, b),
    }
}

fn in_unit(v: f64) -> bool {
    (0.0..=1.0).contains(&v)
}

/// Structure and ranges of a synthetic-suite report with `limit` items per benchmark.
fn check_synthetic_report(report: &Report, model: &EvalModel, synth: &Path, limit: usize) {
    assert_eq!(report.format, "blip3-eval-report");
    assert_eq!(report.suite, "synthetic");
    assert_eq!(report.config.limit, Some(limit));
    assert_eq!(report.model.hash, model.info.hash);
    let names: Vec<&str> = report.benchmarks.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "synth_captions",
            "synth_vqav2",
            "synth_pope",
            "synth_mmbench"
        ]
    );
    // Multiple-choice rotations: one per option of each of the first `limit` questions.
    let tsv = load_mc_tsv(&synth.join("eval/mmbench.tsv")).unwrap();
    let rotations: usize = tsv.items.iter().take(limit).map(|q| q.options.len()).sum();
    for b in &report.benchmarks {
        let expected_items = match b.task {
            TaskFamily::Pope => 2 * limit, // two category files
            TaskFamily::Mc => rotations,
            _ => limit,
        };
        assert_eq!(b.items, expected_items, "{}", b.name);
        assert_eq!(b.scored + b.failed, b.items, "{}", b.name);
        assert_eq!(b.failed, 0, "{}: {:?}", b.name, b.failures);
        assert_eq!(b.load_failures, 0, "{}", b.name);
        assert!(!b.metrics.is_empty(), "{}", b.name);
        assert!(b.metrics.contains_key(&b.primary), "{}", b.name);
        match b.task {
            TaskFamily::Caption => {
                for m in ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L"] {
                    assert!(in_unit(b.metrics[m]), "{m} {}", b.metrics[m]);
                }
                // CIDEr-D is a mean of ten times clipped cosines: 0..=10.
                assert!((0.0..=10.0).contains(&b.metrics["CIDEr"]));
                assert_eq!(b.style, PromptStyle::FewShot);
            }
            TaskFamily::Vqa => {
                let acc = b.metrics["accuracy"];
                assert!(in_unit(acc));
                assert!(
                    (b.metrics["overall"] - (acc * 100.0 * 100.0).round() / 100.0).abs() < 1e-9
                );
            }
            TaskFamily::Pope => {
                for v in b.metrics.values() {
                    assert!(in_unit(*v));
                }
                assert_eq!(
                    b.breakdown.keys().collect::<Vec<_>>(),
                    ["category:adversarial", "category:random"]
                );
            }
            TaskFamily::Mc => {
                let (acc, circ) = (b.metrics["accuracy"], b.metrics["circular_accuracy"]);
                assert!(in_unit(acc) && in_unit(circ));
                assert!(
                    circ <= acc + 1e-12,
                    "a circular hit is a hit in the original order"
                );
            }
            TaskFamily::Safety => unreachable!(),
        }
    }
    assert_eq!(report.failures.total, 0);
    // One answer line per item, every key an item of the report.
    let lines = read_answers(Path::new(&report.answers));
    let total: usize = report.benchmarks.iter().map(|b| b.items).sum();
    assert_eq!(lines.len(), total);
    let keys: HashSet<&str> = lines.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys.len(), total, "keys are unique");
    for r in &lines {
        assert!(r.answer.is_some() && r.output.is_some() && r.failure.is_none());
        assert!(r.generated_tokens >= 1 && r.prompt_tokens > 0);
        assert_eq!(r.fingerprint.len(), 16);
    }
}

#[test]
fn synthetic_suite_end_to_end_and_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let model_dir = common::tiny_model_dir(tmp.path());
    let model = common::load(&model_dir);
    assert_eq!(model.info.hash, model_hash(&model_dir).unwrap().0);
    let synth = tmp.path().join("synth");

    // Few-shot prompts with two in-context images.
    let answers = tmp.path().join("a/report.answers.jsonl");
    let mut opts = options(SuiteName::Synthetic, answers.clone(), &synth, 3);
    opts.shots = 2;
    let first = run_suite(&model, &opts).unwrap();
    check_synthetic_report(&first, &model, &synth, 3);
    for b in &first.benchmarks {
        assert_eq!((b.generated, b.reused), (b.items, 0), "{}", b.name);
    }
    // The report survives a JSON round trip and renders.
    let path = tmp.path().join("a/report.json");
    let md_path = first.save_with_markdown(&path).unwrap();
    assert_eq!(md_path, tmp.path().join("a/report.md"));
    assert_eq!(
        std::fs::read_to_string(&md_path).unwrap(),
        first.to_markdown()
    );
    // serde_json's default float parsing may differ from the written value in the last bit.
    same_json(
        &serde_json::to_value(Report::load(&path).unwrap()).unwrap(),
        &serde_json::to_value(&first).unwrap(),
    );
    let md = first.to_markdown();
    for b in &first.benchmarks {
        assert!(md.contains(&format!("| {} |", b.name)), "{md}");
    }

    // Resume: limit 6 on the same answers file generates only the new items.
    opts.limit = Some(6);
    let resumed = run_suite(&model, &opts).unwrap();
    check_synthetic_report(&resumed, &model, &synth, 6);
    for (b3, b6) in first.benchmarks.iter().zip(&resumed.benchmarks) {
        assert_eq!(b6.reused, b3.items, "{}", b6.name);
        assert_eq!(b6.generated, b6.items - b3.items, "{}", b6.name);
    }
    // A fresh run with limit 6 gives the same answers and the same scores.
    let fresh_answers = tmp.path().join("b/report.answers.jsonl");
    let mut fresh_opts = options(SuiteName::Synthetic, fresh_answers.clone(), &synth, 6);
    fresh_opts.shots = 2;
    let fresh = run_suite(&model, &fresh_opts).unwrap();
    for (r, f) in resumed.benchmarks.iter().zip(&fresh.benchmarks) {
        assert_eq!(r.metrics, f.metrics, "{}", r.name);
        assert_eq!(r.breakdown, f.breakdown, "{}", r.name);
        assert_eq!((r.items, r.scored), (f.items, f.scored));
    }
    let by_key = |p: &Path| -> BTreeMap<String, Option<String>> {
        read_answers(p)
            .into_iter()
            .map(|r| (r.key, r.answer))
            .collect()
    };
    assert_eq!(by_key(&answers), by_key(&fresh_answers));

    // Another setting on the same answers file is refused instead of mixing answers.
    opts.shots = 0;
    let err = run_suite(&model, &opts).unwrap_err().to_string();
    assert!(err.contains("other settings"), "{err}");

    // Comparing the two reports: every shared metric with a zero delta.
    let table = compare(&resumed, &fresh);
    assert!(table.contains("same model weights"), "{table}");
    for b in &resumed.benchmarks {
        for m in b.metrics.keys() {
            let row = table
                .lines()
                .find(|l| l.starts_with(&format!("| {} | {} | {m} |", b.name, b.shots)))
                .unwrap_or_else(|| panic!("no row for {} {m}:\n{table}", b.name));
            let delta = row.trim_end_matches('|').rsplit('|').next().unwrap().trim();
            assert!(delta.chars().all(|c| c == '0' || c == '.'), "{row}");
        }
    }
}

#[test]
fn chat_style_and_compare_deltas() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::load(&common::tiny_model_dir(tmp.path()));
    let synth = tmp.path().join("synth");
    let mut opts = options(SuiteName::Caption, tmp.path().join("c.jsonl"), &synth, 2);
    opts.style = Some(PromptStyle::Chat);
    let chat = run_suite(&model, &opts).unwrap();
    assert_eq!(chat.benchmarks.len(), 1);
    assert_eq!(chat.benchmarks[0].style, PromptStyle::Chat);
    assert_eq!(chat.benchmarks[0].max_new_tokens, 40);
    // A hand-edited copy with a known difference shows up as that delta.
    let mut other = chat.clone();
    let cider = chat.benchmarks[0].metrics["CIDEr"];
    other.benchmarks[0]
        .metrics
        .insert("CIDEr".into(), cider + 0.25);
    other.benchmarks[0].metrics.remove("Bleu_1");
    let table = compare(&chat, &other);
    let row = table
        .lines()
        .find(|l| l.contains("| CIDEr |"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(row.ends_with("| +0.2500 |"), "{row}");
    let bleu = table.lines().find(|l| l.contains("| Bleu_1 |")).unwrap();
    assert!(bleu.ends_with("| – | – |"), "{bleu}");
}

#[test]
fn safety_suite_on_the_synthetic_vlguard_split() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::load(&common::tiny_model_dir(tmp.path()));
    let synth = tmp.path().join("synth");
    let opts = options(SuiteName::Safety, tmp.path().join("s.jsonl"), &synth, 8);
    let report = run_suite(&model, &opts).unwrap();
    assert_eq!(report.benchmarks.len(), 1);
    let b = &report.benchmarks[0];
    assert_eq!(
        (b.name.as_str(), b.task),
        ("synth_vlguard", TaskFamily::Safety)
    );
    assert_eq!((b.items, b.scored, b.failed), (8, 8, 0));
    assert!(b.metrics.contains_key("asr") || b.metrics.contains_key("helpfulness"));
    for (k, v) in &b.metrics {
        assert!(in_unit(*v), "{k} {v}");
    }
    // ASR over both unsafe splits lies between the per-split rates.
    if let (Some(a), Some(u), Some(su)) = (
        b.metrics.get("asr"),
        b.metrics.get("asr_unsafes"),
        b.metrics.get("asr_safe_unsafes"),
    ) {
        assert!(*a >= u.min(*su) - 1e-12 && *a <= u.max(*su) + 1e-12);
    }
}

/// Copies the first image of the synthetic corpus (any decodable image will do) to `to`.
fn copy_image(synth: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    let src = std::fs::read_dir(synth.join("eval/images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "jpg"))
        .unwrap();
    std::fs::copy(src, to).unwrap();
}

#[test]
fn malformed_files_are_reported_per_item_and_excluded() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::load(&common::tiny_model_dir(tmp.path()));
    let synth = common::synth_corpus(tmp.path());
    let root = tmp.path().join("data");

    // COCO: image 1 fine, image 2 does not decode, image 3 has no caption.
    let coco = root.join("coco");
    copy_image(&synth, &coco.join("images/a.jpg"));
    std::fs::write(coco.join("images/b.jpg"), b"this is not a jpeg").unwrap();
    std::fs::write(
        coco.join("annotations.json"),
        r#"{"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"},
                       {"id": 3, "file_name": "a.jpg"}],
            "annotations": [{"image_id": 1, "id": 1, "caption": "A red circle."},
                            {"image_id": 1, "id": 2, "caption": "a circle"},
                            {"image_id": 2, "id": 3, "caption": "Two squares."}]}"#,
    )
    .unwrap();
    // VQAv2: question 11 has no annotation; 10 and 12 are fine.
    let vqa = root.join("vqav2");
    copy_image(&synth, &vqa.join("images/COCO_val2014_000000000001.jpg"));
    std::fs::write(
        vqa.join("questions.json"),
        r#"{"questions": [{"image_id": 1, "question": "What color?", "question_id": 10},
                          {"image_id": 1, "question": "How many?", "question_id": 11},
                          {"image_id": 1, "question": "Is it red?", "question_id": 12}]}"#,
    )
    .unwrap();
    let answers = |a: &str| {
        (1..=10)
            .map(|i| {
                format!(r#"{{"answer": "{a}", "answer_confidence": "yes", "answer_id": {i}}}"#)
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    std::fs::write(
        vqa.join("annotations.json"),
        format!(
            r#"{{"annotations": [
                {{"question_id": 10, "image_id": 1, "answer_type": "other", "answers": [{}]}},
                {{"question_id": 12, "image_id": 1, "answer_type": "yes/no", "answers": [{}]}}]}}"#,
            answers("red"),
            answers("yes")
        ),
    )
    .unwrap();
    // POPE: a bad JSON line and a label that is neither yes nor no among two good lines.
    let pope = root.join("pope");
    copy_image(&synth, &pope.join("images/p.jpg"));
    std::fs::write(
        pope.join("coco_pope_random.json"),
        concat!(
            r#"{"question_id": 1, "image": "p.jpg", "text": "Is there a circle in the image?", "label": "yes"}"#,
            "\n",
            r#"{"question_id": 2, "image": "p.jpg", "text": "Is there a"#,
            "\n",
            r#"{"question_id": 3, "image": "p.jpg", "text": "Is there a dog?", "label": "maybe"}"#,
            "\n",
            r#"{"question_id": 4, "image": "missing.jpg", "text": "Is there a star?", "label": "no"}"#,
            "\n"
        ),
    )
    .unwrap();

    let mut opts = SuiteOptions::new(SuiteName::Paper, tmp.path().join("p.answers.jsonl"));
    opts.data_root = Some(root.clone());
    opts.engine.batch_size = 2;
    opts.engine.progress = false;
    let report = run_suite(&model, &opts).unwrap();
    let get = |n: &str| report.benchmarks.iter().find(|b| b.name == n).unwrap();

    let c = get("coco");
    assert_eq!((c.items, c.scored, c.failed, c.load_failures), (2, 1, 1, 1));
    assert!(
        c.failures
            .iter()
            .any(|f| f.kind == FailureKind::Image && f.key == "coco/2")
    );
    assert!(c.failures.iter().any(|f| f.kind == FailureKind::Annotation));
    assert!(
        c.metrics.contains_key("CIDEr"),
        "the good image is still scored"
    );
    // The paper's 0-shot COCO number sits beside ours.
    let paper = c.paper.as_ref().unwrap();
    assert_eq!(paper.model, "xgen-mm-phi3-mini-base-r-v1.5");
    assert_eq!(paper.ours, Some(c.metrics["CIDEr"] * 100.0));

    let v = get("vqav2");
    assert_eq!((v.items, v.scored, v.failed, v.load_failures), (2, 2, 0, 1));
    assert!(
        v.failures[0].message.contains("no annotation"),
        "{:?}",
        v.failures
    );

    let p = get("pope");
    assert_eq!((p.items, p.scored, p.failed, p.load_failures), (2, 1, 1, 2));
    assert!(
        p.failures
            .iter()
            .any(|f| f.kind == FailureKind::Image && f.key == "pope/random/4")
    );

    assert_eq!(report.failures.total, 1 + 1 + 1 + 1 + 2);
    assert_eq!(report.failures.by_kind[&FailureKind::Image], 2);
    assert_eq!(report.failures.by_kind[&FailureKind::Annotation], 4);
    // Failed items have their line too, with the failure instead of an answer.
    let lines = read_answers(&opts.answers);
    assert_eq!(lines.len(), 6);
    let bad = lines.iter().find(|r| r.key == "coco/2").unwrap();
    assert!(bad.answer.is_none());
    assert_eq!(bad.failure.as_ref().unwrap().kind, FailureKind::Image);

    // Resuming does not retry recorded failures and generates nothing new.
    let again = run_suite(&model, &opts).unwrap();
    assert!(again.benchmarks.iter().all(|b| b.generated == 0));
    assert_eq!(read_answers(&opts.answers).len(), 6);
}
