//! The tensor-core kernels of the attention backward, for f16 and bf16 inputs on devices that
//! have an MMA of that type with f32 accumulation (the conditions of the forward's
//! `attention_mma_kernel`). They compute what the scalar backward kernels
//! (`attention_backward_kernel`) compute, in the same two launches and through the same
//! `[B, H, Sq, 2]` buffer of per-row statistics `(lse_i, δ_i)`, with the products on MMAs:
//!
//! * **query kernel** (`attention_mma_query_kernel`) — a plane owns `tm` queries, whose Q and dO
//!   rows are staged once. A first walk over the key tiles computes `S = Q·Kᵀ` and `dP = dO·Vᵀ`
//!   with MMAs, and one thread per row keeps the online maximum, normaliser and
//!   `Σ_j e^(s_j − m) dP_j`, giving `lse_i = m + ln l` and `δ_i = Σ_j P_ij dP_ij` (`= dO_i·O_i`,
//!   without O); they are written for the key kernel. A second walk recomputes both products, forms `dS = P ∘ (dP − δ)` in the
//!   input dtype and adds `dS·K` to the plane's f32 `dQ` rows.
//! * **key kernel** — a plane owns `tm` keys, whose K and V rows are staged once. Per tile of
//!   queries (Q, dO, lse and δ staged): `Sᵀ = K·Qᵀ` with MMAs; `Pᵀ = exp(scale·Sᵀ − lse)` where the
//!   pair is visible (the masking contract of `attention`), 0 elsewhere, in the input dtype;
//!   `dPᵀ = V·dOᵀ` into the same f32 buffer; `dSᵀ = Pᵀ ∘ (dPᵀ − δ)`; then `Pᵀ·dO` and `dSᵀ·Q` are
//!   added to the plane's f32 `dV` and `dK` rows. Causal cubes start at the first query their
//!   first key is visible to.
//!
//! `dQ` and `dK` are scaled by `Dh^-0.5` at the end; all three are written in the input dtype.
//! This file holds the key kernel; the plans of all three tensor-core kernels are in `mma_plan`.

use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;
use std::sync::atomic::Ordering;

use crate::attention::TENSOR_CORE_BACKWARD_LAUNCHES;
use crate::mma_plan::{FRAGMENT_ALIGN, TilePlan};
use crate::tiles::{
    LaunchArgs, accumulate_product, product_transposed, stage_rows, store_rows, visible,
};

/// `lse` of a row that sees no key: `exp(s − NO_LSE)` is 0 for every real score.
pub(crate) const NO_LSE: f32 = crate::attention::NO_KEY_LSE;
/// Running maximum before any key is seen (finite: no infinity or NaN on any backend).
pub(crate) const NO_MAX: f32 = -3.0e38;

/// Launches the key kernel with `plan` (from `mma_plan::plan` for `Side::Keys`): `grad_k` and
/// `grad_v` (fresh tensors of the shapes of `k` and `v`) from the inputs, the output gradient
/// and the query kernel's `stats` (`[B, H, Sq, 2]` f32: `lse`, `δ`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn launch_keys(
    plan: TilePlan,
    q: CubeTensor,
    k: CubeTensor,
    v: CubeTensor,
    mask: Option<CubeTensor>,
    grad_out: CubeTensor,
    stats: CubeTensor,
    grad_k: CubeTensor,
    grad_v: CubeTensor,
    causal: bool,
) {
    let [b, h, _, dh] = q.meta.shape().dims::<4>();
    let [_, _, sk, dv] = v.meta.shape().dims::<4>();
    let client = q.client.clone();
    let args = LaunchArgs::new(&q, mask);
    let cube_count = CubeCount::Static(sk.div_ceil(plan.block_rows()) as u32, (b * h) as u32, 1);
    TENSOR_CORE_BACKWARD_LAUNCHES.fetch_add(1, Ordering::Relaxed);
    // SAFETY: every global access is guarded by the row/key bounds the kernel computes from the
    // tensors' own shapes (`stats` and the gradients are fresh contiguous tensors of the shapes
    // indexed); shared indices stay within the declared sizes (fragments read and write whole
    // blocks inside the padded buffers).
    unsafe {
        mma_key_grad_kernel::launch_unchecked(
            &client,
            cube_count,
            CubeDim::new_2d(plan.plane_dim as u32, plan.planes as u32),
            q.into_tensor_arg(),
            k.into_tensor_arg(),
            v.into_tensor_arg(),
            args.mask.into_tensor_arg(),
            grad_out.into_tensor_arg(),
            stats.into_tensor_arg(),
            grad_k.into_tensor_arg(),
            grad_v.into_tensor_arg(),
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
            args.types,
        )
    }
}

