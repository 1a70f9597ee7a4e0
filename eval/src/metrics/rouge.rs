//! ROUGE-L exactly as pycocoevalcap 1.2 `rouge/rouge.py` computes it.
//!
//! * Sentences are split on single spaces (`str.split(" ")`), so an empty sentence is one empty
//!   token, as in the reference.
//! * For each reference, precision = LCS / candidate length and recall = LCS / reference
//!   length; the maxima over references are taken **separately** (they may come from different
//!   references) and combined as `(1 + β²) P R / (R + β² P)` with β = 1.2 (0 if either is 0).
//! * The corpus score is the mean of the per-image scores.

use super::{MetricsError, mean};

/// pycocoevalcap's β.
const BETA: f64 = 1.2;

/// Mean and per-image ROUGE-L.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RougeScores {
    /// Mean ROUGE-L over images (`ROUGE_L`).
    #[serde(rename = "ROUGE_L")]
    pub mean: f64,
    /// ROUGE-L of each image, in input order.
    pub per_image: Vec<f64>,
}

/// Length of the longest common subsequence of two token lists.
fn lcs(a: &[&str], b: &[&str]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    let mut cur = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                prev[j + 1].max(cur[j])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// ROUGE-L of one tokenised candidate against its tokenised references.
pub fn image_score(candidate: &str, references: &[String]) -> f64 {
    let cand: Vec<&str> = candidate.split(' ').collect();
    let mut prec_max: f64 = 0.0;
    let mut rec_max: f64 = 0.0;
    for reference in references {
        let toks: Vec<&str> = reference.split(' ').collect();
        let common = lcs(&toks, &cand) as f64;
        prec_max = prec_max.max(common / cand.len() as f64);
        rec_max = rec_max.max(common / toks.len() as f64);
    }
    if prec_max != 0.0 && rec_max != 0.0 {
        ((1.0 + BETA * BETA) * prec_max * rec_max) / (rec_max + BETA * BETA * prec_max)
    } else {
        0.0
    }
}

/// Scores tokenised `candidates` (one per image) against tokenised `references` (a non-empty
/// list per image, same order).
pub fn score(
    candidates: &[String],
    references: &[Vec<String>],
) -> Result<RougeScores, MetricsError> {
    if candidates.len() != references.len() {
        return Err(MetricsError::LengthMismatch {
            metric: "rouge",
            left: candidates.len(),
            right: references.len(),
        });
    }
    let per_image: Vec<f64> = candidates
        .iter()
        .zip(references)
        .map(|(c, r)| image_score(c, r))
        .collect();
    let mean = mean(&per_image).ok_or(MetricsError::Empty { metric: "rouge" })?;
    Ok(RougeScores { mean, per_image })
}
