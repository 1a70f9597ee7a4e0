//! Tokenizer and chat-template tests.
//!
//! The parity cases compare, token by token, our tokenizer additions, chat template and masking
//! with `tests/fixtures/template/template_fixture.json`, written by `make_template_fixture.py`
//! (a Python re-implementation of the reference's SFT preprocessing run with Hugging Face
//! transformers on the tiny tokenizer asset). The other tests check behaviour the reference does
//! not have (truncation, count checks, loading and saving) against independent computations.

use std::path::Path;

use blip3_data::error::{BadKind, DataError};
use blip3_data::sample::{Origin, Role, Turn};
use blip3_data::template::{
    ChatTemplate, DEFAULT_SYSTEM_PROMPT, IGNORE_INDEX, normalize_single_image,
};
use blip3_data::tokenizer::{Blip3Tokenizer, MEDIA_TOKENS, TokenizerConfig};
use serde_json::Value;

/// The template fixture file.
fn fixture_path() -> std::path::PathBuf {
    blip3_fixtures::fixture("template/template_fixture.json")
}

const TINY_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/tiny-tokenizer");

fn fixture() -> Value {
    let text = std::fs::read_to_string(fixture_path()).expect("fixture present");
    serde_json::from_str(&text).expect("fixture is JSON")
}

fn tiny() -> Blip3Tokenizer {
    Blip3Tokenizer::tiny().expect("tiny tokenizer loads")
}

fn origin(name: &str) -> Origin {
    Origin {
        file: "fixture.json".into(),
        key: name.into(),
    }
}

fn turn(role: Role, text: &str) -> Turn {
    Turn {
        role,
        text: text.into(),
    }
}

fn turns_of(case: &Value) -> Vec<Turn> {
    case["turns"]
        .as_array()
        .expect("turns")
        .iter()
        .map(|t| {
            let role = match t["role"].as_str().expect("role") {
                "system" => Role::System,
                "user" => Role::User,
                "assistant" => Role::Assistant,
                other => panic!("unknown role {other}"),
            };
            turn(role, t["text"].as_str().expect("text"))
        })
        .collect()
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn i64s(v: &Value) -> Vec<i64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_i64().expect("label"))
        .collect()
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("count") as usize)
        .collect()
}

// ---------------------------------------------------------------- parity with the reference

#[test]
fn tokenizer_additions_match_hugging_face() {
    let fx = fixture();
    let facts = &fx["tokenizer"];
    let tok = tiny();
    let id = |key: &str| facts[key].as_u64().expect(key) as u32;
    assert_eq!(
        tok.initial_len(),
        facts["initial_len"].as_u64().unwrap() as usize
    );
    assert_eq!(tok.len(), facts["len"].as_u64().unwrap() as usize);
    assert_eq!(tok.bos_id(), Some(id("bos_id")));
    assert_eq!(tok.eos_id(), id("eos_id"));
    assert_eq!(tok.pad_id(), id("pad_id"));
    assert_eq!(tok.image_token_id(), id("image_id"));
    assert_eq!(tok.placeholder_id(), id("placeholder_id"));
    assert_eq!(tok.endofchunk_id(), id("endofchunk_id"));
    assert_eq!(tok.end_id(), id("end_id"));
    assert_eq!(tok.eos_token(), facts["eos_token"].as_str().unwrap());
    assert_eq!(tok.bos_token(), facts["bos_token"].as_str());
    assert_eq!(tok.pad_token(), "<pad>");
    assert!(tok.adds_bos());
}

#[test]
fn conversations_match_reference_masking() {
    let fx = fixture();
    let tok = tiny();
    let template = ChatTemplate::new().with_max_len(fx["max_len"].as_u64().unwrap() as usize);
    let cases = fx["conversations"].as_array().expect("conversations");
    assert!(cases.len() >= 10);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let turns = turns_of(case);
        let image_tokens = usizes(&case["image_tokens"]);
        let result = template.encode_conversation(&tok, &turns, &image_tokens, &origin(name));
        match case["outcome"].as_str().unwrap() {
            "ok" => {
                let got = result.unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(got.input_ids, u32s(&case["input_ids"]), "{name}: input_ids");
                assert_eq!(got.labels, i64s(&case["labels"]), "{name}: labels");
                assert_eq!(got.num_images, image_tokens.len(), "{name}");
                assert!(!got.truncated, "{name}");
                assert!(got.trained_tokens() > 0, "{name}");
            }
            "tokenization_mismatch" => {
                let err = result.expect_err(name);
                assert_eq!(err.kind, BadKind::Invalid, "{name}: {err}");
                assert!(err.msg.contains("mismatch"), "{name}: {err}");
                assert_eq!(err.key, name);
            }
            "image_count_mismatch" => {
                let err = result.expect_err(name);
                assert_eq!(err.kind, BadKind::ImageCountMismatch, "{name}: {err}");
            }
            other => panic!("{name}: unknown outcome {other}"),
        }
    }
}

