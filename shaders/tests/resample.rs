//! The device resampling (kernel on wgpu, tensor operations on flex) against a CPU
//! implementation of the same fixed-point tables written here, and against the host resampler
//! `blip3_shaders::pillow::resize_rgb8` (which the data crate's pipeline uses and its parity tests
//! check against Pillow), byte for byte.

mod common;

use blip3_shaders::pillow::resize_rgb8;
use blip3_shaders::resample::{
    AxisCoefficients, PRECISION_BITS, ResampleError, ResampleFilter, resample_axis, resize_batch,
};
use burn::prelude::*;
use common::{Rng, devices, ints};

/// A batch of `n` images `h × w × c` with smooth gradients, hard edges and noise, so that
/// filters with negative lobes overshoot and the clamping matters.
fn images(n: usize, h: usize, w: usize, c: usize, seed: u64) -> Vec<i64> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(n * h * w * c);
    for ni in 0..n {
        for y in 0..h {
            for x in 0..w {
                for ci in 0..c {
                    let smooth = (x * 255 / w.max(1) + y * 97 / h.max(1) + ci * 40 + ni * 13) % 256;
                    let edge = if (x / 3 + y / 2) % 2 == 0 { 255 } else { 0 };
                    let v = match rng.below(4) {
                        0 => rng.below(256) as usize,
                        1 => edge,
                        _ => smooth,
                    };
                    out.push(v as i64);
                }
            }
        }
    }
    out
}

/// One pass over an `[n, h, w, c]` host batch with the tables, in Pillow's integer arithmetic.
fn cpu_pass(src: &[i64], dims: [usize; 4], coeffs: &AxisCoefficients, axis: usize) -> Vec<i64> {
    let [n, h, w, c] = dims;
    let (oh, ow) = if axis == 1 {
        (coeffs.out_size, w)
    } else {
        (h, coeffs.out_size)
    };
    let mut out = vec![0i64; n * oh * ow * c];
    for ni in 0..n {
        for y in 0..oh {
            for x in 0..ow {
                let o = if axis == 1 { y } else { x };
                let (first, ks) = coeffs.window(o).expect("window");
                for ci in 0..c {
                    let mut acc: i32 = 1 << (PRECISION_BITS - 1);
                    for (t, &k) in ks.iter().enumerate() {
                        let (sy, sx) = if axis == 1 {
                            (first + t, x)
                        } else {
                            (y, first + t)
                        };
                        acc += src[((ni * h + sy) * w + sx) * c + ci] as i32 * k;
                    }
                    out[((ni * oh + y) * ow + x) * c + ci] =
                        i64::from((acc >> PRECISION_BITS).clamp(0, 255));
                }
            }
        }
    }
    out
}

/// Pillow 13's two-pass order on the host (vertical first when the height shrinks by more than
/// twice as many pixels as the width).
fn cpu_resize(src: &[i64], dims: [usize; 4], ow: usize, oh: usize, f: ResampleFilter) -> Vec<i64> {
    let [n, h, w, c] = dims;
    let hor = AxisCoefficients::pillow(w, ow, f);
    let ver = AxisCoefficients::pillow(h, oh, f);
    match (ow == w, oh == h) {
        (true, true) => src.to_vec(),
        (true, false) => cpu_pass(src, dims, &ver, 1),
        (false, true) => cpu_pass(src, dims, &hor, 2),
        (false, false) => {
            let (sh, sw) = (h as i64 - oh as i64, w as i64 - ow as i64);
            if sh > 0 && sh > 2 * sw {
                let mid = cpu_pass(src, dims, &ver, 1);
                cpu_pass(&mid, [n, oh, w, c], &hor, 2)
            } else {
                let mid = cpu_pass(src, dims, &hor, 2);
                cpu_pass(&mid, [n, h, ow, c], &ver, 1)
            }
        }
    }
}

/// `(w, h) → (w', h')` cases: both pass orders, single-axis, up, down, odd sizes.
/// `(width, height)`.
type Size = (usize, usize);

const SIZES: &[(Size, Size)] = &[
    ((97, 61), (53, 41)),  // down, horizontal first
    ((50, 200), (45, 60)), // height shrinks most: vertical first
    ((7, 5), (23, 19)),    // up
    ((33, 17), (33, 40)),  // vertical only
    ((33, 17), (10, 17)),  // horizontal only
    ((523, 11), (96, 3)),  // strong downscale
    ((31, 29), (64, 13)),  // up one axis, down the other
];

