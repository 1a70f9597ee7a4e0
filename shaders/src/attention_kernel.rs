//! The attention kernels for the CubeCL backend (wgpu, CUDA, ...): flash-style attention with an
//! online softmax and f32 accumulation, keys and values staged tile by tile in shared memory.
//! Masked keys never contribute, so a row without any visible key keeps a zero normaliser and
//! is written as zeros; causal cubes stop at the last key their last row may see.
//!
//! Two kernels share that contract:
//!
//! * **block kernel** (query blocks of 16 or 32 rows: SigLIP, the resampler, prefill). 64
//!   threads in an 8 × 8 grid. Per key tile: stage K; every thread computes a
//!   `rows_per_thread × keys_per_thread` block of scores from the shared Q block and K tile
//!   (register tiling: each shared load feeds several multiply-adds); one thread per row turns
//!   its scores into probabilities, updates the row's running maximum and normaliser and
//!   publishes the rescaling factor while the cube stages V over K; every thread then updates
//!   a `rows_per_thread × ⌈Dv/8⌉` block of the output accumulator.
//! * **row kernel** (at most 8 query rows: decode, `Sq = 1`). One thread handles one row's
//!   share of the keys (`key ≡ group (mod groups)`), keeping the row's query and accumulator in
//!   registers and rescaling only when its maximum grows; the partial states of a row's threads
//!   are merged through shared memory at the end (log-sum-exp combination). Many threads a row
//!   keep a cube busy along a long KV cache.
//!
//! Half precision with more than 8 query rows goes to the tensor-core kernel instead
//! (`attention_mma_kernel`) on devices with MMA instructions.
//!
//! (Over 600 lines because the two kernels share one launch plan and the masking contract above
//! (the staging helpers are in `tiles`, shared with the backward kernels); each kernel is one
//! `#[cube]` function of tile arithmetic that reads best whole, next to the plan that sizes its
//! tiles.)

use burn::backend::Shape;
use burn::backend::ops::{AttentionModuleOptions, FloatTensorOps, ModuleOps};
use burn::backend::tensor::{BoolTensor, FloatTensor};
use burn::tensor::{DType, FloatDType};
use burn_cubecl::CubeBackend;
use burn_cubecl::ops::numeric::{empty_device_dtype, zeros_client};
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use crate::attention::{
    FlashAttentionBackend, MAX_KERNEL_HEAD_DIM, NO_KEY_LSE, composed_attention_lse,
};
use crate::attention_backward_kernel::launch_attention_backward;
use crate::attention_mma_kernel;
use crate::mma_plan::{self, Side};
use crate::tiles::{LaunchArgs, stage_transposed, visible_key_end};

/// Output elements each thread folds per round when the row kernel merges partial states.
const MERGE_CHUNK: usize = 8;
/// Threads a cube runs (the block kernel's 8 × 8 grid; the row kernel's budget).
const THREADS: usize = 64;
/// Side of the block kernel's thread grid.
const GRID: usize = 8;
/// Queries up to this many go to the row kernel.
const ROW_KERNEL_MAX_SQ: usize = 8;
/// Shared memory the kernels allow themselves, at most (CUDA's static shared-memory limit).
const SHARED_BUDGET: usize = 48 * 1024;
/// Running maximum before any key is seen, and the score of a masked key: finite, so that no
/// infinity or NaN appears on any backend (`exp(NO_MAX - s)` is 0 for every real score).
const NO_MAX: f32 = -3.0e38;
/// Scores above this are real; [`NO_MAX`] marks masked ones.
const MASKED_BELOW: f32 = -1.0e38;
/// Log-sum-exp of a row that sees no key (the public contract's value).
const NO_LSE: f32 = NO_KEY_LSE;

