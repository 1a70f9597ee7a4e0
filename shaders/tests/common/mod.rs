//! Helpers shared by the kernel tests: device selection, deterministic data, comparisons.
#![allow(dead_code)]

use burn::prelude::*;
use burn::tensor::DType;

/// The wgpu device if an adapter works here (lavapipe counts), else `None` with the reason
/// printed. Set `BLIP3_SKIP_WGPU` to skip on purpose.
pub fn wgpu_device() -> Option<Device> {
    if std::env::var_os("BLIP3_SKIP_WGPU").is_some() {
        eprintln!("skipping wgpu: BLIP3_SKIP_WGPU is set");
        return None;
    }
    blip3_shaders::device::probe_wgpu()
        .map_err(|why| eprintln!("skipping wgpu: {why}"))
        .ok()
}

/// The GPU devices that work here (see `blip3_shaders::device::gpu_devices`).
#[allow(unused_imports)] // used by some of the test binaries that include this module
pub use blip3_shaders::device::gpu_devices;

/// Devices to run a check on: flex always, the GPU devices where available.
pub fn devices() -> Vec<(&'static str, Device)> {
    let mut out = vec![("flex", Device::flex())];
    out.extend(gpu_devices());
    out
}

/// A small deterministic generator (SplitMix64), so every device sees the same inputs.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn vec(&mut self, n: usize, amplitude: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform() * amplitude).collect()
    }
}

/// Values of a float tensor as f32.
pub fn floats<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.cast(DType::F32)
        .into_data()
        .try_into_vec_as::<f32>()
        .expect("f32 data")
}

/// Values of a float tensor as f64.
pub fn doubles<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.cast(DType::F64)
        .into_data()
        .try_into_vec_as::<f64>()
        .expect("f64 data")
}

/// Values of an int tensor as i64.
pub fn ints<const D: usize>(t: Tensor<D, Int>) -> Vec<i64> {
    t.into_data().try_into_vec_as::<i64>().expect("int data")
}

/// Max |a - b|; NaN anywhere counts as infinitely far.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let d = (x - y).abs();
            if d.is_nan() { f32::INFINITY } else { d }
        })
        .fold(0.0, f32::max)
}
