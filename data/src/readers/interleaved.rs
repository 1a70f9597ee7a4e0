//! Interleaved image-text documents (OBELICS, MINT-1T HTML/PDF/ArXiv) from JSON lines and from
//! WebDataset shards, rendered as text with `<image>` markers and `<|endofchunk|>` separators.
//!
//! # Record layout
//!
//! A document is two parallel lists of the same length, `texts` and `images`; at every position
//! exactly one of the two is non-null (OBELICS, MINT-1T). An image entry is a string (a URL, a
//! path relative to the image root, or, in tar shards, a member name) or an object with base64
//! bytes (`bytes`, `image_base64` or `base64`) or a location (`path`, `url` or `src`).
//!
//! # Rendering (OpenFlamingo / xGen-MM pre-training rule)
//!
//! OpenFlamingo's MMC4 preprocessing (`open_flamingo/train/data.py`, `preprocess_interleaved`)
//! prefixes every text that follows an image with `<|endofchunk|><image>`, joins the texts with
//! single spaces, deletes the first `<|endofchunk|>`, removes the spaces around the markers and
//! ends the document with `<|endofchunk|>` (then the tokenizer's EOS). Applied to an aligned
//! document, the rule gives:
//! - `<image>` is placed *before* the text that follows it, with no space on either side;
//! - every image except the first is preceded by `<|endofchunk|>`, which closes the previous
//!   chunk; the document ends with `<|endofchunk|>`;
//! - texts that follow one another are joined by one space; text before the first image is kept
//!   (and trained: the legacy OpenFlamingo masking of it is not applied, see docs/reference.md
//!   §4.2);
//! - at most `max_images` images are kept (OpenFlamingo `--mmc4_max_num_images`, default 6); later
//!   image positions are dropped and their texts kept, as in the reference, which keeps the first
//!   images and leaves the other texts without a marker;
//! - a document needs at least `min_images` images (default 1), or it is skipped.
//!
//! EOS is not appended here: the tokenizer adds it. Literal `<image>`, `<image placeholder>` and
//! `<|endofchunk|>` strings inside source texts are removed so that markers always match images.
//! OpenFlamingo's random extras (dropping half of the one-image documents, shifting images for
//! augmentation, similarity thresholds) are sampling choices left to the caller.
//!
//! # Image lookup
//!
//! URLs cannot be downloaded here. An [`ImageResolver`] maps a reference to a local file: paths
//! are joined to an image root; URLs go through a [`UrlRule`] (file named by the URL's basename,
//! by the SHA-1 hex of the URL, or listed in a `url<TAB>path` manifest). An image that is not
//! available is dropped from its document (default) or makes the document skipped
//! ([`MissingImagePolicy`]); each dropped image is reported as a [`BadKind::MissingImage`] error
//! (a path that resolves outside the image root, see [`crate::paths`], as
//! [`BadKind::OutsideRoot`], unless [`ImageResolver::allow_outside`] is set)
//! unless `report_dropped_images` is off, and a document left with fewer than `min_images` images
//! is skipped with a [`SampleError`].
//!
//! # MINT-1T PDF / ArXiv tar naming (assumption)
//!
//! In a tar group, `key.json` holds the record; an image entry such as `"page_0_image_85"` names a
//! member of the same group. It is looked up, in order, as: the member whose extension equals the
//! name (`key.page_0_image_85`), the member `key.<name>.<image ext>` (e.g.
//! `key.page_0_image_85.tiff`), the member `key.<i>.<image ext>` where `i` is the image's ordinal
//! among the document's images, and, when the document has a single image and the group a single
//! image member (e.g. `key.tiff`), that member. Otherwise the entry goes through the resolver
//! (URL or path). The text list is assumed to be called `texts`, as in MINT-1T HTML.
//!
//! Long because rendering, image lookup and both readers (JSONL, tar) share one document model.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use serde_json::Value;

use super::shards::{ShardSplit, expand_paths, expand_shards};
use super::stream::{Position, ReadScope, SampleStream};
use super::webdataset::{GroupReader, IMAGE_EXTENSIONS, TarGroup};
use crate::error::{BadKind, DataError, SampleError};
use crate::paths::resolve_inside;
use crate::sample::{ImageSource, Origin, RawSample};

