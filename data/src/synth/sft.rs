//! Instruction data: a LLaVA-1.5-style JSON array (single-image multi-turn conversations and a few
//! text-only rows) and an M4-Instruct-style JSON array of two-image conversations.

use serde::Serialize;

use super::lang::{self, CaptionStyle, QKind};
use super::out::{self, Out};
use super::rng::Rng;
use super::scene::{self, Color, Plan, Scene, Shape};
use super::tasks::{self, PairKind, Tally};
use super::{Ctx, DatasetEntry, Pictured, SynthConfig, scene_rows};
use crate::error::DataError;

/// One LLaVA conversation turn.
#[derive(Serialize)]
pub(super) struct Turn {
    /// `human` or `gpt`.
    pub(super) from: &'static str,
    /// The text, with `<image>` markers.
    pub(super) value: String,
}

/// A human turn.
pub(super) fn human(value: String) -> Turn {
    Turn {
        from: "human",
        value,
    }
}

/// A gpt turn.
pub(super) fn gpt(value: String) -> Turn {
    Turn { from: "gpt", value }
}

/// A LLaVA-1.5 row; `image` is absent on text-only rows.
#[derive(Serialize)]
struct LlavaRow {
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<String>,
    conversations: Vec<Turn>,
}

/// M4-Instruct metadata.
#[derive(Serialize)]
struct M4Meta {
    dataset: &'static str,
    split: &'static str,
    num_images: usize,
}

/// An M4-Instruct row: `image` is a list, one `<image>` marker per image.
#[derive(Serialize)]
struct M4Row {
    id: String,
    image: Vec<String>,
    conversations: Vec<Turn>,
    metadata: M4Meta,
}

/// What the first turn of a single-image conversation asks.
#[derive(Debug, Clone, Copy)]
enum Opening {
    Caption,
    Ask(QKind),
    Choice,
}

/// The repeating schedule of first turns.
const OPENINGS: [Opening; 12] = [
    Opening::Caption,
    Opening::Ask(QKind::Color),
    Opening::Ask(QKind::Count),
    Opening::Ask(QKind::Exist),
    Opening::Ask(QKind::Shape),
    Opening::Caption,
    Opening::Ask(QKind::Side),
    Opening::Ask(QKind::Half),
    Opening::Choice,
    Opening::Ask(QKind::Ocr),
    Opening::Ask(QKind::Color),
    Opening::Ask(QKind::Exist),
];

/// A short-answer question as LLaVA phrases it.
pub(super) fn short(question: &str) -> String {
    format!("{question}\n{}", lang::SHORT_ANSWER)
}

/// A caption request and its answer, in a random phrasing.
fn caption_turns(s: &Scene, rng: &mut Rng) -> (String, String) {
    let prompt = lang::CAPTION_PROMPTS[rng.below(lang::CAPTION_PROMPTS.len())].to_string();
    let style = CaptionStyle::ALL[rng.below(CaptionStyle::ALL.len())];
    (prompt, lang::caption(s, style))
}

/// One single-image conversation: its scene and turns.
fn single(ctx: &Ctx, i: usize, tally: &mut Tally) -> (Scene, Vec<Turn>) {
    let mut rng = ctx.rng("sft-single", i);
    let mut turns = Vec::new();
    let mut used: Vec<QKind> = Vec::new();
    let mut captioned = false;
    let s = match OPENINGS[i % OPENINGS.len()] {
        Opening::Caption => {
            let s = if rng.below(8) == 0 {
                let text = scene::ocr_text(&mut rng);
                scene::ocr_scene(&mut rng, ctx.sizes, &text)
            } else {
                scene::shapes_scene(&mut rng, ctx.sizes, Plan::Free, None)
            };
            let (q, a) = caption_turns(&s, &mut rng);
            turns.push(human(format!("<image>\n{q}")));
            turns.push(gpt(a));
            captioned = true;
            s
        }
        Opening::Ask(kind) => {
            let (s, qa) = tasks::primary(kind, tally, &mut rng, ctx.sizes, None);
            turns.push(human(format!("<image>\n{}", short(&qa.question))));
            turns.push(gpt(qa.answer));
            used.push(qa.kind);
            s
        }
        Opening::Choice => {
            let kind = [QKind::Color, QKind::Shape, QKind::Count][rng.below(3)];
            let (s, qa) = tasks::primary(kind, tally, &mut rng, ctx.sizes, None);
            match tasks::choice(&qa, tally, &mut rng) {
                Some(c) => {
                    turns.push(human(format!(
                        "<image>\n{}",
                        lang::choice_prompt(&c.stem, &c.options)
                    )));
                    turns.push(gpt(lang::LETTERS[c.answer].to_string()));
                }
                None => {
                    turns.push(human(format!("<image>\n{}", short(&qa.question))));
                    turns.push(gpt(qa.answer));
                }
            }
            used.push(qa.kind);
            s
        }
    };
    let extra = rng.range(1, 3);
    let cands = lang::candidates(&s);
    for _ in 0..extra {
        if !captioned && rng.chance(0.2) {
            let (q, a) = caption_turns(&s, &mut rng);
            turns.push(human(q));
            turns.push(gpt(a));
            captioned = true;
            continue;
        }
        let Some(qa) = tally.follow_up(&cands, &used, &mut rng) else {
            break;
        };
        turns.push(human(short(&qa.question)));
        turns.push(gpt(qa.answer));
        used.push(qa.kind);
    }
    (s, turns)
}