/// The kernel (see the module documentation). `F` is the tensor float type (f16 or bf16), `M`
/// the mask storage type (any non-zero value = masked).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn mma_key_grad_kernel<F: Float, M: Numeric>(
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
    #[comptime] dh_pad: usize,
    #[comptime] dv_pad: usize,
    #[comptime] tm: usize,
    #[comptime] tn: usize,
    #[comptime] tk: usize,
    #[comptime] plane_dim: usize,
    #[comptime] planes: usize,
    #[comptime] tile_q: usize,
    #[comptime] causal: bool,
    #[comptime] has_mask: bool,
    #[define(F, M)] _dtypes: [ElemType; 2],
) {
    let threads = comptime!(plane_dim * planes);
    let block_keys = comptime!(planes * tm);
    let unit = UNIT_POS as usize;
    let row0 = UNIT_POS_Y as usize * tm;
    let heads = q.shape(1);
    let sq = q.shape(2);
    let sk = k.shape(2);
    let bh = CUBE_POS_Y as usize;
    let b = bh / heads;
    let h = bh % heads;
    let block_start = CUBE_POS_X as usize * block_keys;

    let mut k_s = Shared::<[F]>::new_aligned_slice(comptime!(block_keys * dh_pad), FRAGMENT_ALIGN);
    let mut v_s = Shared::<[F]>::new_aligned_slice(comptime!(block_keys * dv_pad), FRAGMENT_ALIGN);
    let mut q_s = Shared::<[F]>::new_aligned_slice(comptime!(tile_q * dh_pad), FRAGMENT_ALIGN);
    let mut go_s = Shared::<[F]>::new_aligned_slice(comptime!(tile_q * dv_pad), FRAGMENT_ALIGN);
    let mut lse_s = Shared::<[f32]>::new_slice(tile_q);
    let mut delta_s = Shared::<[f32]>::new_slice(tile_q);
    // Sᵀ, then dPᵀ.
    let mut t_s =
        Shared::<[f32]>::new_aligned_slice(comptime!(block_keys * tile_q), FRAGMENT_ALIGN);
    let mut p_s = Shared::<[F]>::new_aligned_slice(comptime!(block_keys * tile_q), FRAGMENT_ALIGN);
    let mut ds_s = Shared::<[F]>::new_aligned_slice(comptime!(block_keys * tile_q), FRAGMENT_ALIGN);
    let mut dk_s =
        Shared::<[f32]>::new_aligned_slice(comptime!(block_keys * dh_pad), FRAGMENT_ALIGN);
    let mut dv_s =
        Shared::<[f32]>::new_aligned_slice(comptime!(block_keys * dv_pad), FRAGMENT_ALIGN);

    let k_base = b * k.stride(0) + h * k.stride(1);
    let v_base = b * v.stride(0) + h * v.stride(1);
    stage_rows::<F>(
        k,
        k_base,
        block_start,
        sk,
        &mut k_s,
        head_dim,
        dh_pad,
        block_keys,
        unit,
        threads,
    );
    stage_rows::<F>(
        v,
        v_base,
        block_start,
        sk,
        &mut v_s,
        val_dim,
        dv_pad,
        block_keys,
        unit,
        threads,
    );
    let mut i = unit;
    while i < comptime!(block_keys * dh_pad) {
        dk_s[i] = 0.0f32;
        i += threads;
    }
    let mut i = unit;
    while i < comptime!(block_keys * dv_pad) {
        dv_s[i] = 0.0f32;
        i += threads;
    }

    // Causal: query i sees key j when i ≥ j + Sq − Sk; start at the first query that sees this
    // cube's first key.
    let mut q_start = 0usize;
    if causal && block_start + sq > sk {
        q_start = min(block_start + sq - sk, sq);
    }
    let q_base = b * q.stride(0) + h * q.stride(1);
    let go_base = b * grad_out.stride(0) + h * grad_out.stride(1);
    let mask_head = b * mask.stride(0) + h * mask.stride(1);

    let mut tile_start = q_start;
    while tile_start < sq {
        stage_rows::<F>(
            q, q_base, tile_start, sq, &mut q_s, head_dim, dh_pad, tile_q, unit, threads,
        );
        stage_rows::<F>(
            grad_out, go_base, tile_start, sq, &mut go_s, val_dim, dv_pad, tile_q, unit, threads,
        );
        let mut i = unit;
        while i < tile_q {
            let row = tile_start + i;
            let mut lse = f32::new(NO_LSE);
            let mut delta = 0.0f32;
            if row < sq {
                let at = (bh * sq + row) * 2;
                lse = stats[at];
                delta = stats[at + 1];
            }
            lse_s[i] = lse;
            delta_s[i] = delta;
            i += threads;
        }
        sync_cube();

        // Sᵀ = K·Qᵀ for this plane's keys.
        #[unroll]
        for n in 0..comptime!(tile_q / tn) {
            product_transposed::<F>(
                &k_s,
                row0 * dh_pad,
                &q_s,
                n * tn * dh_pad,
                &mut t_s,
                row0 * tile_q + n * tn,
                dh_pad,
                tile_q,
                tm,
                tn,
                tk,
            );
        }
        sync_cube();
        // Pᵀ where the pair is visible, 0 elsewhere.
        let mut i = unit;
        while i < comptime!(block_keys * tile_q) {
            let key = block_start + i / tile_q;
            let c = i % tile_q;
            let row = tile_start + c;
            let mask_row = mask_head + row * mask.stride(2);
            let mut p = 0.0f32;
            if visible::<M>(row, key, sq, sk, mask, mask_row, causal, has_mask) {
                p = f32::exp(t_s[i] * scale - lse_s[c]);
            }
            p_s[i] = F::cast_from(p);
            i += threads;
        }
        sync_cube();
        // dPᵀ = V·dOᵀ for this plane's keys.
        #[unroll]
        for n in 0..comptime!(tile_q / tn) {
            product_transposed::<F>(
                &v_s,
                row0 * dv_pad,
                &go_s,
                n * tn * dv_pad,
                &mut t_s,
                row0 * tile_q + n * tn,
                dv_pad,
                tile_q,
                tm,
                tn,
                tk,
            );
        }
        sync_cube();
        // dSᵀ = Pᵀ ∘ (dPᵀ − δ).
        let mut i = unit;
        while i < comptime!(block_keys * tile_q) {
            let c = i % tile_q;
            ds_s[i] = F::cast_from(f32::cast_from(p_s[i]) * (t_s[i] - delta_s[c]));
            i += threads;
        }
        sync_cube();
        // dV += Pᵀ·dO, dK += dSᵀ·Q for this plane's keys.
        accumulate_product::<F>(
            &p_s,
            row0 * tile_q,
            &go_s,
            &mut dv_s,
            row0 * dv_pad,
            tile_q,
            dv_pad,
            tm,
            tn,
            tk,
        );
        accumulate_product::<F>(
            &ds_s,
            row0 * tile_q,
            &q_s,
            &mut dk_s,
            row0 * dh_pad,
            tile_q,
            dh_pad,
            tm,
            tn,
            tk,
        );
        sync_cube();
        tile_start += tile_q;
    }

    let dk_base = b * grad_k.stride(0) + h * grad_k.stride(1);
    store_rows::<F>(
        &dk_s,
        grad_k,
        dk_base,
        block_start,
        sk,
        scale,
        head_dim,
        dh_pad,
        block_keys,
        unit,
        threads,
    );
    let dv_base = b * grad_v.stride(0) + h * grad_v.stride(1);
    store_rows::<F>(
        &dv_s,
        grad_v,
        dv_base,
        block_start,
        sk,
        1.0f32,
        val_dim,
        dv_pad,
        block_keys,
        unit,
        threads,
    );
}
