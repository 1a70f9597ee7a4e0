//! blip3-train: the five xGen-MM training stages on burn-train — one learner, stage-specific
//! losses (causal LM, DPO), LoRA, global-norm clipping, averaged gradient accumulation, bf16 mixed
//! precision, step-based atomic checkpoints with exact resume, data parallelism and monitoring.
#![warn(missing_docs)]

pub mod batch;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod launch;
mod layer_checkpoint;
pub mod loss;
pub mod metrics_file;
pub mod monitor;
pub mod optim;
pub mod outdir;
pub mod plot;
pub mod recipes;
pub mod remote;
pub mod renderer;
pub mod resume;
pub mod run;
pub mod stage;

pub use config::{Stage, TrainConfig};
pub use error::TrainError;
pub use run::{RunOptions, TrainSummary, train};
pub use stage::{StageModel, StageSettings, StepGuard, VlmBatch};
