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
pub fn tiny_model_dir_with(dir: &Path, seed: u64, head_scale: Option<f32>) {
    let tok = Blip3Tokenizer::tiny().unwrap();
    let device = Device::flex();
    device.seed(seed);
    let mut model = XGenMMConfig::tiny(tok.initial_len())
        .init(&device)
        .with_special_tokens(SpecialTokens {
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
