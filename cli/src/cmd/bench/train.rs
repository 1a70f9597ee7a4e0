//! `blip3 bench train`: time and peak memory of one training step (forward, backward, AdamW) of
//! the tiny and mid-size configs, the same step in PyTorch when a Python with torch is present
//! (reported as a ratio), and the memory each memory-saving option saves on the mid config
//! (LoRA, activation checkpointing, bf16 mixed precision). Each measurement runs in a child
//! process so its peak resident memory (VmHWM) is its own. On a GPU machine, `--device cuda
//! --configs full` gives the full-size step time, tokens/s and MFU.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use blip3_model::{ImageInput, LoraConfig, MultimodalInput, XGenMMConfig};
use blip3_train::config::{DpoReference, FreezeSection, Stage};
use blip3_train::optim::set_trainable;
use blip3_train::stage::{StageModel, StageSettings, StepGuard, VlmBatch};
use burn::optim::AdamWConfig;
use burn::prelude::*;
use burn::tensor::{DType, Distribution};
use burn::train::TrainStep;

use crate::cmd::common::{DeviceKindArg, device, parse_device};

/// Arguments of `blip3 bench train`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Configs to measure (comma separated): tiny, mid, full.
    #[arg(long, default_value = "tiny,mid")]
    pub configs: String,
    /// Samples per step.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Text tokens per sample (each sample also has one 2x2 any-res image).
    #[arg(long, default_value_t = 64)]
    pub text_tokens: usize,
    /// Timed steps (after one warm-up step).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Device.
    #[arg(long, value_parser = parse_device, default_value_t = DeviceKindArg::Flex)]
    pub device: DeviceKindArg,
    /// Peak dense bf16 throughput of the device in TFLOP/s, for MFU (H100 SXM: 989, H200: 989).
    #[arg(long)]
    pub peak_tflops: Option<f64>,
    /// Skip the memory-option comparison on the mid config.
    #[arg(long)]
    pub no_options: bool,
    /// Measure exactly these options per config instead of the default set (comma separated;
    /// each is `baseline` or a `+`-joined set of `bf16`, `lora`, `checkpointing` (Burn's
    /// op-level), `layers` (per-decoder-layer checkpointing), e.g. `baseline,bf16,lora+bf16`).
    #[arg(long)]
    pub options: Option<String>,
    /// Device of the PyTorch reference (`cpu` or `cuda`; default: `cuda` with `--device cuda`,
    /// else `cpu`). On a GPU machine, `--device wgpu --torch-device cuda` compares blip3 through
    /// Vulkan with PyTorch on CUDA.
    #[arg(long)]
    pub torch_device: Option<String>,
    /// Python with torch for the reference measurement (default `python3`).
    #[arg(long, env = "BLIP3_PYTHON", default_value = "python3")]
    pub python: String,
    /// Internal: measure one (config, option) in this process and print JSON.
    #[arg(long, hide = true)]
    pub child: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Measurement {
    config: String,
    option: String,
    ms_per_step: f64,
    /// The first (warm-up) step in seconds: on CubeCL devices it includes compiling and
    /// autotuning the step's kernels, minutes on a fresh autotune cache (docs/kernels.md).
    #[serde(default)]
    first_step_s: f64,
    tokens_per_s: f64,
    peak_rss_mb: f64,
    /// GPU memory in use after the steps (GPU devices; Burn's pool keeps its pages, so this is
    /// the step's peak reservation), read from `nvidia-smi`.
    gpu_mem_mb: Option<f64>,
    trainable_params: usize,
    params: usize,
    mfu: Option<f64>,
}

