//! Few-shot and instruction prompts, checked token by token with the tiny tokenizer: the
//! in-context images come first and in example order, each example ends in `<|endofchunk|>`
//! and a newline, the query image is last, zero-shot prompts keep their examples as text only,
//! and the text between the special tokens is exactly OpenFlamingo's.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use blip3_data::readers::eval_data::{ImageLocator, load_coco_captions, load_vqa};
use blip3_data::sample::ImageSource;
use blip3_data::template::ChatTemplate;
use blip3_data::tokenizer::Blip3Tokenizer;
use blip3_data::{Origin, Role, Turn};
use blip3_eval::engine::{PostProcess, Prompt};
use blip3_eval::suites::synthetic::specs;
use blip3_eval::suites::{Benchmark, BuildContext, PromptStyle, Spec, Truth};

fn ctx(shots: usize, style: PromptStyle) -> BuildContext {
    BuildContext {
        shots,
        style,
        seed: 42,
        limit: Some(5),
        zero_shot_text_demos: 2,
        query_set_size: 2048,
        max_new_tokens: None,
        circular: true,
    }
}

fn build(dir: &std::path::Path, name: &str, c: &BuildContext) -> (Benchmark, Spec) {
    let spec = specs(dir)
        .unwrap()
        .into_iter()
        .find(|s| match s {
            Spec::Caption(x) => x.name == name,
            Spec::Vqa(x) => x.name == name,
            Spec::Pope(x) => x.name == name,
            Spec::Mc(x) => x.name == name,
            Spec::Safety(x) => x.name == name,
        })
        .unwrap();
    (spec.build(c).unwrap(), spec)
}

/// Splits ids at the image and end-of-chunk tokens: the sequence of those markers and the
/// decoded text spans around them (`spans.len() == markers.len() + 1`).
fn split(tok: &Blip3Tokenizer, ids: &[u32]) -> (Vec<char>, Vec<String>) {
    let (img, eoc) = (tok.image_token_id(), tok.endofchunk_id());
    let mut markers = Vec::new();
    let mut spans = Vec::new();
    let mut cur = Vec::new();
    for &t in ids {
        if t == img || t == eoc {
            spans.push(tok.decode(&cur, true).unwrap());
            cur.clear();
            markers.push(if t == img { 'I' } else { 'E' });
        } else {
            cur.push(t);
        }
    }
    spans.push(tok.decode(&cur, true).unwrap());
    (markers, spans)
}

fn path(src: &ImageSource) -> PathBuf {
    match src {
        ImageSource::Path(p) => p.clone(),
        other => panic!("expected a file image, got {}", other.describe()),
    }
}

#[test]
fn few_shot_captioning_interleaves_k_images_before_the_query() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = common::synth_corpus(tmp.path());
    let tok = Blip3Tokenizer::tiny().unwrap();
    // Reference captions by image file, read independently of the suite.
    let loc = ImageLocator::new(dir.join("eval/images"), "{id}.jpg").unwrap();
    let coco = load_coco_captions(&dir.join("eval/captions.json"), Some(&loc)).unwrap();
    let first_ref: HashMap<PathBuf, String> = coco
        .items
        .iter()
        .map(|c| (c.image.clone().unwrap(), c.refs[0].trim().to_string()))
        .collect();

    for shots in [4usize, 8] {
        let (bench, _) = build(&dir, "synth_captions", &ctx(shots, PromptStyle::FewShot));
        assert_eq!(bench.items.len(), 5);
        for item in &bench.items {
            let r = &item.request;
            assert_eq!(r.post, PostProcess::FewShotCaption);
            assert_eq!(r.max_new_tokens, 20);
            let Prompt::Raw(text) = &r.prompt else {
                panic!("few-shot prompts are raw text")
            };
            let ids = tok.encode(text, true).unwrap();
            assert_eq!(ids[0], tok.bos_id().unwrap(), "BOS first");
            let (markers, spans) = split(&tok, &ids);
            // k × (image, end-of-chunk), then the query image.
            let mut expected: Vec<char> = "IE".repeat(shots).chars().collect();
            expected.push('I');
            assert_eq!(markers, expected);
            assert_eq!(r.images.len(), shots + 1);
            // The query image is last and is the item's own image.
            let Truth::Caption { image_id, .. } = &item.truth else {
                panic!()
            };
            let query = path(r.images.last().unwrap());
            assert_eq!(
                query.file_stem().unwrap().to_string_lossy(),
                format!(
                    "synth_val_{:012}",
                    image_id.to_string().parse::<u64>().unwrap()
                )
            );
            // Before the first image: only BOS (skipped when decoding).
            assert_eq!(spans[0], "");
            for k in 0..shots {
                // Example k: its image, "Output:" + that image's first reference, end of chunk.
                let img = path(&r.images[k]);
                assert_ne!(img, query, "an example shows the query image");
                assert_eq!(spans[1 + 2 * k], format!("Output:{}", first_ref[&img]));
                // Between the end of chunk and the next image: the newline.
                assert_eq!(spans[2 + 2 * k], "\n");
            }
            assert_eq!(spans.last().unwrap(), "Output:");
            let distinct: std::collections::HashSet<_> =
                r.images[..shots].iter().map(path).collect();
            assert_eq!(distinct.len(), shots, "examples are distinct");
        }
    }
}

