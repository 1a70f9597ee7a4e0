//! Benchmark suites: which benchmarks to run, how their items become prompts, and how answers
//! are scored.
//!
//! A [`Benchmark`] is a list of [`Item`]s (a generation [`Request`] plus the ground truth
//! needed to score its answer) and the entries of its files that could not be used
//! ([`Benchmark::problems`]). The families build benchmarks from files:
//!
//! | family | module | files | scored with |
//! | --- | --- | --- | --- |
//! | captioning | [`caption`] | COCO caption annotations (COCO, NoCaps, TextCaps in COCO format) | pycocoevalcap `Bleu_1..4`, `ROUGE_L`, `CIDEr` |
//! | VQA | [`vqa`] | VQAv2-format questions + annotations (VQAv2, OK-VQA, TextVQA, VizWiz) | VQA accuracy, processor per dataset and style |
//! | POPE | [`pope`] | POPE JSONL, one file per category | LLaVA `eval_pope.py` |
//! | multiple choice | [`mc`] | MMBench-style TSV (MMBench, SEED, MMStar, AI2D), ScienceQA JSON | VLMEvalKit `can_infer` + CircularEval, lmms-eval ScienceQA |
//! | safety | [`safety`] | VLGuard `test.json` | VLGuard refusal rules: ASR, helpfulness |
//!
//! Suites ([`SuiteName`]) pick benchmarks: `synthetic` runs captioning, VQA, POPE and multiple
//! choice on the synthetic corpus's held-out files ([`synthetic`]); `paper` runs every benchmark
//! found under a data root ([`layout`]) and shows the paper's numbers beside ours; `caption`,
//! `vqa`, `pope`, `mc` and `safety` run one family, from the data root when one is given, else
//! from the synthetic corpus. [`run_suite`] runs a suite end to end and returns the
//! [`Report`].

pub mod caption;
pub mod layout;
pub mod mc;
pub mod pope;
pub mod safety;
pub mod synthetic;
pub mod vqa;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use blip3_data::error::SampleError;
use blip3_data::synth::SynthConfig;

pub use crate::benchmark::{Benchmark, Item, McRule, PromptStyle, Scored, Task, TaskFamily, Truth};

use crate::answers::{AnswerStore, Failure, FailureKind};
use crate::engine::{Engine, EngineOptions, EvalModel, Request, RunStats};
use crate::error::EvalError;
use crate::paper::{self, PaperModel};
use crate::report::{BenchmarkReport, FailureRecord, FailureSummary, Report, RunConfig, Timing};

/// The suites `blip3 eval --suite` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SuiteName {
    /// Captioning, VQA, POPE and multiple choice on the synthetic corpus.
    Synthetic,
    /// Every benchmark present under the data root, beside the paper's numbers.
    Paper,
    /// Captioning benchmarks.
    Caption,
    /// VQA benchmarks.
    Vqa,
    /// POPE.
    Pope,
    /// Multiple-choice benchmarks.
    Mc,
    /// VLGuard safety.
    Safety,
}

impl SuiteName {
    /// All suites, in documentation order.
    pub const ALL: [SuiteName; 7] = [
        SuiteName::Synthetic,
        SuiteName::Paper,
        SuiteName::Caption,
        SuiteName::Vqa,
        SuiteName::Pope,
        SuiteName::Mc,
        SuiteName::Safety,
    ];

    /// The suite's name.
    pub fn as_str(self) -> &'static str {
        match self {
            SuiteName::Synthetic => "synthetic",
            SuiteName::Paper => "paper",
            SuiteName::Caption => "caption",
            SuiteName::Vqa => "vqa",
            SuiteName::Pope => "pope",
            SuiteName::Mc => "mc",
            SuiteName::Safety => "safety",
        }
    }

    /// Parses a suite name.
    pub fn parse(name: &str) -> Result<Self, EvalError> {
        SuiteName::ALL
            .into_iter()
            .find(|s| s.as_str() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = SuiteName::ALL.iter().map(|s| s.as_str()).collect();
                EvalError::Config(format!(
                    "unknown suite {name:?} (expected one of {})",
                    names.join(", ")
                ))
            })
    }

    /// Whether the suite runs benchmarks of `task`.
    fn includes(self, task: TaskFamily) -> bool {
        match self {
            SuiteName::Synthetic => task != TaskFamily::Safety,
            SuiteName::Paper => true,
            SuiteName::Caption => task == TaskFamily::Caption,
            SuiteName::Vqa => task == TaskFamily::Vqa,
            SuiteName::Pope => task == TaskFamily::Pope,
            SuiteName::Mc => task == TaskFamily::Mc,
            SuiteName::Safety => task == TaskFamily::Safety,
        }
    }
}

