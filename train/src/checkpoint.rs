//! Step-based, atomic, verified checkpoints on burn-train's checkpointer interface.
//!
//! burn-train checkpoints once per "epoch"; a run here makes one epoch a *window* of
//! `checkpoint.every_steps` optimizer steps (the data loader yields that many micro-batches per
//! `iter()`), so a checkpoint lands every N steps. Every file is written to a temporary sibling,
//! synced and renamed, so a killed process leaves either the old or the new file, never half of
//! one (the temporary files of a killed run are removed when the next run starts).
//!
//! burn-train saves the three records of window `W` (`model-W.bpk`, `optim-W.bpk`,
//! `scheduler-W.bpk`) on three threads; whichever finishes last writes `state-W.json`
//! ([`StateFile`]): the run's state (data-loader position and statistics, step counters, seed,
//! settings) and the length and SHA-1 of each record. A checkpoint is *complete* when its state
//! file parses and every record matches its recorded length and SHA-1; `--resume` takes the newest
//! complete one and reports the newer ones it passed over ([`latest_verified`]).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use burn::train::checkpoint::{Checkpoint, Checkpointer, CheckpointerError};
use serde::{Deserialize, Serialize};

use crate::error::TrainError;

/// The records of a checkpoint.
pub const RECORDS: [&str; 3] = ["model", "optim", "scheduler"];

/// Extra state saved with each checkpoint (serialised as JSON).
pub type StateSource = Arc<dyn Fn(usize) -> Option<serde_json::Value> + Send + Sync>;

/// Length and SHA-1 of one checkpoint file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    /// The file's name in the checkpoint directory.
    pub file: String,
    /// Length in bytes.
    pub bytes: u64,
    /// SHA-1 of the contents (40 hex digits).
    pub sha1: String,
}

/// The contents of `state-<window>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateFile {
    /// The window the checkpoint ends.
    pub window: usize,
    /// The window's records by name (`model`, `optim`, `scheduler`).
    pub files: BTreeMap<String, FileDigest>,
    /// The run's own state (`run::RunState` for `blip3 train`).
    pub run: serde_json::Value,
}

/// A newer checkpoint that `--resume` passed over, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    /// The window.
    pub window: usize,
    /// What is wrong with it (names the file).
    pub reason: String,
}

/// The bookkeeping shared by a run's three checkpointers: the digests of the records written so
/// far, per window, and the source of the run state written with the last of them.
#[derive(Clone)]
pub struct CheckpointSet {
    dir: PathBuf,
    state: StateSource,
    pending: Arc<Mutex<BTreeMap<usize, BTreeMap<String, FileDigest>>>>,
}

impl CheckpointSet {
    /// Checkpoints in `dir`, with the run state of each window from `state`.
    pub fn new(dir: &Path, state: StateSource) -> Self {
        Self {
            dir: dir.to_path_buf(),
            state,
            pending: Arc::new(Mutex::new(BTreeMap::new())),
        }
    }

    /// The checkpointer of the record `name` (one of [`RECORDS`]).
    pub fn checkpointer(&self, name: &str) -> AtomicCheckpointer {
        AtomicCheckpointer {
            dir: self.dir.clone(),
            name: name.to_string(),
            set: Some(self.clone()),
        }
    }

    /// Notes that `digest` of record `name` of `window` is on disk; the record completing the
    /// window writes its state file.
    fn written(
        &self,
        window: usize,
        name: &str,
        digest: FileDigest,
    ) -> Result<(), CheckpointerError> {
        let mut pending = self.pending.lock().map_err(|_| {
            CheckpointerError::Unknown("checkpoint bookkeeping poisoned by a panic".into())
        })?;
        let entry = pending.entry(window).or_default();
        entry.insert(name.to_string(), digest);
        if !RECORDS.iter().all(|r| entry.contains_key(*r)) {
            return Ok(());
        }
        let files = pending.remove(&window).unwrap_or_default();
        let run = (self.state)(window).ok_or_else(|| {
            CheckpointerError::Unknown(format!("no run state recorded for window {window}"))
        })?;
        let text = serde_json::to_vec_pretty(&StateFile { window, files, run })
            .map_err(|e| CheckpointerError::Unknown(e.to_string()))?;
        write_atomic(&state_path(&self.dir, window), &text).map_err(CheckpointerError::IOError)
    }
}