/// The image marker.
pub const IMAGE_TOKEN: &str = "<image>";
/// The end-of-chunk marker.
pub const END_OF_CHUNK: &str = "<|endofchunk|>";
/// The image placeholder token (removed from source texts like the two markers).
pub const IMAGE_PLACEHOLDER: &str = "<image placeholder>";

/// One position of a document, for [`render_interleaved`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocPart<'a> {
    /// A text.
    Text(&'a str),
    /// An image.
    Image,
}

/// Renders a document with the OpenFlamingo rule (see the module documentation): `<image>`
/// before the text it introduces, `<|endofchunk|>` before every image but the first and at the
/// end, single spaces between consecutive texts and no space around markers.
pub fn render_interleaved(parts: &[DocPart<'_>]) -> String {
    let mut out = String::new();
    let mut seen_image = false;
    let mut previous_is_text = false;
    for part in parts {
        match part {
            DocPart::Image => {
                if seen_image {
                    out.push_str(END_OF_CHUNK);
                }
                out.push_str(IMAGE_TOKEN);
                seen_image = true;
                previous_is_text = false;
            }
            DocPart::Text(text) => {
                if previous_is_text {
                    out.push(' ');
                }
                out.push_str(text);
                previous_is_text = true;
            }
        }
    }
    out.push_str(END_OF_CHUNK);
    out
}

/// Removes marker strings from a source text (repeatedly, so that no marker can re-form).
pub fn strip_markers(text: &str) -> String {
    let mut out = text.to_string();
    loop {
        let before = out.len();
        for marker in [IMAGE_PLACEHOLDER, IMAGE_TOKEN, END_OF_CHUNK] {
            out = out.replace(marker, "");
        }
        if out.len() == before {
            return out;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Image lookup
// ---------------------------------------------------------------------------------------------

/// How an image URL maps to a local file under the image root.
#[derive(Debug, Clone, Default)]
pub enum UrlRule {
    /// URLs are never available (every URL image is missing).
    #[default]
    Unavailable,
    /// The last path segment of the URL (query and fragment removed), e.g. `x.jpg`.
    Basename,
    /// The lower-case SHA-1 hex digest of the URL string, tried with each extension in order
    /// (`<sha1>.jpg`, ...); an empty extension means the bare digest.
    Sha1 {
        /// File extensions to try, without the dot.
        extensions: Vec<String>,
    },
    /// An explicit map from URL to a path relative to the root (see
    /// [`ImageResolver::load_manifest`]).
    Manifest(Arc<HashMap<String, PathBuf>>),
}

/// Why an image reference has no usable file: [`BadKind::MissingImage`] or
/// [`BadKind::OutsideRoot`], and the reason.
pub type Unavailable = (BadKind, String);

/// Maps image references (paths and URLs) to local files, inside the root (see [`crate::paths`]).
#[derive(Debug, Clone, Default)]
pub struct ImageResolver {
    /// The directory that relative paths and URL rules are resolved against (none: the working
    /// directory). Files must resolve inside it.
    pub root: Option<PathBuf>,
    /// How URLs are mapped.
    pub urls: UrlRule,
    /// Accept files that resolve outside the root (a recipe's `allow_outside_root: true`).
    pub allow_outside: bool,
}

impl ImageResolver {
    /// A resolver with an image root and a URL rule.
    pub fn new(root: Option<PathBuf>, urls: UrlRule) -> Self {
        ImageResolver {
            root,
            urls,
            allow_outside: false,
        }
    }

    /// The same resolver, accepting (`true`) or refusing files that resolve outside the root.
    pub fn allowing_outside(mut self, allow: bool) -> Self {
        self.allow_outside = allow;
        self
    }

    /// Loads a manifest: one `url<TAB>relative/path` per line (a first line `url<TAB>path` is
    /// taken as a header; blank lines are ignored).
    pub fn load_manifest(path: &Path) -> Result<UrlRule, DataError> {
        let lines = read_lines(path)?;
        let mut map = HashMap::new();
        for (number, line) in lines.iter().enumerate() {
            if line.trim().is_empty() || (number == 0 && line.trim() == "url\tpath") {
                continue;
            }
            let Some((url, file)) = line.split_once('\t') else {
                let msg = format!("line {}: expected `url<TAB>path`", number + 1);
                return Err(DataError::format(path.display(), msg));
            };
            map.insert(url.to_string(), PathBuf::from(file.trim_end_matches('\r')));
        }
        Ok(UrlRule::Manifest(Arc::new(map)))
    }

    /// The local file for `reference` (a URL or a path), or why it is not available (see
    /// [`ImageResolver::locate`]).
    pub fn resolve(&self, reference: &str) -> Result<PathBuf, String> {
        self.locate(reference).map_err(|(_, reason)| reason)
    }

    /// The local file for `reference` (a URL or a path), or why it is not available and the kind
    /// of that: [`BadKind::OutsideRoot`] for a path (or mapped URL) that resolves outside the root,
    /// [`BadKind::MissingImage`] otherwise.
    pub fn locate(&self, reference: &str) -> Result<PathBuf, Unavailable> {
        let missing = |msg: String| (BadKind::MissingImage, msg);
        if reference.is_empty() {
            return Err(missing("empty image reference".into()));
        }
        if !is_url(reference) {
            let path = self.under_root(Path::new(reference))?;
            return if path.is_file() {
                Ok(path)
            } else {
                Err(missing(format!(
                    "image file {} does not exist or is not a regular file",
                    path.display()
                )))
            };
        }
        let candidates: Vec<PathBuf> = match &self.urls {
            UrlRule::Unavailable => {
                return Err(missing(format!(
                    "image URL {reference} is not available locally"
                )));
            }
            UrlRule::Basename => url_basename(reference)
                .map(PathBuf::from)
                .into_iter()
                .collect(),
            UrlRule::Sha1 { extensions } => {
                let digest = sha1_smol::Sha1::from(reference.as_bytes())
                    .digest()
                    .to_string();
                extensions
                    .iter()
                    .map(|ext| {
                        if ext.is_empty() {
                            PathBuf::from(&digest)
                        } else {
                            PathBuf::from(format!("{digest}.{ext}"))
                        }
                    })
                    .collect()
            }
            UrlRule::Manifest(map) => map.get(reference).cloned().into_iter().collect(),
        };
        for candidate in &candidates {
            let path = self.under_root(candidate)?;
            if path.is_file() {
                return Ok(path);
            }
        }
        match candidates.first() {
            Some(first) => Err(missing(format!(
                "image URL {reference} not downloaded ({} does not exist)",
                self.under_root(first)?.display()
            ))),
            None => Err(missing(format!("image URL {reference} has no local file"))),
        }
    }

    /// `path` under the root (an absolute path replaces it), refused when it resolves outside
    /// the root (the working directory when there is none) unless that is allowed.
    fn under_root(&self, path: &Path) -> Result<PathBuf, Unavailable> {
        let root = self.root.as_deref().unwrap_or(Path::new(""));
        resolve_inside(root, path, self.allow_outside)
            .map_err(|e| (BadKind::OutsideRoot, e.to_string()))
    }
}

/// Whether a reference is a URL rather than a path.
fn is_url(reference: &str) -> bool {
    reference.contains("://")
}

/// The last path segment of a URL, without query or fragment.
fn url_basename(url: &str) -> Option<&str> {
    let end = url.find(['?', '#']).unwrap_or(url.len());
    let path = &url[..end];
    let name = path.rsplit('/').next()?;
    (!name.is_empty()).then_some(name)
}

// ---------------------------------------------------------------------------------------------
// Documents
// ---------------------------------------------------------------------------------------------

/// What to do with a document when one of its images is not available.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MissingImagePolicy {
    /// Drop the image position, keep the document (unless fewer than `min_images` remain).
    #[default]
    DropImage,
    /// Skip the whole document.
    DropDocument,
}

/// Options of the interleaved readers.
#[derive(Debug, Clone)]
pub struct InterleavedOptions {
    /// Images kept per document, the first ones in document order (0: no limit). Default 6.
    pub max_images: usize,
    /// Documents with fewer images (after dropping missing ones) are skipped. Default 1.
    pub min_images: usize,
    /// Missing images: drop them or skip the document.
    pub on_missing: MissingImagePolicy,
    /// Report every dropped image as a [`BadKind::MissingImage`] error item (before the
    /// document's sample). Default true.
    pub report_dropped_images: bool,
    /// Name of the text list (JSON field or Parquet column). Default `texts`.
    pub texts_field: String,
    /// Name of the image list (JSON field or Parquet column). Default `images`.
    pub images_field: String,
}

impl Default for InterleavedOptions {
    fn default() -> Self {
        InterleavedOptions {
            max_images: 6,
            min_images: 1,
            on_missing: MissingImagePolicy::DropImage,
            report_dropped_images: true,
            texts_field: "texts".into(),
            images_field: "images".into(),
        }
    }
}

/// An image entry of a document before lookup.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageRef {
    /// A URL, a path or a tar member name.
    Name(String),
    /// Embedded encoded bytes.
    Bytes(Vec<u8>),
}

/// One position of a parsed document.
#[derive(Debug, Clone, PartialEq)]
pub enum Slot {
    /// A text (markers already stripped).
    Text(String),
    /// An image to look up.
    Image(ImageRef),
}

/// One position of a document after image lookup: a text, or an image that is available or not
/// (with the reason).
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    /// A text.
    Text(String),
    /// An available image.
    Image(ImageSource),
    /// An image that is not available: its reference and why.
    Missing {
        /// The reference (URL, path or name).
        reference: String,
        /// [`BadKind::MissingImage`], or [`BadKind::OutsideRoot`] for a refused path.
        kind: BadKind,
        /// Why it is missing.
        reason: String,
    },
}

/// Parses aligned `texts` / `images` JSON lists into slots. Errors describe the problem.
pub fn slots_from_json(texts: &Value, images: &Value) -> Result<Vec<Slot>, String> {
    let (Value::Array(texts), Value::Array(images)) = (texts, images) else {
        return Err("`texts` and `images` must be lists".into());
    };
    if texts.len() != images.len() {
        return Err(format!(
            "`texts` has {} entries but `images` {}",
            texts.len(),
            images.len()
        ));
    }
    let mut slots = Vec::with_capacity(texts.len());
    for (i, (text, image)) in texts.iter().zip(images).enumerate() {
        let slot = match (text, image) {
            (Value::String(t), Value::Null) => Slot::Text(strip_markers(t)),
            (Value::Null, Value::Null) => {
                return Err(format!("position {i}: text and image are both null"));
            }
            (Value::Null, image) => {
                Slot::Image(image_ref_from_json(image).map_err(|e| format!("position {i}: {e}"))?)
            }
            (Value::String(_), _) => {
                return Err(format!("position {i}: both text and image are set"));
            }
            (other, _) => return Err(format!("position {i}: text is not a string: {other}")),
        };
        slots.push(slot);
    }
    Ok(slots)
}

/// Parses one image entry: a string, or an object with base64 bytes or a location.
fn image_ref_from_json(value: &Value) -> Result<ImageRef, String> {
    match value {
        Value::String(s) => Ok(ImageRef::Name(s.clone())),
        Value::Object(map) => {
            for field in ["bytes", "image_base64", "base64"] {
                if let Some(Value::String(encoded)) = map.get(field) {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(encoded.trim())
                        .map_err(|e| format!("image field {field:?} is not base64: {e}"))?;
                    return Ok(ImageRef::Bytes(bytes));
                }
            }
            for field in ["path", "url", "src"] {
                if let Some(Value::String(location)) = map.get(field) {
                    return Ok(ImageRef::Name(location.clone()));
                }
            }
            Err("image object has no bytes/image_base64/base64 or path/url/src string".into())
        }
        other => Err(format!(
            "image entry is neither a string nor an object: {other}"
        )),
    }
}

/// Looks up every image slot with `lookup(reference, ordinal)` (`ordinal` counts images from 0).
/// Embedded bytes are named `<file>:<key>#image<ordinal>`.
pub fn resolve_slots(
    slots: Vec<Slot>,
    origin: &Origin,
    mut lookup: impl FnMut(&str, usize) -> Result<ImageSource, Unavailable>,
) -> Vec<Piece> {
    let mut ordinal = 0;
    let mut pieces = Vec::with_capacity(slots.len());
    for slot in slots {
        let piece = match slot {
            Slot::Text(text) => Piece::Text(text),
            Slot::Image(ImageRef::Bytes(bytes)) => Piece::Image(ImageSource::Bytes {
                bytes: Arc::new(bytes),
                name: format!("{}:{}#image{ordinal}", origin.file, origin.key),
            }),
            Slot::Image(ImageRef::Name(reference)) => match lookup(&reference, ordinal) {
                Ok(source) => Piece::Image(source),
                Err((kind, reason)) => Piece::Missing {
                    reference,
                    kind,
                    reason,
                },
            },
        };
        if !matches!(piece, Piece::Text(_)) {
            ordinal += 1;
        }
        pieces.push(piece);
    }
    pieces
}

/// Applies the options to a looked-up document and renders it. Returns the items to yield for
/// this document, in order: one [`BadKind::MissingImage`] error per dropped image (when
/// reported), then the sample or the reason it was skipped.
pub fn assemble(
    origin: Origin,
    pieces: Vec<Piece>,
    options: &InterleavedOptions,
) -> Vec<Result<RawSample, SampleError>> {
    let mut items = Vec::new();
    let missing: Vec<(&String, BadKind, &String)> = pieces
        .iter()
        .filter_map(|p| match p {
            Piece::Missing {
                reference,
                kind,
                reason,
            } => Some((reference, *kind, reason)),
            _ => None,
        })
        .collect();
    if let Some(&(reference, kind, reason)) = missing.first()
        && options.on_missing == MissingImagePolicy::DropDocument
    {
        let msg = format!(
            "{} missing image(s), first {reference}: {reason}",
            missing.len()
        );
        items.push(Err(SampleError::new(&origin.file, &origin.key, kind, msg)));
        return items;
    }
    if options.report_dropped_images {
        for (reference, kind, reason) in &missing {
            let msg = format!("dropping image {reference}: {reason}");
            items.push(Err(SampleError::new(&origin.file, &origin.key, *kind, msg)));
        }
    }
    let mut parts = Vec::with_capacity(pieces.len());
    let mut images = Vec::new();
    let mut dropped_over_limit = 0;
    for piece in &pieces {
        match piece {
            Piece::Text(text) => parts.push(DocPart::Text(text)),
            Piece::Image(source) => {
                if options.max_images == 0 || images.len() < options.max_images {
                    images.push(source.clone());
                    parts.push(DocPart::Image);
                } else {
                    dropped_over_limit += 1;
                }
            }
            Piece::Missing { .. } => {}
        }
    }
    if !parts
        .iter()
        .any(|p| matches!(p, DocPart::Text(t) if !t.trim().is_empty()))
    {
        let err = SampleError::new(
            &origin.file,
            &origin.key,
            BadKind::Invalid,
            "document has no text",
        );
        items.push(Err(err));
        return items;
    }
    if images.len() < options.min_images {
        let (kind, msg) = if missing.is_empty() {
            (
                BadKind::Invalid,
                format!(
                    "document has {} image(s), fewer than {}",
                    images.len(),
                    options.min_images
                ),
            )
        } else {
            let msg = format!(
                "{} of {} image(s) missing, fewer than {} left",
                missing.len(),
                missing.len() + images.len() + dropped_over_limit,
                options.min_images
            );
            (BadKind::MissingImage, msg)
        };
        items.push(Err(SampleError::new(&origin.file, &origin.key, kind, msg)));
        return items;
    }
    let text = render_interleaved(&parts);
    items.push(Ok(RawSample::Interleaved {
        origin,
        text,
        images,
    }));
    items
}

/// Parses, looks up and assembles one JSON record (see [`assemble`] for the items returned).
pub fn document_items(
    origin: Origin,
    record: &Value,
    options: &InterleavedOptions,
    lookup: impl FnMut(&str, usize) -> Result<ImageSource, Unavailable>,
) -> Vec<Result<RawSample, SampleError>> {
    let malformed = |msg: String| {
        vec![Err(SampleError::new(
            &origin.file,
            &origin.key,
            BadKind::MalformedRecord,
            msg,
        ))]
    };
    let (Some(texts), Some(images)) = (
        record.get(&options.texts_field),
        record.get(&options.images_field),
    ) else {
        return malformed(format!(
            "record lacks `{}` or `{}`",
            options.texts_field, options.images_field
        ));
    };
    let slots = match slots_from_json(texts, images) {
        Ok(slots) => slots,
        Err(msg) => return malformed(msg),
    };
    let pieces = resolve_slots(slots, &origin, lookup);
    assemble(origin, pieces, options)
}

/// A lookup through the resolver only (paths and URLs to local files).
fn resolver_lookup(resolver: &ImageResolver, reference: &str) -> Result<ImageSource, Unavailable> {
    resolver.locate(reference).map(ImageSource::Path)
}

/// A lookup inside a tar group first (see the module documentation), then through the resolver.
fn group_lookup(
    group: &TarGroup,
    resolver: &ImageResolver,
    single_image_doc: bool,
    reference: &str,
    ordinal: usize,
) -> Result<ImageSource, Unavailable> {
    let wrap = |ext: &str| {
        group.members.get(ext).map(|bytes| ImageSource::Bytes {
            bytes: Arc::new(bytes.clone()),
            name: group.location(ext),
        })
    };
    let lower = reference.to_ascii_lowercase();
    if let Some(source) = wrap(&lower) {
        return Ok(source);
    }
    for ext in IMAGE_EXTENSIONS {
        if let Some(source) = wrap(&format!("{lower}.{ext}")) {
            return Ok(source);
        }
    }
    for ext in IMAGE_EXTENSIONS {
        if let Some(source) = wrap(&format!("{ordinal}.{ext}")) {
            return Ok(source);
        }
    }
    if single_image_doc {
        let plain: Vec<&&str> = IMAGE_EXTENSIONS
            .iter()
            .filter(|e| group.members.contains_key(**e))
            .collect();
        if let [only] = plain.as_slice()
            && let Some(source) = wrap(only)
        {
            return Ok(source);
        }
    }
    resolver_lookup(resolver, reference).map_err(|(kind, resolver_reason)| {
        let reason = format!(
            "no member {reference:?} in {}.* (members: {}); {resolver_reason}",
            group.key,
            group.extensions()
        );
        (kind, reason)
    })
}

// ---------------------------------------------------------------------------------------------
// Readers
// ---------------------------------------------------------------------------------------------

/// The items of the record being yielded, for readers whose records can yield several items:
/// keeps the record's position and how many of its items were already yielded, so that
/// [`SampleStream::position`] can point between two items of one record.
#[derive(Default)]
pub(crate) struct PendingItems {
    items: VecDeque<Result<RawSample, SampleError>>,
    record: Position,
    /// Where the reader was resumed: items of that record already yielded are dropped.
    resumed_at: Option<Position>,
}

impl PendingItems {
    /// Pending items for a reader resumed at `start`.
    pub(crate) fn resuming(start: Position) -> Self {
        let resumed_at = (start.part > 0).then_some(start);
        PendingItems {
            items: VecDeque::new(),
            record: start,
            resumed_at,
        }
    }

    /// Whether every item was yielded.
    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Stores the items of the record at `record` (dropping those yielded before a resume).
    pub(crate) fn fill(&mut self, record: Position, items: Vec<Result<RawSample, SampleError>>) {
        let mut items = VecDeque::from(items);
        let skip = match self.resumed_at.take() {
            Some(start) if (start.shard, start.sample) == (record.shard, record.sample) => {
                start.part
            }
            _ => 0,
        };
        let mut part = 0;
        while part < skip && items.pop_front().is_some() {
            part += 1;
        }
        self.record = Position { part, ..record };
        self.items = items;
    }

    /// The next item of the record.
    pub(crate) fn pop(&mut self) -> Option<Result<RawSample, SampleError>> {
        let item = self.items.pop_front()?;
        self.record.part += 1;
        Some(item)
    }

    /// The stream position: inside the record while items remain, else `after`.
    pub(crate) fn position(&self, after: Position) -> Position {
        if self.items.is_empty() {
            after
        } else {
            self.record
        }
    }
}

/// Interleaved documents from WebDataset shards (`key.json` + image members).
pub struct InterleavedWdsReader {
    groups: GroupReader,
    resolver: ImageResolver,
    options: InterleavedOptions,
    pending: PendingItems,
}

impl InterleavedWdsReader {
    /// Expands shard `patterns` (see [`expand_shards`]) and opens a reader; `resolver` serves
    /// image entries that are not members of the group.
    pub fn open<S: AsRef<str>>(
        patterns: &[S],
        scope: ReadScope,
        resolver: ImageResolver,
        options: InterleavedOptions,
    ) -> Result<Self, DataError> {
        Ok(Self::from_shards(
            expand_shards(patterns)?,
            scope,
            resolver,
            options,
        ))
    }

    /// A reader over an explicit global shard list.
    pub fn from_shards(
        shards: Vec<PathBuf>,
        scope: ReadScope,
        resolver: ImageResolver,
        options: InterleavedOptions,
    ) -> Self {
        InterleavedWdsReader {
            groups: GroupReader::new(shards, scope),
            resolver,
            options,
            pending: PendingItems::resuming(scope.start),
        }
    }

    /// The items of one group.
    fn group_items(&self, group: TarGroup) -> Vec<Result<RawSample, SampleError>> {
        let origin = group.origin();
        let record = match group.text("json") {
            None => {
                let msg = format!("no .json member (members: {})", group.extensions());
                return vec![Err(group.error(BadKind::MalformedRecord, msg))];
            }
            Some(Err(e)) => return vec![Err(e)],
            Some(Ok(text)) => match serde_json::from_str::<Value>(text) {
                Ok(record) => record,
                Err(e) => {
                    let msg = format!("member .json is not JSON: {e}");
                    return vec![Err(group.error(BadKind::MalformedRecord, msg))];
                }
            },
        };
        let image_count = record
            .get(&self.options.images_field)
            .and_then(Value::as_array)
            .map_or(0, |list| list.iter().filter(|v| !v.is_null()).count());
        let resolver = &self.resolver;
        document_items(origin, &record, &self.options, |reference, ordinal| {
            group_lookup(&group, resolver, image_count == 1, reference, ordinal)
        })
    }
}

impl Iterator for InterleavedWdsReader {
    type Item = Result<RawSample, SampleError>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.pending.is_empty() {
            match self.groups.next()? {
                Ok(group) => {
                    let record = Position::new(group.shard_index, group.index);
                    let items = self.group_items(group);
                    self.pending.fill(record, items);
                }
                Err(e) => return Some(Err(e)),
            }
        }
        self.pending.pop()
    }
}