/// Everything a suite run needs besides the model.
#[derive(Debug, Clone)]
pub struct SuiteOptions {
    /// Which suite.
    pub suite: SuiteName,
    /// In-context examples for few-shot captioning and VQA (the paper uses 0, 4 and 8).
    pub shots: usize,
    /// Evaluate only the first `limit` items (questions, images) of each benchmark, in file
    /// order.
    pub limit: Option<usize>,
    /// Seed of the in-context example draws.
    pub seed: u64,
    /// Prompt style of captioning and VQA; `None` means few-shot.
    pub style: Option<PromptStyle>,
    /// Root of real benchmark files (see [`layout`]); for the synthetic suite, a synthetic
    /// corpus directory. `None`: the synthetic corpus, written on the fly.
    pub data_root: Option<PathBuf>,
    /// Configuration of the synthetic corpus written when no data root is given.
    pub synth: SynthConfig,
    /// Where to write that corpus; `None`: a directory under the system cache / temp directory
    /// named after the configuration's fingerprint, reused by later runs.
    pub synth_dir: Option<PathBuf>,
    /// Overrides every benchmark's generation budget.
    pub max_new_tokens: Option<usize>,
    /// Text-only examples in zero-shot prompts (OpenFlamingo: 2).
    pub zero_shot_text_demos: usize,
    /// Size of the query set examples are drawn from (OpenFlamingo: 2048).
    pub query_set_size: usize,
    /// Ask MMBench-style questions once per rotation of their options (CircularEval) when the
    /// file does not already hold rotated copies.
    pub circular: bool,
    /// Batching, decoding and progress settings.
    pub engine: EngineOptions,
    /// The per-sample answers file (JSON lines); reusing it resumes the run.
    pub answers: PathBuf,
    /// Which released model's numbers the report puts beside ours.
    pub paper_model: PaperModel,
    /// The device, as the user named it (for the report).
    pub device: String,
}

impl SuiteOptions {
    /// Default settings for `suite`, writing answers to `answers`: 0 shots, no limit, seed 42
    /// (OpenFlamingo's default trial seed), few-shot style, the tiny synthetic corpus, OpenFlamingo's
    /// zero-shot examples (2) and query-set size (2048), CircularEval on.
    pub fn new(suite: SuiteName, answers: PathBuf) -> Self {
        SuiteOptions {
            suite,
            shots: 0,
            limit: None,
            seed: 42,
            style: None,
            data_root: None,
            synth: SynthConfig::tiny(),
            synth_dir: None,
            max_new_tokens: None,
            zero_shot_text_demos: crate::prompts::ZERO_SHOT_TEXT_DEMOS,
            query_set_size: crate::prompts::QUERY_SET_SIZE,
            circular: true,
            engine: EngineOptions::default(),
            answers,
            paper_model: PaperModel::Auto,
            device: "flex".into(),
        }
    }

    /// The prompt style of captioning and VQA.
    pub fn style(&self) -> PromptStyle {
        self.style.unwrap_or(PromptStyle::FewShot)
    }

    /// The settings a report records for this run.
    pub fn run_config(&self) -> RunConfig {
        RunConfig {
            suite: self.suite.as_str().to_string(),
            shots: self.shots,
            limit: self.limit,
            seed: self.seed,
            style: self.style(),
            batch_size: self.engine.batch_size,
            sampling: self.engine.sampling.clone(),
            max_new_tokens: self.max_new_tokens,
            zero_shot_text_demos: self.zero_shot_text_demos,
            query_set_size: self.query_set_size,
            circular: self.circular,
            data_root: self.data_root.as_ref().map(|p| p.display().to_string()),
            synth: self.data_root.is_none().then(|| self.synth.clone()),
            device: self.device.clone(),
            paper_model: self.paper_model.as_str().to_string(),
        }
    }
}

/// What the family builders need to know from the suite options.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildContext {
    /// In-context examples.
    pub shots: usize,
    /// Prompt style of captioning and VQA.
    pub style: PromptStyle,
    /// Seed of example draws.
    pub seed: u64,
    /// Items per benchmark.
    pub limit: Option<usize>,
    /// Text-only examples at zero shots.
    pub zero_shot_text_demos: usize,
    /// Query-set size.
    pub query_set_size: usize,
    /// Overrides every generation budget.
    pub max_new_tokens: Option<usize>,
    /// CircularEval for MMBench-style files.
    pub circular: bool,
}

impl BuildContext {
    /// The context of a suite run.
    pub fn from_options(opts: &SuiteOptions) -> Self {
        BuildContext {
            shots: opts.shots,
            style: opts.style(),
            seed: opts.seed,
            limit: opts.limit,
            zero_shot_text_demos: opts.zero_shot_text_demos,
            query_set_size: opts.query_set_size,
            max_new_tokens: opts.max_new_tokens,
            circular: opts.circular,
        }
    }

