//! Tile helpers shared by the CubeCL attention kernels (forward and backward): which keys a block
//! of causal queries can see, staging rows of a head into shared memory (transposed as f32 for
//! the scalar kernels, row by row in the input dtype for the tensor-core kernels), the dot
//! product of a register row with one staged column, the arguments every launch shares, and the
//! two MMA products of the tensor-core kernels (`a·bᵀ` into a block, `acc += a·b`).

use burn::backend::cubecl::dtype_to_storage_type;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

/// What every attention kernel launch takes besides its tensors: the score scale `Dh^-0.5`, the
/// mask argument (without a mask the kernels never read it, and `q` stands in for it), whether
/// there is a mask, and the kernels' two defined types `[float of q, mask storage]`.
pub(crate) struct LaunchArgs {
    /// `1 / sqrt(Dh)`.
    pub scale: f32,
    /// The mask, or `q` standing in for it.
    pub mask: CubeTensor,
    /// Whether `mask` is a real mask.
    pub has_mask: bool,
    /// `[float type of q, storage type of the mask]`.
    pub types: [ElemType; 2],
}

impl LaunchArgs {
    /// The arguments for `q` (`[B, H, Sq, Dh]`) and an optional mask.
    pub(crate) fn new(q: &CubeTensor, mask: Option<CubeTensor>) -> LaunchArgs {
        let dh = q.meta.shape().dims::<4>()[3];
        let float_type = dtype_to_storage_type(q.dtype);
        let has_mask = mask.is_some();
        let mask = mask.unwrap_or_else(|| q.clone());
        LaunchArgs {
            scale: 1.0 / (dh as f32).sqrt(),
            types: [float_type, dtype_to_storage_type(mask.dtype)],
            mask,
            has_mask,
        }
    }
}

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

/// Whether query `row` sees `key`: within bounds, causally visible (bottom-right aligned) and
/// not masked (`mask_row` is the offset of the row's mask entries; any non-zero = masked).
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn visible<M: Numeric>(
    row: usize,
    key: usize,
    sq: usize,
    sk: usize,
    mask: &Tensor<M>,
    mask_row: usize,
    #[comptime] causal: bool,
    #[comptime] has_mask: bool,
) -> bool {
    let mut seen = row < sq && key < sk;
    if causal {
        seen = seen && key + sq <= row + sk;
    }
    if has_mask && seen {
        seen = mask[mask_row + key * mask.stride(3)] == M::from_int(0);
    }
    seen
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

/// `acc = a · bᵀ` for one plane: `a` is `tm` rows of width `depth` at `a_at` (row-major), `b` is
/// `tn` rows of the same width at `b_at` (read column-major, i.e. transposed); the result goes to
/// `out` at `out_at` with row stride `out_stride`.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn product_transposed<F: Float>(
    a: &Shared<[F]>,
    a_at: usize,
    b: &Shared<[F]>,
    b_at: usize,
    out: &mut Shared<[f32]>,
    out_at: usize,
    #[comptime] depth: usize,
    #[comptime] out_stride: usize,
    #[comptime] tm: usize,
    #[comptime] tn: usize,
    #[comptime] tk: usize,
) {
    let acc = cmma::Matrix::<f32>::from_value(
        cmma::MatrixIdent::Accumulator,
        tm,
        tn,
        tk,
        cmma::MatrixLayout::Undefined,
        0.0f32,
    );
    #[unroll]
    for d in 0..comptime!(depth / tk) {
        let am = cmma::Matrix::<F>::from_slice(
            cmma::MatrixIdent::A,
            tm,
            tn,
            tk,
            cmma::MatrixLayout::RowMajor,
            &a[a_at + d * tk..a.len()],
            depth as u32,
        );
        let bm = cmma::Matrix::<F>::from_slice(
            cmma::MatrixIdent::B,
            tm,
            tn,
            tk,
            cmma::MatrixLayout::ColMajor,
            &b[b_at + d * tk..b.len()],
            depth as u32,
        );
        cmma::execute(&am, &bm, &acc, &acc);
    }
    let end = out.len();
    cmma::store(
        &mut out[out_at..end],
        &acc,
        out_stride as u32,
        cmma::MatrixLayout::RowMajor,
    );
}

/// `acc[rows, :] += a · b` for one plane: `a` is `tm` rows of width `inner` at `a_at`
/// (row-major), `b` is `inner` rows of width `width` (row-major); `acc` holds the plane's rows of
/// width `width` in f32, read into MMA accumulators and written back.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn accumulate_product<F: Float>(
    a: &Shared<[F]>,
    a_at: usize,
    b: &Shared<[F]>,
    acc: &mut Shared<[f32]>,
    acc_at: usize,
    #[comptime] inner: usize,
    #[comptime] width: usize,
    #[comptime] tm: usize,
    #[comptime] tn: usize,
    #[comptime] tk: usize,
) {
    #[unroll]
    for c in 0..comptime!(width / tn) {
        let out = cmma::Matrix::<f32>::from_slice(
            cmma::MatrixIdent::Accumulator,
            tm,
            tn,
            tk,
            cmma::MatrixLayout::RowMajor,
            &acc[acc_at + c * tn..acc.len()],
            width as u32,
        );
        #[unroll]
        for j in 0..comptime!(inner / tk) {
            let am = cmma::Matrix::<F>::from_slice(
                cmma::MatrixIdent::A,
                tm,
                tn,
                tk,
                cmma::MatrixLayout::RowMajor,
                &a[a_at + j * tk..a.len()],
                inner as u32,
            );
            let bm = cmma::Matrix::<F>::from_slice(
                cmma::MatrixIdent::B,
                tm,
                tn,
                tk,
                cmma::MatrixLayout::RowMajor,
                &b[j * tk * width + c * tn..b.len()],
                width as u32,
            );
            cmma::execute(&am, &bm, &out, &out);
        }
        let end = acc.len();
        cmma::store(
            &mut acc[acc_at + c * tn..end],
            &out,
            width as u32,
            cmma::MatrixLayout::RowMajor,
        );
    }
}

/// Writes rows `start..start + rows` (those before `end`) of one head of `dst` (`width` values a
/// row, the head starting at `base`) from `src[r · stride + d] · factor`, in `dst`'s dtype.
/// Thread `unit` of `threads` writes every `threads`-th element.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn store_rows<F: Float>(
    src: &Shared<[f32]>,
    dst: &mut Tensor<F>,
    base: usize,
    start: usize,
    end: usize,
    factor: f32,
    #[comptime] width: usize,
    #[comptime] stride: usize,
    #[comptime] rows: usize,
    unit: usize,
    #[comptime] threads: usize,
) {
    let row_step = dst.stride(2);
    let col_step = dst.stride(3);
    let mut i = unit;
    while i < comptime!(rows * width) {
        let r = i / width;
        let d = i % width;
        let row = start + r;
        if row < end {
            dst[base + row * row_step + d * col_step] = F::cast_from(src[r * stride + d] * factor);
        }
        i += threads;
    }
}
