//! Per-decoder-layer activation checkpointing (`precision.checkpoint_layers`): the decoder's
//! activations are kept for one layer at a time instead of all of them.
//!
//! Burn 0.22 has no segment-level checkpoint (its strategies choose per op), so the training
//! step is split at layer boundaries (docs/training.md, "Activation checkpointing"):
//!
//! 1. **Forward.** The fused embeddings (vision tower, resampler, token embeddings) are computed
//!    with autodiff as usual. The decoder layers then run without autodiff (on the inner
//!    backend), and only each layer's input is kept. The head and the loss run with autodiff on
//!    a gradient-requiring copy of the last layer's output.
//! 2. **Backward.** The loss's backward gives the head's parameter gradients and the gradient
//!    of the last hidden states. For each layer from the last, the layer is rerun with autodiff
//!    from its saved input and `sum(output · incoming gradient)` is backpropagated: that gives
//!    the layer's parameter gradients and the gradient of its input. Last, the same product with
//!    the fused embeddings backpropagates into the vision side and the embeddings.
//!
//! The segments' parameter gradients are gathered into one `GradientsParams`, equal (up to
//! float rounding) to what a single `loss.backward()` gives. The rerun layer must compute what
//! the forward computed, so the decoder may not draw random numbers: the config refuses this
//! option with LoRA dropout.

use blip3_model::phi3::LayerPlan;
use blip3_model::{MultimodalInput, Padding, XGenMM};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::Gradients;

/// What the backward needs from a checkpointed forward.
pub(crate) struct LayerSegments {
    /// The policy the forward ran (autodiff).
    policy: XGenMM,
    /// The fused embeddings, with their autodiff graph into the vision side and the embeddings.
    embeds: Tensor<3>,
    /// The layers' shared attention plan and rotary tables (without autodiff).
    plan: LayerPlan,
    /// Each decoder layer's input (without autodiff); entry 0 is the cast embeddings.
    inputs: Vec<Tensor<3>>,
    /// The last layer's output as a gradient-requiring leaf (the head's input).
    last: Tensor<3>,
}

/// What the checkpointed forward returns.
pub(crate) struct Forward {
    /// Logits `[B, S, V]`, with autodiff from the head's input only.
    pub(crate) logits: Tensor<3>,
    /// The expanded labels, when the input had labels.
    pub(crate) labels: Option<Vec<Vec<i64>>>,
    /// What [`LayerSegments::backward`] needs.
    pub(crate) segments: LayerSegments,
}

/// The checkpointed forward of `policy` on `input` (see the module documentation).
pub(crate) fn forward(policy: &XGenMM, input: &MultimodalInput) -> Result<Forward, String> {
    let fused = policy
        .fuse(input, Padding::Right)
        .map_err(|e| e.to_string())?;
    let lm = &policy.lang_model;
    // One plan, on the device without autodiff: the layers' attention masks and rotary tables
    // are constants for the autodiff reruns too.
    let plain = fused.embeds.device().without_autodiff();
    let plan = lm
        .layer_plan(&fused.mask, &plain)
        .map_err(|e| e.to_string())?;
    // The decoder layers without autodiff: no graph, nothing kept but each layer's input.
    let inner = policy.valid();
    let mut x = lm.layer_input(fused.embeds.clone()).inner();
    let mut inputs = Vec::with_capacity(lm.num_layers());
    for i in 0..lm.num_layers() {
        inputs.push(x.clone());
        x = inner.lang_model.run_layer(i, x, &plan);
    }
    let last = x.autodiff().require_grad();
    let logits = lm.run_head(last.clone());
    Ok(Forward {
        logits,
        labels: fused.labels,
        segments: LayerSegments {
            policy: policy.clone(),
            embeds: fused.embeds,
            plan,
            inputs,
            last,
        },
    })
}

impl LayerSegments {
    /// The parameter gradients of `module` (which holds the policy's parameters) given the
    /// gradients of the loss's backward.
    pub(crate) fn backward<M: Module>(
        self,
        loss_grads: Gradients,
        module: &M,
    ) -> Result<GradientsParams, String> {
        let LayerSegments {
            policy,
            embeds,
            plan,
            inputs,
            last,
        } = self;
        let lm = &policy.lang_model;
        let missing = |what: &str| format!("layer checkpointing: no gradient reached {what}");
        let mut grad = last
            .grad(&loss_grads)
            .ok_or_else(|| missing("the last hidden states"))?;
        let mut all = GradientsParams::from_grads(loss_grads, module);
        for (i, x) in inputs.into_iter().enumerate().rev() {
            let x = x.autodiff().require_grad();
            let out = lm.run_layer(i, x.clone(), &plan);
            let grads = (out * grad).sum().backward();
            grad = x
                .grad(&grads)
                .ok_or_else(|| missing(&format!("the input of layer {i}")))?;
            merge(&mut all, GradientsParams::from_grads(grads, module), module);
        }
        // Into the vision side and the embeddings (the layers saw the embeddings cast to the
        // weights' dtype; the cast is part of this graph).
        let grads = (lm.layer_input(embeds) * grad).sum().backward();
        merge(&mut all, GradientsParams::from_grads(grads, module), module);
        Ok(all)
    }
}

/// Adds every gradient of `part` into `all` (summing where both have one).
fn merge<M: Module>(all: &mut GradientsParams, mut part: GradientsParams, module: &M) {
    struct Merge<'a> {
        all: &'a mut GradientsParams,
        part: &'a mut GradientsParams,
    }
    impl ModuleVisitor for Merge<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.part.remove::<D>(param.id) {
                let sum = match self.all.remove::<D>(param.id) {
                    Some(a) => a + g,
                    None => g,
                };
                self.all.register(param.id, sum);
            }
        }
    }
    module.visit(&mut Merge {
        all,
        part: &mut part,
    });
}
