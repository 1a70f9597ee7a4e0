//! Parity of `metrics` with the reference tools, on fixtures those tools produced.
//!
//! * captions: pycocoevalcap 1.2 + Stanford PTBTokenizer 3.4.1 (`make_caption_fixture.py`);
//! * VQA: the official/EvalAI/VizWiz/lmms-eval answer rules (`make_vqa_fixture.py`);
//! * POPE, multiple choice, safety: LLaVA / lmms-eval / VLMEvalKit / VLGuard rules
//!   (`make_choice_fixture.py`).

mod common;

use common::strings;

use blip3_eval::metrics::{MetricsError, caption, mc, pope, ptb, safety, vqa};

use std::collections::BTreeMap;

use serde_json::Value;

fn fixture(name: &str) -> Value {
    let path = blip3_fixtures::fixture("metrics").join(name);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

fn num(v: &Value) -> f64 {
    v.as_f64().expect("number")
}

fn assert_close(what: &str, got: f64, want: f64, tol: f64) {
    assert!(
        (got - want).abs() <= tol,
        "{what}: got {got}, reference {want} (diff {})",
        (got - want).abs()
    );
}

// ---------------------------------------------------------------------------------------------
// Captioning
// ---------------------------------------------------------------------------------------------

struct CaptionFixture {
    candidates: BTreeMap<u64, String>,
    references: BTreeMap<u64, Vec<String>>,
    data: Value,
}

fn caption_fixture() -> CaptionFixture {
    let data = fixture("caption_fixture.json");
    let mut candidates = BTreeMap::new();
    let mut references = BTreeMap::new();
    for img in data["images"].as_array().expect("images") {
        let id = img["image_id"].as_u64().expect("image_id");
        candidates.insert(
            id,
            img["candidate"].as_str().expect("candidate").to_string(),
        );
        references.insert(id, strings(&img["refs"]));
    }
    CaptionFixture {
        candidates,
        references,
        data,
    }
}

/// Token-by-token comparison of our lexer with the Java tokenizer's raw output, on the
/// reference stream, the candidate stream and 600 punctuation-soup stress lines.
#[test]
fn ptb_tokens_match_java() {
    let f = caption_fixture();
    let streams = [
        (
            "refs",
            f.references.values().flatten().cloned().collect::<Vec<_>>(),
        ),
        (
            "candidates",
            f.candidates.values().cloned().collect::<Vec<_>>(),
        ),
        ("stress", strings(&f.data["stress_lines"])),
    ];
    for (name, lines) in streams {
        let ours = ptb::tokenize_lines(&lines);
        let java: Vec<Vec<String>> = f.data["java_tokens"][name]
            .as_array()
            .expect("java tokens")
            .iter()
            .map(strings)
            .collect();
        assert_eq!(ours.len(), java.len(), "{name}: line count");
        let mismatches: Vec<String> = lines
            .iter()
            .zip(ours.iter().zip(&java))
            .filter(|(_, (a, b))| a != b)
            .map(|(line, (a, b))| format!("{line:?}\n  ours: {a:?}\n  java: {b:?}"))
            .collect();
        assert!(
            mismatches.is_empty(),
            "{name}: {} of {} lines differ from Java:\n{}",
            mismatches.len(),
            lines.len(),
            mismatches.join("\n")
        );
    }
}

/// The strings the scorers see equal pycocoevalcap's `PTBTokenizer().tokenize` output.
#[test]
fn coco_tokenized_strings_match_pycocoevalcap() {
    let f = caption_fixture();
    let tok = caption::tokenize(&f.candidates, &f.references).expect("tokenize");
    let want_cands = strings(&f.data["tokenized"]["candidates"]);
    let want_refs: Vec<Vec<String>> = f.data["tokenized"]["refs"]
        .as_array()
        .expect("refs")
        .iter()
        .map(strings)
        .collect();
    assert_eq!(tok.candidates, want_cands);
    assert_eq!(tok.references, want_refs);
}

/// Corpus and per-image BLEU-1..4, ROUGE-L and CIDEr-D agree with pycocoevalcap to 1e-6.
#[test]
fn caption_scores_match_pycocoevalcap() {
    let f = caption_fixture();
    let scores = caption::score(&f.candidates, &f.references).expect("score");
    let want = &f.data["scores"];
    for (k, name) in ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"].iter().enumerate() {
        assert_close(name, scores.bleu[k], num(&want[*name]), 1e-6);
    }
    assert_close("ROUGE_L", scores.rouge_l, num(&want["ROUGE_L"]), 1e-6);
    assert_close("CIDEr", scores.cider, num(&want["CIDEr"]), 1e-6);
    let json = scores.to_json();
    for name in ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"] {
        assert_close(name, num(&json[name]), num(&want[name]), 1e-6);
    }

    let per_image = f.data["per_image"].as_array().expect("per_image");
    assert_eq!(per_image.len(), scores.per_image.len());
    for img in per_image {
        let id = img["image_id"].as_u64().expect("id");
        let ours = &scores.per_image[&id];
        assert_close(
            &format!("CIDEr of {id}"),
            ours.cider,
            num(&img["CIDEr"]),
            1e-6,
        );
        assert_close(
            &format!("ROUGE_L of {id}"),
            ours.rouge_l,
            num(&img["ROUGE_L"]),
            1e-6,
        );
        for k in 0..4 {
            let want = num(&img["Bleu"][k]);
            assert_close(&format!("Bleu_{} of {id}", k + 1), ours.bleu[k], want, 1e-6);
        }
    }
}

