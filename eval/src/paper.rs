//! The numbers the xGen-MM (BLIP-3) releases report, to print beside ours
//! (transcribed below from the released models' cards; docs/reference.md §5).
//!
//! Few-shot rows (base models, OpenFlamingo protocol) exist for 0, 4 and 8 shots; instruction
//! rows have no shot count. The paper's scales: CIDEr × 100, VQA accuracy in percent, POPE,
//! multiple choice and VLGuard ASR in percent. POPE is compared on F1 and MMBench on
//! CircularEval accuracy, which is how VLMEvalKit (the harness of the instruct numbers) reports
//! them as far as we know (not verified against its source).
//!
//! [`PaperModel::Auto`] picks, for few-shot benchmarks, the v1.5 base card (then the r-v1 base
//! card, which alone lists VizWiz) and, for instruction benchmarks, the v1.5 DPO card, then the
//! v1.5 instruct-interleave card, then the r-v1 instruct card.

use serde::{Deserialize, Serialize};

use crate::benchmark::{Benchmark, PromptStyle, TaskFamily};
use crate::error::EvalError;

/// Which released model's numbers to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PaperModel {
    /// The most relevant card per benchmark (see the module documentation).
    Auto,
    /// `xgen-mm-phi3-mini-base-r-v1.5`.
    BaseV15,
    /// `xgen-mm-phi3-mini-base-r-v1`.
    BaseV1,
    /// `xgen-mm-phi3-mini-instruct-r-v1`.
    InstructV1,
    /// `xgen-mm-phi3-mini-instruct-interleave-r-v1.5`.
    InterleaveV15,
    /// `xgen-mm-phi3-mini-instruct-dpo-r-v1.5`.
    DpoV15,
}

impl PaperModel {
    /// Every choice, in documentation order.
    pub const ALL: [PaperModel; 6] = [
        PaperModel::Auto,
        PaperModel::BaseV15,
        PaperModel::BaseV1,
        PaperModel::InstructV1,
        PaperModel::InterleaveV15,
        PaperModel::DpoV15,
    ];

    /// The short name used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            PaperModel::Auto => "auto",
            PaperModel::BaseV15 => "base-v1.5",
            PaperModel::BaseV1 => "base-v1",
            PaperModel::InstructV1 => "instruct-v1",
            PaperModel::InterleaveV15 => "interleave-v1.5",
            PaperModel::DpoV15 => "dpo-v1.5",
        }
    }

    /// Parses a short name.
    pub fn parse(name: &str) -> Result<Self, EvalError> {
        PaperModel::ALL
            .into_iter()
            .find(|m| m.as_str() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = PaperModel::ALL.iter().map(|m| m.as_str()).collect();
                EvalError::Config(format!(
                    "unknown paper model {name:?} (expected one of {})",
                    names.join(", ")
                ))
            })
    }

    /// The released checkpoint's name.
    pub fn checkpoint(self) -> &'static str {
        match self {
            PaperModel::Auto => "auto",
            PaperModel::BaseV15 => "xgen-mm-phi3-mini-base-r-v1.5",
            PaperModel::BaseV1 => "xgen-mm-phi3-mini-base-r-v1",
            PaperModel::InstructV1 => "xgen-mm-phi3-mini-instruct-r-v1",
            PaperModel::InterleaveV15 => "xgen-mm-phi3-mini-instruct-interleave-r-v1.5",
            PaperModel::DpoV15 => "xgen-mm-phi3-mini-instruct-dpo-r-v1.5",
        }
    }
}

/// A reported number next to ours.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaperRef {
    /// The released checkpoint the number is for.
    pub model: String,
    /// What the number is (e.g. `CIDEr x100`).
    pub metric: String,
    /// The reported value.
    pub value: f64,
    /// Our value on the same scale, when we have one.
    pub ours: Option<f64>,
    /// A caveat, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// One reported number: model, benchmark, shots (`None` for instruction benchmarks), value,
