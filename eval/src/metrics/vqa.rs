//! VQA accuracy: `min(1, #matching humans / 3)` averaged over the ten leave-one-out subsets
//! of the ground-truth answers, with the answer normalisation of the reference scripts.
//!
//! Four reference behaviours are reproduced ([`Processor`]):
//!
//! * [`Processor::Official`]: `vqaEval.py` of the official VQA API (GT-Vision-Lab/VQA at
//!   a013f00, run under Python 3).
//!   Answers get `\n`/`\t` → space and `strip()`. **Only if the ten ground-truth answers are not
//!   all identical** are the ground truth and the prediction normalised (punctuation, periods,
//!   number words, articles, contractions); otherwise the raw stripped strings are compared,
//!   case-sensitively.
//! * [`Processor::OpenFlamingo`]: OpenFlamingo's copy `open_flamingo/eval/vqa_metric.py`
//!   (since its 2023-05-24 change "always postprocess gt answers", i.e. OpenFlamingo v2 and the
//!   xGen-MM evaluation code derived from it): the same steps as `Official` but applied to the
//!   ground truth and the prediction **always**, without the all-identical exception.
//! * [`Processor::EvalAi`]: `EvalAIAnswerProcessor` (mmf / TextVQA `m4c_evaluator.py`, used by
//!   LLaVA's TextVQA evaluation and by lmms-eval's TextVQA and VizWiz tasks). Prediction and
//!   ground truth are **always** normalised: lower-case, drop `,` and `?`, `'s` → ` 's`, strip,
//!   then the same steps with its own comma rule `(?<=\d)(,)+(?=\d)` (which can never fire, since
//!   commas were already removed).
//! * [`Processor::OpenFlamingoOkVqa`]: OpenFlamingo's OK-VQA path for raw generations:
//!   the prediction is cut and stemmed by `postprocess_ok_vqa_generation` ([`super::okvqa`]),
//!   then scored as `OpenFlamingo`.
//! * [`Processor::VizWiz`]: the VizWiz-VQA challenge script (`VQAEval` by Qing Li). Only the
//!   prediction is normalised (official rules, but its contractions table writes most
//!   apostrophes as U+2019); the ground-truth answers are compared **as stored**, unstripped.
//!   `unanswerable` is an ordinary answer string: no special case exists in the script.
//!
//! Normalisation steps, in the scripts' order:
//!
//! 1. Punctuation: for each of ``; / [ ] " { } ( ) = + \ _ - > < @ ` , ? !`` in that order: if
//!    the symbol followed by a space or preceded by a space occurs in the *input* text, or the
//!    input matches the comma rule (official: a digit, a comma, a digit), the symbol is deleted
//!    everywhere, otherwise replaced by a space.
//! 2. Periods: the scripts' `(?!<=\d)(\.)(?!\d)` has a malformed look-behind (it is a look-ahead
//!    for the text `<=` plus a digit, which never matches at a `.`), so it deletes every `.` not
//!    followed by a digit; `re.UNICODE` (= 32) is passed as the `count` argument, so at most the
//!    first 32 such periods go.
//! 3. Lower-case, split on whitespace, map `none`/`zero`..`ten` to digits, drop `a`, `an`,
//!    `the`, map apostrophe-less contractions (the table below, including its odd entries such
//!    as `somebody'd` → `somebodyd`; keys with capitals can never match), join with spaces.
//!
//! `\d` is Python 3's Unicode decimal digit. (The original script is Python 2, where `\d` in a
//! `str` pattern is ASCII-only; this differs only for non-ASCII digits next to commas/periods.)
//!
//! lmms-eval's own VQAv2 task mixes these steps and has changed between releases; it is not
//! reproduced.

use std::collections::BTreeMap;

use super::{MetricsError, is_decimal_digit, mean, py_split, py_strip};

