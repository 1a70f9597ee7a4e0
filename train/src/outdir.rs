//! The output directory of a run: the advisory lock held for the run's lifetime, finding (and,
//! with `--overwrite`, clearing) a previous run's outputs, removing the temporary files of a
//! killed run, and cutting the metric logs back to the checkpoint a run resumes from.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::checkpoint::{is_temp_name, write_atomic};
use crate::error::TrainError;
use crate::metrics_file::LogRow;

/// The lock file in the output directory (it stays; the lock is on the open file).
pub const LOCK_FILE: &str = "train.lock";

/// What a run writes into its output directory; any of them present means the directory holds a
/// run.
pub const RUN_OUTPUTS: [&str; 8] = [
    "checkpoints",
    "final",
    "export",
    "config.toml",
    "summary.json",
    "metrics.jsonl",
    "metrics.csv",
    "loss.png",
];

/// An exclusive advisory lock on `<out_dir>/train.lock`, released when dropped (or when the
/// process ends, however it ends).
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    path: PathBuf,
}

impl RunLock {
    /// Takes the lock of `out`, creating the directory; fails at once when another process holds
    /// it.
    pub fn acquire(out: &Path) -> Result<RunLock, TrainError> {
        std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
        let path = out.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| TrainError::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path)
                    .ok()
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .map_or(String::new(), |pid| format!(" (process {pid})"));
                return Err(TrainError::OutDir {
                    dir: out.to_path_buf(),
                    msg: format!(
                        "another `blip3 train`{holder} is running in this directory (it holds \
                         the lock {}); wait for it to end or choose another --out",
                        path.display()
                    ),
                });
            }
            Err(TryLockError::Error(e)) => return Err(TrainError::io(&path, e)),
        }
        // The holder's process id, for the message above (best effort: the lock is what counts).
        let _ = file
            .set_len(0)
            .and_then(|()| writeln!(file, "{}", std::process::id()));
        Ok(RunLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The outputs of a previous run found in `out` (names from [`RUN_OUTPUTS`]; an empty
/// `checkpoints` directory does not count).
pub fn previous_run(out: &Path) -> Result<Vec<String>, TrainError> {
    let mut found = Vec::new();
    for name in RUN_OUTPUTS {
        let path = out.join(name);
        let present = if name == "checkpoints" {
            match std::fs::read_dir(&path) {
                Ok(mut rd) => rd.next().is_some(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                Err(e) => return Err(TrainError::io(&path, e)),
            }
        } else {
            path.symlink_metadata().is_ok()
        };
        if present {
            found.push(name.to_string());
        }
    }
    Ok(found)
}

/// Removes a previous run's outputs ([`RUN_OUTPUTS`]) from `out`, leaving anything else (and the
/// lock file) in place; returns the names removed.
pub fn clear_previous_run(out: &Path) -> Result<Vec<String>, TrainError> {
    let found = previous_run(out)?;
    for name in &found {
        let path = out.join(name);
        let is_dir = path.symlink_metadata().is_ok_and(|m| m.is_dir());
        let result = if is_dir {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match result {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(TrainError::io(&path, e));
            }
            _ => {}
        }
    }
    Ok(found)
}

/// Removes temporary files a killed run left in `out` itself (`.<name>.tmp-<pid>` of atomic
/// writes, `.<name>.tmp` of the loss plot); returns the paths removed.
pub fn remove_temp_files(out: &Path) -> Result<Vec<PathBuf>, TrainError> {
    let mut removed = Vec::new();
    let rd = match std::fs::read_dir(out) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(TrainError::io(out, e)),
    };
    for entry in rd {
        let entry = entry.map_err(|e| TrainError::io(out, e))?;
        let name = entry.file_name().to_string_lossy().to_string();
        let temp = is_temp_name(&name) || (name.starts_with('.') && name.ends_with(".tmp"));
        if temp && entry.file_type().is_ok_and(|t| t.is_file()) {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(|e| TrainError::io(&path, e))?;
            removed.push(path);
        }
    }
    Ok(removed)
}

/// Cuts `metrics.jsonl` and `metrics.csv` in `out` back to the rows of windows up to `window`
/// (the checkpoint a run resumes from), so the resumed run's rows follow without duplicate steps.
/// Unreadable lines (a row cut off by a kill) go too. Returns the number of rows removed.
pub fn truncate_logs(out: &Path, window: usize) -> Result<usize, TrainError> {
    let mut removed = 0;
    let jsonl = out.join("metrics.jsonl");
    if let Some(text) = read_if_present(&jsonl)? {
        let mut kept = String::with_capacity(text.len());
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match serde_json::from_str::<LogRow>(line) {
                Ok(row) if row.window <= window => {
                    kept.push_str(line);
                    kept.push('\n');
                }
                _ => removed += 1,
            }
        }
        write_atomic(&jsonl, kept.as_bytes()).map_err(|e| TrainError::io(&jsonl, e))?;
    }
    let csv = out.join("metrics.csv");
    if let Some(text) = read_if_present(&csv)? {
        let mut kept = String::with_capacity(text.len());
        for (i, line) in text.lines().enumerate() {
            // `split,window,iteration,step,metric,value`; the first line is the header.
            let complete = line.split(',').count() == 6;
            let in_window = line
                .split(',')
                .nth(1)
                .and_then(|w| w.parse::<usize>().ok())
                .is_some_and(|w| w <= window);
            let keep = i == 0 || (complete && in_window);
            if keep {
                kept.push_str(line);
                kept.push('\n');
            }
        }
        write_atomic(&csv, kept.as_bytes()).map_err(|e| TrainError::io(&csv, e))?;
    }
    Ok(removed)
}

fn read_if_present(path: &Path) -> Result<Option<String>, TrainError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(TrainError::io(path, e)),
    }
}

