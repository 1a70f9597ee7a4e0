//! The per-sample answers file: one JSON line per evaluated item, appended and flushed as soon
//! as the answer exists, so that an interrupted evaluation loses at most the batch in flight.
//!
//! A rerun with the same file reads it back ([`AnswerStore::open`]) and skips every item that
//! already has a line: that is how evaluation resumes. Each line carries the item's
//! *fingerprint* (model hash, prompt, images, generation settings; see
//! [`crate::engine::request_fingerprint`]); an item whose stored fingerprint differs from the
//! current one means the file was written by another model or with other settings, and the run
//! stops instead of mixing answers.
//!
//! Items that failed (an image that does not decode, a prompt the tokenizer cannot encode) get a
//! line too, with a [`Failure`] instead of an answer; they count as done (the failure is a
//! property of the data) and are excluded from the scores. To retry them, remove their lines.
//!
//! An interrupted write can leave a last line without its newline; opening the file cuts such a
//! partial line off (with a warning) so that the next line starts cleanly. Any other line that is
//! not a valid record is an error naming the file and line.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::EvalError;

/// Why an item could not be evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The evaluation file entry is unusable: a question without an annotation, a row with a
    /// missing column, a record that is not valid JSON, an answer that is not an option.
    Annotation,
    /// The item's image is missing or does not decode.
    Image,
    /// The prompt could not be built or encoded (e.g. too many `<image>` markers).
    Prompt,
    /// The model rejected the item (e.g. a sequence longer than its context).
    Model,
}

/// One item that was left out of the scores, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// What kind of problem it is.
    pub kind: FailureKind,
    /// Details, naming the file and entry.
    pub message: String,
}

/// One line of the answers file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnswerRecord {
    /// The item's key, `benchmark/id` (unique within a report).
    pub key: String,
    /// The item's settings fingerprint (16 hex digits).
    pub fingerprint: String,
    /// The decoded generation, cut at the stop token (absent for failed items).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// The answer after the benchmark's post-processing; this is what is scored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    /// Why the item failed, for failed items.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// Prompt positions (text and vision tokens).
    #[serde(default)]
    pub prompt_tokens: usize,
    /// Generated tokens (the stop token included).
    #[serde(default)]
    pub generated_tokens: usize,
    /// Why generation stopped (`Stop`, `Length`), for answered items.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish: Option<String>,
}

/// The answers file, open for appending, with the records it held when opened plus those
/// appended since.
#[derive(Debug)]
pub struct AnswerStore {
    path: PathBuf,
    file: File,
    records: HashMap<String, AnswerRecord>,
    lines: usize,
}

impl AnswerStore {
    /// Opens (creating it and its directory if needed) the answers file at `path` and reads the
    /// records already in it.
    pub fn open(path: &Path) -> Result<Self, EvalError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| EvalError::io(dir, e))?;
        }
        let mut records = HashMap::new();
        let mut lines = 0;
        if path.exists() {
            let (recs, complete_len) = read_records(path)?;
            let len = std::fs::metadata(path)
                .map_err(|e| EvalError::io(path, e))?
                .len();
            if complete_len < len {
                log::warn!(
                    "{}: dropping an incomplete last line ({} bytes) left by an interrupted run",
                    path.display(),
                    len - complete_len
                );
                let f = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|e| EvalError::io(path, e))?;
                f.set_len(complete_len)
                    .map_err(|e| EvalError::io(path, e))?;
            }
            lines = recs.len();
            for r in recs {
                records.insert(r.key.clone(), r);
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| EvalError::io(path, e))?;
        Ok(AnswerStore {
            path: path.to_path_buf(),
            file,
            records,
            lines,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The record of `key`, if the file has one.
    pub fn get(&self, key: &str) -> Option<&AnswerRecord> {
        self.records.get(key)
    }

    /// Number of distinct keys recorded.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Number of lines in the file.
    pub fn lines(&self) -> usize {
        self.lines
    }

    /// Appends one record as a JSON line and flushes it to the file.
    pub fn append(&mut self, record: AnswerRecord) -> Result<(), EvalError> {
        let mut line = serde_json::to_string(&record)
            .map_err(|e| EvalError::format(self.path.display(), e.to_string()))?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.flush())
            .map_err(|e| EvalError::io(&self.path, e))?;
        self.lines += 1;
        self.records.insert(record.key.clone(), record);
        Ok(())
    }
}

/// Reads the complete lines of an answers file: the records and the byte length of the
/// newline-terminated part.
fn read_records(path: &Path) -> Result<(Vec<AnswerRecord>, u64), EvalError> {
    let file = File::open(path).map_err(|e| EvalError::io(path, e))?;
    let mut reader = BufReader::new(file);
    let mut records = Vec::new();
    let mut complete = 0u64;
    let mut line = String::new();
    let mut number = 0usize;
    loop {
        line.clear();
        let n = reader
            .read_line(&mut line)
            .map_err(|e| EvalError::io(path, e))?;
        if n == 0 {
            break;
        }
        number += 1;
        if !line.ends_with('\n') {
            // An interrupted write: the caller truncates it.
            break;
        }
        complete += n as u64;
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        let record: AnswerRecord = serde_json::from_str(text).map_err(|e| {
            EvalError::format(
                format!("{}:{number}", path.display()),
                format!("not an answer record: {e}"),
            )
        })?;
        records.push(record);
    }
    Ok((records, complete))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(key: &str) -> AnswerRecord {
        AnswerRecord {
            key: key.into(),
            fingerprint: "00".into(),
            output: Some("x".into()),
            answer: Some("x".into()),
            failure: None,
            prompt_tokens: 3,
            generated_tokens: 1,
            finish: Some("Stop".into()),
        }
    }

    #[test]
    fn appends_reopen_and_repair_a_partial_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/answers.jsonl");
        {
            let mut s = AnswerStore::open(&path).unwrap();
            s.append(rec("a/1")).unwrap();
            s.append(rec("a/2")).unwrap();
        }
        // Simulate an interrupted write.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"key\":\"a/3\",\"finger").unwrap();
        drop(f);
        let mut s = AnswerStore::open(&path).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s.get("a/2"), Some(&rec("a/2")));
        s.append(rec("a/3")).unwrap();
        drop(s);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3);
        assert!(text.lines().all(|l| l.starts_with("{\"key\"")));
    }

    #[test]
    fn a_corrupt_middle_line_is_an_error_naming_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("answers.jsonl");
        std::fs::write(&path, "not json\n{}\n").unwrap();
        let err = AnswerStore::open(&path).unwrap_err().to_string();
        assert!(err.contains("answers.jsonl:1"), "{err}");
    }
}
