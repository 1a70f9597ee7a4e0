//! The built-in synthetic multimodal corpus: procedurally drawn images of coloured shapes and
//! short rendered words, with captions, questions, preference pairs and safety data about them,
//! written in the real on-disk layouts of the datasets xGen-MM trains and evaluates on. It lets the
//! demo and CI train and evaluate a tiny model end to end without downloading anything.
//!
//! Everything is a pure function of [`SynthConfig`]: the same configuration (seed included) gives
//! byte-identical files. Each item draws from its own random stream (seed, part, index), so
//! changing how many items one part holds leaves every other part unchanged.
//!
//! Layout written under the output directory (see [`write_corpus`]):
//!
//! ```text
//! manifest.json                      every file (size, FNV-1a), every dataset, counts, config
//! pretrain/captions/shard-00000.tar  img2dataset WebDataset shards: {key}.jpg|png, .txt, .json
//! pretrain/interleaved/docs.jsonl    OBELICS-style documents (texts/images/metadata)
//! pretrain/interleaved/images/       their images
//! pretrain/scenes.jsonl              ground truth of every pre-training image
//! sft/llava.json                     LLaVA-1.5 JSON array, multi-turn, some text-only rows
//! sft/multi_image.json               M4-Instruct-style rows with image lists
//! sft/images/, sft/scenes.jsonl
//! dpo/pairs.jsonl                    {id, prompt, image, chosen, rejected}
//! dpo/vlfeedback.json                VLFeedback rows (4 rated completions) for a subset
//! dpo/images/, dpo/scenes.jsonl
//! safety/train.json, safety/test.json  VLGuard layout
//! safety/images/{train,test}/, safety/scenes.jsonl
//! eval/images/synth_val_000000000001.jpg ...  held-out images
//! eval/captions.json                 COCO captions (5 references per image)
//! eval/vqa_questions.json, eval/vqa_annotations.json   VQAv2 (10 answers per question)
//! eval/pope/synth_pope_random.json, eval/pope/synth_pope_adversarial.json   POPE JSONL
//! eval/mmbench.tsv                   MMBench-style TSV with base64 images
//! eval/scenes.jsonl
//! ```
//!
//! Image paths inside a dataset file are relative to the dataset's image root, given in the
//! manifest: the file's own directory for `pretrain/interleaved`, `sft`, `dpo` and `safety`;
//! `eval/images` for the COCO, VQAv2 and POPE files (bare file names, as in the originals); the
//! part's directory for `scenes.jsonl`, where tar members read `shard.tar:member` and MMBench rows
//! `mmbench.tsv#index`.

mod draw;
mod eval;
mod font;
mod lang;
mod out;
mod prefs;
mod pretrain;
mod rng;
mod safety;
mod scene;
mod sft;
mod tasks;

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::DataError;
use crate::progress::Progress;

/// The `format` value of a synthetic corpus manifest.
pub const MANIFEST_FORMAT: &str = "blip3-synth-corpus";
/// The manifest's version.
pub const MANIFEST_VERSION: u32 = 1;
/// The manifest's file name inside the output directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// How much to generate and how. Missing fields in a serialized configuration take the
/// `default` preset's values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SynthConfig {
    /// The seed of everything.
    pub seed: u64,
    /// Smallest image side in pixels (at least 32).
    pub min_side: u32,
    /// Largest image side in pixels (at least `min_side`, at most 1024).
    pub max_side: u32,
    /// JPEG quality, 1 to 100.
    pub jpeg_quality: u8,
    /// Image-caption pairs in the WebDataset shards.
    pub caption_samples: usize,
    /// Samples per shard (1 to 10,000, so that keys keep 9 digits).
    pub shard_size: usize,
    /// Interleaved documents (2 or 3 images each).
    pub interleaved_docs: usize,
    /// Single-image SFT conversations.
    pub sft_single: usize,
    /// Two-image SFT conversations.
    pub sft_multi: usize,
    /// Text-only SFT conversations (mixed into the single-image file).
    pub sft_text_only: usize,
    /// DPO pairs.
    pub dpo_pairs: usize,
    /// How many of the DPO samples are also written in the VLFeedback layout (at most `dpo_pairs`).
    pub vlfeedback_rows: usize,
    /// VLGuard-style training images.
    pub safety_train: usize,
    /// VLGuard-style test images.
    pub safety_test: usize,
    /// Held-out images with captions and VQA questions.
    pub eval_images: usize,
    /// Held-out POPE images (six questions each, per category).
    pub pope_images: usize,
    /// MMBench-style multiple-choice rows.
    pub mmbench_questions: usize,
}

