//! Cross-crate: a model directory in the released layout (HF `config.json`, safetensors weights,
//! tokenizer files, a `preprocessor_config.json`) through `blip3-processor` → `blip3-model` →
//! text, against the same steps composed by hand from the data and model crates. The processor
//! must feed the model exactly what the documented rule says (docs/model.md §"Model
//! directories"): the model's own canvases and view size, the preprocessor file's mean/std, the
//! chat template with its default system sentence, and the tokenizer's special token ids.

use std::path::{Path, PathBuf};

use blip3_data::anyres::{AnyResGrid, ImageProcessor, ImageProcessorConfig, ResolutionMode};
use blip3_data::image::decode_path;
use blip3_data::sample::{Origin, Role, Turn};
use blip3_data::template::ChatTemplate;
use blip3_data::tokenizer::Blip3Tokenizer;
use blip3_model::loader::{LoadOptions, export_hf, load_xgenmm_dir};
use blip3_model::{GenerationConfig, ImageInput, MultimodalInput, SpecialTokens, XGenMMConfig};
use blip3_processor::{Loaded, PromptFormat, TokenizerSource};
use burn::prelude::*;

/// A committed test image (a 37×211 RGBA PNG: tall, so it is tiled, with alpha to composite).
fn image_path() -> PathBuf {
    blip3_tests::fixture("anyres/images/alpha_37x211.png")
}

const MEAN: [f32; 3] = [0.48145466, 0.4578275, 0.40821073];
// The CLIP constants digit for digit as preprocessor_config.json writes them.
#[allow(clippy::excessive_precision)]
const STD: [f32; 3] = [0.26862954, 0.26130258, 0.27577711];

/// A tiny random model exported in the released layout, with the tiny tokenizer and a partial
/// `preprocessor_config.json` (mean/std only, as CLIP-style processors write them).
fn released_dir(dir: &Path, device: &Device) -> XGenMMConfig {
    let tok = Blip3Tokenizer::tiny().expect("tiny tokenizer");
    let mut cfg = XGenMMConfig::tiny(tok.initial_len());
    let b = cfg.vision.image_size;
    cfg.anyres_grids = vec![(b, 2 * b), (b, 3 * b), (2 * b, b)];
    device.seed(3);
    let model = cfg.init(device);
    export_hf(&model, dir, None).expect("export");
    tok.save(dir).expect("tokenizer");
    let pre = serde_json::json!({
        "image_processor_type": "Blip3ImageProcessor",
        "image_mean": MEAN,
        "image_std": STD,
        "do_normalize": true,
    });
    std::fs::write(dir.join("preprocessor_config.json"), pre.to_string()).expect("write");
    cfg
}

#[test]
fn released_layout_through_processor_matches_the_hand_composed_pipeline() {
    let device = Device::flex();
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = released_dir(tmp.path(), &device);
    let prompt = "<image>\nWhat colour is the square?";

    // Through the processor.
    let Loaded {
        model, processor, ..
    } = blip3_processor::load(
        tmp.path(),
        &TokenizerSource::ModelDir,
        &device,
        LoadOptions::default(),
    )
    .expect("load through the processor");
    let rgb = decode_path(&image_path()).expect("decode");
    let image = processor.image(&rgb, &device).expect("image");
    let encoded = processor
        .encode(PromptFormat::Chat, prompt, 1)
        .expect("encode");
    let input = MultimodalInput {
        input_ids: vec![encoded.ids.clone()],
        images: vec![vec![image]],
        labels: None,
    };

    // By hand: the model crate's loader, the data crate's pieces, the rule written out.
    let tok = Blip3Tokenizer::from_dir(tmp.path()).expect("tokenizer");
    let by_hand_model = load_xgenmm_dir(tmp.path(), &device, LoadOptions::default())
        .expect("load")
        .with_special_tokens(SpecialTokens {
            image: tok.image_token_id(),
            pad: tok.pad_id(),
        });
    let b = cfg.vision.image_size as u32;
    let images = ImageProcessor::new(ImageProcessorConfig {
        image_size: b,
        image_mean: MEAN,
        image_std: STD,
        grids: vec![
            AnyResGrid::new(1, 2),
            AnyResGrid::new(1, 3),
            AnyResGrid::new(2, 1),
        ],
        mode: ResolutionMode::AnyRes,
        limits: None,
    })
    .expect("image processor");
    let p = images.process(&rgb).expect("process");
    assert_eq!(
        (p.grid_cols, p.grid_rows),
        (1, 3),
        "a tall image takes the tall canvas"
    );
    let [v, c, s, _] = p.shape();
    let by_hand_image = ImageInput::from_host(
        p.pixels,
        v,
        c,
        s,
        (p.grid_cols as usize, p.grid_rows as usize),
        (p.original_width as usize, p.original_height as usize),
        &device,
    )
    .expect("image input");
    let turns = [Turn {
        role: Role::User,
        text: prompt.to_string(),
    }];
    let ids = ChatTemplate::default()
        .encode_prompt(&tok, &turns, 1, &Origin::default())
        .expect("template");
    assert_eq!(encoded.ids, ids, "prompt ids");
    let by_hand = MultimodalInput {
        input_ids: vec![ids],
        images: vec![vec![by_hand_image]],
        labels: None,
    };

    // Same logits, bit for bit.
    let ours = model.forward(&input).expect("forward").logits;
    let theirs = by_hand_model.forward(&by_hand).expect("forward").logits;
    assert_eq!(ours.dims(), theirs.dims());
    let diff: f32 = (ours - theirs).abs().max().into_scalar();
    assert_eq!(
        diff, 0.0,
        "logits through the processor differ from the hand-built input"
    );

    // Same reply text, greedy.
    let sampling = GenerationConfig {
        max_new_tokens: 8,
        ..GenerationConfig::default()
    };
    let cfg_gen = processor.generation_config(&sampling, &encoded);
    assert_eq!(cfg_gen.stop_ids, vec![tok.end_id(), tok.eos_id()]);
    let g = model
        .generate(&input, &cfg_gen, |_, _| true)
        .expect("generate");
    let text = processor
        .decode_reply(&g[0].token_ids, &encoded.stop_ids)
        .expect("decode");
    let h = by_hand_model
        .generate(&by_hand, &cfg_gen, |_, _| true)
        .expect("generate");
    assert_eq!(g[0].token_ids, h[0].token_ids);
    let cut = h[0]
        .token_ids
        .iter()
        .position(|t| cfg_gen.stop_ids.contains(t))
        .unwrap_or(h[0].token_ids.len());
    assert_eq!(
        text,
        tok.decode(&h[0].token_ids[..cut], true).expect("decode")
    );
}
