//! `blip3 eval`: run a benchmark suite, score prediction files, compare reports.
//!
//! ```text
//! blip3 eval --model DIR --suite NAME [--shots K] [--limit N] [--data-root DIR]
//!            [--batch-size B] [--device flex|wgpu|cuda] --out report.json
//! blip3 eval score --task caption|vqa|pope|mc --predictions FILE --annotations FILE
//! blip3 eval compare a.json b.json
//! ```
//!
//! A run writes the JSON report to `--out`, the Markdown table next to it (`report.md`, also
//! printed), the per-sample answers next to it (`report.answers.jsonl` unless `--answers` says
//! otherwise; rerunning with the same paths resumes). `score` prints one JSON object with the
//! metric names as keys on the last line of its output; a predictions file without predictions
//! is an error.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::ValueEnum;

use blip3_data::synth::SynthConfig;
use blip3_eval::engine::{EngineOptions, EvalModel, Sampling, TokenizerSource};
use blip3_eval::metrics::vqa::Processor;
use blip3_eval::paper::PaperModel;
use blip3_eval::report::{Report, compare};
use blip3_eval::score::{ScoreOptions, ScoreTask, score_files_with};
use blip3_eval::suites::{PromptStyle, SuiteName, SuiteOptions, answers_path_for, run_suite};

use super::common::{DTypeArg, DeviceKindArg, check_dtype, device, parse_device};

/// Arguments of `blip3 eval`.
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    command: Option<EvalCommand>,
    #[command(flatten)]
    run: Box<RunArgs>,
}

/// The subcommands of `blip3 eval` (without one, a suite runs).
#[derive(clap::Subcommand, Debug)]
enum EvalCommand {
    /// Score prediction files against annotations, without a model.
    Score(ScoreArgs),
    /// Compare two reports (metric deltas B - A).
    Compare(CompareArgs),
}

/// Prompt style of captioning and VQA.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum StyleArg {
    /// OpenFlamingo few-shot prompts (base models; the paper's protocol).
    FewShot,
    /// Instructions through the chat template (instruct models).
    Chat,
}

/// Running a suite.
#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Model directory: a native checkpoint (model.bpk) or an HF layout.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Suite: synthetic, paper, caption, vqa, pope, mc or safety.
    #[arg(long)]
    suite: Option<String>,
    /// In-context examples for few-shot captioning and VQA (the paper uses 0, 4, 8).
    #[arg(long, default_value_t = 0)]
    shots: usize,
    /// Evaluate only the first N items of each benchmark (smoke runs).
    #[arg(long)]
    limit: Option<usize>,
    /// Root of the benchmark files (layout in docs/eval.md); for the synthetic suite, a
    /// synthetic corpus directory. Without it, the synthetic corpus is generated.
    #[arg(long)]
    data_root: Option<PathBuf>,
    /// Prompts per generation batch.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Compute device.
    #[arg(long, value_parser = parse_device, default_value_t)]
    device: DeviceKindArg,
    /// Cast the weights to this dtype.
    #[arg(long, value_enum)]
    dtype: Option<DTypeArg>,
    /// Where to write the JSON report; the Markdown goes next to it (`report.json` →
    /// `report.md`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The per-sample answers file (default: next to the report, `<stem>.answers.jsonl`).
    #[arg(long)]
    answers: Option<PathBuf>,
    /// Tokenizer directory, or `tiny` for the test tokenizer (default: the model directory).
    #[arg(long)]
    tokenizer: Option<String>,
    /// Seed of the in-context example draws.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Prompt style of captioning and VQA (default few-shot).
    #[arg(long, value_enum)]
    style: Option<StyleArg>,
    /// Override every benchmark's generation budget.
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// Beams for every benchmark (default: the protocol's: OpenFlamingo's 3 beams for few-shot
    /// captioning and VQA, greedy for instruction prompts; see docs/eval.md).
    #[arg(long)]
    num_beams: Option<usize>,
    /// Length penalty of beam search for every benchmark (default: the protocol's, 0.0 for
    /// few-shot captioning and VQA).
    #[arg(long, allow_negative_numbers = true)]
    length_penalty: Option<f32>,
    /// Sample with this temperature instead of decoding with the protocol's settings (one beam).
    #[arg(long)]
    temperature: Option<f32>,
    /// Top-k filter when sampling.
    #[arg(long)]
    top_k: Option<usize>,
    /// Top-p filter when sampling.
    #[arg(long)]
    top_p: Option<f32>,
    /// Text-only examples in zero-shot prompts (OpenFlamingo: 2).
    #[arg(long, default_value_t = blip3_eval::prompts::ZERO_SHOT_TEXT_DEMOS)]
    zero_shot_text_demos: usize,
    /// Training items in-context examples are drawn from (OpenFlamingo: 2048).
    #[arg(long, default_value_t = blip3_eval::prompts::QUERY_SET_SIZE)]
    query_set_size: usize,
    /// Ask MMBench-style questions only in their original option order (no CircularEval).
    #[arg(long)]
    no_circular: bool,
    /// Synthetic corpus preset used without a data root: tiny or default.
    #[arg(long, default_value = "tiny")]
    synth_preset: String,
    /// Where to write the generated synthetic corpus (default: a cache directory).
    #[arg(long)]
    synth_dir: Option<PathBuf>,
    /// Whose reported numbers to show: auto, base-v1.5, base-v1, instruct-v1, interleave-v1.5,
    /// dpo-v1.5.
    #[arg(long, default_value = "auto")]
    paper_model: String,
    /// No progress bar or progress lines.
    #[arg(long)]
    no_progress: bool,
}