/// One text-only conversation of one or two turns.
fn text_only(ctx: &Ctx, i: usize) -> Vec<Turn> {
    let mut rng = ctx.rng("sft-text", i);
    let n = rng.range(1, 2);
    let mut turns = Vec::new();
    for _ in 0..n {
        let kind = rng.below(4);
        let (a, b) = (rng.below(6), rng.below(6));
        let color = Color::ALL[rng.below(Color::ALL.len())];
        let shape = [Shape::Triangle, Shape::Square, Shape::Diamond][rng.below(3)];
        let (q, ans) = lang::text_only_turn(kind, a, b, color, shape);
        turns.push(human(q));
        turns.push(gpt(ans));
    }
    turns
}

/// Writes `sft/`.
pub(super) fn write(
    out: &mut Out,
    ctx: &Ctx,
    cfg: &SynthConfig,
) -> Result<Vec<DatasetEntry>, DataError> {
    let mut scenes: Vec<Pictured> = Vec::new();
    let mut tally = Tally::default();
    let mut rows: Vec<LlavaRow> = Vec::new();
    for i in 0..cfg.sft_single {
        let (s, conversations) = single(ctx, i, &mut tally);
        let rel = out.image(&format!("sft/images/sft_{i:06}"), &s, out::format_for(&s))?;
        let local = out::strip(&rel, "sft");
        rows.push(LlavaRow {
            id: format!("sft_{i:06}"),
            image: Some(local.clone()),
            conversations,
        });
        scenes.push((local, s));
    }
    for i in 0..cfg.sft_text_only {
        rows.push(LlavaRow {
            id: format!("text_{i:06}"),
            image: None,
            conversations: text_only(ctx, i),
        });
    }
    ctx.rng("sft-order", 0).shuffle(&mut rows);
    out.json("sft/llava.json", &rows, 2)?;

    let mut pair_tally = Tally::default();
    let mut multi: Vec<M4Row> = Vec::new();
    for i in 0..cfg.sft_multi {
        let mut rng = ctx.rng("sft-multi", i);
        let kind = [PairKind::More, PairKind::Both, PairKind::Which][i % 3];
        let (a, b, q, ans) = tasks::pair(kind, &mut pair_tally, &mut rng, ctx.sizes);
        let mut conversations = vec![human(format!("<image>\n<image>\n{}", short(&q))), gpt(ans)];
        if rng.chance(0.5)
            && let Some((q2, a2)) = tasks::pair_follow_up(&a, &b, kind, &mut pair_tally, &mut rng)
        {
            conversations.push(human(short(&q2)));
            conversations.push(gpt(a2));
        }
        let mut image = Vec::new();
        for (k, s) in [a, b].into_iter().enumerate() {
            let rel = out.image(
                &format!("sft/images/multi_{i:06}_{k}"),
                &s,
                out::format_for(&s),
            )?;
            let local = out::strip(&rel, "sft");
            image.push(local.clone());
            scenes.push((local, s));
        }
        multi.push(M4Row {
            id: format!("multi_{i:06}"),
            image,
            conversations,
            metadata: M4Meta {
                dataset: "synth-compare",
                split: "train",
                num_images: 2,
            },
        });
    }
    out.json("sft/multi_image.json", &multi, 2)?;

    let ground_truth = scene_rows(&scenes);
    out.jsonl("sft/scenes.jsonl", &ground_truth)?;

    Ok(vec![
        DatasetEntry {
            name: "sft/llava".into(),
            format: "llava-json".into(),
            files: vec!["sft/llava.json".into()],
            records: rows.len(),
            images: cfg.sft_single,
            image_root: Some("sft".into()),
        },
        DatasetEntry {
            name: "sft/multi_image".into(),
            format: "m4-json".into(),
            files: vec!["sft/multi_image.json".into()],
            records: multi.len(),
            images: 2 * multi.len(),
            image_root: Some("sft".into()),
        },
        DatasetEntry {
            name: "sft/scenes".into(),
            format: "scenes-jsonl".into(),
            files: vec!["sft/scenes.jsonl".into()],
            records: ground_truth.len(),
            images: ground_truth.len(),
            image_root: Some("sft".into()),
        },
    ])
}