impl FlashAttentionBackend for CubeBackend {
    fn flash_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        causal: bool,
    ) -> FloatTensor<Self> {
        launch_attention(q, k, v, None, causal, false).0
    }

    fn flash_attention_masked(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: BoolTensor<Self>,
        causal: bool,
    ) -> FloatTensor<Self> {
        launch_attention(q, k, v, Some(mask), causal, false).0
    }

    fn flash_attention_lse(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        causal: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        with_lse(launch_attention(q, k, v, None, causal, true))
    }

    fn flash_attention_lse_masked(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: BoolTensor<Self>,
        causal: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        with_lse(launch_attention(q, k, v, Some(mask), causal, true))
    }

    fn flash_attention_backward_saved(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        grad_out: FloatTensor<Self>,
        causal: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        launch_attention_backward(q, k, v, None, grad_out, causal, Some((out, lse)))
    }

    fn flash_attention_backward_saved_masked(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: BoolTensor<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        grad_out: FloatTensor<Self>,
        causal: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        launch_attention_backward(q, k, v, Some(mask), grad_out, causal, Some((out, lse)))
    }

    fn flash_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        grad_out: FloatTensor<Self>,
        causal: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        launch_attention_backward(q, k, v, None, grad_out, causal, None)
    }

    fn flash_attention_backward_masked(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: BoolTensor<Self>,
        grad_out: FloatTensor<Self>,
        causal: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        launch_attention_backward(q, k, v, Some(mask), grad_out, causal, None)
    }
}

/// The output and the log-sum-exp of a [`launch_attention`] that was asked for it.
fn with_lse((out, lse): (CubeTensor, Option<CubeTensor>)) -> (CubeTensor, CubeTensor) {
    (
        out,
        lse.expect("launch_attention returns the log-sum-exp when asked for it"),
    )
}

/// Which kernel runs and how it splits the work (compile-time constants of the kernel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// Block kernel: `8·rows_per_thread` queries and `8·keys_per_thread` keys a tile.
    Block {
        rows_per_thread: usize,
        keys_per_thread: usize,
    },
    /// Row kernel: `block_rows` queries, `groups` threads a query, `tile_keys` keys a tile.
    Rows {
        block_rows: usize,
        groups: usize,
        tile_keys: usize,
    },
}

impl Plan {
    /// The block kernel for more than [`ROW_KERNEL_MAX_SQ`] queries, the row kernel otherwise,
    /// with the largest tiles that fit the shared-memory budget; `None` if nothing fits.
    fn choose(
        sq: usize,
        dh: usize,
        dv: usize,
        max_shared: usize,
        max_units: usize,
    ) -> Option<Plan> {
        let budget = max_shared.min(SHARED_BUDGET);
        if max_units < THREADS {
            return None;
        }
        if sq > ROW_KERNEL_MAX_SQ {
            let cols = dv.div_ceil(GRID) * GRID;
            return [(4, 4), (4, 2), (2, 2), (2, 1), (1, 1)]
                .into_iter()
                .find(|&(rq, rk)| {
                    let (rows, keys) = (GRID * rq, GRID * rk);
                    let floats = rows * (dh + 1)
                        + (dh * (keys + 1)).max(keys * cols)
                        + rows * (keys + 1)
                        + rows;
                    4 * floats <= budget
                })
                .map(|(rows_per_thread, keys_per_thread)| Plan::Block {
                    rows_per_thread,
                    keys_per_thread,
                });
        }
        let block_rows = sq.next_power_of_two().min(THREADS);
        [64, 32, 16, 8, 4, 2, 1].into_iter().find_map(|tile_keys| {
            let groups = (THREADS / block_rows).clamp(1, tile_keys);
            let merge = if groups > 1 {
                block_rows * groups * (2 + MERGE_CHUNK)
            } else {
                0
            };
            let bytes = 4 * ((tile_keys + 1) * (dh + dv) + merge);
            (bytes <= budget).then_some(Plan::Rows {
                block_rows,
                groups,
                tile_keys,
            })
        })
    }

    /// Query rows one cube covers.
    fn block_rows(&self) -> usize {
        match *self {
            Plan::Block {
                rows_per_thread, ..
            } => GRID * rows_per_thread,
            Plan::Rows { block_rows, .. } => block_rows,
        }
    }
}

