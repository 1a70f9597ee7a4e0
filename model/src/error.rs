//! Errors of the model crate. Every message is one line and names the file or tensor concerned.

use std::path::PathBuf;

/// An error while configuring, loading, saving or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A configuration file or value is invalid.
    #[error("{path}: {msg}")]
    Config {
        /// The file (or a description of where the value came from).
        path: String,
        /// What is wrong.
        msg: String,
    },
    /// A checkpoint file is malformed (bad header, truncated data, unsupported dtype...).
    #[error("{path}: {msg}")]
    Checkpoint {
        /// The file.
        path: String,
        /// What is wrong.
        msg: String,
    },
    /// A tensor the model needs is absent from the checkpoint.
    #[error("{dir}: missing tensor {key:?} (expected shape {expected:?}){more}")]
    MissingTensor {
        /// The checkpoint directory or file.
        dir: String,
        /// The HF key.
        key: String,
        /// The shape the model expects, in the checkpoint's layout.
        expected: Vec<usize>,
        /// ", and N more" when several are missing.
        more: String,
    },
    /// A tensor has the wrong shape.
    #[error("{path}: tensor {key:?} has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        /// The file holding the tensor.
        path: String,
        /// The HF key.
        key: String,
        /// The shape the model expects, in the checkpoint's layout.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// A tensor has a dtype the model cannot use for it.
    #[error("{path}: tensor {key:?} has dtype {found}, expected a float dtype (F32, F16, BF16)")]
    DType {
        /// The file holding the tensor.
        path: String,
        /// The HF key.
        key: String,
        /// The dtype in the file.
        found: String,
    },
    /// The inputs given to a forward pass are inconsistent.
    #[error("invalid input: {0}")]
    Input(String),
}

impl ModelError {
    /// A configuration error at `path`.
    pub fn config(path: impl std::fmt::Display, msg: impl Into<String>) -> Self {
        ModelError::Config {
            path: path.to_string(),
            msg: msg.into(),
        }
    }

    /// A checkpoint-format error at `path`.
    pub fn checkpoint(path: impl std::fmt::Display, msg: impl Into<String>) -> Self {
        ModelError::Checkpoint {
            path: path.to_string(),
            msg: msg.into(),
        }
    }

    /// An I/O error at `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.into(),
            source,
        }
    }
}
