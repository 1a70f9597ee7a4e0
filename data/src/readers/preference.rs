//! Preference (DPO) pairs from JSON array or JSONL files.
//!
//! Two record layouts are recognised per record:
//!
//! * **VLFeedback** (docs/data.md, "Dataset formats", "Preference pairs"): `{id, prompt, models,
//!   completions, img_path}` where `completions` is a list of
//!   `{model, response, annotations: {aspect: {Rating, Rationale}}}`,
//!   or the dict of lists (`{model: [...], response: [...], annotations: [...]}`) that HF
//!   `datasets` produces for a `sequence` of structs. Ratings are strings such as `"4"` or `"N/A"`.
//! * **generic pairs**: `{id?, prompt (or question), image | images?, chosen, rejected}`, the layout
//!   our synthetic corpus writes.
//!
//! VLFeedback pair formation follows the official recipe (`run_dpo.py`): a completion's score is
//! the mean of its parsed ratings over the aspects present (an aspect that is null counts as
//! absent); every unordered pair of completions is considered; a pair where either completion has
//! an unparseable (or non-finite) rating, or no rating at all, is skipped; ties are skipped; the
//! higher score is `chosen`. [`PairMode::Binarized`] instead keeps one pair per record: the best
//! score (first on ties) against a completion picked at random, with a seeded generator, among
//! those scoring strictly lower.
//!
//! The prompt becomes one user turn. When there is an image and the prompt has no `<image>`
//! marker, `<image>\n` is put in front; marker and image counts must then agree
//! ([`BadKind::ImageCountMismatch`]).

use std::collections::VecDeque;
use std::path::Path;

use serde_json::{Map, Value};

use super::json_stream::{JsonStream, StreamOptions};
use super::llava::{
    IMAGE_MARKER, ImageRoots, count_markers, image_list, record_key, resolve_images,
};
use crate::error::{BadKind, DataError, SampleError};
use crate::sample::{Origin, RawSample, Role, Turn};

/// How VLFeedback completions become pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairMode {
    /// Every unordered pair with distinct, parseable scores (the official VLFeedback recipe).
    AllPairs,
    /// One pair per record: the best completion against a seeded random lower-scored one.
    Binarized {
        /// Seed of the generator (combined with the record index, so sharding does not change it).
        seed: u64,
    },
}

/// Options of the preference reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreferenceOptions {
    /// Where images live.
    pub roots: ImageRoots,
    /// VLFeedback pair formation.
    pub mode: PairMode,
    /// Check at read time that every image file exists.
    pub check_images: bool,
}

impl Default for PreferenceOptions {
    fn default() -> Self {
        PreferenceOptions {
            roots: ImageRoots::default(),
            mode: PairMode::AllPairs,
            check_images: true,
        }
    }
}

/// One VLFeedback completion.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The model that wrote it.
    pub model: String,
    /// The response text.
    pub response: String,
    /// Per aspect, the parsed rating (`None` when the rating does not parse as a finite number).
    pub ratings: Vec<(String, Option<f64>)>,
}

impl Completion {
    /// The mean rating over the aspects present; `None` if any rating is unparseable or there is
    /// no rating.
    pub fn score(&self) -> Option<f64> {
        if self.ratings.is_empty() {
            return None;
        }
        let mut sum = 0.0;
        for (_, rating) in &self.ratings {
            sum += (*rating)?;
        }
        Some(sum / self.ratings.len() as f64)
    }
}

/// One VLFeedback record.
#[derive(Debug, Clone, PartialEq)]
pub struct VlFeedbackRow {
    /// The record id.
    pub id: String,
    /// The question.
    pub prompt: String,
    /// The image path, relative to an image root.
    pub img_path: Option<String>,
    /// The rated completions.
    pub completions: Vec<Completion>,
}

/// Counters of pair formation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PairStats {
    /// VLFeedback records seen (well-formed ones).
    pub rows: u64,
    /// Pairs produced (VLFeedback and generic).
    pub pairs: u64,
    /// Candidate pairs skipped because a rating did not parse (all-pairs mode).
    pub skipped_unparseable: u64,
    /// Candidate pairs skipped for equal scores (all-pairs mode), or records whose completions all
    /// tie with the best (binarized mode).
    pub skipped_ties: u64,
}

/// Reads a VLFeedback record (list-of-structs or dict-of-lists `completions`).
pub fn parse_vlfeedback_row(record: &Value, index: u64) -> Result<VlFeedbackRow, String> {
    let object = record.as_object().ok_or("record is not a JSON object")?;
    let prompt = object
        .get("prompt")
        .and_then(Value::as_str)
        .ok_or("no string `prompt`")?
        .to_string();
    let img_path = match object.get("img_path") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => return Err(format!("`img_path` is not a string: {other}")),
    };
    let completions = match object.get("completions") {
        Some(Value::Array(items)) => items
            .iter()
            .map(parse_completion)
            .collect::<Result<Vec<_>, _>>()?,
        Some(Value::Object(columns)) => completions_from_columns(columns)?,
        _ => return Err("`completions` is neither a list nor a dict of lists".into()),
    };
    Ok(VlFeedbackRow {
        id: record_key(record, index),
        prompt,
        img_path,
        completions,
    })
}