impl SynthConfig {
    /// The `tiny` preset: a small corpus for CI, written in about a second.
    pub fn tiny() -> Self {
        SynthConfig {
            seed: 0,
            min_side: 64,
            max_side: 160,
            jpeg_quality: 90,
            caption_samples: 48,
            shard_size: 24,
            interleaved_docs: 12,
            sft_single: 72,
            sft_multi: 24,
            sft_text_only: 6,
            dpo_pairs: 24,
            vlfeedback_rows: 8,
            safety_train: 24,
            safety_test: 12,
            eval_images: 40,
            pope_images: 12,
            mmbench_questions: 30,
        }
    }

    /// The `default` preset: a few thousand samples of each kind of data.
    pub fn default_preset() -> Self {
        SynthConfig {
            seed: 0,
            min_side: 64,
            max_side: 160,
            jpeg_quality: 90,
            caption_samples: 4000,
            shard_size: 1000,
            interleaved_docs: 500,
            sft_single: 3000,
            sft_multi: 800,
            sft_text_only: 150,
            dpo_pairs: 800,
            vlfeedback_rows: 200,
            safety_train: 600,
            safety_test: 200,
            eval_images: 500,
            pope_images: 150,
            mmbench_questions: 400,
        }
    }

    /// A preset by name: `tiny` or `default`.
    pub fn preset(name: &str) -> Result<Self, DataError> {
        match name {
            "tiny" => Ok(Self::tiny()),
            "default" => Ok(Self::default_preset()),
            other => Err(DataError::Config(format!(
                "unknown synthetic corpus preset {other:?} (expected \"tiny\" or \"default\")"
            ))),
        }
    }

    /// The same configuration with another seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Checks the limits documented on the fields.
    pub fn validate(&self) -> Result<(), DataError> {
        let bad = |msg: String| Err(DataError::Config(format!("synth: {msg}")));
        if self.min_side < 32 {
            return bad(format!("min_side {} is below 32", self.min_side));
        }
        if self.max_side < self.min_side || self.max_side > 1024 {
            return bad(format!(
                "max_side {} must be between min_side {} and 1024",
                self.max_side, self.min_side
            ));
        }
        if !(1..=100).contains(&self.jpeg_quality) {
            return bad(format!(
                "jpeg_quality {} is not in 1..=100",
                self.jpeg_quality
            ));
        }
        if !(1..=10_000).contains(&self.shard_size) {
            return bad(format!(
                "shard_size {} is not in 1..=10000",
                self.shard_size
            ));
        }
        if self.caption_samples > self.shard_size * 100_000 {
            return bad(format!(
                "caption_samples {} needs more than 100000 shards",
                self.caption_samples
            ));
        }
        if self.vlfeedback_rows > self.dpo_pairs {
            return bad(format!(
                "vlfeedback_rows {} exceeds dpo_pairs {}",
                self.vlfeedback_rows, self.dpo_pairs
            ));
        }
        Ok(())
    }

    /// The image size limits.
    fn sizes(&self) -> scene::Sizes {
        scene::Sizes {
            min_side: self.min_side,
            max_side: self.max_side,
        }
    }
}

impl Default for SynthConfig {
    /// The `default` preset.
    fn default() -> Self {
        Self::default_preset()
    }
}

/// One dataset of the corpus: its layout, files, record and image counts, and image root.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetEntry {
    /// A name such as `pretrain/captions` or `eval/vqav2`.
    pub name: String,
    /// The layout: `webdataset`, `obelics-jsonl`, `llava-json`, `m4-json`, `dpo-jsonl`,
    /// `vlfeedback-json`, `vlguard-json`, `coco-captions`, `vqav2`, `pope-jsonl`, `mmbench-tsv`
    /// or `scenes-jsonl`.
    pub format: String,
    /// The dataset's files, relative to the output directory.
    pub files: Vec<String>,
    /// Records: samples, documents, conversations, pairs, questions or rows.
    pub records: usize,
    /// Distinct images the records refer to (or embed).
    pub images: usize,
    /// The directory (relative to the output directory) that image paths in the files are
    /// relative to, if the files refer to image files.
    pub image_root: Option<String>,
}

