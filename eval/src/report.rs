//! Evaluation reports: a JSON document ([`Report`]), its Markdown table
//! ([`Report::to_markdown`]) and the comparison of two reports ([`compare`]).
//!
//! The JSON holds, per benchmark, the scores under the reference tools' metric names and scales
//! (see [`crate::suites::Task::scorer`]: pycocoevalcap names as fractions, VQA `overall` in
//! percent as `vqaEval.py` reports it plus `accuracy` as a fraction, POPE / multiple choice /
//! safety as fractions), the item counts (items asked, scored, failed, load problems, generated
//! by this run, reused from the answers file), the listed failures, and the paper's number
//! beside ours; and for the run: the path of the per-sample answers file, the configuration
//! (suite, shots, limit, seed, prompt style, batch size, decoding), the model (source, hash, image
//! pipeline, dtype), failure counts per kind and timing.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use blip3_data::synth::SynthConfig;

use crate::answers::FailureKind;
use crate::engine::{ModelInfo, Sampling};
use crate::error::EvalError;
use crate::paper::PaperRef;
use crate::suites::{PromptStyle, SuiteOptions, TaskFamily};

/// The `format` value of a report.
pub const REPORT_FORMAT: &str = "blip3-eval-report";
/// The report layout's version.
pub const REPORT_VERSION: u32 = 1;

/// Where the Markdown of the JSON report `json` goes: the same path with the extension `md`
/// (`report.json` → `report.md`), or with `.md` appended when `json` already ends in `.md`.
pub fn markdown_path_for(json: &Path) -> PathBuf {
    let md = json.with_extension("md");
    if md == json {
        let mut name = json.as_os_str().to_os_string();
        name.push(".md");
        PathBuf::from(name)
    } else {
        md
    }
}

/// Writes `text` to `path` through a temporary file in the same directory and a rename.
fn write_atomic(path: &Path, text: &str) -> Result<(), EvalError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "report".into());
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    std::fs::write(&tmp, text).map_err(|e| EvalError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| EvalError::io(path, e))
}

/// The settings a report was produced with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// The suite.
    pub suite: String,
    /// In-context examples (few-shot captioning and VQA).
    pub shots: usize,
    /// Items per benchmark, if limited.
    pub limit: Option<usize>,
    /// Seed of the example draws.
    pub seed: u64,
    /// Prompt style of captioning and VQA.
    pub style: PromptStyle,
    /// Prompts per generation batch.
    pub batch_size: usize,
    /// Decoding settings (greedy unless a temperature is set).
    pub sampling: Sampling,
    /// The generation-budget override, if any.
    pub max_new_tokens: Option<usize>,
    /// Text-only examples of zero-shot prompts.
    pub zero_shot_text_demos: usize,
    /// Query-set size of the example draws.
    pub query_set_size: usize,
    /// Whether MMBench-style questions were asked in every rotation.
    pub circular: bool,
    /// The data root, if one was given.
    pub data_root: Option<String>,
    /// The synthetic corpus configuration, when the corpus was generated for this run.
    pub synth: Option<SynthConfig>,
    /// The device.
    pub device: String,
    /// Whose numbers the paper column shows.
    pub paper_model: String,
}

impl RunConfig {
    /// The configuration of a suite run.
    pub fn from_options(opts: &SuiteOptions) -> Self {
        RunConfig {
            suite: opts.suite.as_str().to_string(),
            shots: opts.shots,
            limit: opts.limit,
            seed: opts.seed,
            style: opts.style(),
            batch_size: opts.engine.batch_size,
            sampling: opts.engine.sampling.clone(),
            max_new_tokens: opts.max_new_tokens,
            zero_shot_text_demos: opts.zero_shot_text_demos,
            query_set_size: opts.query_set_size,
            circular: opts.circular,
            data_root: opts.data_root.as_ref().map(|p| p.display().to_string()),
            synth: opts.data_root.is_none().then(|| opts.synth.clone()),
            device: opts.device.clone(),
            paper_model: opts.paper_model.as_str().to_string(),
        }
    }
}

/// One listed failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailureRecord {
    /// The item key (`benchmark/id`).
    pub key: String,
    /// The kind of failure.
    pub kind: FailureKind,
    /// Details naming the file and entry.
    pub message: String,
}

/// Failure counts of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FailureSummary {
    /// Items left out of the scores (load problems plus failed items).
    pub total: usize,
    /// The same, per kind.
    pub by_kind: BTreeMap<FailureKind, usize>,
}

/// Timing of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    /// Start time, seconds since the Unix epoch.
    pub started_unix: u64,
    /// Wall-clock seconds of the whole run.
    pub seconds: f64,
    /// Seconds spent preparing inputs and generating.
    pub generation_seconds: f64,
    /// Answers generated by this run.
    pub generated: usize,
    /// `generated / generation_seconds`.
    pub items_per_second: f64,
}

