//! The crate layering of the README ("What is in it"), checked from `cargo metadata`: every
//! dependency between workspace crates (normal, dev and build) must point down the layers, and
//! within each library no two top-level modules may import each other, directly or through a
//! chain. A new back-edge or import cycle fails here with the edge named.
//!
//! Layers, top to bottom: `blip3-tests`; `blip3-cli`; `blip3-train`, `blip3-eval`, `blip3-server`;
//! `blip3-processor`; `blip3-data`, `blip3-model`; `blip3-shaders`; `blip3-fixtures` (the
//! dependency-free crate of test fixtures, a dev-dependency only, so any crate's tests and
//! benchmarks may use it). Crates on one layer never depend on each other (the model never
//! imports data; evaluation never needs the trainer).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn layer(name: &str) -> Option<u32> {
    Some(match name {
        "blip3-fixtures" => 0,
        "blip3-shaders" => 1,
        "blip3-data" | "blip3-model" => 2,
        "blip3-processor" => 3,
        "blip3-train" | "blip3-eval" | "blip3-server" => 4,
        "blip3-cli" => 5,
        "blip3-tests" => 6,
        _ => return None,
    })
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace root")
        .to_path_buf()
}

fn metadata() -> serde_json::Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(workspace_root())
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata JSON")
}

#[test]
fn crate_dependencies_point_down_the_layers() {
    let meta = metadata();
    let packages = meta["packages"].as_array().expect("packages");
    let mut seen = BTreeSet::new();
    let mut back_edges = Vec::new();
    for p in packages {
        let name = p["name"].as_str().expect("package name");
        let Some(from) = layer(name) else {
            panic!("workspace crate {name} has no layer here; add it to `layer` and the README");
        };
        seen.insert(name.to_string());
        for d in p["dependencies"].as_array().expect("dependencies") {
            let dep = d["name"].as_str().expect("dependency name");
            let Some(to) = layer(dep) else { continue };
            let kind = d["kind"].as_str().unwrap_or("normal");
            // The fixtures are for tests and benchmarks: a library's own dependency only in the
            // tests crate, whose library is test helpers.
            let fixtures_outside_dev =
                dep == "blip3-fixtures" && kind != "dev" && name != "blip3-tests";
            if to >= from || fixtures_outside_dev {
                back_edges.push(format!("{name} -> {dep} ({kind})"));
            }
        }
    }
    assert!(
        back_edges.is_empty(),
        "dependencies against the layering: {back_edges:?}"
    );
    // The check covers the whole workspace.
    for expected in [
        "blip3-model",
        "blip3-data",
        "blip3-processor",
        "blip3-shaders",
    ] {
        assert!(
            seen.contains(expected),
            "{expected} missing from cargo metadata"
        );
    }
}

/// The top-level modules of a library: `src/<name>.rs` and `src/<name>/`.
fn top_level_module(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel
        .components()
        .next()?
        .as_os_str()
        .to_string_lossy()
        .to_string();
    let name = first.trim_end_matches(".rs").to_string();
    (name != "lib" && name != "main").then_some(name)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read source dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `crate::name` references in `text`, outside line comments.
fn crate_refs(text: &str) -> BTreeSet<String> {
    let mut refs = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let tail = &rest[i + "crate::".len()..];
            let name: String = tail
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                refs.insert(name);
            }
            rest = tail;
        }
        // `use crate::{a, b::c}` lists.
        if let Some(i) = code.find("crate::{") {
            let list = &code[i + "crate::{".len()..];
            for item in list.split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    refs.insert(name);
                }
            }
        }
    }
    refs
}

/// A cycle in `graph`, if any, as the list of modules around it.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(pos) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[pos..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(c) = visit(node, graph, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

#[test]
fn no_import_cycles_between_top_level_modules() {
    let root = workspace_root();
    let mut cycles = Vec::new();
    for krate in [
        "model",
        "data",
        "processor",
        "train",
        "eval",
        "cli",
        "shaders",
        "server",
    ] {
        let src = root.join(krate).join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let modules: BTreeSet<String> = files
            .iter()
            .filter_map(|f| top_level_module(&src, f))
            .collect();
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for file in &files {
            let Some(from) = top_level_module(&src, file) else {
                continue;
            };
            let text = std::fs::read_to_string(file).expect("read source");
            let entry = graph.entry(from.clone()).or_default();
            for to in crate_refs(&text) {
                if to != from && modules.contains(&to) {
                    entry.insert(to);
                }
            }
        }
        if let Some(c) = find_cycle(&graph) {
            cycles.push(format!("{krate}: {}", c.join(" -> ")));
        }
    }
    assert!(cycles.is_empty(), "import cycles: {cycles:?}");
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    assert_eq!(find_cycle(&g), None);
    g.entry("c".into()).or_default().insert("a".into());
    assert_eq!(
        find_cycle(&g),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    let refs =
        crate_refs("use crate::{engine::X, report};\nlet y = crate::paper::f(); // crate::no");
    assert_eq!(
        refs.into_iter().collect::<Vec<_>>(),
        vec!["engine", "paper", "report"]
    );
}