fn preset(name: &str) -> Result<XGenMMConfig> {
    Ok(match name {
        "tiny" => XGenMMConfig::tiny(1968),
        "mid" => XGenMMConfig::mid(),
        "full" => XGenMMConfig::xgenmm_phi3_mini_v1_5(),
        other => bail!("unknown config {other} (tiny, mid, full)"),
    })
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// GPU memory in use on the first NVIDIA GPU according to `nvidia-smi`, in MiB (each
/// measurement runs alone, so this is its own; Vulkan processes are not listed per process).
fn gpu_mem_mb() -> Option<f64> {
    let out = Command::new("nvidia-smi")
        .args(["--query-gpu=memory.used", "--format=csv,noheader,nounits"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

fn batch(cfg: &XGenMMConfig, args: &Args, device: &Device) -> VlmBatch {
    let s = cfg.vision.image_size;
    let image_id = cfg.initial_tokenizer_len as u32;
    let mut ids = Vec::new();
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for b in 0..args.batch {
        let mut row: Vec<u32> = (0..args.text_tokens as u32)
            .map(|i| 10 + (i * 7 + b as u32) % 500)
            .collect();
        row[1] = image_id;
        let lab: Vec<i64> = row
            .iter()
            .map(|&t| if t == image_id { -100 } else { t as i64 })
            .collect();
        ids.push(row);
        labels.push(lab);
        let pixels = Tensor::<4>::random([5, 3, s, s], Distribution::Uniform(-1.0, 1.0), device);
        images.push(vec![ImageInput {
            pixels,
            grid: Some((2, 2)),
            original_size: (2 * s, 2 * s),
        }]);
    }
    VlmBatch {
        input: MultimodalInput {
            input_ids: ids,
            images,
            labels: Some(labels),
        },
        rejected: None,
    }
}

/// Model FLOPs of one step: 6 per parameter per token for the decoder and resampler, 2 per
/// parameter per token for the frozen ViT forward (attention scores not counted).
fn step_flops(cfg: &XGenMMConfig, args: &Args, vit: usize, rest: usize) -> f64 {
    let views = 5.0;
    let vit_tokens = (cfg.vision.image_size / cfg.vision.patch_size).pow(2) as f64 * views;
    let lm_tokens = (args.text_tokens - 1) as f64 + views * cfg.resampler.num_latents as f64;
    args.batch as f64 * (2.0 * vit as f64 * vit_tokens + 6.0 * rest as f64 * lm_tokens)
}

fn measure(config: &str, option: &str, args: &Args) -> Result<Measurement> {
    let cfg = preset(config)?;
    let dev = device(args.device)?;
    dev.seed(1);
    let has = |o: &str| option.split('+').any(|x| x == o);
    let ad = if has("checkpointing") {
        dev.clone().autodiff().gradient_checkpointing()
    } else {
        dev.clone().autodiff()
    };
    let model = cfg.init(&ad);
    let params = model.num_params();
    let vit = model.vision_encoder.num_params();
    let lora = has("lora").then(|| LoraConfig {
        rank: 16,
        alpha: 32.0,
        dropout: 0.0,
        targets: LoraConfig::TARGETS.iter().map(|s| s.to_string()).collect(),
    });
    let policy = set_trainable(model, &FreezeSection::default(), lora.as_ref(), &ad);
    let trainable = blip3_train::optim::trainable_params(&policy);
    let settings = StageSettings {
        stage: Stage::Pretrain,
        loss_scale: 1.0,
        dpo_beta: 0.1,
        dpo_reference: DpoReference::PolicyCopy,
        compute_dtype: has("bf16").then_some(DType::BF16),
        checkpoint_layers: has("layers"),
        grad_clip: Some(1.0),
        guard: Arc::new(StepGuard::new(3)),
        noised_negatives: None,
    };
    let mut model = StageModel::new(policy, None, settings);
    let mut optim = AdamWConfig::new().init();
    let b = batch(&cfg, args, &ad);
    let tokens: usize = b.input.labels.as_ref().map_or(0, |l| {
        l.iter()
            .map(|r| r.iter().filter(|&&x| x >= 0).count())
            .sum()
    });
    let mut times = Vec::new();
    let mut first_step_s = 0.0;
    log::info!(
        "{config}/{option}: first step (on CubeCL devices it compiles and autotunes the kernels)"
    );
    for i in 0..=args.steps {
        let t0 = Instant::now();
        let out = TrainStep::step(&model, b.clone());
        model = TrainStep::optimize(model, &mut optim, 1e-4.into(), out.grads);
        // Synchronise: read one updated weight.
        let _ = model.policy.lang_model.model.norm.gamma.val().into_data();
        let took = t0.elapsed().as_secs_f64();
        if i == 0 {
            first_step_s = took;
            log::info!("{config}/{option}: first step took {took:.2} s");
        } else {
            times.push(took);
        }
    }
    times.sort_by(f64::total_cmp);
    let t = times[times.len() / 2];
    let mfu = args
        .peak_tflops
        .map(|p| step_flops(&cfg, args, vit, params - vit) / t / (p * 1e12));
    Ok(Measurement {
        config: config.into(),
        option: option.into(),
        ms_per_step: t * 1e3,
        first_step_s,
        tokens_per_s: tokens as f64 / t,
        peak_rss_mb: peak_rss_mb(),
        gpu_mem_mb: (args.device.is_gpu()).then(gpu_mem_mb).flatten(),
        trainable_params: trainable,
        params,
        mfu,
    })
}

fn child(args: &Args, config: &str, option: &str) -> Result<Measurement> {
    let exe = crate::cmd::common::own_executable()?;
    // The child's messages (its progress through the first step, warnings) go straight to our
    // stderr, so a run stopped by a time limit still shows how far each measurement got.
    let out = Command::new(exe)
        .stderr(std::process::Stdio::inherit())
        .args(["bench", "train", "--child", &format!("{config}:{option}")])
        .args([
            "--batch",
            &args.batch.to_string(),
            "--text-tokens",
            &args.text_tokens.to_string(),
        ])
        .args([
            "--steps",
            &args.steps.to_string(),
            "--device",
            &args.device.to_string(),
        ])
        .args(
            args.peak_tflops
                .map(|p| vec!["--peak-tflops".to_string(), p.to_string()])
                .unwrap_or_default(),
        )
        .output()
        .context("running a benchmark child")?;
    if !out.status.success() {
        bail!(
            "{config}/{option}: the measuring process failed ({}); its messages are above",
            out.status
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(serde_json::from_str(text.lines().last().unwrap_or(""))?)
}

/// The PyTorch step in `precision` (`f32`, or `bf16` autocast) on the same device kind: ms/step and
/// peak memory (RSS on CPU, GPU memory in use on CUDA).
fn torch(args: &Args, config: &str, precision: &str) -> Option<(f64, f64)> {
    let script: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "..",
        "train",
        "benches",
        "torch_train_step.py",
    ]
    .iter()
    .collect();
    let cfg = preset(config).ok()?;
    let out = Command::new(&args.python)
        .arg(&script)
        .arg(serde_json::to_string(&cfg.to_hf_value()).ok()?)
        .args([
            args.batch.to_string(),
            args.text_tokens.to_string(),
            args.steps.to_string(),
            args.torch_device
                .clone()
                .unwrap_or_else(|| match args.device {
                    DeviceKindArg::Cuda => "cuda".into(),
                    _ => "cpu".into(),
                }),
            precision.to_string(),
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "torch reference skipped: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
        return None;
    }
    let v: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last()?).ok()?;
    let mem = v["gpu_mem_mb"].as_f64().or(v["peak_rss_mb"].as_f64())?;
    Some((v["ms_per_step"].as_f64()?, mem))
}

/// Runs the benchmark.
pub fn run(args: Args) -> Result<()> {
    if let Some(spec) = &args.child {
        let (config, option) = spec.split_once(':').unwrap_or((spec.as_str(), "baseline"));
        let m = measure(config, option, &args)?;
        println!("{}", serde_json::to_string(&m)?);
        return Ok(());
    }
    println!(
        "training step: batch {} x ({} text tokens + one 2x2 any-res image), AdamW, {:?}, median of {} steps",
        args.batch, args.text_tokens, args.device, args.steps
    );
    let gpu = args.device.is_gpu();
    let memory = if gpu { "GPU MiB" } else { "peak RSS MB" };
    println!(
        "{:<6} {:<14} {:>11} {:>9} {:>11} {:>12} {:>14} {:>8}",
        "config", "option", "ms/step", "first s", "tokens/s", memory, "trainable", "MFU"
    );
    let mem = |m: &Measurement| {
        if gpu {
            m.gpu_mem_mb.unwrap_or(f64::NAN)
        } else {
            m.peak_rss_mb
        }
    };
    let print = |m: &Measurement| {
        println!(
            "{:<6} {:<14} {:>11.1} {:>9.2} {:>11.0} {:>12.0} {:>14} {:>8}",
            m.config,
            m.option,
            m.ms_per_step,
            m.first_step_s,
            m.tokens_per_s,
            mem(m),
            m.trainable_params,
            m.mfu.map_or("-".into(), |v| format!("{:.1}%", v * 100.0))
        );
    };
    let print_torch = |config: &str, precision: &str, ours: &Measurement| {
        if let Some((ms, memory)) = torch(&args, config, precision) {
            println!(
                "{:<6} {:<14} {:>11.1} {:>9} {:>11} {:>12.0}   -> torch/blip3 time ratio {:.2}x (>1: blip3 faster)",
                config,
                format!("pytorch {precision}"),
                ms,
                "",
                "",
                memory,
                ms / ours.ms_per_step
            );
        }
    };
    if let Some(options) = &args.options {
        const KNOWN: [&str; 5] = ["baseline", "bf16", "lora", "checkpointing", "layers"];
        for part in options.split(',').flat_map(|o| o.trim().split('+')) {
            if !KNOWN.contains(&part) {
                bail!(
                    "--options: unknown option {part:?} (one of {})",
                    KNOWN.join(", ")
                );
            }
        }
    }
    for config in args.configs.split(',').map(str::trim) {
        if let Some(options) = &args.options {
            for option in options.split(',').map(str::trim) {
                match child(&args, config, option) {
                    Ok(m) => {
                        print(&m);
                        // PyTorch's step trains every weight: compared only where blip3 does.
                        match option {
                            "baseline" => print_torch(config, "f32", &m),
                            "bf16" => print_torch(config, "bf16", &m),
                            _ => {}
                        }
                    }
                    Err(e) => println!("{config} {option}: failed: {e}"),
                }
            }
            continue;
        }
        let base = child(&args, config, "baseline")?;
        print(&base);
        print_torch(config, "f32", &base);
        // On a GPU, bf16 mixed precision is the configuration that matters: compare it too.
        if gpu {
            match child(&args, config, "bf16") {
                Ok(m) => {
                    print(&m);
                    print_torch(config, "bf16", &m);
                }
                Err(e) => println!("{config} bf16: failed: {e}"),
            }
        }
        if config == "mid" && !args.no_options {
            let options: &[&str] = if gpu {
                &["lora", "checkpointing", "layers"]
            } else {
                &["lora", "checkpointing", "layers", "bf16"]
            };
            for &option in options {
                match child(&args, config, option) {
                    Ok(m) => {
                        print(&m);
                        println!(
                            "{:<6} {:<14} saves {:.0} {memory} vs baseline ({:+.0}% time)",
                            "",
                            option,
                            mem(&base) - mem(&m),
                            (m.ms_per_step / base.ms_per_step - 1.0) * 100.0
                        );
                    }
                    Err(e) => println!("{config} {option}: failed: {e}"),
                }
            }
        }
    }
    Ok(())
}
