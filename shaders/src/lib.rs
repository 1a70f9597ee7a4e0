//! blip3-shaders: custom CubeCL kernels for blip3, packaged as Burn backend extensions.
//!
//! * [`activation`]: the MLPs' element-wise activations (`silu(gate) · up`, tanh-GELU): one
//!   vectorised pass over the values on Flex, Burn's tensor ops elsewhere.
//! * [`attention`]: scaled dot-product attention. On CubeCL devices (wgpu, CUDA) it runs a
//!   flash-style kernel (online softmax, f32 accumulation, key tiles in shared memory; in half
//!   precision on devices with cooperative-matrix instructions, both products on them); on Flex,
//!   and wherever the kernel does not apply, Burn's own attention op. Under autodiff the forward
//!   saves its output and each row's log-sum-exp, and the gradient comes from them and the saved
//!   inputs: by two backward kernels in O(S) memory on CubeCL devices, by ordinary tensor
//!   operations on Flex.
//! * [`resample`]: Pillow-exact separable image resampling (8-bit fixed point) of a batch of
//!   images on the device, from coefficient tables computed on the host.
//! * [`pillow`]: the same resampling on the host (the data crate's image pipeline uses it), bit
//!   for bit Pillow's.
//! * [`device`]: probing whether the wgpu backend works on this machine.
//! * [`gemm`]: the linear layers' products, by Burn's matmul or by the vendor GEMM (cuBLAS on
//!   CUDA devices, with an autodiff backward through the same extension).
//! * [`matvec`]: products of a few rows with a matrix (decoding): split over the CPU threads on
//!   Flex, a GEMV kernel on CubeCL devices.
//!
//! Kernels know tensors, not models: shapes, dtypes and masks are their whole contract.
#![warn(missing_docs)]

pub mod activation;
pub mod attention;
mod attention_autodiff;
#[cfg(feature = "cube")]
mod attention_backward_kernel;
mod attention_composed;
#[cfg(feature = "cube")]
mod attention_kernel;
#[cfg(feature = "cube")]
mod attention_mma_backward_kernel;
#[cfg(feature = "cube")]
mod attention_mma_kernel;
#[cfg(feature = "cube")]
mod attention_mma_query_kernel;
mod cublas;
#[cfg(feature = "cube")]
pub mod device;
pub mod gemm;
pub mod matvec;
#[cfg(feature = "cube")]
mod matvec_kernel;
#[cfg(feature = "cube")]
mod mma_plan;
pub mod pillow;
pub mod resample;
#[cfg(feature = "cube")]
mod resample_kernel;
#[cfg(feature = "cube")]
mod tiles;

pub use attention::{
    AttentionPath, attention, attention_backward, attention_with, burn_attention, flash_attention,
    flash_attention_with_lse,
};

/// The choice named by the environment variable `var` (parsed by `parse`), or `T::default()` when
/// it is unset; an unrecognised value is reported (log warning naming the `expected` values) and
/// also means the default. The kernels' `*Path::configured` read their variable through this.
pub(crate) fn env_choice<T: Default>(
    var: &str,
    parse: impl Fn(&str) -> Option<T>,
    expected: &str,
) -> T {
    match std::env::var(var) {
        Err(_) => T::default(),
        Ok(text) => parse(&text).unwrap_or_else(|| {
            log::warn!("{var}={text:?} is not one of {expected}; using the default");
            T::default()
        }),
    }
}
pub use resample::{AxisCoefficients, ResampleError, ResampleFilter, resample_axis, resize_batch};
