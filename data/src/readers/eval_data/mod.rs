//! Typed loaders for evaluation sets (docs/data.md, "Dataset formats"): COCO captions, VQA
//! questions with their ground-truth answers (VQAv2, the OpenFlamingo VQA-format
//! TextVQA/OK-VQA/VizWiz files, official TextVQA), POPE, MMBench-style multiple-choice TSVs and
//! ScienceQA-style JSON.
//!
//! These files are small enough to load whole. Only a file that cannot be read, or lacks the
//! structure that identifies its format, is a fatal [`DataError`]. Any single bad entry (a question
//! without an annotation, an undecodable base64 image cell, a row with a missing column) is left
//! out of the items and reported beside them in [`Loaded::problems`], so that evaluation can
//! exclude and count it. So is an entry whose image path resolves outside the image directory it
//! is given ([`BadKind::OutsideRoot`]: a `file_name`, id or `image` with `..`, an absolute path, a
//! symbolic link leaving the directory; see [`crate::paths`]).
//!
//! One file per format, each with its loader and the item type it yields:
//!
//! * `coco`: COCO caption annotations ([`load_coco_captions`], [`CaptionRefs`]);
//! * `vqa`: VQA questions joined with their annotations ([`load_vqa`], [`VqaQuestion`]);
//! * `textvqa`: official TextVQA files ([`load_textvqa`]);
//! * `pope`: POPE question files ([`load_pope`], [`PopeItem`]);
//! * `mmbench`: MMBench-style multiple-choice TSVs ([`load_mc_tsv`]);
//! * `scienceqa`: ScienceQA-style multiple-choice JSON ([`load_scienceqa`]).
//!
//! This module holds what they share: [`Loaded`], [`Id`], [`ImageLocator`], [`McItem`] and the
//! helpers that turn a bad entry into a reported problem. Every public item is re-exported here,
//! so its path is `blip3_data::readers::eval_data::Item` whichever file defines it.

mod coco;
mod mmbench;
mod pope;
mod scienceqa;
mod textvqa;
mod vqa;

pub use coco::{CaptionRefs, load_coco_captions};
pub use mmbench::{is_missing_cell, load_mc_tsv};
pub use pope::{PopeItem, load_pope};
pub use scienceqa::load_scienceqa;
pub use textvqa::load_textvqa;
pub use vqa::{VqaQuestion, load_vqa};

use std::fmt;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use serde::de::{DeserializeOwned, Deserializer};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{BadKind, DataError, SampleError};
use crate::paths::{OutsideRoot, resolve_inside};
use crate::sample::ImageSource;

/// Items loaded from an evaluation file, and the entries that were left out.
#[derive(Debug, Clone)]
pub struct Loaded<T> {
    /// The well-formed items, in file order.
    pub items: Vec<T>,
    /// One error per entry left out.
    pub problems: Vec<SampleError>,
}

impl<T> Default for Loaded<T> {
    fn default() -> Self {
        Loaded {
            items: Vec::new(),
            problems: Vec::new(),
        }
    }
}

/// An id that is an integer in some files and a string in others (VQAv2 vs TextVQA image ids,
/// POPE question ids). It serializes back to the same JSON type.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Id {
    /// An integer id.
    Int(i64),
    /// A string id.
    Str(String),
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Id::Int(n) => write!(f, "{n}"),
            Id::Str(s) => f.write_str(s),
        }
    }
}

impl Id {
    /// Reads an id from a JSON integer or string.
    pub fn from_value(value: &Value) -> Option<Id> {
        match value {
            Value::Number(n) => n.as_i64().map(Id::Int),
            Value::String(s) => Some(Id::Str(s.clone())),
            _ => None,
        }
    }
}

/// Maps an image id to a file: a directory and a file-name pattern in which `{id}` is replaced by
/// the id and `{id:0N}` (or `{id:0Nd}`) by the id left-padded with zeros to `N` characters, as in
/// `COCO_val2014_{id:012}.jpg` or TextVQA's `{id}.jpg`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageLocator {
    /// The image directory.
    pub dir: PathBuf,
    pattern: Vec<PatternPart>,
}

/// A piece of an [`ImageLocator`] pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PatternPart {
    Literal(String),
    Id { width: usize },
}

