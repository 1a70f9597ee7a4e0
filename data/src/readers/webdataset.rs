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
//! - patterns are expanded in the order given (brace expansion left to right, directory listings and
//!   wildcards sorted by name); that list is the global shard order, and samples follow tar order
//!   within a shard;
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

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{BadKind, DataError, SampleError};
use crate::sample::{ImageSource, Origin, RawSample};

/// Extensions recognised as images, in the default order of preference.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"];

/// The largest number of shard paths a set of patterns may expand to.
const MAX_EXPANSION: usize = 1_000_000;

/// The tar block size.
const BLOCK: u64 = 512;

/// A resumable position in a list of shards (or files): the next record to read is record
/// `sample` of shard `shard`, of which the first `part` items were already yielded.
///
/// `shard` is an index into the full (unsplit) shard list; `sample` counts the records already
/// consumed in that shard: tar groups for WebDataset, lines for JSON lines, rows for Parquet.
/// `part` is non-zero only when a record yields several items (an interleaved document preceded
/// by reports of the images it dropped) and the position was taken between them.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Position {
    /// Global index of the shard or file.
    pub shard: usize,
    /// Records of that shard already consumed.
    pub sample: u64,
    /// Items of record `sample` already yielded.
    #[serde(default)]
    pub part: u32,
}

impl Position {
    /// Record `sample` of shard `shard`, from its first item.
    pub fn new(shard: usize, sample: u64) -> Self {
        Position {
            shard,
            sample,
            part: 0,
        }
    }

    /// The start of shard `shard` (skips all earlier shards).
    pub fn shard_start(shard: usize) -> Self {
        Position::new(shard, 0)
    }
}

/// A stream of samples that can report where it stands, so that training can save the position
/// in a checkpoint and resume exactly. Implemented by every reader of this module family.
pub trait SampleStream: Iterator<Item = Result<RawSample, SampleError>> + Send {
    /// The position of the next record. Opening the same source at this position yields exactly
    /// the items this stream has not yielded yet.
    fn position(&self) -> Position;
}

/// Which part of a shard list one data-parallel rank reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShardSplit {
    /// This rank, `0..world`.
    pub rank: usize,
    /// The number of ranks.
    pub world: usize,
}

impl Default for ShardSplit {
    fn default() -> Self {
        ShardSplit { rank: 0, world: 1 }
    }
}

impl ShardSplit {
    /// A split for `rank` of `world`; fails unless `rank < world`.
    pub fn new(rank: usize, world: usize) -> Result<Self, DataError> {
        if world == 0 || rank >= world {
            return Err(DataError::Config(format!(
                "shard split rank {rank} of world {world}: need rank < world"
            )));
        }
        Ok(ShardSplit { rank, world })
    }

    /// Whether this rank reads the unit with global index `index` (`index % world == rank`).
    pub fn owns(&self, index: usize) -> bool {
        self.world <= 1 || index % self.world == self.rank
    }

    /// The first index `>= from` that this rank owns.
    pub fn first_owned_from(&self, from: usize) -> usize {
        if self.world <= 1 {
            return from;
        }
        let offset = (self.rank + self.world - from % self.world) % self.world;
        from + offset
    }
}

/// Which part of a source one reader reads: the rank's split and the start position (a saved
/// [`SampleStream::position`]; default: the beginning).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReadScope {
    /// Which shards (files, row groups) this rank reads.
    pub split: ShardSplit,
    /// Where to start.
    pub start: Position,
}

impl ReadScope {
    /// Everything from the beginning, for rank `rank` of `world`.
    pub fn rank(rank: usize, world: usize) -> Result<Self, DataError> {
        Ok(ReadScope {
            split: ShardSplit::new(rank, world)?,
            start: Position::default(),
        })
    }

    /// The same split, resumed at `start`.
    pub fn resumed(self, start: Position) -> Self {
        ReadScope { start, ..self }
    }
}

// ---------------------------------------------------------------------------------------------
// Pattern expansion
// ---------------------------------------------------------------------------------------------