/// caveat.
type Row = (
    PaperModel,
    &'static str,
    Option<usize>,
    f64,
    Option<&'static str>,
);

/// The model-card numbers (docs/reference.md §5).
const ROWS: &[Row] = &[
    // v1.5 base (card), 0 / 4 / 8 shots.
    (PaperModel::BaseV15, "vqav2", Some(0), 43.1, None),
    (PaperModel::BaseV15, "vqav2", Some(4), 66.3, None),
    (PaperModel::BaseV15, "vqav2", Some(8), 66.9, None),
    (PaperModel::BaseV15, "textvqa", Some(0), 34.0, None),
    (PaperModel::BaseV15, "textvqa", Some(4), 54.2, None),
    (PaperModel::BaseV15, "textvqa", Some(8), 55.3, None),
    (PaperModel::BaseV15, "okvqa", Some(0), 28.0, None),
    (PaperModel::BaseV15, "okvqa", Some(4), 48.9, None),
    (PaperModel::BaseV15, "okvqa", Some(8), 50.1, None),
    (PaperModel::BaseV15, "coco", Some(0), 67.2, None),
    (PaperModel::BaseV15, "coco", Some(4), 107.6, None),
    (PaperModel::BaseV15, "coco", Some(8), 109.8, None),
    (PaperModel::BaseV15, "nocaps", Some(0), 82.6, None),
    (PaperModel::BaseV15, "nocaps", Some(4), 100.8, None),
    (PaperModel::BaseV15, "nocaps", Some(8), 104.6, None),
    (PaperModel::BaseV15, "textcaps", Some(0), 69.5, None),
    (PaperModel::BaseV15, "textcaps", Some(4), 89.9, None),
    (PaperModel::BaseV15, "textcaps", Some(8), 94.0, None),
    // r-v1 base (card).
    (PaperModel::BaseV1, "coco", Some(0), 81.7, None),
    (PaperModel::BaseV1, "coco", Some(4), 110.5, None),
    (PaperModel::BaseV1, "coco", Some(8), 112.1, None),
    (PaperModel::BaseV1, "nocaps", Some(0), 80.2, None),
    (PaperModel::BaseV1, "nocaps", Some(4), 101.7, None),
    (PaperModel::BaseV1, "nocaps", Some(8), 104.4, None),
    (PaperModel::BaseV1, "textcaps", Some(0), 60.7, None),
    (PaperModel::BaseV1, "textcaps", Some(4), 84.6, None),
    (PaperModel::BaseV1, "textcaps", Some(8), 87.7, None),
    (PaperModel::BaseV1, "okvqa", Some(0), 26.5, None),
    (PaperModel::BaseV1, "okvqa", Some(4), 49.2, None),
    (PaperModel::BaseV1, "okvqa", Some(8), 49.1, None),
    (PaperModel::BaseV1, "textvqa", Some(0), 36.0, None),
    (PaperModel::BaseV1, "textvqa", Some(4), 46.1, None),
    (PaperModel::BaseV1, "textvqa", Some(8), 46.4, None),
    (PaperModel::BaseV1, "vizwiz", Some(0), 21.2, None),
    (PaperModel::BaseV1, "vizwiz", Some(4), 38.4, None),
    (PaperModel::BaseV1, "vizwiz", Some(8), 44.3, None),
    (PaperModel::BaseV1, "vqav2", Some(0), 48.1, None),
    (PaperModel::BaseV1, "vqav2", Some(4), 63.9, None),
    (PaperModel::BaseV1, "vqav2", Some(8), 63.8, None),
    // r-v1 instruct (card).
    (
        PaperModel::InstructV1,
        "seedbench",
        None,
        72.1,
        Some("SEED-IMG"),
    ),
    (
        PaperModel::InstructV1,
        "mmbench",
        None,
        74.1,
        Some("MMBench-dev"),
    ),
    (PaperModel::InstructV1, "mmstar", None, 44.6, None),
    (
        PaperModel::InstructV1,
        "scienceqa",
        None,
        74.2,
        Some("ScienceQA-test"),
    ),
    (PaperModel::InstructV1, "pope", None, 87.2, None),
    (PaperModel::InstructV1, "ai2d", None, 75.8, None),
    // v1.5 instruct-interleave (card mirrors; the second group from an aggregator).
    (
        PaperModel::InterleaveV15,
        "seedbench",
        None,
        72.2,
        Some("SEED-IMG"),
    ),
    (PaperModel::InterleaveV15, "scienceqa", None, 88.3, None),
    (
        PaperModel::InterleaveV15,
        "pope",
        None,
        87.0,
        Some("unverified aggregator"),
    ),
    (
        PaperModel::InterleaveV15,
        "textvqa",
        None,
        71.0,
        Some("unverified aggregator"),
    ),
    (
        PaperModel::InterleaveV15,
        "ai2d",
        None,
        74.2,
        Some("unverified aggregator"),
    ),
    (
        PaperModel::InterleaveV15,
        "vqav2",
        None,
        81.5,
        Some("unverified aggregator"),
    ),
    // v1.5 DPO (card).
    (
        PaperModel::DpoV15,
        "vlguard",
        None,
        5.2,
        Some("ASR, lower is better"),
    ),
    (PaperModel::DpoV15, "pope", None, 86.8, None),
    (
        PaperModel::DpoV15,
        "mmbench",
        None,
        76.4,
        Some("MMBench-dev"),
    ),
    (
        PaperModel::DpoV15,
        "seedbench",
        None,
        72.1,
        Some("SEED-IMG"),
    ),
    (PaperModel::DpoV15, "mmstar", None, 47.1, None),
];

