//! Device probing: whether a GPU backend really works on this machine before a program (or a
//! test) commits to it.

use burn::prelude::*;
use burn::tensor::DType;

/// Creates the default wgpu device (Vulkan, Metal, DX12 or WebGPU; a software driver such as
/// Mesa's lavapipe counts) and checks it with a tiny computation. `Err` says why it cannot be
/// used: no adapter could be created (Burn panics in that case; the panic is caught here and
/// its message still goes to the panic hook), or the adapter computed a wrong result.
pub fn probe_wgpu() -> Result<Device, String> {
    let probe = std::panic::catch_unwind(|| {
        let device = Device::wgpu(DeviceKind::DefaultDevice);
        let t = Tensor::<1>::from_floats([1.0, 2.0], &device);
        let values = (t * 2.0).cast(DType::F32).into_data().try_to_vec::<f32>();
        (device, values)
    });
    match probe {
        Ok((device, Ok(v))) if v == [2.0, 4.0] => Ok(device),
        Ok(_) => Err("the adapter computed a wrong result".into()),
        Err(_) => Err("no Vulkan/Metal/WebGPU adapter could be created here".into()),
    }
}
