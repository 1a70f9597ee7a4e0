//! Official TextVQA files (`TextVQA_0.5.1_{split}.json`, `{data: [...]}`), read into the same
//! [`VqaQuestion`] items as the VQA-format files.
//!
//! Contract: a malformed entry and an image id that resolves outside the image directory are
//! reported in [`Loaded::problems`] and left out; a test split without answers yields questions
//! with empty answer lists.

use std::path::Path;

use serde::Deserialize;

use super::vqa::VqaQuestion;
use super::{Entry, Id, ImageLocator, Loaded, malformed, outside, read_json};
use crate::error::DataError;

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
