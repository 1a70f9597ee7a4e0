//! The sample pipeline: each raw sample kind becomes a training sample whose ids, labels and
//! images agree (one `<image>` id per kept image, vision tokens counted in truncation), DPO pairs
//! share prompt and images, and image failures are sample errors naming the sample and image.

use std::io::Cursor;
use std::path::PathBuf;
use std::sync::Arc;

use blip3_data::anyres::{AnyResGrid, ImageProcessor, ImageProcessorConfig, ResolutionMode};
use blip3_data::error::BadKind;
use blip3_data::pipeline::{Pipeline, PipelineConfig, TrainSample};
use blip3_data::sample::{ImageSource, Origin, RawSample, Role, Turn};
use blip3_data::template::IGNORE_INDEX;
use blip3_data::tokenizer::Blip3Tokenizer;

const PER_VIEW: usize = 4;

fn pipeline(mode: ResolutionMode, max_len: usize) -> Pipeline {
    let config = PipelineConfig {
        image: ImageProcessorConfig {
            image_size: 32,
            grids: AnyResGrid::v1_5_candidates(),
            mode,
            ..ImageProcessorConfig::default()
        },
        max_len,
        system_prompt: None,
        vision_tokens_per_group: PER_VIEW,
    };
    Pipeline::new(Blip3Tokenizer::tiny().unwrap(), config).unwrap()
}

/// A PNG of `w x h` pixels, as an in-memory image source.
fn png(w: u32, h: u32, name: &str) -> ImageSource {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8, (y * 5) as u8, 90]));
    let mut bytes = Vec::new();
    img.write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png)
        .unwrap();
    ImageSource::Bytes {
        bytes: Arc::new(bytes),
        name: name.to_string(),
    }
}

fn origin(key: &str) -> Origin {
    Origin {
        file: "data.jsonl".into(),
        key: key.into(),
    }
}

fn turn(role: Role, text: &str) -> Turn {
    Turn {
        role,
        text: text.into(),
    }
}

/// Ids and images agree: one `<image>` id per image, labels aligned, images ignored in labels;
/// the expanded length counts every view's tokens (the longer side of a DPO pair).
fn check_consistent(p: &Pipeline, s: &TrainSample) {
    let image_id = p.tokenizer().image_token_id();
    let mut longest = 0;
    for seq in std::iter::once(&s.seq).chain(&s.rejected) {
        let markers = seq.input_ids.iter().filter(|&&id| id == image_id).count();
        assert_eq!(markers, s.images.len());
        assert_eq!(seq.input_ids.len(), seq.labels.len());
        for (&id, &label) in seq.input_ids.iter().zip(&seq.labels) {
            if id == image_id {
                assert_eq!(label, IGNORE_INDEX);
            }
        }
        longest = longest.max(seq.input_ids.len());
    }
    let vision: usize = s.images.iter().map(|i| i.num_views * PER_VIEW).sum();
    assert_eq!(s.expanded_len(PER_VIEW), longest - s.images.len() + vision);
}

#[test]
fn every_kind_becomes_a_consistent_sample() {
    let p = pipeline(ResolutionMode::AnyRes, 2048);
    let image = png(60, 30, "c.png");
    let caption = p
        .process(RawSample::Caption {
            origin: origin("c"),
            image: image.clone(),
            caption: "a wide red square".into(),
        })
        .unwrap();
    check_consistent(&p, &caption);
    assert_eq!(caption.images.len(), 1);
    // The images are the image processor's output for the configured mode.
    let processor = ImageProcessor::new(p.config().image.clone()).unwrap();
    assert_eq!(caption.images[0], processor.process_source(&image).unwrap());
    assert!(caption.images[0].num_views > 1, "any-res adds crops");
    assert!(caption.rejected.is_none());

    let doc = p
        .process(RawSample::Interleaved {
            origin: origin("d"),
            text: "<image>a cat<|endofchunk|><image>a dog".into(),
            images: vec![png(40, 40, "a.png"), png(20, 60, "b.png")],
        })
        .unwrap();
    check_consistent(&p, &doc);
    assert_eq!(doc.images.len(), 2);

    let conv = p
        .process(RawSample::Conversation {
            origin: origin("v"),
            images: vec![png(50, 50, "v.png")],
            turns: vec![
                turn(Role::User, "<image>\nWhat is it?"),
                turn(Role::Assistant, "A square."),
            ],
        })
        .unwrap();
    check_consistent(&p, &conv);
    assert!(conv.seq.labels.iter().any(|&l| l != IGNORE_INDEX));

    let text_only = p
        .process(RawSample::Conversation {
            origin: origin("t"),
            images: vec![],
            turns: vec![turn(Role::User, "Hi"), turn(Role::Assistant, "Hello.")],
        })
        .unwrap();
    check_consistent(&p, &text_only);
    assert!(text_only.images.is_empty());
}

