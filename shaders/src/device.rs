//! Device probing: whether a GPU backend really works on this machine before a program (or a
//! test) commits to it.

use burn::prelude::*;
use burn::tensor::DType;

/// Checks `make()`'s device with a tiny computation. `Err` says why it cannot be used: the device
/// could not be created (Burn panics in that case: no adapter, no driver; the panic is caught
/// here and its message still goes to the panic hook), or it computed a wrong result.
pub fn probe(
    what: &str,
    make: impl FnOnce() -> Device + std::panic::UnwindSafe,
) -> Result<Device, String> {
    let probe = std::panic::catch_unwind(|| {
        let device = make();
        let t = Tensor::<1>::from_floats([1.0, 2.0], &device);
        let values = (t * 2.0).cast(DType::F32).into_data().try_to_vec::<f32>();
        (device, values)
    });
    match probe {
        Ok((device, Ok(v))) if v == [2.0, 4.0] => Ok(device),
        Ok(_) => Err(format!("the {what} device computed a wrong result")),
        Err(_) => Err(format!("no {what} device could be created here")),
    }
}

/// Creates the default wgpu device (Vulkan, Metal, DX12 or WebGPU; a software driver such as
/// Mesa's lavapipe counts) and checks it with [`probe`].
#[cfg(feature = "wgpu")]
pub fn probe_wgpu() -> Result<Device, String> {
    probe("Vulkan/Metal/WebGPU", || {
        Device::wgpu(DeviceKind::DefaultDevice)
    })
}

/// The default Vulkan device with kernels compiled to SPIR-V, checked with [`probe`].
#[cfg(feature = "vulkan")]
pub fn probe_vulkan() -> Result<Device, String> {
    probe("Vulkan (SPIR-V)", || {
        Device::vulkan(DeviceKind::DefaultDevice)
    })
}

/// CUDA device 0, checked with [`probe`].
#[cfg(feature = "cuda")]
pub fn probe_cuda() -> Result<Device, String> {
    probe("CUDA", || Device::cuda(0))
}

/// Every GPU device that works here, by name, each checked with [`probe`]: wgpu (a software
/// adapter such as lavapipe counts; set `BLIP3_SKIP_WGPU` to skip it), and Vulkan (SPIR-V) and
/// CUDA in builds with those features. Each one missing is reported on stderr as
/// `skipping NAME: why`. Used by the kernel and model parity tests.
pub fn gpu_devices() -> Vec<(&'static str, Device)> {
    let mut out = Vec::new();
    #[cfg(feature = "wgpu")]
    if std::env::var_os("BLIP3_SKIP_WGPU").is_some() {
        eprintln!("skipping wgpu: BLIP3_SKIP_WGPU is set");
    } else {
        match probe_wgpu() {
            Ok(d) => out.push(("wgpu", d)),
            Err(why) => eprintln!("skipping wgpu: {why}"),
        }
    }
    #[cfg(feature = "vulkan")]
    match probe_vulkan() {
        Ok(d) => out.push(("vulkan", d)),
        Err(why) => eprintln!("skipping vulkan: {why}"),
    }
    #[cfg(feature = "cuda")]
    match probe_cuda() {
        Ok(d) => out.push(("cuda", d)),
        Err(why) => eprintln!("skipping cuda: {why}"),
    }
    out
}
