//! Shard lists: expanding path patterns (shell-style braces, directories, `*`/`?` wildcards) into
//! the global, ordered list of shards or files a source reads, and splitting that list between
//! data-parallel ranks ([`ShardSplit`]).
//!
//! Contract: the expansion order is deterministic (patterns in the order given, brace expansion
//! left to right, directory listings and wildcard matches sorted by name), so every rank and every
//! resumed run sees the same global list; a shard's index in that list is what
//! [`Position::shard`](super::stream::Position::shard) refers to. Rank `r` of `world` owns the
//! units whose global index `i` satisfies `i % world == r`: the ranks' parts are disjoint and
//! together cover the whole list. Expansion fails (instead of yielding an empty list) when a path
//! does not exist, nothing matches, or a pattern expands to more than a million paths.

use std::path::{Path, PathBuf};

use crate::error::DataError;

/// The largest number of shard paths a set of patterns may expand to.
const MAX_EXPANSION: usize = 1_000_000;

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
