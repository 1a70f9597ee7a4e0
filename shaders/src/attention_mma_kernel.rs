//! The tensor-core attention kernel for the CubeCL backend: the block kernel's online softmax
//! with both products, `S = Q·Kᵀ` and `O += P·V`, on the device's cooperative-matrix (MMA)
//! instructions (tensor cores on NVIDIA through CUDA's `wmma`, `VK_KHR_cooperative_matrix` on
//! Vulkan through SPIR-V). It runs f16 and bf16 inputs where the device offers an MMA of that
//! type with f32 accumulation; f32 inputs keep the scalar kernels (`attention_kernel`), as
//! PyTorch keeps f32 attention off the half-precision tensor cores.
//!
//! A cube is `planes` planes (subgroups, warps); plane `p` owns query rows `16·p..16·p + 16` of
//! the cube's block (for an MMA of `tm` rows). Per key tile:
//!
//! 1. all threads stage the tile's K and V rows (in the input dtype, head dimensions zero-padded
//!    to the MMA's multiple);
//! 2. each plane computes its rows' scores with MMAs into f32 and stores them to shared memory;
//! 3. one thread per row applies the scale and the mask (the masking contract of `attention`),
//!    updates the row's running maximum and normaliser, writes the probabilities `P` in the
//!    input dtype (as FlashAttention does for its second product) and rescales the row's output
//!    accumulator by `e^(m_old − m_new)`;
//! 4. each plane loads its output accumulator into MMA accumulators, adds `P·V` and stores it
//!    back.
//!
//! The output accumulator stays in shared memory as f32 (an MMA accumulator cannot be rescaled
//! row by row in place); at the end each row is divided by its normaliser, and a row without any
//! visible key is written as zeros. Each row's log-sum-exp `m + ln l` goes to `lse` (the
//! backward's saved statistics).

use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;
use std::sync::atomic::Ordering;

use crate::attention::{NO_KEY_LSE, TENSOR_CORE_LAUNCHES};
use crate::mma_plan::{FRAGMENT_ALIGN, TilePlan};
use crate::tiles::{
    LaunchArgs, accumulate_product, product_transposed, stage_rows, visible, visible_key_end,
};

/// Running maximum before any key is seen, and the score of a masked key (finite: no infinity or
/// NaN appears on any backend).
const NO_MAX: f32 = -3.0e38;
/// Scores above this are real; [`NO_MAX`] marks masked ones.
const MASKED_BELOW: f32 = -1.0e38;
/// Log-sum-exp of a row that sees no key (the public contract's value).
const NO_LSE: f32 = NO_KEY_LSE;

/// Launches the kernel with `plan` (from `mma_plan::plan` for `Side::Forward`) into `out`
/// (`[B, H, Sq, Dv]`, dtype of `q`) and `lse` (`[B, H, Sq]` f32, fresh: each row's log-sum-exp).
/// `mask` is `[B, H, Sq, Sk]` (possibly a stride-0 view), true = masked out.
#[allow(clippy::too_many_arguments)]
pub(crate) fn launch(
    plan: TilePlan,
    q: CubeTensor,
    k: CubeTensor,
    v: CubeTensor,
    mask: Option<CubeTensor>,
    out: CubeTensor,
    lse: CubeTensor,
    causal: bool,
) {
    let [b, h, sq, dh] = q.meta.shape().dims::<4>();
    let [_, _, _, dv] = v.meta.shape().dims::<4>();
    let client = q.client.clone();
    let args = LaunchArgs::new(&q, mask);
    let cube_count = CubeCount::Static(sq.div_ceil(plan.block_rows()) as u32, (b * h) as u32, 1);
    TENSOR_CORE_LAUNCHES.fetch_add(1, Ordering::Relaxed);
    // SAFETY: every global access is guarded by the row/key bounds the kernel computes from the
    // tensors' own shapes; shared indices stay within the declared sizes (fragments read and
    // write whole `tm × tn`/`tm × tk`/`tk × tn` blocks inside the padded buffers).
    unsafe {
        mma_attention_kernel::launch_unchecked(
            &client,
            cube_count,
            CubeDim::new_2d(plan.plane_dim as u32, plan.planes as u32),
            q.into_tensor_arg(),
            k.into_tensor_arg(),
            v.into_tensor_arg(),
            args.mask.into_tensor_arg(),
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
            args.types,
        )
    }
}