/// What the paper's number measures, per family.
fn paper_metric(family: TaskFamily) -> &'static str {
    match family {
        TaskFamily::Caption => "CIDEr x100",
        TaskFamily::Vqa => "VQA accuracy %",
        TaskFamily::Pope => "F1 %",
        TaskFamily::Mc => "accuracy % (CircularEval for MMBench)",
        TaskFamily::Safety => "ASR %",
    }
}

/// Our primary metric on the paper's scale (CIDEr and fractions × 100, VQA `overall` as is).
pub fn to_paper_scale(family: TaskFamily, primary: f64) -> f64 {
    match family {
        TaskFamily::Vqa => primary,
        _ => primary * 100.0,
    }
}

/// The reported number for a benchmark, if the chosen card (or, with [`PaperModel::Auto`], any
/// fitting card) has one; `primary` is our primary metric on its reference-tool scale.
pub fn lookup(model: PaperModel, bench: &Benchmark, primary: Option<f64>) -> Option<PaperRef> {
    let few_shot = matches!(bench.task.family(), TaskFamily::Caption | TaskFamily::Vqa)
        && bench.style == PromptStyle::FewShot;
    let chain: Vec<PaperModel> = match model {
        PaperModel::Auto if few_shot => vec![PaperModel::BaseV15, PaperModel::BaseV1],
        PaperModel::Auto => vec![
            PaperModel::DpoV15,
            PaperModel::InterleaveV15,
            PaperModel::InstructV1,
        ],
        m => vec![m],
    };
    let wanted_shots = few_shot.then_some(bench.shots);
    chain.into_iter().find_map(|m| {
        ROWS.iter()
            .find(|(rm, name, s, _, _)| *rm == m && *name == bench.name && *s == wanted_shots)
            .map(|&(rm, _, _, value, note)| PaperRef {
                model: rm.checkpoint().to_string(),
                metric: paper_metric(bench.task.family()).to_string(),
                value,
                ours: primary.map(|p| to_paper_scale(bench.task.family(), p)),
                note: note.map(str::to_string),
            })
    })
}
