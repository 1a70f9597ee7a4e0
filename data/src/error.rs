//! Error types of the data crate.
//!
//! Two levels: [`DataError`] is fatal for the operation that returned it (a missing tokenizer, an
//! unreadable recipe), [`SampleError`] describes one bad sample, which loaders skip and count.

use std::path::PathBuf;

/// A fatal error of a data operation. Every variant names the file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file was read but its content is not what the format requires.
    #[error("{path}: {msg}")]
    Format {
        /// The file (or a `file:key` location inside it).
        path: String,
        /// What is wrong.
        msg: String,
    },
    /// An image could not be decoded.
    #[error("{path}: cannot decode image: {msg}")]
    Image {
        /// The file or `shard.tar:key.jpg` member.
        path: String,
        /// The decoder's message.
        msg: String,
    },
    /// An image was refused before decoding: not a regular file, or over a size or pixel limit
    /// ([`crate::image::ImageLimits`]).
    #[error("{path}: image refused: {msg}")]
    ImageRefused {
        /// The file or `shard.tar:key.jpg` member.
        path: String,
        /// Which rule or limit, with the values.
        msg: String,
    },
    /// A tokenizer could not be loaded or lacks a required token.
    #[error("tokenizer {path}: {msg}")]
    Tokenizer {
        /// The tokenizer.json path.
        path: String,
        /// What is wrong.
        msg: String,
    },
    /// A configuration value is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Too many bad samples: the run stops rather than train on a broken corpus.
    #[error(
        "bad-sample rate {rate:.3}% exceeds the threshold {threshold:.3}% ({bad} bad of {seen} seen); last: {last}"
    )]
    TooManyBadSamples {
        /// Bad samples seen.
        bad: u64,
        /// All samples seen.
        seen: u64,
        /// Bad rate in percent.
        rate: f64,
        /// Threshold in percent.
        threshold: f64,
        /// The last bad sample's description.
        last: String,
    },
    /// Every item read was bad (bad-sample rate 100%), whatever the tolerated rate: the stream
    /// gives nothing to train on or inspect.
    #[error(
        "bad-sample rate 100%: all {seen} items read were bad, not one good sample; last: {last}"
    )]
    NoGoodSamples {
        /// Items seen (all bad).
        seen: u64,
        /// The last bad sample's description.
        last: String,
    },
}

impl DataError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }

    /// A format error at `path`.
    pub fn format(path: impl std::fmt::Display, msg: impl Into<String>) -> Self {
        DataError::Format {
            path: path.to_string(),
            msg: msg.into(),
        }
    }
}

/// The kind of a bad sample, used to count skips by cause in loader statistics.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum BadKind {
    /// An image that does not decode.
    CorruptImage,
    /// An image file that does not exist.
    MissingImage,
    /// A record that is not valid JSON or lacks required fields.
    MalformedRecord,
    /// A tar shard that ends in the middle of a member.
    TruncatedShard,
    /// The number of `<image>` markers differs from the number of images.
    ImageCountMismatch,
    /// A sample that violates some other rule (too many images, empty text, ...).
    Invalid,
    /// An image path that resolves outside the configured image root (`..`, an absolute path, a
    /// symbolic link leaving the root); see [`crate::paths`].
    OutsideRoot,
}

/// One bad sample: where it is and what is wrong. Loaders log it as a warning, count it and go on.
#[derive(Debug, Clone, thiserror::Error)]
#[error("skipping {file}{}: {kind:?}: {msg}", if key.is_empty() { String::new() } else { format!(" [{key}]") })]
pub struct SampleError {
    /// The file the sample came from (shard, JSON file, parquet file).
    pub file: String,
    /// The sample's key, id or line number inside the file.
    pub key: String,
    /// Why it was skipped.
    pub kind: BadKind,
    /// Details.
    pub msg: String,
}

impl SampleError {
    /// Builds a sample error.
    pub fn new(
        file: impl std::fmt::Display,
        key: impl std::fmt::Display,
        kind: BadKind,
        msg: impl Into<String>,
    ) -> Self {
        SampleError {
            file: file.to_string(),
            key: key.to_string(),
            kind,
            msg: msg.into(),
        }
    }
}
