//! The element-wise activations of the model's MLPs: SwiGLU's `silu(gate) · up` (Phi-3) and GELU
//! with the tanh approximation (SigLIP's `gelu_pytorch_tanh`), with a host path on Flex.
//!
//! Flex evaluates `exp`, `sigmoid` and `tanh` one element at a time through the C library: on a
//! `[352, 2048]` f32 tensor `exp` takes 1.9 ms and `sigmoid` 3.9-4.6 ms against 0.1 ms for a
//! product (docs/measurements/2026-12-08-decoder-layer/flex-activations.log). For inference on
//! plain Flex in f32 ([`host_applies`]) these functions read their operands once and compute each
//! output in one pass, with an exponential the compiler vectorises ([`exp`]; the loops are built
//! for AVX-512, AVX2 and the baseline, picked at run time), split over the rayon threads.
//! Everywhere else (CubeCL devices, where Fusion fuses the element-wise ops; autodiff, which
//! needs the ops' own backward; half precision) they are Burn's tensor ops.

use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::activation::{sigmoid, silu};
use multiversion::multiversion;
use rayon::prelude::*;

/// SwiGLU's gating of a fused projection: the last dimension of `gate_up` holds `[gate | up]`
/// (two halves), and the result is `silu(gate) · up`, half as wide. On the host path the fused
/// tensor is read once, row by row, with no copy of either strided half.
pub fn swiglu<const D: usize>(gate_up: Tensor<D>) -> Tensor<D> {
    let dims = gate_up.dims();
    let width = dims[D - 1] / 2;
    if host_applies(&gate_up) && dims[D - 1].is_multiple_of(2) && width > 0 {
        let device = gate_up.device();
        let fused = host_values(gate_up);
        let mut out = vec![0.0f32; fused.len() / 2];
        if out.len() <= CHUNK {
            swiglu_rows(&mut out, &fused, width);
        } else {
            let rows_per_task = (CHUNK / width).max(1);
            out.par_chunks_mut(width * rows_per_task)
                .zip(fused.par_chunks(2 * width * rows_per_task))
                .for_each(|(o, rows)| swiglu_rows(o, rows, width));
        }
        let mut shape = dims;
        shape[D - 1] = width;
        return Tensor::from_data(TensorData::new(out, shape), &device);
    }
    swiglu_tensor_ops(gate_up)
}

/// [`swiglu`] as Burn's tensor ops (`up · silu(gate)` on the two halves): the path off the host,
/// and the benchmark's baseline.
pub fn swiglu_tensor_ops<const D: usize>(gate_up: Tensor<D>) -> Tensor<D> {
    let width = gate_up.dims()[D - 1] / 2;
    let gate = gate_up.clone().narrow(D - 1, 0, width);
    let up = gate_up.narrow(D - 1, width, width);
    up * silu(gate)
}

/// `2·√(2/π)`, the factor of the tanh approximation's argument, doubled (see [`gelu_tanh`]).
const TWO_C: f64 = 2.0 * std::f64::consts::FRAC_2_SQRT_PI * std::f64::consts::FRAC_1_SQRT_2;

/// GELU with the tanh approximation, `½·x·(1 + tanh u)` with `u = √(2/π)·(x + 0.044715·x³)`,
/// written through the identity `½·(1 + tanh u) = sigmoid(2u)`: `x / (1 + exp(−2u))` on the host
/// path, one sigmoid and plain products as tensor ops (`powf` and `tanh` were about 15% of a CPU
/// forward).
pub fn gelu_tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if host_applies(&x) {
        let (shape, device) = (x.shape(), x.device());
        let mut out = host_values(x);
        if out.len() <= CHUNK {
            gelu_tanh_values(&mut out);
        } else {
            out.par_chunks_mut(CHUNK).for_each(gelu_tanh_values);
        }
        return Tensor::from_data(TensorData::new(out, shape), &device);
    }
    gelu_tanh_tensor_ops(x)
}

/// [`gelu_tanh`] as Burn's tensor ops, `x · sigmoid(2u)`: the path off the host, and the
/// benchmark's baseline.
pub fn gelu_tanh_tensor_ops<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let u2 = (x.clone() * x.clone() * (0.044715 * TWO_C) + TWO_C) * x.clone();
    x * sigmoid(u2)
}

/// Whether the activations take the host path for `t`: f32 on Flex without autodiff.
pub fn host_applies<const D: usize>(t: &Tensor<D>) -> bool {
    t.dtype() == DType::F32 && crate::attention::is_plain_flex(&t.device())
}

/// A tensor's values in row-major order (a strided view is copied out in order).
fn host_values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .try_into_vec::<f32>()
        .expect("the data of an f32 tensor are f32")
}

/// Elements a rayon task takes about; smaller inputs (decoding) stay on the calling thread.
const CHUNK: usize = 1 << 14;

