//! ScienceQA-style multiple-choice JSON: a JSON array, JSON lines, or the original
//! `problems.json` object keyed by id, read into [`McItem`]s with choices lettered from `A`.
//!
//! Contract: a record without a question or choices, with more than 26 choices, with an answer
//! index out of range, or whose image resolves outside the image directory is reported in
//! [`Loaded::problems`] and left out.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{Id, Loaded, McItem, malformed, outside, read_json};
use crate::error::DataError;
use crate::paths::check_inside;
use crate::readers::json_stream::{JsonLayout, JsonStream, StreamOptions};
use crate::sample::ImageSource;

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