/// Validates shapes and launches a kernel, or hands the call to Burn's attention op when the
/// kernels cannot run it (dtype, head size, launch limits). Returns the output and, with
/// `want_lse`, each row's log-sum-exp (`[B, H, Sq]`, f32), which the kernels write as they go;
/// where they cannot run, output and log-sum-exp are composed of tensor ops (one pass over the
/// scores for both), or, without `want_lse`, the output is Burn's op.
fn launch_attention(
    q: CubeTensor,
    k: CubeTensor,
    v: CubeTensor,
    mask: Option<CubeTensor>,
    causal: bool,
    want_lse: bool,
) -> (CubeTensor, Option<CubeTensor>) {
    let [b, h, sq, dh] = q.meta.shape().dims::<4>();
    let [_, _, sk, dv] = v.meta.shape().dims::<4>();
    let client = q.client.clone();
    let props = client.properties();
    let hw = &props.hardware;
    let plan = Plan::choose(
        sq,
        dh,
        dv,
        hw.max_shared_memory_size,
        hw.max_units_per_cube as usize,
    );
    let float = matches!(q.dtype, DType::F32 | DType::F16 | DType::BF16);
    let same = k.dtype == q.dtype && v.dtype == q.dtype;
    let fits = |plan: &Plan| {
        sq.div_ceil(plan.block_rows()) <= hw.max_cube_count.0 as usize
            && b * h <= hw.max_cube_count.1 as usize
    };
    let plan = match plan {
        Some(plan)
            if float
                && same
                && (1..=MAX_KERNEL_HEAD_DIM).contains(&dh)
                && (1..=MAX_KERNEL_HEAD_DIM).contains(&dv)
                && fits(&plan) =>
        {
            plan
        }
        _ if want_lse => {
            let (out, lse) = composed_attention_lse::<CubeBackend>(q, k, v, mask, causal);
            return (out, Some(lse));
        }
        _ => {
            let options = AttentionModuleOptions {
                is_causal: causal,
                ..Default::default()
            };
            return (CubeBackend::attention(q, k, v, mask, None, options), None);
        }
    };

    let out_shape = Shape::new([b, h, sq, dv]);
    let lse_shape = Shape::new([b, h, sq]);
    if b * h * sq == 0 {
        let lse = want_lse
            .then(|| empty_device_dtype(client.clone(), q.device.clone(), lse_shape, DType::F32));
        return (
            empty_device_dtype(client, q.device.clone(), out_shape, q.dtype),
            lse,
        );
    }
    if sk == 0 {
        // No keys: every row is fully masked.
        let lse = want_lse.then(|| {
            CubeBackend::float_full(lse_shape, NO_KEY_LSE.into(), &q.device, FloatDType::F32)
        });
        return (
            zeros_client(client, q.device.clone(), out_shape, q.dtype),
            lse,
        );
    }
    let out = empty_device_dtype(client.clone(), q.device.clone(), out_shape, q.dtype);
    // The kernels always write the statistics (one float a row, next to `Dv` output values).
    let lse = empty_device_dtype(client.clone(), q.device.clone(), lse_shape, DType::F32);
    let result = (out.clone(), want_lse.then(|| lse.clone()));
    // Half precision on devices with MMA instructions: the tensor-core kernel.
    if matches!(plan, Plan::Block { .. })
        && let Some(mma) = mma_plan::plan(Side::Forward, &q, dv)
            .filter(|mma| sq.div_ceil(mma.block_rows()) <= hw.max_cube_count.0 as usize)
    {
        attention_mma_kernel::launch(mma, q, k, v, mask, out, lse, causal);
        return result;
    }
    let args = LaunchArgs::new(&q, mask);
    let cube_count = CubeCount::Static(sq.div_ceil(plan.block_rows()) as u32, (b * h) as u32, 1);
    let (q, k, v, o, lse) = (
        q.into_tensor_arg(),
        k.into_tensor_arg(),
        v.into_tensor_arg(),
        out.into_tensor_arg(),
        lse.into_tensor_arg(),
    );
    let LaunchArgs {
        scale,
        mask,
        has_mask,
        types,
    } = args;
    let mask = mask.into_tensor_arg();
    // SAFETY: every global access is guarded by the row/key bounds the kernels compute from the
    // tensors' own shapes, and shared-memory indices stay within the sizes declared in the
    // kernels (tests cover partial blocks and tiles).
    match plan {
        Plan::Block {
            rows_per_thread,
            keys_per_thread,
        } => unsafe {
            block_attention_kernel::launch_unchecked(
                &client,
                cube_count,
                CubeDim::new_1d(THREADS as u32),
                q,
                k,
                v,
                mask,
                o,
                lse,
                scale,
                dh,
                dv,
                rows_per_thread,
                keys_per_thread,
                causal,
                has_mask,
                types,
            )
        },
        Plan::Rows {
            block_rows,
            groups,
            tile_keys,
        } => unsafe {
            row_attention_kernel::launch_unchecked(
                &client,
                cube_count,
                CubeDim::new_1d((block_rows * groups) as u32),
                q,
                k,
                v,
                mask,
                o,
                lse,
                scale,
                dh,
                dv,
                block_rows,
                groups,
                tile_keys,
                causal,
                has_mask,
                types,
            )
        },
    }
    result
}

