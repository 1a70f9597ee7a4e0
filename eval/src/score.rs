//! Scoring prediction files without a model (`blip3 eval score`).
//!
//! | task | predictions | annotations | metrics (scale) |
//! | --- | --- | --- | --- |
//! | `caption` | COCO results, a JSON list `[{"image_id", "caption"}]` | COCO caption annotations | `Bleu_1`..`Bleu_4`, `ROUGE_L`, `CIDEr` (fractions, pycocoevalcap) |
//! | `vqa` | VQA results, a JSON list `[{"question_id", "answer"}]` | VQAv2-format annotations (`{annotations: [...]}`) | `overall` (percent, 2 decimals, `vqaEval.py`), `accuracy` (fraction); `perAnswerType` (percent) |
//! | `pope` | JSON lines (or a JSON list) `{"question_id", "answer"}` (`text` is accepted for LLaVA answer files) | a POPE file (`question_id`, `label`, optional `category`) | `accuracy`, `precision`, `recall`, `f1`, `yes_ratio` (fractions, LLaVA `eval_pope.py`) |
//! | `mc` | JSON lines (or a JSON list) `{"question_id", "answer"}` | an MMBench-style TSV (`question_id` = `index`) or ScienceQA JSON | `accuracy`, and `circular_accuracy` when the TSV holds VLMEvalKit's rotated copies (fractions) |
//!
//! As in the reference tools' result loaders, a prediction for an id the annotations do not
//! have, or two predictions for one id, is an error. Only predicted items are scored (as
//! OpenFlamingo scores its subsets); annotated items without a prediction are counted as
//! `missing`, and annotation entries that cannot be used as `problems`. The VQA processor is the
//! official `vqaEval.py` one unless another is asked for.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use blip3_data::readers::eval_data::{
    Id, load_coco_captions, load_mc_tsv, load_pope, load_scienceqa,
};

use crate::benchmark::{McRule, Task, Truth};
use crate::error::EvalError;
use crate::metrics::mc::mmbench_group;
use crate::metrics::vqa::Processor;
use crate::suites::score_task;

/// What kind of files are scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScoreTask {
    /// COCO captions.
    Caption,
    /// VQAv2-format VQA.
    Vqa,
    /// POPE.
    Pope,
    /// Multiple choice.
    Mc,
}

/// Scoring options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScoreOptions {
    /// The VQA answer processing.
    pub vqa_processor: Processor,
}

impl Default for ScoreOptions {
    fn default() -> Self {
        ScoreOptions {
            vqa_processor: Processor::Official,
        }
    }
}

/// The scores of a prediction file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScoreOutput {
    /// Metric name → value, on the reference tool's scale.
    pub metrics: BTreeMap<String, f64>,
    /// Group → metric → value.
    pub breakdown: BTreeMap<String, BTreeMap<String, f64>>,
    /// Predictions read.
    pub predictions: usize,
    /// Predictions scored.
    pub scored: usize,
    /// Annotated items without a prediction (not scored).
    pub missing: usize,
    /// Annotation entries that could not be used.
    pub problems: usize,
}

impl ScoreOutput {
    /// One JSON object: the metrics as keys, each breakdown group as a nested object.
    pub fn to_json(&self) -> Value {
        let mut map = serde_json::Map::new();
        for (k, v) in &self.metrics {
            map.insert(k.clone(), Value::from(*v));
        }
        for (group, values) in &self.breakdown {
            let inner: serde_json::Map<String, Value> = values
                .iter()
                .map(|(k, v)| (k.clone(), Value::from(*v)))
                .collect();
            map.insert(group.clone(), Value::Object(inner));
        }
        Value::Object(map)
    }
}

/// Scores `predictions` against `annotations` with the default options.
pub fn score_files(
    task: ScoreTask,
    predictions: &Path,
    annotations: &Path,
) -> Result<ScoreOutput, EvalError> {
    score_files_with(task, predictions, annotations, &ScoreOptions::default())
}

/// Scores `predictions` against `annotations`.
pub fn score_files_with(
    task: ScoreTask,
    predictions: &Path,
    annotations: &Path,
    options: &ScoreOptions,
) -> Result<ScoreOutput, EvalError> {
    match task {
        ScoreTask::Caption => score_caption(predictions, annotations),
        ScoreTask::Vqa => score_vqa(predictions, annotations, options.vqa_processor),
        ScoreTask::Pope => score_pope(predictions, annotations),
        ScoreTask::Mc => score_mc(predictions, annotations),
    }
}

