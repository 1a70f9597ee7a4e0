//! blip3-eval: metrics scored exactly like the reference tools, benchmark suites and reports.
//!
//! * [`metrics`]: pure metric functions reproducing pycocoevalcap, the VQA scripts, LLaVA's POPE
//!   script, VLMEvalKit's multiple-choice matching and VLGuard's refusal rules;
//! * [`prompts`]: the benchmark prompts (OpenFlamingo few-shot, LLaVA-style instructions) and
//!   answer post-processing;
//! * [`engine`]: batched, resumable generation with the model ([`engine::EvalModel`],
//!   [`engine::Engine`]), answers in a JSON-lines file ([`answers`]);
//! * [`benchmark`]: what a benchmark, its items and scoring rule are;
//! * [`suites`]: captioning, VQA, POPE, multiple-choice and safety benchmarks, the `synthetic`
//!   and `paper` suites, [`suites::run_suite`];
//! * [`report`]: JSON reports, Markdown tables, comparisons; [`paper`]: the released numbers;
//! * [`score`]: scoring prediction files without a model.
//!
//! See `docs/eval.md` for the suites, prompts and their sources, the data-root layout, the
//! scales and resuming. The crate never depends on the training crate.
#![warn(missing_docs)]

pub mod answers;
pub mod benchmark;
pub mod engine;
pub mod error;
pub mod fingerprint;
pub mod learning;
pub mod likelihood;
pub mod metrics;
pub mod paper;
pub mod prompts;
pub mod report;
pub mod score;
pub mod suites;

pub use engine::{Engine, EngineOptions, EvalModel, TokenizerSource};
pub use error::EvalError;
pub use report::{Report, compare};
pub use score::{ScoreTask, score_files};
pub use suites::{PromptStyle, SuiteName, SuiteOptions, run_suite};