#[test]
fn device_resize_matches_cpu_tables_and_pillow_path() {
    for (device_name, device) in devices() {
        for (i, &((w, h), (ow, oh))) in SIZES.iter().enumerate() {
            let filters: &[ResampleFilter] = if i == 0 {
                &[
                    ResampleFilter::Bicubic,
                    ResampleFilter::Box,
                    ResampleFilter::Bilinear,
                    ResampleFilter::Hamming,
                    ResampleFilter::Lanczos,
                ]
            } else {
                &[ResampleFilter::Bicubic]
            };
            for &filter in filters {
                let (n, c) = (2, 3);
                let src = images(n, h, w, c, (i * 10) as u64);
                let want = cpu_resize(&src, [n, h, w, c], ow, oh, filter);
                let t = Tensor::<4, Int>::from_data(
                    TensorData::new(src.clone(), [n, h, w, c]),
                    &device,
                );
                let got = resize_batch(t, ow, oh, filter).expect("resize");
                assert_eq!(got.dims(), [n, oh, ow, c]);
                let got = ints(got);
                let wrong = got.iter().zip(&want).filter(|(a, b)| a != b).count();
                assert_eq!(
                    wrong, 0,
                    "{device_name} {filter:?} {w}x{h} -> {ow}x{oh}: {wrong} samples differ"
                );
                // The Pillow-exact host resize, image by image.
                for ni in 0..n {
                    let bytes: Vec<u8> = src[ni * h * w * c..(ni + 1) * h * w * c]
                        .iter()
                        .map(|&v| v as u8)
                        .collect();
                    let pillow = resize_rgb8(&bytes, (w, h), (ow, oh), filter);
                    let ours: Vec<u8> = got[ni * oh * ow * c..(ni + 1) * oh * ow * c]
                        .iter()
                        .map(|&v| v as u8)
                        .collect();
                    assert!(
                        ours == pillow,
                        "{device_name} {filter:?} {w}x{h} -> {ow}x{oh}: differs from the \
                         Pillow-exact CPU resize (image {ni})"
                    );
                }
                eprintln!("{device_name} {filter:?} {w}x{h} -> {ow}x{oh}: exact");
            }
        }
    }
}

#[test]
fn single_pass_matches_cpu_for_other_channel_counts() {
    // Also on autodiff devices: integer tensors pass through the autodiff wrapper.
    let all = devices()
        .into_iter()
        .flat_map(|(name, d)| [(name, d.clone()), (name, d.autodiff())]);
    for (device_name, device) in all {
        for &(axis, c, in_size, out_size) in &[(1, 1, 29, 11), (2, 4, 13, 40), (1, 2, 6, 6)] {
            let (n, h, w) = if axis == 1 {
                (3, in_size, 9)
            } else {
                (1, 5, in_size)
            };
            let src = images(n, h, w, c, 77);
            let coeffs = AxisCoefficients::pillow(in_size, out_size, ResampleFilter::Bicubic);
            let want = cpu_pass(&src, [n, h, w, c], &coeffs, axis);
            let t = Tensor::<4, Int>::from_data(TensorData::new(src, [n, h, w, c]), &device);
            let got = ints(resample_axis(t, &coeffs, axis).expect("pass"));
            assert_eq!(
                got, want,
                "{device_name} axis {axis} c {c} {in_size}->{out_size}"
            );
        }
    }
}

#[test]
fn tables_are_normalised_and_in_range() {
    for &(i, o) in &[(10, 3), (3, 10), (523, 96), (97, 247), (1, 5), (384, 384)] {
        for f in [
            ResampleFilter::Box,
            ResampleFilter::Bilinear,
            ResampleFilter::Hamming,
            ResampleFilter::Bicubic,
            ResampleFilter::Lanczos,
        ] {
            let t = AxisCoefficients::pillow(i, o, f);
            assert_eq!(t.bounds.len(), 2 * o);
            assert_eq!(t.weights.len(), o * t.taps);
            for x in 0..o {
                let (first, ks) = t.window(x).expect("window");
                assert!(
                    !ks.is_empty() && first + ks.len() <= i,
                    "{f:?} {i}->{o} @{x}"
                );
                let sum: i32 = ks.iter().sum();
                // Each weight is rounded separately, so the sum may be off by a few units.
                assert!(
                    (sum - (1 << PRECISION_BITS)).abs() <= ks.len() as i32,
                    "{f:?} {i}->{o} @{x}: {sum}"
                );
                // Padding past the window is zero (the kernel may read it).
                let row = &t.weights[x * t.taps..(x + 1) * t.taps];
                assert!(row[ks.len()..].iter().all(|&w| w == 0));
            }
        }
    }
}

#[test]
fn bad_arguments_are_errors() {
    let device = Device::flex();
    let t = Tensor::<4, Int>::zeros([1, 4, 6, 3], &device);
    let c = AxisCoefficients::pillow(6, 3, ResampleFilter::Bicubic);
    assert_eq!(
        resample_axis(t.clone(), &c, 3).err(),
        Some(ResampleError::Axis(3))
    );
    assert_eq!(
        resample_axis(t.clone(), &c, 1).err(),
        Some(ResampleError::InputSize {
            axis: 1,
            expected: 6,
            actual: 4
        })
    );
    // Empty targets give zeros of the requested size.
    let empty = resize_batch(t, 0, 5, ResampleFilter::Bicubic).expect("empty");
    assert_eq!(empty.dims(), [1, 5, 0, 3]);
}
