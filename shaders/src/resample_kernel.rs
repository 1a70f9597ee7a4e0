//! One Pillow resampling pass on the CubeCL backend: a thread per output sample accumulates
//! `½ + Σ pixel·weight` over its window in 32-bit integers, shifts by the fixed-point precision
//! and clamps to `0..=255` — the arithmetic of libImaging's 8-bit path, so results are exact.

use burn::backend::Shape;
use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::tensor::IntTensor;
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use cubecl::prelude::*;

use crate::resample::{PRECISION_BITS, ResampleBackend};

impl ResampleBackend for CubeBackend {
    fn resample_axis(
        images: IntTensor<Self>,
        bounds: IntTensor<Self>,
        weights: IntTensor<Self>,
        axis: usize,
    ) -> IntTensor<Self> {
        let [n, h, w, c] = images.meta.shape().dims::<4>();
        let out_len = weights.meta.shape()[0];
        let out_dims = if axis == 1 {
            [n, out_len, w, c]
        } else {
            [n, h, out_len, c]
        };
        let bounds = into_contiguous(bounds);
        let weights = into_contiguous(weights);
        let client = images.client.clone();
        let out = empty_device_dtype(
            client.clone(),
            images.device.clone(),
            Shape::new(out_dims),
            images.dtype,
        );
        let count = out_dims.iter().product::<usize>();
        if count == 0 {
            return out;
        }
        let cube_dim = CubeDim::new(&client, count);
        let cube_count = cubecl::calculate_cube_count_elemwise(&client, count, cube_dim);
        let types = [
            dtype_to_storage_type(images.dtype),
            dtype_to_storage_type(weights.dtype),
        ];
        resample_axis_kernel::launch(
            &client,
            cube_count,
            cube_dim,
            images.into_tensor_arg(),
            bounds.into_tensor_arg(),
            weights.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            axis,
            types,
        );
        out
    }
}

/// `input` `[N, H, W, C]` (any strides), `bounds` `[out, 2]` and `weights` `[out, taps]`
/// contiguous, `output` contiguous with `axis` resized.
#[cube(launch)]
fn resample_axis_kernel<I: Int, J: Int>(
    input: &Tensor<I>,
    bounds: &Tensor<J>,
    weights: &Tensor<J>,
    output: &mut Tensor<I>,
    #[comptime] axis: usize,
    #[define(I, J)] _types: [ElemType; 2],
) {
    let pos = ABSOLUTE_POS;
    if pos >= output.len() {
        terminate!();
    }
    let c = pos % output.shape(3);
    let rest = pos / output.shape(3);
    let x = rest % output.shape(2);
    let rest = rest / output.shape(2);
    let y = rest % output.shape(1);
    let n = rest / output.shape(1);

    let mut o = x;
    let mut base = n * input.stride(0) + y * input.stride(1) + c * input.stride(3);
    if comptime!(axis == 1) {
        o = y;
        base = n * input.stride(0) + x * input.stride(2) + c * input.stride(3);
    }
    let step = input.stride(axis);
    let first = usize::cast_from(bounds[o * 2]);
    let count = usize::cast_from(bounds[o * 2 + 1]);
    let taps = weights.shape(1);

    let mut acc = i32::new(1i64 << (PRECISION_BITS - 1));
    for j in 0..count {
        let pixel = i32::cast_from(input[base + (first + j) * step]);
        let weight = i32::cast_from(weights[o * taps + j]);
        acc += pixel * weight;
    }
    let value = max(min(acc >> PRECISION_BITS as i32, 255i32), 0i32);
    output[pos] = I::cast_from(value);
}
