//! Multiple-choice scoring: option-letter extraction, accuracy, MMBench CircularEval and the
//! lmms-eval ScienceQA rule.
//!
//! # Letter extraction ([`extract_letter`])
//!
//! VLMEvalKit's rule-based matcher `can_infer` (vlmeval/utils/matching_util.py as of commit
//! c6bdffd3, March 2024 to mid 2025; lmms-eval's MMBench task carries the same copy), used
//! before any LLM judge and alone in its `exact_matching` mode. Options are lettered `A`, `B`,
//! ... in order.
//!
//! 1. If the answer contains one of VLMEvalKit's refusal markers ("Sorry, I can't help with
//!    images of people yet.", "I can't process this file.", "I'm sorry, but without the image
//!    provided", "Cannot determine the answer"), the result is `Z` (VLMEvalKit's "no valid
//!    option" letter, never a correct answer). An answer containing "Failed to obtain answer
//!    via API" skips this option step.
//! 2. Otherwise the characters `.()[],:;!*#{}` become spaces and the answer is split on
//!    whitespace. If exactly one option letter occurs as a whole piece (case-sensitive), that
//!    letter is the answer: `A`, `A.`, `(A)`, `A)`, `[A]`, `The answer is A`, and also
//!    `A cat on a mat` (VLMEvalKit's known article quirk). If no letter occurs but a piece `Z`
//!    does, the result is `Z`.
//! 3. Otherwise, if exactly one option's text (lower-cased) is a substring of the lower-cased
//!    answer, that option's letter. Otherwise no answer (`None`).
//!
//! # CircularEval ([`circular_accuracy`])
//!
//! MMBench asks each question once per rotation of its options and counts it correct only if
//! every rotation is answered correctly. Rotation `k` of `n` options (k = 0..n-1) shows at
//! letter `i` the original option `(i + k) mod n`, as LLaVA's `model_vqa_mmbench.py
//! --all-rounds` builds it (options and letters both shifted left by one per round); the correct
//! letter of rotation `k` is therefore `(answer - k) mod n` ([`rotate_options`],
//! [`rotated_answer`]). Records are grouped by a caller-given group id: VLMEvalKit's circular
//! TSVs give the copies indices `index + k * 1_000_000` and group by `index % 1_000_000`
//! ([`mmbench_group`]); LLaVA keeps `question_id` and adds `round_id`, so the group is the
//! question id. A group scores 1 if all its records are correct, else 0 (under VLMEvalKit's
//! exact matching, a record whose letter cannot be extracted is wrong).

use std::collections::BTreeMap;

use super::{MetricsError, py_split, py_strip};

/// VLMEvalKit's refusal markers, mapped to the letter `Z`.
const REJECT_MARKERS: [&str; 4] = [
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
];

/// The letter of option `i` (`A` for 0), if there are at most 26.
fn letter(i: usize) -> Option<char> {
    u8::try_from(i)
        .ok()
        .filter(|&i| i < 26)
        .map(|i| char::from(b'A' + i))
}

/// VLMEvalKit's `can_infer_option`.
fn infer_option(answer: &str, n_options: usize) -> Option<char> {
    if answer.contains("Failed to obtain answer via API") {
        return None;
    }
    if REJECT_MARKERS.iter().any(|m| answer.contains(m)) {
        return Some('Z');
    }
    let spaced: String = answer
        .chars()
        .map(|c| if ".()[],:;!*#{}".contains(c) { ' ' } else { c })
        .collect();
    let pieces: Vec<&str> = py_split(&spaced).into_iter().map(py_strip).collect();
    let present: Vec<char> = (0..n_options)
        .filter_map(letter)
        .filter(|l| pieces.iter().any(|p| p.len() == 1 && p.starts_with(*l)))
        .collect();
    match present.as_slice() {
        [only] => Some(*only),
        [] if pieces.contains(&"Z") => Some('Z'),
        _ => None,
    }
}

/// VLMEvalKit's `can_infer_text`.
fn infer_text<S: AsRef<str>>(answer: &str, options: &[S]) -> Option<char> {
    let answer = answer.to_lowercase();
    let found: Vec<usize> = options
        .iter()
        .enumerate()
        .filter(|(_, o)| answer.contains(&o.as_ref().to_lowercase()))
        .map(|(i, _)| i)
        .collect();
    match found.as_slice() {
        [only] => letter(*only),
        _ => None,
    }
}