/// The block kernel (see the module documentation). `F` is the tensor float type, `M` the mask
/// storage type (any non-zero value = masked). Thread `(tr, tc)` of the 8 × 8 grid owns query
/// rows `tr + 8·i`, keys `tc + 8·j` of each tile and output columns `tc + 8·u`.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn block_attention_kernel<F: Float, M: Numeric>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    mask: &Tensor<M>,
    out: &mut Tensor<F>,
    lse: &mut Tensor<f32>,
    scale: f32,
    #[comptime] head_dim: usize,
    #[comptime] val_dim: usize,
    #[comptime] rows_per_thread: usize,
    #[comptime] keys_per_thread: usize,
    #[comptime] causal: bool,
    #[comptime] has_mask: bool,
    #[define(F, M)] _dtypes: [ElemType; 2],
) {
    let block_rows = comptime!(GRID * rows_per_thread);
    let tile_keys = comptime!(GRID * keys_per_thread);
    let cols = comptime!(val_dim.div_ceil(GRID));
    // Shared row strides, padded by one against bank conflicts. K is staged transposed
    // (`[d][key]`), so that the threads of a row read consecutive keys.
    let qk_stride = comptime!(head_dim + 1);
    let kt_stride = comptime!(tile_keys + 1);
    let v_stride = comptime!(cols * GRID);
    let s_stride = comptime!(tile_keys + 1);

    let unit = UNIT_POS as usize;
    let tr = unit / GRID;
    let tc = unit % GRID;
    let heads = q.shape(1);
    let sq = q.shape(2);
    let sk = k.shape(2);
    let bh = CUBE_POS_Y as usize;
    let b = bh / heads;
    let h = bh % heads;
    let block_start = CUBE_POS_X as usize * block_rows;

    let kv_end = visible_key_end(block_start, block_rows, sq, sk, causal);

    let mut q_tile = Shared::<[f32]>::new_slice(comptime!(block_rows * (head_dim + 1)));
    let mut kv_tile = Shared::<[f32]>::new_slice(comptime!(std::cmp::max(
        head_dim * (tile_keys + 1),
        tile_keys * cols * GRID
    )));
    let mut s_tile = Shared::<[f32]>::new_slice(comptime!(block_rows * (tile_keys + 1)));
    let mut row_factor = Shared::<[f32]>::new_slice(block_rows);

    // The query block, pre-scaled; rows past the end are zeros.
    let q_base = b * q.stride(0) + h * q.stride(1);
    let mut i = unit;
    while i < comptime!(block_rows * head_dim) {
        let r = i / head_dim;
        let d = i % head_dim;
        let row = block_start + r;
        let mut x = 0.0f32;
        if row < sq {
            x = f32::cast_from(q[q_base + row * q.stride(2) + d * q.stride(3)]) * scale;
        }
        q_tile[r * qk_stride + d] = x;
        i += THREADS;
    }

    // Row state, kept by thread `unit` for row `unit`.
    let mut m = f32::new(NO_MAX);
    let mut l = 0.0f32;
    // This thread's block of the output accumulator.
    let mut acc = Array::<f32>::new(comptime!(rows_per_thread * cols));
    #[unroll]
    for x in 0..comptime!(rows_per_thread * cols) {
        acc[x] = 0.0f32;
    }

    let k_base = b * k.stride(0) + h * k.stride(1);
    let v_base = b * v.stride(0) + h * v.stride(1);
    let mask_base = b * mask.stride(0) + h * mask.stride(1);
    let mut tile_start = 0usize;
    while tile_start < kv_end {
        // Stage K (keys past the end are zeros, and masked below).
        stage_transposed::<F>(
            k,
            k_base,
            tile_start,
            kv_end,
            &mut kv_tile,
            head_dim,
            tile_keys,
            kt_stride,
            unit,
            THREADS,
        );
        sync_cube();

        // Scores of this thread's rows × keys.
        let mut s = Array::<f32>::new(comptime!(rows_per_thread * keys_per_thread));
        #[unroll]
        for x in 0..comptime!(rows_per_thread * keys_per_thread) {
            s[x] = 0.0f32;
        }
        for d in 0..head_dim {
            let mut qv = Array::<f32>::new(rows_per_thread);
            #[unroll]
            for ri in 0..rows_per_thread {
                qv[ri] = q_tile[(tr + ri * GRID) * qk_stride + d];
            }
            #[unroll]
            for kj in 0..keys_per_thread {
                let kx = kv_tile[d * kt_stride + tc + kj * GRID];
                #[unroll]
                for ri in 0..rows_per_thread {
                    s[ri * keys_per_thread + kj] += qv[ri] * kx;
                }
            }
        }
        #[unroll]
        for ri in 0..rows_per_thread {
            let r = tr + ri * GRID;
            let row = block_start + r;
            #[unroll]
            for kj in 0..keys_per_thread {
                let j = tc + kj * GRID;
                let key = tile_start + j;
                let mut visible = row < sq && key < kv_end;
                if causal {
                    visible = visible && key + sq <= row + sk;
                }
                if has_mask && visible {
                    visible = mask[mask_base + row * mask.stride(2) + key * mask.stride(3)]
                        == M::from_int(0);
                }
                let mut score = f32::new(NO_MAX);
                if visible {
                    score = s[ri * keys_per_thread + kj];
                }
                s_tile[r * s_stride + j] = score;
            }
        }
        sync_cube();

        // Stage V over K while one thread per row turns its scores into probabilities.
        let mut i = unit;
        while i < comptime!(tile_keys * cols * GRID) {
            let j = i / v_stride;
            let c = i % v_stride;
            let key = tile_start + j;
            let mut x = 0.0f32;
            if key < kv_end && c < val_dim {
                x = f32::cast_from(v[v_base + key * v.stride(2) + c * v.stride(3)]);
            }
            kv_tile[j * v_stride + c] = x;
            i += THREADS;
        }
        if unit < block_rows {
            let base = unit * s_stride;
            let mut tile_max = f32::new(NO_MAX);
            for j in 0..tile_keys {
                tile_max = max(tile_max, s_tile[base + j]);
            }
            let m_new = max(m, tile_max);
            let correction = f32::exp(m - m_new);
            let mut sum = 0.0f32;
            for j in 0..tile_keys {
                let score = s_tile[base + j];
                let mut p = 0.0f32;
                if score > MASKED_BELOW {
                    p = f32::exp(score - m_new);
                }
                s_tile[base + j] = p;
                sum += p;
            }
            l = l * correction + sum;
            m = m_new;
            row_factor[unit] = correction;
        }
        sync_cube();

        // acc = acc · correction + P · V for this thread's rows × columns.
        #[unroll]
        for ri in 0..rows_per_thread {
            let correction = row_factor[tr + ri * GRID];
            #[unroll]
            for u in 0..cols {
                acc[ri * cols + u] *= correction;
            }
        }
        for j in 0..tile_keys {
            let mut pv = Array::<f32>::new(rows_per_thread);
            #[unroll]
            for ri in 0..rows_per_thread {
                pv[ri] = s_tile[(tr + ri * GRID) * s_stride + j];
            }
            #[unroll]
            for u in 0..cols {
                let vx = kv_tile[j * v_stride + tc + u * GRID];
                #[unroll]
                for ri in 0..rows_per_thread {
                    acc[ri * cols + u] += pv[ri] * vx;
                }
            }
        }
        sync_cube();
        tile_start += tile_keys;
    }

    if unit < block_rows {
        let mut inv = 0.0f32;
        let mut row_lse = f32::new(NO_LSE);
        if l > 0.0f32 {
            inv = 1.0f32 / l;
            row_lse = m + l.ln();
        }
        row_factor[unit] = inv;
        let row = block_start + unit;
        if row < sq {
            lse[bh * sq + row] = row_lse;
        }
    }
    sync_cube();
    let out_base = b * out.stride(0) + h * out.stride(1);
    let out_row = out.stride(2);
    let out_col = out.stride(3);
    #[unroll]
    for ri in 0..rows_per_thread {
        let r = tr + ri * GRID;
        let row = block_start + r;
        if row < sq {
            let inv = row_factor[r];
            #[unroll]
            for u in 0..cols {
                let c = tc + u * GRID;
                if c < val_dim {
                    out[out_base + row * out_row + c * out_col] =
                        F::cast_from(acc[ri * cols + u] * inv);
                }
            }
        }
    }
}

