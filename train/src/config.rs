//! The TOML configuration of a training stage (`blip3 train --config stage.toml`). Every field
//! has a default; a config names at least the stage and its data. Relative paths are resolved
//! against the config file's directory.
//!
//! Long because the stage's TOML sections and their defaults form one schema, read best together.

use std::path::{Path, PathBuf};

use blip3_data::anyres::ResolutionMode;
use blip3_model::{Backend, LoraConfig};
use serde::{Deserialize, Serialize};

use crate::error::TrainError;

/// The five xGen-MM stages (docs/reference.md §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// Next-token loss on captions and interleaved documents, single fixed view.
    Pretrain,
    /// Single-image instruction tuning (any-res, assistant tokens only).
    Sft,
    /// Multi-image instruction tuning mixed with single-image data.
    SftInterleave,
    /// Direct preference optimisation on chosen/rejected pairs.
    Dpo,
    /// Safety tuning on VLGuard-style data mixed with general SFT data.
    Safety,
}

impl Stage {
    /// The stage's name as written in configs.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Pretrain => "pretrain",
            Stage::Sft => "sft",
            Stage::SftInterleave => "sft-interleave",
            Stage::Dpo => "dpo",
            Stage::Safety => "safety",
        }
    }
}

/// Where the model comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSection {
    /// A preset (`tiny`, `mid`, `xgenmm-phi3-mini-v1.5`) for a fresh model, or a model directory
    /// (HF layout or a blip3 checkpoint / export).
    pub init: String,
    /// `tiny` (the built-in tokenizer), `tiny-phi3` (the same padded to Phi-3's vocabulary, for
    /// the `mid` and full presets on synthetic data) or a directory with `tokenizer.json`.
    pub tokenizer: String,
}

impl Default for ModelSection {
    fn default() -> Self {
        Self {
            init: "tiny".into(),
            tokenizer: "tiny".into(),
        }
    }
}

/// Data for the stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataSection {
    /// The training mixture recipe (YAML or TOML, see docs/data.md).
    pub train: PathBuf,
    /// An optional validation recipe.
    pub valid: Option<PathBuf>,
    /// Validation samples evaluated at each checkpoint.
    pub valid_samples: usize,
    /// Samples per micro-batch (per device).
    pub batch_size: usize,
    /// Decode/tokenise worker threads.
    pub num_workers: usize,
    /// Maximum sequence length in text tokens plus vision tokens.
    pub max_len: usize,
    /// Image mode, `fixed` (one squashed view per image) or `anyres` (global view plus crops);
    /// by default fixed for pre-training and any-res otherwise.
    pub image_mode: Option<ResolutionMode>,
    /// Group samples of similar length into batches.
    pub length_grouping: bool,
    /// Stop when the bad-sample rate passes this percentage.
    pub max_bad_percent: f64,
}

impl Default for DataSection {
    fn default() -> Self {
        Self {
            train: PathBuf::new(),
            valid: None,
            valid_samples: 32,
            batch_size: 8,
            num_workers: 2,
            max_len: 2048,
            image_mode: None,
            length_grouping: true,
            max_bad_percent: 1.0,
        }
    }
}

/// Learning-rate schedule shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    /// Linear warm-up, then cosine decay to `min_lr`.
    Cosine,
    /// Linear warm-up, then constant.
    Constant,
}

/// Optimisation settings (AdamW, docs/reference.md §4.4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimSection {
    /// Peak learning rate.
    pub lr: f64,
    /// Adam betas.
    pub betas: [f32; 2],
    /// Adam epsilon.
    pub eps: f32,
    /// Decoupled weight decay.
    pub weight_decay: f32,
    /// Regexes of parameter paths exempt from weight decay. The reference applies decay to every
    /// trainable parameter (empty list); e.g. `["norm", "bias"]` exempts norms and biases.
    pub no_decay: Vec<String>,
    /// Warm-up steps (linear from 0).
    pub warmup_steps: usize,
    /// Optimizer steps of the run.
    pub total_steps: usize,
    /// Final learning rate of the cosine schedule.
    pub min_lr: f64,
    /// Schedule shape.
    pub schedule: Schedule,
    /// Clip the global gradient norm (over all trainable parameters) to this value.
    pub grad_clip: Option<f64>,
    /// Micro-batches averaged per optimizer step.
    pub grad_accum: usize,
}