/// Forms (chosen, rejected) index pairs from rated completions; `record_index` seeds the
/// binarized choice. Counters are added to `stats`.
pub fn form_pairs(
    completions: &[Completion],
    mode: PairMode,
    record_index: u64,
    stats: &mut PairStats,
) -> Vec<(usize, usize)> {
    let scores: Vec<Option<f64>> = completions.iter().map(Completion::score).collect();
    let mut pairs = Vec::new();
    match mode {
        PairMode::AllPairs => {
            for i in 0..scores.len() {
                for j in i + 1..scores.len() {
                    match (scores[i], scores[j]) {
                        (Some(a), Some(b)) if a > b => pairs.push((i, j)),
                        (Some(a), Some(b)) if a < b => pairs.push((j, i)),
                        (Some(_), Some(_)) => stats.skipped_ties += 1,
                        _ => stats.skipped_unparseable += 1,
                    }
                }
            }
        }
        PairMode::Binarized { seed } => {
            let mut best: Option<(usize, f64)> = None;
            for (i, score) in scores.iter().enumerate() {
                if let Some(s) = *score
                    && best.is_none_or(|(_, b)| s > b)
                {
                    best = Some((i, s));
                }
            }
            if let Some((best_index, best_score)) = best {
                let lower: Vec<usize> = (0..scores.len())
                    .filter(|&i| scores[i].is_some_and(|s| s < best_score))
                    .collect();
                if lower.is_empty() {
                    if scores.iter().flatten().count() > 1 {
                        stats.skipped_ties += 1;
                    }
                } else {
                    let draw = splitmix64(seed ^ splitmix64(record_index));
                    let pick = lower[(draw % lower.len() as u64) as usize];
                    pairs.push((best_index, pick));
                }
            }
        }
    }
    stats.pairs += pairs.len() as u64;
    pairs
}

/// A streaming reader of preference files; an iterator of
/// `(record index, Result<RawSample::Preference, SampleError>)` (a VLFeedback record gives zero or
/// more pairs, a generic record one).
pub struct PreferenceReader {
    stream: JsonStream<Value>,
    options: PreferenceOptions,
    pending: VecDeque<(u64, Result<RawSample, SampleError>)>,
    stats: PairStats,
}

impl PreferenceReader {
    /// Opens a JSON array or JSONL file (the layout is detected).
    pub fn open(
        path: &Path,
        options: PreferenceOptions,
        stream: StreamOptions,
    ) -> Result<Self, DataError> {
        Ok(PreferenceReader {
            stream: JsonStream::open(path, stream)?,
            options,
            pending: VecDeque::new(),
            stats: PairStats::default(),
        })
    }

    /// Pair-formation counters so far.
    pub fn stats(&self) -> PairStats {
        self.stats
    }

    /// The underlying record stream.
    pub fn stream(&self) -> &JsonStream<Value> {
        &self.stream
    }

    /// Turns one record into pending items.
    fn expand(&mut self, index: u64, record: Value) {
        let file = self.stream.file().to_string();
        let key = record_key(&record, index);
        let bad = |kind: BadKind, msg: String| SampleError::new(&file, &key, kind, msg);
        if record.get("completions").is_some() {
            let row = match parse_vlfeedback_row(&record, index) {
                Ok(row) => row,
                Err(m) => {
                    return self
                        .pending
                        .push_back((index, Err(bad(BadKind::MalformedRecord, m))));
                }
            };
            self.stats.rows += 1;
            let mut formed = PairStats::default();
            let pairs = form_pairs(&row.completions, self.options.mode, index, &mut formed);
            self.stats.skipped_unparseable += formed.skipped_unparseable;
            self.stats.skipped_ties += formed.skipped_ties;
            if pairs.is_empty() {
                return;
            }
            let paths: Vec<String> = row.img_path.iter().cloned().collect();
            let roots = &self.options.roots;
            let images = match resolve_images(&paths, roots, self.options.check_images) {
                Ok(images) => images,
                Err((kind, m)) => {
                    return self.pending.push_back((index, Err(bad(kind, m))));
                }
            };
            let prompt = match prompt_turn(&row.prompt, images.len()) {
                Ok(p) => p,
                Err(m) => {
                    let e = bad(BadKind::ImageCountMismatch, m);
                    return self.pending.push_back((index, Err(e)));
                }
            };
            self.stats.pairs += pairs.len() as u64;
            for (chosen, rejected) in pairs {
                let sample = RawSample::Preference {
                    origin: Origin {
                        file: file.clone(),
                        key: format!("{key}:{chosen}>{rejected}"),
                    },
                    images: images.clone(),
                    prompt: vec![prompt.clone()],
                    chosen: row.completions[chosen].response.clone(),
                    rejected: row.completions[rejected].response.clone(),
                };
                self.pending.push_back((index, Ok(sample)));
            }
        } else {
            let result = self.generic_pair(&record, &file, &key);
            if result.is_ok() {
                self.stats.pairs += 1;
            }
            self.pending.push_back((index, result));
        }
    }

