//! Reading a model directory by the one precedence rule (docs/model.md §"Model directories"):
//! config.json first, then the fields `preprocessor_config.json` has, then the tokenizer, whose
//! special token ids are set on the model. The directory is an export of a tiny random model
//! (the released layout's files: `config.json`, `model.safetensors`, tokenizer files) with and
//! without a `preprocessor_config.json`.

use std::path::Path;

use blip3_data::anyres::{AnyResGrid, ResolutionMode};
use blip3_data::tokenizer::Blip3Tokenizer;
use blip3_model::loader::{LoadOptions, export_hf};
use blip3_model::{XGenMMConfig, device::Backend};
use blip3_processor::{
    ModelDir, PREPROCESSOR_CONFIG, Processor, ProcessorError, PromptFormat, TokenizerSource,
    image_config_for,
};
use burn::prelude::*;

fn device() -> Device {
    Backend::Flex.device(0).expect("flex device")
}

/// A tiny model exported in HF layout with the tiny tokenizer saved beside it.
fn model_dir(with_tokenizer: bool) -> (tempfile::TempDir, XGenMMConfig) {
    let tok = Blip3Tokenizer::tiny().expect("tiny tokenizer");
    let mut cfg = XGenMMConfig::tiny(tok.initial_len());
    // Canvases unlike the v1.5 defaults, so that the tests tell the model's apart from those.
    let b = cfg.vision.image_size;
    cfg.anyres_grids = vec![(2 * b, 2 * b), (3 * b, b)];
    let model = cfg.init(&device());
    let dir = tempfile::tempdir().expect("tempdir");
    export_hf(&model, dir.path(), None).expect("export");
    if with_tokenizer {
        tok.save(dir.path()).expect("save tokenizer");
    }
    (dir, cfg)
}

fn write_pre(dir: &Path, json: &str) {
    std::fs::write(dir.join(PREPROCESSOR_CONFIG), json).expect("write preprocessor config");
}

#[test]
fn without_preprocessor_config_the_model_config_decides() {
    let (dir, cfg) = model_dir(true);
    let md = ModelDir::open(dir.path(), &TokenizerSource::ModelDir).expect("open");
    assert!(md.preprocessor.is_none());
    assert_eq!(md.image, image_config_for(&cfg).expect("image config"));
    assert_eq!(md.image.image_size as usize, cfg.vision.image_size);
    assert_eq!(md.image.image_mean, [0.5; 3]);
    assert_eq!(md.image.mode, ResolutionMode::AnyRes);
    let base = cfg.vision.image_size;
    let want: Vec<AnyResGrid> = cfg
        .anyres_grids
        .iter()
        .map(|&(w, h)| AnyResGrid::new((w / base) as u32, (h / base) as u32))
        .collect();
    assert_eq!(md.image.grids, want);
    assert_eq!(want, vec![AnyResGrid::new(2, 2), AnyResGrid::new(3, 1)]);
}