impl Default for OptimSection {
    fn default() -> Self {
        Self {
            lr: 1e-4,
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 0.0,
            no_decay: Vec::new(),
            warmup_steps: 0,
            total_steps: 100,
            min_lr: 0.0,
            schedule: Schedule::Cosine,
            grad_clip: Some(1.0),
            grad_accum: 1,
        }
    }
}

/// Which components are frozen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FreezeSection {
    /// The ViT (frozen, run without autodiff, in every released stage).
    pub vision: bool,
    /// The perceiver resampler.
    pub resampler: bool,
    /// The language model's layers and norms.
    pub lm: bool,
    /// Token embeddings and the output head (original and additional rows).
    pub embeddings: bool,
}

impl Default for FreezeSection {
    fn default() -> Self {
        Self {
            vision: true,
            resampler: false,
            lm: false,
            embeddings: false,
        }
    }
}

/// Where DPO's reference log-probabilities come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DpoReference {
    /// A frozen copy of the starting policy.
    PolicyCopy,
    /// The policy with its LoRA adapters disabled (needs `[lora]`; no extra weights).
    LoraBase,
}

/// DPO settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DpoSection {
    /// Inverse temperature β of the sigmoid loss.
    pub beta: f64,
    /// Reference model.
    pub reference: DpoReference,
    /// Add a rejected answer generated by the policy from a noised image (docs/reference.md §4.1).
    pub noised_image_negatives: bool,
    /// Standard deviation of the Gaussian noise added to the normalised pixels.
    pub noise_std: f64,
    /// Tokens generated for the noised-image negative.
    pub negative_max_tokens: usize,
}

impl Default for DpoSection {
    fn default() -> Self {
        Self {
            beta: 0.1,
            reference: DpoReference::PolicyCopy,
            noised_image_negatives: false,
            noise_std: 1.0,
            negative_max_tokens: 16,
        }
    }
}

/// Numeric precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// Everything in f32.
    F32,
    /// bf16 forward/backward with f32 master weights and optimizer state.
    Bf16Mixed,
}

/// Precision and memory options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrecisionSection {
    /// Precision mode.
    pub mode: Precision,
    /// Recompute activations in the backward pass instead of storing them (Burn's op-level
    /// checkpointing).
    pub gradient_checkpointing: bool,
    /// Keep only each decoder layer's input and rerun the layer in the backward (every stage;
    /// not with LoRA dropout, nor with `gradient_checkpointing`).
    pub checkpoint_layers: bool,
}

impl Default for PrecisionSection {
    fn default() -> Self {
        Self {
            mode: Precision::F32,
            gradient_checkpointing: false,
            checkpoint_layers: false,
        }
    }
}

/// Checkpointing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckpointSection {
    /// Save every this many optimizer steps (and at the end).
    pub every_steps: usize,
    /// Checkpoints kept.
    pub keep_last: usize,
    /// Export the final model in HF layout (LoRA merged) to `<out_dir>/export`.
    pub export_hf: bool,
}

impl Default for CheckpointSection {
    fn default() -> Self {
        Self {
            every_steps: 50,
            keep_last: 2,
            export_hf: true,
        }
    }
}

/// Devices and data parallelism.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DevicesSection {
    /// The backend: `flex`, `cpu`, `wgpu`, `vulkan`, `metal` or `cuda`.
    pub kind: Backend,
    /// Number of devices (replicas).
    pub count: usize,
    /// How the replicas train together.
    pub strategy: Strategy,
    /// The backend's device index of each replica (default `0..count`). Naming one index twice
    /// runs two replicas on one card (e.g. `[0, 0]` to exercise `multi` or `ddp` on a single
    /// GPU).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indices: Option<Vec<usize>>,
    /// Devices of `blip3 worker` processes on other machines (or this one), after the `count`
    /// local ones: `ws://HOST:PORT` or `iroh://ENDPOINT_ID@HOST:PORT`, optionally `#INDEX`
    /// (see [`crate::remote`]). With remote devices, `count` may be 0: the first remote device is
    /// then the main one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remote: Vec<String>,
    /// The environment variable holding the workers' token.
    pub remote_token_env: String,
    /// Seconds a run over remote devices may go without progress (no replica computing a loss,
    /// no optimizer step), and a connection may take, before its workers are probed; workers that
    /// do not answer a one-element read within [`crate::remote::PROBE_TIMEOUT`] then stop the
    /// run with an error naming them. 0 waits forever. Set it above the slowest step (the first
    /// steps on a GPU include kernel compilation).
    pub remote_timeout_s: u64,
    /// Where the AdamW state lives with strategy `multi`: on the main device, or sharded (each
    /// parameter's state on one device, burn-train's `OptimSharded`).
    pub optimizer: OptimizerPlacement,
}

