//! Errors of the evaluation crate.
//!
//! [`EvalError`] is fatal for the operation that returned it (a model that does not load, an
//! answers file written with other settings, an annotation file that is not JSON). Problems with
//! single items (an image that does not decode, a question without an annotation) are never
//! errors: they are recorded per item as a [`crate::answers::Failure`], excluded from the scores
//! and counted in the report.

use std::path::PathBuf;

use blip3_data::DataError;
use blip3_model::ModelError;

use crate::metrics::MetricsError;

/// A fatal evaluation error. Every variant names the file or setting it concerns.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A file could not be opened, read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file was read but its content is not what the format requires.
    #[error("{path}: {msg}")]
    Format {
        /// The file (or a `file:key` location inside it).
        path: String,
        /// What is wrong.
        msg: String,
    },
    /// A setting is invalid or settings contradict each other.
    #[error("invalid evaluation settings: {0}")]
    Config(String),
    /// Loading data (tokenizer, evaluation files, synthetic corpus) failed.
    #[error(transparent)]
    Data(#[from] DataError),
    /// Loading or running the model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Opening a model directory (tokenizer, image settings) or encoding an input failed.
    #[error(transparent)]
    Processor(#[from] blip3_processor::ProcessorError),
    /// A metric could not be computed.
    #[error("{benchmark}: {source}")]
    Metrics {
        /// The benchmark or file being scored.
        benchmark: String,
        /// The metric error.
        source: MetricsError,
    },
}

impl EvalError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        EvalError::Io {
            path: path.into(),
            source,
        }
    }

    /// A format error at `path`.
    pub fn format(path: impl std::fmt::Display, msg: impl Into<String>) -> Self {
        EvalError::Format {
            path: path.to_string(),
            msg: msg.into(),
        }
    }

    /// A metric error while scoring `benchmark`.
    pub fn metrics(benchmark: impl Into<String>, source: MetricsError) -> Self {
        EvalError::Metrics {
            benchmark: benchmark.into(),
            source,
        }
    }
}
