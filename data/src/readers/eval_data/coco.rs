//! COCO caption annotations (`captions_val2014.json`, the Karpathy test ground truth): the
//! reference captions of each image, in the order of the `images` list.
//!
//! Contract: an image without captions, a caption of an image missing from `images`, a duplicate
//! image id and an image whose `file_name` resolves outside the image directory are reported in
//! [`Loaded::problems`] and left out; only an unreadable file or one without `annotations` fails.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Entry, Id, ImageLocator, Loaded, malformed, outside, read_json};
use crate::error::DataError;

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