/// Where the optimizer state of a multi-device run lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerPlacement {
    /// Every parameter's gradients gathered on the main device, which holds all of the AdamW
    /// state and runs the step (`MultiDeviceOptim::OptimMainDevice`).
    #[default]
    Main,
    /// Parameters assigned to devices round-robin by id; each parameter's gradients are summed on
    /// its device, which holds its AdamW state and updates it (`MultiDeviceOptim::OptimSharded`,
    /// ZeRO-1 style at whole-tensor granularity); global-norm clipping spans all of them.
    Sharded,
}

impl DevicesSection {
    /// Local plus remote devices.
    pub fn total(&self) -> usize {
        self.count + self.remote.len()
    }
}

impl Default for DevicesSection {
    fn default() -> Self {
        Self {
            kind: Backend::Flex,
            count: 1,
            strategy: Strategy::Single,
            indices: None,
            remote: Vec::new(),
            remote_token_env: crate::remote::DEFAULT_TOKEN_ENV.to_string(),
            remote_timeout_s: 600,
            optimizer: OptimizerPlacement::Main,
        }
    }
}

/// How the devices of a run train together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// One device.
    #[default]
    Single,
    /// Burn's multi-device strategy: one process, gradients gathered on the main device (any
    /// backend).
    Multi,
    /// Distributed data parallel with collective all-reduce (CUDA/NCCL).
    Ddp,
}

/// How training progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Renderer {
    /// The terminal UI when a terminal is attached and the `tui` feature is on, else `plain`.
    #[default]
    Auto,
    /// A progress line every `log_every` optimizer steps.
    Plain,
    /// Nothing but warnings and errors.
    Quiet,
}

/// Logging and safety nets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MonitorSection {
    /// Print a progress line every this many optimizer steps (plain renderer).
    pub log_every: usize,
    /// How progress is shown.
    pub renderer: Renderer,
    /// Stop after this many consecutive non-finite losses (each is skipped with a warning).
    pub max_nan_steps: usize,
}

impl Default for MonitorSection {
    fn default() -> Self {
        Self {
            log_every: 10,
            renderer: Renderer::Auto,
            max_nan_steps: 5,
        }
    }
}

/// A full stage configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// The stage.
    pub stage: Stage,
    /// Output directory (checkpoints, logs, plot, export).
    #[serde(default = "default_out")]
    pub out_dir: PathBuf,
    /// Seed of data order, initialisation and dropout.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Model source.
    #[serde(default)]
    pub model: ModelSection,
    /// Data.
    #[serde(default)]
    pub data: DataSection,
    /// Optimisation.
    #[serde(default)]
    pub optim: OptimSection,
    /// Frozen components.
    #[serde(default)]
    pub freeze: FreezeSection,
    /// LoRA adapters on the language model (the base LM is then frozen).
    #[serde(default)]
    pub lora: Option<LoraConfig>,
    /// DPO settings (stage `dpo`).
    #[serde(default)]
    pub dpo: DpoSection,
    /// Precision.
    #[serde(default)]
    pub precision: PrecisionSection,
    /// Checkpointing.
    #[serde(default)]
    pub checkpoint: CheckpointSection,
    /// Devices.
    #[serde(default)]
    pub devices: DevicesSection,
    /// Monitoring.
    #[serde(default)]
    pub monitor: MonitorSection,
}

/// The most decode/tokenise worker threads a config may ask for (`data.num_workers`); each
/// thread holds samples in flight, and far more threads than cores only cost memory.
pub const MAX_WORKERS: usize = 256;

fn default_out() -> PathBuf {
    PathBuf::from("runs/stage")
}
fn default_seed() -> u64 {
    42
}

/// Whether a `model.init` / `model.tokenizer` value names a built-in preset rather than a path.
pub fn is_preset_name(s: &str) -> bool {
    matches!(s, "tiny" | "tiny-phi3" | "mid" | "xgenmm-phi3-mini-v1.5")
}