#[test]
fn zero_shot_keeps_text_only_examples_and_one_image() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = common::synth_corpus(tmp.path());
    let tok = Blip3Tokenizer::tiny().unwrap();
    let (bench, _) = build(&dir, "synth_captions", &ctx(0, PromptStyle::FewShot));
    for item in &bench.items {
        let r = &item.request;
        assert_eq!(r.images.len(), 1);
        let ids = tok.encode(r.prompt.text(), true).unwrap();
        let (markers, spans) = split(&tok, &ids);
        assert_eq!(
            markers,
            vec!['E', 'E', 'I'],
            "two text-only examples, then the image"
        );
        assert!(spans[0].starts_with("Output:"));
        assert!(spans[1].starts_with("\nOutput:"), "{:?}", spans[1]);
        assert_eq!(spans[2], "\n");
        assert_eq!(spans[3], "Output:");
    }
}

#[test]
fn few_shot_vqa_uses_question_and_first_answer() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = common::synth_corpus(tmp.path());
    let tok = Blip3Tokenizer::tiny().unwrap();
    let loc = ImageLocator::new(dir.join("eval/images"), "synth_val_{id:012}.jpg").unwrap();
    let vqa = load_vqa(
        &dir.join("eval/vqa_questions.json"),
        Some(&dir.join("eval/vqa_annotations.json")),
        &loc,
    )
    .unwrap();
    // Question texts and first answers by image stem (images may be .png).
    let mut by_stem: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for q in &vqa.items {
        let stem = q.image.file_stem().unwrap().to_string_lossy().to_string();
        by_stem
            .entry(stem)
            .or_default()
            .push((q.question.clone(), q.answers[0].clone()));
    }
    let shots = 4;
    let (bench, _) = build(&dir, "synth_vqav2", &ctx(shots, PromptStyle::FewShot));
    for (item, q) in bench.items.iter().zip(&vqa.items) {
        let r = &item.request;
        assert_eq!(r.post, PostProcess::FewShotVqa);
        assert_eq!(r.max_new_tokens, 5);
        let ids = tok.encode(r.prompt.text(), true).unwrap();
        let (markers, spans) = split(&tok, &ids);
        let mut expected: Vec<char> = "IE".repeat(shots).chars().collect();
        expected.push('I');
        assert_eq!(markers, expected);
        let query = path(r.images.last().unwrap());
        assert_eq!(query.file_stem(), q.image.file_stem());
        for k in 0..shots {
            let stem = path(&r.images[k])
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .to_string();
            assert_ne!(
                Some(stem.as_ref()),
                query.file_stem().and_then(|s| s.to_str())
            );
            let span = &spans[1 + 2 * k];
            assert!(
                by_stem[&stem]
                    .iter()
                    .any(|(qq, a)| *span == format!("Question:{qq} Short answer:{a}")),
                "example {k} {span:?} is not a question of its image"
            );
            assert_eq!(spans[2 + 2 * k], "\n");
        }
        assert_eq!(
            spans.last().unwrap(),
            &format!("Question:{} Short answer:", q.question)
        );
    }
}

#[test]
fn chat_prompts_put_the_image_first_in_the_user_turn() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = common::synth_corpus(tmp.path());
    let tok = Blip3Tokenizer::tiny().unwrap();
    let (pope, _) = build(&dir, "synth_pope", &ctx(0, PromptStyle::Chat));
    let (mc, _) = build(&dir, "synth_mmbench", &ctx(0, PromptStyle::Chat));
    let template = ChatTemplate::new();
    for item in pope.items.iter().chain(&mc.items) {
        let Prompt::Chat(text) = &item.request.prompt else {
            panic!("instruction prompts use the chat template")
        };
        assert_eq!(item.request.images.len(), 1);
        let turns = [Turn {
            role: Role::User,
            text: text.clone(),
        }];
        let ids = template
            .encode_prompt(&tok, &turns, 1, &Origin::default())
            .unwrap();
        let img_at: Vec<usize> = ids
            .iter()
            .enumerate()
            .filter(|(_, t)| **t == tok.image_token_id())
            .map(|(i, _)| i)
            .collect();
        assert_eq!(img_at.len(), 1);
        // The image comes right after `<|user|>` (the chat tokens strip the newline after
        // them) and is followed by the newline and the question.
        let user = tok.token_to_id("<|user|>").unwrap();
        assert_eq!(ids[img_at[0] - 1], user);
        let rest = tok.decode(&ids[img_at[0] + 1..], false).unwrap();
        assert!(rest.starts_with('\n'), "{rest:?}");
        let expected_end = match &item.truth {
            Truth::Pope { .. } => {
                "\nAnswer the question using a single word or phrase.<|end|><|assistant|>"
            }
            _ => {
                "\nAnswer with the option's letter from the given choices directly.<|end|><|assistant|>"
            }
        };
        assert!(rest.ends_with(expected_end), "{rest:?}");
        assert_eq!(
            *ids.last().unwrap(),
            tok.token_to_id("<|assistant|>").unwrap()
        );
    }
    // Multiple choice: four lettered options in the rotated order of each copy.
    let Truth::Mc { options, .. } = &mc.items[1].truth else {
        panic!()
    };
    let Truth::Mc { options: first, .. } = &mc.items[0].truth else {
        panic!()
    };
    assert_eq!(options[..3], first[1..]);
    assert_eq!(options[3], first[0]);
    for (i, o) in options.iter().enumerate() {
        let line = format!("\n{}. {o}", char::from(b'A' + i as u8));
        assert!(mc.items[1].request.prompt.text().contains(&line));
    }
}
