//! Where a run starts: the output folder's rules (a previous run is refused unless `--resume` or
//! `--overwrite`), the newest complete and verified checkpoint to resume after, the settings exact
//! resume depends on (recorded with every checkpoint, compared on `--resume`), and the state saved
//! beside each checkpoint. docs/training.md §"Checkpoints, resume and the output directory".

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use blip3_data::loader::LoaderState;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{Rejected, latest_verified, read_state, remove_temp_files};
use crate::config::TrainConfig;
use crate::error::TrainError;
use crate::outdir;

/// Options of one invocation.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Continue from the newest complete, verified checkpoint in `<out_dir>/checkpoints`.
    pub resume: bool,
    /// Start afresh in an output directory that holds a previous run, removing that run's
    /// outputs first (without it such a directory is refused).
    pub overwrite: bool,
}

/// Everything saved with a checkpoint besides model, optimizer and scheduler.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunState {
    /// The data loader's position at the end of the window.
    pub loader: LoaderState,
    /// The run's seed (initialisation and dropout streams derive from it).
    pub seed: u64,
    /// Steps skipped so far.
    pub skipped_steps: usize,
    /// Optimizer steps done at the end of the window.
    pub steps: usize,
    /// The settings exact resume depends on ([`resume_settings`]), compared on `--resume`.
    pub settings: BTreeMap<String, serde_json::Value>,
}

/// The settings a checkpoint can only be resumed with unchanged, by dotted config name: those
/// that decide the data order, the batches, the schedule, the model and what is trained.
/// `data.train` stands for the recipe's contents (its SHA-1, `recipe_sha1`), model paths for the
/// directories they name.
pub fn resume_settings(
    cfg: &TrainConfig,
    recipe_sha1: &str,
) -> BTreeMap<String, serde_json::Value> {
    use serde_json::{Value, json};
    let path = |s: &str| -> Value {
        if crate::config::is_preset_name(s) {
            return json!(s);
        }
        let p = Path::new(s);
        json!(
            p.canonicalize()
                .unwrap_or_else(|_| p.to_path_buf())
                .display()
                .to_string()
        )
    };
    let value = |v: Result<Value, serde_json::Error>| v.unwrap_or(Value::Null);
    let o = &cfg.optim;
    let mut m = BTreeMap::new();
    m.insert("stage".into(), json!(cfg.stage.name()));
    m.insert("seed".into(), json!(cfg.seed));
    m.insert("model.init".into(), path(&cfg.model.init));
    m.insert("model.tokenizer".into(), path(&cfg.model.tokenizer));
    m.insert("data.train".into(), json!(format!("sha1:{recipe_sha1}")));
    m.insert("data.batch_size".into(), json!(cfg.data.batch_size));
    m.insert("data.max_len".into(), json!(cfg.data.max_len));
    m.insert(
        "data.image_mode".into(),
        value(serde_json::to_value(cfg.image_mode())),
    );
    m.insert(
        "data.length_grouping".into(),
        json!(cfg.data.length_grouping),
    );
    m.insert("optim.lr".into(), json!(o.lr));
    m.insert("optim.min_lr".into(), json!(o.min_lr));
    m.insert("optim.betas".into(), json!(o.betas));
    m.insert("optim.eps".into(), json!(o.eps));
    m.insert("optim.weight_decay".into(), json!(o.weight_decay));
    m.insert("optim.no_decay".into(), json!(o.no_decay));
    m.insert("optim.warmup_steps".into(), json!(o.warmup_steps));
    m.insert("optim.total_steps".into(), json!(o.total_steps));
    m.insert(
        "optim.schedule".into(),
        value(serde_json::to_value(o.schedule)),
    );
    m.insert("optim.grad_clip".into(), json!(o.grad_clip));
    m.insert("optim.grad_accum".into(), json!(o.grad_accum));
    m.insert("freeze".into(), value(serde_json::to_value(&cfg.freeze)));
    m.insert("lora".into(), value(serde_json::to_value(&cfg.lora)));
    m.insert("dpo".into(), value(serde_json::to_value(&cfg.dpo)));
    m.insert(
        "precision.mode".into(),
        value(serde_json::to_value(cfg.precision.mode)),
    );
    m.insert(
        "checkpoint.every_steps".into(),
        json!(cfg.checkpoint.every_steps),
    );
    m.insert("devices.count".into(), json!(cfg.devices.count));
    m.insert("devices.strategy".into(), json!(cfg.devices.strategy));
    m
}

