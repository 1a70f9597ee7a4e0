//! Helpers shared by the evaluation integration tests: a tiny random-weight model saved the way
//! a user would have it, and the tiny synthetic corpus.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use blip3_data::synth::{SynthConfig, write_corpus};
use blip3_data::tokenizer::Blip3Tokenizer;
use blip3_eval::engine::{EvalModel, TokenizerSource};
use blip3_model::loader::save_checkpoint;
use blip3_model::{SpecialTokens, XGenMMConfig};
use burn::prelude::Device;

/// Builds the tiny model with random weights and saves it, with the tiny tokenizer, under
/// `dir/model`; returns that directory.
pub fn tiny_model_dir(dir: &Path) -> PathBuf {
    let tok = Blip3Tokenizer::tiny().unwrap();
    let cfg = XGenMMConfig::tiny(tok.initial_len());
    let model = cfg
        .init(&Device::flex())
        .with_special_tokens(SpecialTokens {
            image: tok.image_token_id(),
            pad: tok.pad_id(),
        });
    let out = dir.join("model");
    save_checkpoint(&model, &out).unwrap();
    tok.save(&out).unwrap();
    out
}

/// Loads a model directory like `blip3 eval` does, on the CPU.
pub fn load(dir: &Path) -> EvalModel {
    EvalModel::load(dir, &TokenizerSource::ModelDir, &Device::flex(), None).unwrap()
}

/// Writes the tiny synthetic corpus under `dir/synth`; returns that directory.
pub fn synth_corpus(dir: &Path) -> PathBuf {
    let out = dir.join("synth");
    write_corpus(&out, &SynthConfig::tiny()).unwrap();
    out
}

/// The strings of a JSON array (fixture files), panicking on anything else.
pub fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|s| s.as_str().expect("string").to_string())
        .collect()
}