/// Which reference script's answer handling to reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Processor {
    /// The official VQA `vqaEval.py` (normalises only when the ground truth disagrees).
    Official,
    /// OpenFlamingo v2's `vqa_metric.py` (the official steps, always applied), which the
    /// xGen-MM few-shot VQAv2/OK-VQA/VizWiz/TextVQA numbers come from.
    OpenFlamingo,
    /// The EvalAI / TextVQA `EvalAIAnswerProcessor` (LLaVA TextVQA, lmms-eval TextVQA/VizWiz).
    EvalAi,
    /// The VizWiz-VQA challenge evaluation script.
    VizWiz,
    /// OpenFlamingo's OK-VQA scoring of a raw generation: the prediction first goes through
    /// `postprocess_ok_vqa_generation` (the VQA cut and NLTK/`inflection` stemming,
    /// [`super::okvqa`]), then everything is as [`Processor::OpenFlamingo`]. Ground-truth
    /// answers are not stemmed (OK-VQA v1.1's `answers` already are).
    OpenFlamingoOkVqa,
}

/// One question: the model's answer and the human answers (usually ten).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VqaItem {
    /// The model's answer.
    pub prediction: String,
    /// The human ground-truth answers.
    pub answers: Vec<String>,
    /// The dataset's `answer_type` (`yes/no`, `number`, `other`, `unanswerable`), if known.
    #[serde(default)]
    pub answer_type: Option<String>,
}

/// Overall and per-question accuracy.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct VqaScores {
    /// Mean accuracy over questions (`accuracy`, a fraction; the scripts print 100×, rounded).
    pub accuracy: f64,
    /// Accuracy of each question, in input order.
    pub per_question: Vec<f64>,
    /// Mean accuracy per `answer_type` (questions without one are left out).
    pub per_answer_type: BTreeMap<String, f64>,
}

/// The symbols of the punctuation step, in the scripts' order.
const PUNCTUATION: [char; 21] = [
    ';', '/', '[', ']', '"', '{', '}', '(', ')', '=', '+', '\\', '_', '-', '>', '<', '@', '`', ',',
    '?', '!',
];

/// Number words mapped to digits (`manualMap` / `NUMBER_MAP`).
const NUMBER_WORDS: [(&str, &str); 12] = [
    ("none", "0"),
    ("zero", "0"),
    ("one", "1"),
    ("two", "2"),
    ("three", "3"),
    ("four", "4"),
    ("five", "5"),
    ("six", "6"),
    ("seven", "7"),
    ("eight", "8"),
    ("nine", "9"),
    ("ten", "10"),
];

/// Articles removed by the digit/article step.
const ARTICLES: [&str; 3] = ["a", "an", "the"];

