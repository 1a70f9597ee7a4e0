//! The attention kernel for the CubeCL backend (wgpu, CUDA, ...): flash-style attention with an
//! online softmax, f32 accumulation and key/value tiles staged in shared memory.
//!
//! Work split: one cube (workgroup) handles `block_rows` consecutive query rows of one
//! `(batch, head)`; `groups` threads share each row. For every tile of `tile_keys` keys the whole
//! cube copies K and V (converted to f32) into shared memory; each thread then walks the keys of
//! the tile that belong to it (`key ≡ group (mod groups)`) and updates its running maximum `m`,
//! normaliser `l` and output accumulator, rescaling only when the maximum grows. Masked keys are
//! skipped, so a row without any visible key keeps `l = 0` and is written as zeros. With several
//! threads a row, their partial states are merged through shared memory at the end (the
//! log-sum-exp combination). Causal cubes stop at the last key their last row may see.
//!
//! Prefill shapes use 64 rows a cube and one thread a row; short query blocks (decode `Sq = 1`,
//! the resampler's latents) trade rows for threads a row, so that a cube still keeps 64 threads
//! busy along the keys.

use burn::backend::Shape;
use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::ops::{AttentionModuleOptions, ModuleOps};
use burn::backend::tensor::{BoolTensor, FloatTensor};
use burn::tensor::DType;
use burn_cubecl::CubeBackend;
use burn_cubecl::ops::numeric::{empty_device_dtype, zeros_client};
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use crate::attention::{FlashAttentionBackend, MAX_KERNEL_HEAD_DIM};

/// Output elements each thread folds per round when merging the partial states of a row.
const MERGE_CHUNK: usize = 8;
/// Threads a cube aims for.
const THREADS: usize = 64;
/// Shared memory the kernel allows itself, at most (CUDA's static shared-memory limit).
const SHARED_BUDGET: usize = 48 * 1024;
/// Running maximum before any key is seen: finite, so that `exp(m_old - m_new)` stays 0 and no
/// infinities or NaNs appear on any backend.
const NO_MAX: f32 = -3.0e38;

impl FlashAttentionBackend for CubeBackend {
    fn flash_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        causal: bool,
    ) -> FloatTensor<Self> {
        launch_attention(q, k, v, None, causal)
    }

    fn flash_attention_masked(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: BoolTensor<Self>,
        causal: bool,
    ) -> FloatTensor<Self> {
        launch_attention(q, k, v, Some(mask), causal)
    }
}

/// How one launch splits the work (all values are compile-time constants of the kernel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LaunchPlan {
    block_rows: usize,
    groups: usize,
    tile_keys: usize,
}

impl LaunchPlan {
    /// Picks the largest key tile that fits the shared-memory budget; `None` if nothing fits.
    fn choose(
        sq: usize,
        dh: usize,
        dv: usize,
        max_shared: usize,
        max_units: usize,
    ) -> Option<Self> {
        let budget = max_shared.min(SHARED_BUDGET);
        let threads = THREADS.min(max_units).max(1);
        let block_rows = sq.next_power_of_two().min(threads);
        [64, 32, 16, 8, 4, 2, 1].into_iter().find_map(|tile_keys| {
            let groups = (threads / block_rows).clamp(1, tile_keys);
            let merge = if groups > 1 {
                block_rows * groups * (2 + MERGE_CHUNK)
            } else {
                0
            };
            let bytes = 4 * (tile_keys * (dh + dv) + merge);
            (bytes <= budget).then_some(LaunchPlan {
                block_rows,
                groups,
                tile_keys,
            })
        })
    }
}

