//! The decode GEMV for the CubeCL backend (wgpu, CUDA, ...): `x [M, K] · w [K, N]` for a few
//! rows (`M ≤ MAX_KERNEL_ROWS`), reading every weight once, in its own dtype (f32, f16, bf16),
//! accumulating in f32.
//!
//! A cube of 32 × 8 threads owns a block of output columns and one slice of `K`; its threads
//! split the slice between them ("lanes") and each keeps `M` partial sums in registers, which
//! the cube adds up through shared memory at the end. The thread layout follows the weights'
//! memory order so that neighbouring threads read neighbouring addresses:
//!
//! * `w` with unit column stride (a `Linear` weight, `[K, N]` row-major): the 32 threads of a
//!   row of the cube take 32 consecutive columns, the 8 rows of the cube are the lanes over `K`;
//! * `w` with unit row stride (a transposed view, e.g. the LM head `[N, K]` used as `[K, N]`):
//!   the 32 threads take 32 consecutive `k` (lanes), the 8 rows of the cube are 8 columns.
//!
//! Decoding has few columns for a GPU's size (3072 outputs make 96 cubes of 32), so `K` is also
//! split across cubes (grid `y`) until there are enough cubes to keep every multiprocessor busy;
//! each slice writes f32 partial sums `[S, M, N]`, which are added and cast to `x`'s dtype
//! afterwards.

use burn::backend::Shape;
use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::tensor::DType;
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use cubecl::prelude::*;

use crate::matvec::{MAX_KERNEL_ROWS, RowMatmulBackend};

/// Threads along the contiguous dimension of `w`.
const WIDE: usize = 32;
/// Threads along the other dimension.
const DEEP: usize = 8;
/// Cubes worth launching: enough to fill a large GPU (132 multiprocessors on an H100) several
/// times over; `K` is split across cubes until the grid has about this many.
const TARGET_CUBES: usize = 1024;
/// Fewest `k` a slice keeps, so that splitting never makes the partial sums dominate.
const MIN_SLICE: usize = 256;

impl RowMatmulBackend for CubeBackend {
    fn row_matmul(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        let [m, k] = x.meta.shape().dims::<2>();
        let [_, n] = w.meta.shape().dims::<2>();
        let out_dtype = x.dtype;
        let unsupported = !matches!(x.dtype, DType::F32 | DType::F16 | DType::BF16)
            || !matches!(w.dtype, DType::F32 | DType::F16 | DType::BF16)
            || !(1..=MAX_KERNEL_ROWS).contains(&m);
        if unsupported || k == 0 || n == 0 {
            let w = if w.dtype == x.dtype {
                w
            } else {
                CubeBackend::float_cast(w, x.dtype.into())
            };
            return CubeBackend::float_matmul(x, w);
        }
        // The layout decides the thread mapping; any other strides are made contiguous.
        let strides = w.meta.strides().to_vec();
        let (w, k_contiguous) = if strides[1] == 1 {
            (w, false)
        } else if strides[0] == 1 {
            (w, true)
        } else {
            (into_contiguous(w), false)
        };
        let client = x.client.clone();
        let props = client.properties();
        let cols_per_cube = if k_contiguous { DEEP } else { WIDE };
        let lanes = if k_contiguous { WIDE } else { DEEP };
        let col_cubes = n.div_ceil(cols_per_cube);
        let max_slices = (k / MIN_SLICE).max(1);
        let slices = TARGET_CUBES
            .div_ceil(col_cubes)
            .clamp(1, max_slices)
            .min(props.hardware.max_cube_count.1 as usize);
        let chunk = k.div_ceil(slices);
        let slices = k.div_ceil(chunk);
        let partial = empty_device_dtype(
            client.clone(),
            x.device.clone(),
            Shape::new([slices, m, n]),
            DType::F32,
        );
        let types = [
            dtype_to_storage_type(x.dtype),
            dtype_to_storage_type(w.dtype),
        ];
        // x: the threads along w's contiguous dimension (columns, or lanes over k).
        let cube_dim = CubeDim::new_2d(WIDE as u32, DEEP as u32);
        // SAFETY: every global read is guarded by `n < N` and `k < K` (the slice end is clamped
        // to `K`), the partial-sum write by `n < N`; shared indices stay below `M · 32 · 8`.
        unsafe {
            row_matmul_kernel::launch_unchecked(
                &client,
                CubeCount::Static(col_cubes as u32, slices as u32, 1),
                cube_dim,
                x.into_tensor_arg(),
                w.into_tensor_arg(),
                partial.clone().into_tensor_arg(),
                chunk,
                m,
                lanes,
                k_contiguous,
                types,
            );
        }
        let summed = if slices == 1 {
            partial
        } else {
            CubeBackend::float_sum_dim(partial, 0)
        };
        let y = CubeBackend::float_reshape(summed, Shape::new([m, n]));
        if out_dtype == DType::F32 {
            y
        } else {
            CubeBackend::float_cast(y, out_dtype.into())
        }
    }
}

/// `partial[s, m, n] = Σ_{k in slice s} x[m, k] · w[k, n]` (see the module documentation for the
/// thread layout). `x` and `w` are read through their strides.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn row_matmul_kernel<F: Float, W: Float>(
    x: &Tensor<F>,
    w: &Tensor<W>,
    partial: &mut Tensor<f32>,
    chunk: usize,
    #[comptime] rows: usize,
    #[comptime] lanes: usize,
    #[comptime] k_contiguous: bool,
    #[define(F, W)] _types: [ElemType; 2],
) {
    let cols = comptime!(WIDE * DEEP / lanes);
    let tx = UNIT_POS_X as usize;
    let ty = UNIT_POS_Y as usize;
    let mut lane = ty;
    let mut col = tx;
    if k_contiguous {
        lane = tx;
        col = ty;
    }
    let k_total = w.shape(0);
    let n_total = w.shape(1);
    let n = CUBE_POS_X as usize * cols + col;
    let slice = CUBE_POS_Y as usize;
    let k_start = slice * chunk;
    let k_end = min(k_start + chunk, k_total);

    let mut acc = Array::<f32>::new(rows);
    #[unroll]
    for r in 0..rows {
        acc[r] = 0.0f32;
    }
    if n < n_total {
        let w_col = n * w.stride(1);
        let mut kk = k_start + lane;
        while kk < k_end {
            let wv = f32::cast_from(w[kk * w.stride(0) + w_col]);
            #[unroll]
            for r in 0..rows {
                acc[r] += f32::cast_from(x[r * x.stride(0) + kk * x.stride(1)]) * wv;
            }
            kk += lanes;
        }
    }

    // Add the lanes' partial sums: `sums[(r · lanes + lane) · cols + col]`.
    let mut sums = Shared::<[f32]>::new_slice(comptime!(rows * WIDE * DEEP));
    #[unroll]
    for r in 0..rows {
        sums[(r * lanes + lane) * cols + col] = acc[r];
    }
    sync_cube();
    if lane == 0 && n < n_total {
        #[unroll]
        for r in 0..rows {
            let mut total = 0.0f32;
            for l in 0..lanes {
                total += sums[(r * lanes + l) * cols + col];
            }
            partial[(slice * rows + r) * n_total + n] = total;
        }
    }
}
