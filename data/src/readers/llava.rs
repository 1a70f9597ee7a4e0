//! LLaVA-style SFT conversations (JSON array or JSONL), streamed record by record.
//!
//! Accepted record shapes (docs/data.md, "Dataset formats", "SFT conversations"):
//!
//! * LLaVA-1.5 `mix665k`: `{id, image?: str, conversations: [{from: human|gpt|system, value}]}`;
//!   `id` may be a string or an integer, `image` is absent on text-only rows;
//! * M4-Instruct: the same with `image` a **list** of paths;
//! * Mantis: `images` (a list of paths or of `{bytes, path}` objects) and `conversation` with
//!   `{role: user|assistant|system, content}` turns.
//!
//! Image paths are relative and mapped to files through [`ImageRoots`]: an ordered list of
//! prefix or substring rules (like xGen-MM's `IMAGE_FOLDER_DICT`) and a default root. A path that
//! resolves outside the root of the rule that maps it ([`ImageRoots::locate`]) is refused as
//! [`BadKind::OutsideRoot`] unless [`ImageRoots::allow_outside`] is set.
//!
//! The xGen-MM SFT loader's rules (docs/reference.md §4.3) are applied to each record:
//!
//! 1. a text-only record whose text contains `<image>` is skipped ([`BadKind::Invalid`]);
//! 2. a record with more than [`LlavaOptions::max_images`] images (4) is skipped ([`BadKind::Invalid`]);
//! 3. a single-image record whose first user turn does not hold exactly one `<image>` has every
//!    marker removed from that turn, the turn trimmed, and `<image>\n` put in front;
//! 4. afterwards the number of markers in all turns must equal the number of images, otherwise
//!    [`BadKind::ImageCountMismatch`];
//! 5. each image file must exist ([`BadKind::MissingImage`]); this costs one `stat` per image and
//!    can be turned off with [`LlavaOptions::check_images`].
//!
//! As in LLaVA's original preprocessing, an assistant turn that comes first (after any system
//! turns) is dropped. A record without a user or without an assistant turn is [`BadKind::Invalid`].

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::json_stream::{JsonStream, StreamOptions};
use crate::error::{BadKind, DataError, SampleError};
use crate::paths::{OutsideRoot, check_inside, resolve_inside};
use crate::sample::{ImageSource, Origin, RawSample, Role, Turn};

/// The marker that places an image in conversation text.
pub const IMAGE_MARKER: &str = "<image>";

/// Default limit on the number of images of one SFT sample (the reference's OOM guard).
pub const DEFAULT_MAX_IMAGES: usize = 4;

/// How an [`ImageRoots`] rule matches a relative image path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKind {
    /// The path starts with the pattern; the pattern is replaced by the root directory.
    Prefix,
    /// The path contains the pattern; every occurrence is replaced by the replacement text
    /// (the semantics of xGen-MM's `IMAGE_FOLDER_DICT`, a Python `str.replace`).
    Substring,
}

/// One image-root rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootRule {
    /// How the pattern matches.
    pub kind: RuleKind,
    /// The prefix or substring looked for.
    pub pattern: String,
    /// The directory (prefix rules) or replacement text (substring rules).
    pub replacement: String,
}

/// Maps relative image paths found in annotation files to files on disk.
///
/// Rules are tried in order and the first that matches wins; a path no rule matches is joined to
/// the default root (or used as written when there is none, and when it is absolute).
///
/// [`ImageRoots::locate`] also keeps the result inside the root that applies (see
/// [`crate::paths`]): a prefix rule's directory; for a substring rule, the directory its
/// replacement names (the replacement itself when it ends with `/`, else its parent); otherwise the
/// default root, or the working directory when there is none.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImageRoots {
    /// Ordered rules.
    pub rules: Vec<RootRule>,
    /// Directory for paths no rule matches.
    pub default_root: Option<PathBuf>,
    /// Accept paths that resolve outside their root (a recipe's `allow_outside_root: true`).
    pub allow_outside: bool,
}

