//! Running a stage end to end on burn-train: model, trainable parts, data loaders, optimizer and
//! schedule, checkpointers, metrics, execution strategy, then the final checkpoint and the HF
//! export. `train` is what `blip3 train --config stage.toml` calls.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use blip3_data::anyres::ImageProcessorConfig;
use blip3_data::loader::{LoaderConfig, LoaderState, LoaderStats, StreamingLoader};
use blip3_data::mixture::{Mixture, Recipe};
use blip3_data::pipeline::{Pipeline, PipelineConfig};
use blip3_model::loader::{LoadOptions, export_hf, save_checkpoint};
use blip3_model::{Backend, XGenMM, XGenMMConfig};
use blip3_processor::{ModelDir, Processor, TokenizerSource};
use burn::data::dataloader::DataLoader;
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLrScheduler;
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::distributed::{DistributedConfig, ReduceOperation};
use burn::train::checkpoint::KeepLastNCheckpoints;
use burn::train::metric::{LearningRateMetric, LossMetric};
use burn::train::renderer::MetricsRenderer;
use burn::train::{ExecutionStrategy, Learner, MultiDeviceOptim, SupervisedTraining};
use serde::{Deserialize, Serialize};

use crate::batch::{EmptyLoader, VlmBatcher, WindowTracking};
use crate::checkpoint::{CheckpointSet, Rejected, WindowStates, write_atomic};
use crate::config::{
    DpoReference, OptimizerPlacement, Precision, Renderer, Stage, Strategy, TrainConfig,
};
use crate::error::TrainError;
use crate::monitor::{LogRow, PlainRenderer, RunLogger, StepMetric, StepMetricKind};
use crate::optim::{WarmupCosine, build_optimizer, frozen_copy, set_trainable, trainable_params};
use crate::outdir::RunLock;
pub use crate::resume::{RunOptions, RunState, changed_settings, resume_settings};
use crate::resume::{Start, prepare_out_dir};
use crate::stage::{NoisedNegatives, StageModel, StageSettings, StepGuard, VlmBatch};

/// What a run produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSummary {
    /// The stage.
    pub stage: Stage,
    /// Optimizer steps run in total (including before a resume).
    pub steps: usize,
    /// Mean training loss over the last window.
    pub final_train_loss: Option<f64>,
    /// Last validation loss.
    pub final_valid_loss: Option<f64>,
    /// The final model (blip3 checkpoint with tokenizer), usable as the next stage's `init`.
    pub final_dir: PathBuf,
    /// The HF-layout export (LoRA merged), when enabled.
    pub export_dir: Option<PathBuf>,
    /// Steps skipped for non-finite values.
    pub skipped_steps: usize,
    /// Data statistics (bad samples by kind and source).
    pub data: LoaderStats,
    /// The window training resumed after, when resuming.
    pub resumed_from: Option<usize>,
    /// Trainable parameters.
    pub trainable_params: usize,
    /// Newer checkpoints `--resume` passed over (incomplete, truncated or corrupt), newest first.
    #[serde(default)]
    pub rejected_checkpoints: Vec<Rejected>,
}

/// The devices of a run: `count` devices of one backend, at `indices` when given (else `0..count`;
/// index 0 is the default adapter for the wgpu family).
pub fn make_devices(
    kind: Backend,
    count: usize,
    indices: Option<&[usize]>,
) -> Result<Vec<Device>, TrainError> {
    (0..count)
        .map(|i| {
            let index = indices.and_then(|ix| ix.get(i).copied()).unwrap_or(i);
            kind.device(index)
                .map_err(|e| TrainError::Config(format!("devices.kind: {e}")))
        })
        .collect()
}

/// The starting model and its processor: a preset (`tiny`, `mid`, `xgenmm-phi3-mini-v1.5`, built
/// for `tokenizer`'s vocabulary) or a model directory read by `blip3_processor` (its tokenizer
/// replaced by `tokenizer` unless that is empty). Special token ids come from the tokenizer.
pub fn initial_model(
    init: &str,
    tokenizer: &str,
    device: &Device,
) -> Result<(XGenMM, Processor), TrainError> {
    let source = tokenizer_source(tokenizer);
    let (model, processor) = match init {
        "tiny" | "mid" | "xgenmm-phi3-mini-v1.5" => {
            let tok = source.open_standalone()?;
            let cfg = XGenMMConfig::preset(init, tok.initial_len())?;
            let processor = Processor::for_config(tok, &cfg)?;
            (cfg.init(device), processor)
        }
        dir => {
            let dir = ModelDir::open(Path::new(dir), &source)?;
            // Released checkpoints are bf16; training keeps f32 master weights (bf16 mixed
            // precision computes on a bf16 view of them), so gradients and AdamW state are f32.
            let opts = LoadOptions {
                dtype: Some(DType::F32),
            };
            (dir.load_model(device, opts)?, dir.processor()?)
        }
    };
    Ok((
        model.with_special_tokens(processor.special_tokens()),
        processor,
    ))
}

