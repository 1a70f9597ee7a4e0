//! One learner for all five stages: [`StageModel`] implements burn-train's `TrainStep` and
//! `InferenceStep`; the stages differ only in what `step` computes (causal-LM loss or DPO).
//!
//! What burn-train does not provide lives here, in the two hooks it exposes:
//! - `step`: the masked cross-entropy (label −100 ignored), the loss scaled by
//!   `1 / (grad_accum · devices)` so that burn's summed gradient accumulation averages, bf16
//!   mixed precision (an autodiff-tracked bf16 view of the f32 master weights, so gradients and
//!   optimizer state stay f32), the frozen ViT run without tracking, and non-finite losses
//!   skipped with a warning (the run stops after `max_nan_steps` in a row).
//! - `optimize`: gradient clipping by the *global* norm over all trainable parameters (Burn's
//!   clips each tensor separately) before the optimizer step.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use blip3_model::{MultimodalInput, XGenMM};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use burn::optim::{GradientsParams, MultiGradientsParams};
use burn::prelude::*;
use burn::tensor::DType;
use burn::train::{InferenceStep, Interrupter, TrainOutput, TrainStep};

use crate::config::{DpoReference, Stage};
use crate::layer_checkpoint::{self, LayerSegments};
use crate::loss::{causal_lm_loss, dpo_loss, sequence_logprobs};
use crate::monitor::StepOutput;

/// A training batch on the device.
#[derive(Debug, Clone)]
pub struct VlmBatch {
    /// The sequences (for DPO: the chosen answers).
    pub input: MultimodalInput,
    /// DPO: the rejected answers (same prompts and images, row for row).
    pub rejected: Option<MultimodalInput>,
}

impl VlmBatch {
    /// Samples in the batch.
    pub fn len(&self) -> usize {
        self.input.input_ids.len()
    }

    /// True for an empty batch.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// State shared by every replica of a stage model (and the run): the non-finite-loss streak, the
/// last global gradient norm, and the handle that stops the run.
#[derive(Default)]
pub struct StepGuard {
    nan_streak: AtomicUsize,
    skipped: AtomicUsize,
    max_nan: usize,
    last_grad_norm: Mutex<Option<f64>>,
    interrupter: Mutex<Option<Interrupter>>,
    failure: Mutex<Option<String>>,
    last_beat: Mutex<Option<std::time::Instant>>,
}

impl std::fmt::Debug for StepGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepGuard")
            .field("nan_streak", &self.nan_streak)
            .field("skipped", &self.skipped)
            .field("max_nan", &self.max_nan)
            .finish_non_exhaustive()
    }
}

impl StepGuard {
    /// A guard stopping the run after `max_nan` consecutive non-finite losses.
    pub fn new(max_nan: usize) -> Self {
        Self {
            max_nan: max_nan.max(1),
            ..Default::default()
        }
    }

    /// Connects the guard to the run's interrupter.
    pub fn set_interrupter(&self, i: Interrupter) {
        if let Ok(mut g) = self.interrupter.lock() {
            *g = Some(i);
        }
    }

    /// Steps skipped because of a non-finite loss or gradient.
    pub fn skipped(&self) -> usize {
        self.skipped.load(Ordering::Relaxed)
    }

    /// The reason the guard stopped the run, if it did.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().ok().and_then(|f| f.clone())
    }

    /// The global gradient norm of the last optimizer step.
    pub fn last_grad_norm(&self) -> Option<f64> {
        self.last_grad_norm.lock().ok().and_then(|g| *g)
    }

    /// Records progress: a replica computed a loss or the optimizer took a step.
    pub fn beat(&self) {
        if let Ok(mut b) = self.last_beat.lock() {
            *b = Some(std::time::Instant::now());
        }
    }

    /// When progress was last recorded, if ever.
    pub fn last_beat(&self) -> Option<std::time::Instant> {
        self.last_beat.lock().ok().and_then(|b| *b)
    }

    /// Stops the run: records `reason` (the first one wins) and interrupts the learner at its
    /// next step.
    pub fn stop(&self, reason: String) {
        log::error!("{reason}");
        if let Ok(mut f) = self.failure.lock() {
            f.get_or_insert(reason.clone());
        }
        if let Ok(g) = self.interrupter.lock()
            && let Some(i) = g.as_ref()
        {
            i.stop(Some(&reason));
        }
    }

    /// Records a non-finite value; returns true when the step must be skipped.
    fn non_finite(&self, what: &str) {
        self.skipped.fetch_add(1, Ordering::Relaxed);
        let streak = self.nan_streak.fetch_add(1, Ordering::Relaxed) + 1;
        log::warn!("non-finite {what}: step skipped ({streak} in a row)");
        if streak >= self.max_nan {
            self.stop(format!(
                "{streak} consecutive non-finite {what}s; stopping the run"
            ));
        }
    }

    fn finite(&self) {
        self.nan_streak.store(0, Ordering::Relaxed);
    }
}

