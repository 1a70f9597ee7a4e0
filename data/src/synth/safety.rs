//! VLGuard-style safety data. Unsafe images carry a warning word (DANGER, SECRET, FAKE) on a
//! banner; safe images carry a harmless word (HELLO, OPEN, SMILE) on the same banner or none.
//! Every request about an unsafe image is refused, whatever it asks. A safe image gets a harmless
//! request, answered, and a harmful request, refused - as in VLGuard. The harmless requests of
//! both kinds of image come from the same templates, so only the image tells them apart.

use serde::Serialize;

use super::lang::{self, QKind};
use super::out::{self, Out};
use super::scene::{self, Plan, Sign};
use super::sft::short;
use super::tasks::{self, Tally};
use super::{Ctx, DatasetEntry, Pictured, SynthConfig, scene_rows};
use crate::error::DataError;

/// One instruction-response pair; the field name says which kind it is.
#[derive(Serialize)]
#[serde(untagged)]
enum InstrResp {
    /// The request about an unsafe image.
    Plain {
        instruction: String,
        response: String,
    },
    /// The harmless request about a safe image.
    Safe {
        safe_instruction: String,
        response: String,
    },
    /// The harmful request about a safe image.
    Unsafe {
        unsafe_instruction: String,
        response: String,
    },
}

/// A VLGuard row: category fields only when the image is unsafe.
#[derive(Serialize)]
struct VlGuardRow {
    id: String,
    image: String,
    safe: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    harmful_category: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    harmful_subcategory: Option<&'static str>,
    #[serde(rename = "instr-resp")]
    instr_resp: Vec<InstrResp>,
}

/// Harmless request templates: a caption request or a short question.
const REQUESTS: [Option<QKind>; 5] = [
    None,
    Some(QKind::Color),
    Some(QKind::Count),
    Some(QKind::Exist),
    Some(QKind::Shape),
];

/// Writes one split; returns its rows and scenes.
fn split(
    out: &mut Out,
    ctx: &Ctx,
    name: &str,
    n: usize,
) -> Result<(Vec<VlGuardRow>, Vec<Pictured>), DataError> {
    let mut tally = Tally::default();
    let mut rows = Vec::new();
    let mut scenes = Vec::new();
    let flags: Vec<String> = vec!["safe".into(), "unsafe".into()];
    let words: Vec<String> = lang::UNSAFE_WORDS.iter().map(|w| w.0.to_string()).collect();
    for i in 0..n {
        let mut rng = ctx.rng(&format!("safety-{name}"), i);
        let is_unsafe = tally.least("safety", &flags, &mut rng) == 1;
        tally.add("safety", if is_unsafe { "unsafe" } else { "safe" });
        let (sign, category) = if is_unsafe {
            let k = tally.least("unsafe-word", &words, &mut rng);
            tally.add("unsafe-word", &words[k]);
            let (word, cat, sub) = lang::UNSAFE_WORDS[k];
            (
                Some(Sign {
                    word,
                    unsafe_word: true,
                }),
                Some((cat, sub)),
            )
        } else if rng.chance(0.5) {
            let word = lang::BENIGN_WORDS[rng.below(lang::BENIGN_WORDS.len())];
            (
                Some(Sign {
                    word,
                    unsafe_word: false,
                }),
                None,
            )
        } else {
            (None, None)
        };
        let (s, request, answer) = match REQUESTS[rng.below(REQUESTS.len())] {
            None => {
                let s = scene::shapes_scene(&mut rng, ctx.sizes, Plan::Free, sign);
                let prompt = lang::CAPTION_PROMPTS[rng.below(lang::CAPTION_PROMPTS.len())];
                let caption = lang::caption_of(&s, &s.groups(), lang::CaptionStyle::List);
                (s, prompt.to_string(), caption)
            }
            Some(kind) => {
                let (s, qa) = tasks::primary(kind, &mut tally, &mut rng, ctx.sizes, sign);
                (s, short(&qa.question), qa.answer)
            }
        };
        let rel = out.image(
            &format!("safety/images/{name}/{name}_{i:06}"),
            &s,
            out::format_for(&s),
        )?;
        let local = out::strip(&rel, "safety");
        let instr_resp = if is_unsafe {
            vec![InstrResp::Plain {
                instruction: request,
                response: lang::REFUSAL.to_string(),
            }]
        } else {
            let harmful = lang::UNSAFE_REQUESTS[rng.below(lang::UNSAFE_REQUESTS.len())];
            vec![
                InstrResp::Safe {
                    safe_instruction: request,
                    response: answer,
                },
                InstrResp::Unsafe {
                    unsafe_instruction: harmful.to_string(),
                    response: lang::REFUSAL.to_string(),
                },
            ]
        };
        rows.push(VlGuardRow {
            id: format!("{name}_{i:06}"),
            image: local.clone(),
            safe: !is_unsafe,
            harmful_category: category.map(|c| c.0),
            harmful_subcategory: category.map(|c| c.1),
            instr_resp,
        });
        scenes.push((local, s));
    }
    Ok((rows, scenes))
}

/// Writes `safety/`.
pub(super) fn write(
    out: &mut Out,
    ctx: &Ctx,
    cfg: &SynthConfig,
) -> Result<Vec<DatasetEntry>, DataError> {
    let (train, mut scenes) = split(out, ctx, "train", cfg.safety_train)?;
    let (test, test_scenes) = split(out, ctx, "test", cfg.safety_test)?;
    scenes.extend(test_scenes);
    out.json("safety/train.json", &train, 4)?;
    out.json("safety/test.json", &test, 4)?;
    let rows = scene_rows(&scenes);
    out.jsonl("safety/scenes.jsonl", &rows)?;
    let entry = |name: &str, records: usize| DatasetEntry {
        name: format!("safety/{name}"),
        format: "vlguard-json".into(),
        files: vec![format!("safety/{name}.json")],
        records,
        images: records,
        image_root: Some("safety".into()),
    };
    Ok(vec![
        entry("train", train.len()),
        entry("test", test.len()),
        DatasetEntry {
            name: "safety/scenes".into(),
            format: "scenes-jsonl".into(),
            files: vec!["safety/scenes.jsonl".into()],
            records: rows.len(),
            images: rows.len(),
            image_root: Some("safety".into()),
        },
    ])
}
