//! `blip3 data ...`: write the synthetic corpus, and inspect a mixture recipe by streaming it
//! through the sample pipeline.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use blip3_data::anyres::{ImageProcessorConfig, ResolutionMode};
use blip3_data::loader::{LoaderConfig, LoaderStats, StreamingLoader};
use blip3_data::mixture::{Mixture, Recipe};
use blip3_data::pipeline::{Pipeline, PipelineConfig, TrainSample};
use blip3_data::synth::{CorpusManifest, SynthConfig, write_corpus_with_progress};
use blip3_data::tokenizer::Blip3Tokenizer;
use blip3_processor::{ModelDir, TokenizerSource};
use burn::data::dataloader::DataLoader;
use burn::data::dataloader::batcher::Batcher;
use burn::prelude::Device;

/// Data subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum DataCommand {
    /// Write the built-in synthetic corpus (all formats: captions, interleaved, SFT, DPO,
    /// safety, evaluation sets).
    Synth(SynthArgs),
    /// Stream a mixture recipe through the sample pipeline and print per-source counts, token
    /// lengths and bad-sample statistics.
    Inspect(InspectArgs),
}

/// Arguments of `blip3 data synth`.
#[derive(clap::Args, Debug)]
pub struct SynthArgs {
    /// Output directory (created; must be empty or hold an earlier synthetic corpus).
    #[arg(long)]
    pub out: PathBuf,
    /// Size preset: `tiny` (CI, about a second) or `default` (a few thousand samples a kind).
    #[arg(long, default_value = "default")]
    pub preset: String,
    /// Seed of every generated item.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Arguments of `blip3 data inspect`.
#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// The mixture recipe (`.yaml`, `.yml` or `.toml`).
    #[arg(long)]
    pub recipe: PathBuf,
    /// How many mixture items to stream, good and bad together.
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
    /// A model directory: its tokenizer, image settings and vision tokens per view are used
    /// (read as `generate` and `train` read them; `--fixed` still selects one view an image).
    #[arg(long, conflicts_with_all = ["tokenizer", "image_size", "tokens_per_view"])]
    pub model: Option<PathBuf>,
    /// A tokenizer directory (`tokenizer.json`, ...); default: the built-in tiny tokenizer.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// View size of the image pipeline, in pixels.
    #[arg(long, default_value_t = 384)]
    pub image_size: u32,
    /// Fixed resolution (one view an image) instead of any-resolution tiling.
    #[arg(long)]
    pub fixed: bool,
    /// Vision tokens per view.
    #[arg(long, default_value_t = 128)]
    pub tokens_per_view: usize,
    /// Maximum sequence length, vision tokens included.
    #[arg(long, default_value_t = 2048)]
    pub max_len: usize,
    /// Pipeline worker threads.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// This data-parallel rank.
    #[arg(long, default_value_t = 0)]
    pub rank: usize,
    /// The number of data-parallel ranks.
    #[arg(long, default_value_t = 1)]
    pub world: usize,
}

/// Runs a data subcommand.
pub fn run(command: DataCommand) -> Result<()> {
    match command {
        DataCommand::Synth(args) => synth(args),
        DataCommand::Inspect(args) => inspect(args),
    }
}