impl ImageLocator {
    /// A locator for `dir` with a file-name pattern; an unknown `{...}` field is a config error.
    pub fn new(dir: impl Into<PathBuf>, pattern: &str) -> Result<Self, DataError> {
        let mut parts = Vec::new();
        let mut rest = pattern;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(PatternPart::Literal(rest[..open].to_string()));
            }
            let close = rest[open..].find('}').map(|c| open + c).ok_or_else(|| {
                DataError::Config(format!("image pattern {pattern:?}: unclosed '{{'"))
            })?;
            let field = &rest[open + 1..close];
            let width = match field.strip_prefix("id") {
                Some("") => 0,
                Some(spec) => parse_width(spec).ok_or_else(|| {
                    DataError::Config(format!("image pattern {pattern:?}: bad field {{{field}}}"))
                })?,
                None => {
                    return Err(DataError::Config(format!(
                        "image pattern {pattern:?}: unknown field {{{field}}}, expected {{id}}"
                    )));
                }
            };
            parts.push(PatternPart::Id { width });
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(PatternPart::Literal(rest.to_string()));
        }
        Ok(ImageLocator {
            dir: dir.into(),
            pattern: parts,
        })
    }

    /// The COCO 2014 naming: `COCO_{subtype}_{id:012}.jpg` in `dir` (subtype e.g. `val2014`).
    pub fn coco(dir: impl Into<PathBuf>, subtype: &str) -> Self {
        ImageLocator {
            dir: dir.into(),
            pattern: vec![
                PatternPart::Literal(format!("COCO_{subtype}_")),
                PatternPart::Id { width: 12 },
                PatternPart::Literal(".jpg".into()),
            ],
        }
    }

    /// The file name of an image id.
    pub fn file_name(&self, id: &Id) -> String {
        let id = id.to_string();
        self.pattern
            .iter()
            .map(|part| match part {
                PatternPart::Literal(s) => s.clone(),
                PatternPart::Id { width } => format!("{id:0>width$}"),
            })
            .collect()
    }

    /// The path of an image id.
    pub fn locate(&self, id: &Id) -> PathBuf {
        self.dir.join(self.file_name(id))
    }

    /// The path of an image id, refused when it resolves outside [`ImageLocator::dir`] (an id
    /// such as `../../etc/passwd`; see [`crate::paths`]).
    pub fn locate_inside(&self, id: &Id) -> Result<PathBuf, OutsideRoot> {
        self.file_inside(&self.file_name(id))
    }

    /// The path of a file name read from an annotation file (COCO's `file_name`), refused when it
    /// resolves outside [`ImageLocator::dir`].
    pub fn file_inside(&self, name: &str) -> Result<PathBuf, OutsideRoot> {
        resolve_inside(&self.dir, Path::new(name), false)
    }
}

/// Parses `:0N` or `:0Nd` (zero fill, width `N` up to 64).
fn parse_width(spec: &str) -> Option<usize> {
    let digits = spec.strip_prefix(":0")?;
    let digits = digits.strip_suffix('d').unwrap_or(digits);
    digits.parse().ok().filter(|&width| width <= 64)
}

// ---------------------------------------------------------------------------------------------
// Multiple-choice items (MMBench-style TSV, ScienceQA-style JSON)
// ---------------------------------------------------------------------------------------------

/// One multiple-choice question.
#[derive(Debug, Clone, PartialEq)]
pub struct McItem {
    /// The question id (`index` in MMBench TSVs).
    pub id: String,
    /// The question text.
    pub question: String,
    /// The hint or context, when present.
    pub hint: Option<String>,
    /// The options in order, lettered from `A`; the list ends at the first missing option.
    pub options: Vec<(char, String)>,
    /// The correct letter; `None` in test files without answers.
    pub answer: Option<char>,
    /// The image, when the question has one.
    pub image: Option<ImageSource>,
    /// The category (`category`, or ScienceQA's `subject` when there is no category).
    pub category: Option<String>,
    /// MMBench's `l2-category`.
    pub l2_category: Option<String>,
    /// The split column, when present.
    pub split: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------------

/// An entry of a list that may fail to convert without failing the whole file.
struct Entry<T>(Result<T, String>);

impl<'de, T: DeserializeOwned> Deserialize<'de> for Entry<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        let snippet = preview(&value);
        Ok(Entry(
            serde_json::from_value(value).map_err(|e| format!("{e} in {snippet}")),
        ))
    }
}

/// A short rendering of a JSON value for error messages.
fn preview(value: &Value) -> String {
    const MAX: usize = 120;
    let text = value.to_string();
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}

/// Reads a whole JSON file into `T`.
fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, DataError> {
    let handle = File::open(path).map_err(|e| DataError::io(path, e))?;
    serde_json::from_reader(BufReader::new(handle))
        .map_err(|e| DataError::format(path.display(), format!("not the expected JSON: {e}")))
}

/// An image outside its directory: the entry is left out.
fn outside(file: &str, key: impl fmt::Display, error: &OutsideRoot) -> SampleError {
    SampleError::new(file, key, BadKind::OutsideRoot, error.to_string())
}

/// A malformed-entry problem.
fn malformed(file: &str, key: impl fmt::Display, msg: &str) -> SampleError {
    SampleError::new(file, key, BadKind::MalformedRecord, msg)
}
