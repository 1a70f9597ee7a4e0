//! Writing the corpus to disk: files relative to the output directory (each recorded with its size
//! and checksum for the manifest), images, JSON in the layouts' styles, and tar shards with fixed
//! headers so that the same content always gives the same bytes.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::FileEntry;
use super::draw::{self, Format};
use super::scene::Scene;
use crate::error::DataError;
use crate::progress::Progress;

/// The modification time written into every tar header (2024-01-01T00:00:00Z).
const TAR_MTIME: u64 = 1_704_067_200;

/// FNV-1a, 64-bit: a small checksum for the manifest (not a cryptographic hash).
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Serializes `value` as JSON; `indent` spaces per level, or compact when 0.
pub(crate) fn to_json<T: Serialize + ?Sized>(
    value: &T,
    indent: usize,
    what: &str,
) -> Result<Vec<u8>, DataError> {
    let mut out = Vec::new();
    let result = if indent == 0 {
        serde_json::to_writer(&mut out, value)
    } else {
        let pad = vec![b' '; indent];
        let fmt = serde_json::ser::PrettyFormatter::with_indent(&pad);
        let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
        value.serialize(&mut ser)
    };
    result.map_err(|e| DataError::format(what, format!("cannot serialize: {e}")))?;
    Ok(out)
}

/// A tar archive built in memory with deterministic headers (fixed time, owner 0, mode 0644).
pub(crate) struct Tar {
    builder: tar::Builder<Vec<u8>>,
    name: String,
}

impl Tar {
    /// An empty archive; `name` is used in error messages.
    pub(crate) fn new(name: &str) -> Self {
        Tar {
            builder: tar::Builder::new(Vec::new()),
            name: name.to_string(),
        }
    }

    /// Appends a regular file.
    pub(crate) fn add(&mut self, member: &str, data: &[u8]) -> Result<(), DataError> {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(TAR_MTIME);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        self.builder
            .append_data(&mut header, member, data)
            .map_err(|e| DataError::format(&self.name, format!("cannot add {member}: {e}")))
    }

    /// The finished archive's bytes.
    pub(crate) fn finish(self) -> Result<Vec<u8>, DataError> {
        let name = self.name;
        self.builder
            .into_inner()
            .map_err(|e| DataError::format(&name, format!("cannot finish: {e}")))
    }
}

/// The output directory and the list of files written to it.
pub(crate) struct Out {
    root: PathBuf,
    files: Vec<FileEntry>,
    quality: u8,
    /// Counts rendered images.
    progress: Progress,
}

impl Out {
    /// Writes under `root` (which must exist); JPEGs get `quality`.
    pub(crate) fn new(root: &Path, quality: u8) -> Self {
        Out {
            root: root.to_path_buf(),
            files: Vec::new(),
            quality,
            progress: Progress::hidden(),
        }
    }

    /// Reports every rendered image to `progress`.
    pub(crate) fn with_progress(mut self, progress: Progress) -> Self {
        self.progress = progress;
        self
    }

    /// Writes `bytes` to `rel` (a `/`-separated path under the root), creating directories.
    pub(crate) fn write(&mut self, rel: &str, bytes: &[u8]) -> Result<(), DataError> {
        let path = self.root.join(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
        }
        std::fs::write(&path, bytes).map_err(|e| DataError::io(&path, e))?;
        self.files.push(FileEntry {
            path: rel.to_string(),
            bytes: bytes.len() as u64,
            fnv1a64: format!("{:016x}", fnv1a64(bytes)),
        });
        Ok(())
    }

    /// Writes a JSON document (pretty with `indent` spaces, or compact when 0).
    pub(crate) fn json<T: Serialize + ?Sized>(
        &mut self,
        rel: &str,
        value: &T,
        indent: usize,
    ) -> Result<(), DataError> {
        let mut bytes = to_json(value, indent, rel)?;
        bytes.push(b'\n');
        self.write(rel, &bytes)
    }

    /// Writes JSON Lines: one compact JSON object per line.
    pub(crate) fn jsonl<T: Serialize>(&mut self, rel: &str, rows: &[T]) -> Result<(), DataError> {
        let mut bytes = Vec::new();
        for row in rows {
            bytes.extend(to_json(row, 0, rel)?);
            bytes.push(b'\n');
        }
        self.write(rel, &bytes)
    }

    /// Renders and encodes a scene (without writing it); `what` names it in errors.
    pub(crate) fn encode(
        &mut self,
        scene: &Scene,
        format: Format,
        what: &str,
    ) -> Result<Vec<u8>, DataError> {
        let img = draw::render(scene);
        let bytes = draw::encode(&img, format, self.quality).map_err(|msg| DataError::Image {
            path: what.to_string(),
            msg,
        })?;
        self.progress.inc(1);
        Ok(bytes)
    }

    /// Renders a scene and writes it to `stem` plus the format's extension; returns the path.
    pub(crate) fn image(
        &mut self,
        stem: &str,
        scene: &Scene,
        format: Format,
    ) -> Result<String, DataError> {
        let rel = format!("{stem}.{}", format.ext());
        let bytes = self.encode(scene, format, &rel)?;
        self.write(&rel, &bytes)?;
        Ok(rel)
    }

    /// Images rendered so far.
    #[cfg(test)]
    pub(crate) fn images(&self) -> u64 {
        self.progress.position()
    }

    /// The files written so far, sorted by path.
    pub(crate) fn into_files(mut self) -> Vec<FileEntry> {
        let images = self.progress.position();
        self.progress.set_total(images);
        self.progress.finish();
        self.files.sort_by(|a, b| a.path.cmp(&b.path));
        self.files
    }
}

/// The image format for a scene: PNG for images with rendered text (sharp glyphs), JPEG otherwise.
pub(crate) fn format_for(scene: &Scene) -> Format {
    if scene.label.is_some() {
        Format::Png
    } else {
        Format::Jpeg
    }
}

/// `rel` with its first `prefix/` removed (paths inside a dataset are relative to its root).
pub(crate) fn strip(rel: &str, prefix: &str) -> String {
    rel.strip_prefix(prefix)
        .map(|s| s.trim_start_matches('/'))
        .unwrap_or(rel)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_reference_values() {
        // Published FNV-1a 64-bit test vectors (Fowler/Noll/Vo reference test suite).
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn tars_are_deterministic_and_readable() {
        let build = || {
            let mut t = Tar::new("t.tar");
            t.add("000000000.txt", b"hello").unwrap();
            t.add("000000000.json", b"{}").unwrap();
            t.finish().unwrap()
        };
        let a = build();
        assert_eq!(a, build());
        let mut ar = tar::Archive::new(a.as_slice());
        let names: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["000000000.txt", "000000000.json"]);
    }
}
