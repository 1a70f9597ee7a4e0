//! Tile helpers shared by the CubeCL attention kernels (forward and backward): which keys a block
//! of causal queries can see, staging rows of a head into shared memory (transposed as f32 for
//! the scalar kernels, row by row in the input dtype for the tensor-core kernel), and the dot
//! product of a register row with one staged column.

use cubecl::prelude::*;

/// End of the keys a block of query rows `block_start..block_start + block_rows` can see: all
/// `sk`, or with `causal` (bottom-right aligned) up to what the block's last row sees.
#[cube]
pub(crate) fn visible_key_end(
    block_start: usize,
    block_rows: usize,
    sq: usize,
    sk: usize,
    #[comptime] causal: bool,
) -> usize {
    let mut end = sk;
    if causal {
        let last = min(block_start + block_rows, sq);
        let reach = last + sk;
        end = 0;
        if reach > sq {
            end = min(reach - sq, sk);
        }
    }
    end
}

/// Stages keys `tile_start..tile_start + tile_keys` of one head of `src` (`width` values a key,
/// the head starting at `base`) transposed into `tile[d · stride + j]`, as f32; keys at or past
/// `end` become zeros. Thread `unit` of `threads` copies every `threads`-th element.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn stage_transposed<F: Float>(
    src: &Tensor<F>,
    base: usize,
    tile_start: usize,
    end: usize,
    tile: &mut Shared<[f32]>,
    #[comptime] width: usize,
    #[comptime] tile_keys: usize,
    #[comptime] stride: usize,
    unit: usize,
    #[comptime] threads: usize,
) {
    let mut i = unit;
    while i < comptime!(tile_keys * width) {
        let j = i / width;
        let d = i % width;
        let key = tile_start + j;
        let mut x = 0.0f32;
        if key < end {
            x = f32::cast_from(src[base + key * src.stride(2) + d * src.stride(3)]);
        }
        tile[d * stride + j] = x;
        i += threads;
    }
}

/// `Σ_d row[d] · tile[d · stride + col]`: the dot product of a row held in registers with column
/// `col` of a tile staged by [`stage_transposed`].
#[cube]
pub(crate) fn dot_column(
    row: &Array<f32>,
    tile: &Shared<[f32]>,
    col: usize,
    #[comptime] stride: usize,
    #[comptime] dim: usize,
) -> f32 {
    let mut sum = 0.0f32;
    #[unroll]
    for d in 0..dim {
        sum += row[d] * tile[d * stride + col];
    }
    sum
}

/// Stages rows `start..start + rows` of one head of `src` (`width` values a row, the head
/// starting at `base`) into `tile[r · stride + d]` in the tensor's own dtype, for MMA fragments:
/// columns `width..stride` and rows at or past `end` become zeros. Thread `unit` of `threads`
/// copies every `threads`-th element.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn stage_rows<F: Float>(
    src: &Tensor<F>,
    base: usize,
    start: usize,
    end: usize,
    tile: &mut Shared<[F]>,
    #[comptime] width: usize,
    #[comptime] stride: usize,
    #[comptime] rows: usize,
    unit: usize,
    #[comptime] threads: usize,
) {
    let mut i = unit;
    while i < comptime!(rows * stride) {
        let r = i / stride;
        let d = i % stride;
        let row = start + r;
        let mut x = F::from_int(0);
        if row < end && d < width {
            x = src[base + row * src.stride(2) + d * src.stride(3)];
        }
        tile[i] = x;
        i += threads;
    }
}
