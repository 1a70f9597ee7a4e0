//! Streaming reader for WebDataset tar shards (img2dataset output: CC3M, CC12M, LAION, Datacomp,
//! BLIP3-KALE downloads, ...).
//!
//! A shard is a plain tar file (or a gzipped one, `.tar.gz` / `.tgz`). Consecutive members that
//! share a *key* form one sample. Following the webdataset convention, a member name is split at the
//! first `.` of its file name: `dir/000010005.jpg` has key `dir/000010005` (directories are part of
//! the key) and extension `jpg`; `abc.page_0_image_85.tiff` has key `abc` and extension
//! `page_0_image_85.tiff`. Extensions are lower-cased. Members whose file name has no `.` (or starts
//! with one), non-file entries and top-level `__name__` metadata members are ignored. A key that
//! repeats an extension already present in the current group starts a new group, as in the
//! non-throwing grouping used by OpenFlamingo.
//!
//! Memory use is constant in the corpus size: one group (the members of one sample) is held at a
//! time, and member payloads are read only for groups that are yielded (skipped groups are seeked
//! over).
//!
//! Order, sharding and resumption:
//! - patterns are expanded by [`expand_shards`] in the order given (brace expansion left to right,
//!   directory listings and wildcards sorted by name); that list is the global shard order, and
//!   samples follow tar order within a shard;
//! - [`ShardSplit`] `{ rank, world }` gives rank `r` the shards whose global index `i` satisfies
//!   `i % world == r` (disjoint, and their union is the whole list);
//! - a [`Position`] `{ shard, sample }` names the next group to read: `shard` is the global shard
//!   index and `sample` counts the groups already consumed in it (every group counts, including
//!   those that became a [`SampleError`]). Opening a reader at a saved position yields exactly the
//!   items that were still to come.
//!
//! A shard that ends in the middle of a member, or whose header is corrupt, yields one
//! [`SampleError`] of kind [`BadKind::TruncatedShard`] naming the shard and the last key seen; the
//! reader then continues with the next shard.
//!
//! The shared machinery (pattern expansion and rank splits in [`shards`](super::shards), the
//! resumable [`SampleStream`] and its [`Position`] in [`stream`](super::stream)) lives beside this
//! module; the groups ([`GroupReader`], [`TarGroup`]) are also read by the interleaved reader.
//!
//! Long because tar parsing, grouping and the resumable reader of one format read best together.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::shards::{ShardSplit, expand_shards};
use super::stream::{Position, ReadScope, SampleStream};
use crate::error::{BadKind, DataError, SampleError};
use crate::sample::{ImageSource, Origin, RawSample};

/// Extensions recognised as images, in the default order of preference.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"];

/// The tar block size.
const BLOCK: u64 = 512;

// ---------------------------------------------------------------------------------------------
// Tar members and groups
// ---------------------------------------------------------------------------------------------

/// Splits a member name into `(key, extension)` at the first `.` of its file name, keeping
/// directories in the key. `None` when the file name has no `.` or starts with one.
pub fn split_member_name(name: &str) -> Option<(&str, &str)> {
    let file_start = name.rfind('/').map_or(0, |i| i + 1);
    let dot = name[file_start..].find('.')?;
    if dot == 0 {
        return None;
    }
    let split = file_start + dot;
    Some((&name[..split], &name[split + 1..]))
}

/// One sample of a shard: the members that share a key, by lower-cased extension.
#[derive(Debug, Clone, PartialEq)]
pub struct TarGroup {
    /// The shard path.
    pub shard: Arc<PathBuf>,
    /// The global index of the shard.
    pub shard_index: usize,
    /// The index of this group in its shard (0-based, counting every group).
    pub index: u64,
    /// The key (member name before the first `.` of its file name, with directories).
    pub key: String,
    /// Member payloads by extension (`jpg`, `txt`, `json`, `page_0_image_85.tiff`, ...).
    pub members: BTreeMap<String, Vec<u8>>,
}

impl TarGroup {
    /// A readable location of a member: `shard.tar:key.ext`.
    pub fn location(&self, ext: &str) -> String {
        format!("{}:{}.{}", self.shard.display(), self.key, ext)
    }

