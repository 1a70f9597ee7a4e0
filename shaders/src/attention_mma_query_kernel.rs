//! The tensor-core query kernel of the attention backward (`dQ`, and the per-row statistics
//! `lse` and `δ` the key kernel reads); see `attention_mma_backward_kernel` for the pair and
//! `mma_plan` for their plans and the conditions under which they run.

use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;
use std::sync::atomic::Ordering;

use crate::attention::TENSOR_CORE_BACKWARD_LAUNCHES;
use crate::attention_mma_backward_kernel::{NO_LSE, NO_MAX};
use crate::mma_plan::{FRAGMENT_ALIGN, TilePlan};
use crate::tiles::{
    LaunchArgs, accumulate_product, product_transposed, stage_rows, store_rows, visible,
    visible_key_end,
};

/// Launches the query kernel with `plan` (from `mma_plan::plan` for `Side::Queries`): `grad_q`
/// (a fresh tensor of the shape of `q`) and `stats` (`[B, H, Sq, 2]` f32, fresh: `lse` and `δ`
/// a row, which the key kernel then reads), from the forward's saved output `out` and
/// log-sum-exp `lse` (`[B, H, Sq]` f32) with `has_stats`, else by a first walk over the keys
/// (`out` and `lse` are then stand-ins, never read).
#[allow(clippy::too_many_arguments)]
pub(crate) fn launch_queries(
    plan: TilePlan,
    q: CubeTensor,
    k: CubeTensor,
    v: CubeTensor,
    mask: Option<CubeTensor>,
    grad_out: CubeTensor,
    grad_q: CubeTensor,
    stats: CubeTensor,
    out: CubeTensor,
    lse: CubeTensor,
    causal: bool,
    has_stats: bool,
) {
    let [b, h, sq, dh] = q.meta.shape().dims::<4>();
    let dv = v.meta.shape().dims::<4>()[3];
    let client = q.client.clone();
    let args = LaunchArgs::new(&q, mask);
    let cube_count = CubeCount::Static(sq.div_ceil(plan.block_rows()) as u32, (b * h) as u32, 1);
    TENSOR_CORE_BACKWARD_LAUNCHES.fetch_add(1, Ordering::Relaxed);
    // SAFETY: as for the key kernel.
    unsafe {
        mma_query_grad_kernel::launch_unchecked(
            &client,
            cube_count,
            CubeDim::new_2d(plan.plane_dim as u32, plan.planes as u32),
            q.into_tensor_arg(),
            k.into_tensor_arg(),
            v.into_tensor_arg(),
            args.mask.into_tensor_arg(),
            grad_out.into_tensor_arg(),
            grad_q.into_tensor_arg(),
            stats.into_tensor_arg(),
            out.into_tensor_arg(),
            lse.into_tensor_arg(),
            args.scale,
            dh,
            dv,
            plan.dh_pad,
            plan.dv_pad,
            plan.tm,
            plan.tn,
            plan.tk,
            plan.plane_dim,
            plan.planes,
            plan.tile,
            causal,
            args.has_mask,
            has_stats,
            args.types,
        )
    }
}

/// Stages keys `tile_start..` (those before `kv_end`) of one head's K and V rows for the query
/// kernel, then waits for the cube.
#[cube]
#[allow(clippy::too_many_arguments)]
fn stage_key_tile<F: Float>(
    k: &Tensor<F>,
    v: &Tensor<F>,
    k_base: usize,
    v_base: usize,
    tile_start: usize,
    kv_end: usize,
    k_s: &mut Shared<[F]>,
    v_s: &mut Shared<[F]>,
    unit: usize,
    #[comptime] head_dim: usize,
    #[comptime] val_dim: usize,
    #[comptime] dh_pad: usize,
    #[comptime] dv_pad: usize,
    #[comptime] tile_k: usize,
    #[comptime] threads: usize,
) {
    stage_rows::<F>(
        k, k_base, tile_start, kv_end, k_s, head_dim, dh_pad, tile_k, unit, threads,
    );
    stage_rows::<F>(
        v, v_base, tile_start, kv_end, v_s, val_dim, dv_pad, tile_k, unit, threads,
    );
    sync_cube();
}

/// Each plane's `S = Q·Kᵀ` into `s_s` and `dP = dO·Vᵀ` into `dp_s` (f32, unscaled) for its rows
/// against a staged key tile, then waits for the cube.
#[cube]
#[allow(clippy::too_many_arguments)]
fn query_tile_products<F: Float>(
    q_s: &Shared<[F]>,
    go_s: &Shared<[F]>,
    k_s: &Shared<[F]>,
    v_s: &Shared<[F]>,
    s_s: &mut Shared<[f32]>,
    dp_s: &mut Shared<[f32]>,
    row0: usize,
    #[comptime] dh_pad: usize,
    #[comptime] dv_pad: usize,
    #[comptime] tile_k: usize,
    #[comptime] tm: usize,
    #[comptime] tn: usize,
    #[comptime] tk: usize,
) {
    #[unroll]
    for n in 0..comptime!(tile_k / tn) {
        product_transposed::<F>(
            q_s,
            row0 * dh_pad,
            k_s,
            n * tn * dh_pad,
            s_s,
            row0 * tile_k + n * tn,
            dh_pad,
            tile_k,
            tm,
            tn,
            tk,
        );
        product_transposed::<F>(
            go_s,
            row0 * dv_pad,
            v_s,
            n * tn * dv_pad,
            dp_s,
            row0 * tile_k + n * tn,
            dv_pad,
            tile_k,
            tm,
            tn,
            tk,
        );
    }
    sync_cube();
}