#[test]
fn preference_pairs_share_prompt_and_images() {
    let p = pipeline(ResolutionMode::AnyRes, 2048);
    let raw = RawSample::Preference {
        origin: origin("p"),
        images: vec![png(30, 30, "p.png")],
        prompt: vec![turn(Role::User, "<image>\nWhat colour?")],
        chosen: "Red.".into(),
        rejected: "A green circle.".into(),
    };
    let s = p.process(raw).unwrap();
    check_consistent(&p, &s);
    let rejected = s.rejected.as_ref().unwrap();
    // Each side equals the conversation with that answer.
    let alone = |answer: &str| {
        p.process(RawSample::Conversation {
            origin: origin("p"),
            images: vec![png(30, 30, "p.png")],
            turns: vec![
                turn(Role::User, "<image>\nWhat colour?"),
                turn(Role::Assistant, answer),
            ],
        })
        .unwrap()
    };
    assert_eq!(s.seq, alone("Red.").seq);
    assert_eq!(rejected, &alone("A green circle.").seq);
    assert_eq!(s.images, alone("Red.").images);
}

#[test]
fn truncation_counts_vision_tokens_and_drops_whole_images() {
    // Fixed mode: one view = 4 tokens an image.
    let p = pipeline(ResolutionMode::Fixed, 2048);
    let images: Vec<ImageSource> = (0..4).map(|i| png(16, 16, &format!("{i}.png"))).collect();
    let text = "<image>one two three<|endofchunk|><image>four five<|endofchunk|><image>six \
                seven<|endofchunk|><image>eight nine ten eleven";
    let full = p
        .process(RawSample::Interleaved {
            origin: origin("long"),
            text: text.into(),
            images: images.clone(),
        })
        .unwrap();
    assert_eq!(full.images.len(), 4);
    assert!(full.images.iter().all(|i| i.num_views == 1));
    let full_len = full.expanded_len(PER_VIEW);

    // A limit one token short of the fourth image's vision tokens cuts just before it.
    let image_id = p.tokenizer().image_token_id();
    let fourth = full
        .seq
        .input_ids
        .iter()
        .enumerate()
        .filter(|&(_, &id)| id == image_id)
        .nth(3)
        .map(|(i, _)| i)
        .unwrap();
    let before: usize = full.seq.input_ids[..fourth]
        .iter()
        .map(|&id| if id == image_id { PER_VIEW } else { 1 })
        .sum();
    let limit = before + PER_VIEW - 1;
    assert!(limit < full_len);
    let short = pipeline(ResolutionMode::Fixed, limit)
        .process(RawSample::Interleaved {
            origin: origin("long"),
            text: text.into(),
            images,
        })
        .unwrap();
    check_consistent(&p, &short);
    assert_eq!(short.expanded_len(PER_VIEW), before);
    assert_eq!(short.seq.input_ids, full.seq.input_ids[..fourth]);
    assert_eq!(short.images[..], full.images[..3]);
}

