//! Captioning benchmarks (COCO, NoCaps, TextCaps, all in the COCO caption annotation format).
//!
//! One item per image of the annotation file (in the order of its `images` list). Few-shot
//! prompts draw their examples from the support set, a training annotation file when the layout
//! has one, else the evaluated file itself with the query image excluded (leave-one-out); the
//! example caption is the image's first reference, as OpenFlamingo takes `sentences[0]`. Answers
//! are scored like pycocoevalcap's `COCOEvalCap` over the answered images only (OpenFlamingo sets
//! `params["image_id"]` to the result ids): `Bleu_1`..`Bleu_4`, `ROUGE_L`, `CIDEr`, fractions.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use blip3_data::readers::eval_data::{CaptionRefs, Id, ImageLocator, load_coco_captions};
use blip3_data::sample::ImageSource;

use super::{
    Benchmark, BuildContext, Item, PromptStyle, Scored, Task, Truth, annotation_problem,
    existing_image,
};
use crate::engine::{PostProcess, Prompt, Request};
use crate::error::EvalError;
use crate::metrics::caption;
use crate::prompts::{
    caption_example, caption_query, chat_caption, chat_user_text, effective_shots, few_shot_prompt,
    query_set, sample_demos,
};

/// OpenFlamingo's captioning budget (`max_generation_length=20`).
pub const FEW_SHOT_MAX_NEW_TOKENS: usize = 20;
/// Budget of chat captioning (one sentence).
pub const CHAT_MAX_NEW_TOKENS: usize = 40;

/// The files of a captioning benchmark.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptionSpec {
    /// Benchmark name (`coco`, `nocaps`, `textcaps`, ...).
    pub name: String,
    /// The COCO-format annotations of the evaluated split.
    pub annotations: PathBuf,
    /// The directory the `file_name`s of the annotations are relative to.
    pub images: PathBuf,
    /// A training split to draw in-context examples from: annotations and image directory.
    pub support: Option<(PathBuf, PathBuf)>,
}

/// The images and reference captions of a file, with a locator for files without `images`.
fn load(
    annotations: &Path,
    images: &Path,
) -> Result<blip3_data::readers::eval_data::Loaded<CaptionRefs>, EvalError> {
    let locator = ImageLocator::new(images, "{id}.jpg")?;
    Ok(load_coco_captions(annotations, Some(&locator))?)
}

/// The image file of a loaded entry.
fn image_of(entry: &CaptionRefs, images: &Path) -> PathBuf {
    let path = entry
        .image
        .clone()
        .unwrap_or_else(|| images.join(entry.image_id.to_string()));
    existing_image(path)
}

/// Loads a captioning benchmark.
pub fn build(spec: &CaptionSpec, ctx: &BuildContext) -> Result<Benchmark, EvalError> {
    let loaded = load(&spec.annotations, &spec.images)?;
    let problems = loaded
        .problems
        .iter()
        .map(|p| annotation_problem(&spec.name, p))
        .collect();
    // The support set: (image, first reference caption).
    let (support, support_name): (Vec<(PathBuf, String)>, String) = match &spec.support {
        Some((ann, imgs)) => {
            let train = load(ann, imgs)?;
            if !train.problems.is_empty() {
                log::warn!(
                    "{}: {} unusable entries in the support set",
                    ann.display(),
                    train.problems.len()
                );
            }
            let set = train
                .items
                .iter()
                .map(|e| (image_of(e, imgs), e.refs[0].clone()))
                .collect();
            (set, ann.display().to_string())
        }
        None => (
            loaded
                .items
                .iter()
                .map(|e| (image_of(e, &spec.images), e.refs[0].clone()))
                .collect(),
            format!(
                "{} (the evaluated images, query excluded)",
                spec.annotations.display()
            ),
        ),
    };
    let few_shot = ctx.style == PromptStyle::FewShot;
    let demos_per_prompt = effective_shots(ctx.shots, ctx.zero_shot_text_demos);
    let qset = query_set(support.len(), ctx.query_set_size, ctx.seed);
    let max_new_tokens = ctx.budget(if few_shot {
        FEW_SHOT_MAX_NEW_TOKENS
    } else {
        CHAT_MAX_NEW_TOKENS
    });
    let mut items = Vec::new();
    for entry in ctx.limited(loaded.items) {
        let key = format!("{}/{}", spec.name, entry.image_id);
        let image = image_of(&entry, &spec.images);
        let (prompt, images, post) = if few_shot {
            let demos = sample_demos(&qset, demos_per_prompt, ctx.seed, &key, |i| {
                support[i].0 == image
            });
            let examples: Vec<String> = demos
                .iter()
                .map(|&i| caption_example(&support[i].1))
                .collect();
            let mut images: Vec<ImageSource> = Vec::new();
            if ctx.shots > 0 {
                images.extend(
                    demos
                        .iter()
                        .map(|&i| ImageSource::Path(support[i].0.clone())),
                );
            }
            images.push(ImageSource::Path(image));
            let text = few_shot_prompt(&examples, &caption_query(), ctx.shots);
            (Prompt::Raw(text), images, PostProcess::FewShotCaption)
        } else {
            (
                Prompt::Chat(chat_user_text(&chat_caption(), 1)),
                vec![ImageSource::Path(image)],
                PostProcess::Trim,
            )
        };
        items.push(Item {
            request: Request {
                key,
                prompt,
                images,
                max_new_tokens,
                post,
            },
            truth: Truth::Caption {
                image_id: entry.image_id,
                refs: entry.refs,
            },
        });
    }
    Ok(Benchmark {
        name: spec.name.clone(),
        task: Task::Caption,
        style: ctx.style,
        shots: if few_shot { ctx.shots } else { 0 },
        items,
        problems,
        support: few_shot.then_some(support_name),
        max_new_tokens,
    })
}

/// pycocoevalcap scores of the answered images.
pub fn score(name: &str, pairs: &[(&Truth, &str)]) -> Result<Scored, EvalError> {
    let mut candidates: BTreeMap<Id, String> = BTreeMap::new();
    let mut references: BTreeMap<Id, Vec<String>> = BTreeMap::new();
    for (truth, answer) in pairs {
        if let Truth::Caption { image_id, refs } = truth {
            if candidates
                .insert(image_id.clone(), answer.to_string())
                .is_some()
            {
                return Err(EvalError::Config(format!(
                    "{name}: image {image_id} has more than one caption to score"
                )));
            }
            references.insert(image_id.clone(), refs.clone());
        }
    }
    let scores =
        caption::score(&candidates, &references).map_err(|e| EvalError::metrics(name, e))?;
    let mut metrics = BTreeMap::new();
    for (i, b) in scores.bleu.iter().enumerate() {
        metrics.insert(format!("Bleu_{}", i + 1), *b);
    }
    metrics.insert("ROUGE_L".into(), scores.rouge_l);
    metrics.insert("CIDEr".into(), scores.cider);
    Ok(Scored {
        metrics,
        breakdown: BTreeMap::new(),
    })
}
