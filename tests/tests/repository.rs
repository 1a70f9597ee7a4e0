//! The repository stands alone: no source file, script, config or document names a path on a
//! development machine (`/root/...`, `/home/...`, `/work/...`, `/Users/...`) or the material
//! outside the repository that the project was started from (`../shared/...`). Facts the code
//! relies on are cited from `docs/`. Recorded logs of measurement runs (`docs/measurements/`) are
//! kept verbatim and not checked.

use std::path::{Path, PathBuf};

/// Extensions (and extension-less scripts under `.ci/`) whose text is checked.
const TEXT: &[&str] = &[
    "rs", "md", "toml", "py", "yaml", "yml", "sh", "json", "txt", "html", "js", "css",
];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace root")
        .to_path_buf()
}

fn walk(dir: &Path, root: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let rel = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .to_string_lossy()
            .to_string();
        let name = entry.file_name().to_string_lossy().to_string();
        if path.is_dir() {
            let skip = matches!(
                name.as_str(),
                "target" | ".git" | ".cache" | "runs" | "node_modules"
            ) || rel == "docs/measurements"
                || name.starts_with(".venv");
            if !skip {
                walk(&path, root, out);
            }
        } else {
            let ext = path.extension().map(|e| e.to_string_lossy().to_string());
            let checked = match ext {
                Some(e) => TEXT.contains(&e.as_str()),
                None => rel.starts_with(".ci/"),
            };
            // This file names the patterns it looks for.
            if checked && rel != "tests/tests/repository.rs" {
                out.push(path);
            }
        }
    }
}

/// Machine paths in `text`: an absolute path starting with one of the home or work roots (at the
/// start of a word, so `../../home/x` in a relative-path test does not count), or `../shared/`.
fn machine_paths(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        for root in ["/root/", "/home/", "/work/", "/Users/"] {
            let mut from = 0;
            while let Some(i) = line[from..].find(root) {
                let at = from + i;
                let before = line[..at].chars().last();
                let absolute = before.is_none_or(|c| {
                    !(c.is_alphanumeric() || c == '.' || c == '_' || c == '-' || c == '/')
                });
                if absolute {
                    found.push(format!("line {}: {}", n + 1, line.trim()));
                }
                from = at + root.len();
            }
        }
        if line.contains("../shared/") {
            found.push(format!("line {}: {}", n + 1, line.trim()));
        }
    }
    found
}

#[test]
fn no_file_names_a_machine_path() {
    let root = workspace_root();
    let mut files = Vec::new();
    walk(&root, &root, &mut files);
    assert!(
        files.len() > 100,
        "only {} files found under {}",
        files.len(),
        root.display()
    );
    let mut bad = Vec::new();
    for file in &files {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for hit in machine_paths(&text) {
            bad.push(format!(
                "{}: {hit}",
                file.strip_prefix(&root).unwrap_or(file).display()
            ));
        }
    }
    assert!(bad.is_empty(), "machine paths:\n{}", bad.join("\n"));
}

#[test]
fn the_scanner_tells_machine_paths_from_relative_ones() {
    assert_eq!(machine_paths("see /root/.cache/x").len(), 1);
    assert_eq!(machine_paths("\"/home/me/data\"").len(), 1);
    assert_eq!(machine_paths("read ../shared/reference/spec.md").len(), 1);
    assert!(machine_paths("\"../../home/runs/demo\"").is_empty());
    assert!(machine_paths("docs/model.md and runs/work/x").is_empty());
}
