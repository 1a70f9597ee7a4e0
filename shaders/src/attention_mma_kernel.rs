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
//! visible key is written as zeros.

use burn::backend::cubecl::dtype_to_elem_type;
use burn::tensor::DType;
use burn_cubecl::tensor::CubeTensor;
use cubecl::ir::{ElemType, FloatKind};
use cubecl::prelude::*;
use std::sync::atomic::Ordering;

use crate::attention::{TENSOR_CORE_LAUNCHES, tensor_cores_enabled};
use crate::tiles::{
    LaunchArgs, accumulate_product, product_transposed, stage_rows, visible, visible_key_end,
};

/// Shared memory the kernel allows itself, at most (CUDA's static shared-memory limit).
const SHARED_BUDGET: usize = 48 * 1024;
/// Alignment of the shared buffers MMA fragments load from and store to (`wmma` needs 256 bits).
const FRAGMENT_ALIGN: usize = 32;
/// Running maximum before any key is seen, and the score of a masked key (finite: no infinity or
/// NaN appears on any backend).
const NO_MAX: f32 = -3.0e38;
/// Scores above this are real; [`NO_MAX`] marks masked ones.
const MASKED_BELOW: f32 = -1.0e38;

/// Sizes of one launch: the MMA shape, the cube's planes and key tile, the padded head widths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MmaPlan {
    /// MMA rows (query rows a plane owns).
    tm: usize,
    /// MMA columns (keys of one score block; value columns of one output block).
    tn: usize,
    /// MMA depth (head dimensions of one score step; keys of one output step).
    tk: usize,
    /// Threads a plane runs on this device.
    plane_dim: usize,
    /// Planes a cube runs.
    planes: usize,
    /// Keys a tile (a multiple of `tn` and `tk`).
    tile_keys: usize,
    /// `Dh` rounded up to a multiple of `tk`.
    dh_pad: usize,
    /// `Dv` rounded up to a multiple of `tn`.
    dv_pad: usize,
}

impl MmaPlan {
    /// Shared memory one launch declares, in bytes (`half` = bytes of the input dtype).
    fn shared_bytes(&self, half: usize) -> usize {
        let rows = self.planes * self.tm;
        half * (rows * self.dh_pad + self.tile_keys * (self.dh_pad + self.dv_pad))
            + (4 + half) * rows * self.tile_keys
            + 4 * rows * (self.dv_pad + 2)
    }

    /// Query rows one cube covers.
    pub(crate) fn block_rows(&self) -> usize {
        self.planes * self.tm
    }
}

/// What the tensor-core kernels' plans are chosen from: the device's MMA shapes `(m, n, k)` for
/// the inputs' dtype with f32 accumulation, its plane size, threads a cube and shared memory.
pub(crate) struct MmaDevice {
    /// MMA shapes for the dtype with f32 accumulation.
    pub shapes: Vec<(usize, usize, usize)>,
    /// Threads a plane (fixed on this device).
    pub plane_dim: usize,
    /// Threads a cube, at most.
    pub max_units: usize,
    /// Shared memory a cube, in bytes.
    pub max_shared: usize,
}

/// The device facts for `q`'s tensor-core kernels, or `None` where they do not run: the switch
/// is off (`set_tensor_cores`, `BLIP3_ATTENTION_TENSOR_CORES`), the dtype is not f16/bf16, or the
/// device's plane size is not fixed.
pub(crate) fn mma_device(q: &CubeTensor) -> Option<MmaDevice> {
    if !tensor_cores_enabled() || !matches!(q.dtype, DType::F16 | DType::BF16) {
        return None;
    }
    let props = q.client.properties();
    let hw = &props.hardware;
    if hw.plane_size_min != hw.plane_size_max || hw.plane_size_max == 0 {
        return None;
    }
    let half = dtype_to_elem_type(q.dtype);
    let f32_type = ElemType::Float(FloatKind::F32);
    let shapes = props
        .features
        .matmul
        .cmma
        .iter()
        .filter(|c| c.a_type == half && c.b_type == half && c.cd_type == f32_type)
        .map(|c| (c.m as usize, c.n as usize, c.k as usize))
        .collect();
    Some(MmaDevice {
        shapes,
        plane_dim: hw.plane_size_max as usize,
        max_units: hw.max_units_per_cube as usize,
        max_shared: hw.max_shared_memory_size,
    })
}

/// The launch plan for `q` (`[B, H, Sq, Dh]`) against values of head size `dv`, or `None` where
/// the kernel does not run ([`mma_device`]; no MMA for the dtype, or nothing fits the shared
/// memory).
pub(crate) fn plan(q: &CubeTensor, dv: usize) -> Option<MmaPlan> {
    let dev = mma_device(q)?;
    let dh = q.meta.shape().dims::<4>()[3];
    MmaPlan::choose(
        &dev.shapes,
        dev.plane_dim,
        dev.max_units,
        dev.max_shared,
        q.dtype.size(),
        dh,
        dv,
    )
}