/// One file of the corpus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the output directory, `/`-separated.
    pub path: String,
    /// Size in bytes.
    pub bytes: u64,
    /// FNV-1a 64-bit checksum of the content, 16 lower-case hex digits.
    pub fnv1a64: String,
}

/// What [`write_corpus`] wrote; also saved as `manifest.json` in the output directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CorpusManifest {
    /// Always [`MANIFEST_FORMAT`].
    pub format: String,
    /// Always [`MANIFEST_VERSION`].
    pub version: u32,
    /// The seed (also in `config`).
    pub seed: u64,
    /// The configuration the corpus was written with.
    pub config: SynthConfig,
    /// The datasets.
    pub datasets: Vec<DatasetEntry>,
    /// Every file written except the manifest itself, sorted by path.
    pub files: Vec<FileEntry>,
}

impl CorpusManifest {
    /// The dataset called `name`, if any.
    pub fn dataset(&self, name: &str) -> Option<&DatasetEntry> {
        self.datasets.iter().find(|d| d.name == name)
    }

    /// Reads a manifest written by [`write_corpus`].
    pub fn load(path: &Path) -> Result<Self, DataError> {
        let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
        let m: CorpusManifest = serde_json::from_str(&text).map_err(|e| {
            DataError::format(path.display(), format!("not a corpus manifest: {e}"))
        })?;
        if m.format != MANIFEST_FORMAT {
            return Err(DataError::format(
                path.display(),
                format!("format is {:?}", m.format),
            ));
        }
        Ok(m)
    }
}

/// Settings shared by all parts of the corpus.
struct Ctx {
    seed: u64,
    sizes: scene::Sizes,
}

impl Ctx {
    /// The random stream of item `index` of part `name`.
    fn rng(&self, name: &str, index: usize) -> rng::Rng {
        rng::Rng::stream(self.seed, name, index as u64)
    }
}

/// An image path (relative to its part's directory) with the scene drawn in it.
type Pictured = (String, scene::Scene);

/// One line of a `scenes.jsonl` ground-truth file.
#[derive(Serialize)]
struct SceneRow<'a> {
    /// The image: a path relative to the file's directory, or `file:member` / `file#row`.
    image: &'a str,
    /// The scene.
    scene: &'a scene::Scene,
}

/// The ground-truth lines of `scenes`.
fn scene_rows(scenes: &[Pictured]) -> Vec<SceneRow<'_>> {
    scenes
        .iter()
        .map(|(image, scene)| SceneRow { image, scene })
        .collect()
}

/// Writes the synthetic corpus under `out_dir` and returns its manifest (also written there as
/// `manifest.json`).
///
/// `out_dir` is created if missing. It must be empty or hold an earlier synthetic corpus: in the
/// latter case the files that corpus's manifest lists are removed first (nothing else is touched),
/// so that a smaller corpus written over a larger one leaves no stale shards behind.
pub fn write_corpus(out_dir: &Path, cfg: &SynthConfig) -> Result<CorpusManifest, DataError> {
    write_corpus_with_progress(out_dir, cfg, false)
}

/// [`write_corpus`], showing the rendered images as progress (see [`crate::progress`]) when
/// `progress` is true.
pub fn write_corpus_with_progress(
    out_dir: &Path,
    cfg: &SynthConfig,
    progress: bool,
) -> Result<CorpusManifest, DataError> {
    cfg.validate()?;
    prepare_dir(out_dir)?;
    let ctx = Ctx {
        seed: cfg.seed,
        sizes: cfg.sizes(),
    };
    let progress = Progress::new(
        "synthetic corpus images",
        expected_images(cfg, &ctx),
        progress,
    );
    let mut out = out::Out::new(out_dir, cfg.jpeg_quality).with_progress(progress);
    let datasets = write_parts(&mut out, &ctx, cfg)?;
    let manifest = CorpusManifest {
        format: MANIFEST_FORMAT.to_string(),
        version: MANIFEST_VERSION,
        seed: cfg.seed,
        config: cfg.clone(),
        datasets,
        files: out.into_files(),
    };
    let mut bytes = out::to_json(&manifest, 2, MANIFEST_FILE)?;
    bytes.push(b'\n');
    let path = out_dir.join(MANIFEST_FILE);
    std::fs::write(&path, bytes).map_err(|e| DataError::io(&path, e))?;
    Ok(manifest)
}

