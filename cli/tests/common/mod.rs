//! What the CLI tests share: the `blip3` binary under test and a tiny random-weight model saved
//! like a user's checkpoint (weights, `config.json`, tokenizer).
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

use blip3_data::tokenizer::Blip3Tokenizer;
use blip3_model::loader::save_checkpoint;
use blip3_model::{SpecialTokens, XGenMMConfig};
use burn::module::{Module, ModuleMapper, Param};
use burn::prelude::*;

/// The `blip3` binary built for these tests.
pub fn blip3() -> Command {
    Command::new(env!("CARGO_BIN_EXE_blip3"))
}

/// Multiplies every parameter by a constant.
struct Scale(f32);

impl ModuleMapper for Scale {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let s = self.0;
        param.map(move |t| t * s)
    }
}

/// Saves the tiny model (random weights from `seed`) with the tiny tokenizer under `dir`. A
/// `head_scale` widens the output head so that greedy choices are clear-cut rather than
/// near-ties between random logits.
///
/// The flex generator is process-wide and a test binary runs its tests on parallel threads: the
/// seeding and the initialisation happen under one lock, so that the same seed always gives the
/// same weights (without it, two tests drawing at once each got a mix of both streams, a different
/// model on every run).
pub fn tiny_model_dir_with(dir: &Path, seed: u64, head_scale: Option<f32>) {
    static SEEDED_INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let tok = Blip3Tokenizer::tiny().unwrap();
    let device = Device::flex();
    let model = {
        let _only_us = SEEDED_INIT.lock().unwrap_or_else(|e| e.into_inner());
        device.seed(seed);
        XGenMMConfig::tiny(tok.initial_len()).init(&device)
    };
    let mut model = model.with_special_tokens(SpecialTokens {
        image: tok.image_token_id(),
        pad: tok.pad_id(),
    });
    if let Some(s) = head_scale {
        model.lang_model.lm_head = model.lang_model.lm_head.map(&mut Scale(s));
    }
    save_checkpoint(&model, dir).unwrap();
    tok.save(dir).unwrap();
}

/// The tiny model with seed 7 and its random head.
pub fn tiny_model_dir(dir: &Path) {
    tiny_model_dir_with(dir, 7, None);
}

/// Writes a 90x40 test image (a 3x1 any-res canvas for the tiny model) as `dir/wide.png`.
pub fn wide_png(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("wide.png");
    image::RgbImage::from_fn(90, 40, |x, y| {
        image::Rgb([(x * 3) as u8, (y * 5) as u8, 120])
    })
    .save(&path)
    .unwrap();
    path
}

/// Runs a command that must succeed and returns its stdout; a failure shows both streams.
pub fn succeeded(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run the command");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The rows of a JSON-lines file (the benchmarks' result files).
pub fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// Runs `blip3 generate --model MODEL ARGS --json --log warn` and returns its JSON line.
pub fn generate_json(model: &Path, args: &[&str]) -> serde_json::Value {
    let stdout = succeeded(
        blip3()
            .args(["generate", "--model"])
            .arg(model)
            .args(args)
            .args(["--json", "--log", "warn"]),
    );
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}