#[test]
fn captions_and_interleaved_match_hugging_face() {
    let fx = fixture();
    let tok = tiny();
    let template = ChatTemplate::new();
    for case in fx["captions"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let image_tokens = case["image_tokens"].as_u64().unwrap() as usize;
        let got = template
            .encode_caption(
                &tok,
                case["caption"].as_str().unwrap(),
                image_tokens,
                &origin(name),
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got.input_ids, u32s(&case["input_ids"]), "{name}");
        assert_eq!(got.labels, i64s(&case["labels"]), "{name}");
        assert_eq!(got.num_images, 1);
    }
    for case in fx["interleaved"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let image_tokens = usizes(&case["image_tokens"]);
        let got = template
            .encode_interleaved(
                &tok,
                case["text"].as_str().unwrap(),
                &image_tokens,
                &origin(name),
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got.input_ids, u32s(&case["input_ids"]), "{name}");
        assert_eq!(got.labels, i64s(&case["labels"]), "{name}");
        assert_eq!(got.num_images, image_tokens.len());
    }
}

#[test]
fn generation_prompts_match_hugging_face() {
    let fx = fixture();
    let tok = tiny();
    let template = ChatTemplate::new();
    for case in fx["prompts"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let n = case["num_images"].as_u64().unwrap() as usize;
        let ids = template
            .encode_prompt(&tok, &turns_of(case), n, &origin(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(ids, u32s(&case["input_ids"]), "{name}");
        // The prompt ends with the assistant token (the newline after it is stripped by the
        // tokenizer's rstrip flag).
        assert_eq!(
            ids.last().copied(),
            tok.token_to_id("<|assistant|>"),
            "{name}"
        );
    }
}

// ---------------------------------------------------------------- tokenizer loading

#[test]
fn ids_are_read_from_the_vocabulary() {
    let tok = tiny();
    assert_eq!(Some(tok.image_token_id()), tok.token_to_id("<image>"));
    assert_eq!(
        Some(tok.placeholder_id()),
        tok.token_to_id("<image placeholder>")
    );
    assert_eq!(Some(tok.endofchunk_id()), tok.token_to_id("<|endofchunk|>"));
    assert_eq!(Some(tok.pad_id()), tok.token_to_id("<pad>"));
    assert_eq!(Some(tok.end_id()), tok.token_to_id("<|end|>"));
    assert_eq!(Some(tok.eos_id()), tok.token_to_id("<|endoftext|>"));
    assert_eq!(tok.bos_id(), tok.token_to_id("<s>"));
    assert_eq!(tok.len(), tok.initial_len() + 3);
    assert_eq!(tok.image_token_id() as usize, tok.initial_len());
    assert_eq!(tok.pad_id() as usize, tok.initial_len() - 1);

    // A base tokenizer with two more tokens shifts every added id by two.
    let mut base: tokenizers::Tokenizer =
        std::fs::read_to_string(Path::new(TINY_DIR).join("tokenizer.json"))
            .unwrap()
            .parse()
            .unwrap();
    base.add_special_tokens(&[
        tokenizers::AddedToken::from("<|extra1|>", true),
        tokenizers::AddedToken::from("<|extra2|>", true),
    ]);
    let config = TokenizerConfig::from_json_str(
        &std::fs::read_to_string(Path::new(TINY_DIR).join("tokenizer_config.json")).unwrap(),
        "tokenizer_config.json",
    )
    .unwrap();
    let shifted = Blip3Tokenizer::from_tokenizer(base, &config, "shifted").unwrap();
    assert_eq!(shifted.image_token_id(), tok.image_token_id() + 2);
    assert_eq!(shifted.pad_id(), tok.pad_id() + 2);
    assert_eq!(shifted.initial_len(), tok.initial_len() + 2);
    assert_eq!(
        Some(shifted.image_token_id()),
        shifted.token_to_id("<image>")
    );
}

#[test]
fn from_dir_equals_the_embedded_asset() {
    let a = tiny();
    let b = Blip3Tokenizer::from_dir(TINY_DIR).unwrap();
    assert_eq!(a.len(), b.len());
    assert_eq!(a.initial_len(), b.initial_len());
    assert_eq!(a.media_ids(), b.media_ids());
    let text = "<|user|>\n<image>\nWhat color is the star?<|end|>\n<|assistant|>\n";
    assert_eq!(a.encode(text, true).unwrap(), b.encode(text, true).unwrap());
}

#[test]
fn save_and_reload_is_idempotent() {
    let tok = tiny();
    let dir = tempfile::tempdir().unwrap();
    tok.save(dir.path()).unwrap();
    let again = Blip3Tokenizer::from_dir(dir.path()).unwrap();
    assert_eq!(again.len(), tok.len());
    assert_eq!(again.initial_len(), tok.initial_len());
    assert_eq!(again.media_ids(), tok.media_ids());
    assert_eq!(again.pad_id(), tok.pad_id());
    assert_eq!(again.eos_id(), tok.eos_id());
    assert_eq!(again.bos_id(), tok.bos_id());
    assert_eq!(again.end_id(), tok.end_id());
    assert_eq!(again.adds_bos(), tok.adds_bos());
    for text in [
        "There is a red circle in the upper left.",
        "<|system|>\nhi<|end|>\n<|user|>\n<image>\nq<|end|>\n<|assistant|>\nYes.<|end|>\n",
        "<image>héllo ☃<|endofchunk|><|endoftext|>",
    ] {
        assert_eq!(
            again.encode(text, true).unwrap(),
            tok.encode(text, true).unwrap(),
            "{text}"
        );
    }
    // A second save of the reloaded tokenizer writes the same files.
    let dir2 = tempfile::tempdir().unwrap();
    again.save(dir2.path()).unwrap();
    for name in ["tokenizer.json", "tokenizer_config.json"] {
        let first = std::fs::read_to_string(dir.path().join(name)).unwrap();
        let second = std::fs::read_to_string(dir2.path().join(name)).unwrap();
        assert_eq!(first, second, "{name}");
    }
}

#[test]
fn pad_distinct_from_eos_is_kept() {
    let json = std::fs::read_to_string(Path::new(TINY_DIR).join("tokenizer.json")).unwrap();
    let config = TokenizerConfig {
        eos_token: Some("<|endoftext|>".into()),
        pad_token: Some("</s>".into()),
        ..TokenizerConfig::default()
    };
    let tok = Blip3Tokenizer::from_json_str(&json, &config, "tokenizer.json").unwrap();
    assert_eq!(tok.pad_token(), "</s>");
    assert_eq!(Some(tok.pad_id()), tok.token_to_id("</s>"));
    assert_eq!(tok.token_to_id("<pad>"), None);
    assert_eq!(tok.initial_len(), tiny().initial_len() - 1);
    assert_eq!(tok.image_token_id() as usize, tok.initial_len());
}

#[test]
fn add_bos_token_false_drops_bos_and_keeps_masks_consistent() {
    let json = std::fs::read_to_string(Path::new(TINY_DIR).join("tokenizer.json")).unwrap();
    let config = TokenizerConfig {
        eos_token: Some("<|endoftext|>".into()),
        add_bos_token: Some(false),
        ..TokenizerConfig::default()
    };
    let plain = Blip3Tokenizer::from_json_str(&json, &config, "tokenizer.json").unwrap();
    let with_bos = tiny();
    assert!(!plain.adds_bos());
    assert_eq!(plain.special_prefix_len(), 0);
    let text = "What color is the star?";
    assert_eq!(
        plain.encode(text, true).unwrap(),
        with_bos.encode(text, false).unwrap()
    );

    let turns = [
        turn(Role::User, "<image>\nHow many squares?"),
        turn(Role::Assistant, "Three."),
        turn(Role::User, "And circles?"),
        turn(Role::Assistant, "Two."),
    ];
    let t = ChatTemplate::new();
    let a = t
        .encode_conversation(&with_bos, &turns, &[384], &origin("bos"))
        .unwrap();
    let b = t
        .encode_conversation(&plain, &turns, &[384], &origin("no-bos"))
        .unwrap();
    assert_eq!(b.input_ids, a.input_ids[1..]);
    assert_eq!(b.labels, a.labels[1..]);
}

#[test]
fn loading_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let err = Blip3Tokenizer::from_dir(dir.path()).unwrap_err();
    assert!(matches!(&err, DataError::Tokenizer { path, .. } if path.ends_with("tokenizer.json")));

    std::fs::write(dir.path().join("tokenizer.json"), "{ not json").unwrap();
    let err = Blip3Tokenizer::from_dir(dir.path()).unwrap_err();
    assert!(matches!(&err, DataError::Tokenizer { path, .. } if path.ends_with("tokenizer.json")));

    std::fs::copy(
        Path::new(TINY_DIR).join("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"add_bos_token": "yes"}"#,
    )
    .unwrap();
    let err = Blip3Tokenizer::from_dir(dir.path()).unwrap_err();
    assert!(
        matches!(&err, DataError::Tokenizer { path, msg } if path.ends_with("tokenizer_config.json") && msg.contains("add_bos_token")),
        "{err}"
    );

    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"add_eos_token": true}"#,
    )
    .unwrap();
    assert!(Blip3Tokenizer::from_dir(dir.path()).is_err());
}