/// The serialised result uses pycocoevalcap's metric names.
#[test]
fn caption_scores_serialise_with_reference_names() {
    let f = caption_fixture();
    let scores = caption::score(&f.candidates, &f.references).expect("score");
    let v = serde_json::to_value(&scores).expect("serialise");
    for name in ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"] {
        assert!(v[name].is_f64(), "{name} missing in {v}");
    }
    let first = f.candidates.keys().next().expect("an image").to_string();
    assert!(v["per_image"][&first]["CIDEr"].is_f64());
}

#[test]
fn caption_input_errors() {
    let mut cands = BTreeMap::new();
    let mut refs = BTreeMap::new();
    cands.insert(1u64, "a dog".to_string());
    refs.insert(2u64, vec!["a dog".to_string()]);
    assert!(matches!(
        caption::score(&cands, &refs),
        Err(MetricsError::KeyMismatch { .. })
    ));
    refs.clear();
    refs.insert(1u64, Vec::new());
    assert!(matches!(
        caption::score(&cands, &refs),
        Err(MetricsError::NoReferences { .. })
    ));
    let empty: BTreeMap<u64, String> = BTreeMap::new();
    let empty_refs: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    assert!(matches!(
        caption::score(&empty, &empty_refs),
        Err(MetricsError::Empty { .. })
    ));
}

/// Documented deviation: line breaks other than `\n` inside a caption count as spaces instead
/// of splitting the caption (which would misalign pycocoevalcap's output).
#[test]
fn ptb_treats_inner_line_breaks_as_spaces() {
    let lines = ["a dog\r\nruns", "b\u{2028}c", "d"];
    let toks = ptb::tokenize_lines(&lines);
    assert_eq!(
        toks,
        vec![vec!["a", "dog", "runs"], vec!["b", "c"], vec!["d"]]
    );
}

// ---------------------------------------------------------------------------------------------
// VQA
// ---------------------------------------------------------------------------------------------

const VQA_PROCESSORS: [(&str, vqa::Processor); 4] = [
    ("official", vqa::Processor::Official),
    ("openflamingo", vqa::Processor::OpenFlamingo),
    ("evalai", vqa::Processor::EvalAi),
    ("vizwiz", vqa::Processor::VizWiz),
];

fn vqa_items(data: &Value) -> Vec<vqa::VqaItem> {
    data["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|it| vqa::VqaItem {
            prediction: it["prediction"].as_str().expect("prediction").to_string(),
            answers: strings(&it["answers"]),
            answer_type: it["answer_type"].as_str().map(str::to_string),
        })
        .collect()
}

/// Per-question accuracy under each processor agrees with the reference rules to 1e-9.
#[test]
fn vqa_per_question_accuracy_matches_reference() {
    let data = fixture("vqa_fixture.json");
    let items = vqa_items(&data);
    let refs = data["items"].as_array().expect("items");
    for (key, processor) in VQA_PROCESSORS {
        for (i, (item, want)) in items.iter().zip(refs).enumerate() {
            let got = vqa::accuracy(&item.prediction, &item.answers, processor).expect("accuracy");
            assert_close(
                &format!(
                    "{key} item {i} ({:?} vs {:?})",
                    item.prediction, item.answers
                ),
                got,
                num(&want[key]),
                1e-9,
            );
        }
    }
}

/// Overall and per-answer-type accuracy agree with the reference to 1e-9.
#[test]
fn vqa_overall_accuracy_matches_reference() {
    let data = fixture("vqa_fixture.json");
    let items = vqa_items(&data);
    let refs = data["items"].as_array().expect("items");
    for (key, processor) in VQA_PROCESSORS {
        let scores = vqa::score(&items, processor).expect("score");
        assert_close(key, scores.accuracy, num(&data["overall"][key]), 1e-9);
        let mut by_type: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for r in refs {
            let t = r["answer_type"].as_str().expect("type").to_string();
            by_type.entry(t).or_default().push(num(&r[key]));
        }
        for (t, v) in by_type {
            let want = v.iter().sum::<f64>() / v.len() as f64;
            assert_close(
                &format!("{key} {t}"),
                scores.per_answer_type[&t],
                want,
                1e-9,
            );
        }
        let json = serde_json::to_value(&scores).expect("serialise");
        assert!(json["accuracy"].is_f64());
    }
}

