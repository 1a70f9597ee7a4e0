//! Step-based, atomic checkpoints on burn-train's checkpointer interface.
//!
//! burn-train checkpoints once per "epoch"; a run here makes one epoch a *window* of
//! `checkpoint.every_steps` optimizer steps (the data loader yields that many micro-batches per
//! `iter()`), so a checkpoint lands every N steps. Every file is written to a temporary sibling
//! and renamed, so a killed process leaves either the old or the new file, never half of one.
//! A checkpoint `E` is complete when `model-E.bpk`, `optim-E.bpk`, `scheduler-E.bpk` and
//! `state-E.json` (data-loader position and statistics, step counters, RNG seed state) all exist;
//! `--resume` picks the newest complete one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use burn::train::checkpoint::{Checkpoint, Checkpointer, CheckpointerError};

use crate::error::TrainError;

/// Extra state saved with each checkpoint (serialised as JSON).
pub type StateSource = Arc<dyn Fn(usize) -> Option<serde_json::Value> + Send + Sync>;

/// A checkpointer writing `<dir>/<name>-<window>.bpk` atomically; the model checkpointer also
/// writes `state-<window>.json` from a state source.
#[derive(Clone)]
pub struct AtomicCheckpointer {
    dir: PathBuf,
    name: String,
    state: Option<StateSource>,
}

impl AtomicCheckpointer {
    /// A checkpointer for `name` records in `dir`.
    pub fn new(dir: &Path, name: &str) -> Self {
        Self {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            state: None,
        }
    }

    /// Also saves `state-<window>.json` from `source` at every save.
    pub fn with_state(mut self, source: StateSource) -> Self {
        self.state = Some(source);
        self
    }

    fn path(&self, window: usize) -> PathBuf {
        record_path(&self.dir, &self.name, window)
    }
}

/// Where a record of `name` for `window` lives.
pub fn record_path(dir: &Path, name: &str, window: usize) -> PathBuf {
    dir.join(format!("{name}-{window}.bpk"))
}

/// Where the extra state of `window` lives.
pub fn state_path(dir: &Path, window: usize) -> PathBuf {
    dir.join(format!("state-{window}.json"))
}

fn tmp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = tmp_sibling(path);
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

impl<R: Checkpoint> Checkpointer<R> for AtomicCheckpointer {
    fn save(&self, window: usize, record: R) -> Result<(), CheckpointerError> {
        std::fs::create_dir_all(&self.dir).map_err(CheckpointerError::IOError)?;
        // The state first: a model file without its state is never taken for a complete
        // checkpoint, while a state without a model is harmless.
        if let Some(source) = &self.state {
            let value = source(window).ok_or_else(|| {
                CheckpointerError::Unknown(format!("no loader state recorded for window {window}"))
            })?;
            let text = serde_json::to_vec_pretty(&value)
                .map_err(|e| CheckpointerError::Unknown(e.to_string()))?;
            write_atomic(&state_path(&self.dir, window), &text)
                .map_err(CheckpointerError::IOError)?;
        }
        let path = self.path(window);
        let tmp = tmp_sibling(&path);
        record.save(tmp.clone())?;
        std::fs::rename(&tmp, &path).map_err(CheckpointerError::IOError)
    }

    fn delete(&self, window: usize) -> Result<(), CheckpointerError> {
        let mut paths = vec![self.path(window)];
        if self.state.is_some() {
            paths.push(state_path(&self.dir, window));
        }
        for p in paths {
            if p.exists() {
                std::fs::remove_file(&p).map_err(CheckpointerError::IOError)?;
            }
        }
        Ok(())
    }

    fn restore(&self, window: usize) -> Result<R, CheckpointerError> {
        R::load(self.path(window))
    }
}

/// The newest window whose checkpoint is complete, if any.
pub fn latest_complete(dir: &Path) -> Option<usize> {
    let rd = std::fs::read_dir(dir).ok()?;
    let mut windows: Vec<usize> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().to_string();
            n.strip_prefix("state-")?
                .strip_suffix(".json")?
                .parse()
                .ok()
        })
        .collect();
    windows.sort_unstable();
    windows.into_iter().rev().find(|&w| {
        ["model", "optim", "scheduler"]
            .iter()
            .all(|n| record_path(dir, n, w).exists())
            && std::fs::read(state_path(dir, w))
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .is_some()
    })
}

/// Reads the extra state of `window`.
pub fn read_state<T: serde::de::DeserializeOwned>(
    dir: &Path,
    window: usize,
) -> Result<T, TrainError> {
    let path = state_path(dir, window);
    let bytes = std::fs::read(&path).map_err(|e| TrainError::io(&path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| TrainError::Checkpoint {
        path,
        msg: format!("invalid state: {e}"),
    })
}

/// Snapshots of some value taken at window boundaries, read back by the checkpointer (which runs
/// on burn-train's background thread, after the next window may already have started).
#[derive(Clone, Default)]
pub struct WindowStates<T: Clone> {
    inner: Arc<Mutex<BTreeMap<usize, T>>>,
}

impl<T: Clone> WindowStates<T> {
    /// An empty record.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Mutex::new(BTreeMap::new())),
        }
    }

    /// Records the value at the end of `window`, dropping records older than 64 windows.
    pub fn record(&self, window: usize, value: T) {
        if let Ok(mut m) = self.inner.lock() {
            m.insert(window, value);
            while m.len() > 64 {
                let Some(first) = m.keys().next().copied() else {
                    break;
                };
                m.remove(&first);
            }
        }
    }

    /// The value recorded at the end of `window`.
    pub fn get(&self, window: usize) -> Option<T> {
        self.inner.lock().ok().and_then(|m| m.get(&window).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_complete_needs_every_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for w in [1, 2] {
            for n in ["model", "optim", "scheduler"] {
                std::fs::write(record_path(d, n, w), b"x").unwrap();
            }
            std::fs::write(state_path(d, w), b"{}").unwrap();
        }
        // Window 3 lacks its optimizer state (killed mid-checkpoint).
        std::fs::write(record_path(d, "model", 3), b"x").unwrap();
        std::fs::write(record_path(d, "scheduler", 3), b"x").unwrap();
        std::fs::write(state_path(d, 3), b"{}").unwrap();
        assert_eq!(latest_complete(d), Some(2));
        // A truncated state file is not complete either.
        std::fs::write(record_path(d, "optim", 3), b"x").unwrap();
        std::fs::write(state_path(d, 3), b"{\"a\":").unwrap();
        assert_eq!(latest_complete(d), Some(2));
        std::fs::write(state_path(d, 3), b"{\"a\":1}").unwrap();
        assert_eq!(latest_complete(d), Some(3));
    }
}