#[test]
fn media_tokens_must_be_all_present_and_last() {
    let json = std::fs::read_to_string(Path::new(TINY_DIR).join("tokenizer.json")).unwrap();
    let config = TokenizerConfig::default();

    // Only one of the three media tokens.
    let mut partial: tokenizers::Tokenizer = json.parse().unwrap();
    partial.add_special_tokens(&[tokenizers::AddedToken::from("<image>", true)]);
    let err = Blip3Tokenizer::from_tokenizer(partial, &config, "partial").unwrap_err();
    assert!(err.to_string().contains("media tokens"), "{err}");

    // All three, but followed by another token.
    let mut trailing: tokenizers::Tokenizer = json.parse().unwrap();
    let mut added: Vec<_> = MEDIA_TOKENS
        .iter()
        .map(|t| tokenizers::AddedToken::from(*t, true))
        .collect();
    added.insert(0, tokenizers::AddedToken::from("<pad>", true));
    added.push(tokenizers::AddedToken::from("<|late|>", true));
    trailing.add_special_tokens(&added);
    let err = Blip3Tokenizer::from_tokenizer(trailing, &config, "trailing").unwrap_err();
    assert!(err.to_string().contains("last three"), "{err}");

    // Missing chat tokens.
    let bare = r#"{"version":"1.0","added_tokens":[],"normalizer":null,"pre_tokenizer":null,
        "post_processor":null,"decoder":null,"model":{"type":"WordLevel",
        "vocab":{"<unk>":0,"</s>":1},"unk_token":"<unk>"}}"#;
    let err = Blip3Tokenizer::from_json_str(bare, &config, "bare.json").unwrap_err();
    assert!(err.to_string().contains("bare.json"), "{err}");
}

