//! Helpers shared by the model integration tests: fixture paths, safetensors reading, comparisons
//! and device selection.
#![allow(dead_code)]

use std::path::PathBuf;

use burn::prelude::*;

/// Path of a file under `tests/fixtures/model`.
pub fn fixture(name: &str) -> PathBuf {
    blip3_fixtures::fixture("model").join(name)
}

/// A tensor read from a fixture: f32 values (integers converted) and its shape.
pub struct Arr {
    pub data: Vec<f32>,
    pub shape: Vec<usize>,
}

impl Arr {
    pub fn tensor<const D: usize>(&self, device: &Device) -> Tensor<D> {
        Tensor::from_data(
            TensorData::new(self.data.clone(), self.shape.clone()),
            device,
        )
    }
    pub fn ints(&self) -> Vec<i64> {
        self.data.iter().map(|&v| v as i64).collect()
    }
}

/// Reads every tensor of a fixture file.
pub fn read(name: &str) -> std::collections::HashMap<String, Arr> {
    let bytes = std::fs::read(fixture(name)).expect("fixture file");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors");
    let mut out = std::collections::HashMap::new();
    for (k, v) in st.tensors() {
        let raw = v.data();
        let data: Vec<f32> = match v.dtype() {
            safetensors::Dtype::F32 => raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            safetensors::Dtype::I32 => raw
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32)
                .collect(),
            safetensors::Dtype::I64 => raw
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32)
                .collect(),
            safetensors::Dtype::U8 => raw.iter().map(|&b| b as f32).collect(),
            d => panic!("unsupported fixture dtype {d:?}"),
        };
        out.insert(
            k.to_string(),
            Arr {
                data,
                shape: v.shape().to_vec(),
            },
        );
    }
    out
}

/// Values of a tensor as f32.
pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.cast(burn::tensor::DType::F32)
        .into_data()
        .try_into_vec_as::<f32>()
        .expect("f32 data")
}

/// Max |a - b| over the selected positions.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The wgpu device if a Vulkan/Metal adapter works here, else `None` with the reason printed.
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