/// Per-stage settings (not parameters).
#[derive(Debug, Clone)]
pub struct StageSettings {
    /// The stage.
    pub stage: Stage,
    /// Multiplier of the loss before backward: `1 / (grad_accum · devices)`.
    pub loss_scale: f64,
    /// DPO β.
    pub dpo_beta: f64,
    /// DPO reference.
    pub dpo_reference: DpoReference,
    /// bf16 mixed precision when set.
    pub compute_dtype: Option<DType>,
    /// Per-decoder-layer activation checkpointing (`crate::layer_checkpoint`; next-token
    /// stages).
    pub checkpoint_layers: bool,
    /// Global-norm clipping threshold.
    pub grad_clip: Option<f64>,
    /// Shared run state.
    pub guard: Arc<StepGuard>,
    /// DPO: an extra rejected answer per pair, generated by the policy from a noised image.
    pub noised_negatives: Option<NoisedNegatives>,
}

/// Settings of DPO's extra rejected answers (docs/reference.md §4.1): the policy answers each
/// prompt from its image with Gaussian noise added to the normalised pixels, greedily, and that
/// answer is used as a second dispreferred response.
#[derive(Debug, Clone, PartialEq)]
pub struct NoisedNegatives {
    /// Standard deviation of the pixel noise.
    pub noise_std: f64,
    /// Tokens generated.
    pub max_tokens: usize,
    /// `<|end|>`: ends the generation and the answer.
    pub end_id: u32,
    /// EOS (also ends a generation).
    pub eos_id: u32,
    /// Padding id for finished rows.
    pub pad_id: u32,
}

/// The model trained by every stage: the policy, plus a frozen reference for DPO.
#[derive(Module, Debug)]
pub struct StageModel {
    /// The model being trained.
    pub policy: XGenMM,
    /// DPO's frozen reference (a copy of the starting policy), when used.
    pub reference: Option<XGenMM>,
    #[module(skip)]
    settings: StageSettings,
}

impl StageModel {
    /// Wraps a policy (and optionally a DPO reference) with its stage settings.
    pub fn new(policy: XGenMM, reference: Option<XGenMM>, settings: StageSettings) -> Self {
        Self {
            policy,
            reference,
            settings,
        }
    }

    /// The settings.
    pub fn settings(&self) -> &StageSettings {
        &self.settings
    }

    /// The policy as used for computation: itself, or a tracked bf16 view in mixed precision.
    fn compute_policy(&self) -> XGenMM {
        match self.settings.compute_dtype {
            Some(d) => blip3_model::loader::cast_module(self.policy.clone(), d),
            None => self.policy.clone(),
        }
    }

    /// Loss (unscaled) and statistics of one batch.
    fn compute(&self, batch: &VlmBatch) -> Result<(Tensor<1>, StepOutput), String> {
        let policy = self.compute_policy();
        let samples = batch.len();
        match self.settings.stage {
            Stage::Dpo => self
                .compute_dpo(&policy, batch, false)
                .map(|(loss, item, _)| (loss, item)),
            _ => {
                let out = policy.forward(&batch.input).map_err(|e| e.to_string())?;
                let labels = out.fused.labels.as_ref().ok_or("batch has no labels")?;
                let (loss, tokens) = causal_lm_loss(out.logits, labels);
                let item = StepOutput::new(loss.clone().detach(), samples, tokens);
                Ok((loss, item))
            }
        }
    }

    /// [`compute`](Self::compute) for the next-token stages with per-decoder-layer activation
    /// checkpointing: the loss, its statistics and the segments the backward reruns.
    fn compute_checkpointed(
        &self,
        batch: &VlmBatch,
    ) -> Result<(Tensor<1>, StepOutput, LayerSegments), String> {
        let policy = self.compute_policy();
        let out = layer_checkpoint::forward(&policy, &batch.input)?;
        let labels = out.labels.ok_or("batch has no labels")?;
        let (loss, tokens) = causal_lm_loss(out.logits, &labels);
        let segments = out.segments;
        let item = StepOutput::new(loss.clone().detach(), batch.len(), tokens);
        Ok((loss, item, segments))
    }

