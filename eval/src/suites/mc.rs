//! Multiple-choice benchmarks: MMBench-style TSVs (MMBench, SEED-Bench, MMStar, AI2D in
//! VLMEvalKit's TSV layout) and ScienceQA-style JSON.
//!
//! Questions are asked through the chat template with the lettered options and the instruction
//! "Answer with the option's letter from the given choices directly." (LLaVA / lmms-eval
//! layouts, see [`crate::prompts`]). TSV answers are judged with VLMEvalKit's `can_infer`
//! letter extraction; ScienceQA answers with lmms-eval's rule.
//!
//! **CircularEval** (MMBench): when the TSV already holds VLMEvalKit's rotated copies (indices
//! `index + k * 1_000_000`), they are asked as they are and grouped by `index % 1_000_000`;
//! otherwise, with `circular` on, each question is asked once per rotation of its options
//! (rotation `k` shows option `(i + k) mod n` at letter `i`, as LLaVA's `--all-rounds`). The
//! report gives `accuracy` over the original order (rotation 0) and `circular_accuracy`, the
//! share of questions answered right in every rotation; questions with a failed rotation are
//! left out of `circular_accuracy`. With a limit, the first `limit` questions are kept with all
//! their rotations.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use blip3_data::readers::eval_data::{McItem, load_mc_tsv, load_scienceqa};

use super::{
    Benchmark, BuildContext, Item, McRule, PromptStyle, Scored, Task, Truth, annotation_problem,
};
use crate::answers::{Failure, FailureKind};
use crate::engine::{PostProcess, Prompt, Request};
use crate::error::EvalError;
use crate::metrics::mc::{
    CircularRecord, circular_accuracy, extract_letter, mmbench_group, rotate_options,
    rotated_answer, scienceqa_correct,
};
use crate::prompts::{chat_user_text, mc_prompt, scienceqa_prompt};

/// Budget of a letter answer.
pub const MAX_NEW_TOKENS: usize = 16;

/// VLMEvalKit's offset between rotated copies of a question.
const ROTATION_STRIDE: u64 = 1_000_000;

/// The layout of a multiple-choice file.
#[derive(Debug, Clone, PartialEq)]
pub enum McFormat {
    /// An MMBench-style TSV with base64 images.
    Tsv,
    /// ScienceQA-style JSON; image paths are relative to the directory, if given.
    ScienceQa {
        /// The image directory.
        images: Option<PathBuf>,
    },
}

/// The file of a multiple-choice benchmark.
#[derive(Debug, Clone, PartialEq)]
pub struct McSpec {
    /// Benchmark name (`mmbench`, `seedbench`, `mmstar`, `ai2d`, `scienceqa`, ...).
    pub name: String,
    /// The file.
    pub file: PathBuf,
    /// Its layout.
    pub format: McFormat,
}