impl ImageRoots {
    /// Roots that join every relative path to `default_root`.
    pub fn new(default_root: impl Into<PathBuf>) -> Self {
        ImageRoots {
            rules: Vec::new(),
            default_root: Some(default_root.into()),
            allow_outside: false,
        }
    }

    /// The same roots, accepting (`true`) or refusing paths that resolve outside their root.
    pub fn allowing_outside(mut self, allow: bool) -> Self {
        self.allow_outside = allow;
        self
    }

    /// Roots that use paths as written (relative to the working directory).
    pub fn as_written() -> Self {
        ImageRoots::default()
    }

    /// Adds a rule: paths starting with `prefix` have it replaced by the directory `root`.
    pub fn with_prefix(mut self, prefix: impl Into<String>, root: impl Into<String>) -> Self {
        self.rules.push(RootRule {
            kind: RuleKind::Prefix,
            pattern: prefix.into(),
            replacement: root.into(),
        });
        self
    }

    /// Adds a rule: paths containing `pattern` have every occurrence replaced by `replacement`.
    pub fn with_substring(
        mut self,
        pattern: impl Into<String>,
        replacement: impl Into<String>,
    ) -> Self {
        self.rules.push(RootRule {
            kind: RuleKind::Substring,
            pattern: pattern.into(),
            replacement: replacement.into(),
        });
        self
    }

    /// The file a relative image path refers to, after the rules, without the containment check
    /// (see [`ImageRoots::locate`]).
    pub fn resolve(&self, relative: &str) -> PathBuf {
        for rule in &self.rules {
            match rule.kind {
                RuleKind::Prefix => {
                    if let Some(rest) = relative.strip_prefix(rule.pattern.as_str()) {
                        return Path::new(&rule.replacement).join(rest.trim_start_matches('/'));
                    }
                }
                RuleKind::Substring => {
                    if !rule.pattern.is_empty() && relative.contains(rule.pattern.as_str()) {
                        return PathBuf::from(relative.replace(&rule.pattern, &rule.replacement));
                    }
                }
            }
        }
        let path = Path::new(relative);
        match &self.default_root {
            Some(root) if path.is_relative() => root.join(path),
            _ => path.to_path_buf(),
        }
    }

    /// The file a relative image path refers to (as [`ImageRoots::resolve`] maps it), refused when
    /// it resolves outside the root that applies (see the type's documentation and
    /// [`crate::paths::resolve_inside`]) unless [`ImageRoots::allow_outside`] is set.
    pub fn locate(&self, relative: &str) -> Result<PathBuf, OutsideRoot> {
        let allow = self.allow_outside;
        for rule in &self.rules {
            match rule.kind {
                RuleKind::Prefix => {
                    if let Some(rest) = relative.strip_prefix(rule.pattern.as_str()) {
                        let rest = Path::new(rest.trim_start_matches('/'));
                        return resolve_inside(Path::new(&rule.replacement), rest, allow);
                    }
                }
                RuleKind::Substring => {
                    if !rule.pattern.is_empty() && relative.contains(rule.pattern.as_str()) {
                        let replaced =
                            PathBuf::from(relative.replace(&rule.pattern, &rule.replacement));
                        let root = substitution_root(&rule.replacement);
                        return check_inside(&root, &replaced, allow);
                    }
                }
            }
        }
        let root = self.default_root.as_deref().unwrap_or(Path::new(""));
        resolve_inside(root, Path::new(relative), allow)
    }
}