impl TrainConfig {
    /// A config for `stage` with defaults everywhere else.
    pub fn new(stage: Stage, train_recipe: impl Into<PathBuf>) -> Self {
        Self {
            stage,
            out_dir: default_out(),
            seed: default_seed(),
            model: ModelSection::default(),
            data: DataSection {
                train: train_recipe.into(),
                ..Default::default()
            },
            optim: OptimSection::default(),
            freeze: FreezeSection::default(),
            lora: None,
            dpo: DpoSection::default(),
            precision: PrecisionSection::default(),
            checkpoint: CheckpointSection::default(),
            devices: DevicesSection::default(),
            monitor: MonitorSection::default(),
        }
    }

    /// Reads a TOML config; relative paths become relative to the file's directory.
    pub fn load(path: &Path) -> Result<Self, TrainError> {
        let cfg = TrainConfig::read(path)?;
        cfg.validate()
            .map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))?;
        Ok(cfg)
    }

    /// Reads a config file like [`TrainConfig::load`] but leaves validation to the caller, for
    /// callers that complete it first (`blip3 launch` adds the workers it gathers); [`crate::train`]
    /// validates what it is given.
    pub fn read(path: &Path) -> Result<Self, TrainError> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
        let mut cfg: TrainConfig = toml::from_str(&text)
            .map_err(|e| TrainError::Config(format!("{}: {}", path.display(), e.message())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.resolve_paths(base);
        Ok(cfg)
    }

    /// Makes relative paths relative to `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() && !p.as_os_str().is_empty() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.out_dir);
        fix(&mut self.data.train);
        if let Some(v) = self.data.valid.as_mut() {
            fix(v);
        }
        for s in [&mut self.model.init, &mut self.model.tokenizer] {
            if !is_preset_name(s) && Path::new(s.as_str()).is_relative() {
                *s = base.join(s.as_str()).display().to_string();
            }
        }
    }

    /// The inverse of [`TrainConfig::resolve_paths`]: every path rewritten relative to the
    /// directory `dir` of the file this config is about to be written to (the rule for every
    /// generated file: docs/training.md, "Paths"). Preset names stay names.
    pub fn relative_to(&self, dir: &Path) -> Result<TrainConfig, TrainError> {
        let mut out = self.clone();
        let rel = |p: &Path| relative_to(p, dir);
        let fix = |p: &mut PathBuf| -> Result<(), TrainError> {
            if !p.as_os_str().is_empty() {
                *p = rel(p)?;
            }
            Ok(())
        };
        fix(&mut out.out_dir)?;
        fix(&mut out.data.train)?;
        if let Some(v) = out.data.valid.as_mut() {
            fix(v)?;
        }
        for s in [&mut out.model.init, &mut out.model.tokenizer] {
            if !is_preset_name(s) && !s.is_empty() {
                *s = rel(Path::new(s.as_str()))?.display().to_string();
            }
        }
        Ok(out)
    }

    /// Checks values that have no sensible interpretation.
    pub fn validate(&self) -> Result<(), String> {
        let o = &self.optim;
        if o.total_steps == 0 {
            return Err("optim.total_steps must be > 0".into());
        }
        if o.warmup_steps > o.total_steps {
            return Err("optim.warmup_steps must not exceed total_steps".into());
        }
        if o.grad_accum == 0 || self.data.batch_size == 0 {
            return Err("optim.grad_accum and data.batch_size must be > 0".into());
        }
        if !o.lr.is_finite() || o.lr <= 0.0 {
            return Err(format!("optim.lr = {} must be finite and > 0", o.lr));
        }
        if !o.min_lr.is_finite() || o.min_lr < 0.0 {
            return Err(format!(
                "optim.min_lr = {} must be finite and >= 0",
                o.min_lr
            ));
        }
        if o.min_lr > o.lr {
            return Err(format!(
                "optim.min_lr = {} must not exceed optim.lr = {} (the schedule decays from lr to \
                 min_lr)",
                o.min_lr, o.lr
            ));
        }
        if self.data.num_workers > MAX_WORKERS {
            return Err(format!(
                "data.num_workers = {} is above the limit of {MAX_WORKERS} worker threads",
                self.data.num_workers
            ));
        }
        if self.precision.checkpoint_layers {
            if self.precision.gradient_checkpointing {
                return Err(
                    "precision.checkpoint_layers and gradient_checkpointing exclude each other"
                        .into(),
                );
            }
            if self.lora.as_ref().is_some_and(|l| l.dropout > 0.0) {
                return Err(
                    "precision.checkpoint_layers needs lora.dropout = 0 (the rerun layer \
                            would draw other dropout masks than the forward)"
                        .into(),
                );
            }
        }
        if self.checkpoint.every_steps == 0 || self.checkpoint.keep_last == 0 {
            return Err("checkpoint.every_steps and keep_last must be > 0".into());
        }
        if self.devices.total() == 0 {
            return Err("devices.count must be > 0 (or devices.remote must list a device)".into());
        }
        for (i, r) in self.devices.remote.iter().enumerate() {
            crate::remote::RemoteAddress::parse(r)
                .map_err(|e| format!("devices.remote[{i}]: {e}"))?;
        }
        if self.devices.optimizer == OptimizerPlacement::Sharded
            && self.devices.strategy != Strategy::Multi
        {
            return Err("devices.optimizer = \"sharded\" needs strategy multi".into());
        }
        if self.devices.strategy == Strategy::Ddp && !self.devices.remote.is_empty() {
            return Err(
                "devices.remote needs strategy multi: Burn 0.22 has no all-reduce across \
                        remote servers or on CPU devices, which ddp needs (docs/scaling.md)"
                    .into(),
            );
        }
        if let Some(ix) = &self.devices.indices
            && ix.len() != self.devices.count
        {
            return Err(format!(
                "devices.indices has {} entries but devices.count is {}",
                ix.len(),
                self.devices.count
            ));
        }
        if self.devices.strategy == Strategy::Single && self.devices.total() != 1 {
            return Err(
                "more than one device (devices.count + devices.remote) needs strategy \
                        multi or ddp"
                    .into(),
            );
        }
        if let Some(l) = &self.lora {
            l.validate()?;
        }
        if self.stage == Stage::Dpo
            && self.dpo.reference == DpoReference::LoraBase
            && self.lora.is_none()
        {
            return Err("dpo.reference = lora-base needs a [lora] section".into());
        }
        Ok(())
    }

    /// The image mode in effect.
    pub fn image_mode(&self) -> ResolutionMode {
        self.data.image_mode.unwrap_or(match self.stage {
            Stage::Pretrain => ResolutionMode::Fixed,
            _ => ResolutionMode::AnyRes,
        })
    }

    /// Micro-batches per checkpoint window.
    pub fn micro_batches_per_window(&self) -> usize {
        self.checkpoint.every_steps * self.optim.grad_accum
    }
}

