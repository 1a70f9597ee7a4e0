//! POPE (object-hallucination yes/no probing): accuracy, precision, recall, F1 and yes-ratio,
//! with "yes" as the positive class, overall and per category (`random`, `popular`,
//! `adversarial`).
//!
//! Two reference behaviours ([`PopeParser`]):
//!
//! * [`PopeParser::Llava`], LLaVA `llava/eval/eval_pope.py`: keep the text before the first
//!   `.`, delete `,`, split on single spaces; if any word is exactly `No`, `not` or `no` the
//!   answer is "no", otherwise "yes" (so `NO` or `no\n` count as "yes"). A label is "no" only if
//!   it is exactly `no`. `yes_ratio` is the share of "yes" predictions. LLaVA divides by zero
//!   (and crashes) when a denominator is 0; we report 0 instead.
//! * [`PopeParser::LmmsEval`], lmms-eval `tasks/pope/utils.py`: prediction and label are
//!   lower-cased and stripped; accuracy is exact string match. Precision counts predictions
//!   equal to `yes`, recall's false negatives are predictions equal to `no`: any other answer is
//!   a miss for accuracy but neither a positive nor a negative. Zero denominators give 0. Its
//!   `yes_ratio` is, as lmms-eval computes it, the share of **labels** that are "yes" (not of
//!   predictions). Labels must be `yes` or `no` after lower-casing and stripping.

use std::collections::BTreeMap;

use super::{MetricsError, py_strip};

/// Which reference script's parsing and aggregation to reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PopeParser {
    /// LLaVA's `eval_pope.py`.
    Llava,
    /// lmms-eval's `pope` task.
    LmmsEval,
}

/// One POPE question.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PopeItem {
    /// The model's answer text.
    pub prediction: String,
    /// The ground-truth label (`yes`/`no`).
    pub label: String,
    /// The POPE split the question belongs to (`random`, `popular`, `adversarial`), if known.
    #[serde(default)]
    pub category: Option<String>,
}

/// The metrics of one group of questions (fractions in `0..=1`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PopeScores {
    /// (TP + TN) / total (LLaVA); mean exact match (lmms-eval).
    pub accuracy: f64,
    /// TP / (TP + FP).
    pub precision: f64,
    /// TP / (TP + FN).
    pub recall: f64,
    /// 2 P R / (P + R).
    pub f1: f64,
    /// Share of "yes" predictions (LLaVA) or of "yes" labels (lmms-eval).
    pub yes_ratio: f64,
    /// True positives.
    pub tp: usize,
    /// False positives.
    pub fp: usize,
    /// True negatives.
    pub tn: usize,
    /// False negatives.
    #[serde(rename = "fn")]
    pub fn_: usize,
    /// Number of questions.
    pub total: usize,
}

/// Overall scores and scores per category.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PopeReport {
    /// All questions together.
    pub overall: PopeScores,
    /// Questions grouped by [`PopeItem::category`] (items without one appear only overall).
    pub per_category: BTreeMap<String, PopeScores>,
}

/// LLaVA's answer parsing: `true` for "yes".
pub fn llava_says_yes(text: &str) -> bool {
    let first = text.split('.').next().unwrap_or("");
    let first = first.replace(',', "");
    !first.split(' ').any(|w| matches!(w, "No" | "not" | "no"))
}

fn ratio(num: usize, den: usize) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

fn f1(precision: f64, recall: f64) -> f64 {
    if precision + recall > 0.0 {
        2.0 * precision * recall / (precision + recall)
    } else {
        0.0
    }
}

fn score_llava(items: &[&PopeItem]) -> PopeScores {
    let (mut tp, mut fp, mut tn, mut fn_, mut yes) = (0, 0, 0, 0, 0);
    for item in items {
        let pred = llava_says_yes(&item.prediction);
        let label = item.label != "no";
        yes += usize::from(pred);
        match (pred, label) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, false) => tn += 1,
            (false, true) => fn_ += 1,
        }
    }
    let precision = ratio(tp, tp + fp);
    let recall = ratio(tp, tp + fn_);
    PopeScores {
        accuracy: ratio(tp + tn, items.len()),
        precision,
        recall,
        f1: f1(precision, recall),
        yes_ratio: ratio(yes, items.len()),
        tp,
        fp,
        tn,
        fn_,
        total: items.len(),
    }
}

fn score_lmms(items: &[(&PopeItem, String, String)]) -> PopeScores {
    let (mut tp, mut fp, mut tn, mut fn_, mut hits, mut label_yes) = (0, 0, 0, 0, 0, 0);
    for (_, pred, label) in items {
        hits += usize::from(pred == label);
        label_yes += usize::from(label == "yes");
        match (pred.as_str(), label.as_str()) {
            ("yes", "yes") => tp += 1,
            ("yes", _) => fp += 1,
            ("no", "no") => tn += 1,
            ("no", _) => fn_ += 1,
            _ => {}
        }
    }
    let precision = ratio(tp, tp + fp);
    let recall = ratio(tp, tp + fn_);
    PopeScores {
        accuracy: ratio(hits, items.len()),
        precision,
        recall,
        f1: f1(precision, recall),
        yes_ratio: ratio(label_yes, items.len()),
        tp,
        fp,
        tn,
        fn_,
        total: items.len(),
    }
}

/// Scores POPE answers overall and per category.
pub fn score(items: &[PopeItem], parser: PopeParser) -> Result<PopeReport, MetricsError> {
    if items.is_empty() {
        return Err(MetricsError::Empty { metric: "pope" });
    }
    let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        if let Some(c) = &item.category {
            groups.entry(c.clone()).or_default().push(i);
        }
    }
    let (overall, per_category) = match parser {
        PopeParser::Llava => {
            let all: Vec<&PopeItem> = items.iter().collect();
            let per = groups
                .into_iter()
                .map(|(c, idx)| {
                    (
                        c,
                        score_llava(&idx.iter().map(|&i| &items[i]).collect::<Vec<_>>()),
                    )
                })
                .collect();
            (score_llava(&all), per)
        }
        PopeParser::LmmsEval => {
            let mut prepared = Vec::with_capacity(items.len());
            for (index, item) in items.iter().enumerate() {
                let label = py_strip(&item.label.to_lowercase()).to_string();
                if label != "yes" && label != "no" {
                    return Err(MetricsError::BadLabel {
                        metric: "pope",
                        index,
                        label: item.label.clone(),
                        expected: "yes, no",
                    });
                }
                let pred = py_strip(&item.prediction.to_lowercase()).to_string();
                prepared.push((item, pred, label));
            }
            let per = groups
                .into_iter()
                .map(|(c, idx)| {
                    let group: Vec<_> = idx.iter().map(|&i| prepared[i].clone()).collect();
                    (c, score_lmms(&group))
                })
                .collect();
            (score_lmms(&prepared), per)
        }
    };
    Ok(PopeReport {
        overall,
        per_category,
    })
}
