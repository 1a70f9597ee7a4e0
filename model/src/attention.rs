//! Attention plumbing shared by the three components: head splitting and one entry point for
//! scaled dot-product attention, which routes to the fused kernels of `blip3-shaders` where
//! they apply and to Burn's attention op otherwise.

use burn::prelude::*;

/// `[B, S, H·Dh]` → `[B, H, S, Dh]` (heads are contiguous slices of the feature axis).
pub fn split_heads(x: Tensor<3>, heads: usize) -> Tensor<4> {
    let [b, s, d] = x.dims();
    x.reshape([b, s, heads, d / heads]).swap_dims(1, 2)
}

/// `[B, H, S, Dh]` → `[B, S, H·Dh]`.
pub fn merge_heads(x: Tensor<4>) -> Tensor<3> {
    let [b, h, s, dh] = x.dims();
    x.swap_dims(1, 2).reshape([b, s, h * dh])
}

/// Repeats each key/value head `n_rep` times (grouped-query attention).
pub fn repeat_kv(x: Tensor<4>, n_rep: usize) -> Tensor<4> {
    if n_rep == 1 {
        return x;
    }
    let [b, h, s, dh] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([b, h, n_rep, s, dh])
        .reshape([b, h * n_rep, s, dh])
}

/// Softmax attention with scale `Dh^-0.5`. `mask` is `[B, H|1, Sq, Sk]`, true = masked out;
/// `causal` adds bottom-right-aligned causal masking; a query row with every key masked gives
/// zeros.
///
/// This is `blip3_shaders::attention`, which chooses the path: its fused kernel on CubeCL devices
/// (wgpu, CUDA) for large problems, Burn's attention op on Flex and elsewhere;
/// `BLIP3_ATTENTION=burn|blip3|auto` forces a path. A head-broadcast mask is passed as is.
pub use blip3_shaders::attention::attention as scaled_dot_product_attention;