/// A data error as one message: its text already names the file and the cause, so the error
/// chain would repeat the cause.
pub(crate) fn flat(e: blip3_data::DataError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

/// `blip3 data synth`.
fn synth(args: SynthArgs) -> Result<()> {
    let cfg = SynthConfig::preset(&args.preset)?.with_seed(args.seed);
    let started = std::time::Instant::now();
    let manifest = write_corpus_with_progress(&args.out, &cfg, true)
        .map_err(flat)
        .with_context(|| format!("writing the synthetic corpus to {}", args.out.display()))?;
    print_manifest(&manifest, &args.out);
    println!("written in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Prints one line per dataset of a corpus manifest.
fn print_manifest(manifest: &CorpusManifest, dir: &std::path::Path) {
    let bytes: u64 = manifest.files.iter().map(|f| f.bytes).sum();
    println!(
        "synthetic corpus in {} (seed {}): {} files, {:.1} MB",
        dir.display(),
        manifest.seed,
        manifest.files.len(),
        bytes as f64 / 1e6
    );
    println!(
        "{:<28} {:<22} {:>8} {:>8}  files",
        "dataset", "format", "records", "images"
    );
    for d in &manifest.datasets {
        let files = match d.files.len() {
            0 => String::new(),
            1 => d.files[0].clone(),
            n => format!("{} ... ({n} files)", d.files[0]),
        };
        println!(
            "{:<28} {:<22} {:>8} {:>8}  {files}",
            d.name, d.format, d.records, d.images
        );
    }
}

/// A batcher that hands the samples over unchanged.
struct Passthrough;

impl Batcher<TrainSample, Vec<TrainSample>> for Passthrough {
    fn batch(&self, items: Vec<TrainSample>, _device: &Device) -> Vec<TrainSample> {
        items
    }
}

/// Per-source length statistics.
#[derive(Default)]
struct Lengths {
    text: Vec<usize>,
    expanded: Vec<usize>,
    images: usize,
    views: usize,
    trained: usize,
    dpo: usize,
}

/// `blip3 data inspect`.
fn inspect(args: InspectArgs) -> Result<()> {
    if args.limit == 0 {
        bail!("--limit must be positive");
    }
    let recipe = Recipe::load(&args.recipe)
        .map_err(flat)
        .context("loading the recipe")?;
    let (tokenizer, image, per_view) = match &args.model {
        Some(dir) => {
            let dir = ModelDir::open(dir, &TokenizerSource::ModelDir)
                .with_context(|| format!("reading the model directory {}", dir.display()))?;
            let mut image = dir.image.clone();
            if args.fixed {
                image.mode = ResolutionMode::Fixed;
            }
            let per_view = dir.config.resampler.num_latents;
            (dir.tokenizer, image, per_view)
        }
        None => {
            let tokenizer = match &args.tokenizer {
                Some(dir) => Blip3Tokenizer::from_dir(dir)
                    .map_err(flat)
                    .with_context(|| format!("loading the tokenizer from {}", dir.display()))?,
                None => Blip3Tokenizer::tiny()?,
            };
            let image = image_config(args.image_size, args.fixed);
            (tokenizer, image, args.tokens_per_view)
        }
    };
    let pipeline = Pipeline::new(
        tokenizer,
        PipelineConfig {
            image,
            max_len: args.max_len,
            system_prompt: None,
            vision_tokens_per_group: per_view,
        },
    )?;
    // `--limit` counts mixture items, bad ones included: a recipe whose items are all bad must
    // not be read forever looking for good ones.
    let mixture = Mixture::open(&recipe, args.rank, args.world)
        .map_err(flat)
        .with_context(|| format!("opening the mixture of {}", args.recipe.display()))?
        .with_limit(args.limit as u64);
    let names: Vec<String> = (0..mixture.num_sources())
        .map(|i| mixture.source_name(i).to_string())
        .collect();
    let config = LoaderConfig {
        batch_size: 1,
        items_per_epoch: args.limit,
        num_workers: args.workers,
        max_bad_rate: 1.0,
        ..LoaderConfig::default()
    };
    let loader = StreamingLoader::new(
        mixture,
        Arc::new(pipeline),
        Arc::new(Passthrough),
        Device::flex(),
        config,
    )?;
    let started = std::time::Instant::now();
    let mut lengths: BTreeMap<String, Lengths> = BTreeMap::new();
    let mut failure = None;
    for batch in loader.iter() {
        let batch = match batch {
            Ok(batch) => batch,
            Err(e) => {
                failure = Some(anyhow::anyhow!("{e}"));
                break;
            }
        };
        for sample in batch {
            let l = lengths.entry(sample.source.clone()).or_default();
            l.text.push(sample.seq.input_ids.len());
            l.expanded.push(sample.expanded_len(per_view));
            l.images += sample.images.len();
            l.views += sample.images.iter().map(|i| i.num_views).sum::<usize>();
            l.trained += sample.seq.labels.iter().filter(|&&x| x != -100).count();
            l.dpo += usize::from(sample.rejected.is_some());
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let stats = loader.stats();
    // The report of what was read is useful even (especially) when the stream failed.
    print_inspection(&names, &lengths, &stats, seconds);
    match failure {
        Some(e) => Err(e.context(format!("inspecting {}", args.recipe.display()))),
        None => Ok(()),
    }
}

/// `(min, mean, median, p95, max)` of a list.
fn summary(values: &[usize]) -> (usize, f64, usize, usize, usize) {
    if values.is_empty() {
        return (0, 0.0, 0, 0, 0);
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    let mean = sorted.iter().sum::<usize>() as f64 / sorted.len() as f64;
    (sorted[0], mean, at(0.5), at(0.95), sorted[sorted.len() - 1])
}

/// Prints the inspection report.
fn print_inspection(
    names: &[String],
    lengths: &BTreeMap<String, Lengths>,
    stats: &LoaderStats,
    seconds: f64,
) {
    println!(
        "{} items in {seconds:.1} s: {} good, {} bad ({:.2}%)",
        stats.seen,
        stats.good,
        stats.bad,
        100.0 * stats.bad_rate()
    );
    println!(
        "\n{:<24} {:>7} {:>7} {:>6} {:>7} {:>6} {:>5}",
        "source", "seen", "good", "bad", "images", "views", "dpo"
    );
    for name in names {
        let s = stats.sources.get(name).cloned().unwrap_or_default();
        let l = lengths.get(name);
        println!(
            "{:<24} {:>7} {:>7} {:>6} {:>7} {:>6} {:>5}",
            name,
            s.seen,
            s.good,
            s.bad,
            l.map_or(0, |l| l.images),
            l.map_or(0, |l| l.views),
            l.map_or(0, |l| l.dpo)
        );
    }
    println!("\ntoken lengths (text ids / with vision tokens): min mean median p95 max");
    for name in names {
        let Some(l) = lengths.get(name) else { continue };
        let (a, b, c, d, e) = summary(&l.text);
        let (f, g, h, i, j) = summary(&l.expanded);
        println!(
            "{name:<24} text {a} {b:.1} {c} {d} {e} | expanded {f} {g:.1} {h} {i} {j} | trained \
             labels {}",
            l.trained
        );
    }
    if stats.bad > 0 {
        println!("\nbad samples by kind:");
        for (kind, n) in &stats.by_kind {
            println!("  {kind:?}: {n}");
        }
        println!("most recent bad samples:");
        for bad in &stats.recent {
            println!("  {bad}");
        }
    }
    if stats.dropped > 0 {
        println!(
            "{} samples short of a full batch were dropped",
            stats.dropped
        );
    }
}

/// The image settings of `--image-size` and `--fixed` (one view) or any-res, for inspecting data
/// without a model directory (with one, `blip3_processor::ModelDir` decides them).
pub(crate) fn image_config(image_size: u32, fixed: bool) -> ImageProcessorConfig {
    ImageProcessorConfig {
        image_size,
        mode: if fixed {
            ResolutionMode::Fixed
        } else {
            ResolutionMode::AnyRes
        },
        ..ImageProcessorConfig::default()
    }
}