/// Loads a multiple-choice benchmark.
pub fn build(spec: &McSpec, ctx: &BuildContext) -> Result<Benchmark, EvalError> {
    let (loaded, rule) = match &spec.format {
        McFormat::Tsv => (load_mc_tsv(&spec.file)?, McRule::Extract),
        McFormat::ScienceQa { images } => (
            load_scienceqa(&spec.file, images.as_deref())?,
            McRule::ScienceQa,
        ),
    };
    let mut problems: Vec<(String, Failure)> = loaded
        .problems
        .iter()
        .map(|p| annotation_problem(&spec.name, p))
        .collect();
    let mut questions: Vec<(McItem, char)> = Vec::new();
    for q in loaded.items {
        match q.answer {
            Some(a) if !q.options.is_empty() => questions.push((q, a)),
            _ => problems.push((
                format!("{}/{}", spec.name, q.id),
                Failure {
                    kind: FailureKind::Annotation,
                    message: format!(
                        "{}: question {} has no answer or no options",
                        spec.file.display(),
                        q.id
                    ),
                },
            )),
        }
    }
    let index_of = |q: &McItem| q.id.trim().parse::<u64>().ok();
    let prerotated = rule == McRule::Extract
        && questions
            .iter()
            .any(|(q, _)| index_of(q).is_some_and(|i| i >= ROTATION_STRIDE));
    let rotate = rule == McRule::Extract && ctx.circular && !prerotated;
    let max_new_tokens = ctx.budget(MAX_NEW_TOKENS);

    // The limit counts questions (groups), keeping all rotations of a kept question.
    let mut kept_groups: BTreeSet<u64> = BTreeSet::new();
    let mut items = Vec::new();
    for (position, (q, answer)) in questions.into_iter().enumerate() {
        let (group, rotation) = match (prerotated, index_of(&q)) {
            (true, Some(i)) => (mmbench_group(i), (i / ROTATION_STRIDE) as usize),
            (_, Some(i)) => (i, 0),
            (_, None) => (position as u64, 0),
        };
        if !kept_groups.contains(&group) {
            if ctx.limit.is_some_and(|n| kept_groups.len() >= n) {
                continue;
            }
            kept_groups.insert(group);
        }
        let texts: Vec<String> = q.options.iter().map(|(_, t)| t.clone()).collect();
        let rotations = if rotate { texts.len() } else { 1 };
        for k in 0..rotations {
            let shown = rotate_options(&texts, k);
            let Some(correct) = rotated_answer(answer, k, shown.len()) else {
                problems.push((
                    format!("{}/{}", spec.name, q.id),
                    Failure {
                        kind: FailureKind::Annotation,
                        message: format!(
                            "{}: answer {answer} of question {} is not one of its {} options",
                            spec.file.display(),
                            q.id,
                            shown.len()
                        ),
                    },
                ));
                break;
            };
            let lettered: Vec<(char, String)> = shown
                .iter()
                .enumerate()
                .map(|(i, t)| (char::from(b'A' + i as u8), t.clone()))
                .collect();
            let text = match rule {
                McRule::Extract => mc_prompt(&q.question, q.hint.as_deref(), &lettered),
                McRule::ScienceQa => scienceqa_prompt(&q.question, q.hint.as_deref(), &lettered),
            };
            let images: Vec<_> = q.image.iter().cloned().collect();
            let key = if rotate {
                format!("{}/{}/r{k}", spec.name, q.id)
            } else {
                format!("{}/{}", spec.name, q.id)
            };
            items.push(Item {
                request: Request {
                    key,
                    prompt: Prompt::Chat(chat_user_text(&text, images.len())),
                    images,
                    max_new_tokens,
                    post: PostProcess::Trim,
                },
                truth: Truth::Mc {
                    answer: correct,
                    options: shown,
                    group,
                    rotation: if rotate { k } else { rotation },
                    category: q.category.clone(),
                },
            });
        }
    }
    Ok(Benchmark {
        name: spec.name.clone(),
        task: Task::Mc {
            rule,
            circular: rotate || prerotated,
        },
        style: PromptStyle::Chat,
        shots: 0,
        items,
        problems,
        support: None,
        max_new_tokens,
    })
}

/// Accuracy (original order), CircularEval accuracy and per-category accuracy.
pub fn score(
    name: &str,
    rule: McRule,
    circular: bool,
    pairs: &[(&Truth, &str)],
) -> Result<Scored, EvalError> {
    let mut plain: Vec<bool> = Vec::new();
    let mut by_category: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut rounds: Vec<(CircularRecord, usize)> = Vec::new();
    for (truth, answer) in pairs {
        let Truth::Mc {
            answer: letter,
            options,
            group,
            rotation,
            category,
        } = truth
        else {
            continue;
        };
        let (prediction, correct) = match rule {
            McRule::Extract => {
                let p = extract_letter(answer, options);
                (p, p == Some(*letter))
            }
            McRule::ScienceQa => {
                let ok = scienceqa_correct(answer, *letter);
                (ok.then_some(*letter), ok)
            }
        };
        rounds.push((
            CircularRecord {
                group: *group,
                prediction,
                answer: *letter,
            },
            options.len(),
        ));
        if *rotation == 0 {
            plain.push(correct);
            if let Some(c) = category {
                let e = by_category.entry(c.clone()).or_default();
                e.0 += usize::from(correct);
                e.1 += 1;
            }
        }
    }
    let mut metrics = BTreeMap::new();
    if !plain.is_empty() {
        let correct = plain.iter().filter(|&&ok| ok).count();
        metrics.insert("accuracy".into(), correct as f64 / plain.len() as f64);
    }
    if circular {
        // Only questions with every rotation answered take part.
        let mut seen: BTreeMap<u64, (usize, usize)> = BTreeMap::new();
        for (r, n) in &rounds {
            let e = seen.entry(r.group).or_insert((0, *n));
            e.0 += 1;
        }
        let complete: Vec<CircularRecord> = rounds
            .iter()
            .filter(|(r, _)| seen.get(&r.group).is_some_and(|(got, n)| got >= n))
            .map(|(r, _)| *r)
            .collect();
        if !complete.is_empty() {
            let s = circular_accuracy(&complete).map_err(|e| EvalError::metrics(name, e))?;
            metrics.insert("circular_accuracy".into(), s.accuracy);
        }
    }
    let mut breakdown = BTreeMap::new();
    if !by_category.is_empty() {
        breakdown.insert(
            "category".into(),
            by_category
                .into_iter()
                .map(|(c, (ok, n))| (c, ok as f64 / n as f64))
                .collect(),
        );
    }
    Ok(Scored { metrics, breakdown })
}
