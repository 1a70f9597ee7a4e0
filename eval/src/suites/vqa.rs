//! Open-ended VQA benchmarks in the VQAv2 file format (VQAv2, OK-VQA, and OpenFlamingo's
//! VQA-format conversions of TextVQA and VizWiz).
//!
//! One item per question with annotations (a question without one is a load problem). Few-shot
//! examples are `(question, first annotated answer)` pairs from the support set: a training
//! questions/annotations pair when the layout has one, else the evaluated file with every
//! question on the query's image excluded.
//!
//! Answer processing ([`crate::metrics::vqa::Processor`]) follows the harness each style comes
//! from: few-shot prompts are scored as OpenFlamingo scores all four datasets (its
//! `vqa_metric.py`, normalising always); chat prompts use the EvalAI processor for TextVQA and
//! VizWiz (LLaVA / lmms-eval) and the official `vqaEval.py` rules for VQAv2-style files.
//! Few-shot OK-VQA answers are stemmed first, as OpenFlamingo does
//! ([`crate::metrics::okvqa`]); chat answers are not.

use std::collections::BTreeMap;
use std::path::PathBuf;

use blip3_data::readers::eval_data::{ImageLocator, VqaQuestion, load_vqa};
use blip3_data::sample::ImageSource;

use super::{
    Benchmark, BuildContext, Item, PromptStyle, Scored, Task, Truth, annotation_problem,
    existing_image,
};
use crate::answers::{Failure, FailureKind};
use crate::engine::{PostProcess, Prompt, Request};
use crate::error::EvalError;
use crate::metrics::vqa::{self, Processor, VqaItem};
use crate::prompts::{
    chat_short_answer, chat_user_text, effective_shots, few_shot_prompt, query_set, sample_demos,
    vqa_example, vqa_query,
};

/// OpenFlamingo's VQA budget (`max_generation_length=5`; 10 for TextVQA).
pub const FEW_SHOT_MAX_NEW_TOKENS: usize = 5;
/// Budget of chat short answers.
pub const CHAT_MAX_NEW_TOKENS: usize = 16;

/// The files of a VQA benchmark.
#[derive(Debug, Clone, PartialEq)]
pub struct VqaSpec {
    /// Benchmark name (`vqav2`, `okvqa`, `textvqa`, `vizwiz`, ...).
    pub name: String,
    /// The `{questions: [...]}` file of the evaluated split.
    pub questions: PathBuf,
    /// Its `{annotations: [...]}` file.
    pub annotations: PathBuf,
    /// Where the images are, by image id.
    pub images: ImageLocator,
    /// A training split for in-context examples: questions, annotations, images.
    pub support: Option<(PathBuf, PathBuf, ImageLocator)>,
    /// Answer processing of few-shot answers.
    pub few_shot_processor: Processor,
    /// Answer processing of chat answers.
    pub chat_processor: Processor,
    /// Few-shot generation budget.
    pub few_shot_max_new_tokens: usize,
}

/// The post-processing of few-shot answers: OpenFlamingo stems OK-VQA predictions
/// (`postprocess_ok_vqa_generation` when `dataset_name == "ok_vqa"`) and only cuts the others
/// (`postprocess_vqa_generation`). Ground-truth answers are never stemmed.
fn few_shot_post(benchmark: &str) -> PostProcess {
    if benchmark == "okvqa" {
        PostProcess::FewShotOkVqa
    } else {
        PostProcess::FewShotVqa
    }
}

/// The image file of a question, with the extension fallback.
fn image_of(q: &VqaQuestion) -> PathBuf {
    existing_image(q.image.clone())
}

