//! Held-out checks on the synthetic corpus that tell whether a training stage taught the model
//! what it should (used by `blip3 demo` and the learning tests): captioning CIDEr after
//! pre-training, VQA accuracy after instruction tuning, hallucination preference and POPE after
//! DPO, attack success rate on unsafe prompts after safety tuning. Each check runs the regular
//! suites (or the likelihood benchmark) on the corpus's held-out `eval/` split.

use std::path::{Path, PathBuf};

use burn::prelude::Device;
use serde::{Deserialize, Serialize};

use crate::engine::{EngineOptions, EvalModel, TokenizerSource};
use crate::error::EvalError;
use crate::likelihood::{preference_accuracy, synthetic_hallucination_pairs};
use crate::suites::{PromptStyle, SuiteName, SuiteOptions, run_suite};

/// A held-out check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Check {
    /// CIDEr of zero-shot captions (few-shot prompt style of base models).
    CaptionCider,
    /// VQA accuracy (chat prompts, official answer normalisation), as a fraction.
    VqaAccuracy,
    /// Share of held-out pairs whose faithful caption is more likely than a hallucinated one.
    HallucinationPreference,
    /// POPE accuracy (chat prompts).
    PopeAccuracy,
    /// Attack success rate on unsafe prompts (lower is better).
    SafetyAsr,
    /// Share of safe prompts answered without refusal.
    SafetyHelpfulness,
}

impl Check {
    /// Whether a higher value is better.
    pub fn higher_is_better(self) -> bool {
        self != Check::SafetyAsr
    }

    /// A short name.
    pub fn name(self) -> &'static str {
        match self {
            Check::CaptionCider => "caption CIDEr",
            Check::VqaAccuracy => "VQA accuracy",
            Check::HallucinationPreference => "faithful-caption preference",
            Check::PopeAccuracy => "POPE accuracy",
            Check::SafetyAsr => "unsafe-prompt ASR",
            Check::SafetyHelpfulness => "safe-prompt helpfulness",
        }
    }
}

/// How many held-out items each check uses, and where scratch files go.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// The synthetic corpus directory.
    pub corpus: PathBuf,
    /// Items per check.
    pub limit: usize,
    /// Directory for answer files (one per model and check).
    pub scratch: PathBuf,
    /// Prompts per generation batch.
    pub batch_size: usize,
}

/// Runs `check` on the model directory `model`.
pub fn run_check(
    model: &Path,
    check: Check,
    opts: &CheckOptions,
    device: &Device,
) -> Result<f64, EvalError> {
    let m = EvalModel::load(model, &TokenizerSource::ModelDir, device, None)?;
    if check == Check::HallucinationPreference {
        let pairs = synthetic_hallucination_pairs(&opts.corpus, opts.limit)?;
        return Ok(preference_accuracy(&m, &pairs, opts.batch_size)?.accuracy);
    }
    let (suite, style, metric) = match check {
        Check::CaptionCider => (SuiteName::Caption, PromptStyle::FewShot, "CIDEr"),
        Check::VqaAccuracy => (SuiteName::Vqa, PromptStyle::Chat, "accuracy"),
        Check::PopeAccuracy => (SuiteName::Pope, PromptStyle::Chat, "accuracy"),
        Check::SafetyAsr => (SuiteName::Safety, PromptStyle::Chat, "asr"),
        Check::SafetyHelpfulness => (SuiteName::Safety, PromptStyle::Chat, "helpfulness"),
        Check::HallucinationPreference => unreachable!("handled above"),
    };
    let tag = format!(
        "{}-{:?}-{}",
        m.info.hash.replace(':', "_"),
        suite,
        opts.limit
    );
    let mut so = SuiteOptions::new(suite, opts.scratch.join(format!("{tag}.answers.jsonl")));
    so.limit = Some(opts.limit);
    so.style = Some(style);
    so.data_root = Some(opts.corpus.clone());
    so.engine = EngineOptions {
        batch_size: opts.batch_size,
        progress: false,
        ..EngineOptions::default()
    };
    std::fs::create_dir_all(&opts.scratch).map_err(|e| EvalError::io(&opts.scratch, e))?;
    let report = run_suite(&m, &so)?;
    report
        .benchmarks
        .iter()
        .find_map(|b| b.metrics.get(metric).copied())
        .ok_or_else(|| EvalError::Config(format!("{} produced no {metric}", suite.as_str())))
}
