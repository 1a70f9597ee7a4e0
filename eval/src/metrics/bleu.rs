//! BLEU-1..4 exactly as pycocoevalcap 1.2 `bleu/bleu_scorer.py` computes it.
//!
//! * Input sentences are already tokenised; words are found with Python's `str.split()`.
//! * Per image, each candidate n-gram count is clipped by its maximum count in any single
//!   reference; `guess[n]` is `max(0, len - n + 1)`.
//! * The reference length is the `closest` one: the reference length with the smallest
//!   `|ref_len - cand_len|`, the shorter one on a tie.
//! * Corpus BLEU-n is the geometric mean of the summed clipped counts over the summed guesses,
//!   each ratio smoothed as `(correct + 1e-15) / (guess + 1e-9)`, times the brevity penalty
//!   `exp(1 - ref/cand)` (computed from `(cand + 1e-15) / (ref + 1e-9)`) when the ratio is below 1.
//! * The per-image scores apply the same formula to a single image (pycocoevalcap's second
//!   return value).

use std::collections::HashMap;

use super::{MetricsError, py_split};

/// pycocoevalcap's `tiny`: added to the clipped counts so a zero count still gives a number.
const TINY: f64 = 1e-15;
/// pycocoevalcap's `small`: added to the denominators to avoid dividing by zero.
const SMALL: f64 = 1e-9;

/// Corpus-level and per-image BLEU-1..4.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BleuScores {
    /// Corpus BLEU-1..4 (`Bleu_1`..`Bleu_4`).
    pub corpus: [f64; 4],
    /// BLEU-1..4 of each image, in input order.
    pub per_image: Vec<[f64; 4]>,
}

/// The sufficient statistics of one candidate against its references.
struct Cooked {
    test_len: usize,
    ref_len: usize,
    guess: [usize; 4],
    correct: [usize; 4],
}

/// All n-grams of length 1..=4 of `words` with their counts.
fn ngram_counts<'a>(words: &[&'a str]) -> HashMap<Vec<&'a str>, usize> {
    let mut counts = HashMap::new();
    for n in 1..=4 {
        for gram in words.windows(n) {
            *counts.entry(gram.to_vec()).or_insert(0) += 1;
        }
    }
    counts
}

fn cook(candidate: &str, references: &[String]) -> Cooked {
    let mut ref_lens = Vec::with_capacity(references.len());
    let mut max_counts: HashMap<Vec<&str>, usize> = HashMap::new();
    for reference in references {
        let words = py_split(reference);
        ref_lens.push(words.len());
        for (gram, count) in ngram_counts(&words) {
            let slot = max_counts.entry(gram).or_insert(0);
            *slot = (*slot).max(count);
        }
    }
    let words = py_split(candidate);
    let test_len = words.len();
    // `min((abs(l - testlen), l) for l in reflen)[1]`: closest, shorter on ties.
    let ref_len = ref_lens
        .iter()
        .copied()
        .min_by_key(|&l| (l.abs_diff(test_len), l))
        .unwrap_or(0);
    let mut guess = [0; 4];
    for (k, g) in guess.iter_mut().enumerate() {
        *g = (test_len + 1).saturating_sub(k + 1);
    }
    let mut correct = [0; 4];
    for (gram, count) in ngram_counts(&words) {
        let clip = max_counts.get(&gram).copied().unwrap_or(0);
        correct[gram.len() - 1] += count.min(clip);
    }
    Cooked {
        test_len,
        ref_len,
        guess,
        correct,
    }
}

/// BLEU-1..4 from summed statistics.
fn bleu_from(test_len: f64, ref_len: f64, guess: [f64; 4], correct: [f64; 4]) -> [f64; 4] {
    let mut scores = [0.0; 4];
    let mut product = 1.0;
    for k in 0..4 {
        product *= (correct[k] + TINY) / (guess[k] + SMALL);
        scores[k] = product.powf(1.0 / (k as f64 + 1.0));
    }
    let ratio = (test_len + TINY) / (ref_len + SMALL);
    if ratio < 1.0 {
        let penalty = (1.0 - 1.0 / ratio).exp();
        for s in &mut scores {
            *s *= penalty;
        }
    }
    scores
}

/// Scores tokenised `candidates` (one per image) against tokenised `references` (a non-empty
/// list per image, same order).
pub fn score(
    candidates: &[String],
    references: &[Vec<String>],
) -> Result<BleuScores, MetricsError> {
    if candidates.len() != references.len() {
        return Err(MetricsError::LengthMismatch {
            metric: "bleu",
            left: candidates.len(),
            right: references.len(),
        });
    }
    if candidates.is_empty() {
        return Err(MetricsError::Empty { metric: "bleu" });
    }
    let mut test_total = 0.0;
    let mut ref_total = 0.0;
    let mut guess_total = [0.0; 4];
    let mut correct_total = [0.0; 4];
    let mut per_image = Vec::with_capacity(candidates.len());
    for (candidate, refs) in candidates.iter().zip(references) {
        let c = cook(candidate, refs);
        test_total += c.test_len as f64;
        ref_total += c.ref_len as f64;
        let guess = c.guess.map(|g| g as f64);
        let correct = c.correct.map(|g| g as f64);
        for k in 0..4 {
            guess_total[k] += guess[k];
            correct_total[k] += correct[k];
        }
        per_image.push(bleu_from(
            c.test_len as f64,
            c.ref_len as f64,
            guess,
            correct,
        ));
    }
    Ok(BleuScores {
        corpus: bleu_from(test_total, ref_total, guess_total, correct_total),
        per_image,
    })
}
