//! Beam search against HF `generate(num_beams=K, ...)` (fixture made by
//! `tests/fixtures/model/make_beam_fixtures.py` on the tiny xGen-MM composite): text-only prompts
//! and prompts with any-res images, left-padded in one batch, for several beam counts, length
//! penalties (negative, 0, fractional, 1, 2), every `early_stopping` mode, one or two stop ids and
//! up to four returned hypotheses. The returned token ids must be identical and the scores
//! (HF `sequences_scores`) equal within 1e-4.

mod common;

use std::collections::HashMap;

use blip3_model::loader::{self, LoadOptions};
use blip3_model::{
    EarlyStopping, FinishReason, GenerationConfig, ImageInput, MultimodalInput, XGenMM,
};
use burn::prelude::*;
use common::*;
use serde_json::Value;

const SCORE_TOL: f32 = 1e-4;

fn json(name: &str) -> Value {
    let path = fixture(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("an id list")
        .iter()
        .map(|x| x.as_u64().expect("an id") as u32)
        .collect()
}

/// The committed any-res test images by tensor name (views, grid, original size).
fn images(device: &Device) -> HashMap<String, ImageInput> {
    let io = read("xgenmm_io.safetensors");
    let meta = json("xgenmm_io.json");
    let mut out = HashMap::new();
    for sample in meta["samples"].as_array().expect("samples") {
        for im in sample["images"].as_array().expect("images") {
            let name = im["tensor"].as_str().expect("tensor name").to_string();
            let size = |i: usize| im["original_size"][i].as_u64().expect("size") as usize;
            let image = ImageInput {
                pixels: io[&name].tensor::<4>(device),
                grid: im["grid"].as_array().map(|g| {
                    (
                        g[0].as_u64().expect("grid") as usize,
                        g[1].as_u64().expect("grid") as usize,
                    )
                }),
                original_size: (size(0), size(1)),
            };
            out.insert(name, image);
        }
    }
    out
}

fn config(case: &Value, pad_id: u32) -> GenerationConfig {
    let early_stopping = match case["early_stopping"].as_str().expect("early_stopping") {
        "heuristic" => EarlyStopping::Heuristic,
        "all-finished" => EarlyStopping::AllFinished,
        "never" => EarlyStopping::Never,
        other => panic!("unknown early_stopping {other}"),
    };
    GenerationConfig {
        max_new_tokens: case["max_new_tokens"].as_u64().expect("max_new_tokens") as usize,
        stop_ids: ids(&case["stop_ids"]),
        pad_id,
        num_beams: case["num_beams"].as_u64().expect("num_beams") as usize,
        length_penalty: case["length_penalty"].as_f64().expect("length_penalty") as f32,
        early_stopping,
        num_return_sequences: case["num_return_sequences"].as_u64().expect("ret") as usize,
        ..Default::default()
    }
}

fn check_beams(model: &XGenMM, device: &Device) {
    let fixture = json("beam_io.json");
    let pad_id = fixture["pad_id"].as_u64().expect("pad_id") as u32;
    let images = images(device);
    let cases = fixture["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 12);
    let mut finished_early = 0;
    for (c, case) in cases.iter().enumerate() {
        let cfg = config(case, pad_id);
        let mut input = MultimodalInput::default();
        for prompt in case["prompts"].as_array().expect("prompts") {
            input.input_ids.push(ids(&prompt["ids"]));
            input.images.push(
                prompt["images"]
                    .as_array()
                    .expect("image names")
                    .iter()
                    .map(|n| images[n.as_str().expect("name")].clone())
                    .collect(),
            );
        }
        let what = format!(
            "case {c} ({}, K={}, lp={}, {:?})",
            case["kind"], cfg.num_beams, cfg.length_penalty, cfg.early_stopping
        );
        let got = model.beam_search(&input, &cfg).expect("beam search");
        let want = case["expected"].as_array().expect("expected");
        assert_eq!(got.len(), want.len(), "{what}: prompts");
        for (p, (out, hyps)) in got.iter().zip(want).enumerate() {
            let hyps = hyps.as_array().expect("hypotheses");
            assert_eq!(out.hypotheses.len(), hyps.len(), "{what} prompt {p}: count");
            for (h, (ours, theirs)) in out.hypotheses.iter().zip(hyps).enumerate() {
                let want_ids = ids(&theirs["ids"]);
                assert_eq!(ours.token_ids, want_ids, "{what} prompt {p} hypothesis {h}");
                let want_score = theirs["score"].as_f64().expect("score") as f32;
                assert!(
                    (ours.score - want_score).abs() <= SCORE_TOL,
                    "{what} prompt {p} hypothesis {h}: score {} vs HF {want_score}",
                    ours.score
                );
                if ours.finish == FinishReason::Stop {
                    finished_early += 1;
                    assert!(
                        cfg.stop_ids
                            .contains(ours.token_ids.last().expect("a token"))
                    );
                }
            }
        }
        // generate() with beams returns the best hypothesis of each prompt.
        let best = model
            .generate(&input, &cfg, |_, _| true)
            .expect("generate with beams");
        for (g, out) in best.iter().zip(&got) {
            assert_eq!(g.token_ids, out.hypotheses[0].token_ids, "{what}: generate");
            assert_eq!(g.sequence_score, Some(out.hypotheses[0].score));
        }
    }
    // The fixture exercises stop ids, not only the length limit.
    assert!(
        finished_early >= 5,
        "only {finished_early} hypotheses end on a stop id"
    );
}

#[test]
fn beam_search_matches_hf_generate() {
    let device = Device::flex();
    let model = loader::load_xgenmm_dir(&fixture("xgenmm"), &device, LoadOptions::default())
        .expect("load the tiny xGen-MM");
    check_beams(&model, &device);
}

/// The same on every GPU device that works here (lavapipe on CI; CUDA/Vulkan where built).
#[test]
fn beam_search_matches_hf_generate_on_gpu_devices() {
    for (name, device) in gpu_devices() {
        eprintln!("beam search on {name}");
        let model = loader::load_xgenmm_dir(&fixture("xgenmm"), &device, LoadOptions::default())
            .expect("load the tiny xGen-MM");
        check_beams(&model, &device);
    }
}

#[test]
fn one_beam_is_greedy_and_bad_settings_are_refused() {
    let device = Device::flex();
    let model =
        loader::load_xgenmm_dir(&fixture("xgenmm"), &device, LoadOptions::default()).expect("load");
    let input = MultimodalInput {
        input_ids: vec![vec![1, 5, 6, 7]],
        images: vec![vec![]],
        ..Default::default()
    };
    let cfg = GenerationConfig {
        max_new_tokens: 6,
        pad_id: 99,
        ..Default::default()
    };
    let greedy = model.generate(&input, &cfg, |_, _| true).expect("greedy");
    let beam = model
        .beam_search(
            &input,
            &GenerationConfig {
                num_beams: 1,
                ..cfg.clone()
            },
        )
        .expect("one beam");
    assert_eq!(beam[0].hypotheses[0].token_ids, greedy[0].token_ids);
    for (bad, needle) in [
        (
            GenerationConfig {
                num_beams: 0,
                ..cfg.clone()
            },
            "num_beams 0",
        ),
        (
            GenerationConfig {
                num_beams: 2,
                num_return_sequences: 3,
                ..cfg.clone()
            },
            "num_return_sequences 3",
        ),
        (
            GenerationConfig {
                num_beams: 2,
                temperature: Some(0.7),
                ..cfg.clone()
            },
            "sampling beams",
        ),
        (
            GenerationConfig {
                num_beams: 2,
                length_penalty: f32::NAN,
                ..cfg.clone()
            },
            "length_penalty",
        ),
    ] {
        let err = model
            .beam_search(&input, &bad)
            .expect_err(needle)
            .to_string();
        assert!(err.contains(needle), "{err}");
    }
}
