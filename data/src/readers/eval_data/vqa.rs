//! VQA questions files (`{questions: [...]}`: VQAv2 and the OpenFlamingo VQA-format
//! TextVQA/OK-VQA/VizWiz conversions) joined on `question_id` with their annotations files
//! (`{annotations: [...]}`).
//!
//! Contract: with annotations, a question without one and an annotation without a question are
//! reported in [`Loaded::problems`] and left out, as are duplicate ids and images that resolve
//! outside the image directory; without annotations (test splits) every well-formed question is
//! kept with no answers.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Entry, Id, ImageLocator, Loaded, malformed, outside, read_json};
use crate::error::DataError;

/// One VQA question with its ground truth.
#[derive(Debug, Clone, PartialEq)]
pub struct VqaQuestion {
    /// The question id (echoed in results files).
    pub question_id: Id,
    /// The image id.
    pub image_id: Id,
    /// The question text.
    pub question: String,
    /// The image file.
    pub image: PathBuf,
    /// The ground-truth answers (10 for VQAv2/TextVQA/VizWiz/OK-VQA), as written; empty when no
    /// annotations were given (test splits).
    pub answers: Vec<String>,
    /// `multiple_choice_answer`, when annotated.
    pub multiple_choice_answer: Option<String>,
    /// `question_type`, when annotated.
    pub question_type: Option<String>,
    /// `answer_type` (`yes/no`, `number`, `other`), when annotated.
    pub answer_type: Option<String>,
}

#[derive(Deserialize)]
struct VqaQuestionsFile {
    questions: Vec<Entry<VqaQuestionEntry>>,
}

#[derive(Deserialize)]
struct VqaQuestionEntry {
    question_id: Id,
    image_id: Id,
    question: String,
}

#[derive(Deserialize)]
struct VqaAnnotationsFile {
    annotations: Vec<Entry<VqaAnnotationEntry>>,
}

#[derive(Deserialize)]
struct VqaAnnotationEntry {
    question_id: Id,
    answers: Vec<AnswerEntry>,
    #[serde(default)]
    multiple_choice_answer: Option<String>,
    #[serde(default)]
    question_type: Option<String>,
    #[serde(default)]
    answer_type: Option<String>,
}

/// A VQA answer: `{answer, answer_confidence, answer_id}` or a bare string.
#[derive(Deserialize)]
#[serde(untagged)]
enum AnswerEntry {
    Object { answer: String },
    Text(String),
}

impl AnswerEntry {
    fn into_text(self) -> String {
        match self {
            AnswerEntry::Object { answer } | AnswerEntry::Text(answer) => answer,
        }
    }
}

/// Loads a VQA questions file (`{questions: [...]}`: VQAv2 and the OpenFlamingo VQA-format
/// TextVQA/OK-VQA/VizWiz conversions) and, when given, its annotations file
/// (`{annotations: [...]}`), joined on `question_id`. With annotations, a question without one (and
/// an annotation without a question) is reported as a problem and left out.
pub fn load_vqa(
    questions: &Path,
    annotations: Option<&Path>,
    images: &ImageLocator,
) -> Result<Loaded<VqaQuestion>, DataError> {
    let qfile = questions.display().to_string();
    let parsed: VqaQuestionsFile = read_json(questions)?;
    let mut loaded = Loaded::default();
    let mut truth: Option<(String, HashMap<Id, VqaAnnotationEntry>)> = None;
    if let Some(apath) = annotations {
        let afile = apath.display().to_string();
        let parsed: VqaAnnotationsFile = read_json(apath)?;
        let mut by_question = HashMap::new();
        for (i, entry) in parsed.annotations.into_iter().enumerate() {
            match entry.0 {
                Ok(a) if by_question.contains_key(&a.question_id) => {
                    loaded
                        .problems
                        .push(malformed(&afile, &a.question_id, "duplicate annotation"));
                }
                Ok(a) => {
                    by_question.insert(a.question_id.clone(), a);
                }
                Err(msg) => {
                    loaded
                        .problems
                        .push(malformed(&afile, format!("annotations[{i}]"), &msg))
                }
            }
        }
        truth = Some((afile, by_question));
    }
    let mut seen = HashSet::new();
    for (i, entry) in parsed.questions.into_iter().enumerate() {
        let q = match entry.0 {
            Ok(q) => q,
            Err(msg) => {
                loaded
                    .problems
                    .push(malformed(&qfile, format!("questions[{i}]"), &msg));
                continue;
            }
        };
        if !seen.insert(q.question_id.clone()) {
            loaded
                .problems
                .push(malformed(&qfile, &q.question_id, "duplicate question id"));
            continue;
        }
        let image = match images.locate_inside(&q.image_id) {
            Ok(image) => image,
            Err(e) => {
                if let Some((_, by_question)) = truth.as_mut() {
                    by_question.remove(&q.question_id);
                }
                loaded.problems.push(outside(&qfile, &q.question_id, &e));
                continue;
            }
        };
        let mut item = VqaQuestion {
            image,
            question_id: q.question_id,
            image_id: q.image_id,
            question: q.question,
            answers: Vec::new(),
            multiple_choice_answer: None,
            question_type: None,
            answer_type: None,
        };
        if let Some((_, by_question)) = truth.as_mut() {
            let Some(a) = by_question.remove(&item.question_id) else {
                loaded.problems.push(malformed(
                    &qfile,
                    &item.question_id,
                    "question has no annotation",
                ));
                continue;
            };
            item.answers = a.answers.into_iter().map(AnswerEntry::into_text).collect();
            item.multiple_choice_answer = a.multiple_choice_answer;
            item.question_type = a.question_type;
            item.answer_type = a.answer_type;
        }
        loaded.items.push(item);
    }
    if let Some((afile, orphans)) = truth {
        let mut orphans: Vec<Id> = orphans.into_keys().collect();
        orphans.sort();
        for id in orphans {
            loaded
                .problems
                .push(malformed(&afile, &id, "annotation has no question"));
        }
    }
    Ok(loaded)
}