/// The contractions table of `vqaEval.py` (identical in `EvalAIAnswerProcessor`).
const CONTRACTIONS: &[(&str, &str)] = &[
    ("aint", "ain't"),
    ("arent", "aren't"),
    ("cant", "can't"),
    ("couldve", "could've"),
    ("couldnt", "couldn't"),
    ("couldn'tve", "couldn't've"),
    ("couldnt've", "couldn't've"),
    ("didnt", "didn't"),
    ("doesnt", "doesn't"),
    ("dont", "don't"),
    ("hadnt", "hadn't"),
    ("hadnt've", "hadn't've"),
    ("hadn'tve", "hadn't've"),
    ("hasnt", "hasn't"),
    ("havent", "haven't"),
    ("hed", "he'd"),
    ("hed've", "he'd've"),
    ("he'dve", "he'd've"),
    ("hes", "he's"),
    ("howd", "how'd"),
    ("howll", "how'll"),
    ("hows", "how's"),
    ("Id've", "I'd've"),
    ("I'dve", "I'd've"),
    ("Im", "I'm"),
    ("Ive", "I've"),
    ("isnt", "isn't"),
    ("itd", "it'd"),
    ("itd've", "it'd've"),
    ("it'dve", "it'd've"),
    ("itll", "it'll"),
    ("let's", "let's"),
    ("maam", "ma'am"),
    ("mightnt", "mightn't"),
    ("mightnt've", "mightn't've"),
    ("mightn'tve", "mightn't've"),
    ("mightve", "might've"),
    ("mustnt", "mustn't"),
    ("mustve", "must've"),
    ("neednt", "needn't"),
    ("notve", "not've"),
    ("oclock", "o'clock"),
    ("oughtnt", "oughtn't"),
    ("ow's'at", "'ow's'at"),
    ("'ows'at", "'ow's'at"),
    ("'ow'sat", "'ow's'at"),
    ("shant", "shan't"),
    ("shed've", "she'd've"),
    ("she'dve", "she'd've"),
    ("she's", "she's"),
    ("shouldve", "should've"),
    ("shouldnt", "shouldn't"),
    ("shouldnt've", "shouldn't've"),
    ("shouldn'tve", "shouldn't've"),
    ("somebody'd", "somebodyd"),
    ("somebodyd've", "somebody'd've"),
    ("somebody'dve", "somebody'd've"),
    ("somebodyll", "somebody'll"),
    ("somebodys", "somebody's"),
    ("someoned", "someone'd"),
    ("someoned've", "someone'd've"),
    ("someone'dve", "someone'd've"),
    ("someonell", "someone'll"),
    ("someones", "someone's"),
    ("somethingd", "something'd"),
    ("somethingd've", "something'd've"),
    ("something'dve", "something'd've"),
    ("somethingll", "something'll"),
    ("thats", "that's"),
    ("thered", "there'd"),
    ("thered've", "there'd've"),
    ("there'dve", "there'd've"),
    ("therere", "there're"),
    ("theres", "there's"),
    ("theyd", "they'd"),
    ("theyd've", "they'd've"),
    ("they'dve", "they'd've"),
    ("theyll", "they'll"),
    ("theyre", "they're"),
    ("theyve", "they've"),
    ("twas", "'twas"),
    ("wasnt", "wasn't"),
    ("wed've", "we'd've"),
    ("we'dve", "we'd've"),
    ("weve", "we've"),
    ("werent", "weren't"),
    ("whatll", "what'll"),
    ("whatre", "what're"),
    ("whats", "what's"),
    ("whatve", "what've"),
    ("whens", "when's"),
    ("whered", "where'd"),
    ("wheres", "where's"),
    ("whereve", "where've"),
    ("whod", "who'd"),
    ("whod've", "who'd've"),
    ("who'dve", "who'd've"),
    ("wholl", "who'll"),
    ("whos", "who's"),
    ("whove", "who've"),
    ("whyll", "why'll"),
    ("whyre", "why're"),
    ("whys", "why's"),
    ("wont", "won't"),
    ("wouldve", "would've"),
    ("wouldnt", "wouldn't"),
    ("wouldnt've", "wouldn't've"),
    ("wouldn'tve", "wouldn't've"),
    ("yall", "y'all"),
    ("yall'll", "y'all'll"),
    ("y'allll", "y'all'll"),
    ("yall'd've", "y'all'd've"),
    ("y'alld've", "y'all'd've"),
    ("y'all'dve", "y'all'd've"),
    ("youd", "you'd"),
    ("youd've", "you'd've"),
    ("you'dve", "you'd've"),
    ("youll", "you'll"),
    ("youre", "you're"),
    ("youve", "you've"),
];