/// `target` expressed relative to the directory `base`. Both are first made absolute against the
/// current directory (lexically: neither needs to exist yet).
pub fn relative_to(target: &Path, base: &Path) -> Result<PathBuf, TrainError> {
    let abs = |p: &Path| std::path::absolute(p).map_err(|e| TrainError::io(p, e));
    let (t, b) = (abs(target)?, abs(base)?);
    let rel = pathdiff::diff_paths(&t, &b).unwrap_or(t);
    // The directory itself is "." (an empty path would read as "not set").
    Ok(if rel.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        rel
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_parses_with_defaults() {
        let cfg: TrainConfig =
            toml::from_str("stage = \"dpo\"\n[data]\ntrain = \"mix.yaml\"\n").unwrap();
        assert_eq!(cfg.stage, Stage::Dpo);
        assert_eq!(cfg.dpo.beta, 0.1);
        assert!(cfg.freeze.vision);
        cfg.validate().unwrap();
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let r: Result<TrainConfig, _> =
            toml::from_str("stage = \"sft\"\n[optim]\nlearning_rate = 1\n");
        assert!(r.is_err());
    }

    #[test]
    fn layer_checkpointing_is_refused_where_its_gradients_would_differ_and_taken_for_dpo() {
        let mut cfg = TrainConfig::new(Stage::Sft, "x");
        cfg.precision.checkpoint_layers = true;
        cfg.validate().unwrap();
        let mut dpo = cfg.clone();
        dpo.stage = Stage::Dpo;
        dpo.validate().unwrap();
        let mut both = cfg.clone();
        both.precision.gradient_checkpointing = true;
        assert!(both.validate().unwrap_err().contains("exclude"));
        let mut lora = cfg.clone();
        lora.lora = Some(LoraConfig {
            rank: 4,
            alpha: 8.0,
            dropout: 0.05,
            targets: vec!["qkv_proj".into()],
        });
        assert!(lora.validate().unwrap_err().contains("dropout"));
        lora.lora.as_mut().unwrap().dropout = 0.0;
        lora.validate().unwrap();
    }

    #[test]
    fn lora_base_needs_lora() {
        let mut cfg = TrainConfig::new(Stage::Dpo, "x");
        cfg.dpo.reference = DpoReference::LoraBase;
        assert!(cfg.validate().unwrap_err().contains("lora"));
    }
}