/// The row kernel (see the module documentation). `F` is the tensor float type, `M` the mask
/// storage type (any non-zero value = masked).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn row_attention_kernel<F: Float, M: Numeric>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    mask: &Tensor<M>,
    out: &mut Tensor<F>,
    lse: &mut Tensor<f32>,
    scale: f32,
    #[comptime] head_dim: usize,
    #[comptime] val_dim: usize,
    #[comptime] block_rows: usize,
    #[comptime] groups: usize,
    #[comptime] tile_keys: usize,
    #[comptime] causal: bool,
    #[comptime] has_mask: bool,
    #[define(F, M)] _dtypes: [ElemType; 2],
) {
    let threads = comptime!(block_rows * groups);
    let unit = UNIT_POS as usize;
    let r = unit / groups;
    let g = unit % groups;

    let heads = q.shape(1);
    let sq = q.shape(2);
    let sk = k.shape(2);
    let bh = CUBE_POS_Y as usize;
    let b = bh / heads;
    let h = bh % heads;
    let block_start = CUBE_POS_X as usize * block_rows;
    let row = block_start + r;
    let row_valid = row < sq;

    // Keys this cube may need: all of them, or up to what its last row sees when causal.
    let kv_end = visible_key_end(block_start, block_rows, sq, sk, causal);

    // This thread's query row, pre-scaled.
    let mut q_row = Array::<f32>::new(head_dim);
    let q_base = b * q.stride(0) + h * q.stride(1) + row * q.stride(2);
    #[unroll]
    for d in 0..head_dim {
        let mut x = 0.0f32;
        if row_valid {
            x = f32::cast_from(q[q_base + d * q.stride(3)]) * scale;
        }
        q_row[d] = x;
    }
    let mut acc = Array::<f32>::new(val_dim);
    #[unroll]
    for d in 0..val_dim {
        acc[d] = 0.0f32;
    }
    let mut m = f32::new(NO_MAX);
    let mut l = 0.0f32;

    // Tiles are staged transposed (`[d][key]`, rows padded by one), so that the threads of a
    // row, which own consecutive keys, read consecutive shared addresses.
    let kt_stride = comptime!(tile_keys + 1);
    let mut k_tile = Shared::<[f32]>::new_slice(comptime!(head_dim * (tile_keys + 1)));
    let mut v_tile = Shared::<[f32]>::new_slice(comptime!(val_dim * (tile_keys + 1)));
    let k_base = b * k.stride(0) + h * k.stride(1);
    let v_base = b * v.stride(0) + h * v.stride(1);
    let mask_base = b * mask.stride(0) + h * mask.stride(1) + row * mask.stride(2);

    let mut tile_start = 0usize;
    while tile_start < kv_end {
        // Stage the tile; keys past the end become zeros (never used).
        stage_transposed::<F>(
            k,
            k_base,
            tile_start,
            kv_end,
            &mut k_tile,
            head_dim,
            tile_keys,
            kt_stride,
            unit,
            threads,
        );
        stage_transposed::<F>(
            v,
            v_base,
            tile_start,
            kv_end,
            &mut v_tile,
            val_dim,
            tile_keys,
            kt_stride,
            unit,
            threads,
        );
        sync_cube();

        if row_valid {
            let mut j = g;
            while j < tile_keys {
                let key = tile_start + j;
                let mut visible = key < kv_end;
                if causal {
                    visible = visible && key + sq <= row + sk;
                }
                if has_mask && visible {
                    visible = mask[mask_base + key * mask.stride(3)] == M::from_int(0);
                }
                if visible {
                    let mut s = 0.0f32;
                    #[unroll]
                    for d in 0..head_dim {
                        s += q_row[d] * k_tile[d * kt_stride + j];
                    }
                    if s > m {
                        let correction = f32::exp(m - s);
                        l *= correction;
                        #[unroll]
                        for d in 0..val_dim {
                            acc[d] *= correction;
                        }
                        m = s;
                    }
                    let p = f32::exp(s - m);
                    l += p;
                    #[unroll]
                    for d in 0..val_dim {
                        acc[d] += p * v_tile[d * kt_stride + j];
                    }
                }
                j += groups;
            }
        }
        sync_cube();
        tile_start += tile_keys;
    }

    let out_base = b * out.stride(0) + h * out.stride(1) + row * out.stride(2);
    let out_step = out.stride(3);
    if comptime!(groups == 1) {
        if row_valid {
            let mut inv = 0.0f32;
            let mut row_lse = f32::new(NO_LSE);
            if l > 0.0f32 {
                inv = 1.0f32 / l;
                row_lse = m + l.ln();
            }
            lse[bh * sq + row] = row_lse;
            #[unroll]
            for d in 0..val_dim {
                out[out_base + d * out_step] = F::cast_from(acc[d] * inv);
            }
        }
    } else {
        // Merge the `groups` partial states of each row: m* = max m_g,
        // l* = Σ l_g·e^(m_g − m*), out = Σ acc_g·e^(m_g − m*) / l*.
        let mut stats = Shared::<[f32]>::new_slice(comptime!(block_rows * groups * 2));
        let mut part = Shared::<[f32]>::new_slice(comptime!(block_rows * groups * MERGE_CHUNK));
        stats[unit * 2] = m;
        stats[unit * 2 + 1] = l;
        sync_cube();
        let row_first = r * groups;
        let mut m_row = f32::new(NO_MAX);
        for gg in 0..groups {
            m_row = max(m_row, stats[(row_first + gg) * 2]);
        }
        let mut l_row = 0.0f32;
        for gg in 0..groups {
            let idx = (row_first + gg) * 2;
            l_row += stats[idx + 1] * f32::exp(stats[idx] - m_row);
        }
        let own_weight = f32::exp(m - m_row);
        let mut inv = 0.0f32;
        let mut row_lse = f32::new(NO_LSE);
        if l_row > 0.0f32 {
            inv = 1.0f32 / l_row;
            row_lse = m_row + l_row.ln();
        }
        if row_valid && g == 0 {
            lse[bh * sq + row] = row_lse;
        }
        #[unroll]
        for chunk in 0..comptime!(val_dim.div_ceil(MERGE_CHUNK)) {
            #[unroll]
            for c in 0..MERGE_CHUNK {
                let d = comptime!(chunk * MERGE_CHUNK + c);
                if comptime!(d < val_dim) {
                    part[unit * MERGE_CHUNK + c] = acc[d] * own_weight;
                }
            }
            sync_cube();
            let mut c = g;
            while c < MERGE_CHUNK {
                let d = chunk * MERGE_CHUNK + c;
                if row_valid && d < val_dim {
                    let mut sum = 0.0f32;
                    for gg in 0..groups {
                        sum += part[(row_first + gg) * MERGE_CHUNK + c];
                    }
                    out[out_base + d * out_step] = F::cast_from(sum * inv);
                }
                c += groups;
            }
            sync_cube();
        }
    }
}