/// A config's `model.tokenizer`: `tiny`, a directory, or empty for the init directory's own.
fn tokenizer_source(spec: &str) -> TokenizerSource {
    TokenizerSource::parse((!spec.is_empty()).then_some(spec))
}

/// The data pipeline for a stage: the processor's tokenizer and image settings, in the stage's
/// image mode ([`TrainConfig::image_mode`]).
pub fn pipeline_for(cfg: &TrainConfig, processor: &Processor) -> Result<Pipeline, TrainError> {
    let pc = PipelineConfig {
        image: ImageProcessorConfig {
            mode: cfg.image_mode(),
            ..processor.image_config().clone()
        },
        max_len: cfg.data.max_len,
        system_prompt: None,
        vision_tokens_per_group: processor.model_config().resampler.num_latents,
    };
    Ok(Pipeline::new(processor.tokenizer().clone(), pc)?)
}

fn open_loader(
    recipe: &Path,
    pipeline: Arc<Pipeline>,
    device: &Device,
    config: LoaderConfig,
) -> Result<StreamingLoader<VlmBatch>, TrainError> {
    let recipe = Recipe::load(recipe)?;
    let mixture = Mixture::open(&recipe, 0, 1)?;
    Ok(StreamingLoader::new(
        mixture,
        pipeline,
        Arc::new(VlmBatcher),
        device.clone(),
        config,
    )?)
}

fn last_losses(dir: &Path) -> (Option<f64>, Option<f64>, usize) {
    let Ok(text) = std::fs::read_to_string(dir.join("metrics.jsonl")) else {
        return (None, None, 0);
    };
    let rows: Vec<LogRow> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let last_window = rows
        .iter()
        .filter(|r| r.split == "train")
        .map(|r| r.window)
        .max();
    let train: Vec<f64> = rows
        .iter()
        .filter(|r| r.split == "train" && Some(r.window) == last_window)
        .filter_map(|r| r.metrics.get("Loss").copied())
        .collect();
    let valid = rows
        .iter()
        .rev()
        .find(|r| r.split == "valid-window")
        .and_then(|r| r.metrics.get("Loss").copied());
    let steps = rows
        .iter()
        .filter(|r| r.split == "train")
        .map(|r| r.step)
        .max()
        .unwrap_or(0);
    let mean = (!train.is_empty()).then(|| train.iter().sum::<f64>() / train.len() as f64);
    (mean, valid, steps)
}

/// What to do after a worker failed, said by every error that names one.
const RESTART_WORKERS: &str = "restart them and the other workers (Burn's workers keep stale \
     connections to a dead peer), then run again with --resume to continue from the last \
     checkpoint";

