//! Options shared by several subcommands: device and dtype selection.

use anyhow::{Result, bail};
use burn::prelude::*;
use burn::tensor::DType;

/// The compute device, chosen at run time.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeviceKindArg {
    /// Pure-Rust CPU backend.
    #[default]
    Flex,
    /// Vulkan / Metal / WebGPU through wgpu.
    Wgpu,
    /// NVIDIA CUDA (build with `--features cuda`).
    Cuda,
}

/// Creates the device for `kind`.
pub fn device(kind: DeviceKindArg) -> Result<Device> {
    Ok(match kind {
        DeviceKindArg::Flex => Device::flex(),
        DeviceKindArg::Wgpu => {
            if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
                // Mesa's Vulkan loader warns without it; a private directory is enough.
                let dir = std::env::temp_dir().join(format!("blip3-xdg-{}", std::process::id()));
                std::fs::create_dir_all(&dir)?;
                // SAFETY: set before any other thread exists in this process.
                unsafe { std::env::set_var("XDG_RUNTIME_DIR", &dir) };
            }
            Device::wgpu(DeviceKind::DefaultDevice)
        }
        DeviceKindArg::Cuda => cuda_device()?,
    })
}

#[cfg(feature = "cuda")]
fn cuda_device() -> Result<Device> {
    Ok(Device::cuda(0))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device() -> Result<Device> {
    bail!("this blip3 binary was built without CUDA; rebuild with `--features cuda`")
}

/// Float dtype for weights and activations.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DTypeArg {
    /// 32-bit float.
    F32,
    /// bfloat16.
    Bf16,
    /// IEEE half.
    F16,
}

impl DTypeArg {
    /// The Burn dtype.
    pub fn dtype(self) -> DType {
        match self {
            DTypeArg::F32 => DType::F32,
            DTypeArg::Bf16 => DType::BF16,
            DTypeArg::F16 => DType::F16,
        }
    }
}

/// Fails early when `device` cannot compute in `dtype`.
pub fn check_dtype(device: &Device, dtype: Option<DType>) -> Result<()> {
    if let Some(d) = dtype
        && !device.supports_dtype(d)
    {
        bail!("the selected device does not support {d:?}; use --dtype f32");
    }
    Ok(())
}
