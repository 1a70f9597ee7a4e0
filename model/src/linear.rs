//! The forward of a `Linear` layer on `[B, T, in]` activations, choosing the product by shape and
//! device (docs/kernels.md):
//!
//! * decoding rows (`T = 1`, at most `MAX_KERNEL_ROWS` of them) go through
//!   [`row_matmul`](blip3_shaders::matvec::row_matmul): split over the CPU threads on Flex, the
//!   GEMV kernel on GPUs when chosen;
//! * everything else (prefill, training, the vision tower) goes through
//!   [`blip3_shaders::gemm`] when it routes to the vendor GEMM (`BLIP3_MATMUL=cublas` on a CUDA
//!   device), and through Burn's `Linear::forward` otherwise.

use blip3_shaders::gemm::{linear_product, vendor_routed};
use blip3_shaders::matvec::{MAX_KERNEL_ROWS, row_matmul};
use burn::nn::Linear;
use burn::prelude::*;

/// `layer.forward(x)` for `x: [B, T, in]`, with the product chosen as the module documentation
/// says; the result is the same product either way.
pub fn linear(layer: &Linear, x: Tensor<3>) -> Tensor<3> {
    let [b, t, d] = x.dims();
    let w = layer.weight.val();
    let n = w.dims()[1];
    let decoding = t == 1 && b <= MAX_KERNEL_ROWS;
    let y = if decoding {
        row_matmul(x.reshape([b, d]), w).reshape([b, 1, n])
    } else if vendor_routed(&x.device()) {
        linear_product(x, w)
    } else {
        return layer.forward(x);
    };
    match &layer.bias {
        Some(bias) => y + bias.val().unsqueeze::<3>(),
        None => y,
    }
}
