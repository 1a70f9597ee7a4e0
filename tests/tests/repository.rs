//! The repository stands alone: no source file, script, config or document names a path on a
//! development machine (an absolute path under the `root`, `home`, `work` or `Users` folders) or
//! the material outside the repository that the project was started from (the `shared` folder
//! beside the clone). Facts the code
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
            if checked {
                out.push(path);
            }
        }
    }
}

/// The folders whose absolute paths are machine paths, as `/name/`. Built from the names so
/// that this file does not itself contain what it looks for.
fn roots() -> Vec<String> {
    ["root", "home", "work", "Users"]
        .iter()
        .map(|name| format!("/{name}/"))
        .collect()
}

/// The folder beside the clone, as a relative path (`..` then `shared`).
fn outside() -> String {
    format!("../{}/", "shared")
}

/// Machine paths in `text`: an absolute path starting with one of [`roots`] (at the start of a
/// word, so a relative path through `../../home` does not count), or [`outside`].
fn machine_paths(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let outside = outside();
    for (n, line) in text.lines().enumerate() {
        for root in roots() {
            let root = root.as_str();
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
        if line.contains(&outside) {
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
    let [root, home, work, _] = ["root", "home", "work", "Users"];
    assert_eq!(machine_paths(&format!("see /{root}/.cache/x")).len(), 1);
    assert_eq!(machine_paths(&format!("\"/{home}/me/data\"")).len(), 1);
    assert_eq!(
        machine_paths(&format!("read {}reference/spec.md", outside())).len(),
        1
    );
    assert!(machine_paths(&format!("\"../../{home}/runs/demo\"")).is_empty());
    assert!(machine_paths(&format!("docs/model.md and runs/{work}/x")).is_empty());
}
