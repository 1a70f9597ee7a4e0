//! Preference data: generic DPO pairs (`{id, prompt, image, chosen, rejected}` JSON Lines) whose
//! rejected answer hallucinates an object the image lacks, and the same samples for a subset in
//! the VLFeedback layout (four completions rated per aspect, ratings as strings).

use serde::Serialize;

use super::lang::{self, CaptionStyle};
use super::out::{self, Out};
use super::rng::Rng;
use super::scene::{self, Color, Plan, Scene, Shape};
use super::{Ctx, DatasetEntry, Pictured, SynthConfig, scene_rows};
use crate::error::DataError;

/// The prompt of object-listing pairs.
pub(super) const OBJECTS_PROMPT: &str = "What objects are in the image?";

/// Names of the imaginary models of VLFeedback rows.
const MODELS: [&str; 6] = [
    "synth-model-a",
    "synth-model-b",
    "synth-model-c",
    "synth-model-d",
    "synth-model-e",
    "synth-model-f",
];

/// A generic DPO pair.
#[derive(Serialize)]
pub(super) struct PairRow {
    pub(super) id: String,
    pub(super) prompt: String,
    pub(super) image: String,
    pub(super) chosen: String,
    pub(super) rejected: String,
}

/// A VLFeedback rating.
#[derive(Serialize)]
struct Rating {
    #[serde(rename = "Rating")]
    rating: String,
    #[serde(rename = "Rationale")]
    rationale: String,
}

/// VLFeedback annotations; an aspect may be missing.
#[derive(Serialize)]
struct Annotations {
    #[serde(rename = "Helpfulness", skip_serializing_if = "Option::is_none")]
    helpfulness: Option<Rating>,
    #[serde(
        rename = "Ethical Considerations",
        skip_serializing_if = "Option::is_none"
    )]
    ethics: Option<Rating>,
    #[serde(
        rename = "Visual Faithfulness",
        skip_serializing_if = "Option::is_none"
    )]
    faithfulness: Option<Rating>,
}

/// One rated VLFeedback completion.
#[derive(Serialize)]
struct Completion {
    annotations: Annotations,
    model: String,
    response: String,
}

/// A VLFeedback row.
#[derive(Serialize)]
struct VlFeedbackRow {
    id: String,
    prompt: String,
    models: Vec<String>,
    completions: Vec<Completion>,
    img_path: String,
}

/// A colour-shape pair that no object of the scene has.
fn absent_pair(s: &Scene, rng: &mut Rng) -> (Color, Shape) {
    let absent: Vec<(Color, Shape)> = Color::ALL
        .into_iter()
        .flat_map(|c| Shape::ALL.into_iter().map(move |sh| (c, sh)))
        .filter(|&(c, sh)| !s.has(c, sh))
        .collect();
    rng.pick(&absent).unwrap_or((Color::Red, Shape::Circle))
}

/// The scene's groups with a hallucination: an absent object added, or one group's shape
/// changed into a shape it does not have.
fn hallucinate(s: &Scene, rng: &mut Rng) -> Vec<(Color, Shape, usize)> {
    let mut groups = s.groups();
    if groups.is_empty() || rng.chance(0.5) {
        let (c, sh) = absent_pair(s, rng);
        let at = rng.below(groups.len() + 1);
        groups.insert(at, (c, sh, 1));
    } else {
        let k = rng.below(groups.len());
        let color = groups[k].0;
        let others: Vec<Shape> = Shape::ALL
            .into_iter()
            .filter(|&sh| !s.has(color, sh))
            .collect();
        if let Some(sh) = rng.pick(&others) {
            groups[k].1 = sh;
        }
    }
    groups
}

/// The groups with one group left out (a less helpful, still faithful answer), if there are two.
fn omit_one(s: &Scene, rng: &mut Rng) -> Option<Vec<(Color, Shape, usize)>> {
    let mut groups = s.groups();
    if groups.len() < 2 {
        return None;
    }
    groups.remove(rng.below(groups.len()));
    Some(groups)
}

/// The groups with one group's colour changed into a colour absent from the scene.
fn recolor(s: &Scene, rng: &mut Rng) -> Vec<(Color, Shape, usize)> {
    let mut groups = s.groups();
    let absent: Vec<Color> = Color::ALL
        .into_iter()
        .filter(|&c| s.count_color(c) == 0)
        .collect();
    if !groups.is_empty()
        && let Some(c) = rng.pick(&absent)
    {
        let k = rng.below(groups.len());
        groups[k].0 = c;
    }
    groups
}

/// One preference sample: prompt, chosen, rejected, and two more completions of lower quality
/// (with their helpfulness and faithfulness ratings) for the VLFeedback layout.
pub(super) struct Sample {
    pub(super) prompt: String,
    pub(super) chosen: String,
    pub(super) rejected: String,
    extra: Vec<(String, u8, u8, usize)>,
}

