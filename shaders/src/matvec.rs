//! Products of a single row with a matrix, `x: [1, K] · w: [K, N]`, on the CPU. Decoding one token
//! at a time is almost nothing else, and gemm's matrix-vector path (what Flex runs for one row)
//! uses one thread, which reads the weights at about half the memory bandwidth two cores reach.
//! [`row_matmul`] splits the columns of `w` into one block per rayon thread (strided views, no
//! copy) and multiplies the blocks in parallel; each block still runs gemm's path.

use burn::prelude::*;
use rayon::prelude::*;

/// Fewest weights (`K × columns`) worth a thread of its own: about 2 MB in f32. Below that the
/// hand-off to the pool costs more than the thread saves (tiny models decode faster unsplit).
pub const MIN_BLOCK_WEIGHTS: usize = 1 << 19;

/// `x · w` for `x: [M, K]`, `w: [K, N]` (any strides, e.g. a transposed view). With `M = 1` on a
/// Flex device without autodiff and a rayon pool of several threads, the columns are split over
/// the pool; in every other case (GPUs, training, several rows, small `w`) it is `x.matmul(w)`.
/// The result is the same product either way: each output column is one dot product, computed
/// by the same kernel, whatever block it falls in.
pub fn row_matmul(x: Tensor<2>, w: Tensor<2>) -> Tensor<2> {
    let [m, _] = x.dims();
    let [k, n] = w.dims();
    let blocks = column_blocks(m, k, n, &x.device());
    if blocks < 2 {
        return x.matmul(w);
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
    if m != 1 || !is_plain_flex(device) {
        return 1;
    }
    rayon::current_num_threads()
        .min(k * n / MIN_BLOCK_WEIGHTS)
        .min(n / 16)
        .max(1)
}

/// Whether `device` is Flex without autodiff (where tensors are eager host memory).
fn is_plain_flex(device: &Device) -> bool {
    #[cfg(feature = "flex")]
    {
        !device.is_autodiff()
            && matches!(
                device.clone().as_dispatch(),
                burn::backend::DispatchDevice::Flex(_)
            )
    }
    #[cfg(not(feature = "flex"))]
    {
        let _ = device;
        false
    }
}