#[test]
fn image_failures_are_sample_errors_naming_sample_and_image() {
    let p = pipeline(ResolutionMode::AnyRes, 2048);
    let corrupt = ImageSource::Bytes {
        bytes: Arc::new(b"\x89PNG\r\n\x1a\n garbage".to_vec()),
        name: "shard-00007.tar:000123.png".into(),
    };
    let err = p
        .process(RawSample::Caption {
            origin: Origin {
                file: "shard-00007.tar".into(),
                key: "000123".into(),
            },
            image: corrupt,
            caption: "x".into(),
        })
        .unwrap_err();
    assert_eq!(err.kind, BadKind::CorruptImage);
    assert_eq!(
        (err.file.as_str(), err.key.as_str()),
        ("shard-00007.tar", "000123")
    );
    assert!(err.msg.contains("000123.png"), "{}", err.msg);

    let missing = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("pipeline-no-such-image.jpg");
    let err = p
        .process(RawSample::Conversation {
            origin: origin("m"),
            images: vec![ImageSource::Path(missing.clone())],
            turns: vec![
                turn(Role::User, "<image>\nWhat?"),
                turn(Role::Assistant, "x"),
            ],
        })
        .unwrap_err();
    assert_eq!(err.kind, BadKind::MissingImage);
    assert!(
        err.msg.contains("pipeline-no-such-image.jpg"),
        "{}",
        err.msg
    );
    assert_eq!(err.key, "m");

    // Template errors pass through: two markers, one image.
    let err = p
        .process(RawSample::Interleaved {
            origin: origin("x"),
            text: "<image>a<|endofchunk|><image>b".into(),
            images: vec![png(8, 8, "x.png")],
        })
        .unwrap_err();
    assert_eq!(err.kind, BadKind::ImageCountMismatch);
}

#[test]
fn invalid_configurations_are_refused() {
    let tok = Blip3Tokenizer::tiny().unwrap();
    let zero_len = PipelineConfig {
        max_len: 0,
        ..PipelineConfig::default()
    };
    assert!(Pipeline::new(tok.clone(), zero_len).is_err());
    let zero_tokens = PipelineConfig {
        vision_tokens_per_group: 0,
        ..PipelineConfig::default()
    };
    assert!(Pipeline::new(tok.clone(), zero_tokens).is_err());
    let bad_image = PipelineConfig {
        image: ImageProcessorConfig {
            image_size: 0,
            ..ImageProcessorConfig::default()
        },
        ..PipelineConfig::default()
    };
    assert!(Pipeline::new(tok, bad_image).is_err());
}

/// The tiny tokenizer padded to Phi-3's vocabulary has Phi-3's special and media ids and
/// initial length, and tokenizes text exactly as the tiny one (the padding is never produced).
#[test]
fn tiny_tokenizer_padded_to_phi3_ids() {
    use blip3_data::tokenizer::PHI3_BASE_VOCAB;
    let tiny = Blip3Tokenizer::tiny().unwrap();
    let padded = Blip3Tokenizer::tiny_with_base_vocab(PHI3_BASE_VOCAB).unwrap();
    assert_eq!(padded.initial_len(), 32_012);
    assert_eq!(padded.media_ids(), [32_012, 32_013, 32_014]);
    for (token, id) in [
        ("<|endoftext|>", 32_000),
        ("<|assistant|>", 32_001),
        ("<|system|>", 32_006),
        ("<|end|>", 32_007),
        ("<|user|>", 32_010),
        ("<pad>", 32_011),
    ] {
        assert_eq!(padded.token_to_id(token), Some(id), "{token}");
    }
    assert_eq!(padded.bos_id(), tiny.bos_id());
    let shift = (PHI3_BASE_VOCAB - (tiny.initial_len() - 12)) as u32;
    let text = "<|user|>\nWhat colour is the large cube?<|end|>\n<|assistant|>\nIt is red.<|end|>\n\
                <image><|endofchunk|> Zebra quartz jumps!";
    let a = tiny.encode(text, true).unwrap();
    let b = padded.encode(text, true).unwrap();
    assert_eq!(a.len(), b.len());
    let base = (tiny.initial_len() - 12) as u32;
    for (x, y) in a.iter().zip(&b) {
        let want = if *x >= base { x + shift } else { *x };
        assert_eq!(*y, want, "tiny id {x}");
    }
    assert!(
        b.iter()
            .all(|&id| id < base || id >= PHI3_BASE_VOCAB as u32)
    );
    assert_eq!(
        padded.decode(&b, false).unwrap(),
        tiny.decode(&a, false).unwrap()
    );
    // No padding: the tiny tokenizer itself.
    let same = Blip3Tokenizer::tiny_with_base_vocab(0).unwrap();
    assert_eq!(same.initial_len(), tiny.initial_len());
}