    /// The group's origin (shard path and key).
    pub fn origin(&self) -> Origin {
        Origin {
            file: self.shard.display().to_string(),
            key: self.key.clone(),
        }
    }

    /// Builds a [`SampleError`] about this group.
    pub fn error(&self, kind: BadKind, msg: impl Into<String>) -> SampleError {
        SampleError::new(self.shard.display(), &self.key, kind, msg)
    }

    /// The extensions present, comma-separated (for messages).
    pub fn extensions(&self) -> String {
        self.members.keys().cloned().collect::<Vec<_>>().join(", ")
    }

    /// A member as UTF-8 text, if present.
    pub fn text(&self, ext: &str) -> Option<Result<&str, SampleError>> {
        let bytes = self.members.get(ext)?;
        Some(std::str::from_utf8(bytes).map_err(|e| {
            self.error(
                BadKind::MalformedRecord,
                format!("member .{ext} is not UTF-8: {e}"),
            )
        }))
    }

    /// Removes a member and wraps it as an image source named `shard.tar:key.ext`.
    pub fn take_image(&mut self, ext: &str) -> Option<ImageSource> {
        let bytes = self.members.remove(ext)?;
        Some(ImageSource::Bytes {
            bytes: Arc::new(bytes),
            name: self.location(ext),
        })
    }
}

/// A member header whose payload has not been consumed yet.
#[derive(Debug)]
struct PendingMember {
    key: String,
    ext: String,
    size: u64,
}

/// The byte stream of a shard: a plain file (seekable) or a gzip stream.
enum ShardStream {
    Plain { reader: BufReader<File>, len: u64 },
    Gzip(Box<BufReader<flate2::read::MultiGzDecoder<File>>>),
}

impl ShardStream {
    /// Reads up to `buf.len()` bytes, stopping early only at end of stream; returns the count.
    fn read_full(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut filled = 0;
        while filled < buf.len() {
            let n = match self {
                ShardStream::Plain { reader, .. } => reader.read(&mut buf[filled..]),
                ShardStream::Gzip(reader) => reader.read(&mut buf[filled..]),
            };
            match n {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(filled)
    }

    /// Reads exactly `size` bytes (no pre-allocation beyond what arrives).
    fn read_payload(&mut self, size: u64) -> std::io::Result<Vec<u8>> {
        let mut data = Vec::with_capacity(size.min(1 << 20) as usize);
        let got = match self {
            ShardStream::Plain { reader, .. } => {
                reader.by_ref().take(size).read_to_end(&mut data)?
            }
            ShardStream::Gzip(reader) => reader.by_ref().take(size).read_to_end(&mut data)?,
        };
        if (got as u64) < size {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("member data ends after {got} of {size} bytes"),
            ));
        }
        Ok(data)
    }

    /// Skips `size` bytes, failing if the stream is shorter.
    fn skip(&mut self, size: u64) -> std::io::Result<()> {
        if size == 0 {
            return Ok(());
        }
        match self {
            ShardStream::Plain { reader, len } => {
                let here = reader.stream_position()?;
                if here.saturating_add(size) > *len {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!(
                            "member data needs {size} bytes, {} left",
                            *len - here.min(*len)
                        ),
                    ));
                }
                reader.seek_relative(size as i64)
            }
            ShardStream::Gzip(reader) => {
                let copied = std::io::copy(&mut reader.by_ref().take(size), &mut std::io::sink())?;
                if copied < size {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("member data ends after {copied} of {size} bytes"),
                    ));
                }
                Ok(())
            }
        }
    }
}