#[test]
fn encode_decode_round_trip() {
    let tok = tiny();
    let text = "There are two blue squares and a héllo ☃ at the top.";
    let ids = tok.encode(text, false).unwrap();
    assert_eq!(tok.decode(&ids, false).unwrap(), text);
    let with_specials = tok.encode(&format!("<image>{text}<|end|>"), true).unwrap();
    assert_eq!(with_specials.first().copied(), tok.bos_id());
    assert_eq!(with_specials[1], tok.image_token_id());
    assert_eq!(with_specials.last().copied(), Some(tok.end_id()));
    assert_eq!(tok.decode(&with_specials, true).unwrap(), text);
}

// ---------------------------------------------------------------- template behaviour

#[test]
fn single_image_rule() {
    let mut turns = vec![
        turn(Role::User, "  what is <image> this <image>\n"),
        turn(Role::Assistant, "x"),
    ];
    assert!(normalize_single_image(&mut turns, 1));
    assert_eq!(turns[0].text, "<image>\nwhat is  this");

    let mut turns = vec![turn(Role::System, "s"), turn(Role::User, "no marker")];
    assert!(normalize_single_image(&mut turns, 1));
    assert_eq!(turns[1].text, "<image>\nno marker");

    let mut turns = vec![turn(Role::User, "inline <image> marker")];
    assert!(!normalize_single_image(&mut turns, 1));
    assert_eq!(turns[0].text, "inline <image> marker");

    let mut turns = vec![turn(Role::User, "two <image> <image>")];
    assert!(!normalize_single_image(&mut turns, 2));
    assert!(!normalize_single_image(&mut turns, 0));
    assert_eq!(turns[0].text, "two <image> <image>");
}

