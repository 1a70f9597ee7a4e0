//! POPE (object hallucination): yes/no questions, one JSONL file per category (`random`,
//! `popular`, `adversarial`), asked through the chat template with the short-answer instruction
//! and scored with LLaVA's `eval_pope.py` rules (an answer is "no" when its first sentence holds
//! the word `No`, `no` or `not`): accuracy, precision, recall, F1 and yes-ratio over all
//! categories together, and per category in the breakdown.

use std::collections::BTreeMap;
use std::path::PathBuf;

use blip3_data::readers::eval_data::load_pope;
use blip3_data::sample::ImageSource;

use super::{
    Benchmark, BuildContext, Item, PromptStyle, Scored, Task, Truth, annotation_problem,
    existing_image,
};
use crate::answers::{Failure, FailureKind};
use crate::engine::{PostProcess, Prompt, Request};
use crate::error::EvalError;
use crate::metrics::pope::{self, PopeItem, PopeParser, PopeScores};
use crate::prompts::{chat_short_answer, chat_user_text};

/// Budget of a yes/no answer.
pub const MAX_NEW_TOKENS: usize = 16;

/// The files of a POPE benchmark.
#[derive(Debug, Clone, PartialEq)]
pub struct PopeSpec {
    /// Benchmark name (`pope`).
    pub name: String,
    /// The question files with their category.
    pub files: Vec<(PathBuf, String)>,
    /// The directory the records' `image` names are relative to.
    pub images: PathBuf,
}

/// Loads a POPE benchmark; the limit applies per category file.
pub fn build(spec: &PopeSpec, ctx: &BuildContext) -> Result<Benchmark, EvalError> {
    let max_new_tokens = ctx.budget(MAX_NEW_TOKENS);
    let mut items = Vec::new();
    let mut problems = Vec::new();
    for (file, category) in &spec.files {
        let name = format!("{}/{category}", spec.name);
        let loaded = load_pope(file, &spec.images, Some(category))?;
        problems.extend(loaded.problems.iter().map(|p| annotation_problem(&name, p)));
        let mut usable = Vec::new();
        for q in loaded.items {
            match q.label {
                Some(label) => usable.push((q, label)),
                None => problems.push((
                    format!("{name}/{}", q.question_id),
                    Failure {
                        kind: FailureKind::Annotation,
                        message: format!(
                            "{}: question {} has no label",
                            file.display(),
                            q.question_id
                        ),
                    },
                )),
            }
        }
        for (q, label) in ctx.limited(usable) {
            items.push(Item {
                request: Request {
                    key: format!("{name}/{}", q.question_id),
                    prompt: Prompt::Chat(chat_user_text(&chat_short_answer(&q.question), 1)),
                    images: vec![ImageSource::Path(existing_image(q.image))],
                    max_new_tokens,
                    post: PostProcess::Trim,
                },
                truth: Truth::Pope {
                    label,
                    category: q.category,
                },
            });
        }
    }
    Ok(Benchmark {
        name: spec.name.clone(),
        task: Task::Pope,
        style: PromptStyle::Chat,
        shots: 0,
        items,
        problems,
        support: None,
        max_new_tokens,
    })
}

/// The named metrics of one group.
fn named(s: &PopeScores) -> BTreeMap<String, f64> {
    [
        ("accuracy", s.accuracy),
        ("precision", s.precision),
        ("recall", s.recall),
        ("f1", s.f1),
        ("yes_ratio", s.yes_ratio),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// LLaVA POPE metrics of the answered questions.
pub fn score(name: &str, pairs: &[(&Truth, &str)]) -> Result<Scored, EvalError> {
    let items: Vec<PopeItem> = pairs
        .iter()
        .filter_map(|(truth, answer)| match truth {
            Truth::Pope { label, category } => Some(PopeItem {
                prediction: answer.to_string(),
                label: if *label { "yes" } else { "no" }.to_string(),
                category: category.clone(),
            }),
            _ => None,
        })
        .collect();
    let report = pope::score(&items, PopeParser::Llava).map_err(|e| EvalError::metrics(name, e))?;
    let breakdown = report
        .per_category
        .iter()
        .map(|(c, s)| (format!("category:{c}"), named(s)))
        .collect();
    Ok(Scored {
        metrics: named(&report.overall),
        breakdown,
    })
}
