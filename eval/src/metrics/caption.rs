//! Captioning scores as pycocoevalcap 1.2's `COCOEvalCap.evaluate` reports them: PTB
//! tokenisation, then `Bleu_1`..`Bleu_4`, `ROUGE_L` and `CIDEr` (METEOR and SPICE need their
//! own Java programs and are not reproduced).
//!
//! Like pycocoevalcap, the references of all images are tokenised as one stream and the
//! candidates as another, image by image in key order (see [`super::ptb`] for why the order
//! can matter).

use std::collections::BTreeMap;

use serde::ser::{Serialize, SerializeMap, Serializer};

use super::{MetricsError, bleu, cider, ptb, rouge};

/// The scores of one image.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageCaptionScores {
    /// BLEU-1..4 of this image alone (pycocoevalcap's per-image BLEU).
    pub bleu: [f64; 4],
    /// ROUGE-L.
    pub rouge_l: f64,
    /// CIDEr-D.
    pub cider: f64,
}

/// Corpus scores and per-image scores. Serialises with pycocoevalcap's names: `Bleu_1`..
/// `Bleu_4`, `ROUGE_L`, `CIDEr` (and `per_image`, a map from image id to the same names).
#[derive(Debug, Clone, PartialEq)]
pub struct CaptionScores<K> {
    /// Corpus BLEU-1..4.
    pub bleu: [f64; 4],
    /// Mean ROUGE-L.
    pub rouge_l: f64,
    /// Mean CIDEr-D (pycocoevalcap's scale, e.g. `0.93`).
    pub cider: f64,
    /// The scores of each image.
    pub per_image: BTreeMap<K, ImageCaptionScores>,
}

/// The token strings the scorers see, per image in key order.
#[derive(Debug, Clone, PartialEq)]
pub struct Tokenized<K> {
    /// Image ids, in order.
    pub keys: Vec<K>,
    /// The tokenised candidate of each image.
    pub candidates: Vec<String>,
    /// The tokenised references of each image.
    pub references: Vec<Vec<String>>,
}

/// Checks that both maps cover the same images with at least one reference each, then
/// tokenises candidates and references like pycocoevalcap.
pub fn tokenize<K: Ord + Clone + std::fmt::Debug>(
    candidates: &BTreeMap<K, String>,
    references: &BTreeMap<K, Vec<String>>,
) -> Result<Tokenized<K>, MetricsError> {
    if let Some(k) = candidates.keys().find(|k| !references.contains_key(*k)) {
        return Err(MetricsError::KeyMismatch {
            detail: format!("{k:?} has no references"),
        });
    }
    if let Some(k) = references.keys().find(|k| !candidates.contains_key(*k)) {
        return Err(MetricsError::KeyMismatch {
            detail: format!("{k:?} has no candidate"),
        });
    }
    if candidates.is_empty() {
        return Err(MetricsError::Empty { metric: "caption" });
    }
    if let Some((k, _)) = references.iter().find(|(_, refs)| refs.is_empty()) {
        return Err(MetricsError::NoReferences {
            image: format!("{k:?}"),
        });
    }
    let keys: Vec<K> = candidates.keys().cloned().collect();
    let cand_lines: Vec<&str> = candidates.values().map(String::as_str).collect();
    let candidates = ptb::coco_tokenize(&cand_lines);
    let ref_lines: Vec<&str> = references.values().flatten().map(String::as_str).collect();
    let mut flat = ptb::coco_tokenize(&ref_lines).into_iter();
    let references = references
        .values()
        .map(|refs| flat.by_ref().take(refs.len()).collect())
        .collect();
    Ok(Tokenized {
        keys,
        candidates,
        references,
    })
}

/// Scores already tokenised captions.
pub fn score_tokenized<K: Ord + Clone>(
    tokenized: &Tokenized<K>,
) -> Result<CaptionScores<K>, MetricsError> {
    let b = bleu::score(&tokenized.candidates, &tokenized.references)?;
    let r = rouge::score(&tokenized.candidates, &tokenized.references)?;
    let c = cider::score(&tokenized.candidates, &tokenized.references)?;
    let per_image = tokenized
        .keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let scores = ImageCaptionScores {
                bleu: b.per_image[i],
                rouge_l: r.per_image[i],
                cider: c.per_image[i],
            };
            (k.clone(), scores)
        })
        .collect();
    Ok(CaptionScores {
        bleu: b.corpus,
        rouge_l: r.mean,
        cider: c.mean,
        per_image,
    })
}

/// Scores one candidate caption per image against that image's reference captions (raw text,
/// tokenised here), like pycocoevalcap's `COCOEvalCap`.
pub fn score<K: Ord + Clone + std::fmt::Debug>(
    candidates: &BTreeMap<K, String>,
    references: &BTreeMap<K, Vec<String>>,
) -> Result<CaptionScores<K>, MetricsError> {
    score_tokenized(&tokenize(candidates, references)?)
}

/// The metric names and values, as in pycocoevalcap's `COCOEvalCap.eval`.
fn named(bleu: &[f64; 4], rouge_l: f64, cider: f64) -> [(&'static str, f64); 6] {
    [
        ("Bleu_1", bleu[0]),
        ("Bleu_2", bleu[1]),
        ("Bleu_3", bleu[2]),
        ("Bleu_4", bleu[3]),
        ("ROUGE_L", rouge_l),
        ("CIDEr", cider),
    ]
}

impl<K> CaptionScores<K> {
    /// The corpus metrics as a JSON object keyed by pycocoevalcap's names.
    pub fn to_json(&self) -> serde_json::Value {
        named(&self.bleu, self.rouge_l, self.cider)
            .iter()
            .map(|&(name, v)| (name.to_string(), serde_json::Value::from(v)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

impl Serialize for ImageCaptionScores {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(6))?;
        for (name, v) in named(&self.bleu, self.rouge_l, self.cider) {
            map.serialize_entry(name, &v)?;
        }
        map.end()
    }
}

impl<K: Serialize> Serialize for CaptionScores<K> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(7))?;
        for (name, v) in named(&self.bleu, self.rouge_l, self.cider) {
            map.serialize_entry(name, &v)?;
        }
        map.serialize_entry("per_image", &self.per_image)?;
        map.end()
    }
}
