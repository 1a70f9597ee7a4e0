//! Errors of the processor: what the data and model crates report, plus a mismatch between a
//! model and the tokenizer or image settings offered for it.

use blip3_data::DataError;
use blip3_model::ModelError;

/// An error opening a model directory or turning inputs into model inputs. Every variant names
/// the file or the input it concerns.
#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    /// Reading the tokenizer, an image or `preprocessor_config.json` failed.
    #[error(transparent)]
    Data(#[from] DataError),
    /// Reading `config.json` or the weights failed, or the model rejected an input.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The pieces of a model directory do not fit together (tokenizer vocabulary, image size).
    #[error("{0}")]
    Mismatch(String),
    /// A prompt cannot be encoded (image count, template rules), or does not fit the context.
    #[error("{0}")]
    Prompt(String),
}
