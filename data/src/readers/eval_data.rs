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

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::de::{DeserializeOwned, Deserializer};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::json_stream::{JsonLayout, JsonStream, StreamOptions};
use crate::error::{BadKind, DataError, SampleError};
use crate::paths::{OutsideRoot, check_inside, resolve_inside};
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
// COCO captions
// ---------------------------------------------------------------------------------------------

/// The reference captions of one COCO image.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptionRefs {
    /// The image id.
    pub image_id: Id,
    /// `file_name` from the `images` list, when present.
    pub file_name: Option<String>,
    /// The image file, when a locator was given: its directory joined with `file_name`, or the
    /// locator's pattern when the file has no `file_name`.
    pub image: Option<PathBuf>,
    /// The reference captions, as written (untrimmed).
    pub refs: Vec<String>,
}

#[derive(Deserialize)]
struct CocoFile {
    #[serde(default)]
    images: Option<Vec<Entry<CocoImage>>>,
    annotations: Vec<Entry<CocoCaption>>,
}

#[derive(Deserialize)]
struct CocoImage {
    id: Id,
    #[serde(default)]
    file_name: Option<String>,
}

#[derive(Deserialize)]
struct CocoCaption {
    image_id: Id,
    caption: String,
}

/// Loads COCO caption annotations (`captions_val2014.json`, the Karpathy test GT) into per-image
/// references, in the order of the `images` list (or of first appearance when there is none).
/// Images without captions and captions of unknown images are reported as problems.
pub fn load_coco_captions(
    path: &Path,
    images: Option<&ImageLocator>,
) -> Result<Loaded<CaptionRefs>, DataError> {
    let parsed: CocoFile = read_json(path)?;
    let file = path.display().to_string();
    let mut loaded = Loaded::default();
    let mut order: Vec<Id> = Vec::new();
    let mut refs: HashMap<Id, (Option<String>, Vec<String>)> = HashMap::new();
    let listed = parsed.images.is_some();
    for (i, entry) in parsed.images.into_iter().flatten().enumerate() {
        match entry.0 {
            Ok(image) => {
                if refs.contains_key(&image.id) {
                    loaded
                        .problems
                        .push(malformed(&file, &image.id, "duplicate image id"));
                    continue;
                }
                order.push(image.id.clone());
                refs.insert(image.id, (image.file_name, Vec::new()));
            }
            Err(msg) => loaded
                .problems
                .push(malformed(&file, format!("images[{i}]"), &msg)),
        }
    }
    for (i, entry) in parsed.annotations.into_iter().enumerate() {
        let caption = match entry.0 {
            Ok(c) => c,
            Err(msg) => {
                loaded
                    .problems
                    .push(malformed(&file, format!("annotations[{i}]"), &msg));
                continue;
            }
        };
        match refs.get_mut(&caption.image_id) {
            Some((_, list)) => list.push(caption.caption),
            None if !listed => {
                order.push(caption.image_id.clone());
                refs.insert(caption.image_id, (None, vec![caption.caption]));
            }
            None => loaded.problems.push(malformed(
                &file,
                format!("annotations[{i}]"),
                &format!(
                    "caption of image {} that is not in `images`",
                    caption.image_id
                ),
            )),
        }
    }
    for image_id in order {
        let Some((file_name, captions)) = refs.remove(&image_id) else {
            continue;
        };
        if captions.is_empty() {
            loaded
                .problems
                .push(malformed(&file, &image_id, "image has no caption"));
            continue;
        }
        let image = match images.map(|loc| match &file_name {
            Some(name) => loc.file_inside(name),
            None => loc.locate_inside(&image_id),
        }) {
            None => None,
            Some(Ok(image)) => Some(image),
            Some(Err(e)) => {
                loaded.problems.push(outside(&file, &image_id, &e));
                continue;
            }
        };
        loaded.items.push(CaptionRefs {
            image_id,
            file_name,
            image,
            refs: captions,
        });
    }
    Ok(loaded)
}

// ---------------------------------------------------------------------------------------------
// VQA
// ---------------------------------------------------------------------------------------------

/// One VQA question with its ground truth.
#[derive(Debug, Clone, PartialEq)]
pub struct VqaQuestion {
    /// The question id (echoed in results files).
    pub question_id: Id,
    /// The image id.
    pub image_id: Id,
    /// The question text.
    pub question: String,
    /// The image file.
    pub image: PathBuf,
    /// The ground-truth answers (10 for VQAv2/TextVQA/VizWiz/OK-VQA), as written; empty when no
    /// annotations were given (test splits).
    pub answers: Vec<String>,
    /// `multiple_choice_answer`, when annotated.
    pub multiple_choice_answer: Option<String>,
    /// `question_type`, when annotated.
    pub question_type: Option<String>,
    /// `answer_type` (`yes/no`, `number`, `other`), when annotated.
    pub answer_type: Option<String>,
}

