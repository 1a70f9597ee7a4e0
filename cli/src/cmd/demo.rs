//! `blip3 demo`: the main job with built-in defaults. Writes the synthetic corpus, trains the tiny
//! xGen-MM through the five stages (pre-training, SFT, interleaved SFT, DPO, safety), measures
//! each stage's held-out check before and after it, prints a table (also saved as
//! `demo_report.json`) and ends with a generation on a held-out image.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use blip3_data::synth::{CorpusManifest, SynthConfig, write_corpus};
use blip3_data::tokenizer::Blip3Tokenizer;
use blip3_eval::learning::{Check, CheckOptions, run_check};
use blip3_model::XGenMMConfig;
use blip3_model::loader::save_checkpoint;
use blip3_train::config::Stage;
use blip3_train::recipes::{SyntheticPlan, synthetic_stages};
use blip3_train::{RunOptions, train};
use burn::prelude::*;

/// Arguments of `blip3 demo`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Output directory (corpus, stage runs, reports).
    #[arg(long, default_value = "runs/demo")]
    pub out: PathBuf,
    /// Synthetic corpus size: `tiny` (seconds, for a smoke run) or `default`.
    #[arg(long, default_value = "default")]
    pub corpus: String,
    /// Multiply every stage's step count (e.g. 0.1 for a quick look).
    #[arg(long, default_value_t = 1.0)]
    pub steps_scale: f64,
    /// Seed of corpus and training.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Held-out items per check.
    #[arg(long, default_value_t = 96)]
    pub eval_items: usize,
    /// Skip the evaluations.
    #[arg(long)]
    pub skip_eval: bool,
    /// Reuse stages that already finished in the output directory.
    #[arg(long)]
    pub reuse: bool,
}

/// The checks of each stage: the first is the one the stage must improve.
pub fn stage_checks(stage: Stage) -> &'static [Check] {
    match stage {
        Stage::Pretrain => &[Check::CaptionCider],
        Stage::Sft => &[Check::VqaAccuracy],
        Stage::SftInterleave => &[Check::VqaAccuracy],
        Stage::Dpo => &[Check::HallucinationPreference, Check::PopeAccuracy],
        Stage::Safety => &[Check::SafetyAsr, Check::SafetyHelpfulness],
    }
}

/// One row of the demo report.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Row {
    /// Stage name.
    pub stage: String,
    /// Check name.
    pub check: String,
    /// Before the stage.
    pub before: f64,
    /// After the stage.
    pub after: f64,
    /// Whether higher is better.
    pub higher_is_better: bool,
    /// Seconds of training.
    pub train_seconds: f64,
}

/// Saves the starting model of the first stage (the preset, seeded as training seeds it).
fn initial_model_dir(dir: &Path, seed: u64) -> Result<()> {
    let tok = Blip3Tokenizer::tiny()?;
    let device = Device::flex();
    device.seed(seed);
    let model = XGenMMConfig::tiny(tok.initial_len()).init(&device);
    save_checkpoint(&model, dir)?;
    tok.save(dir)?;
    Ok(())
}

/// Runs the command.
pub fn run(args: Args) -> Result<()> {
    let t0 = Instant::now();
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let corpus = args.out.join("corpus");
    let synth = SynthConfig::preset(&args.corpus)?.with_seed(args.seed);
    let reuse = CorpusManifest::load(&corpus.join("manifest.json"))
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
    let device = Device::flex();
    let opts = CheckOptions {
        corpus: corpus.clone(),
        limit: args.eval_items,
        scratch: args.out.join("eval"),
        batch_size: 16,
    };
    let mut previous = args.out.join("init");
    if !previous.join("model.bpk").exists() {
        initial_model_dir(&previous, stages[0].seed)?;
    }
    let mut rows: Vec<Row> = Vec::new();
    for cfg in &stages {
        let name = cfg.stage.name();
        println!("\n== stage {name} ({} steps) ==", cfg.optim.total_steps);
        let checks = stage_checks(cfg.stage);
        let mut before = Vec::new();
        if !args.skip_eval {
            for &c in checks {
                before.push(
                    run_check(&previous, c, &opts, &device)
                        .with_context(|| format!("{} before {name}", c.name()))?,
                );
            }
        }
        let final_dir = cfg.out_dir.join("final");
        let ts = Instant::now();
        if args.reuse
            && final_dir.join("model.bpk").exists()
            && cfg.out_dir.join("summary.json").exists()
        {
            println!("{name}: reusing {}", final_dir.display());
        } else {
            // Without --reuse a stage is trained again, replacing an earlier run of it.
            let opts = RunOptions {
                overwrite: true,
                ..RunOptions::default()
            };
            let s = train(cfg, &opts).with_context(|| format!("stage {name}"))?;
            println!(
                "{name}: final train loss {} after {} steps in {:.0}s",
                s.final_train_loss
                    .map_or("n/a".into(), |v| format!("{v:.3}")),
                s.steps,
                ts.elapsed().as_secs_f64(),
            );
        }
        let train_seconds = ts.elapsed().as_secs_f64();
        if !args.skip_eval {
            for (i, &c) in checks.iter().enumerate() {
                let after = run_check(&final_dir, c, &opts, &device)
                    .with_context(|| format!("{} after {name}", c.name()))?;
                println!("{name}: {} {:.3} -> {:.3}", c.name(), before[i], after);
                rows.push(Row {
                    stage: name.into(),
                    check: c.name().into(),
                    before: before[i],
                    after,
                    higher_is_better: c.higher_is_better(),
                    train_seconds,
                });
            }
        }
        previous = final_dir;
    }
    if !rows.is_empty() {
        println!("\n| stage | held-out check | before | after |\n|---|---|---|---|");
        for r in &rows {
            println!(
                "| {} | {}{} | {:.3} | {:.3} |",
                r.stage,
                r.check,
                if r.higher_is_better {
                    ""
                } else {
                    " (lower is better)"
                },
                r.before,
                r.after
            );
        }
        let path = args.out.join("demo_report.json");
        std::fs::write(&path, serde_json::to_string_pretty(&rows)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    demo_generation(&previous, &corpus)?;
    println!(
        "\ndemo finished in {:.0}s; final model: {}",
        t0.elapsed().as_secs_f64(),
        previous.display()
    );
    Ok(())
}

/// Generates a description of the first held-out image with the final model.
fn demo_generation(model: &Path, corpus: &Path) -> Result<()> {
    let images = corpus.join("eval/images");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&images)
        .with_context(|| format!("reading {}", images.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    let Some(image) = files.first() else {
        return Ok(());
    };
    println!(
        "\n$ blip3 generate --model {} --image {} --prompt \"What is in this picture?\"",
        model.display(),
        image.display()
    );
    super::generate::run(super::generate::Args {
        max_new_tokens: 32,
        ..super::generate::Args::new(
            model.to_path_buf(),
            vec![image.clone()],
            "What is in this picture?",
        )
    })
}
