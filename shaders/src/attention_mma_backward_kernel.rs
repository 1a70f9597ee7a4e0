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
//! This file holds the plans of both kernels and the key kernel.

use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;
use std::sync::atomic::Ordering;

use crate::attention::TENSOR_CORE_BACKWARD_LAUNCHES;
use crate::attention_mma_kernel::{gcd, mma_device};
use crate::tiles::{
    LaunchArgs, accumulate_product, product_transposed, stage_rows, store_rows, visible,
};

/// Shared memory the kernel allows itself, at most (CUDA's static shared-memory limit).
const SHARED_BUDGET: usize = 48 * 1024;
/// Alignment of the shared buffers MMA fragments load from and store to (`wmma` needs 256 bits).
pub(crate) const FRAGMENT_ALIGN: usize = 32;
/// `lse` of a row that sees no key: `exp(s − NO_LSE)` is 0 for every real score.
pub(crate) const NO_LSE: f32 = 3.0e38;
/// Running maximum before any key is seen (finite: no infinity or NaN on any backend).
pub(crate) const NO_MAX: f32 = -3.0e38;

/// Which of the two backward kernels a plan sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// The key kernel: a plane owns keys, tiles are queries.
    Keys,
    /// The query kernel: a plane owns queries, tiles are keys.
    Queries,
}

/// Sizes of one launch: the MMA shape, the cube's planes and tile, the padded head widths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TilePlan {
    /// MMA rows (rows a plane owns: keys or queries).
    pub(crate) tm: usize,
    /// MMA columns.
    pub(crate) tn: usize,
    /// MMA depth.
    pub(crate) tk: usize,
    /// Threads a plane runs on this device.
    pub(crate) plane_dim: usize,
    /// Planes a cube runs.
    pub(crate) planes: usize,
    /// Rows of the other side a tile (a multiple of `tn` and `tk`).
    pub(crate) tile: usize,
    /// `Dh` rounded up to a multiple of `tn` and `tk` (it is a product's depth and width).
    pub(crate) dh_pad: usize,
    /// `Dv` rounded up likewise.
    pub(crate) dv_pad: usize,
}

impl TilePlan {
    /// Shared memory one launch of `side`'s kernel declares, in bytes (`half` = bytes of the
    /// input dtype).
    fn shared_bytes(&self, side: Side, half: usize) -> usize {
        let rows = self.block_rows();
        let width = self.dh_pad + self.dv_pad;
        let staged = half * (rows + self.tile) * width;
        match side {
            // Sᵀ/dPᵀ (f32), Pᵀ and dSᵀ (half); dK, dV (f32); lse, δ of the tile.
            Side::Keys => {
                staged + (4 + 2 * half) * rows * self.tile + 4 * rows * width + 8 * self.tile
            }
            // S and dP (f32), dS (half); dQ (f32); four statistics a row.
            Side::Queries => {
                staged + (8 + half) * rows * self.tile + 4 * rows * self.dh_pad + 16 * rows
            }
        }
    }

    /// Rows (keys or queries) one cube covers.
    pub(crate) fn block_rows(&self) -> usize {
        self.planes * self.tm
    }

    /// The plan of `side`'s kernel for heads `dh`/`dv` of `half_bytes`-wide elements, given the
    /// device's MMA shapes `(m, n, k)` for that type with f32 accumulation, its plane size,
    /// threads a cube and shared memory: the 16×16×16 MMA where offered, else the smallest; then
    /// the most planes and the longest tile that fit.
    #[allow(clippy::too_many_arguments)]
    fn choose(
        side: Side,
        shapes: &[(usize, usize, usize)],
        plane_dim: usize,
        max_units: usize,
        max_shared: usize,
        half_bytes: usize,
        dh: usize,
        dv: usize,
    ) -> Option<TilePlan> {
        let &(tm, tn, tk) = shapes
            .iter()
            .min_by_key(|&&(m, n, k)| ((m, n, k) != (16, 16, 16), m * n * k))?;
        let step = tn / gcd(tn, tk) * tk;
        let budget = max_shared.min(SHARED_BUDGET);
        [(4, 2), (4, 1), (2, 2), (2, 1), (1, 2), (1, 1)]
            .into_iter()
            .map(|(planes, tiles)| TilePlan {
                tm,
                tn,
                tk,
                plane_dim,
                planes,
                tile: tiles * step,
                dh_pad: dh.div_ceil(step) * step,
                dv_pad: dv.div_ceil(step) * step,
            })
            .find(|p| {
                p.shared_bytes(side, half_bytes) <= budget && p.planes * p.plane_dim <= max_units
            })
    }
}

