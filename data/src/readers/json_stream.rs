//! Constant-memory streaming over JSON record files.
//!
//! Two layouts are read the same way:
//!
//! * a top-level JSON **array** (`[ {...}, {...}, ... ]`), such as LLaVA's 1 GB
//!   `llava_v1_5_mix665k.json`. The file is never loaded whole: a small scanner walks the bytes,
//!   tracking strings, escapes and bracket depth, to find where each element ends, and only that
//!   element is handed to `serde_json`;
//! * JSON **lines** (one record per line; blank lines are ignored).
//!
//! Every element comes out as `(index, Result<T, SampleError>)`, where `index` counts elements from
//! 0 in file order. A malformed element or line becomes a [`SampleError`] of kind
//! [`BadKind::MalformedRecord`] naming the file and the line, and reading goes on with the next
//! element. A file that ends in the middle of an element (a truncated download) ends the stream
//! with one error item instead of a panic.
//!
//! Resuming and sharding are index based: [`StreamOptions::start`] skips every element before an
//! index, and [`StreamOptions::rank`]/[`StreamOptions::world`] keep only the elements whose index
//! is `rank` modulo `world`. Skipped elements are scanned but neither buffered nor parsed.
//!
//! Memory is bounded by the read buffer plus the largest *kept* element; elements above
//! [`StreamOptions::max_element_bytes`] are reported and never buffered past that bound.
//! [`JsonStream::peak_buffer_bytes`] reports the largest element buffer used so far.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::marker::PhantomData;
use std::path::Path;

use serde::de::DeserializeOwned;

use crate::error::{BadKind, DataError, SampleError};

/// Default bound on one element's size (64 MiB); larger elements are reported and skipped.
pub const DEFAULT_MAX_ELEMENT_BYTES: usize = 64 << 20;

/// Capacity of the read buffer placed in front of a file.
const READ_BUFFER_BYTES: usize = 64 << 10;

/// The UTF-8 byte-order mark, skipped at the start of a file.
const UTF8_BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// How the records of a JSON file are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonLayout {
    /// One top-level array whose elements are the records.
    Array,
    /// One record per line (JSONL); blank lines are ignored.
    Lines,
}

impl JsonLayout {
    /// Detects the layout of a file from its first non-whitespace byte: `[` means
    /// [`JsonLayout::Array`], anything else (including an empty file) [`JsonLayout::Lines`].
    pub fn detect(path: &Path) -> Result<JsonLayout, DataError> {
        let file = File::open(path).map_err(|e| DataError::io(path, e))?;
        let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, file);
        let first = skip_bom_and_whitespace(&mut reader).map_err(|e| DataError::io(path, e))?;
        Ok(layout_from_first_byte(first))
    }
}

/// Which elements a stream yields, and how large one may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamOptions {
    /// Index of the first element to yield (for resuming); earlier elements are skipped.
    pub start: u64,
    /// This reader's rank: only elements with `index % world == rank` are yielded.
    pub rank: usize,
    /// Number of ranks sharing the file (1 = no sharding).
    pub world: usize,
    /// Elements larger than this many bytes are reported as bad and not buffered.
    pub max_element_bytes: usize,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            start: 0,
            rank: 0,
            world: 1,
            max_element_bytes: DEFAULT_MAX_ELEMENT_BYTES,
        }
    }
}

impl StreamOptions {
    /// Options that yield the elements of `rank` among `world` ranks.
    pub fn sharded(rank: usize, world: usize) -> Self {
        StreamOptions {
            rank,
            world,
            ..StreamOptions::default()
        }
    }

    /// Checks that `rank < world` and that the element bound is positive.
    pub fn validate(&self) -> Result<(), DataError> {
        if self.world == 0 || self.rank >= self.world {
            return Err(DataError::Config(format!(
                "stream rank {} is not below world size {}",
                self.rank, self.world
            )));
        }
        if self.max_element_bytes == 0 {
            return Err(DataError::Config(
                "max_element_bytes must be positive".into(),
            ));
        }
        Ok(())
    }

    /// Whether the element at `index` is yielded under these options.
    pub fn owns(&self, index: u64) -> bool {
        index >= self.start && index % self.world as u64 == self.rank as u64
    }
}

/// What the scanner found for one element.
enum Outcome {
    /// A complete element (its bytes are in the buffer when it is owned).
    Complete,
    /// A complete element larger than the bound (its bytes were not kept).
    TooLarge,
    /// An empty element, as in `[1,,2]` or a trailing comma.
    Empty,
    /// The file ended inside the element.
    Truncated,
    /// Bytes after the closing `]` of the array.
    TrailingData,
    /// Reading the file failed.
    Io(std::io::Error),
}

