//! Pillow-exact separable image resampling of a batch of images on the device.
//!
//! Pillow's `Image.resize` (libImaging `Resample.c`, 8 bits a channel) convolves each axis with a
//! filter whose support widens by the downscale factor (antialiasing). Every output position has a
//! window of input positions and weights normalised to sum 1, stored in fixed point with
//! [`PRECISION_BITS`] fractional bits; a pass accumulates `½ + Σ pixel·weight` in 32-bit integers,
//! shifts, and clamps to `0..=255`, so the intermediate between the two passes is 8-bit.
//!
//! The host computes the tables ([`AxisCoefficients::pillow`]); the device applies them
//! ([`resample_axis`], [`resize_batch`]). On CubeCL devices a kernel does one pass (one thread an
//! output sample); elsewhere the same integer arithmetic runs as ordinary tensor operations
//! (gather, multiply, sum), so every backend gives identical bytes.
//!
//! Images are `Int` tensors `[N, H, W, C]` (any channel count) holding values `0..=255`.

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::tensor::IntTensor;
use burn::backend::{Autodiff, Backend, Dispatch, backend_extension};
use burn::prelude::*;
use burn::tensor::Shape;

use crate::attention::is_cube_device;

/// Fractional bits of the fixed-point weights (Pillow: 32 bits minus 8 for the sample and 2 for
/// the overshoot of filters with negative lobes).
pub const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Errors of the resampling API: inconsistent shapes between images and tables.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResampleError {
    /// The axis is neither 1 (rows) nor 2 (columns) of an `[N, H, W, C]` batch.
    #[error("resampling axis must be 1 (height) or 2 (width) of [N, H, W, C], got {0}")]
    Axis(usize),
    /// The tables were computed for another input size than the images have on that axis.
    #[error("coefficients are for an input of {expected} pixels but axis {axis} has {actual}")]
    InputSize {
        /// Resampled axis.
        axis: usize,
        /// Input size the tables were computed for.
        expected: usize,
        /// Size of the images along `axis`.
        actual: usize,
    },
    /// `bounds` is not `[out, 2]` or `weights` is not `[out, taps]` for the same `out`.
    #[error("coefficient tensors disagree: bounds {bounds:?}, weights {weights:?}")]
    Tables {
        /// Dimensions of the bounds tensor.
        bounds: [usize; 2],
        /// Dimensions of the weights tensor.
        weights: [usize; 2],
    },
}

/// A Pillow resampling filter (`PIL.Image.Resampling`) other than NEAREST.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResampleFilter {
    /// `BOX`: each output pixel averages the input pixels it covers.
    Box,
    /// `BILINEAR`: triangle filter, support 1.
    Bilinear,
    /// `HAMMING`: Hamming-windowed sinc, support 1.
    Hamming,
    /// `BICUBIC`: cubic convolution with a = -0.5, support 2 (`Image.resize`'s default).
    #[default]
    Bicubic,
    /// `LANCZOS`: Lanczos-windowed sinc, support 3.
    Lanczos,
}

impl ResampleFilter {
    /// Half-width of the filter at scale 1, in input pixels.
    pub fn support(self) -> f64 {
        match self {
            ResampleFilter::Box => 0.5,
            ResampleFilter::Bilinear | ResampleFilter::Hamming => 1.0,
            ResampleFilter::Bicubic => 2.0,
            ResampleFilter::Lanczos => 3.0,
        }
    }

    /// The filter at distance `x` (filter units), written as libImaging writes it so that the
    /// weights round to the same fixed-point values.
    pub fn weight(self, x: f64) -> f64 {
        match self {
            ResampleFilter::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            ResampleFilter::Bilinear => (1.0 - x.abs()).max(0.0),
            ResampleFilter::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    let px = x * std::f64::consts::PI;
                    // libImaging's window constants are single-precision literals.
                    px.sin() / px * (f64::from(0.54f32) + f64::from(0.46f32) * px.cos())
                }
            }
            ResampleFilter::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            ResampleFilter::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let px = x * std::f64::consts::PI;
        px.sin() / px
    }
}

