//! The MLP activations (SwiGLU's `silu(gate) · up` of a fused projection, tanh-GELU) against
//! float64 on every device: the host path on Flex (a vectorised exponential over the values) and
//! the tensor ops elsewhere, on ordinary values, a view, and the edges of f32.

mod common;

use blip3_shaders::activation::{
    gelu_tanh, gelu_tanh_tensor_ops, host_applies, swiglu, swiglu_tensor_ops,
};
use burn::prelude::*;
use common::{Rng, devices, floats};

fn swiglu_ref(g: f64, u: f64) -> f64 {
    u * g / (1.0 + (-g).exp())
}

/// `½·x·(1 + tanh u)`, evaluated as `x / (1 + e⁻²ᵘ)`: the same function without the cancellation
/// in `1 + tanh u` for large negative `u`, which loses digits even in f64 (a factor 2 off at
/// x = −7.2). The formula in f32, as PyTorch writes it, returns 0 from about x = −5.5, where the
/// exact value is −6e-9; at x = −5 it gives −3.0e-7 against −2.3e-7.
fn gelu_tanh_ref(x: f64) -> f64 {
    let u = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
    x / (1.0 + (-2.0 * u).exp())
}

/// Inputs: uniform in [-8, 8), then the edges (zero, tiny, large, past the exponential's range).
fn values(rng: &mut Rng, n: usize) -> Vec<f32> {
    let mut v = rng.vec(n, 8.0);
    let edges = [
        0.0, -0.0, 1e-8, -1e-8, 0.5, -0.5, 20.0, -20.0, 87.0, -87.0, 89.0, -89.0, 100.0, -100.0,
        1e4, -1e4, 1e30, -1e30,
    ];
    v[..edges.len()].copy_from_slice(&edges);
    v
}

/// One check: its name, the output, the float64 answer and the (absolute, relative) tolerance.
type Case<'a> = (&'a str, Tensor<2>, &'a [f64], (f64, f64));

/// Largest error of `got` beyond `abs + rel·|want|` (≤ 0 passes), and where.
fn worst(got: &[f32], want: &[f64], abs: f64, rel: f64) -> (f64, usize) {
    assert_eq!(got.len(), want.len());
    let mut worst = (f64::NEG_INFINITY, 0);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        // Beyond f32's range the answer is the infinity of that sign.
        if (w as f32).is_infinite() {
            if g != w as f32 {
                return (f64::INFINITY, i);
            }
            continue;
        }
        let excess = (g as f64 - w).abs() - (abs + rel * w.abs());
        if excess > worst.0 || excess.is_nan() {
            worst = (
                if excess.is_nan() {
                    f64::INFINITY
                } else {
                    excess
                },
                i,
            );
        }
    }
    worst
}

#[test]
fn activations_match_float64_on_every_device() {
    let (rows, width) = (37, 1000);
    let mut rng = Rng::new(7);
    // A fused [rows, 2·width] projection: gate and up are its two halves, strided views.
    let fused = [
        values(&mut rng, rows * width),
        values(&mut rng, rows * width),
    ];
    let mut interleaved = Vec::with_capacity(2 * rows * width);
    for r in 0..rows {
        for half in &fused {
            interleaved.extend_from_slice(&half[r * width..(r + 1) * width]);
        }
    }
    let silu_want: Vec<f64> = fused[0]
        .iter()
        .zip(&fused[1])
        .map(|(&g, &u)| swiglu_ref(g as f64, u as f64))
        .collect();
    let gelu_want: Vec<f64> = fused[0].iter().map(|&x| gelu_tanh_ref(x as f64)).collect();
    for (name, device) in devices() {
        let gate_up = Tensor::<2>::from_data(
            TensorData::new(interleaved.clone(), [rows, 2 * width]),
            &device,
        );
        let gate = gate_up.clone().narrow(1, 0, width);
        // Flex in f32 takes the host path; a GPU's exponential is its own.
        let host = host_applies(&gate_up);
        assert_eq!(host, name == "flex", "{name}: host path");
        // f32's own conditioning: the argument of the exponential is rounded, so the relative
        // error grows with its size (up to about 50 here).
        let (abs, rel) = if host { (1e-30, 1e-5) } else { (1e-6, 1e-5) };
        // The functions, then the tensor-op forms they fall back to (on Flex too: autodiff and
        // half precision take them there).
        let cases: [Case; 4] = [
            ("swiglu", swiglu(gate_up.clone()), &silu_want, (abs, rel)),
            ("gelu_tanh", gelu_tanh(gate.clone()), &gelu_want, (abs, rel)),
            (
                "swiglu_tensor_ops",
                swiglu_tensor_ops(gate_up),
                &silu_want,
                (1e-6, 1e-5),
            ),
            (
                "gelu_tanh_tensor_ops",
                gelu_tanh_tensor_ops(gate),
                &gelu_want,
                (1e-6, 1e-5),
            ),
        ];
        for (what, out, want, (abs, rel)) in cases {
            let got = floats(out);
            let (excess, i) = worst(&got, want, abs, rel);
            assert!(
                excess <= 0.0,
                "{name} {what} at {i}: got {}, want {} (gate or x {}, up {})",
                got[i],
                want[i],
                fused[0][i],
                fused[1][i]
            );
        }
        println!("{name}: activations match (host path: {host})");
    }
}

#[test]
fn the_host_path_keeps_nan_and_infinities_as_the_formulas_do() {
    let device = Device::flex();
    let x = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1.0];
    let t = || Tensor::<1>::from_floats(x, &device);
    let gelu = floats(gelu_tanh(t()));
    // −∞ gives NaN, as the reference formulas do in f32 (−∞ · 0).
    assert!(gelu[0].is_nan());
    assert_eq!(gelu[1], f32::INFINITY);
    assert!(gelu[2].is_nan());
    let gate_up = Tensor::cat(vec![t(), Tensor::<1>::ones([4], &device)], 0);
    let silu = floats(swiglu(gate_up));
    assert!(silu[0].is_nan());
    assert_eq!(silu[1], f32::INFINITY);
    assert!(silu[2].is_nan());
    assert!((silu[3] as f64 - swiglu_ref(1.0, 1.0)).abs() < 1e-7);
}
