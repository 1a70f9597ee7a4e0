//! Benchmarks on the synthetic corpus ([`blip3_data::synth`]): its held-out `eval/` files in the
//! COCO captions, VQAv2, POPE and MMBench layouts (and the VLGuard-style `safety/test.json`),
//! found through the corpus manifest (`datasets[*].format`, `files`, `image_root`).
//!
//! | manifest format | benchmark | family |
//! | --- | --- | --- |
//! | `coco-captions` | `synth_captions` | captioning |
//! | `vqav2` | `synth_vqav2` | VQA (images `synth_val_{id:012}` + `.jpg`/`.png`) |
//! | `pope-jsonl` (all categories) | `synth_pope` | POPE |
//! | `mmbench-tsv` | `synth_mmbench` | multiple choice |
//! | `vlguard-json` (`safety/test`) | `synth_vlguard` | safety |
//!
//! The corpus has no separate training split for evaluation, so few-shot examples come from the
//! evaluated file itself, the query's image excluded.
//!
//! Without a data root the corpus is written on the fly ([`ensure_corpus`]) into a directory
//! named after the configuration's fingerprint, under `$XDG_CACHE_HOME/blip3` (else
//! `$HOME/.cache/blip3`, else the system temp directory), and reused by later runs with the same
//! configuration. It is written to a temporary sibling first and renamed into place, so that
//! concurrent runs never see half a corpus.

use std::path::{Path, PathBuf};

use blip3_data::readers::eval_data::ImageLocator;
use blip3_data::synth::{CorpusManifest, MANIFEST_FILE, SynthConfig, write_corpus};

use super::Spec;
use super::caption::CaptionSpec;
use super::mc::{McFormat, McSpec};
use super::pope::PopeSpec;
use super::safety::SafetySpec;
use super::vqa::{FEW_SHOT_MAX_NEW_TOKENS, VqaSpec};
use crate::error::EvalError;
use crate::fingerprint::fnv1a64_hex;
use crate::metrics::vqa::Processor;

/// The default cache directory of synthetic corpora.
pub fn default_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("blip3");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h).join(".cache").join("blip3");
    }
    std::env::temp_dir().join("blip3")
}

/// The corpus directory to evaluate: `root` when given (it must hold a corpus manifest), else a
/// corpus written with `cfg` into `dir` (or a fingerprint-named directory under the cache
/// directory), reused when it already holds a corpus of the same configuration.
pub fn ensure_corpus(
    root: Option<&Path>,
    cfg: &SynthConfig,
    dir: Option<&Path>,
) -> Result<PathBuf, EvalError> {
    if let Some(root) = root {
        let manifest = root.join(MANIFEST_FILE);
        if !manifest.is_file() {
            return Err(EvalError::Config(format!(
                "{} is not a synthetic corpus (no {MANIFEST_FILE}); write one with `blip3 data \
                 synth` or leave the data root out",
                root.display()
            )));
        }
        return Ok(root.to_path_buf());
    }
    let cfg_json =
        serde_json::to_string(cfg).map_err(|e| EvalError::Config(format!("synth config: {e}")))?;
    let target = match dir {
        Some(d) => d.to_path_buf(),
        None => default_cache_dir().join(format!("synth-{}", fnv1a64_hex(cfg_json.as_bytes()))),
    };
    let manifest = target.join(MANIFEST_FILE);
    if manifest.is_file() {
        if let Ok(m) = CorpusManifest::load(&manifest)
            && m.config == *cfg
        {
            return Ok(target);
        }
        if dir.is_some() {
            // An explicit directory with another corpus: rewrite it in place.
            write_corpus(&target, cfg)?;
            return Ok(target);
        }
    }
    let parent = target
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&parent).map_err(|e| EvalError::io(&parent, e))?;
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "synth".into());
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| EvalError::io(&tmp, e))?;
    }
    log::info!("writing the synthetic corpus into {}", target.display());
    write_corpus(&tmp, cfg)?;
    if target.exists() && !target.join(MANIFEST_FILE).is_file() {
        // An empty or partial directory (e.g. created by hand): replace it.
        let _ = std::fs::remove_dir(&target);
    }
    match std::fs::rename(&tmp, &target) {
        Ok(()) => Ok(target),
        Err(_) if target.join(MANIFEST_FILE).is_file() => {
            // Another run won the race; use its corpus.
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(target)
        }
        Err(e) => Err(EvalError::io(&target, e)),
    }
}

/// The benchmarks of a corpus directory.
pub fn specs(dir: &Path) -> Result<Vec<Spec>, EvalError> {
    let manifest = CorpusManifest::load(&dir.join(MANIFEST_FILE))?;
    let root_of = |entry: &blip3_data::synth::DatasetEntry| {
        entry
            .image_root
            .as_ref()
            .map(|r| dir.join(r))
            .unwrap_or_else(|| dir.to_path_buf())
    };
    let missing = |name: &str, what: &str| {
        EvalError::format(
            dir.join(MANIFEST_FILE).display(),
            format!("dataset {name} lists no {what}"),
        )
    };
    let mut specs = Vec::new();
    let mut pope_files = Vec::new();
    let mut pope_images = None;
    for d in &manifest.datasets {
        match d.format.as_str() {
            "coco-captions" => specs.push(Spec::Caption(CaptionSpec {
                name: "synth_captions".into(),
                annotations: dir.join(d.files.first().ok_or_else(|| missing(&d.name, "file"))?),
                images: root_of(d),
                support: None,
            })),
            "vqav2" => {
                let q = d
                    .files
                    .first()
                    .ok_or_else(|| missing(&d.name, "questions"))?;
                let a = d
                    .files
                    .get(1)
                    .ok_or_else(|| missing(&d.name, "annotations"))?;
                specs.push(Spec::Vqa(VqaSpec {
                    name: "synth_vqav2".into(),
                    questions: dir.join(q),
                    annotations: dir.join(a),
                    images: ImageLocator::new(root_of(d), "synth_val_{id:012}.jpg")?,
                    support: None,
                    few_shot_processor: Processor::OpenFlamingo,
                    chat_processor: Processor::Official,
                    few_shot_max_new_tokens: FEW_SHOT_MAX_NEW_TOKENS,
                }));
            }
            "pope-jsonl" => {
                let category = d
                    .name
                    .rsplit_once("pope_")
                    .map(|(_, c)| c.to_string())
                    .unwrap_or_else(|| d.name.clone());
                for f in &d.files {
                    pope_files.push((dir.join(f), category.clone()));
                }
                pope_images = Some(root_of(d));
            }
            "mmbench-tsv" => specs.push(Spec::Mc(McSpec {
                name: "synth_mmbench".into(),
                file: dir.join(d.files.first().ok_or_else(|| missing(&d.name, "file"))?),
                format: McFormat::Tsv,
            })),
            "vlguard-json" if d.name.ends_with("test") => specs.push(Spec::Safety(SafetySpec {
                name: "synth_vlguard".into(),
                file: dir.join(d.files.first().ok_or_else(|| missing(&d.name, "file"))?),
                images: root_of(d),
            })),
            _ => {}
        }
    }
    if let Some(images) = pope_images {
        specs.push(Spec::Pope(PopeSpec {
            name: "synth_pope".into(),
            files: pope_files,
            images,
        }));
    }
    // Captioning, VQA, POPE, multiple choice, safety.
    specs.sort_by_key(|s| s.family() as u8);
    Ok(specs)
}