#[test]
fn a_partial_preprocessor_config_overrides_only_its_fields() {
    let (dir, cfg) = model_dir(true);
    write_pre(
        dir.path(),
        r#"{"image_mean": [0.25, 0.5, 0.75], "image_std": [0.2, 0.3, 0.4], "do_resize": true}"#,
    );
    let md = ModelDir::open(dir.path(), &TokenizerSource::ModelDir).expect("open");
    let model_only = image_config_for(&cfg).expect("image config");
    assert_eq!(
        md.preprocessor.as_deref(),
        Some(dir.path().join(PREPROCESSOR_CONFIG).as_path())
    );
    assert_eq!(md.image.image_mean, [0.25, 0.5, 0.75]);
    assert_eq!(md.image.image_std, [0.2, 0.3, 0.4]);
    // Everything the file does not say stays the model's (not the v1.5 defaults).
    assert_eq!(md.image.grids, model_only.grids);
    assert_eq!(md.image.image_size, model_only.image_size);
    assert_eq!(md.image.mode, model_only.mode);

    write_pre(dir.path(), r#"{"image_aspect_ratio": "pad"}"#);
    let md = ModelDir::open(dir.path(), &TokenizerSource::ModelDir).expect("open");
    assert_eq!(md.image.mode, ResolutionMode::Fixed);
    assert_eq!(md.image.image_mean, [0.5; 3]);
    assert_eq!(md.image.grids, model_only.grids);

    let base = cfg.vision.image_size;
    write_pre(
        dir.path(),
        &format!(
            r#"{{"anyres_grids": [[{b}, {b2}]], "size": {{"height": {b}, "width": {b}}}}}"#,
            b = base,
            b2 = 2 * base
        ),
    );
    let md = ModelDir::open(dir.path(), &TokenizerSource::ModelDir).expect("open");
    assert_eq!(md.image.grids, vec![AnyResGrid::new(1, 2)]);
}

#[test]
fn a_preprocessor_view_size_the_vision_tower_cannot_take_is_an_error() {
    let (dir, cfg) = model_dir(true);
    write_pre(
        dir.path(),
        &format!(r#"{{"image_size": {}}}"#, 2 * cfg.vision.image_size),
    );
    let err = ModelDir::open(dir.path(), &TokenizerSource::ModelDir).expect_err("size mismatch");
    let msg = err.to_string();
    assert!(msg.contains(PREPROCESSOR_CONFIG), "{msg}");
    assert!(
        msg.contains(&format!("{}", 2 * cfg.vision.image_size)),
        "{msg}"
    );
    assert!(matches!(err, ProcessorError::Mismatch(_)));

    write_pre(dir.path(), r#"{"image_mean": [0.5, 0.5]}"#);
    let msg = ModelDir::open(dir.path(), &TokenizerSource::ModelDir)
        .expect_err("two means")
        .to_string();
    assert!(
        msg.contains(PREPROCESSOR_CONFIG) && msg.contains("image_mean"),
        "{msg}"
    );

    write_pre(dir.path(), "{not json");
    let msg = ModelDir::open(dir.path(), &TokenizerSource::ModelDir)
        .expect_err("bad json")
        .to_string();
    assert!(msg.contains(PREPROCESSOR_CONFIG), "{msg}");
}

#[test]
fn the_tokenizer_sets_the_special_tokens_and_must_fit_the_vocabulary() {
    let (dir, _) = model_dir(true);
    let loaded = blip3_processor::load(
        dir.path(),
        &TokenizerSource::ModelDir,
        &device(),
        LoadOptions::default(),
    )
    .expect("load");
    let tok = loaded.processor.tokenizer();
    let ids = loaded.model.special_tokens();
    assert_eq!(ids.image, tok.image_token_id());
    assert_eq!(ids.pad, tok.pad_id());
    assert_eq!(loaded.dir.tokenizer_name, dir.path().display().to_string());

    // Missing tokenizer.json: the tiny tokenizer stands in only because the vocabulary fits.
    let (bare, _) = model_dir(false);
    let md = ModelDir::open(bare.path(), &TokenizerSource::ModelDir).expect("tiny fallback");
    assert_eq!(md.tokenizer_name, "tiny");

    // A model built for another vocabulary refuses the tokenizer, naming both sizes.
    let other = XGenMMConfig::tiny(64);
    let tok = Blip3Tokenizer::tiny().expect("tiny");
    let err = Processor::for_config(tok.clone(), &other).expect_err("vocabulary mismatch");
    assert!(err.to_string().contains("64"), "{err}");
    let missing = bare.path().join("nowhere");
    let err = ModelDir::open(bare.path(), &TokenizerSource::Dir(missing.clone()))
        .expect_err("missing tokenizer dir");
    assert!(err.to_string().contains("nowhere"), "{err}");
}

#[test]
fn prompts_stop_ids_and_replies() {
    let tok = Blip3Tokenizer::tiny().expect("tiny");
    let cfg = XGenMMConfig::tiny(tok.initial_len());
    let p = Processor::for_config(tok.clone(), &cfg).expect("processor");

    let chat = p
        .encode(PromptFormat::Chat, "<image>\nhi", 1)
        .expect("chat");
    assert_eq!(chat.stop_ids, vec![tok.end_id(), tok.eos_id()]);
    let assistant = tok.encode("<|assistant|>\n", false).expect("encode");
    assert!(chat.ids.ends_with(&assistant), "{:?}", chat.ids);
    assert_eq!(
        chat.ids
            .iter()
            .filter(|&&t| t == tok.image_token_id())
            .count(),
        1
    );

    let raw = p.encode(PromptFormat::Raw, "<image>a cat", 1).expect("raw");
    assert_eq!(raw.stop_ids, vec![tok.endofchunk_id(), tok.eos_id()]);
    assert_eq!(Some(raw.ids[0]), tok.bos_id());
    let err = p
        .encode(PromptFormat::Raw, "<image><image>two", 1)
        .expect_err("markers");
    assert!(
        err.to_string().contains("2 <image> markers but 1 images"),
        "{err}"
    );
    let err = p
        .encode(PromptFormat::Chat, "no marker", 1)
        .expect_err("markers");
    assert!(matches!(err, ProcessorError::Prompt(_)), "{err}");

    // A reply is cut at the first stop id; streaming shows the same text piece by piece.
    let mut ids = tok.encode("a red square", false).expect("encode");
    let text_len = ids.len();
    ids.push(tok.end_id());
    ids.extend(tok.encode("ignored", false).expect("encode"));
    let reply = p.decode_reply(&ids, &chat.stop_ids).expect("decode");
    assert_eq!(reply, tok.decode(&ids[..text_len], true).expect("decode"));
    let mut stream = p.text_stream(&chat.stop_ids);
    let mut shown = String::new();
    for &id in &ids[..=text_len] {
        if let Some(piece) = stream.push(id) {
            shown.push_str(&piece);
        }
    }
    assert_eq!(shown, reply);
    assert_eq!(stream.ids(), &ids[..text_len]);
}

#[test]
fn context_check_counts_vision_tokens() {
    let tok = Blip3Tokenizer::tiny().expect("tiny");
    let cfg = XGenMMConfig::tiny(tok.initial_len());
    let p = Processor::for_config(tok, &cfg).expect("processor");
    let rgb = blip3_data::image::RgbImage::from_pixel(3 * 40, 40, image_pixel());
    let img = p.image(&rgb, &device()).expect("image");
    let views = img.pixels.dims()[0];
    assert!(views > 1, "a wide image is tiled");
    let prompt = p
        .encode(PromptFormat::Chat, "<image>\nwhat?", 1)
        .expect("prompt");
    let text = prompt.ids.len() - 1;
    let positions = p.prompt_positions(&prompt, std::slice::from_ref(&img));
    let groups = if cfg.anyres_patch_sampling { views } else { 1 };
    assert_eq!(positions, text + groups * cfg.resampler.num_latents);
    let context = cfg.text.max_position_embeddings;
    assert_eq!(
        p.check_context(&prompt, std::slice::from_ref(&img), context - positions)
            .expect("fits"),
        positions
    );
    let err = p
        .check_context(&prompt, std::slice::from_ref(&img), context - positions + 1)
        .expect_err("one token too many");
    assert!(
        err.to_string().contains(&format!("context of {context}")),
        "{err}"
    );
}

fn image_pixel() -> image::Rgb<u8> {
    image::Rgb([200, 30, 30])
}
