//! Samples as the readers produce them: text, conversation turns and *references* to images
//! (paths or bytes), before any decoding or tokenization. Every sample carries its origin so that a
//! later failure (an image that does not decode) can still name the file and key.

use std::path::PathBuf;

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageSource {
    /// A file on disk.
    Path(PathBuf),
    /// Encoded bytes (a tar member, a parquet cell, a base64 TSV cell); `name` locates them for errors.
    Bytes {
        /// Encoded image bytes (JPEG, PNG, ...).
        bytes: std::sync::Arc<Vec<u8>>,
        /// A human-readable location such as `shard-0001.tar:000010005.jpg`.
        name: String,
    },
}

impl ImageSource {
    /// A human-readable location of the image.
    pub fn describe(&self) -> String {
        match self {
            ImageSource::Path(p) => p.display().to_string(),
            ImageSource::Bytes { name, .. } => name.clone(),
        }
    }
}

/// The speaker of a conversation turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Role {
    /// The system prompt.
    System,
    /// The user (LLaVA `human`).
    User,
    /// The assistant (LLaVA `gpt`).
    Assistant,
}

/// One conversation turn. `<image>` markers inside `text` place images.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    /// Who speaks.
    pub role: Role,
    /// What is said.
    pub text: String,
}

/// Where a sample came from: a file and a key inside it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Origin {
    /// The file (shard, JSON, parquet).
    pub file: String,
    /// The key, id or line number.
    pub key: String,
}

/// A sample read from a dataset.
#[derive(Debug, Clone, PartialEq)]
pub enum RawSample {
    /// An image with a caption (pre-training pairs).
    Caption {
        /// Where it came from.
        origin: Origin,
        /// The image.
        image: ImageSource,
        /// The caption text.
        caption: String,
    },
    /// An interleaved document: text with `<image>` markers (and `<|endofchunk|>` between chunks), and
    /// the images in marker order.
    Interleaved {
        /// Where it came from.
        origin: Origin,
        /// Rendered text.
        text: String,
        /// Images in marker order.
        images: Vec<ImageSource>,
    },
    /// A conversation (SFT, safety): turns with `<image>` markers and the images in marker order.
    Conversation {
        /// Where it came from.
        origin: Origin,
        /// Images in marker order.
        images: Vec<ImageSource>,
        /// The turns, starting with the user (a system turn is optional).
        turns: Vec<Turn>,
    },
    /// A preference pair for DPO: a prompt (user turns with markers), a chosen and a rejected answer.
    Preference {
        /// Where it came from.
        origin: Origin,
        /// Images in marker order.
        images: Vec<ImageSource>,
        /// The prompt turns (ending with a user turn).
        prompt: Vec<Turn>,
        /// The preferred answer.
        chosen: String,
        /// The dispreferred answer.
        rejected: String,
    },
}

impl RawSample {
    /// The sample's origin.
    pub fn origin(&self) -> &Origin {
        match self {
            RawSample::Caption { origin, .. }
            | RawSample::Interleaved { origin, .. }
            | RawSample::Conversation { origin, .. }
            | RawSample::Preference { origin, .. } => origin,
        }
    }

    /// The sample's images, in marker order.
    pub fn images(&self) -> Vec<&ImageSource> {
        match self {
            RawSample::Caption { image, .. } => vec![image],
            RawSample::Interleaved { images, .. }
            | RawSample::Conversation { images, .. }
            | RawSample::Preference { images, .. } => images.iter().collect(),
        }
    }
}
