//! MMBench-style multiple-choice TSVs (VLMEvalKit layout: `index, question, hint, A, B, ...,
//! answer, category, image (base64), l2-category, split`), read as pandas writes and reads them.
//!
//! Contract: only `question` is required in the header. A row with the wrong number of cells, no
//! options, an answer that is not one of its options, or an image cell that does not decode (or
//! refers to a row without an image) is reported in [`Loaded::problems`] and left out; missing
//! cells follow pandas' default NaN spellings ([`is_missing_cell`]).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

use super::{Loaded, McItem, malformed};
use crate::error::{BadKind, DataError, SampleError};
use crate::sample::ImageSource;

/// Whether a TSV cell is missing: what pandas reads as NaN by default, and LLaVA's `nan`/`none`
/// in any case.
pub fn is_missing_cell(cell: &str) -> bool {
    const PANDAS_NA: [&str; 19] = [
        "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
        "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
    ];
    PANDAS_NA.contains(&cell)
        || cell.eq_ignore_ascii_case("nan")
        || cell.eq_ignore_ascii_case("none")
}

/// Base64 decoding that accepts missing padding.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Image cells at most this long are references to another row's `index` (VLMEvalKit stores a
/// repeated image once and points the other rows at it).
const IMAGE_REFERENCE_MAX_LEN: usize = 64;

/// Loads an MMBench-style TSV: columns `index, question, hint, A, B, C, D (, E ...), answer,
/// category, image (base64), l2-category, split` (all but `question` optional). A row with a
/// missing column, an undecodable image or an answer that is not one of its options is a
/// problem.
pub fn load_mc_tsv(path: &Path) -> Result<Loaded<McItem>, DataError> {
    let file = path.display().to_string();
    let handle = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut records = TsvRecords::new(BufReader::new(handle));
    let header = match records.next() {
        Some((_, Ok(h))) => h,
        Some((line, Err(msg))) => {
            return Err(DataError::format(&file, format!("line {line}: {msg}")));
        }
        None => return Err(DataError::format(&file, "empty TSV file")),
    };
    let header: Vec<String> = header
        .into_iter()
        .map(|h| h.trim_start_matches('\u{feff}').to_string())
        .collect();
    let column = |name: &str| header.iter().position(|h| h == name);
    let question_col = column("question")
        .ok_or_else(|| DataError::format(&file, "TSV header has no `question` column"))?;
    let columns = McColumns {
        index: column("index"),
        question: question_col,
        hint: column("hint"),
        options: ('A'..='Z')
            .map_while(|letter| column(&letter.to_string()).map(|c| (letter, c)))
            .collect(),
        answer: column("answer"),
        category: column("category"),
        l2_category: column("l2-category"),
        split: column("split"),
        image: column("image"),
    };

    // First pass: parse rows, keeping image cells undecoded.
    let mut rows = Vec::new();
    let mut loaded = Loaded::default();
    for (line, record) in records {
        let cells = match record {
            Ok(cells) => cells,
            Err(msg) => {
                loaded
                    .problems
                    .push(malformed(&file, format!("line {line}"), &msg));
                continue;
            }
        };
        if cells.len() != header.len() {
            let key = columns.index.and_then(|c| cells.get(c)).cloned();
            let key = key.unwrap_or_else(|| format!("line {line}"));
            let msg = format!("row has {} cells, the header {}", cells.len(), header.len());
            loaded.problems.push(malformed(&file, key, &msg));
            continue;
        }
        let id = columns
            .index
            .map_or_else(|| format!("line {line}"), |c| cells[c].clone());
        rows.push((id, cells));
    }

    // Second pass: decode images (resolving references) and build the items.
    let mut images: HashMap<String, Result<Arc<Vec<u8>>, String>> = HashMap::new();
    if let Some(c) = columns.image {
        for (id, cells) in &rows {
            let cell = &cells[c];
            if !is_missing_cell(cell) && cell.len() > IMAGE_REFERENCE_MAX_LEN {
                images.insert(id.clone(), decode_base64_image(cell).map(Arc::new));
            }
        }
    }
    for (id, cells) in rows {
        match mc_item_from_row(&columns, &id, &cells, &images, &file) {
            Ok(item) => loaded.items.push(item),
            Err(e) => loaded.problems.push(e),
        }
    }
    Ok(loaded)
}

/// Column positions of a multiple-choice TSV.
struct McColumns {
    index: Option<usize>,
    question: usize,
    hint: Option<usize>,
    options: Vec<(char, usize)>,
    answer: Option<usize>,
    category: Option<usize>,
    l2_category: Option<usize>,
    split: Option<usize>,
    image: Option<usize>,
}