/// `out` (rows of `width`) = `silu(gate) · up` of `fused` (rows of `[gate | up]`, `2·width`).
/// Compiled for AVX-512 and AVX2 as well as the baseline, picked at run time: Rust never fuses a
/// product and a sum into one rounding on its own, so every version gives the same bits.
#[multiversion(targets("x86_64+avx512f", "x86_64+avx2+fma"))]
fn swiglu_rows(out: &mut [f32], fused: &[f32], width: usize) {
    for (o, row) in out.chunks_mut(width).zip(fused.chunks(2 * width)) {
        let (gate, up) = row.split_at(width);
        for ((o, &g), &u) in o.iter_mut().zip(gate).zip(up) {
            *o = u * (g / (1.0 + exp(-g)));
        }
    }
}

/// tanh-GELU of every value in place, as `x / (1 + exp(−2u))` (see [`gelu_tanh`]); compiled as
/// [`swiglu_rows`] is.
#[multiversion(targets("x86_64+avx512f", "x86_64+avx2+fma"))]
fn gelu_tanh_values(values: &mut [f32]) {
    let (c, c3) = (TWO_C as f32, (0.044715 * TWO_C) as f32);
    for v in values {
        let x = *v;
        *v = x / (1.0 + exp(-((x * x * c3 + c) * x)));
    }
}

/// `eˣ` in f32 without branches or library calls, so that loops over it vectorise. `x` is
/// clamped to `[−104, 89]` (beyond, the f32 result is 0 or infinite anyway), split as
/// `n·ln 2 + r` with integer `n` and `|r| ≤ ln 2 / 2` (`ln 2` in two parts, so that `r` is exact
/// to f32 rounding), and `eʳ` comes from its degree-6 Taylor polynomial (truncation below 2⁻²³
/// relative on that interval), scaled by `2ⁿ` as two powers of two built from exponent bits (so
/// that `n` from −150 to 128 gives subnormal results at the bottom and infinity at the top).
/// Within a few units in the last place of the exact value where that is a normal f32 (the tests
/// bound it); NaN stays NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 = LN2_HI + LN2_LO; LN2_HI = 355/512 has 9 significant bits, so n·LN2_HI is exact
    // for the |n| ≤ 150 used here.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5·2²³: adding it rounds to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-104.0, 89.0);
    let shifted = x * LOG2_E + ROUND;
    let n = shifted - ROUND;
    let n_int = shifted.to_bits() as i32 - ROUND.to_bits() as i32;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (1.0 / 2.0
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let half = n_int >> 1;
    let power = |e: i32| f32::from_bits(((e + 127) << 23) as u32);
    p * power(half) * power(n_int - half)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The dispatched loops (AVX-512 or AVX2 where this CPU has them) give the same bits as the
    /// same arithmetic in a plain baseline loop.
    #[test]
    fn every_instruction_set_gives_the_same_bits() {
        let values: Vec<f32> = (0..4099).map(|i| (i as f32 - 2049.0) * 0.0123).collect();
        let mut got = values.clone();
        gelu_tanh_values(&mut got);
        let (c, c3) = (TWO_C as f32, (0.044715 * TWO_C) as f32);
        for (x, g) in values.iter().zip(&got) {
            let want = x / (1.0 + exp(-((x * x * c3 + c) * x)));
            assert_eq!(g.to_bits(), want.to_bits(), "gelu at {x}");
        }
        let width = 1000;
        let fused = &values[..4 * width];
        let mut out = vec![0.0; 2 * width];
        swiglu_rows(&mut out, fused, width);
        for (i, o) in out.iter().enumerate() {
            let (row, col) = (i / width, i % width);
            let (g, u) = (
                fused[2 * width * row + col],
                fused[2 * width * row + width + col],
            );
            let want = u * (g / (1.0 + exp(-g)));
            assert_eq!(o.to_bits(), want.to_bits(), "swiglu at {i}");
        }
    }

    /// Units in the last place between `got` and the exact `want`.
    fn ulps(got: f32, want: f64) -> f64 {
        let w = want as f32;
        let ulp = (f32::from_bits(w.to_bits() + 1) - w) as f64;
        (got as f64 - want).abs() / ulp
    }

    #[test]
    fn exp_is_within_a_few_ulps_over_the_normal_range() {
        let mut worst = (0.0f64, 0.0f32);
        let steps = 2_000_000;
        for i in 0..=steps {
            let x = -87.0 + 175.7 * i as f32 / steps as f32;
            let e = ulps(exp(x), (x as f64).exp());
            if e > worst.0 {
                worst = (e, x);
            }
        }
        assert!(worst.0 <= 3.0, "{} ulps at x = {}", worst.0, worst.1);
    }

    #[test]
    fn exp_underflows_overflows_and_keeps_nan() {
        assert_eq!(exp(0.0), 1.0);
        // Subnormal results, to within their coarse spacing.
        for x in [-90.0f32, -95.0, -100.0, -103.0] {
            let want = (x as f64).exp();
            assert!((exp(x) as f64 - want).abs() <= 1e-3 * want + 1.5e-45, "{x}");
        }
        for x in [-104.5, -1000.0, f32::NEG_INFINITY] {
            assert!(exp(x) <= 1.5e-45, "{x}");
        }
        assert!(exp(88.7).is_finite() && exp(88.7) > 3.3e38);
        for x in [88.8, 89.5, 1000.0, f32::INFINITY] {
            assert_eq!(exp(x), f32::INFINITY, "{x}");
        }
        assert!(exp(f32::NAN).is_nan());
    }
}