/// The results of one benchmark.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchmarkReport {
    /// Benchmark name.
    pub name: String,
    /// Its family.
    pub task: TaskFamily,
    /// Prompt style.
    pub style: PromptStyle,
    /// In-context examples per prompt.
    pub shots: usize,
    /// The metric quoted first.
    pub primary: String,
    /// Metric name → value on the reference tool's scale (empty when nothing was scored).
    pub metrics: BTreeMap<String, f64>,
    /// Group → metric → value (VQA answer types, POPE and multiple-choice categories).
    pub breakdown: BTreeMap<String, BTreeMap<String, f64>>,
    /// The reference tool reproduced, and the scales.
    pub scorer: String,
    /// Items asked (after the limit; rotations count separately).
    pub items: usize,
    /// Items scored.
    pub scored: usize,
    /// Items that failed (image, prompt, model).
    pub failed: usize,
    /// File entries left out while loading (annotation problems).
    pub load_failures: usize,
    /// Answers generated by this run.
    pub generated: usize,
    /// Answers found in the answers file.
    pub reused: usize,
    /// Generation budget.
    pub max_new_tokens: usize,
    /// Where few-shot examples came from.
    pub support: Option<String>,
    /// Seconds spent on this benchmark's generation.
    pub seconds: f64,
    /// Failures, up to [`crate::suites::LISTED_FAILURES`].
    pub failures: Vec<FailureRecord>,
    /// The paper's number, when one exists for this benchmark and setting.
    pub paper: Option<PaperRef>,
}

impl BenchmarkReport {
    /// The primary metric's value, if scored.
    pub fn primary_value(&self) -> Option<f64> {
        self.metrics.get(&self.primary).copied()
    }
}

/// A whole evaluation report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Always [`REPORT_FORMAT`].
    pub format: String,
    /// Always [`REPORT_VERSION`].
    pub version: u32,
    /// The suite.
    pub suite: String,
    /// The model.
    pub model: ModelInfo,
    /// The settings.
    pub config: RunConfig,
    /// The per-sample answers file (JSON lines).
    pub answers: String,
    /// Per-benchmark results.
    pub benchmarks: Vec<BenchmarkReport>,
    /// Failure counts.
    pub failures: FailureSummary,
    /// Timing.
    pub timing: Timing,
}