/// Scoring files.
#[derive(clap::Args, Debug)]
struct ScoreArgs {
    /// What the files hold.
    #[arg(long, value_enum)]
    task: TaskArg,
    /// The predictions (COCO / VQA results JSON, or JSON lines for pope and mc).
    #[arg(long)]
    predictions: PathBuf,
    /// The ground truth (COCO captions, VQA annotations, POPE file, MMBench TSV or ScienceQA).
    #[arg(long)]
    annotations: PathBuf,
    /// VQA answer processing.
    #[arg(long, value_enum, default_value_t = ProcessorArg::Official)]
    vqa_processor: ProcessorArg,
}

/// The file kinds `score` knows.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum TaskArg {
    /// COCO captions.
    Caption,
    /// VQAv2-format VQA.
    Vqa,
    /// POPE.
    Pope,
    /// Multiple choice.
    Mc,
}

/// VQA answer processors.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum ProcessorArg {
    /// The official vqaEval.py.
    Official,
    /// OpenFlamingo v2's vqa_metric.py.
    Openflamingo,
    /// OpenFlamingo's OK-VQA scoring of raw generations: its stemming
    /// (postprocess_ok_vqa_generation) of predictions, then vqa_metric.py.
    Okvqa,
    /// EvalAI / TextVQA (LLaVA, lmms-eval).
    Evalai,
    /// The VizWiz challenge script.
    Vizwiz,
}

/// Comparing reports.
#[derive(clap::Args, Debug)]
struct CompareArgs {
    /// Report A.
    a: PathBuf,
    /// Report B.
    b: PathBuf,
}

/// Runs the command.
pub fn run(args: Args) -> Result<()> {
    match args.command {
        Some(EvalCommand::Score(s)) => score(s),
        Some(EvalCommand::Compare(c)) => {
            let a = Report::load(&c.a)?;
            let b = Report::load(&c.b)?;
            print!("{}", compare(&a, &b));
            Ok(())
        }
        None => run_suite_cmd(*args.run),
    }
}

fn score(args: ScoreArgs) -> Result<()> {
    let task = match args.task {
        TaskArg::Caption => ScoreTask::Caption,
        TaskArg::Vqa => ScoreTask::Vqa,
        TaskArg::Pope => ScoreTask::Pope,
        TaskArg::Mc => ScoreTask::Mc,
    };
    let options = ScoreOptions {
        vqa_processor: match args.vqa_processor {
            ProcessorArg::Official => Processor::Official,
            ProcessorArg::Openflamingo => Processor::OpenFlamingo,
            ProcessorArg::Okvqa => Processor::OpenFlamingoOkVqa,
            ProcessorArg::Evalai => Processor::EvalAi,
            ProcessorArg::Vizwiz => Processor::VizWiz,
        },
    };
    let out = score_files_with(task, &args.predictions, &args.annotations, &options)?;
    eprintln!(
        "scored {} predictions ({} annotated items without a prediction, {} unusable annotation \
         entries)",
        out.scored, out.missing, out.problems
    );
    println!("{}", serde_json::to_string(&out.to_json())?);
    Ok(())
}

fn run_suite_cmd(a: RunArgs) -> Result<()> {
    let Some(model_dir) = a.model else {
        bail!("--model DIR is required (or use `blip3 eval score` / `blip3 eval compare`)");
    };
    let Some(suite) = a.suite else {
        bail!("--suite is required: synthetic, paper, caption, vqa, pope, mc or safety");
    };
    let Some(out) = a.out else {
        bail!("--out report.json is required");
    };
    let sampling = Sampling {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        seed: a.seed,
        num_beams: a.num_beams,
        length_penalty: a.length_penalty,
    };
    sampling.validate().map_err(|e| {
        anyhow::anyhow!("--temperature / --top-k / --top-p / --num-beams / --length-penalty: {e}")
    })?;
    let suite = SuiteName::parse(&suite)?;
    let paper_model = PaperModel::parse(&a.paper_model)?;
    let synth = SynthConfig::preset(&a.synth_preset)?;
    let dev = device(a.device)?;
    let dtype = a.dtype.map(|d| d.dtype());
    check_dtype(&dev, dtype)?;
    let tokenizer = TokenizerSource::parse(a.tokenizer.as_deref());
    let model = EvalModel::load(&model_dir, &tokenizer, &dev, dtype)
        .with_context(|| format!("loading the model from {}", model_dir.display()))?;
    let answers = a.answers.unwrap_or_else(|| answers_path_for(&out));
    let mut opts = SuiteOptions::new(suite, answers);
    opts.shots = a.shots;
    opts.limit = a.limit;
    opts.seed = a.seed;
    opts.style = a.style.map(|s| match s {
        StyleArg::FewShot => PromptStyle::FewShot,
        StyleArg::Chat => PromptStyle::Chat,
    });
    opts.data_root = a.data_root;
    opts.synth = synth;
    opts.synth_dir = a.synth_dir;
    opts.max_new_tokens = a.max_new_tokens;
    opts.zero_shot_text_demos = a.zero_shot_text_demos;
    opts.query_set_size = a.query_set_size;
    opts.circular = !a.no_circular;
    opts.paper_model = paper_model;
    opts.device = format!("{:?}", a.device).to_lowercase();
    opts.engine = EngineOptions {
        batch_size: a.batch_size.max(1),
        sampling,
        progress: !a.no_progress,
    };
    let report = run_suite(&model, &opts)?;
    let md = report.save_with_markdown(&out)?;
    print!("{}", report.to_markdown());
    eprintln!(
        "report: {} and {}, answers: {}",
        out.display(),
        md.display(),
        opts.answers.display()
    );
    Ok(())
}