impl SampleStream for InterleavedWdsReader {
    fn position(&self) -> Position {
        self.pending.position(self.groups.position())
    }
}

/// Whether a file name looks like JSON lines (`.jsonl`, `.json`).
pub fn is_jsonl_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.ends_with(".jsonl") || lower.ends_with(".json")
}

/// Interleaved documents from JSON-lines files, one record per line (blank lines are skipped
/// but counted in positions). Files are split between ranks like shards; a position counts lines.
/// The origin key is the record's `id` (string or number) when present, else `line N` (1-based).
pub struct InterleavedJsonlReader {
    files: Vec<PathBuf>,
    split: ShardSplit,
    resolver: ImageResolver,
    options: InterleavedOptions,
    current: Option<(usize, BufReader<File>)>,
    next_file: usize,
    skip_in_next: u64,
    position: Position,
    pending: PendingItems,
}

impl InterleavedJsonlReader {
    /// Expands `patterns` (braces, wildcards, directories of `.jsonl`/`.json` files) and opens a
    /// reader.
    pub fn open<S: AsRef<str>>(
        patterns: &[S],
        scope: ReadScope,
        resolver: ImageResolver,
        options: InterleavedOptions,
    ) -> Result<Self, DataError> {
        Ok(Self::from_files(
            expand_paths(patterns, is_jsonl_name)?,
            scope,
            resolver,
            options,
        ))
    }