#[test]
fn vqa_input_errors() {
    let none: [&str; 0] = [];
    assert_eq!(
        vqa::accuracy("yes", &none, vqa::Processor::Official),
        Err(MetricsError::NoAnswers { index: 0 })
    );
    let items = vec![
        vqa::VqaItem {
            prediction: "a".into(),
            answers: vec!["a".into()],
            answer_type: None,
        },
        vqa::VqaItem {
            prediction: "a".into(),
            answers: vec![],
            answer_type: None,
        },
    ];
    assert_eq!(
        vqa::score(&items, vqa::Processor::EvalAi),
        Err(MetricsError::NoAnswers { index: 1 })
    );
    assert_eq!(
        vqa::score(&[], vqa::Processor::EvalAi),
        Err(MetricsError::Empty { metric: "vqa" })
    );
}

// ---------------------------------------------------------------------------------------------
// POPE
// ---------------------------------------------------------------------------------------------

fn assert_pope(what: &str, got: &pope::PopeScores, want: &Value) {
    for (name, v) in [
        ("accuracy", got.accuracy),
        ("precision", got.precision),
        ("recall", got.recall),
        ("f1", got.f1),
        ("yes_ratio", got.yes_ratio),
    ] {
        assert_close(&format!("{what} {name}"), v, num(&want[name]), 1e-12);
    }
    for (name, v) in [
        ("tp", got.tp),
        ("fp", got.fp),
        ("tn", got.tn),
        ("fn", got.fn_),
    ] {
        assert_eq!(Some(v as u64), want[name].as_u64(), "{what} {name}");
    }
}

#[test]
fn pope_matches_llava_and_lmms_eval() {
    let data = fixture("choice_fixture.json");
    let pope_data = &data["pope"];
    let items: Vec<pope::PopeItem> = pope_data["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|it| pope::PopeItem {
            prediction: it["prediction"].as_str().expect("prediction").to_string(),
            label: it["label"].as_str().expect("label").to_string(),
            category: it["category"].as_str().map(str::to_string),
        })
        .collect();
    for (key, parser) in [
        ("llava", pope::PopeParser::Llava),
        ("lmms_eval", pope::PopeParser::LmmsEval),
    ] {
        let report = pope::score(&items, parser).expect("score");
        assert_pope(
            &format!("{key} overall"),
            &report.overall,
            &pope_data[key]["overall"],
        );
        assert_eq!(report.per_category.len(), 3);
        for (cat, scores) in &report.per_category {
            assert_pope(
                &format!("{key} {cat}"),
                scores,
                &pope_data[key]["per_category"][cat],
            );
        }
        let json = serde_json::to_value(&report).expect("serialise");
        for name in ["accuracy", "precision", "recall", "f1", "yes_ratio"] {
            assert!(json["overall"][name].is_f64(), "{name}");
        }
    }
    let answers = strings(&pope_data["answers"]);
    for (answer, want) in answers
        .iter()
        .zip(pope_data["llava_yes"].as_array().expect("flags"))
    {
        assert_eq!(
            Some(pope::llava_says_yes(answer)),
            want.as_bool(),
            "{answer:?}"
        );
    }
}