/// Runs one stage: output folder and resume point, devices, model, data, the burn-train run, then
/// the final checkpoint, the export and `summary.json`.
pub fn train(cfg: &TrainConfig, opts: &RunOptions) -> Result<TrainSummary, TrainError> {
    cfg.validate().map_err(TrainError::Config)?;
    if opts.resume && opts.overwrite {
        return Err(TrainError::Config(
            "--resume continues the run in the output directory, --overwrite replaces it: pass one"
                .into(),
        ));
    }
    let out = cfg.out_dir.clone();
    // One run per output directory, for as long as this function runs.
    let lock = RunLock::acquire(&out)?;
    let start = prepare_out_dir(cfg, opts, &out)?;
    // Written with paths relative to the written file, so `blip3 train --config out/config.toml`
    // works from any working directory.
    let cfg_text = toml::to_string_pretty(&cfg.relative_to(&out)?)
        .map_err(|e| TrainError::Config(e.to_string()))?;
    std::fs::write(out.join("config.toml"), cfg_text)
        .map_err(|e| TrainError::io(out.join("config.toml"), e))?;

    // Devices, model and data.
    let mut devices = make_devices(
        cfg.devices.kind,
        cfg.devices.count,
        cfg.devices.indices.as_deref(),
    )?;
    let remote_timeout = std::time::Duration::from_secs(cfg.devices.remote_timeout_s);
    let remote = crate::remote::connect_all(
        &cfg.devices.remote,
        &cfg.devices.remote_token_env,
        remote_timeout,
    )?;
    let remote_named: Vec<(String, Device)> = cfg
        .devices
        .remote
        .iter()
        .cloned()
        .zip(remote.iter().cloned())
        .collect();
    devices.extend(remote);
    let main = devices[0].clone();
    main.seed(cfg.seed);
    let mut ad = main.clone().autodiff();
    if cfg.precision.gradient_checkpointing {
        ad = ad.gradient_checkpointing();
    }
    let layout = Layout::of(cfg, devices.len());
    let (model, processor) = initial_model(&cfg.model.init, &cfg.model.tokenizer, &ad)?;
    let guard = Arc::new(StepGuard::new(cfg.monitor.max_nan_steps));
    let (stage_model, n_trainable) = stage_model(cfg, model, &processor, &layout, &guard, &ad);
    let pipeline = Arc::new(pipeline_for(cfg, &processor)?);
    let loaders = Loaders::open(cfg, &layout, pipeline, &ad, &start)?;

    // Optimizer, schedule, learner, and the burn-train run.
    let optim = build_optimizer(&cfg.optim)?;
    let sched = ModuleLrScheduler::new(WarmupCosine::new(&cfg.optim));
    let learner = Learner::new(stage_model, optim, sched);
    let parts = TrainingParts {
        cfg: cfg.clone(),
        out: out.clone(),
        start: start.clone(),
        layout,
        tracked: loaders.tracked.clone(),
        valid: loaders.valid.clone(),
        window_states: loaders.window_states.clone(),
        first_window: loaders.first_window,
        devices,
        ad,
        guard: guard.clone(),
    };
    // A worker that dies makes the next read of its tensors fail, as a failed training worker or
    // as a panic deep in Burn: either becomes an error naming the workers that no longer answer.
    // The checkpoints written so far are complete (atomic), so `--resume` continues once they
    // are back.
    let device_failure = |what: String| {
        let dead = crate::remote::unresponsive(&remote_named, crate::remote::PROBE_TIMEOUT);
        let who = if dead.is_empty() {
            "every remote device still answers".to_string()
        } else {
            format!("remote device(s) not answering: {}", dead.join(", "))
        };
        TrainError::Stopped(format!("{who} ({what}); {RESTART_WORKERS}"))
    };
    let (result, _lock) = if remote_named.is_empty() {
        (parts.build().launch(learner), lock)
    } else {
        // On its own thread, watched: Burn's remote client waits forever for a worker that hangs.
        // The thread holds the directory's lock until it hands it back with the result, so a run
        // left blocked in a hung worker can never write beside a new one.
        let (tx, rx) = std::sync::mpsc::channel();
        // The main thread's stack size (8 MiB), not a spawned thread's 2 MiB default: the
        // learner runs here what it would otherwise run on the main thread.
        std::thread::Builder::new()
            .name("blip3-train".into())
            .stack_size(8 << 20)
            .spawn(move || {
                let launched = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    parts.build().launch(learner)
                }));
                let _ = tx.send((launched, lock));
            })
            .map_err(|e| TrainError::Stopped(format!("cannot start the training thread: {e}")))?;
        let g = guard.clone();
        let watched =
            crate::remote::wait_watched(&rx, &remote_named, remote_timeout, || g.last_beat());
        match watched {
            Ok((Ok(result), lock)) => (result, lock),
            Ok((Err(panic), _)) => {
                return Err(device_failure(
                    panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "a panic".into()),
                ));
            }
            Err(hung) if hung.is_empty() => {
                return Err(TrainError::Stopped(
                    "the training thread ended without a result".into(),
                ));
            }
            Err(hung) => {
                let reason = format!(
                    "remote device(s) not answering: {} (no training progress for {} s, \
                     devices.remote_timeout_s); {RESTART_WORKERS}",
                    hung.join(", "),
                    cfg.devices.remote_timeout_s
                );
                guard.stop(reason.clone());
                return Err(TrainError::Stopped(reason));
            }
        }
    };
    if let Some(reason) = guard.failure() {
        return Err(TrainError::Stopped(reason));
    }
    if let Some(e) = result.error {
        if remote_named.is_empty() {
            return Err(TrainError::Stopped(e.to_string()));
        }
        return Err(device_failure(e.to_string()));
    }

    // Final model (LoRA merged) as a blip3 checkpoint, and optionally the HF export.
    let policy = result.model.policy.merge_lora();
    let tok = processor.tokenizer();
    let final_dir = out.join("final");
    save_checkpoint(&policy, &final_dir)?;
    tok.save(&final_dir)?;
    let export_dir = if cfg.checkpoint.export_hf {
        let dir = out.join("export");
        export_hf(&policy, &dir, None)?;
        tok.save(&dir)?;
        Some(dir)
    } else {
        None
    };
    let (final_train_loss, final_valid_loss, steps) = last_losses(&out);
    let skipped_before = start.state.as_ref().map_or(0, |s| s.skipped_steps);
    let summary = TrainSummary {
        stage: cfg.stage,
        steps,
        final_train_loss,
        final_valid_loss,
        final_dir,
        export_dir,
        skipped_steps: skipped_before + guard.skipped(),
        data: loaders.train.stats(),
        resumed_from: start.window,
        rejected_checkpoints: start.rejected,
        trainable_params: n_trainable,
    };
    let text =
        serde_json::to_string_pretty(&summary).map_err(|e| TrainError::Config(e.to_string()))?;
    write_atomic(&out.join("summary.json"), text.as_bytes())
        .map_err(|e| TrainError::io(out.join("summary.json"), e))?;
    Ok(summary)
}