/// A checkpointer writing `<dir>/<name>-<window>.bpk` atomically; within a [`CheckpointSet`] it
/// also records the file's digest for the window's state file.
#[derive(Clone)]
pub struct AtomicCheckpointer {
    dir: PathBuf,
    name: String,
    set: Option<CheckpointSet>,
}

impl AtomicCheckpointer {
    /// A stand-alone checkpointer for `name` records in `dir` (no state file, no digests; a
    /// run's checkpointers come from [`CheckpointSet::checkpointer`]).
    pub fn new(dir: &Path, name: &str) -> Self {
        Self {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            set: None,
        }
    }

    fn path(&self, window: usize) -> PathBuf {
        record_path(&self.dir, &self.name, window)
    }
}

/// Where a record of `name` for `window` lives.
pub fn record_path(dir: &Path, name: &str, window: usize) -> PathBuf {
    dir.join(format!("{name}-{window}.bpk"))
}

/// Where the state of `window` lives.
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

/// Whether `name` is a temporary file of [`write_atomic`] or a checkpointer (`.<name>.tmp-<pid>`),
/// left behind when a process was killed mid-write.
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp-")
}

/// Removes the temporary files of killed writers from `dir`; returns the paths removed.
pub fn remove_temp_files(dir: &Path) -> Result<Vec<PathBuf>, TrainError> {
    let mut removed = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(TrainError::io(dir, e)),
    };
    for entry in rd {
        let entry = entry.map_err(|e| TrainError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().to_string();
        if is_temp_name(&name) && entry.file_type().is_ok_and(|t| t.is_file()) {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(|e| TrainError::io(&path, e))?;
            removed.push(path);
        }
    }
    Ok(removed)
}

fn sync_dir(dir: &Path) {
    // Makes the rename durable; not every platform can open a directory, hence best effort.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

fn rename_synced(tmp: &Path, path: &Path) -> std::io::Result<()> {
    std::fs::File::open(tmp)?.sync_all()?;
    std::fs::rename(tmp, path)?;
    if let Some(dir) = path.parent() {
        sync_dir(dir);
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically (temporary sibling, synced, renamed).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = tmp_sibling(path);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        sync_dir(dir);
    }
    Ok(())
}

/// Length and SHA-1 of the file at `path`, recorded under the file name `file`.
pub fn file_digest(path: &Path, file: &str) -> std::io::Result<FileDigest> {
    let mut f = std::fs::File::open(path)?;
    let mut hasher = sha1_smol::Sha1::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok(FileDigest {
        file: file.to_string(),
        bytes,
        sha1: hasher.digest().to_string(),
    })
}

fn remove_if_present(path: &Path) -> Result<(), CheckpointerError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(CheckpointerError::IOError(e)),
        _ => Ok(()),
    }
}

impl<R: Checkpoint> Checkpointer<R> for AtomicCheckpointer {
    fn save(&self, window: usize, record: R) -> Result<(), CheckpointerError> {
        std::fs::create_dir_all(&self.dir).map_err(CheckpointerError::IOError)?;
        let path = self.path(window);
        let tmp = tmp_sibling(&path);
        record.save(tmp.clone())?;
        // The digest is taken from the bytes on disk, before the rename publishes them.
        let digest = match &self.set {
            Some(_) => {
                let file = path
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default();
                Some(file_digest(&tmp, &file).map_err(CheckpointerError::IOError)?)
            }
            None => None,
        };
        rename_synced(&tmp, &path).map_err(CheckpointerError::IOError)?;
        match (&self.set, digest) {
            (Some(set), Some(d)) => set.written(window, &self.name, d),
            _ => Ok(()),
        }
    }

    fn delete(&self, window: usize) -> Result<(), CheckpointerError> {
        // The state file goes first: without it the window is no longer taken for complete.
        if self.set.is_some() {
            remove_if_present(&state_path(&self.dir, window))?;
        }
        remove_if_present(&self.path(window))
    }

    fn restore(&self, window: usize) -> Result<R, CheckpointerError> {
        R::load(self.path(window))
    }
}