/// The option letter a free-form answer selects (VLMEvalKit `can_infer`); `Some('Z')` marks
/// VLMEvalKit's explicit "no valid option"; `None` means nothing could be inferred. Options
/// beyond the 26th are ignored.
pub fn extract_letter<S: AsRef<str>>(answer: &str, options: &[S]) -> Option<char> {
    let options = &options[..options.len().min(26)];
    infer_option(answer, options.len()).or_else(|| infer_text(answer, options))
}

/// lmms-eval's ScienceQA-IMG rule: correct if the stripped answer equals the letter (ignoring
/// case), or if it starts with an upper-case character followed by `.` and that character is
/// the letter (ignoring case).
pub fn scienceqa_correct(answer: &str, target: char) -> bool {
    let pred = py_strip(answer);
    let target: String = target.to_lowercase().collect();
    if pred.to_lowercase() == target {
        return true;
    }
    let mut chars = pred.chars();
    match (chars.next(), chars.next()) {
        (Some(first), Some('.')) if first.is_uppercase() => {
            first.to_lowercase().collect::<String>() == target
        }
        _ => false,
    }
}

/// One scored multiple-choice answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct McRecord {
    /// The extracted letter (`None` if nothing could be extracted).
    pub prediction: Option<char>,
    /// The correct letter.
    pub answer: char,
}

/// Plain accuracy.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct McScores {
    /// Correct / total.
    pub accuracy: f64,
    /// Number of correct records.
    pub correct: usize,
    /// Number of records.
    pub total: usize,
}

/// Accuracy of extracted letters.
pub fn accuracy(records: &[McRecord]) -> Result<McScores, MetricsError> {
    if records.is_empty() {
        return Err(MetricsError::Empty { metric: "mc" });
    }
    let correct = records
        .iter()
        .filter(|r| r.prediction == Some(r.answer))
        .count();
    Ok(McScores {
        accuracy: correct as f64 / records.len() as f64,
        correct,
        total: records.len(),
    })
}

/// One rotation of a circularly evaluated question.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CircularRecord {
    /// The question the rotation belongs to.
    pub group: u64,
    /// The extracted letter for this rotation.
    pub prediction: Option<char>,
    /// The correct letter in this rotation.
    pub answer: char,
}

/// CircularEval accuracy.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CircularScores {
    /// Questions with every rotation correct / questions.
    pub accuracy: f64,
    /// Questions with every rotation correct.
    pub hits: usize,
    /// Number of questions (groups).
    pub groups: usize,
    /// Per question: whether all its rotations were correct.
    pub per_group: BTreeMap<u64, bool>,
}

/// CircularEval: a question counts only if all its rotations are right.
pub fn circular_accuracy(records: &[CircularRecord]) -> Result<CircularScores, MetricsError> {
    let mut per_group: BTreeMap<u64, bool> = BTreeMap::new();
    for r in records {
        let ok = r.prediction == Some(r.answer);
        per_group
            .entry(r.group)
            .and_modify(|all| *all &= ok)
            .or_insert(ok);
    }
    if per_group.is_empty() {
        return Err(MetricsError::Empty {
            metric: "mc circular",
        });
    }
    let hits = per_group.values().filter(|&&ok| ok).count();
    let groups = per_group.len();
    Ok(CircularScores {
        accuracy: hits as f64 / groups as f64,
        hits,
        groups,
        per_group,
    })
}

/// The options shown in rotation `k`: position `i` shows `options[(i + k) % n]`.
pub fn rotate_options<T: Clone>(options: &[T], k: usize) -> Vec<T> {
    let n = options.len();
    (0..n).map(|i| options[(i + k) % n].clone()).collect()
}

/// The correct letter in rotation `k` of `n` options whose original answer is `answer`;
/// `None` if `answer` is not one of the first `n` letters or `n` is 0 or above 26.
pub fn rotated_answer(answer: char, k: usize, n: usize) -> Option<char> {
    if n == 0 || n > 26 || !answer.is_ascii_uppercase() {
        return None;
    }
    let original = usize::from(u8::try_from(answer).ok()? - b'A');
    if original >= n {
        return None;
    }
    letter((original + n - k % n) % n)
}

/// VLMEvalKit's CircularEval group of an MMBench row index (`index % 1_000_000`).
pub fn mmbench_group(index: u64) -> u64 {
    index % 1_000_000
}

/// Checks an option list's size (1..=26), naming the item index in the error.
pub fn check_options<S>(index: usize, options: &[S]) -> Result<(), MetricsError> {
    if options.is_empty() || options.len() > 26 {
        return Err(MetricsError::BadOptionCount {
            index,
            count: options.len(),
        });
    }
    Ok(())
}