#[derive(Deserialize)]
struct VqaQuestionsFile {
    questions: Vec<Entry<VqaQuestionEntry>>,
}

#[derive(Deserialize)]
struct VqaQuestionEntry {
    question_id: Id,
    image_id: Id,
    question: String,
}

#[derive(Deserialize)]
struct VqaAnnotationsFile {
    annotations: Vec<Entry<VqaAnnotationEntry>>,
}

#[derive(Deserialize)]
struct VqaAnnotationEntry {
    question_id: Id,
    answers: Vec<AnswerEntry>,
    #[serde(default)]
    multiple_choice_answer: Option<String>,
    #[serde(default)]
    question_type: Option<String>,
    #[serde(default)]
    answer_type: Option<String>,
}

/// A VQA answer: `{answer, answer_confidence, answer_id}` or a bare string.
#[derive(Deserialize)]
#[serde(untagged)]
enum AnswerEntry {
    Object { answer: String },
    Text(String),
}

impl AnswerEntry {
    fn into_text(self) -> String {
        match self {
            AnswerEntry::Object { answer } | AnswerEntry::Text(answer) => answer,
        }
    }
}

/// Loads a VQA questions file (`{questions: [...]}`: VQAv2 and the OpenFlamingo VQA-format
/// TextVQA/OK-VQA/VizWiz conversions) and, when given, its annotations file
/// (`{annotations: [...]}`), joined on `question_id`. With annotations, a question without one (and
/// an annotation without a question) is reported as a problem and left out.
pub fn load_vqa(
    questions: &Path,
    annotations: Option<&Path>,
    images: &ImageLocator,
) -> Result<Loaded<VqaQuestion>, DataError> {
    let qfile = questions.display().to_string();
    let parsed: VqaQuestionsFile = read_json(questions)?;
    let mut loaded = Loaded::default();
    let mut truth: Option<(String, HashMap<Id, VqaAnnotationEntry>)> = None;
    if let Some(apath) = annotations {
        let afile = apath.display().to_string();
        let parsed: VqaAnnotationsFile = read_json(apath)?;
        let mut by_question = HashMap::new();
        for (i, entry) in parsed.annotations.into_iter().enumerate() {
            match entry.0 {
                Ok(a) if by_question.contains_key(&a.question_id) => {
                    loaded
                        .problems
                        .push(malformed(&afile, &a.question_id, "duplicate annotation"));
                }
                Ok(a) => {
                    by_question.insert(a.question_id.clone(), a);
                }
                Err(msg) => {
                    loaded
                        .problems
                        .push(malformed(&afile, format!("annotations[{i}]"), &msg))
                }
            }
        }
        truth = Some((afile, by_question));
    }
    let mut seen = HashSet::new();
    for (i, entry) in parsed.questions.into_iter().enumerate() {
        let q = match entry.0 {
            Ok(q) => q,
            Err(msg) => {
                loaded
                    .problems
                    .push(malformed(&qfile, format!("questions[{i}]"), &msg));
                continue;
            }
        };
        if !seen.insert(q.question_id.clone()) {
            loaded
                .problems
                .push(malformed(&qfile, &q.question_id, "duplicate question id"));
            continue;
        }
        let image = match images.locate_inside(&q.image_id) {
            Ok(image) => image,
            Err(e) => {
                if let Some((_, by_question)) = truth.as_mut() {
                    by_question.remove(&q.question_id);
                }
                loaded.problems.push(outside(&qfile, &q.question_id, &e));
                continue;
            }
        };
        let mut item = VqaQuestion {
            image,
            question_id: q.question_id,
            image_id: q.image_id,
            question: q.question,
            answers: Vec::new(),
            multiple_choice_answer: None,
            question_type: None,
            answer_type: None,
        };
        if let Some((_, by_question)) = truth.as_mut() {
            let Some(a) = by_question.remove(&item.question_id) else {
                loaded.problems.push(malformed(
                    &qfile,
                    &item.question_id,
                    "question has no annotation",
                ));
                continue;
            };
            item.answers = a.answers.into_iter().map(AnswerEntry::into_text).collect();
            item.multiple_choice_answer = a.multiple_choice_answer;
            item.question_type = a.question_type;
            item.answer_type = a.answer_type;
        }
        loaded.items.push(item);
    }
    if let Some((afile, orphans)) = truth {
        let mut orphans: Vec<Id> = orphans.into_keys().collect();
        orphans.sort();
        for id in orphans {
            loaded
                .problems
                .push(malformed(&afile, &id, "annotation has no question"));
        }
    }
    Ok(loaded)
}