/// One scanned element: its index, the line it starts on and what was found.
struct Scanned {
    index: u64,
    line: u64,
    outcome: Outcome,
}

/// Where the array scanner is between elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ArrayPhase {
    /// Just after the opening `[`.
    First,
    /// Just after a `,`.
    AfterComma,
    /// After the closing `]`.
    Closed,
    /// Nothing more to read.
    Finished,
}

/// A streaming reader of JSON records; an iterator of `(index, Result<T, SampleError>)`.
///
/// `T` is any deserializable type; with `serde_json::Value` every well-formed element is accepted.
pub struct JsonStream<T = serde_json::Value> {
    reader: Box<dyn BufRead + Send>,
    file: String,
    layout: JsonLayout,
    options: StreamOptions,
    /// The current element's bytes (only for elements that are yielded).
    buffer: Vec<u8>,
    /// The largest `buffer` length so far.
    peak: usize,
    /// Index the next element will get.
    next_index: u64,
    /// Current line (1-based).
    line: u64,
    phase: ArrayPhase,
    /// Lines layout: end of file reached.
    eof: bool,
    _record: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> JsonStream<T> {
    /// Opens a file and detects its layout (see [`JsonLayout::detect`]).
    pub fn open(path: &Path, options: StreamOptions) -> Result<Self, DataError> {
        Self::open_with_layout(path, None, options)
    }

    /// Opens a file with a given layout, or detects it when `layout` is `None`.
    pub fn open_with_layout(
        path: &Path,
        layout: Option<JsonLayout>,
        options: StreamOptions,
    ) -> Result<Self, DataError> {
        let file = File::open(path).map_err(|e| DataError::io(path, e))?;
        Self::from_reader(file, &path.display().to_string(), layout, options)
    }

    /// Streams from any reader; `name` is the file name used in errors.
    pub fn from_reader<R: Read + Send + 'static>(
        reader: R,
        name: &str,
        layout: Option<JsonLayout>,
        options: StreamOptions,
    ) -> Result<Self, DataError> {
        options.validate()?;
        let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, reader);
        // Leading whitespace is skipped here; count its newlines so line numbers stay right.
        let mut line = 1;
        let first = skip_leading(&mut reader, &mut line).map_err(|e| DataError::io(name, e))?;
        let layout = layout.unwrap_or_else(|| layout_from_first_byte(first));
        let mut phase = ArrayPhase::Finished;
        if layout == JsonLayout::Array {
            match first {
                Some(b'[') => {
                    reader.consume(1);
                    phase = ArrayPhase::First;
                }
                Some(other) => {
                    return Err(DataError::format(
                        name,
                        format!(
                            "expected a JSON array starting with '[', found {:?}",
                            other as char
                        ),
                    ));
                }
                None => {
                    return Err(DataError::format(name, "empty file, expected a JSON array"));
                }
            }
        }
        Ok(JsonStream {
            reader: Box::new(reader),
            file: name.to_string(),
            layout,
            options,
            buffer: Vec::new(),
            peak: 0,
            next_index: 0,
            line,
            phase,
            eof: false,
            _record: PhantomData,
        })
    }

    /// The layout being read.
    pub fn layout(&self) -> JsonLayout {
        self.layout
    }

    /// The file name used in errors.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// The index the next scanned element will get; after the stream ends, the element count
    /// (plus one for a truncated last element).
    pub fn position(&self) -> u64 {
        self.next_index
    }

    /// The largest number of bytes held for one element so far (the stream's memory bound,
    /// besides a fixed 64 KiB read buffer).
    pub fn peak_buffer_bytes(&self) -> usize {
        self.peak
    }

    /// Turns a scanned element into the item to yield.
    fn finish(&mut self, scanned: Scanned) -> (u64, Result<T, SampleError>) {
        let key = match self.layout {
            JsonLayout::Array => format!("element {} (line {})", scanned.index, scanned.line),
            JsonLayout::Lines => format!("line {}", scanned.line),
        };
        let bad = |kind: BadKind, msg: String| Err(SampleError::new(&self.file, &key, kind, msg));
        let result = match scanned.outcome {
            Outcome::Complete => serde_json::from_slice::<T>(&self.buffer).or_else(|e| {
                bad(
                    BadKind::MalformedRecord,
                    format!("invalid JSON record: {e}"),
                )
            }),
            Outcome::TooLarge => bad(
                BadKind::Invalid,
                format!(
                    "record larger than {} bytes",
                    self.options.max_element_bytes
                ),
            ),
            Outcome::Empty => bad(BadKind::MalformedRecord, "empty array element".into()),
            Outcome::Truncated => bad(
                BadKind::MalformedRecord,
                "file ends inside this record (truncated)".into(),
            ),
            Outcome::TrailingData => bad(
                BadKind::MalformedRecord,
                "data after the closing ']' of the array".into(),
            ),
            Outcome::Io(e) => bad(BadKind::MalformedRecord, format!("read error: {e}")),
        };
        self.buffer.clear();
        (scanned.index, result)
    }

    /// Scans the next array element, or returns `None` at the end of the array.
    fn scan_array_element(&mut self) -> Option<Scanned> {
        // Skip whitespace and separators up to the start of an element.
        loop {
            if self.phase == ArrayPhase::Finished {
                return None;
            }
            let byte = match peek_byte(&mut *self.reader) {
                Ok(b) => b,
                Err(e) => return Some(self.stop(Outcome::Io(e))),
            };
            let index = self.next_index;
            match (self.phase, byte) {
                (ArrayPhase::Closed, None) => {
                    self.phase = ArrayPhase::Finished;
                    return None;
                }
                (_, None) => return Some(self.stop(Outcome::Truncated)),
                (_, Some(b' ' | b'\t' | b'\r')) => self.reader.consume(1),
                (_, Some(b'\n')) => {
                    self.line += 1;
                    self.reader.consume(1);
                }
                (ArrayPhase::Closed, Some(_)) => return Some(self.stop(Outcome::TrailingData)),
                (ArrayPhase::First, Some(b']')) => {
                    self.reader.consume(1);
                    self.phase = ArrayPhase::Closed;
                }
                (ArrayPhase::AfterComma, Some(b']')) => {
                    self.reader.consume(1);
                    self.phase = ArrayPhase::Closed;
                    self.next_index += 1;
                    return Some(Scanned {
                        index,
                        line: self.line,
                        outcome: Outcome::Empty,
                    });
                }
                (_, Some(b',')) => {
                    self.reader.consume(1);
                    self.phase = ArrayPhase::AfterComma;
                    self.next_index += 1;
                    return Some(Scanned {
                        index,
                        line: self.line,
                        outcome: Outcome::Empty,
                    });
                }
                (_, Some(_)) => break,
            }
        }
        // Scan the element up to the ',' or ']' that ends it at depth 0 outside strings.
        let index = self.next_index;
        let start_line = self.line;
        let owned = self.options.owns(index);
        let mut overflow = false;
        let mut depth: u64 = 0;
        let mut in_string = false;
        let mut escaped = false;
        loop {
            let chunk = match self.reader.fill_buf() {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Some(self.stop(Outcome::Io(e))),
            };
            if chunk.is_empty() {
                self.next_index += 1;
                self.phase = ArrayPhase::Finished;
                return Some(Scanned {
                    index,
                    line: start_line,
                    outcome: Outcome::Truncated,
                });
            }
            let mut end = None;
            let mut newlines = 0;
            for (i, &b) in chunk.iter().enumerate() {
                if b == b'\n' {
                    newlines += 1;
                }
                if in_string {
                    if escaped {
                        escaped = false;
                    } else if b == b'\\' {
                        escaped = true;
                    } else if b == b'"' {
                        in_string = false;
                    }
                    continue;
                }
                match b {
                    b'"' => in_string = true,
                    b'{' | b'[' => depth += 1,
                    b'}' => depth = depth.saturating_sub(1),
                    b']' if depth > 0 => depth -= 1,
                    b',' | b']' if depth == 0 => {
                        end = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            let take = end.unwrap_or(chunk.len());
            if owned {
                let max = self.options.max_element_bytes;
                keep(
                    &mut self.buffer,
                    &mut self.peak,
                    max,
                    &chunk[..take],
                    &mut overflow,
                );
            }
            self.line += newlines;
            match end {
                None => self.reader.consume(take),
                Some(i) => {
                    let closing = chunk[i] == b']';
                    self.reader.consume(i + 1);
                    self.phase = if closing {
                        ArrayPhase::Closed
                    } else {
                        ArrayPhase::AfterComma
                    };
                    self.next_index += 1;
                    let outcome = if overflow {
                        Outcome::TooLarge
                    } else {
                        Outcome::Complete
                    };
                    return Some(Scanned {
                        index,
                        line: start_line,
                        outcome,
                    });
                }
            }
        }
    }

    /// Scans the next non-blank line, or returns `None` at the end of the file.
    fn scan_line(&mut self) -> Option<Scanned> {
        loop {
            if self.eof {
                return None;
            }
            let index = self.next_index;
            let line = self.line;
            let owned = self.options.owns(index);
            let mut overflow = false;
            let mut blank = true;
            loop {
                let chunk = match self.reader.fill_buf() {
                    Ok(c) => c,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        self.eof = true;
                        self.next_index += 1;
                        return Some(Scanned {
                            index,
                            line,
                            outcome: Outcome::Io(e),
                        });
                    }
                };
                if chunk.is_empty() {
                    self.eof = true;
                    break;
                }
                let newline = chunk.iter().position(|&b| b == b'\n');
                let take = newline.unwrap_or(chunk.len());
                if blank && chunk[..take].iter().any(|b| !b.is_ascii_whitespace()) {
                    blank = false;
                }
                if owned {
                    let max = self.options.max_element_bytes;
                    keep(
                        &mut self.buffer,
                        &mut self.peak,
                        max,
                        &chunk[..take],
                        &mut overflow,
                    );
                }
                match newline {
                    None => self.reader.consume(take),
                    Some(i) => {
                        self.reader.consume(i + 1);
                        self.line += 1;
                        break;
                    }
                }
            }
            if blank {
                self.buffer.clear();
                continue;
            }
            self.next_index += 1;
            let outcome = if overflow {
                Outcome::TooLarge
            } else {
                Outcome::Complete
            };
            return Some(Scanned {
                index,
                line,
                outcome,
            });
        }
    }

    /// Ends the array stream with an error outcome attributed to the next index.
    fn stop(&mut self, outcome: Outcome) -> Scanned {
        let index = self.next_index;
        self.next_index += 1;
        self.phase = ArrayPhase::Finished;
        Scanned {
            index,
            line: self.line,
            outcome,
        }
    }
}

impl<T: DeserializeOwned> Iterator for JsonStream<T> {
    type Item = (u64, Result<T, SampleError>);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let scanned = match self.layout {
                JsonLayout::Array => self.scan_array_element()?,
                JsonLayout::Lines => self.scan_line()?,
            };
            if self.options.owns(scanned.index) {
                return Some(self.finish(scanned));
            }
            self.buffer.clear();
        }
    }
}