/// A metric value as text: VQA percentages with 2 decimals, everything else with 4.
fn fmt_value(metric: &str, v: f64) -> String {
    if metric == "overall" {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

impl Report {
    /// Writes the report as pretty JSON (atomically: a temporary sibling, then a rename).
    pub fn save(&self, path: &Path) -> Result<(), EvalError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| EvalError::io(dir, e))?;
        }
        let mut text = serde_json::to_string_pretty(self)
            .map_err(|e| EvalError::format(path.display(), e.to_string()))?;
        text.push('\n');
        write_atomic(path, &text)
    }

    /// Writes the JSON report to `path` ([`Report::save`]) and its Markdown
    /// ([`Report::to_markdown`]) beside it, at [`markdown_path_for`]`(path)`; returns that path.
    pub fn save_with_markdown(&self, path: &Path) -> Result<PathBuf, EvalError> {
        self.save(path)?;
        let md = markdown_path_for(path);
        write_atomic(&md, &self.to_markdown())?;
        Ok(md)
    }

    /// Reads a report written by [`Report::save`].
    pub fn load(path: &Path) -> Result<Report, EvalError> {
        let text = std::fs::read_to_string(path).map_err(|e| EvalError::io(path, e))?;
        let report: Report = serde_json::from_str(&text)
            .map_err(|e| EvalError::format(path.display(), format!("not an eval report: {e}")))?;
        if report.format != REPORT_FORMAT {
            return Err(EvalError::format(
                path.display(),
                format!("format is {:?}, expected {REPORT_FORMAT:?}", report.format),
            ));
        }
        Ok(report)
    }

    /// The report as Markdown: a header with the model and settings, one table row per
    /// benchmark (primary metric, counts, the paper's number beside ours, the other metrics),
    /// and the failure counts.
    pub fn to_markdown(&self) -> String {
        let c = &self.config;
        let mut out = String::new();
        let _ = writeln!(out, "## blip3 eval: {}\n", self.suite);
        let _ = writeln!(
            out,
            "- model: `{}` ({}, {}, tokenizer {})",
            self.model.source, self.model.hash, self.model.dtype, self.model.tokenizer
        );
        let decoding = match c.sampling.temperature {
            Some(t) if t > 0.0 => format!("sampling T={t} seed {}", c.sampling.seed),
            _ => "greedy".to_string(),
        };
        let _ = writeln!(
            out,
            "- settings: {} prompts, {} shots, limit {}, seed {}, batch {}, {decoding}, device {}",
            c.style.as_str(),
            c.shots,
            c.limit.map_or("none".to_string(), |l| l.to_string()),
            c.seed,
            c.batch_size,
            c.device
        );
        let _ = writeln!(out, "- answers: `{}`\n", self.answers);
        let _ = writeln!(
            out,
            "| benchmark | task | style | shots | scored | failed | metric | value | paper (ours) | other metrics |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
        for b in &self.benchmarks {
            let value = b
                .primary_value()
                .map_or("–".to_string(), |v| fmt_value(&b.primary, v));
            let paper = match &b.paper {
                Some(p) => format!(
                    "{:.1} ({}) {}{}",
                    p.value,
                    p.ours.map_or("–".to_string(), |o| format!("{o:.1}")),
                    p.model,
                    p.note
                        .as_ref()
                        .map(|n| format!(", {n}"))
                        .unwrap_or_default()
                ),
                None => "–".to_string(),
            };
            let others: Vec<String> = b
                .metrics
                .iter()
                .filter(|(k, _)| **k != b.primary)
                .map(|(k, v)| format!("{k} {}", fmt_value(k, *v)))
                .collect();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {}/{} | {} | {} | {} | {} | {} |",
                b.name,
                b.task.as_str(),
                b.style.as_str(),
                b.shots,
                b.scored,
                b.items,
                b.failed + b.load_failures,
                b.primary,
                value,
                paper,
                others.join(", ")
            );
        }
        let kinds: Vec<String> = self
            .failures
            .by_kind
            .iter()
            .map(|(k, n)| {
                format!(
                    "{} {n}",
                    serde_json::to_value(k)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default()
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "\nfailures: {}{}; generated {} answers in {:.1} s ({:.2}/s), total {:.1} s",
            self.failures.total,
            if kinds.is_empty() {
                String::new()
            } else {
                format!(" ({})", kinds.join(", "))
            },
            self.timing.generated,
            self.timing.generation_seconds,
            self.timing.items_per_second,
            self.timing.seconds
        );
        out
    }
}

/// Compares two reports as a Markdown table of every metric the two share per benchmark
/// (matched by name, style and shots), with the difference `b - a`; notes differing models or
/// settings and benchmarks present in only one report.
pub fn compare(a: &Report, b: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## blip3 eval compare\n");
    let _ = writeln!(
        out,
        "- A: suite {}, model `{}` ({}), {} shots, limit {}",
        a.suite,
        a.model.source,
        a.model.hash,
        a.config.shots,
        a.config.limit.map_or("none".to_string(), |l| l.to_string())
    );
    let _ = writeln!(
        out,
        "- B: suite {}, model `{}` ({}), {} shots, limit {}",
        b.suite,
        b.model.source,
        b.model.hash,
        b.config.shots,
        b.config.limit.map_or("none".to_string(), |l| l.to_string())
    );
    if a.model.hash == b.model.hash {
        let _ = writeln!(out, "- same model weights");
    }
    if a.config.limit != b.config.limit || a.config.seed != b.config.seed {
        let _ = writeln!(
            out,
            "- note: limits or seeds differ, so the item sets or examples differ"
        );
    }
    let _ = writeln!(out, "\n| benchmark | shots | metric | A | B | Δ (B − A) |");
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    let key = |r: &BenchmarkReport| (r.name.clone(), r.style, r.shots);
    let mut only_a = Vec::new();
    for ra in &a.benchmarks {
        let Some(rb) = b.benchmarks.iter().find(|rb| key(rb) == key(ra)) else {
            only_a.push(ra.name.clone());
            continue;
        };
        let names: BTreeSet<&String> = ra.metrics.keys().chain(rb.metrics.keys()).collect();
        for m in names {
            let (va, vb) = (ra.metrics.get(m), rb.metrics.get(m));
            let show = |v: Option<&f64>| v.map_or("–".to_string(), |v| fmt_value(m, *v));
            let delta = match (va, vb) {
                (Some(x), Some(y)) => {
                    let text = fmt_value(m, y - x);
                    let magnitude = text.trim_start_matches('-');
                    if magnitude.chars().all(|c| c == '0' || c == '.') {
                        // Rounds to zero: no sign.
                        magnitude.to_string()
                    } else if y > x {
                        format!("+{text}")
                    } else {
                        text
                    }
                }
                _ => "–".to_string(),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {m} | {} | {} | {delta} |",
                ra.name,
                ra.shots,
                show(va),
                show(vb)
            );
        }
    }
    let only_b: Vec<String> = b
        .benchmarks
        .iter()
        .filter(|rb| !a.benchmarks.iter().any(|ra| key(ra) == key(rb)))
        .map(|rb| rb.name.clone())
        .collect();
    if !only_a.is_empty() {
        let _ = writeln!(out, "\nonly in A: {}", only_a.join(", "));
    }
    if !only_b.is_empty() {
        let _ = writeln!(out, "\nonly in B: {}", only_b.join(", "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_markdown_goes_next_to_the_json() {
        let md = |p: &str| markdown_path_for(Path::new(p));
        assert_eq!(md("out/report.json"), PathBuf::from("out/report.md"));
        assert_eq!(md("report"), PathBuf::from("report.md"));
        assert_eq!(md("a.b/r.v2.json"), PathBuf::from("a.b/r.v2.md"));
        assert_eq!(md("report.md"), PathBuf::from("report.md.md"));
    }
}
