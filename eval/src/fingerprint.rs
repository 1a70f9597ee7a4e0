//! Fingerprints: the model hash recorded in reports and the per-item settings hash that makes
//! resuming safe.
//!
//! Both use 64-bit FNV-1a (offset basis `0xcbf29ce484222325`, prime `0x100000001b3`), the hash
//! the synthetic corpus manifest already uses, printed as 16 lower-case hex digits. It is not a
//! cryptographic hash: it identifies weights and settings, it does not authenticate them.
//!
//! **Model hash** ([`model_hash`]): the weight files of a model directory are the files whose
//! names end in `.bpk` or `.safetensors`, plus `config.json` and `special_tokens.json` when
//! present, sorted by file name. The hash runs over, for each file in that order, its name, a
//! zero byte, its length as 8 little-endian bytes and its content. Renaming the directory does not
//! change the hash; changing one byte of any weight file or the config does. It is reported as
//! `fnv1a64:<hex>`.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::EvalError;

/// FNV-1a 64-bit offset basis.
const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64-bit prime.
const PRIME: u64 = 0x0000_0100_0000_01b3;

/// An incremental FNV-1a 64-bit hasher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fnv1a64(u64);

impl Default for Fnv1a64 {
    fn default() -> Self {
        Fnv1a64(OFFSET)
    }
}

impl Fnv1a64 {
    /// A fresh hasher.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(PRIME);
        }
    }

    /// Feeds a string followed by a zero byte (so that `("ab", "c")` and `("a", "bc")` differ).
    pub fn field(&mut self, text: &str) {
        self.update(text.as_bytes());
        self.update(&[0]);
    }

    /// The hash so far.
    pub fn value(&self) -> u64 {
        self.0
    }

    /// The hash so far as 16 lower-case hex digits.
    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

/// FNV-1a 64 of `bytes`, as 16 hex digits.
pub fn fnv1a64_hex(bytes: &[u8]) -> String {
    let mut h = Fnv1a64::new();
    h.update(bytes);
    h.hex()
}

/// The files [`model_hash`] covers in `dir`, sorted by name.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, EvalError> {
    let entries = std::fs::read_dir(dir).map_err(|e| EvalError::io(dir, e))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| EvalError::io(dir, e))?;
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let wanted = name.ends_with(".bpk")
            || name.ends_with(".safetensors")
            || name == "config.json"
            || name == "special_tokens.json";
        if wanted && path.is_file() {
            files.push(path);
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files)
}

/// The model hash of a model directory (see the module documentation): `fnv1a64:<hex>` and the
/// file names it covers. A directory without any weight file is an error.
pub fn model_hash(dir: &Path) -> Result<(String, Vec<String>), EvalError> {
    let files = weight_files(dir)?;
    if !files.iter().any(|f| {
        f.extension()
            .is_some_and(|e| e == "bpk" || e == "safetensors")
    }) {
        return Err(EvalError::format(
            dir.display(),
            "no weight file (*.bpk or *.safetensors) to hash",
        ));
    }
    let mut h = Fnv1a64::new();
    let mut names = Vec::with_capacity(files.len());
    let mut buf = vec![0u8; 1 << 20];
    for path in &files {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let mut file = File::open(path).map_err(|e| EvalError::io(path, e))?;
        let len = file.metadata().map_err(|e| EvalError::io(path, e))?.len();
        h.field(&name);
        h.update(&len.to_le_bytes());
        loop {
            let n = file.read(&mut buf).map_err(|e| EvalError::io(path, e))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        names.push(name);
    }
    Ok((format!("fnv1a64:{}", h.hex()), names))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_matches_the_published_test_vectors() {
        // From the FNV reference test suite (draft-eastlake-fnv): "" and "a" and "foobar".
        assert_eq!(fnv1a64_hex(b""), "cbf29ce484222325");
        assert_eq!(fnv1a64_hex(b"a"), "af63dc4c8601ec8c");
        assert_eq!(fnv1a64_hex(b"foobar"), "85944171f73967e8");
    }

    #[test]
    fn fields_are_separated() {
        let mut a = Fnv1a64::new();
        a.field("ab");
        a.field("c");
        let mut b = Fnv1a64::new();
        b.field("a");
        b.field("bc");
        assert_ne!(a.value(), b.value());
    }

    #[test]
    fn model_hash_sees_every_byte_and_ignores_the_directory_name() {
        let root = tempfile::tempdir().unwrap();
        let (d1, d2) = (root.path().join("x"), root.path().join("y"));
        for d in [&d1, &d2] {
            std::fs::create_dir_all(d).unwrap();
            std::fs::write(d.join("model.bpk"), b"weights").unwrap();
            std::fs::write(d.join("config.json"), b"{}").unwrap();
            std::fs::write(d.join("notes.txt"), b"ignored").unwrap();
        }
        std::fs::write(d2.join("notes.txt"), b"different").unwrap();
        let (h1, files) = model_hash(&d1).unwrap();
        assert_eq!(files, vec!["config.json", "model.bpk"]);
        assert_eq!(h1, model_hash(&d2).unwrap().0);
        std::fs::write(d2.join("model.bpk"), b"weightS").unwrap();
        assert_ne!(h1, model_hash(&d2).unwrap().0);
        let empty = root.path().join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        assert!(model_hash(&empty).is_err());
    }
}
