//! Options shared by several subcommands: device and dtype selection, and opening a model
//! directory for generation (generate, chat, serve, bench serve).

use std::path::Path;

use anyhow::{Context, Result, bail};
use blip3_model::loader::LoadOptions;
use blip3_processor::{Loaded, TokenizerSource};
use burn::prelude::*;
use burn::tensor::DType;

/// The program this command line starts for its own child processes (a benchmark's measuring
/// process, loopback workers, timed training runs): `BLIP3_EXE` when set, else this executable.
/// A program that carries the CLI inside another binary sets it to a launcher that runs the CLI
/// (the GPU check's suite binary: docs/kernels.md, "GPU check script").
pub fn own_executable() -> Result<std::path::PathBuf> {
    match std::env::var_os("BLIP3_EXE") {
        Some(exe) if !exe.is_empty() => Ok(exe.into()),
        _ => std::env::current_exe().context("locating the blip3 executable"),
    }
}

/// The compute device, chosen at run time: `--device cuda|vulkan|metal|wgpu|cpu|flex`.
pub use blip3_model::Backend as DeviceKindArg;

/// Parses a `--device` value (for clap's `value_parser`).
pub fn parse_device(s: &str) -> Result<DeviceKindArg, String> {
    s.parse()
        .map_err(|e: blip3_model::device::UnknownBackend| e.to_string())
}

/// Creates the first device of `kind`. On the wgpu family, warns when the adapter is a software
/// rasterizer (lavapipe/llvmpipe): correct, but far slower than the `flex` CPU backend.
pub fn device(kind: DeviceKindArg) -> Result<Device> {
    if matches!(
        kind,
        DeviceKindArg::Wgpu | DeviceKindArg::Vulkan | DeviceKindArg::Metal
    ) && std::env::var_os("XDG_RUNTIME_DIR").is_none()
    {
        // Mesa's Vulkan loader warns without it; a private directory is enough.
        let dir = std::env::temp_dir().join(format!("blip3-xdg-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        // SAFETY: set before any other thread exists in this process.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", &dir) };
    }
    let device = kind.device(0)?;
    if matches!(
        kind,
        DeviceKindArg::Wgpu | DeviceKindArg::Vulkan | DeviceKindArg::Metal
    ) && let Some(name) = blip3_model::device::software_adapter(&device)
    {
        log::warn!(
            "--device {kind} runs on a software adapter ({name}): correct, but far slower than \
             --device flex on this machine"
        );
    }
    if matches!(kind, DeviceKindArg::Cpu) {
        log::warn!(
            "--device cpu autotunes its kernels on first use (minutes for a training step; the \
             choices are cached on disk for later runs) and then runs far slower than --device \
             flex, which is the CPU backend to use (docs/kernels.md)"
        );
    }
    Ok(device)
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

/// Opens a model directory (weights, tokenizer, image settings) on `device`, cast to `dtype`
/// when given (else the checkpoint's dtype). Errors name the directory.
pub fn load_model_dir(dir: &Path, device: &Device, dtype: Option<DTypeArg>) -> Result<Loaded> {
    let dtype = dtype.map(|d| d.dtype());
    check_dtype(device, dtype)?;
    blip3_processor::load(
        dir,
        &TokenizerSource::ModelDir,
        device,
        LoadOptions { dtype },
    )
    .with_context(|| format!("loading the model from {}", dir.display()))
}
