//! Evaluation metrics that reproduce the reference tools' numbers.
//!
//! Every function here is pure: plain data in, a serde-serialisable result out. Field names in
//! the serialised results follow the reference tools (`Bleu_1`..`Bleu_4`, `ROUGE_L`, `CIDEr`,
//! `accuracy`, `precision`, `recall`, `f1`, `yes_ratio`, `asr`, `helpfulness`). All scores are
//! fractions in `0..=1` (CIDEr on pycocoevalcap's scale, e.g. `0.93`), never percentages.
//!
//! | module | matches |
//! | --- | --- |
//! | [`ptb`] | Stanford PTBTokenizer 3.4.1 `-preserveLines -lowerCase` + pycocoevalcap's punctuation filter |
//! | [`bleu`], [`rouge`], [`cider`], [`caption`] | pycocoevalcap 1.2 `Bleu(4)`, `Rouge()`, `Cider()` |
//! | [`vqa`] | VQA `vqaEval.py`, OpenFlamingo `vqa_metric.py`, EvalAI/TextVQA `EvalAIAnswerProcessor`, the VizWiz challenge script |
//! | [`pope`] | LLaVA `eval_pope.py` and lmms-eval `pope` |
//! | [`mc`] | VLMEvalKit `can_infer` option extraction, CircularEval, lmms-eval ScienceQA |
//! | [`okvqa`] | OpenFlamingo `postprocess_ok_vqa_generation` (NLTK 3.8.1 tokenizer, tagger and WordNet lemmatizer, `inflection` 0.5.1) |
//! | [`safety`] | VLGuard `check_success_attack` refusal detector, ASR and helpfulness |
//!
//! See `docs/metrics.md` for the full description and the known differences.

pub mod bleu;
pub mod caption;
pub mod cider;
pub mod mc;
pub mod okvqa;
pub mod pope;
pub mod ptb;
pub mod rouge;
pub mod safety;
pub mod vqa;

/// Errors from the metric functions: always about the shape of the input data.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MetricsError {
    /// A metric was asked to average over nothing.
    #[error("{metric}: no items to score")]
    Empty {
        /// Which metric complained.
        metric: &'static str,
    },
    /// Candidates and references do not cover the same images.
    #[error("caption: candidate and reference image ids differ ({detail})")]
    KeyMismatch {
        /// A short description of the first difference.
        detail: String,
    },
    /// An image has no reference captions.
    #[error("caption: image {image} has no reference captions")]
    NoReferences {
        /// The offending image id, formatted with `Debug`.
        image: String,
    },
    /// Parallel inputs have different lengths.
    #[error("{metric}: {left} items but {right} references")]
    LengthMismatch {
        /// Which metric complained.
        metric: &'static str,
        /// Length of the first input.
        left: usize,
        /// Length of the second input.
        right: usize,
    },
    /// A question has no ground-truth answers.
    #[error("vqa: item {index} has no ground-truth answers")]
    NoAnswers {
        /// Position of the item in the input.
        index: usize,
    },
    /// A label is outside the values the reference accepts.
    #[error("{metric}: item {index} has label {label:?}, expected one of {expected}")]
    BadLabel {
        /// Which metric complained.
        metric: &'static str,
        /// Position of the item in the input.
        index: usize,
        /// The label as given.
        label: String,
        /// The accepted values.
        expected: &'static str,
    },
    /// A multiple-choice question has no options or more than 26.
    #[error("mc: item {index} has {count} options (need 1..=26)")]
    BadOptionCount {
        /// Position of the item in the input.
        index: usize,
        /// The number of options given.
        count: usize,
    },
}

/// Python's `str.isspace()` for one character: the separators `str.split()` and `str.strip()`
/// use. It differs from [`char::is_whitespace`] by also counting U+001C..U+001F.
pub(crate) fn is_py_space(c: char) -> bool {
    matches!(
        c,
        '\t' | '\n'
            | '\u{0B}'
            | '\u{0C}'
            | '\r'
            | '\u{1C}'..='\u{1F}'
            | ' '
            | '\u{85}'
            | '\u{A0}'
            | '\u{1680}'
            | '\u{2000}'..='\u{200A}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202F}'
            | '\u{205F}'
            | '\u{3000}'
    )
}