/// Resampling tables for one axis: for every output position a window of input positions
/// (`first`, `count`) and `taps` fixed-point weights, zero past `count`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AxisCoefficients {
    /// Input size along the axis.
    pub in_size: usize,
    /// Output size along the axis.
    pub out_size: usize,
    /// Weights reserved per output position (the longest possible window).
    pub taps: usize,
    /// `out_size × 2`, row-major: first input index and number of taps of each output.
    pub bounds: Vec<i32>,
    /// `out_size × taps`, row-major: weights with [`PRECISION_BITS`] fractional bits.
    pub weights: Vec<i32>,
}

impl AxisCoefficients {
    /// Pillow's `precompute_coeffs` followed by `normalize_coeffs_8bpc`, for resampling the whole
    /// input axis `0..in_size` onto `out_size` positions. Empty sizes give empty tables.
    pub fn pillow(in_size: usize, out_size: usize, filter: ResampleFilter) -> AxisCoefficients {
        if in_size == 0 || out_size == 0 {
            return AxisCoefficients {
                in_size,
                out_size,
                taps: 1,
                bounds: vec![0; out_size * 2],
                weights: vec![0; out_size],
            };
        }
        // Pillow passes the source box as single-precision floats.
        let scale = f64::from(in_size as f32) / out_size as f64;
        let filter_scale = scale.max(1.0);
        let support = filter.support() * filter_scale;
        let taps = support.ceil() as usize * 2 + 1;
        let inv_filter_scale = 1.0 / filter_scale;

        let mut bounds = Vec::with_capacity(out_size * 2);
        let mut weights = vec![0i32; out_size * taps];
        let mut window = vec![0f64; taps];
        for (xx, out) in weights.chunks_exact_mut(taps).enumerate() {
            let center = (xx as f64 + 0.5) * scale;
            // C's `(int)` truncates toward zero, as `as` does.
            let first = ((center - support + 0.5) as i64).max(0);
            let end = ((center + support + 0.5) as i64).min(in_size as i64);
            let count = (end - first).clamp(0, taps as i64) as usize;

            let mut sum = 0.0;
            for (x, w) in window.iter_mut().enumerate().take(count) {
                *w = filter.weight((x as f64 + first as f64 - center + 0.5) * inv_filter_scale);
                sum += *w;
            }
            for (k, w) in out.iter_mut().zip(&window).take(count) {
                let w = if sum != 0.0 { *w / sum } else { *w };
                let scaled = w * f64::from(1u32 << PRECISION_BITS);
                *k = if w < 0.0 {
                    (scaled - 0.5) as i32
                } else {
                    (scaled + 0.5) as i32
                };
            }
            bounds.extend([first as i32, count as i32]);
        }
        AxisCoefficients {
            in_size,
            out_size,
            taps,
            bounds,
            weights,
        }
    }

    /// First input index and the weights of output position `i` (`None` past the end).
    pub fn window(&self, i: usize) -> Option<(usize, &[i32])> {
        let first = *self.bounds.get(2 * i)? as usize;
        let count = *self.bounds.get(2 * i + 1)? as usize;
        let start = i * self.taps;
        Some((first, self.weights.get(start..start + count)?))
    }

    /// The input positions `first..end` that some output reads.
    pub fn span(&self) -> (usize, usize) {
        let mut first = usize::MAX;
        let mut end = 0;
        for pair in self.bounds.chunks_exact(2) {
            if pair[1] > 0 {
                first = first.min(pair[0] as usize);
                end = end.max((pair[0] + pair[1]) as usize);
            }
        }
        if first == usize::MAX {
            (0, 0)
        } else {
            (first, end)
        }
    }

    /// The same tables applied to an input that starts at position `offset` of the original
    /// (every window moves down by `offset`; `offset` must not exceed [`Self::span`]'s start).
    pub fn shifted(&self, offset: usize) -> AxisCoefficients {
        let mut shifted = self.clone();
        shifted.in_size = self.in_size.saturating_sub(offset);
        for pair in shifted.bounds.chunks_exact_mut(2) {
            pair[0] = pair[0].saturating_sub(offset as i32).max(0);
        }
        shifted
    }