/// The settings that differ between a checkpoint's `saved` settings and the run's `now`, as
/// `name (was A, now B)`.
pub fn changed_settings(
    saved: &BTreeMap<String, serde_json::Value>,
    now: &BTreeMap<String, serde_json::Value>,
) -> Vec<String> {
    let null = serde_json::Value::Null;
    let mut names: Vec<&String> = saved.keys().chain(now.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter_map(|k| {
            let (a, b) = (saved.get(k).unwrap_or(&null), now.get(k).unwrap_or(&null));
            (!same_setting(a, b)).then(|| {
                if k == "data.train" {
                    format!("{k} (the recipe's contents differ from the checkpoint's)")
                } else {
                    format!("{k} (was {a}, now {b})")
                }
            })
        })
        .collect()
}

/// Whether two recorded settings are the same. Numbers are compared at f32 precision: the
/// config's f32 fields pass through f64 in JSON, and a value read back from a state file may
/// print its last digit differently from the same value converted afresh.
fn same_setting(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => x == y || (x as f32) == (y as f32),
            _ => x == y,
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_setting(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_setting(v, w)))
        }
        _ => a == b,
    }
}

/// Where a run starts: afresh, or after a verified checkpoint window.
#[derive(Clone)]
pub(crate) struct Start {
    /// The checkpoint folder.
    pub(crate) ckpt_dir: PathBuf,
    /// The settings recorded with every checkpoint ([`resume_settings`]).
    pub(crate) resume_key: BTreeMap<String, serde_json::Value>,
    /// The window resumed after.
    pub(crate) window: Option<usize>,
    /// Its saved state.
    pub(crate) state: Option<RunState>,
    /// Newer checkpoints passed over.
    pub(crate) rejected: Vec<Rejected>,
}

/// Readies the output folder: refuses a previous run unless `--resume`/`--overwrite`, removes
/// temporary files, finds the checkpoint to resume after (checking its settings), and cuts the
/// metrics log back to it.
pub(crate) fn prepare_out_dir(
    cfg: &TrainConfig,
    opts: &RunOptions,
    out: &Path,
) -> Result<Start, TrainError> {
    let out = out.to_path_buf();
    if !opts.resume {
        let previous = outdir::previous_run(&out)?;
        if !previous.is_empty() && !opts.overwrite {
            return Err(TrainError::OutDir {
                dir: out.clone(),
                msg: format!(
                    "holds a previous run ({}); pass --resume to continue it, --overwrite to \
                     replace it, or choose another output directory",
                    previous.join(", ")
                ),
            });
        }
        if !previous.is_empty() {
            outdir::clear_previous_run(&out)?;
            log::warn!(
                "--overwrite: removed the previous run's {} from {}",
                previous.join(", "),
                out.display()
            );
        }
    }
    let ckpt_dir = out.join("checkpoints");
    std::fs::create_dir_all(&ckpt_dir).map_err(|e| TrainError::io(&ckpt_dir, e))?;
    let mut temp = remove_temp_files(&ckpt_dir)?;
    temp.extend(outdir::remove_temp_files(&out)?);
    for p in &temp {
        log::info!("removed {}, left by an interrupted run", p.display());
    }

    let recipe_sha1 = outdir::file_sha1(&cfg.data.train)?;
    let resume_key = resume_settings(cfg, &recipe_sha1);
    let (resume_window, rejected) = if opts.resume {
        let (found, rejected) = latest_verified(&ckpt_dir);
        for r in &rejected {
            log::warn!(
                "--resume: passing over checkpoint {} in {}: {}",
                r.window,
                ckpt_dir.display(),
                r.reason
            );
        }
        let Some(w) = found else {
            let why = rejected
                .iter()
                .map(|r| format!("window {}: {}", r.window, r.reason))
                .collect::<Vec<_>>();
            return Err(TrainError::Checkpoint {
                path: ckpt_dir.clone(),
                msg: if why.is_empty() {
                    "--resume: no checkpoint found".into()
                } else {
                    format!(
                        "--resume: no complete, verified checkpoint ({})",
                        why.join("; ")
                    )
                },
            });
        };
        if !rejected.is_empty() {
            log::warn!(
                "--resume: falling back to checkpoint {w}, the newest complete and verified one"
            );
        }
        (Some(w), rejected)
    } else {
        (None, Vec::new())
    };
    let resumed_state: Option<RunState> = resume_window
        .map(|w| read_state(&ckpt_dir, w))
        .transpose()?;
    if let (Some(w), Some(state)) = (resume_window, &resumed_state) {
        let changed = changed_settings(&state.settings, &resume_key);
        if !changed.is_empty() {
            return Err(TrainError::Config(format!(
                "--resume: settings changed since checkpoint {w} ({}): {}; exact resume needs the \
                 checkpoint's settings: restore them, or start a new run with --overwrite or \
                 another output directory",
                crate::checkpoint::state_path(&ckpt_dir, w).display(),
                changed.join(", ")
            )));
        }
        let cut = outdir::truncate_logs(&out, w)?;
        if cut > 0 {
            log::info!(
                "--resume: removed {cut} metric rows logged after checkpoint {w} by the interrupted run"
            );
        }
    }
    Ok(Start {
        ckpt_dir,
        resume_key,
        window: resume_window,
        state: resumed_state,
        rejected,
    })
}
