//! PyTorch ↔ Burn parameter layout for checkpoint loading and export.
//!
//! Burn's `Linear` stores its weight as `[in, out]`, PyTorch's as `[out, in]`, and Burn's norms
//! name their parameters `gamma`/`beta` where PyTorch says `weight`/`bias`. burn-store's
//! `PyTorchToBurnAdapter` / `BurnToPyTorchAdapter` handle both, but transpose element by element,
//! which made up three quarters of the time of loading the 4.4B model. [`TorchLayout`] does the
//! same conversion with a cache-blocked transpose and leaves everything else to burn-store.

use burn::store::burn_pack::Tensor as PackTensor;
use burn::store::{
    BurnToPyTorchAdapter, ModuleAdapter, ModuleContext, PyTorchToBurnAdapter, bridge,
};
use burn::tensor::{DType, Shape, TensorData};

/// Which way [`TorchLayout`] converts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Loading a PyTorch checkpoint into a Burn module.
    TorchToBurn,
    /// Exporting a Burn module in PyTorch layout.
    BurnToTorch,
}

/// A `ModuleAdapter` converting between PyTorch and Burn layouts (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct TorchLayout(pub Direction);

impl ModuleAdapter for TorchLayout {
    fn adapt(&self, tensor: PackTensor, ctx: ModuleContext<'_>) -> PackTensor {
        let is_linear_weight = ctx.module_type() == Some("Struct:Linear")
            && tensor.name.rsplit('.').next() == Some("weight")
            && tensor.shape.len() == 2
            && !matches!(tensor.dtype, DType::QFloat(_));
        if is_linear_weight {
            let name = tensor.name.clone();
            let dtype = tensor.dtype;
            let shape = Shape::new([tensor.shape[1], tensor.shape[0]]);
            return bridge::map_data(tensor, name, dtype, shape, transpose_2d);
        }
        match self.0 {
            Direction::TorchToBurn => PyTorchToBurnAdapter.adapt(tensor, ctx),
            Direction::BurnToTorch => BurnToPyTorchAdapter.adapt(tensor, ctx),
        }
    }

    fn get_alternative_param_name(&self, param_name: &str, module_type: &str) -> Option<String> {
        match self.0 {
            Direction::TorchToBurn => {
                PyTorchToBurnAdapter.get_alternative_param_name(param_name, module_type)
            }
            Direction::BurnToTorch => {
                BurnToPyTorchAdapter.get_alternative_param_name(param_name, module_type)
            }
        }
    }

    fn clone_box(&self) -> Box<dyn ModuleAdapter> {
        Box::new(*self)
    }
}

/// Transposes a row-major 2-D tensor of any fixed-width dtype.
fn transpose_2d(data: TensorData) -> TensorData {
    let shape = data.shape();
    let (rows, cols) = (shape[0], shape[1]);
    let dtype = data.dtype();
    let src = data.as_bytes();
    let mut dst = vec![0u8; src.len()];
    match dtype.size() {
        1 => transpose_elems::<1>(src, &mut dst, rows, cols),
        2 => transpose_elems::<2>(src, &mut dst, rows, cols),
        4 => transpose_elems::<4>(src, &mut dst, rows, cols),
        8 => transpose_elems::<8>(src, &mut dst, rows, cols),
        // No other fixed-width dtypes exist; keep the data rather than scramble it.
        _ => dst.copy_from_slice(src),
    }
    TensorData::from_bytes_vec(dst, vec![cols, rows], dtype)
}

/// Block-wise transpose of `rows × cols` elements of `E` bytes: both the reads and the writes of
/// a block stay within a few cache lines.
fn transpose_elems<const E: usize>(src: &[u8], dst: &mut [u8], rows: usize, cols: usize) {
    const BLOCK: usize = 64;
    let (src, _) = src.as_chunks::<E>();
    let (dst, _) = dst.as_chunks_mut::<E>();
    for r0 in (0..rows).step_by(BLOCK) {
        let r1 = (r0 + BLOCK).min(rows);
        for c0 in (0..cols).step_by(BLOCK) {
            let c1 = (c0 + BLOCK).min(cols);
            for c in c0..c1 {
                let out = &mut dst[c * rows + r0..c * rows + r1];
                for (o, r) in out.iter_mut().zip(r0..r1) {
                    *o = src[r * cols + c];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::bf16;

    #[test]
    fn blocked_transpose_matches_the_definition() {
        for (rows, cols) in [(1, 1), (3, 130), (129, 65), (64, 64), (200, 7)] {
            let values: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
            let t = transpose_2d(TensorData::new(values.clone(), [rows, cols]));
            assert_eq!(t.shape().to_vec(), vec![cols, rows]);
            let out = t.try_to_vec::<f32>().expect("f32");
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(out[c * rows + r], values[r * cols + c]);
                }
            }
            let half: Vec<bf16> = values.iter().map(|&v| bf16::from_f32(v)).collect();
            let t = transpose_2d(TensorData::new(half.clone(), [rows, cols]));
            let out = t.try_to_vec::<bf16>().expect("bf16");
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(out[c * rows + r], half[r * cols + c]);
                }
            }
        }
    }
}