    /// The generation budget: the override, else `default`.
    pub fn budget(&self, default: usize) -> usize {
        self.max_new_tokens.unwrap_or(default)
    }

    /// `items` cut to the limit.
    pub fn limited<T>(&self, mut items: Vec<T>) -> Vec<T> {
        if let Some(n) = self.limit {
            items.truncate(n);
        }
        items
    }
}

/// A loader problem as a benchmark problem.
pub(crate) fn annotation_problem(name: &str, e: &SampleError) -> (String, Failure) {
    (
        format!("{name}/{}", e.key),
        Failure {
            kind: FailureKind::Annotation,
            message: e.to_string(),
        },
    )
}

/// `path`, or a sibling with the same stem and another common image extension when `path` does
/// not exist (the synthetic corpus writes PNG for images with text, JPEG otherwise). When none
/// exists, `path` itself (the engine then records the missing image).
pub(crate) fn existing_image(path: PathBuf) -> PathBuf {
    if path.exists() {
        return path;
    }
    for ext in ["jpg", "png", "jpeg", "webp"] {
        let alt = path.with_extension(ext);
        if alt.exists() {
            return alt;
        }
    }
    path
}

/// Scores answered items: `pairs` holds each item's ground truth and scored answer. Returns
/// empty scores when nothing was answered.
pub fn score_task(task: &Task, name: &str, pairs: &[(&Truth, &str)]) -> Result<Scored, EvalError> {
    if pairs.is_empty() {
        return Ok(Scored::default());
    }
    match task {
        Task::Caption => caption::score(name, pairs),
        Task::Vqa(p) => vqa::score(name, *p, pairs),
        Task::Pope => pope::score(name, pairs),
        Task::Mc { rule, circular } => mc::score(name, *rule, *circular, pairs),
        Task::Safety => safety::score(name, pairs),
    }
}

/// The benchmarks a suite runs.
pub fn collect_benchmarks(opts: &SuiteOptions) -> Result<Vec<Benchmark>, EvalError> {
    let ctx = BuildContext::from_options(opts);
    let specs = match (&opts.data_root, opts.suite) {
        (None, SuiteName::Paper) => {
            return Err(EvalError::Config(
                "the paper suite needs --data-root (see docs/eval.md for the layout)".into(),
            ));
        }
        (root, SuiteName::Synthetic) | (root @ None, _) => {
            let dir =
                synthetic::ensure_corpus(root.as_deref(), &opts.synth, opts.synth_dir.as_deref())?;
            synthetic::specs(&dir)?
        }
        // A synthetic corpus given as the data root serves every suite, filtered by family.
        (Some(root), _) if root.join(blip3_data::synth::MANIFEST_FILE).is_file() => {
            synthetic::specs(root)?
        }
        (Some(root), _) => layout::discover(root)?,
    };
    let mut out = Vec::new();
    for spec in specs {
        if opts.suite.includes(spec.family()) {
            out.push(spec.build(&ctx)?);
        }
    }
    if out.is_empty() {
        return Err(EvalError::Config(format!(
            "suite {} found no benchmark{}",
            opts.suite.as_str(),
            opts.data_root
                .as_ref()
                .map(|r| format!(" under {}", r.display()))
                .unwrap_or_default()
        )));
    }
    Ok(out)
}

/// A benchmark described by its files, before loading.
#[derive(Debug, Clone, PartialEq)]
pub enum Spec {
    /// Captioning files.
    Caption(caption::CaptionSpec),
    /// VQA files.
    Vqa(vqa::VqaSpec),
    /// POPE files.
    Pope(pope::PopeSpec),
    /// A multiple-choice file.
    Mc(mc::McSpec),
    /// A VLGuard file.
    Safety(safety::SafetySpec),
}

impl Spec {
    /// The family.
    pub fn family(&self) -> TaskFamily {
        match self {
            Spec::Caption(_) => TaskFamily::Caption,
            Spec::Vqa(_) => TaskFamily::Vqa,
            Spec::Pope(_) => TaskFamily::Pope,
            Spec::Mc(_) => TaskFamily::Mc,
            Spec::Safety(_) => TaskFamily::Safety,
        }
    }

    /// Loads the files and builds the benchmark.
    pub fn build(&self, ctx: &BuildContext) -> Result<Benchmark, EvalError> {
        match self {
            Spec::Caption(s) => caption::build(s, ctx),
            Spec::Vqa(s) => vqa::build(s, ctx),
            Spec::Pope(s) => pope::build(s, ctx),
            Spec::Mc(s) => mc::build(s, ctx),
            Spec::Safety(s) => safety::build(s, ctx),
        }
    }
}