/// The contractions table of the VizWiz script: same keys as [`CONTRACTIONS`] but many keys and
/// values use U+2019 instead of `'`.
const VIZWIZ_CONTRACTIONS: &[(&str, &str)] = &[
    ("aint", "ain't"),
    ("arent", "aren't"),
    ("cant", "can't"),
    ("couldve", "could've"),
    ("couldnt", "couldn't"),
    ("couldn'tve", "couldn’t’ve"),
    ("couldnt’ve", "couldn’t’ve"),
    ("didnt", "didn’t"),
    ("doesnt", "doesn’t"),
    ("dont", "don’t"),
    ("hadnt", "hadn’t"),
    ("hadnt’ve", "hadn’t’ve"),
    ("hadn'tve", "hadn’t’ve"),
    ("hasnt", "hasn’t"),
    ("havent", "haven’t"),
    ("hed", "he’d"),
    ("hed’ve", "he’d’ve"),
    ("he’dve", "he’d’ve"),
    ("hes", "he’s"),
    ("howd", "how’d"),
    ("howll", "how’ll"),
    ("hows", "how’s"),
    ("Id’ve", "I’d’ve"),
    ("I’dve", "I’d’ve"),
    ("Im", "I’m"),
    ("Ive", "I’ve"),
    ("isnt", "isn’t"),
    ("itd", "it’d"),
    ("itd’ve", "it’d’ve"),
    ("it’dve", "it’d’ve"),
    ("itll", "it’ll"),
    ("let’s", "let’s"),
    ("maam", "ma’am"),
    ("mightnt", "mightn’t"),
    ("mightnt’ve", "mightn’t’ve"),
    ("mightn’tve", "mightn’t’ve"),
    ("mightve", "might’ve"),
    ("mustnt", "mustn’t"),
    ("mustve", "must’ve"),
    ("neednt", "needn’t"),
    ("notve", "not’ve"),
    ("oclock", "o’clock"),
    ("oughtnt", "oughtn’t"),
    ("ow’s’at", "’ow’s’at"),
    ("’ows’at", "’ow’s’at"),
    ("’ow’sat", "’ow’s’at"),
    ("shant", "shan’t"),
    ("shed’ve", "she’d’ve"),
    ("she’dve", "she’d’ve"),
    ("she’s", "she’s"),
    ("shouldve", "should’ve"),
    ("shouldnt", "shouldn’t"),
    ("shouldnt’ve", "shouldn’t’ve"),
    ("shouldn’tve", "shouldn’t’ve"),
    ("somebody’d", "somebodyd"),
    ("somebodyd’ve", "somebody’d’ve"),
    ("somebody’dve", "somebody’d’ve"),
    ("somebodyll", "somebody’ll"),
    ("somebodys", "somebody’s"),
    ("someoned", "someone’d"),
    ("someoned’ve", "someone’d’ve"),
    ("someone’dve", "someone’d’ve"),
    ("someonell", "someone’ll"),
    ("someones", "someone’s"),
    ("somethingd", "something’d"),
    ("somethingd’ve", "something’d’ve"),
    ("something’dve", "something’d’ve"),
    ("somethingll", "something’ll"),
    ("thats", "that’s"),
    ("thered", "there’d"),
    ("thered’ve", "there’d’ve"),
    ("there’dve", "there’d’ve"),
    ("therere", "there’re"),
    ("theres", "there’s"),
    ("theyd", "they’d"),
    ("theyd’ve", "they’d’ve"),
    ("they’dve", "they’d’ve"),
    ("theyll", "they’ll"),
    ("theyre", "they’re"),
    ("theyve", "they’ve"),
    ("twas", "’twas"),
    ("wasnt", "wasn’t"),
    ("wed’ve", "we’d’ve"),
    ("we’dve", "we’d’ve"),
    ("weve", "we've"),
    ("werent", "weren’t"),
    ("whatll", "what’ll"),
    ("whatre", "what’re"),
    ("whats", "what’s"),
    ("whatve", "what’ve"),
    ("whens", "when’s"),
    ("whered", "where’d"),
    ("wheres", "where's"),
    ("whereve", "where’ve"),
    ("whod", "who’d"),
    ("whod’ve", "who’d’ve"),
    ("who’dve", "who’d’ve"),
    ("wholl", "who’ll"),
    ("whos", "who’s"),
    ("whove", "who've"),
    ("whyll", "why’ll"),
    ("whyre", "why’re"),
    ("whys", "why’s"),
    ("wont", "won’t"),
    ("wouldve", "would’ve"),
    ("wouldnt", "wouldn’t"),
    ("wouldnt’ve", "wouldn’t’ve"),
    ("wouldn’tve", "wouldn’t’ve"),
    ("yall", "y’all"),
    ("yall’ll", "y’all’ll"),
    ("y’allll", "y’all’ll"),
    ("yall’d’ve", "y’all’d’ve"),
    ("y’alld’ve", "y’all’d’ve"),
    ("y’all’dve", "y’all’d’ve"),
    ("youd", "you’d"),
    ("youd’ve", "you’d’ve"),
    ("you’dve", "you’d’ve"),
    ("youll", "you’ll"),
    ("youre", "you’re"),
    ("youve", "you’ve"),
];