/// SHA-1 (hex) of the file at `path`.
pub fn file_sha1(path: &Path) -> Result<String, TrainError> {
    crate::checkpoint::file_digest(path, "")
        .map(|d| d.sha1)
        .map_err(|e| TrainError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_directory_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = RunLock::acquire(dir.path()).unwrap();
        let err = RunLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(err.contains("another `blip3 train`"), "{err}");
        assert!(err.contains(&std::process::id().to_string()), "{err}");
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
        drop(first);
        RunLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn previous_outputs_are_found_and_cleared_but_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("checkpoints")).unwrap();
        assert!(
            previous_run(d).unwrap().is_empty(),
            "an empty checkpoints/ is no run"
        );
        std::fs::write(d.join("checkpoints/model-1.bpk"), b"x").unwrap();
        std::fs::write(d.join("metrics.jsonl"), b"{}\n").unwrap();
        std::fs::write(d.join("notes.txt"), b"mine").unwrap();
        assert_eq!(
            previous_run(d).unwrap(),
            vec!["checkpoints", "metrics.jsonl"]
        );
        clear_previous_run(d).unwrap();
        assert!(previous_run(d).unwrap().is_empty());
        assert!(d.join("notes.txt").exists());
    }

    #[test]
    fn logs_are_cut_back_to_the_resumed_window() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let row = |w: usize, step: usize| {
            format!(
                "{{\"split\":\"train\",\"window\":{w},\"iteration\":{step},\"step\":{step},\"metrics\":{{\"Loss\":1.0}}}}\n"
            )
        };
        let mut jsonl = String::new();
        for (w, s) in [(1, 1), (1, 2), (2, 3), (2, 4), (3, 5)] {
            jsonl += &row(w, s);
        }
        jsonl += "{\"split\":\"train\",\"win"; // cut off by a kill
        std::fs::write(d.join("metrics.jsonl"), jsonl).unwrap();
        std::fs::write(
            d.join("metrics.csv"),
            "split,window,iteration,step,metric,value\ntrain,1,1,1,Loss,1\ntrain,2,3,3,Loss,1\ntrain,3,5,5,Lo",
        )
        .unwrap();
        assert_eq!(truncate_logs(d, 1).unwrap(), 4);
        let text = std::fs::read_to_string(d.join("metrics.jsonl")).unwrap();
        assert_eq!(text, row(1, 1) + &row(1, 2));
        let csv = std::fs::read_to_string(d.join("metrics.csv")).unwrap();
        assert_eq!(
            csv,
            "split,window,iteration,step,metric,value\ntrain,1,1,1,Loss,1\n"
        );
    }
}