/// Expands shell-style braces in `pattern`, left to right:
/// `{0000..0099}` (numeric range, zero-padded to the wider bound when either bound has a leading
/// zero; an optional step `{0..10..2}`; descending when start > end), `{a..e}` (letter range),
/// `{a,b,c}` (list, may nest), several braces (cartesian product, the leftmost varying slowest).
/// A brace with neither a comma nor a range (`{x}`) or without a closing `}` stays literal;
/// `\{`, `\}` and `\,` are literal characters.
pub fn expand_braces(pattern: &str) -> Result<Vec<String>, DataError> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = Vec::new();
    expand_into(&chars, &mut out, pattern)?;
    Ok(out.into_iter().map(|s| unescape(&s)).collect())
}

/// Expands `chars` (still escaped) and appends the results (still escaped) to `out`.
fn expand_into(chars: &[char], out: &mut Vec<String>, pattern: &str) -> Result<(), DataError> {
    let Some((open, close, alternatives)) = first_expandable_brace(chars) else {
        out.push(chars.iter().collect());
        return Ok(());
    };
    let prefix: String = chars[..open].iter().collect();
    let suffix = &chars[close + 1..];
    for alternative in alternatives {
        let mut rest: Vec<char> = alternative.chars().collect();
        rest.extend_from_slice(suffix);
        let mut tails = Vec::new();
        expand_into(&rest, &mut tails, pattern)?;
        for tail in tails {
            if out.len() >= MAX_EXPANSION {
                return Err(DataError::Config(format!(
                    "pattern {pattern:?} expands to more than {MAX_EXPANSION} paths"
                )));
            }
            out.push(format!("{prefix}{tail}"));
        }
    }
    Ok(())
}

/// Finds the first brace pair that expands, returning its bounds and its alternatives (escaped).
fn first_expandable_brace(chars: &[char]) -> Option<(usize, usize, Vec<String>)> {
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 2,
            '{' => {
                if let Some(close) = matching_brace(chars, i) {
                    let inner = &chars[i + 1..close];
                    let parts = split_top_level_commas(inner);
                    if parts.len() > 1 {
                        return Some((i, close, parts));
                    }
                    let text: String = inner.iter().collect();
                    if let Some(range) = expand_range(&text) {
                        return Some((i, close, range));
                    }
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    None
}

/// The index of the `}` matching the `{` at `open`, honouring nesting and escapes.
fn matching_brace(chars: &[char], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = open;
    while i < chars.len() {
        match chars[i] {
            '\\' => {
                i += 2;
                continue;
            }
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Splits brace content at commas that are not nested in inner braces (escapes kept).
fn split_top_level_commas(inner: &[char]) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < inner.len() {
        let c = inner[i];
        match c {
            '\\' => {
                current.push(c);
                if let Some(&next) = inner.get(i + 1) {
                    current.push(next);
                }
                i += 2;
                continue;
            }
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut current));
                i += 1;
                continue;
            }
            _ => {}
        }
        current.push(c);
        i += 1;
    }
    parts.push(current);
    parts
}

/// Expands `a..b` or `a..b..step` (numbers or single letters); `None` if `text` is not a range.
fn expand_range(text: &str) -> Option<Vec<String>> {
    let fields: Vec<&str> = text.split("..").collect();
    if fields.len() != 2 && fields.len() != 3 {
        return None;
    }
    let step = match fields.get(2) {
        Some(s) => s.parse::<i64>().ok()?.unsigned_abs().max(1),
        None => 1,
    };
    let (start, end) = (fields[0], fields[1]);
    if let (Ok(a), Ok(b)) = (start.parse::<i64>(), end.parse::<i64>()) {
        let has_leading_zero = |s: &str| {
            let digits = s.trim_start_matches('-');
            digits.len() > 1 && digits.starts_with('0')
        };
        let width = if has_leading_zero(start) || has_leading_zero(end) {
            start.len().max(end.len())
        } else {
            0
        };
        let count = a.abs_diff(b) / step + 1;
        if count > MAX_EXPANSION as u64 {
            return None;
        }
        let values = (0..count).map(|k| {
            let delta = i128::from(k) * i128::from(step);
            if a <= b {
                i128::from(a) + delta
            } else {
                i128::from(a) - delta
            }
        });
        return Some(values.map(|v| format!("{v:0width$}")).collect());
    }
    let (mut a_chars, mut b_chars) = (start.chars(), end.chars());
    let (a, b) = (a_chars.next()?, b_chars.next()?);
    if a_chars.next().is_some() || b_chars.next().is_some() {
        return None;
    }
    if !a.is_ascii_alphabetic() || !b.is_ascii_alphabetic() {
        return None;
    }
    let (a, b) = (a as u8, b as u8);
    let count = a.abs_diff(b) as u64 / step + 1;
    let letters = (0..count).map(|k| {
        let delta = (k * step) as u8;
        (if a <= b { a + delta } else { a - delta }) as char
    });
    Some(letters.map(String::from).collect())
}

/// Removes the backslash of escaped characters.
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether `name` is a shard file name (`.tar`, `.tar.gz`, `.tgz`).
pub fn is_shard_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.ends_with(".tar") || lower.ends_with(".tar.gz") || lower.ends_with(".tgz")
}