/// Reads a JSON list, or JSON lines, of objects.
fn read_records(path: &Path) -> Result<Vec<Value>, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|e| EvalError::io(path, e))?;
    if text.trim_start().starts_with('[') {
        let v: Vec<Value> = serde_json::from_str(&text)
            .map_err(|e| EvalError::format(path.display(), format!("not a JSON list: {e}")))?;
        return Ok(v);
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).map_err(|e| {
            EvalError::format(
                format!("{}:{}", path.display(), i + 1),
                format!("invalid JSON: {e}"),
            )
        })?;
        out.push(v);
    }
    Ok(out)
}

/// Reads predictions `(id, text)` keyed by `id_field`, the text from the first of `text_fields`
/// present; a missing field, a repeated id or a file without predictions is an error naming the
/// file (and record).
fn read_predictions(
    path: &Path,
    id_field: &str,
    text_fields: &[&str],
) -> Result<Vec<(Id, String)>, EvalError> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (i, rec) in read_records(path)?.into_iter().enumerate() {
        let at = || format!("{}: prediction {i}", path.display());
        let id = rec
            .get(id_field)
            .and_then(Id::from_value)
            .ok_or_else(|| EvalError::format(at(), format!("no integer or string `{id_field}`")))?;
        let text = text_fields
            .iter()
            .find_map(|f| rec.get(*f).and_then(Value::as_str))
            .ok_or_else(|| {
                EvalError::format(at(), format!("no string `{}`", text_fields.join("` or `")))
            })?;
        if !seen.insert(id.clone()) {
            return Err(EvalError::format(
                at(),
                format!("{id_field} {id} is predicted twice"),
            ));
        }
        out.push((id, text.to_string()));
    }
    if out.is_empty() {
        return Err(EvalError::format(
            path.display(),
            "nothing to score: the file holds no predictions",
        ));
    }
    Ok(out)
}

/// Joins predictions with per-id truths and scores them.
fn finish(
    task: &Task,
    name: &str,
    predictions: Vec<(Id, String)>,
    truths: &HashMap<Id, Vec<Truth>>,
    annotated: usize,
    problems: usize,
    predictions_path: &Path,
) -> Result<ScoreOutput, EvalError> {
    let mut pairs: Vec<(&Truth, &str)> = Vec::new();
    for (id, text) in &predictions {
        let Some(ts) = truths.get(id) else {
            return Err(EvalError::format(
                predictions_path.display(),
                format!("prediction for {id}, which the annotations do not have"),
            ));
        };
        for t in ts {
            pairs.push((t, text.as_str()));
        }
    }
    let scored = score_task(task, name, &pairs)?;
    Ok(ScoreOutput {
        metrics: scored.metrics,
        breakdown: scored.breakdown,
        predictions: predictions.len(),
        scored: predictions.len(),
        missing: annotated.saturating_sub(predictions.len()),
        problems,
    })
}

fn score_caption(predictions: &Path, annotations: &Path) -> Result<ScoreOutput, EvalError> {
    let loaded = load_coco_captions(annotations, None)?;
    let annotated = loaded.items.len();
    let truths: HashMap<Id, Vec<Truth>> = loaded
        .items
        .into_iter()
        .map(|c| {
            let t = Truth::Caption {
                image_id: c.image_id.clone(),
                refs: c.refs,
            };
            (c.image_id, vec![t])
        })
        .collect();
    let preds = read_predictions(predictions, "image_id", &["caption"])?;
    finish(
        &Task::Caption,
        "caption",
        preds,
        &truths,
        annotated,
        loaded.problems.len(),
        predictions,
    )
}

/// One VQA annotation entry.
#[derive(Deserialize)]
struct VqaAnnotation {
    question_id: Id,
    answers: Vec<Value>,
    #[serde(default)]
    answer_type: Option<String>,
}