#[test]
fn render_text_adds_the_default_system_turn() {
    let t = ChatTemplate::new();
    let text = t.render_text(&[turn(Role::User, "q"), turn(Role::Assistant, "a")]);
    assert_eq!(
        text,
        format!(
            "<|system|>\n{DEFAULT_SYSTEM_PROMPT}<|end|>\n<|user|>\nq<|end|>\n<|assistant|>\na<|end|>\n"
        )
    );
    let text = t.render_text(&[turn(Role::System, "S"), turn(Role::User, "q")]);
    assert_eq!(
        text,
        "<|system|>\nS<|end|>\n<|user|>\nq<|end|>\n<|assistant|>\n"
    );
}

#[test]
fn image_count_mismatches_are_detected() {
    let tok = tiny();
    let t = ChatTemplate::new();
    let turns = [
        turn(Role::User, "<image> and <image>?"),
        turn(Role::Assistant, "Both."),
    ];
    for images in [&[384usize][..], &[384, 384, 384][..]] {
        // One image would normalise the turn; use counts that cannot match two markers.
        if images.len() == 1 {
            continue;
        }
        let err = t
            .encode_conversation(&tok, &turns, images, &origin("mm"))
            .unwrap_err();
        assert_eq!(err.kind, BadKind::ImageCountMismatch, "{err}");
        assert_eq!(err.key, "mm");
    }
    let err = t
        .encode_conversation(&tok, &turns, &[], &origin("text"))
        .unwrap_err();
    assert_eq!(err.kind, BadKind::ImageCountMismatch);
    assert!(
        t.encode_conversation(&tok, &turns, &[384, 384], &origin("ok"))
            .is_ok()
    );

    let err = t
        .encode_caption(&tok, "a <image> inside", 128, &origin("cap"))
        .unwrap_err();
    assert_eq!(err.kind, BadKind::ImageCountMismatch);
    let err = t
        .encode_interleaved(&tok, "<image> one", &[128, 128], &origin("il"))
        .unwrap_err();
    assert_eq!(err.kind, BadKind::ImageCountMismatch);
    let err = t
        .encode_prompt(&tok, &[turn(Role::User, "<image>")], 2, &origin("p"))
        .unwrap_err();
    assert_eq!(err.kind, BadKind::ImageCountMismatch);
    let err = t
        .encode_prompt(
            &tok,
            &[turn(Role::User, "q"), turn(Role::Assistant, "a")],
            0,
            &origin("p"),
        )
        .unwrap_err();
    assert_eq!(err.kind, BadKind::Invalid);
}

/// Expanded length computed independently: ids count 1, the k-th image id counts tokens[k].
fn expanded(ids: &[u32], image_id: u32, tokens: &[usize]) -> usize {
    let mut k = 0;
    ids.iter()
        .map(|&id| {
            if id == image_id {
                k += 1;
                tokens[k - 1]
            } else {
                1
            }
        })
        .sum()
}

#[test]
fn truncation_drops_whole_trailing_exchanges() {
    let tok = tiny();
    let exchanges = [
        (
            "<image>\nHow many squares are there?",
            "There are three squares.",
        ),
        ("What color is the top one?", "It is green."),
        (
            "Is there a ring in the lower right?",
            "No, there is a cross.",
        ),
    ];
    let conversation = |n: usize| -> Vec<Turn> {
        exchanges[..n]
            .iter()
            .flat_map(|(q, a)| [turn(Role::User, q), turn(Role::Assistant, a)])
            .collect()
    };
    let images = [300usize];
    let full = ChatTemplate::new()
        .encode_conversation(&tok, &conversation(3), &images, &origin("f"))
        .unwrap();
    let two = ChatTemplate::new()
        .encode_conversation(&tok, &conversation(2), &images, &origin("t"))
        .unwrap();
    let id = tok.image_token_id();
    let limit = expanded(&two.input_ids, id, &images) + 3; // fits two exchanges, not three
    assert!(expanded(&full.input_ids, id, &images) > limit);

    let cut = ChatTemplate::new()
        .with_max_len(limit)
        .encode_conversation(&tok, &conversation(3), &images, &origin("c"))
        .unwrap();
    assert!(cut.truncated);
    assert_eq!(cut.input_ids, two.input_ids);
    assert_eq!(cut.labels, two.labels);
    assert_eq!(cut.num_images, 1);
    assert!(expanded(&cut.input_ids, id, &images) <= limit);
    assert_eq!(
        cut.expanded_len(id, &images),
        expanded(&cut.input_ids, id, &images)
    );

    // Within the limit nothing changes.
    let same = ChatTemplate::new()
        .with_max_len(expanded(&full.input_ids, id, &images))
        .encode_conversation(&tok, &conversation(3), &images, &origin("s"))
        .unwrap();
    assert_eq!(same, full);
    assert!(!same.truncated);
}

