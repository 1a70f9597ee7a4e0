//! `blip3 train --config stage.toml`: runs one training stage (see `blip3_train::config` and
//! docs/training.md for the config format).

use std::path::PathBuf;

use anyhow::{Context, Result};
use blip3_train::{RunOptions, TrainConfig};

/// Arguments of `blip3 train`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The stage configuration (TOML).
    #[arg(long)]
    pub config: PathBuf,
    /// Continue from the newest complete, verified checkpoint of the output directory (newer
    /// incomplete or corrupt ones are reported and passed over).
    #[arg(long, conflicts_with = "overwrite")]
    pub resume: bool,
    /// Start afresh in an output directory that holds a previous run, removing its outputs
    /// (checkpoints, final/, export/, logs, plot, summary) first.
    #[arg(long)]
    pub overwrite: bool,
    /// Override the output directory.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Override the number of optimizer steps.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Override the compute device kind (cuda, vulkan, metal, wgpu, cpu, flex).
    #[arg(long, value_parser = super::common::parse_device)]
    pub device: Option<blip3_model::Backend>,
}

/// Runs the command.
pub fn run(args: Args) -> Result<()> {
    let cfg = args.stage_config()?;
    run_config(cfg, &args)
}

impl Args {
    /// The stage config with this command line's overrides applied (validated by
    /// [`run_config`]).
    pub fn stage_config(&self) -> Result<TrainConfig> {
        let mut cfg = TrainConfig::read(&self.config)
            .with_context(|| format!("reading {}", self.config.display()))?;
        if let Some(out) = &self.out {
            cfg.out_dir = out.clone();
        }
        if let Some(steps) = self.steps {
            cfg.optim.total_steps = steps;
            cfg.optim.warmup_steps = cfg.optim.warmup_steps.min(steps);
        }
        if let Some(d) = self.device {
            cfg.devices.kind = d;
        }
        Ok(cfg)
    }
}

/// Trains `cfg` with the run options of `args` and prints the summary.
pub fn run_config(cfg: TrainConfig, args: &Args) -> Result<()> {
    cfg.validate()
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.config.display()))?;
    pin_default_device(cfg.devices.kind);
    let summary = blip3_train::train(
        &cfg,
        &RunOptions {
            resume: args.resume,
            overwrite: args.overwrite,
        },
    )
    .with_context(|| format!("training stage {}", cfg.stage.name()))?;
    println!(
        "{}: {} steps, final train loss {}, valid loss {}, skipped {} steps, {} bad samples of {}",
        cfg.stage.name(),
        summary.steps,
        summary
            .final_train_loss
            .map_or("n/a".into(), |v| format!("{v:.4}")),
        summary
            .final_valid_loss
            .map_or("n/a".into(), |v| format!("{v:.4}")),
        summary.skipped_steps,
        summary.data.bad,
        summary.data.seen,
    );
    if let Some(w) = summary.resumed_from {
        println!("resumed after checkpoint {w}");
    }
    for r in &summary.rejected_checkpoints {
        println!(
            "passed over checkpoint {} (incomplete or corrupt): {}",
            r.window, r.reason
        );
    }
    println!("final model: {}", summary.final_dir.display());
    if let Some(e) = &summary.export_dir {
        println!("HF export: {}", e.display());
    }
    Ok(())
}

/// Makes Burn's default device the run's own backend when that is a CPU backend.
///
/// burn-train restores a checkpoint's optimizer state on `Device::default()`, which is the first
/// GPU backend compiled in (wgpu in the default build) unless `BURN_DEVICE` names another: a
/// `flex` run would start Vulkan/EGL just to `--resume`. An explicit `BURN_DEVICE` is kept.
fn pin_default_device(kind: blip3_model::Backend) {
    if kind.is_gpu() || !kind.is_compiled() || std::env::var_os("BURN_DEVICE").is_some() {
        return;
    }
    // SAFETY: called on the main thread before training starts; the command has started no other
    // thread yet, so nothing reads the environment concurrently.
    unsafe { std::env::set_var("BURN_DEVICE", kind.name()) };
}
