//! CIDEr-D exactly as pycocoevalcap 1.2 `cider/cider_scorer.py` computes it (the `Cider()`
//! scorer whose output is reported as `CIDEr`).
//!
//! * n-grams of length 1..=4 of each tokenised sentence (Python `str.split()` words).
//! * Document frequency `df(g)`: the number of images whose references (any of them) contain
//!   the n-gram `g`. Only the references of the evaluated set count.
//! * A sentence's vector for each n: `tf(g) * (ln(N) - ln(max(1, df(g))))` with `N` the
//!   number of images; its norm is the Euclidean norm of that vector.
//! * Similarity of candidate and one reference for each n: the sum over the candidate's
//!   n-grams of `min(cand(g), ref(g)) * ref(g)` (clipping), divided by both norms when both are
//!   non-zero, times the Gaussian length penalty `exp(-δ² / (2σ²))`, σ = 6. δ is the
//!   difference of the two sentences' **bigram** counts: pycocoevalcap accumulates the length
//!   inside the n-gram loop under `if n == 1`, where `n` is the zero-based n-gram index.
//! * Image score: the mean over n = 1..4 of the similarities summed over references, divided
//!   by the number of references, times 10. The corpus score is the mean of the image scores.

use std::collections::HashMap;

use super::{MetricsError, mean, py_split};

/// pycocoevalcap's σ of the length penalty.
const SIGMA: f64 = 6.0;

/// Mean and per-image CIDEr-D.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CiderScores {
    /// Mean CIDEr-D over images (`CIDEr`).
    #[serde(rename = "CIDEr")]
    pub mean: f64,
    /// CIDEr-D of each image, in input order.
    pub per_image: Vec<f64>,
}

type Counts<'a> = HashMap<Vec<&'a str>, usize>;

fn ngram_counts(sentence: &str) -> Counts<'_> {
    let words = py_split(sentence);
    let mut counts = HashMap::new();
    for n in 1..=4 {
        for gram in words.windows(n) {
            *counts.entry(gram.to_vec()).or_insert(0) += 1;
        }
    }
    counts
}

/// A sentence as tf-idf vectors per n-gram order, their norms and its bigram count.
struct Vector<'a> {
    weights: [HashMap<Vec<&'a str>, f64>; 4],
    norms: [f64; 4],
    length: f64,
}

fn to_vector<'a>(counts: &Counts<'a>, df: &HashMap<Vec<&'a str>, f64>, log_n: f64) -> Vector<'a> {
    let mut weights: [HashMap<Vec<&'a str>, f64>; 4] = Default::default();
    let mut norms = [0.0; 4];
    let mut length = 0.0;
    for (gram, &tf) in counts {
        let n = gram.len() - 1;
        let doc_freq = df.get(gram).copied().unwrap_or(0.0).max(1.0).ln();
        let w = tf as f64 * (log_n - doc_freq);
        norms[n] += w * w;
        weights[n].insert(gram.clone(), w);
        if n == 1 {
            length += tf as f64;
        }
    }
    Vector {
        weights,
        norms: norms.map(f64::sqrt),
        length,
    }
}

fn similarity(cand: &Vector<'_>, reference: &Vector<'_>) -> [f64; 4] {
    let delta = cand.length - reference.length;
    let penalty = (-(delta * delta) / (2.0 * SIGMA * SIGMA)).exp();
    let mut val = [0.0; 4];
    for (n, v) in val.iter_mut().enumerate() {
        for (gram, &w) in &cand.weights[n] {
            let r = reference.weights[n].get(gram).copied().unwrap_or(0.0);
            *v += w.min(r) * r;
        }
        if cand.norms[n] != 0.0 && reference.norms[n] != 0.0 {
            *v /= cand.norms[n] * reference.norms[n];
        }
        *v *= penalty;
    }
    val
}

/// Scores tokenised `candidates` (one per image) against tokenised `references` (a non-empty
/// list per image, same order).
pub fn score(
    candidates: &[String],
    references: &[Vec<String>],
) -> Result<CiderScores, MetricsError> {
    if candidates.len() != references.len() {
        return Err(MetricsError::LengthMismatch {
            metric: "cider",
            left: candidates.len(),
            right: references.len(),
        });
    }
    let ref_counts: Vec<Vec<Counts<'_>>> = references
        .iter()
        .map(|refs| refs.iter().map(|r| ngram_counts(r)).collect())
        .collect();
    let mut df: HashMap<Vec<&str>, f64> = HashMap::new();
    for refs in &ref_counts {
        let mut seen: std::collections::HashSet<&Vec<&str>> = std::collections::HashSet::new();
        for counts in refs {
            seen.extend(counts.keys());
        }
        for gram in seen {
            *df.entry(gram.clone()).or_insert(0.0) += 1.0;
        }
    }
    let log_n = (candidates.len() as f64).ln();
    let mut per_image = Vec::with_capacity(candidates.len());
    for (candidate, refs) in candidates.iter().zip(&ref_counts) {
        let cand = to_vector(&ngram_counts(candidate), &df, log_n);
        let mut total = [0.0; 4];
        for r in refs {
            let sim = similarity(&cand, &to_vector(r, &df, log_n));
            for (t, s) in total.iter_mut().zip(sim) {
                *t += s;
            }
        }
        let image_mean = total.iter().sum::<f64>() / 4.0;
        per_image.push(if refs.is_empty() {
            0.0
        } else {
            image_mean / refs.len() as f64 * 10.0
        });
    }
    let mean = mean(&per_image).ok_or(MetricsError::Empty { metric: "cider" })?;
    Ok(CiderScores { mean, per_image })
}
