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
    /// Continue from the newest complete checkpoint of the output directory.
    #[arg(long)]
    pub resume: bool,
    /// Override the output directory.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Override the number of optimizer steps.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Override the compute device kind (flex, wgpu, cuda).
    #[arg(long)]
    pub device: Option<String>,
}

/// Runs the command.
pub fn run(args: Args) -> Result<()> {
    let mut cfg = TrainConfig::load(&args.config)
        .with_context(|| format!("reading {}", args.config.display()))?;
    if let Some(out) = args.out {
        cfg.out_dir = out;
    }
    if let Some(steps) = args.steps {
        cfg.optim.total_steps = steps;
        cfg.optim.warmup_steps = cfg.optim.warmup_steps.min(steps);
    }
    if let Some(d) = args.device {
        cfg.devices.kind = d;
    }
    let summary = blip3_train::train(
        &cfg,
        &RunOptions {
            resume: args.resume,
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
    println!("final model: {}", summary.final_dir.display());
    if let Some(e) = &summary.export_dir {
        println!("HF export: {}", e.display());
    }
    Ok(())
}