/// The launch plan of `side`'s kernel for `q` (`[B, H, Sq, Dh]`) with values of head size `dv`,
/// or `None` where it does not run (the same conditions as the forward's tensor-core kernel:
/// switch, dtype, the device's MMA and plane size, shared memory).
pub(crate) fn plan(side: Side, q: &CubeTensor, dv: usize) -> Option<TilePlan> {
    let dev = mma_device(q)?;
    let [b, h, _, dh] = q.meta.shape().dims::<4>();
    let plan = TilePlan::choose(
        side,
        &dev.shapes,
        dev.plane_dim,
        dev.max_units,
        dev.max_shared,
        q.dtype.size(),
        dh,
        dv,
    )?;
    let max_y = q.client.properties().hardware.max_cube_count.1 as usize;
    (b * h <= max_y).then_some(plan)
}

/// Launches the key kernel with `plan` (from [`plan`] for [`Side::Keys`]): `grad_k` and `grad_v`
/// (fresh tensors of the shapes of `k` and `v`) from the inputs, the output gradient and the
/// query kernel's `stats` (`[B, H, Sq, 2]` f32: `lse`, `δ`).
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

#[cfg(test)]
mod tests {
    use super::{Side, TilePlan};

    #[test]
    fn plans_fit_the_shared_memory_of_cuda_and_lavapipe() {
        let cuda = [(16, 16, 16), (32, 8, 16), (8, 32, 16)];
        let choose = |side, shapes: &[(usize, usize, usize)], plane, shared, dh, dv| {
            TilePlan::choose(side, shapes, plane, 1024, shared, 2, dh, dv).expect("a plan")
        };
        let p = choose(Side::Keys, &cuda, 32, 49152, 96, 96);
        assert_eq!((p.tm, p.planes, p.tile, p.block_rows()), (16, 2, 16, 32));
        assert!(p.shared_bytes(Side::Keys, 2) <= 49152);
        let p = choose(Side::Queries, &cuda, 32, 49152, 96, 96);
        assert_eq!((p.tm, p.planes, p.tile, p.block_rows()), (16, 2, 32, 32));
        assert!(p.shared_bytes(Side::Queries, 2) <= 49152);
        let p = choose(Side::Keys, &cuda, 32, 49152, 72, 40);
        assert_eq!((p.dh_pad, p.dv_pad), (80, 48));
        let p = choose(Side::Keys, &[(8, 8, 8)], 8, 32768, 96, 96);
        assert_eq!((p.tm, p.planes, p.tile), (8, 2, 16));
        let p = choose(Side::Queries, &[(8, 8, 8)], 8, 32768, 96, 96);
        assert_eq!((p.tm, p.planes, p.tile), (8, 4, 8));
        for side in [Side::Keys, Side::Queries] {
            let p = choose(side, &[(8, 8, 8)], 8, 32768, 96, 96);
            assert!(p.shared_bytes(side, 2) <= 32768);
            assert_eq!(
                TilePlan::choose(side, &[], 32, 1024, 49152, 2, 96, 96),
                None
            );
            assert_eq!(
                TilePlan::choose(side, &cuda, 32, 1024, 4096, 2, 128, 128),
                None
            );
        }
    }
}