/// The tensor-core query kernel: per query row `lse` and `δ` (with `has_stats`, `lse` saved by
/// the forward and `δ = dO·O` from its saved output; else a first walk over the keys, online as
/// the forward does, with `δ = Σ_j P_j dP_j`), then `dQ = scale · Σ_j P_j (dP_j − δ) k_j` (a walk with the last
/// product on MMAs). A plane owns `tm` queries; `F` is the tensor float
/// type (f16 or bf16), `M` the mask storage type (any non-zero value = masked).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn mma_query_grad_kernel<F: Float, M: Numeric>(
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
    #[comptime] dh_pad: usize,
    #[comptime] dv_pad: usize,
    #[comptime] tm: usize,
    #[comptime] tn: usize,
    #[comptime] tk: usize,
    #[comptime] plane_dim: usize,
    #[comptime] planes: usize,
    #[comptime] tile_k: usize,
    #[comptime] causal: bool,
    #[comptime] has_mask: bool,
    #[comptime] has_stats: bool,
    #[define(F, M)] _dtypes: [ElemType; 2],
) {
    let threads = comptime!(plane_dim * planes);
    let block_rows = comptime!(planes * tm);
    let unit = UNIT_POS as usize;
    let row0 = UNIT_POS_Y as usize * tm;
    let heads = q.shape(1);
    let sq = q.shape(2);
    let sk = k.shape(2);
    let bh = CUBE_POS_Y as usize;
    let b = bh / heads;
    let h = bh % heads;
    let block_start = CUBE_POS_X as usize * block_rows;
    let kv_end = visible_key_end(block_start, block_rows, sq, sk, causal);

    let mut q_s = Shared::<[F]>::new_aligned_slice(comptime!(block_rows * dh_pad), FRAGMENT_ALIGN);
    let mut go_s = Shared::<[F]>::new_aligned_slice(comptime!(block_rows * dv_pad), FRAGMENT_ALIGN);
    let mut k_s = Shared::<[F]>::new_aligned_slice(comptime!(tile_k * dh_pad), FRAGMENT_ALIGN);
    let mut v_s = Shared::<[F]>::new_aligned_slice(comptime!(tile_k * dv_pad), FRAGMENT_ALIGN);
    let mut s_s =
        Shared::<[f32]>::new_aligned_slice(comptime!(block_rows * tile_k), FRAGMENT_ALIGN);
    let mut dp_s =
        Shared::<[f32]>::new_aligned_slice(comptime!(block_rows * tile_k), FRAGMENT_ALIGN);
    let mut ds_s = Shared::<[F]>::new_aligned_slice(comptime!(block_rows * tile_k), FRAGMENT_ALIGN);
    let mut dq_s =
        Shared::<[f32]>::new_aligned_slice(comptime!(block_rows * dh_pad), FRAGMENT_ALIGN);
    // Per row: running maximum, normaliser, Σ e^(s − m)·dP (δ·l); then lse and δ.
    let mut row_s = Shared::<[f32]>::new_slice(comptime!(block_rows * 4));

    let q_base = b * q.stride(0) + h * q.stride(1);
    let go_base = b * grad_out.stride(0) + h * grad_out.stride(1);
    stage_rows::<F>(
        q,
        q_base,
        block_start,
        sq,
        &mut q_s,
        head_dim,
        dh_pad,
        block_rows,
        unit,
        threads,
    );
    stage_rows::<F>(
        grad_out,
        go_base,
        block_start,
        sq,
        &mut go_s,
        val_dim,
        dv_pad,
        block_rows,
        unit,
        threads,
    );
    let mut i = unit;
    while i < comptime!(block_rows * dh_pad) {
        dq_s[i] = 0.0f32;
        i += threads;
    }
    let mut r = unit;
    while r < block_rows {
        row_s[r * 4] = f32::new(NO_MAX);
        row_s[r * 4 + 1] = 0.0f32;
        row_s[r * 4 + 2] = 0.0f32;
        r += threads;
    }

    let k_base = b * k.stride(0) + h * k.stride(1);
    let v_base = b * v.stride(0) + h * v.stride(1);
    let mask_head = b * mask.stride(0) + h * mask.stride(1);

    if has_stats {
        // lse saved by the forward; δ = dO·O from its saved output, one thread a row (the
        // staged dO rows are read by other threads than staged them).
        sync_cube();
        let o_head = b * out.stride(0) + h * out.stride(1);
        let mut r = unit;
        while r < block_rows {
            let row = block_start + r;
            let mut lse = f32::new(NO_LSE);
            let mut delta = 0.0f32;
            if row < sq {
                lse = saved_lse[bh * sq + row];
                let o_row = o_head + row * out.stride(2);
                for c in 0..val_dim {
                    delta += f32::cast_from(go_s[r * dv_pad + c])
                        * f32::cast_from(out[o_row + c * out.stride(3)]);
                }
                let at = (bh * sq + row) * 2;
                stats[at] = lse;
                stats[at + 1] = delta;
            }
            row_s[r * 4] = lse;
            row_s[r * 4 + 2] = delta;
            r += threads;
        }
        sync_cube();
    } else {
        // First walk: lse and δ, online, one thread a row.
        let mut tile_start = 0usize;
        while tile_start < kv_end {
            stage_key_tile::<F>(
                k, v, k_base, v_base, tile_start, kv_end, &mut k_s, &mut v_s, unit, head_dim,
                val_dim, dh_pad, dv_pad, tile_k, threads,
            );
            query_tile_products::<F>(
                &q_s, &go_s, &k_s, &v_s, &mut s_s, &mut dp_s, row0, dh_pad, dv_pad, tile_k, tm, tn,
                tk,
            );
            let mut r = unit;
            while r < block_rows {
                let row = block_start + r;
                let mask_row = mask_head + row * mask.stride(2);
                let mut m = row_s[r * 4];
                let mut l = row_s[r * 4 + 1];
                let mut weighted = row_s[r * 4 + 2];
                for j in 0..tile_k {
                    let key = tile_start + j;
                    if visible::<M>(row, key, sq, sk, mask, mask_row, causal, has_mask) {
                        let score = s_s[r * tile_k + j] * scale;
                        if score > m {
                            let correction = f32::exp(m - score);
                            l *= correction;
                            weighted *= correction;
                            m = score;
                        }
                        let p = f32::exp(score - m);
                        l += p;
                        weighted += p * dp_s[r * tile_k + j];
                    }
                }
                row_s[r * 4] = m;
                row_s[r * 4 + 1] = l;
                row_s[r * 4 + 2] = weighted;
                r += threads;
            }
            sync_cube();
            tile_start += tile_k;
        }
        // lse and δ of each row, kept for the second walk and written for the key kernel.
        let mut r = unit;
        while r < block_rows {
            let row = block_start + r;
            let l = row_s[r * 4 + 1];
            let mut lse = f32::new(NO_LSE);
            let mut delta = 0.0f32;
            if l > 0.0f32 {
                lse = row_s[r * 4] + l.ln();
                delta = row_s[r * 4 + 2] / l;
            }
            row_s[r * 4] = lse;
            row_s[r * 4 + 2] = delta;
            if row < sq {
                let at = (bh * sq + row) * 2;
                stats[at] = lse;
                stats[at + 1] = delta;
            }
            r += threads;
        }
        sync_cube();
    }

    // Second walk: dS = P ∘ (dP − δ), dQ += dS·K.
    let mut tile_start = 0usize;
    while tile_start < kv_end {
        stage_key_tile::<F>(
            k, v, k_base, v_base, tile_start, kv_end, &mut k_s, &mut v_s, unit, head_dim, val_dim,
            dh_pad, dv_pad, tile_k, threads,
        );
        query_tile_products::<F>(
            &q_s, &go_s, &k_s, &v_s, &mut s_s, &mut dp_s, row0, dh_pad, dv_pad, tile_k, tm, tn, tk,
        );
        let mut i = unit;
        while i < comptime!(block_rows * tile_k) {
            let r = i / tile_k;
            let j = i % tile_k;
            let row = block_start + r;
            let key = tile_start + j;
            let mask_row = mask_head + row * mask.stride(2);
            let mut ds = 0.0f32;
            if visible::<M>(row, key, sq, sk, mask, mask_row, causal, has_mask) {
                let p = f32::exp(s_s[i] * scale - row_s[r * 4]);
                ds = p * (dp_s[i] - row_s[r * 4 + 2]);
            }
            ds_s[i] = F::cast_from(ds);
            i += threads;
        }
        sync_cube();
        accumulate_product::<F>(
            &ds_s,
            row0 * tile_k,
            &k_s,
            &mut dq_s,
            row0 * dh_pad,
            tile_k,
            dh_pad,
            tm,
            tn,
            tk,
        );
        sync_cube();
        tile_start += tile_k;
    }

    let dq_base = b * grad_q.stride(0) + h * grad_q.stride(1);
    store_rows::<F>(
        &dq_s,
        grad_q,
        dq_base,
        block_start,
        sq,
        scale,
        head_dim,
        dh_pad,
        block_rows,
        unit,
        threads,
    );
}