/// Validates shapes and launches the kernel, or hands the call to Burn's attention op when the
/// kernel cannot run it (dtype, head size, launch limits).
fn launch_attention(
    q: CubeTensor,
    k: CubeTensor,
    v: CubeTensor,
    mask: Option<CubeTensor>,
    causal: bool,
) -> CubeTensor {
    let [b, h, sq, dh] = q.meta.shape().dims::<4>();
    let [_, _, sk, dv] = v.meta.shape().dims::<4>();
    let client = q.client.clone();
    let props = client.properties();
    let hw = &props.hardware;
    let plan = LaunchPlan::choose(
        sq,
        dh,
        dv,
        hw.max_shared_memory_size,
        hw.max_units_per_cube as usize,
    );
    let float = matches!(q.dtype, DType::F32 | DType::F16 | DType::BF16);
    let same = k.dtype == q.dtype && v.dtype == q.dtype;
    let fits = |plan: &LaunchPlan| {
        sq.div_ceil(plan.block_rows) <= hw.max_cube_count.0 as usize
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
        _ => {
            let options = AttentionModuleOptions {
                is_causal: causal,
                ..Default::default()
            };
            return CubeBackend::attention(q, k, v, mask, None, options);
        }
    };

    let out_shape = Shape::new([b, h, sq, dv]);
    if b * h * sq == 0 {
        return empty_device_dtype(client, q.device.clone(), out_shape, q.dtype);
    }
    if sk == 0 {
        // No keys: every row is fully masked.
        return zeros_client(client, q.device.clone(), out_shape, q.dtype);
    }
    let out = empty_device_dtype(client.clone(), q.device.clone(), out_shape, q.dtype);
    let float_type = dtype_to_storage_type(q.dtype);
    let scale = 1.0 / (dh as f32).sqrt();
    let has_mask = mask.is_some();
    // Without a mask the kernel never reads its mask argument; `q` stands in for it.
    let (mask_arg, mask_type) = match mask {
        Some(mask) => {
            let ty = dtype_to_storage_type(mask.dtype);
            (mask.into_tensor_arg(), ty)
        }
        None => (q.clone().into_tensor_arg(), float_type),
    };
    let cube_count = CubeCount::Static(sq.div_ceil(plan.block_rows) as u32, (b * h) as u32, 1);
    let cube_dim = CubeDim::new_1d((plan.block_rows * plan.groups) as u32);
    attention_kernel::launch(
        &client,
        cube_count,
        cube_dim,
        q.into_tensor_arg(),
        k.into_tensor_arg(),
        v.into_tensor_arg(),
        mask_arg,
        out.clone().into_tensor_arg(),
        scale,
        dh,
        dv,
        plan.block_rows,
        plan.groups,
        plan.tile_keys,
        causal,
        has_mask,
        [float_type, mask_type],
    );
    out
}

/// See the module documentation. `F` is the tensor float type, `M` the mask storage type
/// (any non-zero value = masked).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn attention_kernel<F: Float, M: Numeric>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    mask: &Tensor<M>,
    out: &mut Tensor<F>,
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
    let mut kv_end = sk;
    if causal {
        let last = min(block_start + block_rows, sq);
        let reach = last + sk;
        kv_end = 0;
        if reach > sq {
            kv_end = min(reach - sq, sk);
        }
    }

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

    let mut k_tile = Shared::<[f32]>::new_slice(comptime!(tile_keys * head_dim));
    let mut v_tile = Shared::<[f32]>::new_slice(comptime!(tile_keys * val_dim));
    let k_base = b * k.stride(0) + h * k.stride(1);
    let v_base = b * v.stride(0) + h * v.stride(1);
    let mask_base = b * mask.stride(0) + h * mask.stride(1) + row * mask.stride(2);

    let mut tile_start = 0usize;
    while tile_start < kv_end {
        // Stage the tile; keys past the end become zeros (never used).
        let mut i = unit;
        while i < comptime!(tile_keys * head_dim) {
            let key = tile_start + i / head_dim;
            let mut x = 0.0f32;
            if key < kv_end {
                x = f32::cast_from(k[k_base + key * k.stride(2) + (i % head_dim) * k.stride(3)]);
            }
            k_tile[i] = x;
            i += threads;
        }
        let mut i = unit;
        while i < comptime!(tile_keys * val_dim) {
            let key = tile_start + i / val_dim;
            let mut x = 0.0f32;
            if key < kv_end {
                x = f32::cast_from(v[v_base + key * v.stride(2) + (i % val_dim) * v.stride(3)]);
            }
            v_tile[i] = x;
            i += threads;
        }
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
                        s += q_row[d] * k_tile[j * head_dim + d];
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
                        acc[d] += p * v_tile[j * val_dim + d];
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
            if l > 0.0f32 {
                inv = 1.0f32 / l;
            }
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
        #[unroll]
        for gg in 0..groups {
            m_row = max(m_row, stats[(row_first + gg) * 2]);
        }
        let mut l_row = 0.0f32;
        #[unroll]
        for gg in 0..groups {
            let idx = (row_first + gg) * 2;
            l_row += stats[idx + 1] * f32::exp(stats[idx] - m_row);
        }
        let own_weight = f32::exp(m - m_row);
        let mut inv = 0.0f32;
        if l_row > 0.0f32 {
            inv = 1.0f32 / l_row;
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
                    #[unroll]
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