/// Expands shard patterns into the global shard list, in order. Each pattern is brace-expanded;
/// each result is then either a directory (all `.tar`/`.tar.gz`/`.tgz` files in it, sorted by
/// name; other files such as img2dataset's `.parquet` and `_stats.json` are ignored), a path whose
/// file name holds `*` or `?` wildcards (matching files sorted by name), or a file path, which must
/// exist. Fails when a path does not exist or nothing matches.
pub fn expand_shards<S: AsRef<str>>(patterns: &[S]) -> Result<Vec<PathBuf>, DataError> {
    expand_paths(patterns, is_shard_name)
}

/// Expands file patterns as [`expand_shards`] does, taking from directories the files whose name
/// passes `accept` (e.g. `.jsonl` or `.parquet` files).
pub fn expand_paths<S: AsRef<str>>(
    patterns: &[S],
    accept: fn(&str) -> bool,
) -> Result<Vec<PathBuf>, DataError> {
    let mut shards = Vec::new();
    for pattern in patterns {
        for expanded in expand_braces(pattern.as_ref())? {
            let path = PathBuf::from(&expanded);
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.contains('*') || name.contains('?') {
                let dir = parent_dir(&path);
                let mut matched: Vec<PathBuf> = list_dir(&dir)?
                    .into_iter()
                    .filter(|p| {
                        p.is_file()
                            && p.file_name()
                                .is_some_and(|n| wildcard_match(&name, &n.to_string_lossy()))
                    })
                    .collect();
                matched.sort();
                if matched.is_empty() {
                    return Err(DataError::format(&expanded, "no file matches this pattern"));
                }
                shards.extend(matched);
            } else if path.is_dir() {
                let mut found: Vec<PathBuf> = list_dir(&path)?
                    .into_iter()
                    .filter(|p| {
                        p.is_file() && p.file_name().is_some_and(|n| accept(&n.to_string_lossy()))
                    })
                    .collect();
                found.sort();
                if found.is_empty() {
                    return Err(DataError::format(
                        &expanded,
                        "directory holds no matching files",
                    ));
                }
                shards.extend(found);
            } else if path.is_file() {
                shards.push(path);
            } else {
                return Err(DataError::io(
                    path,
                    std::io::Error::new(std::io::ErrorKind::NotFound, "shard does not exist"),
                ));
            }
        }
    }
    if shards.is_empty() {
        return Err(DataError::Config("no shard patterns given".into()));
    }
    Ok(shards)
}

/// The directory part of `path` (`.` when it has none).
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The entries of a directory.
fn list_dir(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let entries = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    let mut out = Vec::new();
    for entry in entries {
        out.push(entry.map_err(|e| DataError::io(dir, e))?.path());
    }
    Ok(out)
}

/// Matches `text` against a pattern where `*` is any run of characters and `?` one character.
fn wildcard_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            backtrack = Some((pi, ti));
            pi += 1;
        } else if let Some((star, matched)) = backtrack {
            pi = star + 1;
            ti = matched + 1;
            backtrack = Some((star, matched + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

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

/// Reads a whole small text file line by line (helper for manifests); names the file on error.
pub(crate) fn read_lines(path: &Path) -> Result<Vec<String>, DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut lines = Vec::new();
    for line in BufReader::new(file).lines() {
        lines.push(line.map_err(|e| DataError::io(path, e))?);
    }
    Ok(lines)
}
