//! blip3-shaders: attention entry point and custom CubeCL kernels for blip3.
//!
//! Kernels know tensors, not models.
#![warn(missing_docs)]

use burn::prelude::*;
use burn::tensor::module::attention as burn_attention;
use burn::tensor::ops::AttentionModuleOptions;

/// Scaled dot-product attention over `[B, H, S, Dh]` tensors with scale `Dh^-0.5`.
///
/// `mask` is `[B, H, Sq, Sk]`, true = masked out; `causal` adds bottom-right-aligned causal
/// masking.
pub fn attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Option<Tensor<4, Bool>>,
    causal: bool,
) -> Tensor<4> {
    let opts = AttentionModuleOptions {
        is_causal: causal,
        ..Default::default()
    };
    burn_attention(q, k, v, mask, None, opts)
}