/// Padding after a payload of `size` bytes up to the next block boundary.
fn padding(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

/// The groups of one shard, streamed. After an error (truncated or corrupt shard) it ends.
pub struct ShardGroups {
    shard: Arc<PathBuf>,
    shard_index: usize,
    stream: ShardStream,
    pending: Option<PendingMember>,
    next_index: u64,
    last_key: String,
    finished: bool,
}

impl ShardGroups {
    /// Opens a shard (gzip if its name ends in `.gz` or `.tgz`). `shard_index` is its global index.
    pub fn open(path: &Path, shard_index: usize) -> Result<Self, DataError> {
        let file = File::open(path).map_err(|e| DataError::io(path, e))?;
        let lower = path.to_string_lossy().to_ascii_lowercase();
        let stream = if lower.ends_with(".gz") || lower.ends_with(".tgz") {
            ShardStream::Gzip(Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(
                file,
            ))))
        } else {
            let len = file.metadata().map_err(|e| DataError::io(path, e))?.len();
            ShardStream::Plain {
                reader: BufReader::new(file),
                len,
            }
        };
        Ok(ShardGroups {
            shard: Arc::new(path.to_path_buf()),
            shard_index,
            stream,
            pending: None,
            next_index: 0,
            last_key: String::new(),
            finished: false,
        })
    }

    /// The shard path.
    pub fn shard(&self) -> &Path {
        &self.shard
    }

    /// The index (in this shard) of the next group.
    pub fn next_index(&self) -> u64 {
        self.next_index
    }

    /// Skips up to `n` groups without reading their payloads; returns how many were skipped
    /// (fewer when the shard ends), or the truncation error.
    pub fn skip_groups(&mut self, n: u64) -> Result<u64, SampleError> {
        let mut skipped = 0;
        while skipped < n {
            match self.next_group(false) {
                Some(Ok(_)) => skipped += 1,
                Some(Err(e)) => return Err(e),
                None => break,
            }
        }
        Ok(skipped)
    }

    /// The truncation error for an I/O or format failure.
    fn truncated(&mut self, current_key: Option<&str>, what: String) -> SampleError {
        self.finished = true;
        let key = current_key.unwrap_or(&self.last_key).to_string();
        let msg = if key.is_empty() {
            format!("truncated or corrupt tar before any sample: {what}")
        } else {
            format!("truncated or corrupt tar at or after key {key:?}: {what}")
        };
        SampleError::new(self.shard.display(), key, BadKind::TruncatedShard, msg)
    }

    /// Reads headers up to the next member that belongs to a sample, consuming everything else.
    /// `Ok(None)` at the end of the archive.
    fn next_member(&mut self) -> Result<Option<PendingMember>, String> {
        let mut long_name: Option<String> = None;
        let mut pax_path: Option<String> = None;
        let mut pax_size: Option<u64> = None;
        loop {
            let mut block = [0u8; BLOCK as usize];
            let got = self
                .stream
                .read_full(&mut block)
                .map_err(|e| format!("read error: {e}"))?;
            if got == 0 {
                // End of file on a block boundary without the end-of-archive marker: accepted,
                // like tar and Python's tarfile do.
                return Ok(None);
            }
            if got < block.len() {
                return Err(format!("file ends inside a header ({got} of 512 bytes)"));
            }
            if block.iter().all(|&b| b == 0) {
                return Ok(None);
            }
            let header = tar::Header::from_byte_slice(&block);
            verify_checksum(&block)?;
            let size = match pax_size.take() {
                Some(size) => size,
                None => header
                    .entry_size()
                    .map_err(|e| format!("bad header: {e}"))?,
            };
            let kind = header.entry_type();
            if kind.is_gnu_longname() || kind.is_pax_local_extensions() {
                let data = self
                    .stream
                    .read_payload(size)
                    .map_err(|e| format!("read error: {e}"))?;
                self.stream
                    .skip(padding(size))
                    .map_err(|e| format!("read error: {e}"))?;
                if kind.is_gnu_longname() {
                    let name = data.split(|&b| b == 0).next().unwrap_or_default();
                    long_name = Some(String::from_utf8_lossy(name).into_owned());
                } else {
                    for ext in tar::PaxExtensions::new(&data).flatten() {
                        match (ext.key(), ext.value()) {
                            (Ok("path"), Ok(value)) => pax_path = Some(value.to_string()),
                            (Ok("size"), Ok(value)) => pax_size = value.parse().ok(),
                            _ => {}
                        }
                    }
                }
                continue;
            }
            let name = match pax_path.take().or(long_name.take()) {
                Some(name) => name,
                None => String::from_utf8_lossy(&header.path_bytes()).into_owned(),
            };
            let is_file = kind.is_file() || kind.is_contiguous();
            let member = if is_file { sample_member(&name) } else { None };
            match member {
                Some((key, ext)) => return Ok(Some(PendingMember { key, ext, size })),
                None => {
                    let total = size.saturating_add(padding(size));
                    self.stream
                        .skip(total)
                        .map_err(|e| format!("read error: {e}"))?;
                }
            }
        }
    }

    /// Consumes a member's payload (reads it when `keep`), then its padding.
    fn consume(&mut self, member: &PendingMember, keep: bool) -> Result<Vec<u8>, String> {
        let data = if keep {
            self.stream.read_payload(member.size)
        } else {
            self.stream.skip(member.size).map(|_| Vec::new())
        };
        let data = data.map_err(|e| format!("member {}.{}: {e}", member.key, member.ext))?;
        self.stream
            .skip(padding(member.size))
            .map_err(|e| format!("member {}.{}: padding: {e}", member.key, member.ext))?;
        Ok(data)
    }

    /// The next group; payloads are read only when `keep`.
    fn next_group(&mut self, keep: bool) -> Option<Result<TarGroup, SampleError>> {
        if self.finished {
            return None;
        }
        let first = match self.pending.take() {
            Some(member) => member,
            None => match self.next_member() {
                Ok(Some(member)) => member,
                Ok(None) => {
                    self.finished = true;
                    return None;
                }
                Err(what) => return Some(Err(self.truncated(None, what))),
            },
        };
        let key = first.key.clone();
        let mut members = BTreeMap::new();
        let mut member = first;
        loop {
            match self.consume(&member, keep) {
                Ok(data) => {
                    members.insert(member.ext, data);
                }
                Err(what) => return Some(Err(self.truncated(Some(&key), what))),
            }
            match self.next_member() {
                Ok(Some(next)) if next.key == key && !members.contains_key(&next.ext) => {
                    member = next;
                }
                Ok(Some(next)) => {
                    self.pending = Some(next);
                    break;
                }
                Ok(None) => {
                    self.finished = true;
                    break;
                }
                Err(what) => return Some(Err(self.truncated(Some(&key), what))),
            }
        }
        let index = self.next_index;
        self.next_index += 1;
        self.last_key = key.clone();
        Some(Ok(TarGroup {
            shard: self.shard.clone(),
            shard_index: self.shard_index,
            index,
            key,
            members,
        }))
    }
}

