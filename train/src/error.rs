//! Errors of the training crate.

use std::path::PathBuf;

/// A training error; messages name the file or setting concerned.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The configuration is invalid.
    #[error("config: {0}")]
    Config(String),
    /// The model could not be built, loaded or saved.
    #[error(transparent)]
    Model(#[from] blip3_model::ModelError),
    /// The data could not be read.
    #[error(transparent)]
    Data(#[from] blip3_data::DataError),
    /// The starting model directory's tokenizer or image settings could not be read or do not
    /// fit the model.
    #[error(transparent)]
    Processor(#[from] blip3_processor::ProcessorError),
    /// A checkpoint is missing or inconsistent.
    #[error("checkpoint {path}: {msg}")]
    Checkpoint {
        /// The checkpoint directory or file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// The output directory is in use by another run, or holds a run this one would overwrite.
    #[error("output directory {dir}: {msg}")]
    OutDir {
        /// The output directory.
        dir: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// Training stopped on an error (non-finite losses, bad data rate, device failure).
    #[error("training stopped: {0}")]
    Stopped(String),
}

impl TrainError {
    /// Wraps an I/O error with its path.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.into(),
            source,
        }
    }
}