/// Builds one item from a TSV row.
fn mc_item_from_row(
    columns: &McColumns,
    id: &str,
    cells: &[String],
    images: &HashMap<String, Result<Arc<Vec<u8>>, String>>,
    file: &str,
) -> Result<McItem, SampleError> {
    let present = |c: Option<usize>| {
        c.map(|c| &cells[c])
            .filter(|s| !is_missing_cell(s))
            .cloned()
    };
    let mut options = Vec::new();
    for &(letter, c) in &columns.options {
        if is_missing_cell(&cells[c]) {
            break;
        }
        options.push((letter, cells[c].clone()));
    }
    if options.is_empty() {
        return Err(malformed(file, id, "question has no options"));
    }
    let answer = match present(columns.answer) {
        None => None,
        Some(a) => {
            let a = a.trim();
            match options
                .iter()
                .find(|(letter, _)| a.len() == 1 && a.starts_with(*letter))
            {
                Some((letter, _)) => Some(*letter),
                None => {
                    return Err(malformed(
                        file,
                        id,
                        &format!("answer {a:?} is not an option"),
                    ));
                }
            }
        }
    };
    let image = match present(columns.image) {
        None => None,
        Some(cell) => {
            let target = if cell.len() > IMAGE_REFERENCE_MAX_LEN {
                id
            } else {
                cell.trim()
            };
            let bytes = match images.get(target) {
                Some(Ok(bytes)) => bytes.clone(),
                Some(Err(msg)) => {
                    return Err(SampleError::new(
                        file,
                        id,
                        BadKind::CorruptImage,
                        msg.clone(),
                    ));
                }
                None => {
                    let msg = format!("image cell refers to row {target:?}, which has no image");
                    return Err(SampleError::new(file, id, BadKind::MissingImage, msg));
                }
            };
            Some(ImageSource::Bytes {
                bytes,
                name: format!("{file}:{id}"),
            })
        }
    };
    Ok(McItem {
        id: id.to_string(),
        question: cells[columns.question].clone(),
        hint: present(columns.hint),
        options,
        answer,
        image,
        category: present(columns.category),
        l2_category: present(columns.l2_category),
        split: present(columns.split),
    })
}

/// Decodes a base64 image cell (whitespace ignored, padding optional).
fn decode_base64_image(cell: &str) -> Result<Vec<u8>, String> {
    let compact: String = cell.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    match BASE64.decode(compact.as_bytes()) {
        Ok(bytes) if bytes.is_empty() => Err("empty base64 image".into()),
        Ok(bytes) => Ok(bytes),
        Err(e) => Err(format!("image cell is not valid base64: {e}")),
    }
}

/// Records of a tab-separated file as pandas writes it: a field starting with `"` is quoted (it may
/// hold tabs and newlines; `""` is a quote); other fields are taken as written. Blank lines are
/// skipped. Yields `(line number, cells)`; a quote left open at the end of the file is an error.
struct TsvRecords<R> {
    reader: R,
    line: u64,
}

impl<R: BufRead> TsvRecords<R> {
    fn new(reader: R) -> Self {
        TsvRecords { reader, line: 0 }
    }

    /// Reads one physical line without its line ending; `None` at end of file.
    fn read_line(&mut self) -> Option<Result<String, String>> {
        let mut bytes = Vec::new();
        match self.reader.read_until(b'\n', &mut bytes) {
            Ok(0) => None,
            Ok(_) => {
                self.line += 1;
                if bytes.last() == Some(&b'\n') {
                    bytes.pop();
                }
                if bytes.last() == Some(&b'\r') {
                    bytes.pop();
                }
                Some(String::from_utf8(bytes).map_err(|_| "line is not valid UTF-8".to_string()))
            }
            Err(e) => Some(Err(format!("read error: {e}"))),
        }
    }
}

impl<R: BufRead> Iterator for TsvRecords<R> {
    type Item = (u64, Result<Vec<String>, String>);

    fn next(&mut self) -> Option<Self::Item> {
        let first = loop {
            match self.read_line()? {
                Ok(line) if line.is_empty() => continue,
                Ok(line) => break line,
                Err(msg) => return Some((self.line, Err(msg))),
            }
        };
        let start = self.line;
        let mut cells = Vec::new();
        let mut cell = String::new();
        let mut text = first;
        let mut quoted = false;
        let mut at_start = true;
        loop {
            let mut chars = text.chars().peekable();
            while let Some(c) = chars.next() {
                if quoted {
                    if c == '"' {
                        if chars.peek() == Some(&'"') {
                            chars.next();
                            cell.push('"');
                        } else {
                            quoted = false;
                        }
                    } else {
                        cell.push(c);
                    }
                } else if c == '\t' {
                    cells.push(std::mem::take(&mut cell));
                    at_start = true;
                    continue;
                } else if c == '"' && at_start {
                    quoted = true;
                } else {
                    cell.push(c);
                }
                at_start = false;
            }
            if !quoted {
                cells.push(cell);
                return Some((start, Ok(cells)));
            }
            // The quoted field goes on over the line break.
            cell.push('\n');
            text = match self.read_line() {
                Some(Ok(next)) => next,
                Some(Err(msg)) => return Some((start, Err(msg))),
                None => return Some((start, Err("file ends inside a quoted field".into()))),
            };
        }
    }
}