/// How the devices split the work.
#[derive(Clone, Copy)]
struct Layout {
    /// Devices whose gradients are averaged inside one learner (`multi`), else 1.
    reduce_devices: usize,
    /// Samples per optimizer micro-step across all devices.
    global_batch: usize,
    /// Optimizer steps per checkpoint window.
    every: usize,
    /// Windows in the run.
    windows: usize,
}

impl Layout {
    fn of(cfg: &TrainConfig, n_dev: usize) -> Self {
        let reduce_devices = if cfg.devices.strategy == Strategy::Multi {
            n_dev
        } else {
            1
        };
        let data_parallel = match cfg.devices.strategy {
            Strategy::Ddp => n_dev,
            _ => 1,
        };
        let every = cfg.checkpoint.every_steps.min(cfg.optim.total_steps);
        Layout {
            reduce_devices,
            global_batch: cfg.data.batch_size * reduce_devices.max(data_parallel),
            every,
            windows: cfg.optim.total_steps.div_ceil(every),
        }
    }
}

/// The trainable stage model (frozen parts, LoRA, the DPO reference) and its trainable parameter
/// count.
fn stage_model(
    cfg: &TrainConfig,
    model: XGenMM,
    processor: &Processor,
    layout: &Layout,
    guard: &Arc<StepGuard>,
    ad: &Device,
) -> (StageModel, usize) {
    let tok = processor.tokenizer();
    let policy = set_trainable(model, &cfg.freeze, cfg.lora.as_ref(), ad);
    let n_trainable = trainable_params(&policy);
    log::info!(
        "{}: {} trainable parameters of {}",
        cfg.stage.name(),
        n_trainable,
        policy.num_params()
    );
    let reference = (cfg.stage == Stage::Dpo && cfg.dpo.reference == DpoReference::PolicyCopy)
        .then(|| frozen_copy(policy.clone()));
    let settings = StageSettings {
        stage: cfg.stage,
        loss_scale: 1.0 / (cfg.optim.grad_accum * layout.reduce_devices) as f64,
        dpo_beta: cfg.dpo.beta,
        dpo_reference: cfg.dpo.reference,
        compute_dtype: (cfg.precision.mode == Precision::Bf16Mixed).then_some(DType::BF16),
        checkpoint_layers: cfg.precision.checkpoint_layers,
        grad_clip: cfg.optim.grad_clip,
        guard: guard.clone(),
        noised_negatives: (cfg.stage == Stage::Dpo && cfg.dpo.noised_image_negatives).then(|| {
            NoisedNegatives {
                noise_std: cfg.dpo.noise_std,
                max_tokens: cfg.dpo.negative_max_tokens,
                end_id: tok.end_id(),
                eos_id: tok.eos_id(),
                pad_id: tok.pad_id(),
            }
        }),
    };
    (StageModel::new(policy, reference, settings), n_trainable)
}

