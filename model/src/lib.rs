//! blip3-model: the xGen-MM (BLIP-3) model on Burn — SigLIP ViT, perceiver resampler, Phi-3
//! decoder with the decoupled vocabulary, the any-res composite, weight loading and generation.
//!
//! Every module is built on a runtime [`burn::prelude::Device`], so any Burn application can
//! embed the model whatever backend it enables. The model takes tensors and token ids; it never
//! depends on the data, training or evaluation crates.
#![warn(missing_docs)]

pub mod attention;
pub mod beam;
pub mod config;
pub mod decoupled;
pub mod device;
pub mod error;
pub mod generate;
pub mod host;
pub mod kv_cache;
pub mod layout;
pub mod linear;
pub mod loader;
pub mod lora;
pub mod params;
pub mod phi3;
pub mod resampler;
pub mod rope;
pub mod scoring;
pub mod siglip;
pub mod xgenmm;

pub use beam::{BeamHypothesis, BeamSearchOutput};
pub use config::{
    AspectMode, LongRopeScaling, PerceiverConfig, Phi3Config, SiglipVisionConfig, XGenMMConfig,
};
pub use device::Backend;
pub use error::ModelError;
pub use generate::{EarlyStopping, FinishReason, Generated, GenerationConfig};
pub use kv_cache::KvCache;
pub use loader::{CheckpointKind, LoadOptions};
pub use lora::LoraConfig;
pub use phi3::{LogitsFor, Phi3ForCausalLM};
pub use resampler::PerceiverResampler;
pub use siglip::SiglipVisionTransformer;
pub use xgenmm::{ImageInput, MultimodalInput, Padding, SpecialTokens, XGenMM, XGenMMOutput};

/// The README's code examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
