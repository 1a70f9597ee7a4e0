//! Optimisation pieces: AdamW with the configurable no-decay rule, the warm-up + cosine schedule
//! (HF's `get_cosine_schedule_with_warmup` shape: linear from 0 over the warm-up, then cosine to
//! `min_lr`), trainable-part selection (freezing by component, LoRA), and the DPO reference copy.

use blip3_model::{LoraConfig, XGenMM};
use burn::module::{Module, ModuleMapper, Param, ParamGroup};
use burn::optim::lr_scheduler::{LrScheduler, LrSchedulerRecord};
use burn::optim::{AdamWConfig, ModuleOptimizer};
use burn::prelude::*;

use crate::config::{FreezeSection, OptimSection, Schedule};
use crate::error::TrainError;

/// Linear warm-up from 0 then cosine decay (or constant), stepped once per optimizer step.
#[derive(Debug, Clone)]
pub struct WarmupCosine {
    peak: f64,
    min: f64,
    warmup: usize,
    total: usize,
    cosine: bool,
    step: usize,
}

impl WarmupCosine {
    /// The schedule of an optimizer config.
    pub fn new(cfg: &OptimSection) -> Self {
        Self {
            peak: cfg.lr,
            min: cfg.min_lr,
            warmup: cfg.warmup_steps,
            total: cfg.total_steps,
            cosine: cfg.schedule == Schedule::Cosine,
            step: 0,
        }
    }

    /// The learning rate used by optimizer step `t` (0-based).
    pub fn lr_at(&self, t: usize) -> f64 {
        if t < self.warmup {
            return self.peak * t as f64 / self.warmup as f64;
        }
        if !self.cosine {
            return self.peak;
        }
        let span = self.total.saturating_sub(self.warmup).max(1) as f64;
        let progress = ((t - self.warmup) as f64 / span).min(1.0);
        self.min + (self.peak - self.min) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

impl LrScheduler for WarmupCosine {
    fn step(&mut self) -> f64 {
        let lr = self.lr_at(self.step);
        self.step += 1;
        lr
    }

    fn to_record(&self) -> LrSchedulerRecord {
        LrSchedulerRecord::new().with_scalar("step", self.step as f64)
    }

    fn load_record(&mut self, record: LrSchedulerRecord) {
        if let Some(s) = record.scalar::<f64>("step") {
            self.step = s as usize;
        }
    }
}

/// AdamW (decoupled weight decay) with the parameters matching `no_decay` exempt from decay.
pub fn build_optimizer(cfg: &OptimSection) -> Result<ModuleOptimizer, TrainError> {
    let adamw = |wd: f32| {
        AdamWConfig::new()
            .with_beta_1(cfg.betas[0])
            .with_beta_2(cfg.betas[1])
            .with_epsilon(cfg.eps)
            .with_weight_decay(wd)
    };
    let mut optim = adamw(cfg.weight_decay).init();
    if !cfg.no_decay.is_empty() && cfg.weight_decay > 0.0 {
        let group = ParamGroup::from_regexes(cfg.no_decay.clone())
            .map_err(|e| TrainError::Config(format!("optim.no_decay: {e:?}")))?;
        optim = optim.with_group(group, adamw(0.0).build(), None);
    }
    Ok(optim)
}

/// Applies the stage's freezing and LoRA: frozen components get no gradients (and the frozen ViT
/// runs untracked); with LoRA the decoder layers and final norm are frozen and adapters are
/// attached to them, while the embeddings and output head follow `freeze.embeddings`.
pub fn set_trainable(
    mut model: XGenMM,
    freeze: &FreezeSection,
    lora: Option<&LoraConfig>,
    device: &Device,
) -> XGenMM {
    if freeze.vision {
        model.vision_encoder = model.vision_encoder.freeze();
    }
    if freeze.resampler {
        model.vision_tokenizer = model.vision_tokenizer.freeze();
    }
    let lm = &mut model.lang_model;
    if freeze.lm || lora.is_some() {
        lm.model.layers = std::mem::take(&mut lm.model.layers)
            .into_iter()
            .map(|l| l.freeze())
            .collect();
        lm.model.norm = lm.model.norm.clone().freeze();
    }
    if freeze.embeddings {
        lm.model.embed_tokens = lm.model.embed_tokens.clone().freeze();
        lm.lm_head = lm.lm_head.clone().freeze();
    }
    match lora {
        Some(cfg) => model.attach_lora(cfg, device),
        None => model,
    }
}

/// A frozen copy of `model` whose parameters have fresh ids, so the optimizer (which matches
/// gradients and state by id) can never touch it.
pub fn frozen_copy<M: Module>(model: M) -> M {
    struct Fresh;
    impl ModuleMapper for Fresh {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            Param::from_tensor(param.val().detach()).set_require_grad(false)
        }
    }
    model.map(&mut Fresh)
}

/// Counts trainable parameters (those that will receive gradients).
pub fn trainable_params<M: Module>(model: &M) -> usize {
    struct Count(usize);
    impl burn::module::ModuleVisitor for Count {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if param.val().is_require_grad() {
                self.0 += param.lazy_shape().num_elements();
            }
        }
    }
    let mut c = Count(0);
    model.visit(&mut c);
    c.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine() {
        let cfg = OptimSection {
            lr: 1.0,
            warmup_steps: 4,
            total_steps: 12,
            min_lr: 0.1,
            ..Default::default()
        };
        let s = WarmupCosine::new(&cfg);
        assert_eq!(s.lr_at(0), 0.0);
        assert_eq!(s.lr_at(2), 0.5);
        assert!((s.lr_at(4) - 1.0).abs() < 1e-12);
        assert!((s.lr_at(8) - 0.55).abs() < 1e-12); // halfway: min + (1 - min) / 2
        assert!((s.lr_at(12) - 0.1).abs() < 1e-12);
        assert!((s.lr_at(40) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn scheduler_record_round_trip() {
        let cfg = OptimSection {
            lr: 1.0,
            warmup_steps: 2,
            total_steps: 10,
            ..Default::default()
        };
        let mut a = WarmupCosine::new(&cfg);
        for _ in 0..5 {
            a.step();
        }
        let mut b = WarmupCosine::new(&cfg);
        b.load_record(a.to_record());
        assert_eq!(a.step(), b.step());
    }
}