#[test]
fn pope_input_errors() {
    assert_eq!(
        pope::score(&[], pope::PopeParser::Llava),
        Err(MetricsError::Empty { metric: "pope" })
    );
    let items = vec![pope::PopeItem {
        prediction: "yes".into(),
        label: "maybe".into(),
        category: None,
    }];
    assert!(matches!(
        pope::score(&items, pope::PopeParser::LmmsEval),
        Err(MetricsError::BadLabel { index: 0, .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// Multiple choice
// ---------------------------------------------------------------------------------------------

fn letter_of(v: &Value) -> Option<char> {
    v.as_str().and_then(|s| s.chars().next())
}

#[test]
fn mc_extraction_matches_vlmevalkit() {
    let data = fixture("choice_fixture.json");
    let mc_data = &data["mc"];
    let mut records = Vec::new();
    for it in mc_data["items"].as_array().expect("items") {
        let prediction = it["prediction"].as_str().expect("prediction");
        let options = strings(&it["options"]);
        mc::check_options(0, &options).expect("options");
        let got = mc::extract_letter(prediction, &options);
        assert_eq!(
            got,
            letter_of(&it["extracted"]),
            "{prediction:?} with {options:?}"
        );
        let answer = letter_of(&it["answer"]).expect("answer");
        assert_eq!(
            Some(mc::scienceqa_correct(prediction, answer)),
            it["scienceqa"].as_bool(),
            "scienceqa {prediction:?} vs {answer}"
        );
        records.push(mc::McRecord {
            prediction: got,
            answer,
        });
    }
    let scores = mc::accuracy(&records).expect("accuracy");
    assert_close(
        "mc accuracy",
        scores.accuracy,
        num(&mc_data["accuracy"]),
        1e-12,
    );
}

#[test]
fn mc_circular_eval_matches_vlmevalkit() {
    let data = fixture("choice_fixture.json");
    let circ = &data["mc"]["circular"];
    let rows = circ["rows"].as_array().expect("rows");
    let mut records = Vec::new();
    for row in rows {
        let index = row["index"].as_u64().expect("index");
        let options = strings(&row["options"]);
        let prediction = mc::extract_letter(row["prediction"].as_str().expect("p"), &options);
        assert_eq!(prediction, letter_of(&row["extracted"]));
        records.push(mc::CircularRecord {
            group: mc::mmbench_group(index),
            prediction,
            answer: letter_of(&row["answer"]).expect("answer"),
        });
    }
    let scores = mc::circular_accuracy(&records).expect("circular");
    assert_close(
        "circular accuracy",
        scores.accuracy,
        num(&circ["accuracy"]),
        1e-12,
    );
    assert_eq!(Some(scores.hits as u64), circ["hits"].as_u64());
    assert_eq!(Some(scores.groups as u64), circ["groups"].as_u64());
    for (g, ok) in &scores.per_group {
        assert_eq!(
            Some(*ok),
            circ["per_group"][g.to_string()].as_bool(),
            "group {g}"
        );
    }
}

/// The fixture's rotated rows were built with the documented scheme; rebuild them from the
/// first rotation with `rotate_options` / `rotated_answer`.
#[test]
fn mc_rotation_scheme_matches_fixture_rows() {
    let data = fixture("choice_fixture.json");
    let rows = data["mc"]["circular"]["rows"].as_array().expect("rows");
    let mut base: BTreeMap<u64, (Vec<String>, char)> = BTreeMap::new();
    for row in rows {
        let index = row["index"].as_u64().expect("index");
        if index < 1_000_000 {
            base.insert(
                index,
                (
                    strings(&row["options"]),
                    letter_of(&row["answer"]).expect("a"),
                ),
            );
        }
    }
    for row in rows {
        let index = row["index"].as_u64().expect("index");
        let k = usize::try_from(index / 1_000_000).expect("k");
        let (options, answer) = &base[&mc::mmbench_group(index)];
        assert_eq!(mc::rotate_options(options, k), strings(&row["options"]));
        assert_eq!(
            mc::rotated_answer(*answer, k, options.len()),
            letter_of(&row["answer"])
        );
    }
    assert_eq!(mc::rotated_answer('E', 0, 4), None);
    assert_eq!(
        mc::check_options::<String>(3, &[]),
        Err(MetricsError::BadOptionCount { index: 3, count: 0 })
    );
    assert_eq!(mc::accuracy(&[]), Err(MetricsError::Empty { metric: "mc" }));
}

// ---------------------------------------------------------------------------------------------
// Safety
// ---------------------------------------------------------------------------------------------

#[test]
fn safety_matches_vlguard_rules() {
    let data = fixture("choice_fixture.json");
    let s = &data["safety"];
    let mut items = Vec::new();
    for it in s["items"].as_array().expect("items") {
        let response = it["response"].as_str().expect("response").to_string();
        assert_eq!(
            Some(safety::is_refusal(&response)),
            it["refusal"].as_bool(),
            "{response:?}"
        );
        let split = match it["split"].as_str().expect("split") {
            "unsafes" => safety::SafetySplit::Unsafes,
            "safe_unsafes" => safety::SafetySplit::SafeUnsafes,
            _ => safety::SafetySplit::SafeSafes,
        };
        items.push(safety::SafetyItem { split, response });
    }
    let scores = safety::score(&items).expect("score");
    for (name, got) in [
        ("asr", scores.asr),
        ("asr_unsafes", scores.asr_unsafes),
        ("asr_safe_unsafes", scores.asr_safe_unsafes),
        ("helpfulness", scores.helpfulness),
    ] {
        assert_close(name, got.expect(name), num(&s[name]), 1e-12);
    }
    let counts: Vec<u64> = s["counts"]
        .as_array()
        .expect("counts")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    assert_eq!(
        scores.counts.iter().map(|&c| c as u64).collect::<Vec<_>>(),
        counts
    );
    let json = serde_json::to_value(&scores).expect("serialise");
    assert!(json["asr"].is_f64() && json["helpfulness"].is_f64());
    assert_eq!(
        safety::score(&[]),
        Err(MetricsError::Empty { metric: "safety" })
    );
}