#[derive(Deserialize)]
struct TextVqaFile {
    data: Vec<Entry<TextVqaEntry>>,
}

#[derive(Deserialize)]
struct TextVqaEntry {
    question_id: Id,
    image_id: Id,
    question: String,
    #[serde(default)]
    answers: Option<Vec<String>>,
}

/// Loads an official TextVQA file (`TextVQA_0.5.1_{split}.json`, `{data: [...]}` with a list of
/// answer strings per question, absent on test); images are located by `image_id` (use the
/// pattern `{id}.jpg` in `train_images/`).
pub fn load_textvqa(path: &Path, images: &ImageLocator) -> Result<Loaded<VqaQuestion>, DataError> {
    let file = path.display().to_string();
    let parsed: TextVqaFile = read_json(path)?;
    let mut loaded = Loaded::default();
    for (i, entry) in parsed.data.into_iter().enumerate() {
        match entry.0 {
            Ok(q) => loaded.items.push(VqaQuestion {
                image: match images.locate_inside(&q.image_id) {
                    Ok(image) => image,
                    Err(e) => {
                        loaded.problems.push(outside(&file, &q.question_id, &e));
                        continue;
                    }
                },
                question_id: q.question_id,
                image_id: q.image_id,
                question: q.question,
                answers: q.answers.unwrap_or_default(),
                multiple_choice_answer: None,
                question_type: None,
                answer_type: None,
            }),
            Err(msg) => loaded
                .problems
                .push(malformed(&file, format!("data[{i}]"), &msg)),
        }
    }
    Ok(loaded)
}

// ---------------------------------------------------------------------------------------------
// POPE
// ---------------------------------------------------------------------------------------------

/// One POPE question.
#[derive(Debug, Clone, PartialEq)]
pub struct PopeItem {
    /// The question id.
    pub question_id: Id,
    /// The image file (`image` joined to the image directory).
    pub image: PathBuf,
    /// The question (`text`, or `question` in other copies).
    pub question: String,
    /// The label, `true` for "yes"; `None` in LLaVA's question files, which carry no label.
    pub label: Option<bool>,
    /// The subset (`random`, `popular`, `adversarial`): the record's `category`, else the default.
    pub category: Option<String>,
}

/// Loads a POPE file: the original RUCAIBox JSONL (`question_id, image, text, label`) or LLaVA's
/// question JSONL (with `category`, no label). `default_category` tags records without one.
pub fn load_pope(
    path: &Path,
    image_dir: &Path,
    default_category: Option<&str>,
) -> Result<Loaded<PopeItem>, DataError> {
    let file = path.display().to_string();
    let mut loaded = Loaded::default();
    for (index, record) in JsonStream::<Value>::open(path, StreamOptions::default())? {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                loaded.problems.push(e);
                continue;
            }
        };
        match pope_item(&record, image_dir, default_category) {
            // An empty directory: images are not located (scoring opens none).
            Ok(item) if image_dir.as_os_str().is_empty() => loaded.items.push(item),
            Ok(item) => match check_inside(image_dir, &item.image, false) {
                Ok(_) => loaded.items.push(item),
                Err(e) => loaded.problems.push(outside(&file, &item.question_id, &e)),
            },
            Err(msg) => {
                let key = record.get("question_id").and_then(Id::from_value);
                let key = key.map_or_else(|| format!("element {index}"), |k| k.to_string());
                loaded.problems.push(malformed(&file, key, &msg));
            }
        }
    }
    Ok(loaded)
}

/// Reads one POPE record.
fn pope_item(record: &Value, image_dir: &Path, category: Option<&str>) -> Result<PopeItem, String> {
    let question_id = record
        .get("question_id")
        .and_then(Id::from_value)
        .ok_or("no integer or string `question_id`")?;
    let image = record
        .get("image")
        .and_then(Value::as_str)
        .ok_or("no string `image`")?;
    let question = record
        .get("text")
        .or_else(|| record.get("question"))
        .and_then(Value::as_str)
        .ok_or("no string `text`")?;
    let label = match record.get("label").or_else(|| record.get("answer")) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match s.trim().to_ascii_lowercase().as_str() {
            "yes" => Some(true),
            "no" => Some(false),
            _ => return Err(format!("label {s:?} is neither yes nor no")),
        },
        Some(other) => return Err(format!("label {other} is not a string")),
    };
    let category = match record.get("category").and_then(Value::as_str) {
        Some(c) => Some(c.to_string()),
        None => category.map(str::to_string),
    };
    Ok(PopeItem {
        question_id,
        image: image_dir.join(image),
        question: question.to_string(),
        label,
        category,
    })
}

