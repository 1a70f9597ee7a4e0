//! blip3-processor: one way from a model directory, text, images and chat turns to the model's
//! input, and from generated ids back to text.
//!
//! - [`ModelDir`] reads a model directory by one precedence rule (config.json, then
//!   `preprocessor_config.json` fields, then the tokenizer; special token ids from the tokenizer),
//!   documented in [`model_dir`] and docs/model.md §"Model directories".
//! - [`Processor`] holds the tokenizer, the image processor and the chat template, and encodes
//!   prompts ([`PromptFormat::Chat`] or [`PromptFormat::Raw`]), images ([`image_input`]) and
//!   decodes replies ([`TextStream`] for streaming).
//! - [`load`] does both and loads the weights: what `generate`, `chat`, `serve` and `eval` call.
//!
//! The crate sits between `blip3-data` and `blip3-model` so that the model crate never imports
//! the data crate (README "Layout").
#![warn(missing_docs)]

pub mod error;
pub mod model_dir;
pub mod processor;

pub use error::ProcessorError;
pub use model_dir::{Loaded, ModelDir, PREPROCESSOR_CONFIG, TokenizerSource, load};
pub use processor::{
    EncodedPrompt, Processor, PromptFormat, TextStream, check_vocab, image_config_for, image_input,
    special_tokens,
};
