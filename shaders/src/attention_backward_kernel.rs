//! The attention backward kernels for the CubeCL backend: gradients of q, k and v in O(S) memory
//! (no `[Sq, Sk]` tensor is ever materialised), with the masking contract of the forward
//! (`attention` module documentation).
//!
//! With `s_ij = scale · q_i·k_j`, `P = softmax(S)` per row, `O = P·V` and the incoming gradient
//! `dO`, the gradients are `dV_j = Σ_i P_ij dO_i`, `dS_ij = P_ij (dO_i·v_j − δ_i)` with
//! `δ_i = dO_i·O_i`, `dQ_i = scale · Σ_j dS_ij k_j` and `dK_j = scale · Σ_i dS_ij q_i`. Two kernels
//! compute them without atomics, each thread owning one output row:
//!
//! * **query kernel** — one thread a query row, key tiles staged in shared memory. The row's
//!   `lse_i = m_i + ln l_i` and `δ_i` go to a small `[B, H, Sq, 2]` f32 buffer for the key
//!   kernel: under autodiff the thread reads `lse_i` saved by the forward and computes
//!   `δ_i = dO_i·O_i` from its saved output; without them (`attention_backward`) a first walk
//!   over the keys recomputes the row's softmax statistics online, as the forward does. A walk
//!   over the keys then accumulates `dQ_i` in registers.
//! * **key kernel** — one thread a key row, query tiles (with their `dO` rows, `lse` and `δ`)
//!   staged in shared memory. Each visible pair recomputes `P_ij = exp(s_ij − lse_i)` and adds
//!   to `dV_j` and `dK_j` in registers. Causal cubes start at the first query their first key is
//!   visible to.
//!
//! A row without any visible key has `lse = +3e38`, so its probabilities are exactly 0 and it
//! contributes nothing (its `dQ` is 0), as the forward writes it as zeros. All arithmetic is f32;
//! gradients are stored in the tensors' dtype. Shapes the kernels cannot run go to the composed
//! backward of `attention` (tensor ops, chunked).

use burn::backend::Shape;
use burn::tensor::DType;
use burn_cubecl::CubeBackend;
use burn_cubecl::ops::numeric::{empty_device_dtype, zeros_client};
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;
use std::sync::atomic::Ordering;

use crate::attention::{
    BACKWARD_KERNEL_LAUNCHES, MAX_BACKWARD_KERNEL_HEAD_DIM, NO_KEY_LSE, SAVED_STATISTICS_LAUNCHES,
    composed_attention_backward,
};
use crate::attention_mma_backward_kernel;
use crate::attention_mma_query_kernel;
use crate::mma_plan::{self, Side};
use crate::tiles::{LaunchArgs, dot_column, stage_transposed, visible, visible_key_end};

/// Threads a cube runs, one output row each (and the stride of the cooperative staging).
const THREADS: usize = 64;
/// Shared memory the kernels allow themselves, at most (CUDA's static shared-memory limit).
const SHARED_BUDGET: usize = 48 * 1024;
/// Running maximum before any key is seen (finite: no infinity or NaN on any backend).
const NO_MAX: f32 = -3.0e38;
/// `lse` of a row that sees no key: `exp(s − NO_LSE)` is 0 for every real score.
const NO_LSE: f32 = NO_KEY_LSE;

/// Rows of the staged tile (keys for the query kernel, queries for the key kernel): the largest
/// power of two whose tile (`row_width` f32 values a row, plus `extra_per_row`) fits the budget.
fn tile_rows(row_width: usize, extra_per_row: usize, max_shared: usize) -> Option<usize> {
    let budget = max_shared.min(SHARED_BUDGET);
    [64, 32, 16, 8, 4, 2, 1]
        .into_iter()
        .find(|&t| 4 * ((t + 1) * row_width + t * extra_per_row) <= budget)
}