    /// Reads a generic `{prompt, image(s), chosen, rejected}` record.
    fn generic_pair(
        &self,
        record: &Value,
        file: &str,
        key: &str,
    ) -> Result<RawSample, SampleError> {
        let bad = |kind: BadKind, msg: String| SampleError::new(file, key, kind, msg);
        let text = |name: &str| -> Result<String, SampleError> {
            record
                .get(name)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| bad(BadKind::MalformedRecord, format!("no string `{name}`")))
        };
        let prompt = match record.get("prompt") {
            Some(_) => text("prompt")?,
            None => text("question")?,
        };
        let chosen = text("chosen")?;
        let rejected = text("rejected")?;
        let image_value = record.get("image").or_else(|| record.get("images"));
        let paths = image_list(image_value).map_err(|m| bad(BadKind::MalformedRecord, m))?;
        let images = resolve_images(&paths, &self.options.roots, self.options.check_images)
            .map_err(|(kind, m)| bad(kind, m))?;
        let prompt =
            prompt_turn(&prompt, images.len()).map_err(|m| bad(BadKind::ImageCountMismatch, m))?;
        Ok(RawSample::Preference {
            origin: Origin {
                file: file.to_string(),
                key: key.to_string(),
            },
            images,
            prompt: vec![prompt],
            chosen,
            rejected,
        })
    }
}

impl Iterator for PreferenceReader {
    type Item = (u64, Result<RawSample, SampleError>);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some(item);
            }
            let (index, record) = self.stream.next()?;
            match record {
                Ok(value) => self.expand(index, value),
                Err(e) => return Some((index, Err(e))),
            }
        }
    }
}

/// The user turn of a prompt: `<image>\n` in front when there are images and no marker; the marker
/// count must equal the image count.
fn prompt_turn(prompt: &str, n_images: usize) -> Result<Turn, String> {
    let markers = count_markers(prompt);
    let text = if markers == 0 && n_images > 0 {
        format!("{}{prompt}", format!("{IMAGE_MARKER}\n").repeat(n_images))
    } else if markers != n_images {
        return Err(format!(
            "{markers} {IMAGE_MARKER} markers for {n_images} images"
        ));
    } else {
        prompt.to_string()
    };
    Ok(Turn {
        role: Role::User,
        text,
    })
}

/// Reads one `{model, response, annotations}` completion.
fn parse_completion(value: &Value) -> Result<Completion, String> {
    let model = value
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let response = value
        .get("response")
        .and_then(Value::as_str)
        .ok_or("completion has no string `response`")?
        .to_string();
    let ratings = parse_annotations(value.get("annotations"))?;
    Ok(Completion {
        model,
        response,
        ratings,
    })
}

/// Rebuilds completions from HF's dict-of-lists layout.
fn completions_from_columns(columns: &Map<String, Value>) -> Result<Vec<Completion>, String> {
    let column = |name: &str| -> Result<&Vec<Value>, String> {
        columns
            .get(name)
            .and_then(Value::as_array)
            .ok_or_else(|| format!("`completions.{name}` is not a list"))
    };
    let responses = column("response")?;
    let annotations = column("annotations")?;
    let models = column("model").ok();
    if annotations.len() != responses.len() || models.is_some_and(|m| m.len() != responses.len()) {
        return Err("`completions` columns have different lengths".into());
    }
    (0..responses.len())
        .map(|i| {
            let response = responses[i]
                .as_str()
                .ok_or_else(|| format!("`completions.response[{i}]` is not a string"))?;
            let model = models.and_then(|m| m[i].as_str()).unwrap_or_default();
            Ok(Completion {
                model: model.to_string(),
                response: response.to_string(),
                ratings: parse_annotations(Some(&annotations[i]))?,
            })
        })
        .collect()
}

/// Reads `{aspect: {Rating, Rationale}}`; null aspects are absent, a missing or unparseable
/// `Rating` of a present aspect gives `None`.
fn parse_annotations(value: Option<&Value>) -> Result<Vec<(String, Option<f64>)>, String> {
    let aspects = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(aspects)) => aspects,
        Some(other) => return Err(format!("`annotations` is not an object: {other}")),
    };
    let mut ratings = Vec::new();
    for (aspect, body) in aspects {
        if body.is_null() {
            continue;
        }
        let rating = match body.get("Rating") {
            Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
            Some(Value::Number(n)) => n.as_f64(),
            _ => None,
        };
        ratings.push((aspect.clone(), rating.filter(|r| r.is_finite())));
    }
    Ok(ratings)
}

/// One step of the SplitMix64 generator: a well-mixed 64-bit hash of `x`.
fn splitmix64(x: u64) -> u64 {
    crate::rng::SplitMix64::new(x).next_u64()
}