/// The directory a substring rule's replacement names: the replacement itself when it ends with
/// `/`, else its parent (empty: the working directory).
fn substitution_root(replacement: &str) -> PathBuf {
    if replacement.ends_with('/') {
        let trimmed = replacement.trim_end_matches('/');
        return PathBuf::from(if trimmed.is_empty() { "/" } else { trimmed });
    }
    Path::new(replacement)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Options of the LLaVA reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlavaOptions {
    /// Where images live.
    pub roots: ImageRoots,
    /// Records with more images are skipped.
    pub max_images: usize,
    /// Check at read time that every image file exists.
    pub check_images: bool,
}

impl Default for LlavaOptions {
    fn default() -> Self {
        LlavaOptions {
            roots: ImageRoots::default(),
            max_images: DEFAULT_MAX_IMAGES,
            check_images: true,
        }
    }
}

/// A streaming reader of LLaVA-style SFT files; an iterator of
/// `(element index, Result<RawSample::Conversation, SampleError>)`.
pub struct LlavaReader {
    stream: JsonStream<Value>,
    options: LlavaOptions,
}

impl LlavaReader {
    /// Opens a JSON array or JSONL file (the layout is detected).
    pub fn open(
        path: &Path,
        options: LlavaOptions,
        stream: StreamOptions,
    ) -> Result<Self, DataError> {
        Ok(LlavaReader {
            stream: JsonStream::open(path, stream)?,
            options,
        })
    }

    /// The underlying record stream (position, peak buffer size).
    pub fn stream(&self) -> &JsonStream<Value> {
        &self.stream
    }
}

impl Iterator for LlavaReader {
    type Item = (u64, Result<RawSample, SampleError>);

    fn next(&mut self) -> Option<Self::Item> {
        let (index, record) = self.stream.next()?;
        let file = self.stream.file();
        let sample = record.and_then(|v| parse_llava_record(&v, file, index, &self.options));
        Some((index, sample))
    }
}

/// Converts one LLaVA/Mantis/M4 record into a conversation sample, applying the rules in the
/// module documentation. `file` and `index` locate the record in errors.
pub fn parse_llava_record(
    record: &Value,
    file: &str,
    index: u64,
    options: &LlavaOptions,
) -> Result<RawSample, SampleError> {
    let key = record_key(record, index);
    let bad = |kind: BadKind, msg: String| SampleError::new(file, &key, kind, msg);
    let object = record.as_object().ok_or_else(|| {
        bad(
            BadKind::MalformedRecord,
            "record is not a JSON object".into(),
        )
    })?;

    let image_value = object.get("image").or_else(|| object.get("images"));
    let image_paths = image_list(image_value).map_err(|m| bad(BadKind::MalformedRecord, m))?;
    let turns_value = object
        .get("conversations")
        .or_else(|| object.get("conversation"))
        .ok_or_else(|| bad(BadKind::MalformedRecord, "no `conversations` field".into()))?;
    let mut turns = parse_turns(turns_value).map_err(|m| bad(BadKind::MalformedRecord, m))?;

    // LLaVA drops a conversation's first turn when it is not the user's.
    let first_other = turns.iter().position(|t| t.role != Role::System);
    if let Some(i) = first_other
        && turns[i].role == Role::Assistant
    {
        turns.remove(i);
    }
    if !turns.iter().any(|t| t.role == Role::User) {
        return Err(bad(
            BadKind::Invalid,
            "conversation has no user turn".into(),
        ));
    }
    if !turns.iter().any(|t| t.role == Role::Assistant) {
        return Err(bad(
            BadKind::Invalid,
            "conversation has no assistant turn".into(),
        ));
    }

    let n_images = image_paths.len();
    let markers: usize = turns.iter().map(|t| count_markers(&t.text)).sum();
    if n_images == 0 && markers > 0 {
        return Err(bad(
            BadKind::Invalid,
            format!("text-only sample contains {IMAGE_MARKER}"),
        ));
    }
    if n_images > options.max_images {
        return Err(bad(
            BadKind::Invalid,
            format!(
                "{n_images} images, more than the limit of {}",
                options.max_images
            ),
        ));
    }
    if n_images == 1
        && let Some(first_user) = turns.iter_mut().find(|t| t.role == Role::User)
        && count_markers(&first_user.text) != 1
    {
        first_user.text = normalize_single_marker(&first_user.text);
    }
    let markers: usize = turns.iter().map(|t| count_markers(&t.text)).sum();
    if markers != n_images {
        return Err(bad(
            BadKind::ImageCountMismatch,
            format!("{markers} {IMAGE_MARKER} markers for {n_images} images"),
        ));
    }

    let images = resolve_images(&image_paths, &options.roots, options.check_images)
        .map_err(|(kind, m)| bad(kind, m))?;
    Ok(RawSample::Conversation {
        origin: Origin {
            file: file.to_string(),
            key: key.clone(),
        },
        images,
        turns,
    })
}

/// Counts `<image>` markers in a text.
pub fn count_markers(text: &str) -> usize {
    text.matches(IMAGE_MARKER).count()
}

/// Removes every marker from `text`, trims it and puts one `<image>\n` in front (the reference's
/// normalisation of single-image prompts).
pub fn normalize_single_marker(text: &str) -> String {
    let stripped = text.replace(IMAGE_MARKER, "");
    format!("{IMAGE_MARKER}\n{}", stripped.trim())
}

/// The key naming a record in errors and origins: its `id` (string or number), else its index.
pub(crate) fn record_key(record: &Value, index: u64) -> String {
    match record.get("id") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => format!("element {index}"),
    }
}