#[test]
fn truncation_never_splits_an_image() {
    let tok = tiny();
    let images = [100usize, 100, 100];
    let text = "<image>A red circle.<|endofchunk|><image>A blue star.<|endofchunk|><image>A ring.";
    let t = ChatTemplate::new();
    let full = t
        .encode_interleaved(&tok, text, &images, &origin("full"))
        .unwrap();
    let id = tok.image_token_id();
    let positions: Vec<usize> = full
        .input_ids
        .iter()
        .enumerate()
        .filter(|(_, x)| **x == id)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(positions.len(), 3);
    let second = positions[1];
    // A limit that falls inside the second image's 100 vision tokens.
    let limit = expanded(&full.input_ids[..second], id, &images) + 50;
    let cut = t
        .clone()
        .with_max_len(limit)
        .encode_interleaved(&tok, text, &images, &origin("cut"))
        .unwrap();
    assert!(cut.truncated);
    assert_eq!(cut.num_images, 1);
    assert_eq!(cut.input_ids, full.input_ids[..second]);
    assert_eq!(cut.labels, full.labels[..second]);
    assert!(expanded(&cut.input_ids, id, &images) <= limit);

    // A limit inside the first image leaves nothing to train: an error, not a split image.
    let err = t
        .with_max_len(50)
        .encode_interleaved(&tok, text, &images, &origin("tiny"))
        .unwrap_err();
    assert_eq!(err.kind, BadKind::Invalid);
}

#[test]
fn truncation_inside_the_first_exchange_keeps_a_prefix() {
    let tok = tiny();
    let t = ChatTemplate::new();
    let turns = [
        turn(Role::User, "<image>\nDescribe the image."),
        turn(
            Role::Assistant,
            "There is a red circle, a blue star, a green ring and a pink cross.",
        ),
    ];
    let images = [384usize];
    let full = t
        .encode_conversation(&tok, &turns, &images, &origin("full"))
        .unwrap();
    let id = tok.image_token_id();
    let total = expanded(&full.input_ids, id, &images);
    let first_trained = full.labels.iter().position(|&l| l != IGNORE_INDEX).unwrap();
    let limit = total - 4;
    let cut = t
        .clone()
        .with_max_len(limit)
        .encode_conversation(&tok, &turns, &images, &origin("cut"))
        .unwrap();
    assert!(cut.truncated);
    assert_eq!(cut.input_ids, full.input_ids[..full.input_ids.len() - 4]);
    assert_eq!(cut.labels, full.labels[..full.labels.len() - 4]);
    assert!(cut.trained_tokens() > 0);

    // Cutting before the answer starts leaves nothing to train.
    let limit = expanded(&full.input_ids[..first_trained], id, &images);
    let err = t
        .with_max_len(limit)
        .encode_conversation(&tok, &turns, &images, &origin("x"))
        .unwrap_err();
    assert_eq!(err.kind, BadKind::Invalid);
}

#[test]
fn labels_ignore_everything_but_answers() {
    let tok = tiny();
    let t = ChatTemplate::new();
    let turns = [
        turn(Role::User, "<image>\nWhat color?"),
        turn(Role::Assistant, "Red."),
    ];
    let enc = t
        .encode_conversation(&tok, &turns, &[384], &origin("l"))
        .unwrap();
    let trained: Vec<u32> = enc
        .labels
        .iter()
        .zip(&enc.input_ids)
        .filter(|(l, _)| **l != IGNORE_INDEX)
        .map(|(l, id)| {
            assert_eq!(*l, i64::from(*id));
            *id
        })
        .collect();
    // The answer and its <|end|> (the newline after it is eaten by the token's rstrip flag).
    let mut expected = tok.encode("<|assistant|>\nRed.<|end|>\n", false).unwrap();
    expected.remove(0);
    assert_eq!(trained, expected);
    assert_eq!(tok.decode(&trained, true).unwrap(), "Red.");
    assert!(
        enc.labels
            .iter()
            .zip(&enc.input_ids)
            .all(|(l, id)| *id != tok.image_token_id() || *l == IGNORE_INDEX)
    );
}