/// The run's data loaders: training (restored to the resumed position, its window states recorded
/// for checkpoints) and validation.
struct Loaders {
    train: StreamingLoader<VlmBatch>,
    tracked: Arc<dyn DataLoader<VlmBatch>>,
    valid: Arc<dyn DataLoader<VlmBatch>>,
    window_states: WindowStates<LoaderState>,
    first_window: usize,
}

impl Loaders {
    fn open(
        cfg: &TrainConfig,
        layout: &Layout,
        pipeline: Arc<Pipeline>,
        ad: &Device,
        start: &Start,
    ) -> Result<Self, TrainError> {
        // One global batch = batch_size per device; a window = every_steps optimizer steps.
        let (every, windows, global_batch) = (layout.every, layout.windows, layout.global_batch);
        let mut lc = LoaderConfig::new(global_batch, global_batch * every * cfg.optim.grad_accum);
        lc.num_workers = cfg.data.num_workers;
        lc.length_grouping = cfg.data.length_grouping.then_some(8);
        lc.max_bad_rate = cfg.data.max_bad_percent / 100.0;
        let train = open_loader(&cfg.data.train, pipeline.clone(), ad, lc.clone())?;
        if let Some(state) = &start.state {
            train.restore(&state.loader)?;
        }
        let window_states = WindowStates::new();
        let first_window = start.window.map_or(1, |w| w + 1);
        // The last window is short when every_steps does not divide total_steps.
        let last_window_steps = cfg.optim.total_steps - (windows - 1) * every;
        let tracked: Arc<dyn DataLoader<VlmBatch>> = Arc::new(
            WindowTracking::new(train.clone(), window_states.clone(), first_window)
                .with_last_window(
                    windows,
                    every * cfg.optim.grad_accum,
                    last_window_steps * cfg.optim.grad_accum,
                ),
        );
        let valid: Arc<dyn DataLoader<VlmBatch>> = match &cfg.data.valid {
            Some(recipe) => {
                let n = cfg.data.valid_samples.div_ceil(global_batch).max(1) * global_batch;
                let mut vc = LoaderConfig::new(global_batch, n);
                vc.num_workers = cfg.data.num_workers;
                vc.fixed_window = true;
                vc.max_bad_rate = lc.max_bad_rate;
                Arc::new(open_loader(recipe, pipeline, ad, vc)?)
            }
            None => Arc::new(EmptyLoader),
        };
        Ok(Loaders {
            train,
            tracked,
            valid,
            window_states,
            first_window,
        })
    }
}

/// Everything the burn-train run is built from, owned, so that it can be built on the thread
/// that runs it.
struct TrainingParts {
    cfg: TrainConfig,
    out: PathBuf,
    start: Start,
    layout: Layout,
    tracked: Arc<dyn DataLoader<VlmBatch>>,
    valid: Arc<dyn DataLoader<VlmBatch>>,
    window_states: WindowStates<LoaderState>,
    first_window: usize,
    devices: Vec<Device>,
    ad: Device,
    guard: Arc<StepGuard>,
}

impl TrainingParts {
    /// The burn-train run: metrics, checkpointers (model, optimizer, scheduler and the run state
    /// with the records' checksums, written by whichever of the three finishes last; keep the
    /// last K), logger, renderer and execution strategy; its interrupter is handed to the guard.
    fn build(self) -> SupervisedTraining<StageModel> {
        let guard = self.guard.clone();
        let training = supervised_training(&self);
        guard.set_interrupter(training.interrupter());
        training
    }
}