/// Gradients `(dq, dk, dv)` of attention with respect to its inputs given `grad_out`, by the
/// kernels, or by the composed backward when the kernels cannot run these tensors. With `saved`
/// (the forward's output and its rows' log-sum-exp, `[B, H, Sq]` f32) the query kernels take
/// the statistics from them (`δ = dO·O`) and skip their first walk.
pub(crate) fn launch_attention_backward(
    q: CubeTensor,
    k: CubeTensor,
    v: CubeTensor,
    mask: Option<CubeTensor>,
    grad_out: CubeTensor,
    causal: bool,
    saved: Option<(CubeTensor, CubeTensor)>,
) -> (CubeTensor, CubeTensor, CubeTensor) {
    let [b, h, sq, dh] = q.meta.shape().dims::<4>();
    let [_, _, sk, dv] = v.meta.shape().dims::<4>();
    let client = q.client.clone();
    let props = client.properties();
    let hw = &props.hardware;
    let key_tile = tile_rows(dh + dv, 0, hw.max_shared_memory_size);
    let query_tile = tile_rows(dh + dv, 2, hw.max_shared_memory_size);
    let float = matches!(q.dtype, DType::F32 | DType::F16 | DType::BF16);
    let same = k.dtype == q.dtype && v.dtype == q.dtype && grad_out.dtype == q.dtype;
    let fits = sq.max(sk).div_ceil(THREADS) <= hw.max_cube_count.0 as usize
        && b * h <= hw.max_cube_count.1 as usize
        && hw.max_units_per_cube as usize >= THREADS;
    let (key_tile, query_tile) = match (key_tile, query_tile) {
        (Some(kt), Some(qt))
            if float
                && same
                && fits
                && (1..=MAX_BACKWARD_KERNEL_HEAD_DIM).contains(&dh)
                && (1..=MAX_BACKWARD_KERNEL_HEAD_DIM).contains(&dv) =>
        {
            (kt, qt)
        }
        _ => {
            return composed_attention_backward::<CubeBackend>(q, k, v, mask, causal, grad_out);
        }
    };

    let zeros = |shape: Shape| zeros_client(client.clone(), q.device.clone(), shape, q.dtype);
    let (q_shape, k_shape, v_shape) = (
        Shape::new([b, h, sq, dh]),
        Shape::new([b, h, sk, dh]),
        Shape::new([b, h, sk, dv]),
    );
    if b * h * sq == 0 || sk == 0 {
        // No query or no key: nothing flows anywhere.
        return (zeros(q_shape), zeros(k_shape), zeros(v_shape));
    }
    let empty = |shape: Shape, dtype: DType| {
        empty_device_dtype(client.clone(), q.device.clone(), shape, dtype)
    };
    let grad_q = empty(q_shape, q.dtype);
    let grad_k = empty(k_shape, q.dtype);
    let grad_v = empty(v_shape, q.dtype);
    let stats = empty(Shape::new([b, h, sq, 2]), DType::F32);
    // Without saved values the query kernels never read `out` and `lse`: `q` and a one-float
    // buffer stand in for them.
    let has_stats = saved.is_some();
    let (out, lse) = saved.unwrap_or_else(|| (q.clone(), empty(Shape::new([1]), DType::F32)));

    BACKWARD_KERNEL_LAUNCHES.fetch_add(1, Ordering::Relaxed);
    if has_stats {
        SAVED_STATISTICS_LAUNCHES.fetch_add(1, Ordering::Relaxed);
    }
    // Half precision on devices with MMA instructions: the tensor-core kernels.
    if let (Some(queries), Some(keys)) = (
        mma_plan::plan(Side::Queries, &q, dv),
        mma_plan::plan(Side::Keys, &q, dv),
    ) {
        attention_mma_query_kernel::launch_queries(
            queries,
            q.clone(),
            k.clone(),
            v.clone(),
            mask.clone(),
            grad_out.clone(),
            grad_q.clone(),
            stats.clone(),
            out,
            lse,
            causal,
            has_stats,
        );
        attention_mma_backward_kernel::launch_keys(
            keys,
            q,
            k,
            v,
            mask,
            grad_out,
            stats,
            grad_k.clone(),
            grad_v.clone(),
            causal,
        );
        return (grad_q, grad_k, grad_v);
    }
    let LaunchArgs {
        scale,
        mask,
        has_mask,
        types,
    } = LaunchArgs::new(&q, mask);
    let bh = (b * h) as u32;
    // SAFETY: every global access is guarded by the row/key bounds the kernels compute from the
    // tensors' own shapes (the gradients and `stats` are fresh contiguous tensors of the shapes
    // indexed), and shared-memory indices stay within the sizes declared in the kernels (tests
    // cover partial tiles and blocks).
    unsafe {
        query_grad_kernel::launch_unchecked(
            &client,
            CubeCount::Static(sq.div_ceil(THREADS) as u32, bh, 1),
            CubeDim::new_1d(THREADS as u32),
            q.clone().into_tensor_arg(),
            k.clone().into_tensor_arg(),
            v.clone().into_tensor_arg(),
            mask.clone().into_tensor_arg(),
            grad_out.clone().into_tensor_arg(),
            grad_q.clone().into_tensor_arg(),
            stats.clone().into_tensor_arg(),
            out.into_tensor_arg(),
            lse.into_tensor_arg(),
            scale,
            dh,
            dv,
            key_tile,
            causal,
            has_mask,
            has_stats,
            types,
        );
        key_grad_kernel::launch_unchecked(
            &client,
            CubeCount::Static(sk.div_ceil(THREADS) as u32, bh, 1),
            CubeDim::new_1d(THREADS as u32),
            q.into_tensor_arg(),
            k.into_tensor_arg(),
            v.into_tensor_arg(),
            mask.into_tensor_arg(),
            grad_out.into_tensor_arg(),
            stats.into_tensor_arg(),
            grad_k.clone().into_tensor_arg(),
            grad_v.clone().into_tensor_arg(),
            scale,
            dh,
            dv,
            query_tile,
            causal,
            has_mask,
            types,
        );
    }
    (grad_q, grad_k, grad_v)
}