/// Loads a VQA benchmark.
pub fn build(spec: &VqaSpec, ctx: &BuildContext) -> Result<Benchmark, EvalError> {
    let loaded = load_vqa(&spec.questions, Some(&spec.annotations), &spec.images)?;
    let mut problems: Vec<(String, Failure)> = loaded
        .problems
        .iter()
        .map(|p| annotation_problem(&spec.name, p))
        .collect();
    let mut questions = Vec::with_capacity(loaded.items.len());
    for q in loaded.items {
        if q.answers.is_empty() {
            problems.push((
                format!("{}/{}", spec.name, q.question_id),
                Failure {
                    kind: FailureKind::Annotation,
                    message: format!(
                        "{}: question {} has no ground-truth answers",
                        spec.annotations.display(),
                        q.question_id
                    ),
                },
            ));
        } else {
            questions.push(q);
        }
    }
    let few_shot = ctx.style == PromptStyle::FewShot;
    // The support set: (image, question, first answer).
    let (support, support_name): (Vec<(PathBuf, String, String)>, String) = match &spec.support {
        Some((q, a, loc)) => {
            let train = load_vqa(q, Some(a), loc)?;
            if !train.problems.is_empty() {
                log::warn!(
                    "{}: {} unusable entries in the support set",
                    q.display(),
                    train.problems.len()
                );
            }
            let set = train
                .items
                .iter()
                .filter(|t| !t.answers.is_empty())
                .map(|t| (image_of(t), t.question.clone(), t.answers[0].clone()))
                .collect();
            (set, q.display().to_string())
        }
        None => (
            questions
                .iter()
                .map(|t| (image_of(t), t.question.clone(), t.answers[0].clone()))
                .collect(),
            format!(
                "{} (the evaluated questions, query image excluded)",
                spec.questions.display()
            ),
        ),
    };
    let demos_per_prompt = effective_shots(ctx.shots, ctx.zero_shot_text_demos);
    let qset = query_set(support.len(), ctx.query_set_size, ctx.seed);
    let max_new_tokens = ctx.budget(if few_shot {
        spec.few_shot_max_new_tokens
    } else {
        CHAT_MAX_NEW_TOKENS
    });
    let mut items = Vec::new();
    for q in ctx.limited(questions) {
        let key = format!("{}/{}", spec.name, q.question_id);
        let image = image_of(&q);
        let (prompt, images, post) = if few_shot {
            let demos = sample_demos(&qset, demos_per_prompt, ctx.seed, &key, |i| {
                support[i].0 == image
            });
            let examples: Vec<String> = demos
                .iter()
                .map(|&i| vqa_example(&support[i].1, &support[i].2))
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
            let text = few_shot_prompt(&examples, &vqa_query(&q.question), ctx.shots);
            (Prompt::Raw(text), images, few_shot_post(&spec.name))
        } else {
            (
                Prompt::Chat(chat_user_text(&chat_short_answer(&q.question), 1)),
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
            truth: Truth::Vqa {
                answers: q.answers,
                answer_type: q.answer_type,
            },
        });
    }
    Ok(Benchmark {
        name: spec.name.clone(),
        task: Task::Vqa(if few_shot {
            spec.few_shot_processor
        } else {
            spec.chat_processor
        }),
        style: ctx.style,
        shots: if few_shot { ctx.shots } else { 0 },
        items,
        problems,
        support: few_shot.then_some(support_name),
        max_new_tokens,
    })
}

/// `round(100 * x, 2)`, the way `vqaEval.py` reports accuracies.
pub fn percent(x: f64) -> f64 {
    (100.0 * x * 100.0).round() / 100.0
}

/// VQA accuracy of the answered questions: `overall` and `perAnswerType` in percent rounded to
/// two decimals (vqaEval.py's report), `accuracy` as an unrounded fraction.
pub fn score(
    name: &str,
    processor: Processor,
    pairs: &[(&Truth, &str)],
) -> Result<Scored, EvalError> {
    let items: Vec<VqaItem> = pairs
        .iter()
        .filter_map(|(truth, answer)| match truth {
            Truth::Vqa {
                answers,
                answer_type,
            } => Some(VqaItem {
                prediction: answer.to_string(),
                answers: answers.clone(),
                answer_type: answer_type.clone(),
            }),
            _ => None,
        })
        .collect();
    let s = vqa::score(&items, processor).map_err(|e| EvalError::metrics(name, e))?;
    let mut metrics = BTreeMap::new();
    metrics.insert("overall".into(), percent(s.accuracy));
    metrics.insert("accuracy".into(), s.accuracy);
    let mut breakdown = BTreeMap::new();
    if !s.per_answer_type.is_empty() {
        breakdown.insert(
            "perAnswerType".into(),
            s.per_answer_type
                .iter()
                .map(|(t, v)| (t.clone(), percent(*v)))
                .collect(),
        );
    }
    Ok(Scored { metrics, breakdown })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_okvqa_few_shot_answers_are_stemmed() {
        assert_eq!(few_shot_post("okvqa"), PostProcess::FewShotOkVqa);
        assert_eq!(few_shot_post("vqav2"), PostProcess::FewShotVqa);
        assert_eq!(PostProcess::FewShotOkVqa.apply("dogs, cats"), "dog");
        assert_eq!(PostProcess::FewShotVqa.apply("dogs, cats"), "dogs");
    }
}