    /// The tables as `Int` tensors on `device`: bounds `[out, 2]` and weights `[out, taps]`.
    pub fn to_tensors(&self, device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>) {
        let bounds = Tensor::from_data(
            TensorData::new(self.bounds.clone(), [self.out_size, 2]),
            device,
        );
        let weights = Tensor::from_data(
            TensorData::new(self.weights.clone(), [self.out_size, self.taps]),
            device,
        );
        (bounds, weights)
    }
}

/// One resampling pass of an `[N, H, W, C]` batch along `axis` (1 = height, 2 = width) with
/// tables for that axis's size. Returns the batch with that axis resized to `coeffs.out_size`.
pub fn resample_axis(
    images: Tensor<4, Int>,
    coeffs: &AxisCoefficients,
    axis: usize,
) -> Result<Tensor<4, Int>, ResampleError> {
    if axis != 1 && axis != 2 {
        return Err(ResampleError::Axis(axis));
    }
    let actual = images.dims()[axis];
    if actual != coeffs.in_size {
        return Err(ResampleError::InputSize {
            axis,
            expected: coeffs.in_size,
            actual,
        });
    }
    let (bounds, weights) = coeffs.to_tensors(&images.device());
    resample_axis_with_tables(images, bounds, weights, axis)
}

/// One resampling pass with the tables already on the device: `bounds` is `[out, 2]` (first
/// input index, tap count), `weights` `[out, taps]` in fixed point, zero past each window.
pub fn resample_axis_with_tables(
    images: Tensor<4, Int>,
    bounds: Tensor<2, Int>,
    weights: Tensor<2, Int>,
    axis: usize,
) -> Result<Tensor<4, Int>, ResampleError> {
    if axis != 1 && axis != 2 {
        return Err(ResampleError::Axis(axis));
    }
    let (bounds_dims, weights_dims) = (bounds.dims(), weights.dims());
    if bounds_dims[1] != 2 || bounds_dims[0] != weights_dims[0] || weights_dims[1] == 0 {
        return Err(ResampleError::Tables {
            bounds: bounds_dims,
            weights: weights_dims,
        });
    }
    let mut out_dims = images.dims();
    out_dims[axis] = weights_dims[0];
    if out_dims.contains(&0) || images.dims()[axis] == 0 {
        return Ok(Tensor::zeros(out_dims, &images.device()));
    }
    if is_cube_device(&images.device()) {
        Ok(Tensor::from_dispatch(
            <Dispatch as ResampleBackend>::resample_axis(
                images.into_dispatch(),
                bounds.into_dispatch(),
                weights.into_dispatch(),
                axis,
            ),
        ))
    } else {
        Ok(resample_axis_tensor_ops(images, bounds, weights, axis))
    }
}

/// Pillow's `Image.resize((width, height), filter)` (no box, no reducing gap) applied to every
/// image of an `[N, H, W, C]` batch, byte for byte.
///
/// The pass order follows Pillow 13: vertical first when the height shrinks by more than twice
/// as many pixels as the width, horizontal first otherwise (then only the rows the vertical pass
/// reads are resampled); an axis that keeps its size is not resampled; a same-size request
/// returns the input; an empty source or target gives zeros of the requested size.
pub fn resize_batch(
    images: Tensor<4, Int>,
    width: usize,
    height: usize,
    filter: ResampleFilter,
) -> Result<Tensor<4, Int>, ResampleError> {
    let [n, in_h, in_w, c] = images.dims();
    if (in_w, in_h) == (width, height) {
        return Ok(images);
    }
    if in_w == 0 || in_h == 0 || width == 0 || height == 0 {
        return Ok(Tensor::zeros([n, height, width, c], &images.device()));
    }
    if width == in_w {
        return resample_axis(images, &AxisCoefficients::pillow(in_h, height, filter), 1);
    }
    if height == in_h {
        return resample_axis(images, &AxisCoefficients::pillow(in_w, width, filter), 2);
    }
    let horizontal = AxisCoefficients::pillow(in_w, width, filter);
    let vertical = AxisCoefficients::pillow(in_h, height, filter);
    let shrink_h = in_h as i64 - height as i64;
    let shrink_w = in_w as i64 - width as i64;
    if shrink_h > 0 && shrink_h > 2 * shrink_w {
        let rows = resample_axis(images, &vertical, 1)?;
        resample_axis(rows, &horizontal, 2)
    } else {
        let (first, end) = vertical.span();
        let band = images.narrow(1, first, end - first);
        let band = resample_axis(band, &horizontal, 2)?;
        resample_axis(band, &vertical.shifted(first), 1)
    }
}

