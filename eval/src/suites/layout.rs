//! The data-root layout of real benchmark files, for the `paper` suite (and the family suites
//! given `--data-root`). Every benchmark lives in its own directory under the root; directories
//! that are absent are skipped, unknown ones ignored.
//!
//! ```text
//! ROOT/
//!   coco/ nocaps/ textcaps/         captioning, COCO caption format
//!     annotations.json              the evaluated split (e.g. coco_karpathy_test_gt.json)
//!     images/                       image files, named as in the `images[*].file_name` entries
//!     train_annotations.json        optional: training split for few-shot examples
//!     train_images/                 optional: its images (default: images/)
//!   vqav2/ okvqa/ textvqa/ vizwiz/  VQA, VQAv2 file format (OpenFlamingo's conversions for
//!     questions.json                  TextVQA and VizWiz)
//!     annotations.json
//!     images/                       vqav2, okvqa: COCO_val2014_{id:012}.jpg; textvqa: {id}.jpg;
//!                                   vizwiz: {id} (the id is the file name)
//!     train_questions.json          optional: training split for few-shot examples
//!     train_annotations.json
//!     train_images/                 optional (default: images/); vqav2, okvqa:
//!                                   COCO_train2014_{id:012}.jpg
//!   pope/                           POPE, one JSONL file per category, e.g.
//!     coco_pope_random.json           coco_pope_{random,popular,adversarial}.json (the category is
//!     images/                         the file stem after its last `_`); images: COCO val2014
//!   mmbench/ seedbench/ mmstar/ ai2d/   multiple choice, one MMBench-style TSV each (*.tsv;
//!                                   VLMEvalKit's circular copies are recognised)
//!   scienceqa/                      ScienceQA-IMG: one *.json or *.jsonl, images/ optional
//!   vlguard/                        VLGuard: test.json, images/ (the unzipped test folder)
//! ```
//!
//! An image whose file is missing under the pattern's extension is also looked up with `.jpg`,
//! `.png`, `.jpeg` and `.webp`.

use std::path::{Path, PathBuf};

use blip3_data::readers::eval_data::ImageLocator;

use super::Spec;
use super::caption::CaptionSpec;
use super::mc::{McFormat, McSpec};
use super::pope::PopeSpec;
use super::safety::SafetySpec;
use super::vqa::{FEW_SHOT_MAX_NEW_TOKENS, VqaSpec};
use crate::error::EvalError;
use crate::metrics::vqa::Processor;

/// Captioning benchmark directories.
pub const CAPTION_BENCHMARKS: [&str; 3] = ["coco", "nocaps", "textcaps"];
/// VQA benchmark directories.
pub const VQA_BENCHMARKS: [&str; 4] = ["vqav2", "okvqa", "textvqa", "vizwiz"];
/// MMBench-style TSV benchmark directories.
pub const TSV_BENCHMARKS: [&str; 4] = ["mmbench", "seedbench", "mmstar", "ai2d"];

/// `dir/train_images` when it exists, else `dir/images`.
fn train_images(dir: &Path) -> PathBuf {
    let t = dir.join("train_images");
    if t.is_dir() { t } else { dir.join("images") }
}

