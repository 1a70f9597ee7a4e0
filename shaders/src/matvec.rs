//! Products of a few rows with a matrix, `x: [M, K] · w: [K, N]`: decoding one token at a time
//! is almost nothing else, and it is bound by reading the weights.
//!
//! * On the CPU, gemm's matrix-vector path (what Flex runs for one row) uses one thread, which
//!   reads the weights at about half the memory bandwidth two cores reach. [`row_matmul`] splits
//!   the columns of `w` into one block per rayon thread (strided views, no copy) and multiplies
//!   the blocks in parallel; each block still runs gemm's path.
//! * On CubeCL devices (wgpu, CUDA), [`row_matmul`] can run the blip3 GEMV kernel
//!   ([`RowMatmulBackend`]: weights read once in their own dtype, f32 accumulation, `K` split
//!   across cubes), chosen by [`GemvPath`].

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, backend_extension};
use burn::prelude::*;
use burn::tensor::{DType, Shape};
use rayon::prelude::*;

/// Most rows the GEMV kernel takes (decoding batches up to this size); more go to Burn's matmul.
pub const MAX_KERNEL_ROWS: usize = 8;

/// The environment variable choosing [`GemvPath::configured`].
pub const GEMV_ENV: &str = "BLIP3_GEMV";

/// Which implementation [`row_matmul`] uses on CubeCL devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GemvPath {
    /// Burn's matmul (the default until the kernel is measured faster on a GPU: docs/kernels.md).
    #[default]
    Burn,
    /// The blip3 GEMV kernel wherever it applies (CubeCL device, no autodiff, `M ≤ 8`).
    Blip3,
}

impl GemvPath {
    /// Parses `burn` or `blip3`.
    pub fn parse(text: &str) -> Option<GemvPath> {
        match text.trim().to_ascii_lowercase().as_str() {
            "burn" => Some(GemvPath::Burn),
            "blip3" | "kernel" => Some(GemvPath::Blip3),
            _ => None,
        }
    }

    /// The process's default: [`GEMV_ENV`] = `burn|blip3` (read once; unset or an unknown value,
    /// which is logged, means `burn`).
    pub fn configured() -> GemvPath {
        static PATH: std::sync::OnceLock<GemvPath> = std::sync::OnceLock::new();
        *PATH.get_or_init(|| crate::env_choice(GEMV_ENV, GemvPath::parse, "burn, blip3"))
    }
}

/// The GEMV extension: `x [M, K] · w [K, N]` → `[M, N]` in `x`'s dtype. Implemented by the CubeCL
/// backend (the kernel; Burn's matmul for what it does not take) and, lazily, by Fusion.
#[backend_extension(Cube: cfg(feature = "cube"), Fusion: cfg(feature = "cube"))]
pub trait RowMatmulBackend: Backend {
    /// The product, weights read in their own dtype and accumulated in f32.
    #[fusion(dtype = x, shape = row_matmul_shape(x, w))]
    fn row_matmul(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// The output shape of [`RowMatmulBackend::row_matmul`].
fn row_matmul_shape(x: &Shape, w: &Shape) -> Shape {
    Shape::new([x[0], w[1]])
}

/// `x · w` through the GEMV kernel wherever it applies (a CubeCL device without autodiff, float
/// dtypes, `1 ≤ M ≤ MAX_KERNEL_ROWS`), Burn's matmul otherwise; the result has `x`'s dtype.
pub fn gemv(x: Tensor<2>, w: Tensor<2>) -> Tensor<2> {
    if !gemv_applies(&x, &w) {
        let dtype = x.dtype();
        return x.matmul(w.cast(dtype));
    }
    Tensor::from_dispatch(<Dispatch as RowMatmulBackend>::row_matmul(
        x.into_dispatch(),
        w.into_dispatch(),
    ))
}

/// Whether [`gemv`] runs the kernel for `x · w`: a CubeCL device without autodiff, float dtypes
/// (f32, f16, bf16) and `1 ≤ M ≤ MAX_KERNEL_ROWS`.
pub fn gemv_applies(x: &Tensor<2>, w: &Tensor<2>) -> bool {
    let device = x.device();
    let float = |d: DType| matches!(d, DType::F32 | DType::F16 | DType::BF16);
    crate::attention::is_cube_device(&device)
        && !device.is_autodiff()
        && (1..=MAX_KERNEL_ROWS).contains(&x.dims()[0])
        && float(x.dtype())
        && float(w.dtype())
}

/// Fewest weights (`K × columns`) worth a thread of its own: about 2 MB in f32. Below that the
/// hand-off to the pool costs more than the thread saves (tiny models decode faster unsplit).
pub const MIN_BLOCK_WEIGHTS: usize = 1 << 19;

/// `x · w` for `x: [M, K]`, `w: [K, N]` (any strides, e.g. a transposed view). With `M = 1` on a
/// Flex device without autodiff and a rayon pool of several threads, the columns are split over
/// the pool; on CubeCL devices with [`GemvPath::configured`] = `blip3`, [`gemv`]; more than
/// [`MAX_KERNEL_ROWS`] rows go through [`crate::gemm::matmul`] (the vendor GEMM where routed);
/// in every other case (training, several rows on the CPU, small `w`) it is `x.matmul(w)`. On the CPU the
/// result is the same product either way: each output column is one dot product, computed by the
/// same kernel, whatever block it falls in.
pub fn row_matmul(x: Tensor<2>, w: Tensor<2>) -> Tensor<2> {
    let [m, _] = x.dims();
    let [k, n] = w.dims();
    if GemvPath::configured() == GemvPath::Blip3 && crate::attention::is_cube_device(&x.device()) {
        return gemv(x, w);
    }
    let blocks = column_blocks(m, k, n, &x.device());
    if blocks < 2 {
        // More rows than decoding has (prefill, training): the linear layers' product, which
        // is the vendor GEMM where that is routed (`gemm`); decoding rows stay off it, since
        // each vendor call waits for the device twice.
        return if m > MAX_KERNEL_ROWS {
            crate::gemm::matmul(x, w)
        } else {
            x.matmul(w)
        };
    }
    // Blocks start on 16-column boundaries (64 bytes in f32).
    let width = n.div_ceil(blocks).next_multiple_of(16);
    let starts: Vec<usize> = (0..n).step_by(width).collect();
    let parts: Vec<Tensor<2>> = starts
        .into_par_iter()
        .map(|start| {
            let len = width.min(n - start);
            x.clone().matmul(w.clone().narrow(1, start, len))
        })
        .collect();
    Tensor::cat(parts, 1)
}

/// How many column blocks [`row_matmul`] splits `[M, K] · [K, N]` into on `device` from the
/// current rayon pool (1: no split).
pub fn column_blocks(m: usize, k: usize, n: usize, device: &Device) -> usize {
    if m != 1 || !crate::attention::is_plain_flex(device) {
        return 1;
    }
    rayon::current_num_threads()
        .min(k * n / MIN_BLOCK_WEIGHTS)
        .min(n / 16)
        .max(1)
}