/// Which comma test decides, in the punctuation step, between deleting and spacing out.
#[derive(Debug, Clone, Copy)]
enum CommaRule {
    /// `(\d)(\,)(\d)`: a digit, one comma, a digit.
    Official,
    /// `(?<=\d)(\,)+(?=\d)`: a digit, one or more commas, a digit.
    EvalAi,
}

fn comma_rule_matches(text: &str, rule: CommaRule) -> bool {
    let chars: Vec<char> = text.chars().collect();
    (0..chars.len()).any(|i| {
        if !is_decimal_digit(chars[i]) {
            return false;
        }
        let mut j = i + 1;
        while j < chars.len() && chars[j] == ',' {
            j += 1;
            if matches!(rule, CommaRule::Official) {
                break;
            }
        }
        j > i + 1 && j < chars.len() && is_decimal_digit(chars[j])
    })
}

/// The punctuation step followed by the period step.
fn process_punctuation(text: &str, rule: CommaRule) -> String {
    let comma = comma_rule_matches(text, rule);
    let mut out = text.to_string();
    for p in PUNCTUATION {
        let delete = comma || text.contains(&format!("{p} ")) || text.contains(&format!(" {p}"));
        out = out.replace(p, if delete { "" } else { " " });
    }
    strip_periods(&out)
}

/// Deletes the first 32 periods that are not followed by a decimal digit.
fn strip_periods(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut removed = 0;
    let mut out = String::with_capacity(text.len());
    for (i, &c) in chars.iter().enumerate() {
        let followed_by_digit = chars.get(i + 1).is_some_and(|&n| is_decimal_digit(n));
        if c == '.' && !followed_by_digit && removed < 32 {
            removed += 1;
        } else {
            out.push(c);
        }
    }
    out
}