/// Builds the preference sample of a scene.
pub(super) fn sample(s: &Scene, i: usize, rng: &mut Rng) -> Sample {
    match i % 4 {
        0..=2 => {
            let (prompt, style) = if i % 4 == 2 {
                (OBJECTS_PROMPT.to_string(), CaptionStyle::List)
            } else {
                let styles = [
                    CaptionStyle::List,
                    CaptionStyle::ThereIs,
                    CaptionStyle::ImageOf,
                    CaptionStyle::Count,
                ];
                let p = lang::CAPTION_PROMPTS[rng.below(lang::CAPTION_PROMPTS.len())];
                (p.to_string(), styles[rng.below(styles.len())])
            };
            let chosen = lang::caption_of(s, &s.groups(), style);
            let rejected = lang::caption_of(s, &hallucinate(s, rng), style);
            let partial = match omit_one(s, rng) {
                Some(g) => lang::caption_of(s, &g, style),
                None => "An image of some shapes.".to_string(),
            };
            let wrong = lang::caption_of(s, &recolor(s, rng), style);
            Sample {
                prompt,
                chosen,
                rejected,
                extra: vec![(partial, 3, 3, 2), (wrong, 2, 2, 3)],
            }
        }
        _ => {
            // Half the questions ask about a present object, half about an absent one.
            let present = rng.chance(0.5) && !s.objects.is_empty();
            let (color, shape, position) = if present {
                let o = &s.objects[rng.below(s.objects.len())];
                (o.color, o.shape, o.position.clone())
            } else {
                let (c, sh) = absent_pair(s, rng);
                let cells: Vec<&str> = s.objects.iter().map(|o| o.position.as_str()).collect();
                let pos = rng.pick(&cells).unwrap_or("top left").to_string();
                (c, sh, pos)
            };
            let prompt = lang::exist_question(color, shape);
            let (chosen, rejected, short_right, short_wrong) = if present {
                // The rejected answer adds an object the image lacks.
                let (c2, s2) = absent_pair(s, rng);
                let wrong = lang::yes_answer_plus(color, shape, &position, c2, s2);
                (
                    lang::yes_answer(color, shape, &position),
                    wrong,
                    "Yes.",
                    "No.",
                )
            } else {
                (
                    lang::true_no(color, shape),
                    lang::yes_answer(color, shape, &position),
                    "No.",
                    "Yes.",
                )
            };
            let extra = vec![
                (short_right.to_string(), 4, 5, 0),
                (short_wrong.to_string(), 1, 1, 1),
            ];
            Sample {
                prompt,
                chosen,
                rejected,
                extra,
            }
        }
    }
}

/// A rating with its rationale.
fn rating(value: u8, rationale: usize) -> Option<Rating> {
    Some(Rating {
        rating: value.to_string(),
        rationale: lang::RATIONALES[rationale.min(lang::RATIONALES.len() - 1)].to_string(),
    })
}

/// Writes `dpo/`.
pub(super) fn write(
    out: &mut Out,
    ctx: &Ctx,
    cfg: &SynthConfig,
) -> Result<Vec<DatasetEntry>, DataError> {
    let mut pairs = Vec::new();
    let mut feedback = Vec::new();
    let mut scenes: Vec<Pictured> = Vec::new();
    for i in 0..cfg.dpo_pairs {
        let mut rng = ctx.rng("dpo", i);
        let s = scene::shapes_scene(&mut rng, ctx.sizes, Plan::Free, None);
        let rel = out.image(&format!("dpo/images/dpo_{i:06}"), &s, out::format_for(&s))?;
        let local = out::strip(&rel, "dpo");
        let sm = sample(&s, i, &mut rng);
        if i < cfg.vlfeedback_rows {
            let mut models: Vec<&str> = MODELS.to_vec();
            rng.shuffle(&mut models);
            // (response, helpfulness, faithfulness, faithfulness rationale)
            let mut graded = vec![(sm.chosen.clone(), 5, 5, 0), (sm.rejected.clone(), 2, 1, 1)];
            graded.extend(sm.extra.iter().cloned());
            rng.shuffle(&mut graded);
            let completions = graded
                .into_iter()
                .zip(&models)
                .enumerate()
                .map(|(k, ((response, help, faith, why), model))| {
                    // Now and then a rating is "N/A", as in the real data.
                    let ethics = if i % 4 == 3 && k == 0 {
                        Some(Rating {
                            rating: "N/A".into(),
                            rationale: String::new(),
                        })
                    } else {
                        rating(5, 4)
                    };
                    Completion {
                        annotations: Annotations {
                            helpfulness: rating(help, why),
                            ethics,
                            faithfulness: rating(faith, why),
                        },
                        model: (*model).to_string(),
                        response,
                    }
                })
                .collect::<Vec<_>>();
            feedback.push(VlFeedbackRow {
                id: format!("synth-{i}"),
                prompt: sm.prompt.clone(),
                models: models
                    .iter()
                    .take(completions.len())
                    .map(|m| m.to_string())
                    .collect(),
                completions,
                img_path: local.clone(),
            });
        }
        pairs.push(PairRow {
            id: format!("dpo_{i:06}"),
            prompt: sm.prompt,
            image: local.clone(),
            chosen: sm.chosen,
            rejected: sm.rejected,
        });
        scenes.push((local, s));
    }
    out.jsonl("dpo/pairs.jsonl", &pairs)?;
    out.json("dpo/vlfeedback.json", &feedback, 2)?;
    let rows = scene_rows(&scenes);
    out.jsonl("dpo/scenes.jsonl", &rows)?;
    Ok(vec![
        DatasetEntry {
            name: "dpo/pairs".into(),
            format: "dpo-jsonl".into(),
            files: vec!["dpo/pairs.jsonl".into()],
            records: pairs.len(),
            images: pairs.len(),
            image_root: Some("dpo".into()),
        },
        DatasetEntry {
            name: "dpo/vlfeedback".into(),
            format: "vlfeedback-json".into(),
            files: vec!["dpo/vlfeedback.json".into()],
            records: feedback.len(),
            images: feedback.len(),
            image_root: Some("dpo".into()),
        },
        DatasetEntry {
            name: "dpo/scenes".into(),
            format: "scenes-jsonl".into(),
            files: vec!["dpo/scenes.jsonl".into()],
            records: rows.len(),
            images: rows.len(),
            image_root: Some("dpo".into()),
        },
    ])
}