fn score_vqa(
    predictions: &Path,
    annotations: &Path,
    processor: Processor,
) -> Result<ScoreOutput, EvalError> {
    let text = std::fs::read_to_string(annotations).map_err(|e| EvalError::io(annotations, e))?;
    let root: Value = serde_json::from_str(&text)
        .map_err(|e| EvalError::format(annotations.display(), format!("invalid JSON: {e}")))?;
    let list = root
        .get("annotations")
        .and_then(Value::as_array)
        .ok_or_else(|| EvalError::format(annotations.display(), "no `annotations` list"))?;
    let mut truths: HashMap<Id, Vec<Truth>> = HashMap::new();
    let mut problems = 0;
    for (i, entry) in list.iter().enumerate() {
        let parsed: Result<VqaAnnotation, _> = serde_json::from_value(entry.clone());
        let Ok(a) = parsed else {
            log::warn!(
                "{}: annotations[{i}] is malformed, skipped",
                annotations.display()
            );
            problems += 1;
            continue;
        };
        let answers: Vec<String> = a
            .answers
            .iter()
            .filter_map(|x| match x {
                Value::String(s) => Some(s.clone()),
                other => other
                    .get("answer")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            })
            .collect();
        if answers.is_empty() || truths.contains_key(&a.question_id) {
            log::warn!(
                "{}: annotation of question {} has no answers or is repeated, skipped",
                annotations.display(),
                a.question_id
            );
            problems += 1;
            continue;
        }
        truths.insert(
            a.question_id,
            vec![Truth::Vqa {
                answers,
                answer_type: a.answer_type,
            }],
        );
    }
    let preds = read_predictions(predictions, "question_id", &["answer"])?;
    let annotated = truths.len();
    finish(
        &Task::Vqa(processor),
        "vqa",
        preds,
        &truths,
        annotated,
        problems,
        predictions,
    )
}

fn score_pope(predictions: &Path, annotations: &Path) -> Result<ScoreOutput, EvalError> {
    let loaded = load_pope(annotations, Path::new(""), None)?;
    let mut problems = loaded.problems.len();
    let mut truths: HashMap<Id, Vec<Truth>> = HashMap::new();
    for q in loaded.items {
        match q.label {
            Some(label) => {
                truths.insert(
                    q.question_id,
                    vec![Truth::Pope {
                        label,
                        category: q.category,
                    }],
                );
            }
            None => problems += 1,
        }
    }
    let preds = read_predictions(predictions, "question_id", &["answer", "text"])?;
    let annotated = truths.len();
    finish(
        &Task::Pope,
        "pope",
        preds,
        &truths,
        annotated,
        problems,
        predictions,
    )
}

fn score_mc(predictions: &Path, annotations: &Path) -> Result<ScoreOutput, EvalError> {
    let is_tsv = annotations
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("tsv"));
    let (loaded, rule) = if is_tsv {
        (load_mc_tsv(annotations)?, McRule::Extract)
    } else {
        (load_scienceqa(annotations, None)?, McRule::ScienceQa)
    };
    let mut problems = loaded.problems.len();
    let index = |id: &str| id.trim().parse::<u64>().ok();
    let circular = rule == McRule::Extract
        && loaded
            .items
            .iter()
            .any(|q| index(&q.id).is_some_and(|i| i >= 1_000_000));
    let mut truths: HashMap<Id, Vec<Truth>> = HashMap::new();
    for (pos, q) in loaded.items.into_iter().enumerate() {
        let Some(answer) = q.answer else {
            problems += 1;
            continue;
        };
        let (group, rotation) = match index(&q.id) {
            Some(i) if circular => (mmbench_group(i), (i / 1_000_000) as usize),
            Some(i) => (i, 0),
            None => (pos as u64, 0),
        };
        let truth = Truth::Mc {
            answer,
            options: q.options.iter().map(|(_, t)| t.clone()).collect(),
            group,
            rotation,
            category: q.category.clone(),
        };
        // Predictions may carry the id as a number or a string.
        let key = index(&q.id).map_or(Id::Str(q.id.clone()), |i| Id::Int(i as i64));
        truths.entry(key).or_default().push(truth);
    }
    let preds: Vec<(Id, String)> =
        read_predictions(predictions, "question_id", &["answer", "text"])?
            .into_iter()
            .map(|(id, t)| {
                let id = match &id {
                    Id::Str(s) => index(s).map_or(id.clone(), |i| Id::Int(i as i64)),
                    Id::Int(_) => id,
                };
                (id, t)
            })
            .collect();
    let annotated = truths.len();
    finish(
        &Task::Mc { rule, circular },
        "mc",
        preds,
        &truths,
        annotated,
        problems,
        predictions,
    )
}