/// Runs a suite end to end: builds its benchmarks, generates the missing answers (appending them
/// to the answers file), scores every benchmark and returns the report.
pub fn run_suite(model: &EvalModel, opts: &SuiteOptions) -> Result<Report, EvalError> {
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let clock = Instant::now();
    let benchmarks = collect_benchmarks(opts)?;
    let mut store = AnswerStore::open(&opts.answers)?;
    let engine = Engine::new(model, opts.engine.clone());
    let mut reports = Vec::with_capacity(benchmarks.len());
    let mut generation_seconds = 0.0;
    let mut generated = 0;
    for bench in &benchmarks {
        let requests: Vec<Request> = bench.items.iter().map(|i| i.request.clone()).collect();
        let stats = engine.run(&bench.name, &requests, &mut store)?;
        generation_seconds += stats.seconds;
        generated += stats.generated;
        let mut report = score_benchmark(bench, &store, &stats)?;
        report.paper = paper::lookup(opts.paper_model, bench, report.primary_value());
        reports.push(report);
    }
    let summary = FailureSummary {
        total: reports.iter().map(|r| r.failed + r.load_failures).sum(),
        by_kind: count_failures(&benchmarks, &store),
    };
    let seconds = clock.elapsed().as_secs_f64();
    Ok(Report {
        format: crate::report::REPORT_FORMAT.to_string(),
        version: crate::report::REPORT_VERSION,
        suite: opts.suite.as_str().to_string(),
        model: model.info.clone(),
        config: opts.run_config(),
        answers: opts.answers.display().to_string(),
        benchmarks: reports,
        failures: summary,
        timing: Timing {
            started_unix: started,
            seconds,
            generation_seconds,
            generated,
            items_per_second: if generation_seconds > 0.0 {
                generated as f64 / generation_seconds
            } else {
                0.0
            },
        },
    })
}

/// Failures per kind over every benchmark: load problems plus failed items.
fn count_failures(benchmarks: &[Benchmark], store: &AnswerStore) -> BTreeMap<FailureKind, usize> {
    let mut out = BTreeMap::new();
    for b in benchmarks {
        for (_, f) in &b.problems {
            *out.entry(f.kind).or_default() += 1;
        }
        for item in &b.items {
            if let Some(f) = store
                .get(&item.request.key)
                .and_then(|r| r.failure.as_ref())
            {
                *out.entry(f.kind).or_default() += 1;
            }
        }
    }
    out
}

/// At most this many failures are listed per benchmark in a report (all are counted, and every
/// failed item has its line in the answers file).
pub const LISTED_FAILURES: usize = 100;

/// Scores one benchmark from the answers in `store`.
pub fn score_benchmark(
    bench: &Benchmark,
    store: &AnswerStore,
    stats: &RunStats,
) -> Result<BenchmarkReport, EvalError> {
    let mut pairs = Vec::with_capacity(bench.items.len());
    let mut failures = Vec::new();
    let mut failed = 0;
    for (key, f) in &bench.problems {
        if failures.len() < LISTED_FAILURES {
            failures.push(FailureRecord {
                key: key.clone(),
                kind: f.kind,
                message: f.message.clone(),
            });
        }
    }
    for item in &bench.items {
        let Some(rec) = store.get(&item.request.key) else {
            continue;
        };
        match (&rec.answer, &rec.failure) {
            (Some(answer), None) => pairs.push((&item.truth, answer.as_str())),
            (_, Some(f)) => {
                failed += 1;
                if failures.len() < LISTED_FAILURES {
                    failures.push(FailureRecord {
                        key: rec.key.clone(),
                        kind: f.kind,
                        message: f.message.clone(),
                    });
                }
            }
            (None, None) => failed += 1,
        }
    }
    let scored = score_task(&bench.task, &bench.name, &pairs)?;
    Ok(BenchmarkReport {
        name: bench.name.clone(),
        task: bench.task.family(),
        style: bench.style,
        shots: bench.shots,
        primary: bench.task.primary_metric().to_string(),
        metrics: scored.metrics,
        breakdown: scored.breakdown,
        scorer: bench.task.scorer(),
        items: bench.items.len(),
        scored: pairs.len(),
        failed,
        load_failures: bench.problems.len(),
        generated: stats.generated,
        reused: stats.reused,
        max_new_tokens: bench.max_new_tokens,
        support: bench.support.clone(),
        seconds: stats.seconds,
        failures,
        paper: None,
    })
}

/// The path of the answers file that goes with a report path: `report.json` →
/// `report.answers.jsonl`.
pub fn answers_path_for(report: &Path) -> PathBuf {
    let stem = report
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "report".into());
    report.with_file_name(format!("{stem}.answers.jsonl"))
}
