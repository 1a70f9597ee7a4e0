//! The five-stage recipe over the built-in synthetic corpus (`blip3 data synth`): mixture recipes
//! and stage configs chained so each stage starts from the previous stage's final model. Used by
//! `blip3 demo` and by the learning tests.

use std::path::{Path, PathBuf};

use blip3_model::LoraConfig;

use crate::config::{DpoReference, FreezeSection, Renderer, Stage, TrainConfig, relative_to};
use crate::error::TrainError;

/// Sizes of a synthetic five-stage run.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SyntheticPlan {
    /// Model preset of the first stage (`tiny`).
    pub preset: String,
    /// Optimizer steps per stage, in stage order.
    pub steps: [usize; 5],
    /// Peak learning rates per stage.
    pub lr: [f64; 5],
    /// Samples per batch.
    pub batch_size: usize,
    /// Loader worker threads.
    pub num_workers: usize,
    /// Seed of every stage.
    pub seed: u64,
    /// Checkpoint cadence (optimizer steps).
    pub every_steps: usize,
    /// Maximum sequence length.
    pub max_len: usize,
}

impl Default for SyntheticPlan {
    fn default() -> Self {
        Self {
            preset: "tiny".into(),
            steps: [800, 400, 150, 150, 200],
            lr: [2e-3, 1e-3, 5e-4, 1e-3, 2e-3],
            batch_size: 16,
            num_workers: 2,
            seed: 42,
            every_steps: 100,
            max_len: 512,
        }
    }
}

fn write(path: &Path, text: &str) -> Result<(), TrainError> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).map_err(|e| TrainError::io(p, e))?;
    }
    std::fs::write(path, text).map_err(|e| TrainError::io(path, e))
}

/// Writes the stage recipes for the corpus at `corpus` into `run/recipes/` and returns the five
/// stage configs (outputs under `run/<stage>/`).
pub fn synthetic_stages(
    corpus: &Path,
    run: &Path,
    plan: &SyntheticPlan,
) -> Result<Vec<TrainConfig>, TrainError> {
    let recipes = run.join("recipes");
    // Paths in a generated file are relative to that file (docs/training.md, "Paths"), so the run
    // folder works from any working directory and can be moved as a whole.
    let rel = relative_to(corpus, &recipes)?;
    let q = |sub: &str| -> String {
        let p = if sub.is_empty() {
            rel.clone()
        } else {
            rel.join(sub)
        };
        // A JSON string is a valid YAML double-quoted scalar: any path survives the round trip.
        serde_json::to_string(&p.to_string_lossy()).unwrap_or_default()
    };
    let seed = plan.seed;
    let caption = format!(
        "  - name: captions\n    kind: webdataset\n    paths: [{}]\n    weight: 3\n",
        q("pretrain/captions")
    );
    let interleaved = format!(
        "  - name: interleaved\n    kind: jsonl_interleaved\n    paths: [{}]\n    image_root: {}\n    weight: 1\n",
        q("pretrain/interleaved/docs.jsonl"),
        q("pretrain/interleaved")
    );
    let llava = |w: u32| {
        format!(
            "  - name: sft_single\n    kind: llava\n    paths: [{}]\n    image_root: {}\n    weight: {w}\n",
            q("sft/llava.json"),
            q("sft")
        )
    };
    let multi = format!(
        "  - name: sft_multi\n    kind: llava\n    paths: [{}]\n    image_root: {}\n    weight: 2\n",
        q("sft/multi_image.json"),
        q("sft")
    );
    let dpo = format!(
        "  - name: dpo_pairs\n    kind: dpo\n    paths: [{}]\n    image_root: {}\n    weight: 1\n",
        q("dpo/pairs.jsonl"),
        q("dpo")
    );
    let safety = format!(
        "  - name: vlguard\n    kind: vlguard\n    paths: [{}]\n    image_root: {}\n    weight: 2\n",
        q("safety/train.json"),
        q("safety")
    );
    let head = format!("seed: {seed}\non_exhausted: restart\nsources:\n");
    let files = [
        ("pretrain.yaml", format!("{head}{caption}{interleaved}")),
        ("sft.yaml", format!("{head}{}", llava(1))),
        ("sft_interleave.yaml", format!("{head}{multi}{}", llava(1))),
        ("dpo.yaml", format!("{head}{dpo}")),
        ("safety.yaml", format!("{head}{safety}{}", llava(1))),
    ];
    for (name, text) in &files {
        write(&recipes.join(name), text)?;
    }
    let stages = [
        Stage::Pretrain,
        Stage::Sft,
        Stage::SftInterleave,
        Stage::Dpo,
        Stage::Safety,
    ];
    let mut out = Vec::new();
    let mut init = plan.preset.clone();
    for (i, stage) in stages.into_iter().enumerate() {
        let mut cfg = TrainConfig::new(stage, recipes.join(files[i].0));
        cfg.out_dir = run.join(stage.name());
        cfg.seed = seed + i as u64;
        cfg.model.init = init.clone();
        cfg.data.batch_size = plan.batch_size;
        cfg.data.num_workers = plan.num_workers;
        cfg.data.max_len = plan.max_len;
        cfg.optim.lr = plan.lr[i];
        cfg.optim.total_steps = plan.steps[i];
        cfg.optim.warmup_steps = (plan.steps[i] / 10).max(1);
        cfg.optim.min_lr = plan.lr[i] * 0.1;
        cfg.optim.weight_decay = 0.0;
        cfg.checkpoint.every_steps = plan.every_steps.min(plan.steps[i]);
        cfg.checkpoint.keep_last = 1;
        cfg.monitor.renderer = Renderer::Plain;
        cfg.monitor.log_every = 50;
        cfg.freeze = FreezeSection::default();
        match stage {
            // The tiny ViT is random: pre-training trains it too, unlike the released recipe
            // whose SigLIP is pre-trained and frozen.
            Stage::Pretrain if plan.preset == "tiny" => cfg.freeze.vision = false,
            Stage::Dpo | Stage::Safety => {
                cfg.lora = Some(LoraConfig {
                    rank: 8,
                    alpha: 16.0,
                    dropout: 0.0,
                    targets: LoraConfig::TARGETS.iter().map(|s| s.to_string()).collect(),
                });
                cfg.freeze.resampler = true;
                // DPO adapts only the LoRA weights (the paper's ~2.5%); safety also trains the
                // embeddings and head, which the tiny model needs for the refusal's tokens (its
                // earlier stages never produced them).
                cfg.freeze.embeddings = stage == Stage::Dpo;
                cfg.dpo.reference = DpoReference::LoraBase;
                cfg.dpo.beta = 0.1;
            }
            _ => {}
        }
        init = cfg.out_dir.join("final").display().to_string();
        out.push(cfg);
    }
    Ok(out)
}

/// The final model directory of a stage config.
pub fn final_dir(cfg: &TrainConfig) -> PathBuf {
    cfg.out_dir.join("final")
}