/// Writes every part of the corpus.
fn write_parts(
    out: &mut out::Out,
    ctx: &Ctx,
    cfg: &SynthConfig,
) -> Result<Vec<DatasetEntry>, DataError> {
    let mut datasets = Vec::new();
    datasets.extend(pretrain::write(out, ctx, cfg)?);
    datasets.extend(sft::write(out, ctx, cfg)?);
    datasets.extend(prefs::write(out, ctx, cfg)?);
    datasets.extend(safety::write(out, ctx, cfg)?);
    datasets.extend(eval::write(out, ctx, cfg)?);
    Ok(datasets)
}

/// The images [`write_corpus`] renders: exact but for the few MMBench rows that find no question
/// (they render none).
fn expected_images(cfg: &SynthConfig, ctx: &Ctx) -> u64 {
    // Each interleaved document's first draw is its image count (see `pretrain::write`).
    let interleaved: u64 = (0..cfg.interleaved_docs)
        .map(|d| ctx.rng("pretrain-doc", d).range(2, 3) as u64)
        .sum();
    let per_item = cfg.caption_samples
        + cfg.sft_single
        + 2 * cfg.sft_multi
        + cfg.dpo_pairs
        + cfg.safety_train
        + cfg.safety_test
        + cfg.eval_images
        + cfg.pope_images
        + cfg.mmbench_questions;
    interleaved + per_item as u64
}

/// Creates `dir`, or checks that it is empty or an earlier corpus and removes that corpus's files.
fn prepare_dir(dir: &Path) -> Result<(), DataError> {
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    let manifest = dir.join(MANIFEST_FILE);
    if manifest.is_file() {
        let old = CorpusManifest::load(&manifest)?;
        for f in &old.files {
            let rel = Path::new(&f.path);
            let safe = rel
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
            if !safe {
                return Err(DataError::format(
                    manifest.display(),
                    format!("refusing to remove {:?}: not a plain relative path", f.path),
                ));
            }
            let path = dir.join(rel);
            if path.is_file() {
                std::fs::remove_file(&path).map_err(|e| DataError::io(&path, e))?;
            }
        }
        std::fs::remove_file(&manifest).map_err(|e| DataError::io(&manifest, e))?;
        return Ok(());
    }
    let mut entries = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    if entries.next().is_some() {
        return Err(DataError::Config(format!(
            "{} is neither empty nor a synthetic corpus (no {MANIFEST_FILE}); choose another \
             directory",
            dir.display()
        )));
    }
    Ok(())
}

/// Every word the corpus's prose uses, lower-cased, sorted and without duplicates: colours,
/// shapes, positions, numbers (words and digits), yes/no, letters and the template words. Text
/// fields of the corpus split at characters other than ASCII letters, digits and `'` give only
/// these words (OCR strings and sign words give upper-case runs of the listed letters and digits,
/// which tokenizers see as those characters). Useful to check a tokenizer's coverage.
pub fn render_vocabulary() -> Vec<&'static str> {
    let mut words: Vec<&'static str> = lang::VOCABULARY
        .iter()
        .flat_map(|group| group.split_whitespace())
        .collect();
    words.sort_unstable();
    words.dedup();
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_progress_total_matches_the_rendered_images() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SynthConfig::tiny();
        let ctx = Ctx {
            seed: cfg.seed,
            sizes: cfg.sizes(),
        };
        let mut out = out::Out::new(dir.path(), cfg.jpeg_quality);
        write_parts(&mut out, &ctx, &cfg).unwrap();
        let expected = expected_images(&cfg, &ctx);
        let rendered = out.images();
        // Only MMBench rows without a question render nothing.
        assert!(
            rendered <= expected && expected - rendered <= cfg.mmbench_questions as u64 / 4,
            "rendered {rendered}, expected {expected}"
        );
    }
}