    /// The DPO loss and its statistics; with `checkpointed`, the policy's forward is the
    /// per-decoder-layer checkpointed one and its segments come back for the backward.
    fn compute_dpo(
        &self,
        policy: &XGenMM,
        batch: &VlmBatch,
        checkpointed: bool,
    ) -> Result<(Tensor<1>, StepOutput, Option<LayerSegments>), String> {
        let rejected = batch
            .rejected
            .as_ref()
            .ok_or("a DPO batch needs rejected answers")?;
        let b = batch.len();
        // One forward over chosen, rejected (and noised-image negative) rows together.
        let mut rows = concat_inputs(&batch.input, rejected);
        let extra = match &self.settings.noised_negatives {
            Some(n) => Some(self.noised_negatives(&batch.input, n)?),
            None => None,
        };
        if let Some(x) = &extra {
            rows = concat_inputs(&rows, x);
        }
        let (logits, labels, segments) = if checkpointed {
            let out = layer_checkpoint::forward(policy, &rows)?;
            (out.logits, out.labels, Some(out.segments))
        } else {
            let out = policy.forward(&rows).map_err(|e| e.to_string())?;
            (out.logits, out.fused.labels, None)
        };
        let labels = &labels.ok_or("batch has no labels")?;
        let tokens = crate::loss::kept_positions(labels).len();
        let logps = sequence_logprobs(logits, labels);
        let reference = match (self.settings.dpo_reference, &self.reference) {
            (DpoReference::PolicyCopy, Some(r)) => r.clone(),
            (DpoReference::LoraBase, _) => self.policy.clone().without_lora(),
            (DpoReference::PolicyCopy, None) => return Err("DPO needs a reference model".into()),
        };
        let ref_out = reference.forward(&rows).map_err(|e| e.to_string())?;
        let ref_logps = sequence_logprobs(ref_out.logits, labels).detach();
        let part = |t: &Tensor<1>, k: usize| t.clone().narrow(0, k * b, b);
        let beta = self.settings.dpo_beta;
        let terms = dpo_loss(
            part(&logps, 0),
            part(&logps, 1),
            part(&ref_logps, 0),
            part(&ref_logps, 1),
            beta,
        );
        let loss = if extra.is_some() {
            // The chosen answer is also preferred over the noised-image answer; both terms count
            // equally.
            let more = dpo_loss(
                part(&logps, 0),
                part(&logps, 2),
                part(&ref_logps, 0),
                part(&ref_logps, 2),
                beta,
            );
            (terms.loss.clone() + more.loss) / 2.0
        } else {
            terms.loss.clone()
        };
        let c: Vec<f32> = host(terms.chosen_rewards);
        let r: Vec<f32> = host(terms.rejected_rewards);
        let acc = c.iter().zip(&r).filter(|(x, y)| x > y).count() as f64 / b.max(1) as f64;
        let margin = c.iter().zip(&r).map(|(x, y)| (x - y) as f64).sum::<f64>() / b.max(1) as f64;
        let item = StepOutput::new(loss.clone().detach(), b, tokens).with_rewards(acc, margin);
        Ok((loss, item, segments))
    }