/// The kernel (see the module documentation). `F` is the tensor float type (f16 or bf16), `M`
/// the mask storage type (any non-zero value = masked).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn mma_attention_kernel<F: Float, M: Numeric>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    mask: &Tensor<M>,
    out: &mut Tensor<F>,
    lse: &mut Tensor<f32>,
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
    #[comptime] tile_keys: usize,
    #[comptime] causal: bool,
    #[comptime] has_mask: bool,
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
    let mut k_s = Shared::<[F]>::new_aligned_slice(comptime!(tile_keys * dh_pad), FRAGMENT_ALIGN);
    let mut v_s = Shared::<[F]>::new_aligned_slice(comptime!(tile_keys * dv_pad), FRAGMENT_ALIGN);
    let mut s_s =
        Shared::<[f32]>::new_aligned_slice(comptime!(block_rows * tile_keys), FRAGMENT_ALIGN);
    let mut p_s =
        Shared::<[F]>::new_aligned_slice(comptime!(block_rows * tile_keys), FRAGMENT_ALIGN);
    let mut o_s =
        Shared::<[f32]>::new_aligned_slice(comptime!(block_rows * dv_pad), FRAGMENT_ALIGN);
    // Per row: running maximum, normaliser.
    let mut stats = Shared::<[f32]>::new_slice(comptime!(block_rows * 2));

    let q_base = b * q.stride(0) + h * q.stride(1);
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
    let mut i = unit;
    while i < comptime!(block_rows * dv_pad) {
        o_s[i] = 0.0f32;
        i += threads;
    }
    let mut r = unit;
    while r < block_rows {
        stats[r * 2] = f32::new(NO_MAX);
        stats[r * 2 + 1] = 0.0f32;
        r += threads;
    }

    let k_base = b * k.stride(0) + h * k.stride(1);
    let v_base = b * v.stride(0) + h * v.stride(1);
    let mask_base = b * mask.stride(0) + h * mask.stride(1);
    let mut tile_start = 0usize;
    while tile_start < kv_end {
        stage_rows::<F>(
            k, k_base, tile_start, kv_end, &mut k_s, head_dim, dh_pad, tile_keys, unit, threads,
        );
        stage_rows::<F>(
            v, v_base, tile_start, kv_end, &mut v_s, val_dim, dv_pad, tile_keys, unit, threads,
        );
        sync_cube();

        // S = Q·Kᵀ for this plane's rows.
        #[unroll]
        for n in 0..comptime!(tile_keys / tn) {
            product_transposed::<F>(
                &q_s,
                row0 * dh_pad,
                &k_s,
                n * tn * dh_pad,
                &mut s_s,
                row0 * tile_keys + n * tn,
                dh_pad,
                tile_keys,
                tm,
                tn,
                tk,
            );
        }
        sync_cube();

        // Online softmax, one thread a row: probabilities in the input dtype, the output
        // accumulator rescaled to the new maximum.
        let mut r = unit;
        while r < block_rows {
            let row = block_start + r;
            let s_row = r * tile_keys;
            let mask_row = mask_base + row * mask.stride(2);
            let mut tile_max = f32::new(NO_MAX);
            for j in 0..tile_keys {
                // Keys from `kv_end` on are causally hidden from every row of the block.
                let key = tile_start + j;
                let mut score = f32::new(NO_MAX);
                if visible::<M>(row, key, sq, sk, mask, mask_row, causal, has_mask) {
                    score = s_s[s_row + j] * scale;
                }
                s_s[s_row + j] = score;
                tile_max = max(tile_max, score);
            }
            let m_old = stats[r * 2];
            let m_new = max(m_old, tile_max);
            let correction = f32::exp(m_old - m_new);
            let mut sum = 0.0f32;
            for j in 0..tile_keys {
                let score = s_s[s_row + j];
                let mut p = 0.0f32;
                if score > MASKED_BELOW {
                    p = f32::exp(score - m_new);
                }
                p_s[s_row + j] = F::cast_from(p);
                sum += p;
            }
            stats[r * 2] = m_new;
            stats[r * 2 + 1] = stats[r * 2 + 1] * correction + sum;
            for c in 0..dv_pad {
                o_s[r * dv_pad + c] *= correction;
            }
            r += threads;
        }
        sync_cube();

        // O += P·V for this plane's rows.
        accumulate_product::<F>(
            &p_s,
            row0 * tile_keys,
            &v_s,
            &mut o_s,
            row0 * dv_pad,
            tile_keys,
            dv_pad,
            tm,
            tn,
            tk,
        );
        sync_cube();
        tile_start += tile_keys;
    }

    let out_base = b * out.stride(0) + h * out.stride(1);
    let out_row = out.stride(2);
    let out_col = out.stride(3);
    let mut i = unit;
    while i < comptime!(block_rows * val_dim) {
        let r = i / val_dim;
        let c = i % val_dim;
        let row = block_start + r;
        if row < sq {
            let l = stats[r * 2 + 1];
            let mut inv = 0.0f32;
            if l > 0.0f32 {
                inv = 1.0f32 / l;
            }
            let at = out_base + row * out_row + c * out_col;
            out[at] = F::cast_from(o_s[r * dv_pad + c] * inv);
        }
        i += threads;
    }
    let mut r = unit;
    while r < block_rows {
        let row = block_start + r;
        if row < sq {
            let l = stats[r * 2 + 1];
            let mut row_lse = f32::new(NO_LSE);
            if l > 0.0f32 {
                row_lse = stats[r * 2] + l.ln();
            }
            lse[bh * sq + row] = row_lse;
        }
        r += threads;
    }
}
