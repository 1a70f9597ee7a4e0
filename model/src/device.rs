//! Choosing a compute device by name, once, at the edge of a program.
//!
//! blip3 builds every module on a runtime [`Device`]; which backends exist in a binary is decided
//! by Cargo features (`flex`, `cpu`, `wgpu`, `vulkan`, `metal`, `cuda`). [`Backend`] is the closed
//! set of names a user may type (`--device`, `devices.kind` in a stage config, the benches'
//! `BLIP3_BENCH_DEVICE`); [`Backend::device`] turns one into a device or says which feature the
//! binary lacks. See docs/kernels.md ("Backends") for what each one compiles kernels to.

use std::fmt;
use std::str::FromStr;

use burn::prelude::Device;
use serde::{Deserialize, Serialize};

/// A compute backend, by the name users type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Pure-Rust CPU backend (eager, SIMD gemm, rayon). Tests, CI and CPU training.
    #[default]
    Flex,
    /// Burn's CubeCL CPU backend: kernels compiled by LLVM (feature `cpu`).
    Cpu,
    /// wgpu with the runtime's choice of graphics API; WGSL where nothing better is compiled in.
    Wgpu,
    /// wgpu pinned to Vulkan, kernels compiled to SPIR-V (feature `vulkan`).
    Vulkan,
    /// wgpu pinned to Metal, kernels compiled to MSL (feature `metal`).
    Metal,
    /// NVIDIA CUDA (feature `cuda`).
    Cuda,
}

/// Every backend name, in the order help texts list them.
pub const BACKENDS: [Backend; 6] = [
    Backend::Cuda,
    Backend::Vulkan,
    Backend::Metal,
    Backend::Wgpu,
    Backend::Cpu,
    Backend::Flex,
];

/// A backend this binary was built without.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "device {name:?}: this binary was built without the `{name}` feature (rebuild with `--features blip3-cli/{name}`; see docs/kernels.md)"
)]
pub struct BackendUnavailable {
    /// The backend's name.
    pub name: &'static str,
}

/// An unknown backend name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown device {0:?}: use one of cuda, vulkan, metal, wgpu, cpu, flex")]
pub struct UnknownBackend(pub String);

impl Backend {
    /// The name users type.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Flex => "flex",
            Backend::Cpu => "cpu",
            Backend::Wgpu => "wgpu",
            Backend::Vulkan => "vulkan",
            Backend::Metal => "metal",
            Backend::Cuda => "cuda",
        }
    }

    /// Whether this binary was compiled with the backend.
    pub fn is_compiled(self) -> bool {
        match self {
            Backend::Flex => cfg!(feature = "flex"),
            Backend::Cpu => cfg!(feature = "cpu"),
            Backend::Wgpu => cfg!(feature = "wgpu"),
            Backend::Vulkan => cfg!(feature = "vulkan"),
            Backend::Metal => cfg!(feature = "metal"),
            Backend::Cuda => cfg!(feature = "cuda"),
        }
    }

    /// Whether the backend runs on a GPU API (wgpu, Vulkan, Metal, CUDA).
    pub fn is_gpu(self) -> bool {
        matches!(
            self,
            Backend::Wgpu | Backend::Vulkan | Backend::Metal | Backend::Cuda
        )
    }

    /// The `index`-th device of this backend (`index` 0 is the default adapter for the wgpu
    /// family; the `index`-th discrete GPU otherwise). Creating a device touches no GPU API yet:
    /// the runtime starts on first use.
    pub fn device(self, index: usize) -> Result<Device, BackendUnavailable> {
        #[cfg(not(any(feature = "wgpu", feature = "cuda")))]
        let _ = index;
        match self {
            #[cfg(feature = "flex")]
            Backend::Flex => Ok(Device::flex()),
            #[cfg(feature = "cpu")]
            Backend::Cpu => Ok(Device::cpu()),
            #[cfg(feature = "wgpu")]
            Backend::Wgpu => Ok(Device::wgpu(wgpu_kind(index))),
            #[cfg(feature = "vulkan")]
            Backend::Vulkan => Ok(Device::vulkan(wgpu_kind(index))),
            #[cfg(feature = "metal")]
            Backend::Metal => Ok(Device::metal(wgpu_kind(index))),
            #[cfg(feature = "cuda")]
            Backend::Cuda => Ok(Device::cuda(index)),
            #[allow(unreachable_patterns)]
            other => Err(BackendUnavailable { name: other.name() }),
        }
    }
}

/// The adapter's name when `device` is a software rasterizer (Mesa's lavapipe/llvmpipe,
/// SwiftShader): correct but far slower than the `flex` CPU backend, worth a warning. `None` for
/// hardware GPUs; meant for wgpu-family devices (a device that is no card, per CubeCL, counts as
/// software). Opens the device.
pub fn software_adapter(device: &Device) -> Option<String> {
    #[cfg(feature = "wgpu")]
    {
        let id = device.identity()?;
        let name = id.name.to_lowercase();
        let software = ["llvmpipe", "lavapipe", "swiftshader", "softpipe", "warp"]
            .iter()
            .any(|s| name.contains(s));
        if software || id.physical.is_none() {
            return Some(id.name);
        }
    }
    #[cfg(not(feature = "wgpu"))]
    let _ = device;
    None
}

/// Adapter selection for the wgpu family: the default adapter for index 0, else the index-th
/// discrete GPU.
#[cfg(feature = "wgpu")]
fn wgpu_kind(index: usize) -> burn::prelude::DeviceKind {
    if index == 0 {
        burn::prelude::DeviceKind::DefaultDevice
    } else {
        burn::prelude::DeviceKind::DiscreteGpu(index)
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Backend {
    type Err = UnknownBackend;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BACKENDS
            .into_iter()
            .find(|b| b.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownBackend(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for b in BACKENDS {
            assert_eq!(b.name().parse::<Backend>(), Ok(b));
            assert_eq!(
                serde_json::to_string(&b).unwrap(),
                format!("\"{}\"", b.name())
            );
        }
        assert_eq!("CUDA".parse::<Backend>(), Ok(Backend::Cuda));
        assert!("tpu".parse::<Backend>().is_err());
    }

    #[test]
    fn missing_backends_say_which_feature_is_needed() {
        for b in BACKENDS {
            match b.device(0) {
                Ok(_) => assert!(b.is_compiled(), "{b}"),
                Err(e) => {
                    assert!(!b.is_compiled(), "{b}");
                    assert!(e.to_string().contains(b.name()), "{e}");
                }
            }
        }
    }
}