/// The pass as plain integer tensor operations (any backend): gather each output's window,
/// multiply by the weights, sum, round, clamp.
fn resample_axis_tensor_ops(
    images: Tensor<4, Int>,
    bounds: Tensor<2, Int>,
    weights: Tensor<2, Int>,
    axis: usize,
) -> Tensor<4, Int> {
    let device = images.device();
    let dims = images.dims();
    let [out, taps] = weights.dims();
    let in_size = dims[axis] as i64;
    let first = bounds.narrow(1, 0, 1);
    let offsets = Tensor::<1, Int>::arange(0..taps as i64, &device).reshape([1, taps]);
    // Positions past a window carry weight 0; clamping keeps their gather in range.
    let index = (first + offsets)
        .clamp(0, in_size - 1)
        .reshape([out * taps]);
    let gathered = images.select(axis, index);
    let (windowed, weights, sum_dim): (Tensor<5, Int>, Tensor<5, Int>, usize) = if axis == 1 {
        (
            gathered.reshape([dims[0], out, taps, dims[2], dims[3]]),
            weights.reshape([1, out, taps, 1, 1]),
            2,
        )
    } else {
        (
            gathered.reshape([dims[0], dims[1], out, taps, dims[3]]),
            weights.reshape([1, 1, out, taps, 1]),
            3,
        )
    };
    let mut out_dims = dims;
    out_dims[axis] = out;
    let acc =
        (windowed * weights).sum_dim(sum_dim).reshape(out_dims) + (1i64 << (PRECISION_BITS - 1));
    // Division truncates where the C shift floors, which only differs below zero, where both
    // clamp to 0.
    acc.div_scalar(1i64 << PRECISION_BITS).clamp(0, 255)
}

/// Output shape of one pass: the input's with `axis` resized to the table length.
fn resampled_shape(images: &Shape, weights: &Shape, axis: &usize) -> Shape {
    let mut dims = [images[0], images[1], images[2], images[3]];
    if let Some(d) = dims.get_mut(*axis) {
        *d = weights[0];
    }
    Shape::new(dims)
}

/// One resampling pass as a backend extension (see [`resample_axis_with_tables`]; arguments are
/// validated there).
#[backend_extension(Cube: cfg(feature = "cube"), Fusion: cfg(feature = "cube"), Autodiff)]
pub trait ResampleBackend: Backend {
    /// Resamples `images` `[N, H, W, C]` along `axis` with `bounds` `[out, 2]` and `weights`
    /// `[out, taps]`.
    #[fusion(dtype = images, shape = resampled_shape(images, weights, axis))]
    fn resample_axis(
        images: IntTensor<Self>,
        bounds: IntTensor<Self>,
        weights: IntTensor<Self>,
        axis: usize,
    ) -> IntTensor<Self>;
}

/// Integer tensors carry no gradient: the autodiff wrapper forwards to the inner backend.
impl<B: ResampleBackend, C: CheckpointStrategy> ResampleBackend for Autodiff<B, C> {
    fn resample_axis(
        images: IntTensor<Self>,
        bounds: IntTensor<Self>,
        weights: IntTensor<Self>,
        axis: usize,
    ) -> IntTensor<Self> {
        B::resample_axis(images, bounds, weights, axis)
    }
}