/// Appends bytes of a kept element to `buffer`, or records an overflow past `max` bytes (after
/// which nothing more is kept for this element).
fn keep(buffer: &mut Vec<u8>, peak: &mut usize, max: usize, bytes: &[u8], overflow: &mut bool) {
    if *overflow {
        return;
    }
    if buffer.len() + bytes.len() > max {
        *overflow = true;
        buffer.clear();
        return;
    }
    buffer.extend_from_slice(bytes);
    *peak = (*peak).max(buffer.len());
}

/// Layout implied by the first non-whitespace byte of a file.
fn layout_from_first_byte(first: Option<u8>) -> JsonLayout {
    if first == Some(b'[') {
        JsonLayout::Array
    } else {
        JsonLayout::Lines
    }
}

/// Skips a UTF-8 BOM and whitespace; returns the next byte without consuming it.
fn skip_bom_and_whitespace<R: BufRead>(reader: &mut R) -> std::io::Result<Option<u8>> {
    let mut line = 1;
    skip_leading(reader, &mut line)
}

/// Skips a UTF-8 BOM and whitespace, counting newlines into `line`; returns the next byte.
fn skip_leading<R: BufRead>(reader: &mut R, line: &mut u64) -> std::io::Result<Option<u8>> {
    let head = reader.fill_buf()?;
    if head.starts_with(&UTF8_BOM) {
        reader.consume(UTF8_BOM.len());
    }
    loop {
        match peek_byte(reader)? {
            Some(b'\n') => {
                *line += 1;
                reader.consume(1);
            }
            Some(b' ' | b'\t' | b'\r') => reader.consume(1),
            other => return Ok(other),
        }
    }
}

/// The next byte of a reader without consuming it; `None` at end of file.
fn peek_byte<R: BufRead + ?Sized>(reader: &mut R) -> std::io::Result<Option<u8>> {
    loop {
        match reader.fill_buf() {
            Ok(chunk) => return Ok(chunk.first().copied()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}