    /// A reader over an explicit global file list.
    pub fn from_files(
        files: Vec<PathBuf>,
        scope: ReadScope,
        resolver: ImageResolver,
        options: InterleavedOptions,
    ) -> Self {
        let (split, start) = (scope.split, scope.start);
        let first = split.first_owned_from(start.shard);
        let skip = if first == start.shard {
            start.sample
        } else {
            0
        };
        InterleavedJsonlReader {
            files,
            split,
            resolver,
            current: None,
            next_file: first,
            skip_in_next: skip,
            position: Position::new(first, skip),
            options,
            pending: PendingItems::resuming(start),
        }
    }

    /// Opens the next owned file and skips resumed lines; `None` when no file is left.
    fn open_next(&mut self) -> Option<Result<(), SampleError>> {
        let index = self.split.first_owned_from(self.next_file);
        if index >= self.files.len() {
            return None;
        }
        self.next_file = index + self.split.world.max(1);
        let skip = std::mem::take(&mut self.skip_in_next);
        self.position = Position::new(index, 0);
        let path = &self.files[index];
        let mut reader = match File::open(path) {
            Ok(file) => BufReader::new(file),
            Err(e) => {
                self.position = Position::new(index + 1, 0);
                let msg = format!("cannot open: {e}");
                return Some(Err(SampleError::new(
                    path.display(),
                    "",
                    BadKind::TruncatedShard,
                    msg,
                )));
            }
        };
        let mut buffer = Vec::new();
        while self.position.sample < skip {
            buffer.clear();
            match reader.read_until(b'\n', &mut buffer) {
                Ok(0) => break,
                Ok(_) => self.position.sample += 1,
                Err(e) => {
                    let line = self.position.sample + 1;
                    self.position = Position::new(index + 1, 0);
                    let msg = format!("read error: {e}");
                    let key = format!("line {line}");
                    return Some(Err(SampleError::new(
                        path.display(),
                        key,
                        BadKind::TruncatedShard,
                        msg,
                    )));
                }
            }
        }
        self.current = Some((index, reader));
        Some(Ok(()))
    }