    /// The policy's greedy answers to the batch's prompts with noised images, as labelled rows
    /// (prompt ids, then the answer and `<|end|>` as labels) over the clean images.
    fn noised_negatives(
        &self,
        chosen: &MultimodalInput,
        n: &NoisedNegatives,
    ) -> Result<MultimodalInput, String> {
        let labels = chosen.labels.as_ref().ok_or("a DPO batch needs labels")?;
        let generator = self.policy.clone().valid();
        let device = generator.device();
        let mut prompts = MultimodalInput::default();
        for (ids, lab) in chosen.input_ids.iter().zip(labels) {
            let start = lab
                .iter()
                .position(|&l| l != crate::loss::IGNORE)
                .unwrap_or(ids.len());
            prompts.input_ids.push(ids[..start].to_vec());
        }
        for imgs in &chosen.images {
            let noisy = imgs
                .iter()
                .map(|im| {
                    let clean = im.pixels.clone().inner().to_device(&device);
                    let noise =
                        clean.random_like(burn::tensor::Distribution::Normal(0.0, n.noise_std));
                    blip3_model::ImageInput {
                        pixels: clean + noise,
                        ..im.clone()
                    }
                })
                .collect();
            prompts.images.push(noisy);
        }
        let cfg = blip3_model::GenerationConfig {
            max_new_tokens: n.max_tokens,
            stop_ids: vec![n.end_id, n.eos_id],
            pad_id: n.pad_id,
            ..Default::default()
        };
        let answers = generator
            .generate(&prompts, &cfg, |_, _| true)
            .map_err(|e| e.to_string())?;
        let initial = generator.config().initial_tokenizer_len;
        let mut out = MultimodalInput {
            images: chosen.images.clone(),
            ..Default::default()
        };
        let mut out_labels = Vec::new();
        for (prompt, g) in prompts.input_ids.iter().zip(&answers) {
            // Media and other added tokens never belong in an answer; drop them with the stops.
            let mut answer: Vec<u32> = g
                .token_ids
                .iter()
                .copied()
                .filter(|&t| {
                    t != n.end_id && t != n.eos_id && t != n.pad_id && (t as usize) < initial
                })
                .collect();
            answer.push(n.end_id);
            let mut ids = prompt.clone();
            ids.extend(&answer);
            let mut lab = vec![crate::loss::IGNORE; prompt.len()];
            lab.extend(answer.iter().map(|&t| t as i64));
            out.input_ids.push(ids);
            out_labels.push(lab);
        }
        out.labels = Some(out_labels);
        Ok(out)
    }
}

fn host(t: Tensor<1>) -> Vec<f32> {
    t.cast(DType::F32)
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap_or_default()
}

/// Stacks two batches row-wise (chosen rows, then rejected rows).
pub fn concat_inputs(a: &MultimodalInput, b: &MultimodalInput) -> MultimodalInput {
    let mut out = a.clone();
    out.input_ids.extend(b.input_ids.iter().cloned());
    out.images.extend(b.images.iter().cloned());
    out.labels = match (&a.labels, &b.labels) {
        (Some(x), Some(y)) => Some(x.iter().chain(y).cloned().collect()),
        _ => None,
    };
    out
}

impl TrainStep for StageModel {
    type Input = VlmBatch;
    type Output = StepOutput;

    fn step(&self, batch: VlmBatch) -> TrainOutput<StepOutput> {
        let guard = &self.settings.guard;
        let layered = self.settings.checkpoint_layers;
        let computed = match self.settings.stage {
            Stage::Dpo => self.compute_dpo(&self.compute_policy(), &batch, layered),
            _ if layered => self
                .compute_checkpointed(&batch)
                .map(|(loss, item, segments)| (loss, item, Some(segments))),
            _ => self.compute(&batch).map(|(loss, item)| (loss, item, None)),
        };
        let (loss, item, segments) = match computed {
            Ok(x) => x,
            Err(e) => {
                guard.stop(format!("training step failed: {e}"));
                let device = self.policy.device();
                let zero = Tensor::<1>::zeros([1], &device);
                return TrainOutput {
                    grads: GradientsParams::new(),
                    item: StepOutput::new(zero, batch.len(), 0),
                };
            }
        };
        let value = item.loss_value();
        guard.beat();
        if !value.is_finite() {
            guard.non_finite("loss");
            return TrainOutput {
                grads: GradientsParams::new(),
                item: item.skipped(),
            };
        }
        let grads = (loss * self.settings.loss_scale).backward();
        let item = item.with_grad_norm(guard.last_grad_norm());
        match segments {
            None => TrainOutput::new(self, grads, item),
            Some(segments) => match segments.backward(grads, self) {
                Ok(grads) => TrainOutput { grads, item },
                Err(e) => {
                    guard.stop(format!("training step failed: {e}"));
                    TrainOutput {
                        grads: GradientsParams::new(),
                        item: item.skipped(),
                    }
                }
            },
        }
    }

    fn optimize(
        self,
        optim: &mut burn::optim::ModuleOptimizer,
        lr: ModuleLearningRate,
        mut grads: GradientsParams,
    ) -> Self {
        if grads.is_empty() {
            return self;
        }
        match self.clip_factor(global_grad_norm(&self, &grads)) {
            None => self,
            Some(factor) => {
                if let Some(f) = factor {
                    scale_grads(&self, &mut grads, f);
                }
                optim.step(lr, self, grads)
            }
        }
    }