/// Stages keys and values `tile_start..tile_start + tile_keys` of one head (at `k_base`,
/// `v_base`) transposed into the query kernel's tiles, then waits for the cube.
#[cube]
#[allow(clippy::too_many_arguments)]
fn stage_keys_values<F: Float>(
    k: &Tensor<F>,
    v: &Tensor<F>,
    k_base: usize,
    v_base: usize,
    tile_start: usize,
    end: usize,
    k_tile: &mut Shared<[f32]>,
    v_tile: &mut Shared<[f32]>,
    #[comptime] head_dim: usize,
    #[comptime] val_dim: usize,
    #[comptime] tile_keys: usize,
) {
    let unit = UNIT_POS as usize;
    let stride = comptime!(tile_keys + 1);
    stage_transposed::<F>(
        k, k_base, tile_start, end, k_tile, head_dim, tile_keys, stride, unit, THREADS,
    );
    stage_transposed::<F>(
        v, v_base, tile_start, end, v_tile, val_dim, tile_keys, stride, unit, THREADS,
    );
    sync_cube();
}

/// The query kernel (see the module documentation): `dQ` of [`THREADS`] query rows of one head,
/// and their `[lse, δ]` statistics, written to `stats` for the key kernel: from the forward's
/// saved `out` and `saved_lse` with `has_stats` (`δ = dO·O`), else by a first walk.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn query_grad_kernel<F: Float, M: Numeric>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    mask: &Tensor<M>,
    grad_out: &Tensor<F>,
    grad_q: &mut Tensor<F>,
    stats: &mut Tensor<f32>,
    out: &Tensor<F>,
    saved_lse: &Tensor<f32>,
    scale: f32,
    #[comptime] head_dim: usize,
    #[comptime] val_dim: usize,
    #[comptime] tile_keys: usize,
    #[comptime] causal: bool,
    #[comptime] has_mask: bool,
    #[comptime] has_stats: bool,
    #[define(F, M)] _dtypes: [ElemType; 2],
) {
    let kt_stride = comptime!(tile_keys + 1);
    let heads = q.shape(1);
    let sq = q.shape(2);
    let sk = k.shape(2);
    let bh = CUBE_POS_Y as usize;
    let b = bh / heads;
    let h = bh % heads;
    let unit = UNIT_POS as usize;
    let block_start = CUBE_POS_X as usize * THREADS;
    let row = block_start + unit;
    let row_valid = row < sq;

    // Keys any row of this cube may see: all, or up to what its last row sees when causal.
    let kv_end = visible_key_end(block_start, THREADS, sq, sk, causal);

    // The row's query (pre-scaled) and incoming gradient, in registers.
    let q_base = b * q.stride(0) + h * q.stride(1) + row * q.stride(2);
    let mut q_row = Array::<f32>::new(head_dim);
    #[unroll]
    for d in 0..head_dim {
        let mut x = 0.0f32;
        if row_valid {
            x = f32::cast_from(q[q_base + d * q.stride(3)]) * scale;
        }
        q_row[d] = x;
    }
    let go_base = b * grad_out.stride(0) + h * grad_out.stride(1) + row * grad_out.stride(2);
    let mut go_row = Array::<f32>::new(val_dim);
    #[unroll]
    for d in 0..val_dim {
        let mut x = 0.0f32;
        if row_valid {
            x = f32::cast_from(grad_out[go_base + d * grad_out.stride(3)]);
        }
        go_row[d] = x;
    }

    let mut k_tile = Shared::<[f32]>::new_slice(comptime!(head_dim * (tile_keys + 1)));
    let mut v_tile = Shared::<[f32]>::new_slice(comptime!(val_dim * (tile_keys + 1)));
    let k_base = b * k.stride(0) + h * k.stride(1);
    let v_base = b * v.stride(0) + h * v.stride(1);
    let mask_row = b * mask.stride(0) + h * mask.stride(1) + row * mask.stride(2);

    let mut lse = f32::new(NO_LSE);
    let mut delta = 0.0f32;
    let at = (bh * sq + row) * 2;
    if has_stats {
        // lse saved by the forward; δ = dO·O from its saved output (FlashAttention-2's
        // preprocessing, done here for the row the thread owns).
        if row_valid {
            lse = saved_lse[bh * sq + row];
            let o_base = b * out.stride(0) + h * out.stride(1) + row * out.stride(2);
            #[unroll]
            for d in 0..val_dim {
                delta += go_row[d] * f32::cast_from(out[o_base + d * out.stride(3)]);
            }
            stats[at] = lse;
            stats[at + 1] = delta;
        }
    } else {
        // First walk: the row's softmax statistics and δ = dO·O, with O recomputed online.
        let mut m = f32::new(NO_MAX);
        let mut l = 0.0f32;
        // Σ_j e^(s_j − m) (dO·v_j): δ·l, rescaled as m grows (O itself is never needed).
        let mut weighted = 0.0f32;
        let mut tile_start = 0usize;
        while tile_start < kv_end {
            stage_keys_values::<F>(
                k,
                v,
                k_base,
                v_base,
                tile_start,
                kv_end,
                &mut k_tile,
                &mut v_tile,
                head_dim,
                val_dim,
                tile_keys,
            );
            for j in 0..tile_keys {
                let key = tile_start + j;
                if visible::<M>(row, key, sq, sk, mask, mask_row, causal, has_mask) {
                    let s = dot_column(&q_row, &k_tile, j, kt_stride, head_dim);
                    let dp = dot_column(&go_row, &v_tile, j, kt_stride, val_dim);
                    if s > m {
                        let correction = f32::exp(m - s);
                        l *= correction;
                        weighted *= correction;
                        m = s;
                    }
                    let p = f32::exp(s - m);
                    l += p;
                    weighted += p * dp;
                }
            }
            sync_cube();
            tile_start += tile_keys;
        }
        if l > 0.0f32 {
            lse = m + l.ln();
            delta = weighted / l;
        }
        if row_valid {
            stats[at] = lse;
            stats[at + 1] = delta;
        }
    }

    // Second walk: dQ = scale · Σ_j P_j (dO·v_j − δ) k_j.
    let mut dq = Array::<f32>::new(head_dim);
    #[unroll]
    for d in 0..head_dim {
        dq[d] = 0.0f32;
    }
    let mut tile_start = 0usize;
    while tile_start < kv_end {
        stage_keys_values::<F>(
            k,
            v,
            k_base,
            v_base,
            tile_start,
            kv_end,
            &mut k_tile,
            &mut v_tile,
            head_dim,
            val_dim,
            tile_keys,
        );
        for j in 0..tile_keys {
            let key = tile_start + j;
            if visible::<M>(row, key, sq, sk, mask, mask_row, causal, has_mask) {
                let s = dot_column(&q_row, &k_tile, j, kt_stride, head_dim);
                let dp = dot_column(&go_row, &v_tile, j, kt_stride, val_dim);
                let ds = f32::exp(s - lse) * (dp - delta);
                #[unroll]
                for d in 0..head_dim {
                    dq[d] += ds * k_tile[d * kt_stride + j];
                }
            }
        }
        sync_cube();
        tile_start += tile_keys;
    }
    if row_valid {
        let out_base = b * grad_q.stride(0) + h * grad_q.stride(1) + row * grad_q.stride(2);
        let step = grad_q.stride(3);
        #[unroll]
        for d in 0..head_dim {
            grad_q[out_base + d * step] = F::cast_from(dq[d] * scale);
        }
    }
}