/// Checks checkpoint `window` of `dir`: its state file parses and every record matches the
/// length and SHA-1 recorded there. The error names the file and what is wrong with it.
pub fn verify(dir: &Path, window: usize) -> Result<StateFile, String> {
    let sp = state_path(dir, window);
    let sname = format!("state-{window}.json");
    let bytes = match std::fs::read(&sp) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "{sname} is missing (the checkpoint was not finished)"
            ));
        }
        Err(e) => return Err(format!("{sname}: {e}")),
    };
    let state: StateFile = serde_json::from_slice(&bytes).map_err(|e| {
        format!(
            "{sname} is not a checkpoint state (truncated, corrupt or from an older blip3): {e}"
        )
    })?;
    if state.window != window {
        return Err(format!("{sname} describes window {}", state.window));
    }
    for name in RECORDS {
        let expected = format!("{name}-{window}.bpk");
        let Some(want) = state.files.get(name) else {
            return Err(format!("{sname} records no checksum for {expected}"));
        };
        if want.file != expected {
            return Err(format!(
                "{sname} names {:?} for the {name} record, expected {expected}",
                want.file
            ));
        }
        let path = dir.join(&expected);
        let got = match file_digest(&path, &expected) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(format!("{expected} is missing"));
            }
            Err(e) => return Err(format!("{expected}: {e}")),
        };
        if got.bytes != want.bytes {
            return Err(format!(
                "{expected} is {} bytes, {sname} recorded {} (truncated?)",
                got.bytes, want.bytes
            ));
        }
        if got.sha1 != want.sha1 {
            return Err(format!(
                "{expected} fails its SHA-1 check (corrupt: {} recorded, {} found)",
                want.sha1, got.sha1
            ));
        }
    }
    Ok(state)
}

/// Windows with any checkpoint file (record or state) in `dir`, newest first.
fn checkpoint_windows(dir: &Path) -> Vec<usize> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut windows: Vec<usize> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().to_string();
            if let Some(w) = n
                .strip_prefix("state-")
                .and_then(|r| r.strip_suffix(".json"))
            {
                return w.parse().ok();
            }
            RECORDS.iter().find_map(|r| {
                n.strip_prefix(r)?
                    .strip_prefix('-')?
                    .strip_suffix(".bpk")?
                    .parse()
                    .ok()
            })
        })
        .collect();
    windows.sort_unstable();
    windows.dedup();
    windows.reverse();
    windows
}

/// The newest complete, verified checkpoint of `dir` (see [`verify`]), if any, and the newer
/// windows passed over, newest first.
pub fn latest_verified(dir: &Path) -> (Option<usize>, Vec<Rejected>) {
    let mut rejected = Vec::new();
    for window in checkpoint_windows(dir) {
        match verify(dir, window) {
            Ok(_) => return (Some(window), rejected),
            Err(reason) => rejected.push(Rejected { window, reason }),
        }
    }
    (None, rejected)
}

/// The newest complete, verified checkpoint of `dir`, if any.
pub fn latest_complete(dir: &Path) -> Option<usize> {
    latest_verified(dir).0
}

