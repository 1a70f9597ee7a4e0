//! Keeping image paths read from dataset files inside their configured root.
//!
//! A dataset file is data, not configuration: an image path in it must not reach files outside the
//! image root the recipe (or the evaluation data root) names. Every reader that joins an image path
//! to a root goes through [`resolve_inside`] (or [`check_inside`] when the path is already joined),
//! which resolves `..`, absolute paths and symbolic links and refuses a result outside the root,
//! unless the caller allows it (a recipe source's `allow_outside_root: true`).
//!
//! The check follows the file system as it is when the path is resolved: the longest existing
//! prefix of the path is canonicalised (symbolic links followed), and the rest, which does not
//! exist yet, is normalised lexically. A path that names a missing file inside the root passes
//! (the reader reports it missing); one whose existing part leaves the root is refused. The path
//! returned is the joined path as written (not the canonical one), so names in messages and sample
//! origins stay those of the dataset.

use std::path::{Component, Path, PathBuf};

/// An image path that resolves outside its root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutsideRoot {
    /// The path as joined to the root.
    pub path: PathBuf,
    /// Where it resolves to (symbolic links followed).
    pub resolved: PathBuf,
    /// The root (empty: the working directory).
    pub root: PathBuf,
}

impl std::fmt::Display for OutsideRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "image path {} resolves to {}, outside the image root {}",
            self.path.display(),
            self.resolved.display(),
            self.root.display()
        )?;
        if self.root.as_os_str().is_empty() {
            f.write_str("(the working directory: no image root is set)")?;
        }
        f.write_str("; refused (a recipe source may set `allow_outside_root: true`)")
    }
}

impl std::error::Error for OutsideRoot {}

/// Joins `relative` to `root` (an absolute `relative` replaces the root, as [`Path::join`] does;
/// an empty root is the working directory) and checks the result with [`check_inside`].
pub fn resolve_inside(
    root: &Path,
    relative: &Path,
    allow_outside: bool,
) -> Result<PathBuf, OutsideRoot> {
    let joined = if root.as_os_str().is_empty() {
        relative.to_path_buf()
    } else {
        root.join(relative)
    };
    check_inside(root, &joined, allow_outside)
}

/// Returns `path` (relative to the working directory, or absolute) unchanged when it resolves
/// inside `root` (empty: the working directory), or always when `allow_outside` is set; otherwise
/// an [`OutsideRoot`] error. See the module documentation for how paths are resolved.
pub fn check_inside(root: &Path, path: &Path, allow_outside: bool) -> Result<PathBuf, OutsideRoot> {
    if allow_outside {
        return Ok(path.to_path_buf());
    }
    let outside = |resolved: PathBuf| OutsideRoot {
        path: path.to_path_buf(),
        resolved,
        root: root.to_path_buf(),
    };
    // Without a working directory, relative paths cannot be placed: refuse rather than guess.
    let (Some(real_root), Some(real)) = (real_path(root), real_path(path)) else {
        return Err(outside(path.to_path_buf()));
    };
    if real.starts_with(&real_root) {
        Ok(path.to_path_buf())
    } else {
        Err(outside(real))
    }
}

/// The absolute path `path` resolves to: its longest existing prefix canonicalised, then the rest
/// normalised lexically (`.` dropped, `..` removing the previous component). `None` when the
/// working directory is unknown.
fn real_path(path: &Path) -> Option<PathBuf> {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().ok()?.join(path)
    };
    let components: Vec<Component<'_>> = absolute.components().collect();
    // The longest prefix that exists (the root directory always does).
    let mut existing = components.len();
    let mut base = None;
    while existing > 0 {
        let prefix: PathBuf = components[..existing].iter().collect();
        if let Ok(real) = prefix.canonicalize() {
            base = Some(real);
            break;
        }
        existing -= 1;
    }
    let mut resolved = base.unwrap_or_else(|| components[..1].iter().collect());
    for component in &components[existing.max(1)..] {
        match component {
            Component::Normal(name) => resolved.push(name),
            Component::ParentDir => {
                resolved.pop();
            }
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    Some(resolved)
}