/// Reads an `image`/`images` value: absent or null (text-only), a string, or a list of strings or
/// of `{path}` objects.
pub(crate) fn image_list(value: Option<&Value>) -> Result<Vec<String>, String> {
    let one = |v: &Value| -> Result<String, String> {
        match v {
            Value::String(s) => Ok(s.clone()),
            Value::Object(o) => match o.get("path") {
                Some(Value::String(s)) => Ok(s.clone()),
                _ => Err("image object has no string `path`".to_string()),
            },
            other => Err(format!("image entry is not a path: {other}")),
        }
    };
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items.iter().map(one).collect(),
        Some(v) => Ok(vec![one(v)?]),
    }
}

/// Maps relative image paths to files ([`ImageRoots::locate`]), checking that they exist when
/// `check` is set. Errors carry their kind: [`BadKind::OutsideRoot`] or [`BadKind::MissingImage`].
pub(crate) fn resolve_images(
    paths: &[String],
    roots: &ImageRoots,
    check: bool,
) -> Result<Vec<ImageSource>, (BadKind, String)> {
    paths
        .iter()
        .map(|p| {
            let path = roots
                .locate(p)
                .map_err(|e| (BadKind::OutsideRoot, e.to_string()))?;
            if check && !path.is_file() {
                let msg = if path.exists() {
                    format!("image file {} is not a regular file", path.display())
                } else {
                    format!("image file {} does not exist", path.display())
                };
                return Err((BadKind::MissingImage, msg));
            }
            Ok(ImageSource::Path(path))
        })
        .collect()
}

/// Maps a speaker name to a role.
fn parse_role(name: &str) -> Option<Role> {
    match name.to_ascii_lowercase().as_str() {
        "human" | "user" => Some(Role::User),
        "gpt" | "assistant" => Some(Role::Assistant),
        "system" => Some(Role::System),
        _ => None,
    }
}

/// Reads a `conversations` list of `{from, value}` or `{role, content}` turns.
fn parse_turns(value: &Value) -> Result<Vec<Turn>, String> {
    let items = value.as_array().ok_or("`conversations` is not a list")?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let speaker = item
                .get("from")
                .or_else(|| item.get("role"))
                .and_then(Value::as_str)
                .ok_or_else(|| format!("turn {i} has no string `from`/`role`"))?;
            let role = parse_role(speaker)
                .ok_or_else(|| format!("turn {i} has unknown role {speaker:?}"))?;
            let text = item
                .get("value")
                .or_else(|| item.get("content"))
                .and_then(Value::as_str)
                .ok_or_else(|| format!("turn {i} has no string `value`/`content`"))?;
            Ok(Turn {
                role,
                text: text.to_string(),
            })
        })
        .collect()
}