impl Iterator for ShardGroups {
    type Item = Result<TarGroup, SampleError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_group(true)
    }
}

/// Splits a member name into an owned `(key, lower-cased extension)` when it belongs to a sample
/// (has a key and an extension and is not a top-level `__name__` metadata member).
fn sample_member(name: &str) -> Option<(String, String)> {
    let name = name.strip_prefix("./").unwrap_or(name);
    if !name.contains('/') && name.starts_with("__") && name.ends_with("__") {
        return None;
    }
    let (key, ext) = split_member_name(name)?;
    if ext.is_empty() {
        return None;
    }
    Some((key.to_string(), ext.to_ascii_lowercase()))
}

/// Checks a header's checksum (unsigned sum of the block with the checksum field as spaces; the
/// historical signed sum is accepted too).
fn verify_checksum(block: &[u8; BLOCK as usize]) -> Result<(), String> {
    let field = &block[148..156];
    let text: String = field
        .iter()
        .take_while(|&&b| b != 0)
        .map(|&b| b as char)
        .collect::<String>()
        .trim()
        .to_string();
    let stored = u32::from_str_radix(&text, 8)
        .map_err(|_| format!("bad header: checksum field {text:?} is not octal"))?;
    let (mut unsigned, mut signed) = (0u32, 0i32);
    for (i, &b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u32::from(b);
        signed += i32::from(b as i8);
    }
    if stored == unsigned || i64::from(stored) == i64::from(signed) {
        Ok(())
    } else {
        Err(format!(
            "bad header: checksum {stored} does not match {unsigned}"
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Groups over many shards
// ---------------------------------------------------------------------------------------------

/// The groups of a list of shards for one rank, from a start position, with a resumable position.
/// A shard that cannot be opened or is truncated yields one [`BadKind::TruncatedShard`] error and
/// the reader moves on to the next shard.
pub struct GroupReader {
    shards: Vec<PathBuf>,
    split: ShardSplit,
    current: Option<ShardGroups>,
    /// The shard to open next when `current` is `None`.
    next_shard: usize,
    /// Groups to skip in the next opened shard (resumption).
    skip_in_next: u64,
    position: Position,
}

impl GroupReader {
    /// Reads `shards` (the global list, in order) for `split`, starting at `start`. When `start`
    /// falls in a shard this rank does not own, reading starts at its next owned shard.
    pub fn new(shards: Vec<PathBuf>, scope: ReadScope) -> Self {
        let (split, start) = (scope.split, scope.start);
        let first = split.first_owned_from(start.shard);
        let skip = if first == start.shard {
            start.sample
        } else {
            0
        };
        GroupReader {
            shards,
            split,
            current: None,
            next_shard: first,
            skip_in_next: skip,
            position: Position::new(first, skip),
        }
    }

    /// Expands `patterns` (see [`expand_shards`]) and reads them as [`GroupReader::new`] does.
    pub fn open<S: AsRef<str>>(patterns: &[S], scope: ReadScope) -> Result<Self, DataError> {
        Ok(Self::new(expand_shards(patterns)?, scope))
    }

    /// The global shard list.
    pub fn shards(&self) -> &[PathBuf] {
        &self.shards
    }

    /// The position of the next group.
    pub fn position(&self) -> Position {
        self.position
    }

    /// Opens the next owned shard and applies a pending skip. `None` when no shard is left.
    fn open_next(&mut self) -> Option<Result<(), SampleError>> {
        let index = self.split.first_owned_from(self.next_shard);
        if index >= self.shards.len() {
            self.next_shard = index;
            return None;
        }
        self.next_shard = index + self.split.world.max(1);
        let skip = std::mem::take(&mut self.skip_in_next);
        self.position = Position::new(index, skip);
        let path = &self.shards[index];
        let mut groups = match ShardGroups::open(path, index) {
            Ok(groups) => groups,
            Err(e) => {
                self.position = Position::new(index + 1, 0);
                let msg = format!("cannot open shard: {e}");
                return Some(Err(SampleError::new(
                    path.display(),
                    "",
                    BadKind::TruncatedShard,
                    msg,
                )));
            }
        };
        if let Err(e) = groups.skip_groups(skip) {
            self.position = Position::new(index + 1, 0);
            return Some(Err(e));
        }
        self.current = Some(groups);
        Some(Ok(()))
    }
}

impl Iterator for GroupReader {
    type Item = Result<TarGroup, SampleError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.current.is_none() {
                match self.open_next()? {
                    Ok(()) => {}
                    Err(e) => return Some(Err(e)),
                }
            }
            let groups = self.current.as_mut()?;
            match groups.next() {
                Some(Ok(group)) => {
                    self.position = Position::new(group.shard_index, group.index + 1);
                    return Some(Ok(group));
                }
                Some(Err(e)) => {
                    let shard = groups.shard_index;
                    self.current = None;
                    self.position = Position::new(shard + 1, 0);
                    return Some(Err(e));
                }
                None => self.current = None,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Caption samples
// ---------------------------------------------------------------------------------------------

/// Where a caption is taken from, tried in order; the first non-empty (after trimming) wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaptionSource {
    /// A text member, e.g. `txt`.
    Member(String),
    /// A string field of a JSON member, e.g. `caption` in `json`.
    JsonField {
        /// The JSON member's extension.
        member: String,
        /// The field name.
        field: String,
    },
}

/// How image-caption samples are taken from tar groups.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptionOptions {
    /// Caption sources in order. Default: `txt`, then the `caption` field of `json` (img2dataset).
    pub sources: Vec<CaptionSource>,
    /// Image extensions in order of preference. Default: [`IMAGE_EXTENSIONS`].
    pub image_extensions: Vec<String>,
}

impl Default for CaptionOptions {
    fn default() -> Self {
        CaptionOptions {
            sources: vec![
                CaptionSource::Member("txt".into()),
                CaptionSource::JsonField {
                    member: "json".into(),
                    field: "caption".into(),
                },
            ],
            image_extensions: IMAGE_EXTENSIONS.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// Turns a tar group into a [`RawSample::Caption`]: the first image extension present (in
/// preference order) and the first non-empty caption source. The caption is trimmed.
pub fn caption_sample(
    mut group: TarGroup,
    options: &CaptionOptions,
) -> Result<RawSample, SampleError> {
    let Some(ext) = options
        .image_extensions
        .iter()
        .find(|e| group.members.contains_key(e.as_str()))
    else {
        let msg = format!("no image member (members: {})", group.extensions());
        return Err(group.error(BadKind::MalformedRecord, msg));
    };
    let ext = ext.clone();
    let caption = find_caption(&group, &options.sources)?;
    let origin = group.origin();
    let image = group
        .take_image(&ext)
        .ok_or_else(|| group.error(BadKind::MalformedRecord, "image member vanished"))?;
    Ok(RawSample::Caption {
        origin,
        image,
        caption,
    })
}

/// The first non-empty caption among `sources`.
fn find_caption(group: &TarGroup, sources: &[CaptionSource]) -> Result<String, SampleError> {
    for source in sources {
        let text = match source {
            CaptionSource::Member(ext) => match group.text(ext) {
                Some(text) => text?.trim().to_string(),
                None => continue,
            },
            CaptionSource::JsonField { member, field } => {
                let Some(text) = group.text(member) else {
                    continue;
                };
                let value: serde_json::Value = serde_json::from_str(text?).map_err(|e| {
                    group.error(
                        BadKind::MalformedRecord,
                        format!("member .{member} is not JSON: {e}"),
                    )
                })?;
                match value.get(field) {
                    Some(serde_json::Value::String(s)) => s.trim().to_string(),
                    Some(serde_json::Value::Null) | None => continue,
                    Some(other) => {
                        let msg = format!("field {field:?} of .{member} is not a string: {other}");
                        return Err(group.error(BadKind::MalformedRecord, msg));
                    }
                }
            }
        };
        if !text.is_empty() {
            return Ok(text);
        }
    }
    let msg = format!("no non-empty caption (members: {})", group.extensions());
    Err(group.error(BadKind::Invalid, msg))
}

/// Streams image-caption samples from WebDataset shards (one item per tar group: a sample or the
/// reason the group was skipped, plus one error per truncated shard).
pub struct WdsReader {
    groups: GroupReader,
    caption: CaptionOptions,
}

impl WdsReader {
    /// Expands `patterns` (brace patterns, directories, wildcards; see [`expand_shards`]) and
    /// opens a reader. Fails only when the patterns are invalid or name missing files; shard
    /// content errors come later as [`SampleError`] items.
    pub fn open<S: AsRef<str>>(
        patterns: &[S],
        scope: ReadScope,
        caption: CaptionOptions,
    ) -> Result<Self, DataError> {
        Ok(Self::from_shards(expand_shards(patterns)?, scope, caption))
    }

    /// A reader over an explicit global shard list (e.g. shuffled by the caller).
    pub fn from_shards(shards: Vec<PathBuf>, scope: ReadScope, caption: CaptionOptions) -> Self {
        WdsReader {
            groups: GroupReader::new(shards, scope),
            caption,
        }
    }

    /// The global shard list.
    pub fn shards(&self) -> &[PathBuf] {
        self.groups.shards()
    }
}

impl Iterator for WdsReader {
    type Item = Result<RawSample, SampleError>;

    fn next(&mut self) -> Option<Self::Item> {
        Some(
            self.groups
                .next()?
                .and_then(|group| caption_sample(group, &self.caption)),
        )
    }
}

impl SampleStream for WdsReader {
    fn position(&self) -> Position {
        self.groups.position()
    }
}
