//! Planning the tensor-core attention kernels (forward, and the backward's query and key
//! kernels): which device facts they need, which MMA shape they use, and how many planes and how
//! long a tile fit the shared memory. One rule for all three; only the shared-memory sum differs.

use burn::backend::cubecl::dtype_to_elem_type;
use burn::tensor::DType;
use burn_cubecl::tensor::CubeTensor;
use cubecl::ir::{ElemType, FloatKind};

use crate::attention::tensor_cores_enabled;

/// Shared memory the kernels allow themselves, at most (CUDA's static shared-memory limit).
const SHARED_BUDGET: usize = 48 * 1024;
/// Alignment of the shared buffers MMA fragments load from and store to (`wmma` needs 256 bits).
pub(crate) const FRAGMENT_ALIGN: usize = 32;

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

/// Which tensor-core kernel a plan sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// The forward: a plane owns queries, tiles are keys.
    Forward,
    /// The backward's key kernel: a plane owns keys, tiles are queries.
    Keys,
    /// The backward's query kernel: a plane owns queries, tiles are keys.
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
            // Q (K, V staged per tile); S (f32), P (half); O (f32); maximum and normaliser.
            Side::Forward => {
                half * (rows * self.dh_pad + self.tile * width)
                    + (4 + half) * rows * self.tile
                    + 4 * rows * (self.dv_pad + 2)
            }
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
/// or `None` where it does not run ([`mma_device`]; no MMA for the dtype, nothing fits the shared
/// memory, or too many batch × head cubes).
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

/// Greatest common divisor (of MMA sizes, all positive).
fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::{Side, TilePlan};

    fn choose(
        side: Side,
        shapes: &[(usize, usize, usize)],
        plane: usize,
        shared: usize,
        dh: usize,
        dv: usize,
    ) -> TilePlan {
        TilePlan::choose(side, shapes, plane, 1024, shared, 2, dh, dv).expect("a plan")
    }

    #[test]
    fn plans_fit_the_shared_memory_of_cuda_and_lavapipe() {
        // CUDA (warps of 32, 48 KiB), Phi-3's heads (96).
        let cuda = [(16, 16, 16), (32, 8, 16), (8, 32, 16)];
        let p = choose(Side::Forward, &cuda, 32, 49152, 96, 96);
        assert_eq!((p.tm, p.tn, p.tk, p.planes, p.tile), (16, 16, 16, 2, 32));
        assert_eq!((p.dh_pad, p.dv_pad, p.block_rows()), (96, 96, 32));
        assert_eq!(p.shared_bytes(Side::Forward, 2), 37120);
        let p = choose(Side::Queries, &cuda, 32, 49152, 96, 96);
        assert_eq!((p.planes, p.tile, p.block_rows()), (2, 32, 32));
        assert_eq!(p.shared_bytes(Side::Queries, 2), 47616);
        let p = choose(Side::Keys, &cuda, 32, 49152, 96, 96);
        assert_eq!((p.planes, p.tile, p.block_rows()), (2, 16, 32));
        assert_eq!(p.shared_bytes(Side::Keys, 2), 47232);
        // SigLIP's 72 and an odd value head are padded to the MMA step.
        let p = choose(Side::Keys, &cuda, 32, 49152, 72, 40);
        assert_eq!((p.dh_pad, p.dv_pad), (80, 48));
        // lavapipe (subgroups of 8, 32 KiB, 8×8×8 only).
        let lavapipe = [(8, 8, 8)];
        let p = choose(Side::Forward, &lavapipe, 8, 32768, 96, 96);
        assert_eq!((p.tm, p.planes, p.tile), (8, 4, 16));
        assert_eq!(p.shared_bytes(Side::Forward, 2), 27904);
        let p = choose(Side::Queries, &lavapipe, 8, 32768, 96, 96);
        assert_eq!((p.planes, p.tile), (4, 8));
        let p = choose(Side::Keys, &lavapipe, 8, 32768, 96, 96);
        assert_eq!((p.planes, p.tile), (2, 16));
        // Unequal MMA sides: tiles and padded heads are multiples of both n and k.
        let p = choose(Side::Forward, &[(16, 8, 16)], 32, 49152, 64, 40);
        assert_eq!((p.tile % 16, p.dv_pad), (0, 48));
        for side in [Side::Forward, Side::Queries, Side::Keys] {
            for (shapes, plane, shared) in [(&cuda[..], 32, 49152), (&lavapipe[..], 8, 32768)] {
                let p = choose(side, shapes, plane, shared, 96, 96);
                assert!(p.shared_bytes(side, 2) <= shared, "{side:?}");
            }
            // Nothing fits, no MMA, or too few threads a cube: no plan.
            assert_eq!(
                TilePlan::choose(side, &cuda, 32, 1024, 4096, 2, 256, 256),
                None
            );
            assert_eq!(
                TilePlan::choose(side, &[], 32, 1024, 49152, 2, 96, 96),
                None
            );
            assert_eq!(
                TilePlan::choose(side, &cuda, 32, 16, 49152, 2, 96, 96),
                None
            );
        }
    }
}
