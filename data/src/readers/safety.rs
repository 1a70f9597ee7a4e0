//! VLGuard safety data (`train.json` / `test.json`; docs/data.md, "Dataset formats", "Safety").
//!
//! A record is `{id, image, safe, harmful_category?, harmful_subcategory?, instr-resp: [...]}`.
//! Each `instr-resp` entry holds one of `instruction` / `safe_instruction` / `unsafe_instruction`
//! and a `response`, and becomes one conversation: a user turn `<image>\n{instruction}` and an
//! assistant turn `{response}`. Unsafe images carry one entry, safe images two (a safe and an
//! unsafe instruction).
//!
//! Each conversation is tagged ([`SafetySample`]) with whether the image is safe and whether the
//! *prompt* is safe: a prompt is unsafe when the image is unsafe or the entry is an
//! `unsafe_instruction`. Evaluation (attack success rate) needs that split; training only uses
//! [`SafetySample::sample`]. A record with a bad field is reported whole, as one
//! [`SampleError`].

use std::collections::VecDeque;
use std::path::Path;

use serde_json::Value;

use super::json_stream::{JsonStream, StreamOptions};
use super::llava::{IMAGE_MARKER, ImageRoots, count_markers, record_key, resolve_images};
use crate::error::{BadKind, DataError, SampleError};
use crate::sample::{Origin, RawSample, Role, Turn};

/// One VLGuard conversation with its safety tags.
#[derive(Debug, Clone, PartialEq)]
pub struct SafetySample {
    /// The conversation (`RawSample::Conversation`, one image).
    pub sample: RawSample,
    /// Whether the image is safe (`safe` field).
    pub image_safe: bool,
    /// Whether the prompt is safe: a safe image with a `safe_instruction` (or `instruction`).
    pub prompt_safe: bool,
    /// `harmful_category` of unsafe images (`privacy`, `risky behavior`, ...).
    pub category: Option<String>,
    /// `harmful_subcategory` of unsafe images.
    pub subcategory: Option<String>,
}

/// Options of the VLGuard reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafetyOptions {
    /// Where images live (the unzipped `train`/`test` folder).
    pub roots: ImageRoots,
    /// Check at read time that every image file exists.
    pub check_images: bool,
}

impl Default for SafetyOptions {
    fn default() -> Self {
        SafetyOptions {
            roots: ImageRoots::default(),
            check_images: true,
        }
    }
}

/// Converts one VLGuard record into its conversations (one per `instr-resp` entry).
pub fn parse_vlguard_record(
    record: &Value,
    file: &str,
    index: u64,
    options: &SafetyOptions,
) -> Result<Vec<SafetySample>, SampleError> {
    let key = record_key(record, index);
    let bad = |kind: BadKind, msg: String| SampleError::new(file, &key, kind, msg);
    let malformed = |msg: &str| bad(BadKind::MalformedRecord, msg.to_string());
    let image = record
        .get("image")
        .and_then(Value::as_str)
        .ok_or_else(|| malformed("no string `image`"))?;
    let image_safe = record
        .get("safe")
        .and_then(Value::as_bool)
        .ok_or_else(|| malformed("no boolean `safe`"))?;
    let optional_text = |name: &str| record.get(name).and_then(Value::as_str).map(str::to_string);
    let category = optional_text("harmful_category");
    let subcategory = optional_text("harmful_subcategory");
    let entries = record
        .get("instr-resp")
        .and_then(Value::as_array)
        .ok_or_else(|| malformed("no list `instr-resp`"))?;
    if entries.is_empty() {
        return Err(malformed("`instr-resp` is empty"));
    }
    let images = resolve_images(&[image.to_string()], &options.roots, options.check_images)
        .map_err(|(kind, m)| bad(kind, m))?;

    let mut samples = Vec::with_capacity(entries.len());
    for (k, entry) in entries.iter().enumerate() {
        let (instruction, unsafe_instruction) = if let Some(s) = entry.get("instruction") {
            (s, false)
        } else if let Some(s) = entry.get("safe_instruction") {
            (s, false)
        } else if let Some(s) = entry.get("unsafe_instruction") {
            (s, true)
        } else {
            return Err(malformed(&format!("`instr-resp[{k}]` has no instruction")));
        };
        let instruction = instruction
            .as_str()
            .ok_or_else(|| malformed(&format!("`instr-resp[{k}]` instruction is not a string")))?;
        let response = entry
            .get("response")
            .and_then(Value::as_str)
            .ok_or_else(|| malformed(&format!("`instr-resp[{k}]` has no string `response`")))?;
        let prompt = match count_markers(instruction) {
            0 => format!("{IMAGE_MARKER}\n{instruction}"),
            1 => instruction.to_string(),
            n => {
                return Err(bad(
                    BadKind::ImageCountMismatch,
                    format!("`instr-resp[{k}]` has {n} {IMAGE_MARKER} markers for 1 image"),
                ));
            }
        };
        let sample = RawSample::Conversation {
            origin: Origin {
                file: file.to_string(),
                key: format!("{key}#{k}"),
            },
            images: images.clone(),
            turns: vec![
                Turn {
                    role: Role::User,
                    text: prompt,
                },
                Turn {
                    role: Role::Assistant,
                    text: response.to_string(),
                },
            ],
        };
        samples.push(SafetySample {
            sample,
            image_safe,
            prompt_safe: image_safe && !unsafe_instruction,
            category: category.clone(),
            subcategory: subcategory.clone(),
        });
    }
    Ok(samples)
}

/// A streaming reader of VLGuard files; an iterator of
/// `(record index, Result<SafetySample, SampleError>)`, one item per conversation.
pub struct VlGuardReader {
    stream: JsonStream<Value>,
    options: SafetyOptions,
    pending: VecDeque<(u64, Result<SafetySample, SampleError>)>,
}

impl VlGuardReader {
    /// Opens `train.json`, `test.json` or a JSONL copy.
    pub fn open(
        path: &Path,
        options: SafetyOptions,
        stream: StreamOptions,
    ) -> Result<Self, DataError> {
        Ok(VlGuardReader {
            stream: JsonStream::open(path, stream)?,
            options,
            pending: VecDeque::new(),
        })
    }

    /// The underlying record stream.
    pub fn stream(&self) -> &JsonStream<Value> {
        &self.stream
    }
}

impl Iterator for VlGuardReader {
    type Item = (u64, Result<SafetySample, SampleError>);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some(item);
            }
            let (index, record) = self.stream.next()?;
            let file = self.stream.file();
            match record.and_then(|v| parse_vlguard_record(&v, file, index, &self.options)) {
                Ok(samples) => self
                    .pending
                    .extend(samples.into_iter().map(|s| (index, Ok(s)))),
                Err(e) => return Some((index, Err(e))),
            }
        }
    }
}