/// Lower-case, number words → digits, drop articles, expand contractions.
fn process_digit_article(text: &str, contractions: &[(&str, &str)]) -> String {
    let lower = text.to_lowercase();
    py_split(&lower)
        .into_iter()
        .map(|w| {
            NUMBER_WORDS
                .iter()
                .find(|(k, _)| *k == w)
                .map_or(w, |(_, v)| v)
        })
        .filter(|w| !ARTICLES.contains(w))
        .map(|w| {
            contractions
                .iter()
                .find(|(k, _)| *k == w)
                .map_or(w, |(_, v)| v)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `\n` and `\t` → space, then Python `strip()`.
fn clean(answer: &str) -> String {
    py_strip(&answer.replace(['\n', '\t'], " ")).to_string()
}

/// The official normalisation (punctuation, periods, digits, articles, contractions) of an
/// already cleaned answer.
fn official_normalize(answer: &str, contractions: &[(&str, &str)]) -> String {
    process_digit_article(
        &process_punctuation(answer, CommaRule::Official),
        contractions,
    )
}

/// `EvalAIAnswerProcessor()(answer)`.
fn evalai_normalize(answer: &str) -> String {
    let lower = answer
        .to_lowercase()
        .replace([',', '?'], "")
        .replace("'s", " 's");
    let cleaned = clean(py_strip(&lower));
    process_digit_article(
        &process_punctuation(&cleaned, CommaRule::EvalAi),
        CONTRACTIONS,
    )
}

/// The normalised form of an answer under `processor` (the form compared when the script
/// normalises: for [`Processor::Official`] that is only when the ground truth disagrees). For
/// [`Processor::OpenFlamingoOkVqa`] this is the ground truth's form (no stemming).
pub fn normalize(answer: &str, processor: Processor) -> String {
    match processor {
        Processor::Official | Processor::OpenFlamingo | Processor::OpenFlamingoOkVqa => {
            official_normalize(&clean(answer), CONTRACTIONS)
        }
        Processor::VizWiz => official_normalize(&clean(answer), VIZWIZ_CONTRACTIONS),
        Processor::EvalAi => evalai_normalize(answer),
    }
}

/// `mean_i min(1, #{j != i : gt_j == pred} / 3)`.
fn leave_one_out(prediction: &str, answers: &[String]) -> f64 {
    let n = answers.len();
    let total: f64 = (0..n)
        .map(|i| {
            let matches = answers
                .iter()
                .enumerate()
                .filter(|&(j, a)| j != i && a == prediction)
                .count();
            (matches as f64 / 3.0).min(1.0)
        })
        .sum();
    total / n as f64
}

/// The accuracy of one prediction against its ground-truth answers.
pub fn accuracy<S: AsRef<str>>(
    prediction: &str,
    answers: &[S],
    processor: Processor,
) -> Result<f64, MetricsError> {
    if answers.is_empty() {
        return Err(MetricsError::NoAnswers { index: 0 });
    }
    let (prediction, answers) = match processor {
        Processor::Official => {
            let gts: Vec<String> = answers.iter().map(|a| clean(a.as_ref())).collect();
            let pred = clean(prediction);
            let all_same = gts.iter().all(|g| *g == gts[0]);
            if all_same {
                (pred, gts)
            } else {
                let gts = gts
                    .iter()
                    .map(|g| official_normalize(g, CONTRACTIONS))
                    .collect();
                (official_normalize(&pred, CONTRACTIONS), gts)
            }
        }
        Processor::OpenFlamingo => (
            official_normalize(&clean(prediction), CONTRACTIONS),
            answers
                .iter()
                .map(|a| official_normalize(&clean(a.as_ref()), CONTRACTIONS))
                .collect(),
        ),
        Processor::OpenFlamingoOkVqa => (
            official_normalize(
                &clean(&super::okvqa::postprocess_ok_vqa_generation(prediction)),
                CONTRACTIONS,
            ),
            answers
                .iter()
                .map(|a| official_normalize(&clean(a.as_ref()), CONTRACTIONS))
                .collect(),
        ),
        Processor::EvalAi => (
            evalai_normalize(prediction),
            answers
                .iter()
                .map(|a| evalai_normalize(a.as_ref()))
                .collect(),
        ),
        Processor::VizWiz => (
            official_normalize(&clean(prediction), VIZWIZ_CONTRACTIONS),
            answers.iter().map(|a| a.as_ref().to_string()).collect(),
        ),
    };
    Ok(leave_one_out(&prediction, &answers))
}

/// Scores a list of questions: mean accuracy, per question and per answer type.
pub fn score(items: &[VqaItem], processor: Processor) -> Result<VqaScores, MetricsError> {
    let mut per_question = Vec::with_capacity(items.len());
    let mut by_type: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for (index, item) in items.iter().enumerate() {
        let acc = accuracy(&item.prediction, &item.answers, processor)
            .map_err(|_| MetricsError::NoAnswers { index })?;
        per_question.push(acc);
        if let Some(t) = &item.answer_type {
            by_type.entry(t.clone()).or_default().push(acc);
        }
    }
    let accuracy = mean(&per_question).ok_or(MetricsError::Empty { metric: "vqa" })?;
    let per_answer_type = by_type
        .into_iter()
        .filter_map(|(t, v)| mean(&v).map(|m| (t, m)))
        .collect();
    Ok(VqaScores {
        accuracy,
        per_question,
        per_answer_type,
    })
}

/// OpenFlamingo's `postprocess_vqa_generation`: the text before the first `Question`, `Answer`
/// or `Short`, then before the first `", "`.
pub fn postprocess_vqa(text: &str) -> String {
    let cut = ["Question", "Answer", "Short"]
        .iter()
        .filter_map(|m| text.find(m))
        .min()
        .unwrap_or(text.len());
    let head = &text[..cut];
    head.split(", ").next().unwrap_or("").to_string()
}
