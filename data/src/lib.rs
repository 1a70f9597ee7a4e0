//! blip3-data: images and any-resolution tiling, tokenizer and chat template, dataset readers,
//! mixtures and the built-in synthetic corpus.
#![warn(missing_docs)]

pub mod anyres;
pub mod error;
pub mod image;
pub mod loader;
pub mod mixture;
pub mod paths;
pub mod pipeline;
pub mod progress;
pub mod readers;
pub mod rng;
pub mod sample;
pub mod synth;
pub mod template;
pub mod tokenizer;

pub use anyres::{AnyResGrid, ImageProcessor, ImageProcessorConfig, ProcessedImage};
pub use error::{BadKind, DataError, SampleError};
pub use sample::{ImageSource, Origin, RawSample, Role, Turn};
pub use template::{ChatTemplate, Encoded};
pub use tokenizer::Blip3Tokenizer;