/// The files in `dir` with one of `exts`, sorted.
fn files_with(dir: &Path, exts: &[&str]) -> Result<Vec<PathBuf>, EvalError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| EvalError::io(dir, e))? {
        let path = entry.map_err(|e| EvalError::io(dir, e))?.path();
        let ok = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| exts.contains(&e));
        if ok && path.is_file() {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// The single data file of a benchmark directory (the first, sorted, with a warning when there
/// are several).
fn single(dir: &Path, exts: &[&str]) -> Result<Option<PathBuf>, EvalError> {
    let files = files_with(dir, exts)?;
    if files.len() > 1 {
        log::warn!(
            "{}: {} candidate files, using {}",
            dir.display(),
            files.len(),
            files[0].display()
        );
    }
    Ok(files.into_iter().next())
}

/// The image file patterns of a VQA benchmark: (evaluated split, training split).
fn vqa_patterns(name: &str) -> (&'static str, &'static str) {
    match name {
        "vqav2" | "okvqa" => ("COCO_val2014_{id:012}.jpg", "COCO_train2014_{id:012}.jpg"),
        "textvqa" => ("{id}.jpg", "{id}.jpg"),
        _ => ("{id}", "{id}"),
    }
}

/// The benchmarks present under `root`, in the order of the layout above.
pub fn discover(root: &Path) -> Result<Vec<Spec>, EvalError> {
    if !root.is_dir() {
        return Err(EvalError::Config(format!(
            "data root {} is not a directory",
            root.display()
        )));
    }
    let mut specs = Vec::new();
    for name in CAPTION_BENCHMARKS {
        let dir = root.join(name);
        let ann = dir.join("annotations.json");
        if !ann.is_file() {
            continue;
        }
        let train = dir.join("train_annotations.json");
        specs.push(Spec::Caption(CaptionSpec {
            name: name.into(),
            annotations: ann,
            images: dir.join("images"),
            support: train.is_file().then(|| (train, train_images(&dir))),
        }));
    }
    for name in VQA_BENCHMARKS {
        let dir = root.join(name);
        let (q, a) = (dir.join("questions.json"), dir.join("annotations.json"));
        if !q.is_file() || !a.is_file() {
            continue;
        }
        let (pattern, train_pattern) = vqa_patterns(name);
        let (tq, ta) = (
            dir.join("train_questions.json"),
            dir.join("train_annotations.json"),
        );
        let support = if tq.is_file() && ta.is_file() {
            Some((
                tq,
                ta,
                ImageLocator::new(train_images(&dir), train_pattern)?,
            ))
        } else {
            None
        };
        let chat_processor = match name {
            "textvqa" | "vizwiz" => Processor::EvalAi,
            _ => Processor::Official,
        };
        specs.push(Spec::Vqa(VqaSpec {
            name: name.into(),
            questions: q,
            annotations: a,
            images: ImageLocator::new(dir.join("images"), pattern)?,
            support,
            few_shot_processor: Processor::OpenFlamingo,
            chat_processor,
            few_shot_max_new_tokens: if name == "textvqa" {
                10
            } else {
                FEW_SHOT_MAX_NEW_TOKENS
            },
        }));
    }
    let pope = root.join("pope");
    if pope.is_dir() {
        let files: Vec<(PathBuf, String)> = files_with(&pope, &["json", "jsonl"])?
            .into_iter()
            .map(|f| {
                let stem = f
                    .file_stem()
                    .map(|s| s.to_string_lossy().to_string())
                    .unwrap_or_default();
                let category = stem
                    .rsplit_once('_')
                    .map(|(_, c)| c.to_string())
                    .unwrap_or(stem);
                (f, category)
            })
            .collect();
        if !files.is_empty() {
            specs.push(Spec::Pope(PopeSpec {
                name: "pope".into(),
                files,
                images: pope.join("images"),
            }));
        }
    }
    for name in TSV_BENCHMARKS {
        let dir = root.join(name);
        if !dir.is_dir() {
            continue;
        }
        if let Some(file) = single(&dir, &["tsv"])? {
            specs.push(Spec::Mc(McSpec {
                name: name.into(),
                file,
                format: McFormat::Tsv,
            }));
        }
    }
    let sqa = root.join("scienceqa");
    if sqa.is_dir()
        && let Some(file) = single(&sqa, &["json", "jsonl"])?
    {
        let images = sqa.join("images");
        specs.push(Spec::Mc(McSpec {
            name: "scienceqa".into(),
            file,
            format: McFormat::ScienceQa {
                images: images.is_dir().then_some(images),
            },
        }));
    }
    let vlguard = root.join("vlguard");
    let test = vlguard.join("test.json");
    if test.is_file() {
        specs.push(Spec::Safety(SafetySpec {
            name: "vlguard".into(),
            file: test,
            images: vlguard.join("images"),
        }));
    }
    Ok(specs)
}
