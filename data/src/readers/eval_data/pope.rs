//! POPE question files: the original RUCAIBox JSONL (`question_id, image, text, label`) and
//! LLaVA's question JSONL (with `category`, no label).
//!
//! Contract: records are streamed in file order; a record without a usable id, image or question,
//! a label other than yes/no, and an image outside the image directory are reported in
//! [`Loaded::problems`] and left out.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{Id, Loaded, malformed, outside};
use crate::error::DataError;
use crate::paths::check_inside;
use crate::readers::json_stream::{JsonStream, StreamOptions};

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