impl MmaPlan {
    /// The plan for heads `dh`/`dv` of `half_bytes`-wide elements, given the device's MMA shapes
    /// `(m, n, k)` for that type with f32 accumulation, its plane size, threads a cube and shared
    /// memory: the 16×16×16 MMA where offered (every NVIDIA tensor core has it), else the
    /// smallest; then the most planes and the longest key tile that fit.
    fn choose(
        shapes: &[(usize, usize, usize)],
        plane_dim: usize,
        max_units: usize,
        max_shared: usize,
        half_bytes: usize,
        dh: usize,
        dv: usize,
    ) -> Option<MmaPlan> {
        let &(tm, tn, tk) = shapes
            .iter()
            .min_by_key(|&&(m, n, k)| ((m, n, k) != (16, 16, 16), m * n * k))?;
        // Keys a tile: a multiple of both `tn` (score blocks) and `tk` (output steps).
        let step = tn / gcd(tn, tk) * tk;
        let budget = max_shared.min(SHARED_BUDGET);
        [(4, 2), (4, 1), (2, 2), (2, 1), (1, 1)]
            .into_iter()
            .map(|(planes, tiles)| MmaPlan {
                tm,
                tn,
                tk,
                plane_dim,
                planes,
                tile_keys: tiles * step,
                dh_pad: dh.div_ceil(tk) * tk,
                dv_pad: dv.div_ceil(tn) * tn,
            })
            .find(|p| p.shared_bytes(half_bytes) <= budget && p.planes * p.plane_dim <= max_units)
    }
}

/// Greatest common divisor (of MMA sizes, all positive).
pub(crate) fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Launches the kernel with `plan` (from [`plan`]) into `out` (`[B, H, Sq, Dv]`, dtype of `q`).
/// `mask` is `[B, H, Sq, Sk]` (possibly a stride-0 view), true = masked out.
#[allow(clippy::too_many_arguments)]
pub(crate) fn launch(
    plan: MmaPlan,
    q: CubeTensor,
    k: CubeTensor,
    v: CubeTensor,
    mask: Option<CubeTensor>,
    out: CubeTensor,
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
            plan.tile_keys,
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
}

#[cfg(test)]
mod tests {
    use super::MmaPlan;

    #[test]
    fn plans_fit_the_shared_memory_of_cuda_and_lavapipe() {
        // CUDA (warps of 32, 48 KiB): Phi-3's heads take 2 planes of 16 rows and 32-key tiles.
        let cuda = [(16, 16, 16), (32, 8, 16), (8, 32, 16)];
        let p = MmaPlan::choose(&cuda, 32, 1024, 49152, 2, 96, 96).expect("a plan");
        assert_eq!(
            (p.tm, p.tn, p.tk, p.planes, p.tile_keys),
            (16, 16, 16, 2, 32)
        );
        assert_eq!((p.dh_pad, p.dv_pad, p.block_rows()), (96, 96, 32));
        assert_eq!(p.shared_bytes(2), 37120);
        // SigLIP's 72 is padded to the MMA depth.
        let p = MmaPlan::choose(&cuda, 32, 1024, 49152, 2, 72, 72).expect("a plan");
        assert_eq!((p.dh_pad, p.dv_pad), (80, 80));
        // lavapipe (subgroups of 8, 32 KiB, 8×8×8 only): 4 planes of 8 rows, 16-key tiles.
        let p = MmaPlan::choose(&[(8, 8, 8)], 8, 1024, 32768, 2, 96, 96).expect("a plan");
        assert_eq!(
            (p.tm, p.planes, p.tile_keys, p.block_rows()),
            (8, 4, 16, 32)
        );
        assert!(p.shared_bytes(2) <= 32768);
        // Unequal MMA sides: key tiles are multiples of both n and k.
        let p = MmaPlan::choose(&[(16, 8, 16)], 32, 1024, 49152, 2, 64, 40).expect("a plan");
        assert_eq!(p.tile_keys % 16, 0);
        assert_eq!(p.dv_pad, 40);
        // Nothing fits, no MMA, or too few threads a cube: no plan.
        assert_eq!(MmaPlan::choose(&cuda, 32, 1024, 4096, 2, 256, 256), None);
        assert_eq!(MmaPlan::choose(&[], 32, 1024, 49152, 2, 96, 96), None);
        assert_eq!(MmaPlan::choose(&cuda, 32, 16, 49152, 2, 96, 96), None);
    }
}
