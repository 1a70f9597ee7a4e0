//! LoRA adapters for the decoder's linear layers (as the paper uses for DPO and safety tuning).
//!
//! A branch sits beside its base `Linear` (the base keeps its checkpoint path): the layer computes
//! `base(x) + scale · B(A(dropout(x)))` with `scale = alpha / rank`, `A` initialised uniformly
//! (Kaiming, like PEFT) and `B` at zero, so attaching an adapter does not change the model.
//! [`merge`](LoraBranch::merge_into) folds `scale · A·B` into the base weight for export.

use burn::nn::{Dropout, DropoutConfig, Initializer, Linear, LinearConfig};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::linear::linear;

/// Where and how to attach adapters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Rank `r` of the update.
    pub rank: usize,
    /// Scale numerator: the update is multiplied by `alpha / rank`.
    pub alpha: f64,
    /// Dropout on the adapter's input (training only).
    #[serde(default)]
    pub dropout: f64,
    /// Target layers by name: any of `qkv_proj`, `o_proj`, `gate_up_proj`, `down_proj`.
    pub targets: Vec<String>,
}

impl LoraConfig {
    /// The names accepted in [`targets`](Self::targets).
    pub const TARGETS: [&'static str; 4] = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"];

    /// Whether `name` is targeted.
    pub fn targets(&self, name: &str) -> bool {
        self.targets.iter().any(|t| t == name)
    }

    /// Checks rank and targets.
    pub fn validate(&self) -> Result<(), String> {
        if self.rank == 0 {
            return Err("lora.rank must be > 0".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err("lora.dropout must be in [0, 1)".into());
        }
        for t in &self.targets {
            if !Self::TARGETS.contains(&t.as_str()) {
                return Err(format!(
                    "unknown lora target {t:?} (valid: {:?})",
                    Self::TARGETS
                ));
            }
        }
        if self.targets.is_empty() {
            return Err("lora.targets is empty".into());
        }
        Ok(())
    }

    /// A branch for a `d_in → d_out` layer.
    pub fn branch(&self, d_in: usize, d_out: usize, device: &Device) -> LoraBranch {
        // PEFT initialises A with kaiming_uniform(a = sqrt(5)): U(-1/sqrt(d_in), 1/sqrt(d_in)).
        let bound = 1.0 / (d_in as f64).sqrt();
        LoraBranch {
            lora_a: LinearConfig::new(d_in, self.rank)
                .with_bias(false)
                .with_initializer(Initializer::Uniform {
                    min: -bound,
                    max: bound,
                })
                .init(device),
            lora_b: LinearConfig::new(self.rank, d_out)
                .with_bias(false)
                .with_initializer(Initializer::Zeros)
                .init(device),
            dropout: DropoutConfig::new(self.dropout).init(),
            scale: self.alpha / self.rank as f64,
        }
    }
}

/// A low-rank update `scale · B(A(x))`.
#[derive(Module, Debug)]
pub struct LoraBranch {
    /// Down projection `d_in → r`.
    pub lora_a: Linear,
    /// Up projection `r → d_out` (zero-initialised).
    pub lora_b: Linear,
    /// Input dropout.
    pub dropout: Dropout,
    /// `alpha / rank`.
    pub scale: f64,
}

impl LoraBranch {
    /// The update for input `x` `[.., d_in]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let dtype = self.lora_a.weight.val().dtype();
        let h = self.lora_a.forward(self.dropout.forward(x.cast(dtype)));
        self.lora_b.forward(h) * self.scale
    }

    /// Returns `base` with `scale · A·B` added to its weight (Burn layout `[d_in, d_out]`).
    pub fn merge_into(&self, mut base: Linear) -> Linear {
        let delta = self.lora_a.weight.val().matmul(self.lora_b.weight.val()) * self.scale;
        base.weight = base.weight.map(|w| {
            let dtype = w.dtype();
            (w.cast(delta.dtype()) + delta).cast(dtype)
        });
        base
    }
}

/// `base(x)` plus the branch's update when a branch is attached.
pub fn adapted(base: &Linear, lora: Option<&LoraBranch>, x: Tensor<3>) -> Tensor<3> {
    match lora {
        None => linear(base, x),
        Some(l) => {
            let y = linear(base, x.clone());
            let dtype = y.dtype();
            y + l.forward(x).cast(dtype)
        }
    }
}