/// The key kernel (see the module documentation): `dK` and `dV` of [`THREADS`] key rows of one
/// head, from the statistics the query kernel wrote.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn key_grad_kernel<F: Float, M: Numeric>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    mask: &Tensor<M>,
    grad_out: &Tensor<F>,
    stats: &Tensor<f32>,
    grad_k: &mut Tensor<F>,
    grad_v: &mut Tensor<F>,
    scale: f32,
    #[comptime] head_dim: usize,
    #[comptime] val_dim: usize,
    #[comptime] tile_queries: usize,
    #[comptime] causal: bool,
    #[comptime] has_mask: bool,
    #[define(F, M)] _dtypes: [ElemType; 2],
) {
    let t_stride = comptime!(tile_queries + 1);
    let unit = UNIT_POS as usize;
    let heads = q.shape(1);
    let sq = q.shape(2);
    let sk = k.shape(2);
    let bh = CUBE_POS_Y as usize;
    let b = bh / heads;
    let h = bh % heads;
    let block_start = CUBE_POS_X as usize * THREADS;
    let key = block_start + unit;
    let key_valid = key < sk;

    // The key row (pre-scaled) and value row, in registers.
    let k_base = b * k.stride(0) + h * k.stride(1) + key * k.stride(2);
    let mut k_row = Array::<f32>::new(head_dim);
    #[unroll]
    for d in 0..head_dim {
        let mut x = 0.0f32;
        if key_valid {
            x = f32::cast_from(k[k_base + d * k.stride(3)]) * scale;
        }
        k_row[d] = x;
    }
    let v_base = b * v.stride(0) + h * v.stride(1) + key * v.stride(2);
    let mut v_row = Array::<f32>::new(val_dim);
    #[unroll]
    for d in 0..val_dim {
        let mut x = 0.0f32;
        if key_valid {
            x = f32::cast_from(v[v_base + d * v.stride(3)]);
        }
        v_row[d] = x;
    }
    let mut dk = Array::<f32>::new(head_dim);
    #[unroll]
    for d in 0..head_dim {
        dk[d] = 0.0f32;
    }
    let mut dv = Array::<f32>::new(val_dim);
    #[unroll]
    for d in 0..val_dim {
        dv[d] = 0.0f32;
    }

    // Causal: query i sees key j when i ≥ j + Sq − Sk; start at the first query that sees this
    // cube's first key.
    let mut q_start = 0usize;
    if causal && block_start + sq > sk {
        q_start = min(block_start + sq - sk, sq);
    }

    let mut q_tile = Shared::<[f32]>::new_slice(comptime!(head_dim * (tile_queries + 1)));
    let mut go_tile = Shared::<[f32]>::new_slice(comptime!(val_dim * (tile_queries + 1)));
    let mut lse_tile = Shared::<[f32]>::new_slice(tile_queries);
    let mut delta_tile = Shared::<[f32]>::new_slice(tile_queries);
    let q_base = b * q.stride(0) + h * q.stride(1);
    let go_base = b * grad_out.stride(0) + h * grad_out.stride(1);
    let mask_head = b * mask.stride(0) + h * mask.stride(1);

    let mut tile_start = q_start;
    while tile_start < sq {
        stage_transposed::<F>(
            q,
            q_base,
            tile_start,
            sq,
            &mut q_tile,
            head_dim,
            tile_queries,
            t_stride,
            unit,
            THREADS,
        );
        stage_transposed::<F>(
            grad_out,
            go_base,
            tile_start,
            sq,
            &mut go_tile,
            val_dim,
            tile_queries,
            t_stride,
            unit,
            THREADS,
        );
        let mut i = unit;
        while i < tile_queries {
            let row = tile_start + i;
            let mut lse = f32::new(NO_LSE);
            let mut delta = 0.0f32;
            if row < sq {
                let at = (bh * sq + row) * 2;
                lse = stats[at];
                delta = stats[at + 1];
            }
            lse_tile[i] = lse;
            delta_tile[i] = delta;
            i += THREADS;
        }
        sync_cube();
        if key_valid {
            for i in 0..tile_queries {
                let row = tile_start + i;
                let mask_row = mask_head + row * mask.stride(2);
                if visible::<M>(row, key, sq, sk, mask, mask_row, causal, has_mask) {
                    let s = dot_column(&k_row, &q_tile, i, t_stride, head_dim);
                    let p = f32::exp(s - lse_tile[i]);
                    let dp = dot_column(&v_row, &go_tile, i, t_stride, val_dim);
                    #[unroll]
                    for d in 0..val_dim {
                        dv[d] += p * go_tile[d * t_stride + i];
                    }
                    let ds = p * (dp - delta_tile[i]);
                    #[unroll]
                    for d in 0..head_dim {
                        dk[d] += ds * q_tile[d * t_stride + i];
                    }
                }
            }
        }
        sync_cube();
        tile_start += tile_queries;
    }

    if key_valid {
        let dk_base = b * grad_k.stride(0) + h * grad_k.stride(1) + key * grad_k.stride(2);
        let step = grad_k.stride(3);
        #[unroll]
        for d in 0..head_dim {
            grad_k[dk_base + d * step] = F::cast_from(dk[d] * scale);
        }
        let dv_base = b * grad_v.stride(0) + h * grad_v.stride(1) + key * grad_v.stride(2);
        let step = grad_v.stride(3);
        #[unroll]
        for d in 0..val_dim {
            grad_v[dv_base + d * step] = F::cast_from(dv[d]);
        }
    }
}