// ---------------------------------------------------------------------------------------------
// Multiple choice (MMBench-style TSV, ScienceQA-style JSON)
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

/// Loads ScienceQA-style multiple-choice JSON: records `{question, choices: [..], answer: index,
/// hint, image?, category?/subject?, split?}` as a JSON array, JSONL, or the original
/// `problems.json` object keyed by id. `image` is joined to `image_dir`; for the keyed layout with
/// a `split`, the original `{split}/{id}/{image}` folder layout is used.
pub fn load_scienceqa(path: &Path, image_dir: Option<&Path>) -> Result<Loaded<McItem>, DataError> {
    let file = path.display().to_string();
    let mut loaded = Loaded::default();
    let mut records: Vec<(String, bool, Value)> = Vec::new();
    if JsonLayout::detect(path)? == JsonLayout::Lines {
        // One object: either `problems.json` (keyed by id) or a one-record JSONL file.
        if let Ok(Value::Object(map)) = read_json::<Value>(path)
            && !map.contains_key("question")
        {
            records.extend(map.into_iter().map(|(id, v)| (id, true, v)));
        }
    }
    if records.is_empty() {
        for (index, record) in JsonStream::<Value>::open(path, StreamOptions::default())? {
            match record {
                Ok(v) => {
                    let id = v
                        .get("id")
                        .or_else(|| v.get("pid"))
                        .and_then(Id::from_value);
                    let id = id.map_or_else(|| index.to_string(), |id| id.to_string());
                    records.push((id, false, v));
                }
                Err(e) => loaded.problems.push(e),
            }
        }
    }
    for (id, keyed, record) in records {
        match scienceqa_item(&id, keyed, &record, image_dir) {
            Ok(item) => {
                let escape = match (&item.image, image_dir) {
                    (Some(ImageSource::Path(path)), Some(dir)) => {
                        check_inside(dir, path, false).err()
                    }
                    _ => None,
                };
                match escape {
                    None => loaded.items.push(item),
                    Some(e) => loaded.problems.push(outside(&file, &id, &e)),
                }
            }
            Err(msg) => loaded.problems.push(malformed(&file, &id, &msg)),
        }
    }
    Ok(loaded)
}

/// Reads one ScienceQA record.
fn scienceqa_item(
    id: &str,
    keyed: bool,
    record: &Value,
    image_dir: Option<&Path>,
) -> Result<McItem, String> {
    let text = |name: &str| record.get(name).and_then(Value::as_str).map(str::to_string);
    let question = text("question").ok_or("no string `question`")?;
    let choices = record
        .get("choices")
        .and_then(Value::as_array)
        .ok_or("no list `choices`")?;
    let mut options = Vec::with_capacity(choices.len());
    for (i, choice) in choices.iter().enumerate() {
        let letter = u8::try_from(i)
            .ok()
            .filter(|&i| i < 26)
            .map(|i| char::from(b'A' + i));
        let letter = letter.ok_or("more than 26 choices")?;
        let choice = choice
            .as_str()
            .ok_or_else(|| format!("choice {i} is not a string"))?;
        options.push((letter, choice.to_string()));
    }
    if options.is_empty() {
        return Err("`choices` is empty".into());
    }
    let answer = match record.get("answer") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let i = v
                .as_u64()
                .ok_or_else(|| format!("answer {v} is not an index"))?;
            let option = usize::try_from(i).ok().and_then(|i| options.get(i));
            Some(
                option
                    .ok_or_else(|| format!("answer index {i} is out of range"))?
                    .0,
            )
        }
    };
    let split = text("split");
    let image = match (text("image"), image_dir) {
        (Some(name), Some(dir)) if !name.is_empty() => {
            let path = match (&split, keyed) {
                (Some(split), true) => dir.join(split).join(id).join(&name),
                _ => dir.join(&name),
            };
            Some(ImageSource::Path(path))
        }
        (Some(name), None) if !name.is_empty() => Some(ImageSource::Path(PathBuf::from(name))),
        _ => None,
    };
    Ok(McItem {
        id: id.to_string(),
        question,
        hint: text("hint").filter(|h| !h.is_empty()),
        options,
        answer,
        image,
        category: text("category").or_else(|| text("subject")),
        l2_category: None,
        split,
    })
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