/// Reads the run state of checkpoint `window` (the `run` part of its state file).
pub fn read_state<T: serde::de::DeserializeOwned>(
    dir: &Path,
    window: usize,
) -> Result<T, TrainError> {
    let path = state_path(dir, window);
    let bytes = std::fs::read(&path).map_err(|e| TrainError::io(&path, e))?;
    let state: StateFile = serde_json::from_slice(&bytes).map_err(|e| TrainError::Checkpoint {
        path: path.clone(),
        msg: format!("invalid state file: {e}"),
    })?;
    serde_json::from_value(state.run).map_err(|e| TrainError::Checkpoint {
        path,
        msg: format!("invalid run state: {e}"),
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

    /// A record that is just bytes, written as they are.
    struct Raw(Vec<u8>);

    impl Checkpoint for Raw {
        fn save(self, path: PathBuf) -> Result<(), CheckpointerError> {
            std::fs::write(path, self.0).map_err(CheckpointerError::IOError)
        }
        fn load(path: PathBuf) -> Result<Self, CheckpointerError> {
            std::fs::read(path)
                .map(Raw)
                .map_err(CheckpointerError::IOError)
        }
        fn checkpoint_from_bytes(
            bytes: burn::tensor::Bytes,
        ) -> Result<Self, burn::store::RecordError> {
            Ok(Raw(bytes.to_vec()))
        }
        fn checkpoint_into_bytes(self) -> Result<burn::tensor::Bytes, burn::store::RecordError> {
            Ok(burn::tensor::Bytes::from_bytes_vec(self.0))
        }
    }

    fn set(dir: &Path) -> CheckpointSet {
        CheckpointSet::new(
            dir,
            Arc::new(|w| Some(serde_json::json!({ "window_was": w }))),
        )
    }

    fn save_window(set: &CheckpointSet, w: usize, order: [&str; 3]) {
        for name in order {
            let bytes = format!("{name} of window {w}").into_bytes();
            set.checkpointer(name).save(w, Raw(bytes)).unwrap();
        }
    }

    #[test]
    fn the_last_record_of_a_window_writes_its_state() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let s = set(d);
        s.checkpointer("scheduler")
            .save(1, Raw(b"s".to_vec()))
            .unwrap();
        s.checkpointer("model").save(1, Raw(b"m".to_vec())).unwrap();
        assert!(
            !state_path(d, 1).exists(),
            "written before the set was complete"
        );
        assert_eq!(latest_complete(d), None);
        s.checkpointer("optim").save(1, Raw(b"o".to_vec())).unwrap();
        assert_eq!(latest_complete(d), Some(1));
        let run: serde_json::Value = read_state(d, 1).unwrap();
        assert_eq!(run["window_was"], 1);
        // No temporary file is left behind.
        let names: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        assert!(names.iter().all(|n| !is_temp_name(n)), "{names:?}");
        // Deleting a window removes its state first, then the records.
        Checkpointer::<Raw>::delete(&s.checkpointer("optim"), 1).unwrap();
        assert!(!state_path(d, 1).exists());
        assert_eq!(latest_complete(d), None);
    }

    #[test]
    fn resume_falls_back_past_incomplete_truncated_and_corrupt_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let s = set(d);
        for w in 1..=4 {
            save_window(&s, w, ["model", "optim", "scheduler"]);
        }
        assert_eq!(latest_verified(d), (Some(4), vec![]));

        // Window 5: killed after two of its records (no state file).
        s.checkpointer("model")
            .save(5, Raw(b"m5".to_vec()))
            .unwrap();
        s.checkpointer("optim")
            .save(5, Raw(b"o5".to_vec()))
            .unwrap();
        // Window 4: the model file truncated.
        let m4 = record_path(d, "model", 4);
        let len = std::fs::metadata(&m4).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&m4)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        // Window 3: one byte of the optimizer state flipped (same length).
        let o3 = record_path(d, "optim", 3);
        let mut bytes = std::fs::read(&o3).unwrap();
        bytes[0] ^= 0xff;
        std::fs::write(&o3, bytes).unwrap();

        let (found, rejected) = latest_verified(d);
        assert_eq!(found, Some(2));
        let windows: Vec<usize> = rejected.iter().map(|r| r.window).collect();
        assert_eq!(windows, vec![5, 4, 3]);
        assert!(
            rejected[0].reason.contains("state-5.json is missing"),
            "{rejected:?}"
        );
        assert!(rejected[1].reason.contains("model-4.bpk"), "{rejected:?}");
        assert!(rejected[1].reason.contains("truncated"), "{rejected:?}");
        assert!(rejected[2].reason.contains("optim-3.bpk"), "{rejected:?}");
        assert!(rejected[2].reason.contains("SHA-1"), "{rejected:?}");

        // A truncated state file and a state without checksums are not complete either.
        std::fs::write(state_path(d, 2), b"{\"window\": 2, \"fi").unwrap();
        std::fs::write(state_path(d, 1), b"{\"loader\": {}}").unwrap();
        assert_eq!(latest_verified(d).0, None);
    }

    #[test]
    fn temp_files_of_killed_writers_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join(".model-3.bpk.tmp-4242"), b"half").unwrap();
        std::fs::write(d.join(".state-3.json.tmp-4242"), b"{").unwrap();
        std::fs::write(d.join("model-2.bpk"), b"kept").unwrap();
        let removed = remove_temp_files(d).unwrap();
        assert_eq!(removed.len(), 2);
        let left: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        assert_eq!(left, vec!["model-2.bpk".to_string()]);
    }
}