/// Python's `s.split()` (no argument): runs of whitespace separate, empty pieces are dropped.
pub(crate) fn py_split(s: &str) -> Vec<&str> {
    s.split(is_py_space).filter(|w| !w.is_empty()).collect()
}

/// Python's `s.strip()` (no argument).
pub(crate) fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

/// Python's `s.rstrip()` (no argument).
pub(crate) fn py_rstrip(s: &str) -> &str {
    s.trim_end_matches(is_py_space)
}

/// Unicode general category `Nd` (decimal digits), Unicode 14 as in Python 3.11. This is what
/// Python's `\d` matches in a `str` pattern and, restricted to the BMP, Java's
/// `Character.isDigit`.
pub(crate) fn is_decimal_digit(c: char) -> bool {
    let u = c as u32;
    DECIMAL_DIGIT_RANGES
        .iter()
        .any(|&(lo, hi)| (lo..=hi).contains(&u))
}

/// The `Nd` ranges behind [`is_decimal_digit`].
const DECIMAL_DIGIT_RANGES: [(u32, u32); 62] = [
    (0x0030, 0x0039),
    (0x0660, 0x0669),
    (0x06F0, 0x06F9),
    (0x07C0, 0x07C9),
    (0x0966, 0x096F),
    (0x09E6, 0x09EF),
    (0x0A66, 0x0A6F),
    (0x0AE6, 0x0AEF),
    (0x0B66, 0x0B6F),
    (0x0BE6, 0x0BEF),
    (0x0C66, 0x0C6F),
    (0x0CE6, 0x0CEF),
    (0x0D66, 0x0D6F),
    (0x0DE6, 0x0DEF),
    (0x0E50, 0x0E59),
    (0x0ED0, 0x0ED9),
    (0x0F20, 0x0F29),
    (0x1040, 0x1049),
    (0x1090, 0x1099),
    (0x17E0, 0x17E9),
    (0x1810, 0x1819),
    (0x1946, 0x194F),
    (0x19D0, 0x19D9),
    (0x1A80, 0x1A89),
    (0x1A90, 0x1A99),
    (0x1B50, 0x1B59),
    (0x1BB0, 0x1BB9),
    (0x1C40, 0x1C49),
    (0x1C50, 0x1C59),
    (0xA620, 0xA629),
    (0xA8D0, 0xA8D9),
    (0xA900, 0xA909),
    (0xA9D0, 0xA9D9),
    (0xA9F0, 0xA9F9),
    (0xAA50, 0xAA59),
    (0xABF0, 0xABF9),
    (0xFF10, 0xFF19),
    (0x104A0, 0x104A9),
    (0x10D30, 0x10D39),
    (0x11066, 0x1106F),
    (0x110F0, 0x110F9),
    (0x11136, 0x1113F),
    (0x111D0, 0x111D9),
    (0x112F0, 0x112F9),
    (0x11450, 0x11459),
    (0x114D0, 0x114D9),
    (0x11650, 0x11659),
    (0x116C0, 0x116C9),
    (0x11730, 0x11739),
    (0x118E0, 0x118E9),
    (0x11950, 0x11959),
    (0x11C50, 0x11C59),
    (0x11D50, 0x11D59),
    (0x11DA0, 0x11DA9),
    (0x16A60, 0x16A69),
    (0x16AC0, 0x16AC9),
    (0x16B50, 0x16B59),
    (0x1D7CE, 0x1D7FF),
    (0x1E140, 0x1E149),
    (0x1E2F0, 0x1E2F9),
    (0x1E950, 0x1E959),
    (0x1FBF0, 0x1FBF9),
];

/// Arithmetic mean, `None` for an empty slice (summed left to right).
pub(crate) fn mean(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        None
    } else {
        Some(values.iter().sum::<f64>() / values.len() as f64)
    }
}