    /// Reads the next line of the current file: `None` at its end, else the items of that line.
    fn read_record(&mut self) -> Option<Vec<Result<RawSample, SampleError>>> {
        let (index, reader) = self.current.as_mut()?;
        let index = *index;
        let path = self.files[index].display().to_string();
        let mut buffer = Vec::new();
        let line_number = self.position.sample + 1;
        let key = format!("line {line_number}");
        match reader.read_until(b'\n', &mut buffer) {
            Ok(0) => {
                self.current = None;
                return None;
            }
            Ok(_) => self.position.sample += 1,
            Err(e) => {
                self.current = None;
                self.position = Position::new(index + 1, 0);
                let msg = format!("read error: {e}");
                return Some(vec![Err(SampleError::new(
                    path,
                    key,
                    BadKind::TruncatedShard,
                    msg,
                ))]);
            }
        }
        let malformed = |msg: String| {
            vec![Err(SampleError::new(
                &path,
                &key,
                BadKind::MalformedRecord,
                msg,
            ))]
        };
        let text = match std::str::from_utf8(&buffer) {
            Ok(text) => text.trim(),
            Err(e) => return Some(malformed(format!("not UTF-8: {e}"))),
        };
        if text.is_empty() {
            return Some(Vec::new());
        }
        let record: Value = match serde_json::from_str(text) {
            Ok(record) => record,
            Err(e) => return Some(malformed(format!("not JSON: {e}"))),
        };
        let key = match record.get("id") {
            Some(Value::String(id)) => id.clone(),
            Some(Value::Number(id)) => id.to_string(),
            _ => key,
        };
        let origin = Origin { file: path, key };
        let resolver = &self.resolver;
        Some(document_items(
            origin,
            &record,
            &self.options,
            |reference, _| resolver_lookup(resolver, reference),
        ))
    }
}

impl Iterator for InterleavedJsonlReader {
    type Item = Result<RawSample, SampleError>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.pending.is_empty() {
            if self.current.is_none() {
                match self.open_next()? {
                    Ok(()) => {}
                    Err(e) => return Some(Err(e)),
                }
            }
            let record = self.position;
            if let Some(items) = self.read_record() {
                self.pending.fill(record, items);
            }
        }
        self.pending.pop()
    }
}

impl SampleStream for InterleavedJsonlReader {
    fn position(&self) -> Position {
        self.pending.position(self.position)
    }
}

/// Reads a whole small text file line by line (helper for manifests); names the file on error.
fn read_lines(path: &Path) -> Result<Vec<String>, DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut lines = Vec::new();
    for line in BufReader::new(file).lines() {
        lines.push(line.map_err(|e| DataError::io(path, e))?);
    }
    Ok(lines)
}