    /// Sharded optimizer state (`devices.optimizer = "sharded"`): each parameter's gradients are
    /// summed on the device that owns it (Burn's `MultiGradientsParams::remove`, the placement
    /// `step_multi` uses), the global norm is taken over those sums, all of them are clipped by
    /// the same factor, and each owner's AdamW step runs on its device.
    fn optimize_multi(
        self,
        optim: &mut burn::optim::ModuleOptimizer,
        lr: ModuleLearningRate,
        mut multi: MultiGradientsParams,
    ) -> Self {
        let devices: Vec<Device> = multi.grads.iter().map(|(_, d)| d.clone()).collect();
        let main = self.policy.device();
        struct Gather<'a> {
            multi: &'a mut MultiGradientsParams,
            devices: &'a [Device],
            owned: Vec<GradientsParams>,
            squares: Option<Tensor<1>>,
            main: Device,
        }
        impl ModuleVisitor for Gather<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                if let Some((g, device)) = self.multi.remove::<D>(param.id) {
                    let s = g
                        .clone()
                        .cast(DType::F32)
                        .square()
                        .sum()
                        .to_device(&self.main);
                    self.squares = Some(match self.squares.take() {
                        Some(a) => a + s,
                        None => s,
                    });
                    let owner = self.devices.iter().position(|d| *d == device).unwrap_or(0);
                    self.owned[owner].register(param.id, g);
                }
            }
        }
        let mut gather = Gather {
            multi: &mut multi,
            devices: &devices,
            owned: devices.iter().map(|_| GradientsParams::new()).collect(),
            squares: None,
            main,
        };
        self.visit(&mut gather);
        let Some(squares) = gather.squares.take() else {
            return self;
        };
        let mut owned = std::mem::take(&mut gather.owned);
        let norm = (squares.into_scalar::<f32>() as f64).sqrt();
        match self.clip_factor(norm) {
            None => self,
            Some(factor) => {
                if let Some(f) = factor {
                    for grads in owned.iter_mut() {
                        scale_grads(&self, grads, f);
                    }
                }
                let grads = MultiGradientsParams {
                    grads: owned.into_iter().zip(devices).collect(),
                };
                optim.step_multi(lr, self, grads)
            }
        }
    }
}

impl StageModel {
    /// Records the step's global gradient norm and decides what to do with the gradients:
    /// `None` to skip the step (a non-finite norm, counted by the guard), `Some(Some(f))` to
    /// scale them by `f` (global-norm clipping), `Some(None)` to use them as they are.
    fn clip_factor(&self, norm: f64) -> Option<Option<f64>> {
        let guard = &self.settings.guard;
        if let Ok(mut g) = guard.last_grad_norm.lock() {
            *g = Some(norm);
        }
        guard.beat();
        if !norm.is_finite() {
            guard.non_finite("gradient norm");
            return None;
        }
        guard.finite();
        Some(
            self.settings
                .grad_clip
                .filter(|&max| norm > max)
                .map(|max| max / (norm + 1e-6)),
        )
    }
}

impl InferenceStep for StageModel {
    type Input = VlmBatch;
    type Output = StepOutput;

    fn step(&self, batch: VlmBatch) -> StepOutput {
        match self.compute(&batch) {
            Ok((_, item)) => item,
            Err(e) => {
                log::warn!("validation step failed: {e}");
                let device = self.policy.device();
                StepOutput::new(Tensor::zeros([1], &device), batch.len(), 0).skipped()
            }
        }
    }
}

/// The global L2 norm of all gradients present (one synchronisation).
pub fn global_grad_norm<M: Module>(module: &M, grads: &GradientsParams) -> f64 {
    struct Sum<'a> {
        grads: &'a GradientsParams,
        acc: Option<Tensor<1>>,
    }
    impl ModuleVisitor for Sum<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.get::<D>(param.id) {
                let s = g.cast(DType::F32).square().sum();
                self.acc = Some(match self.acc.take() {
                    Some(a) => a + s,
                    None => s,
                });
            }
        }
    }
    let mut v = Sum { grads, acc: None };
    module.visit(&mut v);
    match v.acc {
        Some(t) => (t.into_scalar::<f32>() as f64).sqrt(),
        None => 0.0,
    }
}

/// Multiplies every gradient present by `factor`.
pub fn scale_grads<M: Module>(module: &M, grads: &mut GradientsParams, factor: f64) {
    struct Scale<'a> {
        grads: &'a mut GradientsParams,
        factor: f64,
    }
    impl ModuleVisitor for Scale<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.remove::<D>(param.id) {
                self.grads.register(param.id, g * self.factor);
            }
        }
    }
    module.visit(&mut Scale { grads, factor });
}