fn supervised_training(parts: &TrainingParts) -> SupervisedTraining<StageModel> {
    let TrainingParts {
        cfg,
        out,
        start,
        layout,
        devices,
        ad,
        guard,
        ..
    } = parts;
    let seed = cfg.seed;
    let total_steps = cfg.optim.total_steps;
    let every = layout.every;
    let skipped_before = start.state.as_ref().map_or(0, |s| s.skipped_steps);
    let (ws, g2) = (parts.window_states.clone(), guard.clone());
    let resume_key = start.resume_key.clone();
    let state_source: crate::checkpoint::StateSource = Arc::new(move |w| {
        let loader = ws.get(w)?;
        serde_json::to_value(RunState {
            loader,
            seed,
            skipped_steps: skipped_before + g2.skipped(),
            steps: (w * every).min(total_steps),
            settings: resume_key.clone(),
        })
        .ok()
    });
    let checkpoints = CheckpointSet::new(&start.ckpt_dir, state_source);
    let reduce_devices = layout.reduce_devices;
    let renderer: Box<dyn MetricsRenderer> = match cfg.monitor.renderer {
        Renderer::Quiet => Box::new(PlainRenderer::new(usize::MAX, true)),
        Renderer::Plain => Box::new(PlainRenderer::new(
            cfg.monitor.log_every * cfg.optim.grad_accum * reduce_devices,
            false,
        )),
        Renderer::Auto => auto_renderer(cfg, reduce_devices),
    };
    let execution = match cfg.devices.strategy {
        Strategy::Multi => ExecutionStrategy::multi(
            devices.iter().map(|d| d.clone().autodiff()).collect(),
            match cfg.devices.optimizer {
                OptimizerPlacement::Main => MultiDeviceOptim::OptimMainDevice,
                OptimizerPlacement::Sharded => MultiDeviceOptim::OptimSharded,
            },
        ),
        Strategy::Ddp => ExecutionStrategy::ddp(
            devices.iter().map(|d| d.clone().autodiff()).collect(),
            DistributedConfig {
                all_reduce_op: ReduceOperation::Mean,
            },
        ),
        Strategy::Single => ExecutionStrategy::single(ad.clone()),
    };
    // Items the learner reports per optimizer step: one per micro-batch and device.
    let items_per_step = cfg.optim.grad_accum * reduce_devices;
    let micro_per_window = every * items_per_step;
    let mut training = SupervisedTraining::new(out, parts.tracked.clone(), parts.valid.clone())
        .metric_train_numeric(LossMetric::new())
        .metric_valid_numeric(LossMetric::new())
        .metric_train_numeric(LearningRateMetric::new())
        .metric_train_numeric(StepMetric::new(StepMetricKind::TokensPerSecond))
        .metric_train_numeric(StepMetric::new(StepMetricKind::SamplesPerSecond))
        .metric_train_numeric(StepMetric::new(StepMetricKind::GradNorm))
        .num_epochs(layout.windows)
        .grads_accumulation(cfg.optim.grad_accum)
        .with_custom_checkpointers(
            checkpoints.checkpointer("model"),
            checkpoints.checkpointer("optim"),
            checkpoints.checkpointer("scheduler"),
        )
        .with_checkpointing_strategy(KeepLastNCheckpoints::new(cfg.checkpoint.keep_last))
        .with_metric_logger(RunLogger::new(
            out,
            micro_per_window,
            items_per_step,
            parts.first_window,
        ))
        .with_application_logger(None)
        .renderer(renderer)
        .with_training_strategy(execution.into())
        .label(cfg.stage.name());
    if cfg.stage == Stage::Dpo {
        training = training
            .metric_train_numeric(StepMetric::new(StepMetricKind::RewardAccuracy))
            .metric_train_numeric(StepMetric::new(StepMetricKind::RewardMargin))
            .metric_valid_numeric(StepMetric::new(StepMetricKind::RewardAccuracy));
    }
    if cfg.precision.gradient_checkpointing {
        training = training.gradient_checkpointing();
    }
    if let Some(w) = start.window {
        log::info!("resuming after window {w} (step {})", w * every);
        training = training.checkpoint(w);
    }
    training
}

#[cfg(feature = "tui")]
fn auto_renderer(cfg: &TrainConfig, devices: usize) -> Box<dyn MetricsRenderer> {
    use std::io::IsTerminal;
    if std::io::stdout().is_terminal() {
        return burn::train::renderer::default_renderer(burn::train::Interrupter::new(), None);
    }
    Box::new(PlainRenderer::new(
        cfg.monitor.log_every * cfg.optim.grad_accum * devices,
        false,
    ))
}

#[cfg(not(feature = "tui"))]
fn auto_renderer(cfg: &TrainConfig, devices: usize) -> Box<dyn MetricsRenderer> {
    Box::new(PlainRenderer::new(
        cfg.monitor.log_every * cfg.optim.grad_accum * devices,
        false,
    ))
}
