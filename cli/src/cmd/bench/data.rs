//! `blip3 bench data`: how fast the host-side data path runs, and whether its memory stays flat.
//!
//! On the caption shards of a synthetic corpus (written to a temporary directory unless
//! `--corpus` names one; the source restarts so that any sample count can be reached):
//!
//! 1. a single-thread breakdown of the stages: reading the shards, decoding, any-res tiling and
//!    normalisation, tokenising;
//! 2. the whole loader (decode + any-res + tokenise in workers, batching) with 1, 2 and 4 workers:
//!    samples/s, encoded input MB/s and produced pixel MB/s;
//! 3. streaming `--rss-samples` samples (10k by default) while sampling the resident set size and
//!    its peak (`VmRSS`, `VmHWM` from `/proc/self/status`) every 1000 samples: RSS after 1k samples
//!    against the end, and whether it stays flat over the second half of the run (the first
//!    thousands warm up the allocator and fill the prefetch queues).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use blip3_data::anyres::{ImageProcessor, ImageProcessorConfig};
use blip3_data::image::decode_image;
use blip3_data::loader::{LoaderConfig, StreamingLoader};
use blip3_data::mixture::{Mixture, Recipe};
use blip3_data::pipeline::{Pipeline, PipelineConfig, TrainSample};
use blip3_data::sample::{ImageSource, RawSample};
use blip3_data::synth::{SynthConfig, write_corpus};
use blip3_data::template::ChatTemplate;
use blip3_data::tokenizer::Blip3Tokenizer;
use burn::data::dataloader::DataLoader;
use burn::data::dataloader::batcher::Batcher;
use burn::prelude::Device;

/// Arguments of `blip3 bench data`.
#[derive(clap::Args, Debug)]
pub struct DataBenchArgs {
    /// A synthetic corpus (from `blip3 data synth`); default: a `default`-preset corpus written to
    /// a temporary directory and removed afterwards.
    #[arg(long)]
    pub corpus: Option<PathBuf>,
    /// Samples per throughput run (and at most 1000 of them for the stage breakdown).
    #[arg(long, default_value_t = 2000)]
    pub samples: usize,
    /// Samples streamed for the memory measurement.
    #[arg(long, default_value_t = 10_000)]
    pub rss_samples: usize,
    /// Worker counts to compare.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    pub workers: Vec<usize>,
    /// View size of the image pipeline, in pixels.
    #[arg(long, default_value_t = 384)]
    pub image_size: u32,
    /// Fixed resolution (one view an image) instead of any-res tiling.
    #[arg(long)]
    pub fixed: bool,
    /// Samples per batch.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
}

/// Removes a temporary corpus when dropped.
struct TempCorpus(Option<PathBuf>);

impl Drop for TempCorpus {
    fn drop(&mut self) {
        if let Some(dir) = &self.0 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Counts the pixel bytes of the batches it receives, then drops them.
struct Counting(Arc<AtomicU64>);

impl Batcher<TrainSample, usize> for Counting {
    fn batch(&self, items: Vec<TrainSample>, _device: &Device) -> usize {
        let bytes: usize = items
            .iter()
            .flat_map(|s| &s.images)
            .map(|i| i.pixels.len() * 4)
            .sum();
        self.0.fetch_add(bytes as u64, Ordering::Relaxed);
        items.len()
    }
}

/// Runs the benchmark.
pub fn run(args: DataBenchArgs) -> Result<()> {
    if args.samples == 0 || args.batch_size == 0 || args.workers.is_empty() {
        bail!("--samples, --batch-size and --workers must be positive / non-empty");
    }
    let (dir, _guard) = match &args.corpus {
        Some(dir) => (dir.clone(), TempCorpus(None)),
        None => {
            let dir = std::env::temp_dir().join(format!("blip3-bench-data-{}", std::process::id()));
            let guard = TempCorpus(Some(dir.clone()));
            let started = Instant::now();
            write_corpus(&dir, &SynthConfig::default_preset())
                .map_err(crate::cmd::data::flat)
                .with_context(|| format!("writing a synthetic corpus to {}", dir.display()))?;
            println!(
                "wrote a `default` synthetic corpus to {} in {:.1} s",
                dir.display(),
                started.elapsed().as_secs_f64()
            );
            (dir, guard)
        }
    };
    if !dir.join("pretrain/captions").is_dir() {
        bail!(
            "{} has no pretrain/captions shards: give a corpus written by `blip3 data synth`",
            dir.display()
        );
    }
    let recipe_text = "seed: 0\nsources:\n  - {name: captions, kind: webdataset, paths: \
                       pretrain/captions, weight: 1, on_exhausted: restart}\n";
    let recipe =
        Recipe::from_yaml_str(recipe_text, &dir, "bench recipe").map_err(crate::cmd::data::flat)?;
    let image = crate::cmd::data::image_config(args.image_size, args.fixed);
    let pipeline_config = PipelineConfig {
        image: image.clone(),
        ..PipelineConfig::default()
    };
    let pipeline = Arc::new(Pipeline::new(Blip3Tokenizer::tiny()?, pipeline_config)?);
    println!(
        "pipeline: {} px views, {}, tiny tokenizer; {} CPU threads available",
        args.image_size,
        if args.fixed { "fixed" } else { "any-res" },
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    let bytes_per_sample = stages(&recipe, &image, (args.samples).min(1000))?;
    throughput(&recipe, &pipeline, &args, bytes_per_sample)?;
    memory(&recipe, &pipeline, &args)?;
    Ok(())
}

/// Stage breakdown on one thread; returns the mean encoded image size per sample.
fn stages(recipe: &Recipe, image: &ImageProcessorConfig, n: usize) -> Result<f64> {
    let tokenizer = Blip3Tokenizer::tiny()?;
    let template = ChatTemplate::new();
    let processor = ImageProcessor::new(image.clone())?;
    let mut mixture = Mixture::open(recipe, 0, 1)?;

    let started = Instant::now();
    let mut raws = Vec::with_capacity(n);
    while raws.len() < n {
        match mixture.next() {
            Some(item) => {
                if let Ok(raw) = item?.sample {
                    raws.push(raw);
                }
            }
            None => break,
        }
    }
    let read_s = started.elapsed().as_secs_f64();
    if raws.is_empty() {
        bail!("the caption shards hold no readable sample");
    }
    let encoded: usize = raws
        .iter()
        .flat_map(RawSample::images)
        .map(|src| match src {
            ImageSource::Bytes { bytes, .. } => bytes.len(),
            ImageSource::Path(p) => std::fs::metadata(p).map_or(0, |m| m.len() as usize),
        })
        .sum();
    let mb = encoded as f64 / 1e6;

    let started = Instant::now();
    let mut decoded = Vec::with_capacity(raws.len());
    for raw in &raws {
        for src in raw.images() {
            decoded.push(decode_image(src)?);
        }
    }
    let decode_s = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let mut views = 0usize;
    for img in &decoded {
        views += processor.process(img)?.num_views;
    }
    let anyres_s = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let mut tokens = 0usize;
    for raw in &raws {
        if let RawSample::Caption {
            origin, caption, ..
        } = raw
        {
            tokens += template
                .encode_caption(&tokenizer, caption, 1, origin)
                .map(|e| e.input_ids.len())
                .unwrap_or(0);
        }
    }
    let tokenise_s = started.elapsed().as_secs_f64();

    let count = raws.len() as f64;
    println!(
        "\nstages on one thread ({} caption samples, {mb:.1} MB of encoded images):",
        raws.len()
    );
    println!("{:<34} {:>12} {:>10}", "stage", "samples/s", "MB/s");
    for (name, seconds) in [
        ("read shards (tar, members)", read_s),
        ("decode (JPEG/PNG -> RGB)", decode_s),
        ("any-res views + normalise", anyres_s),
        ("tokenise (caption template)", tokenise_s),
    ] {
        println!(
            "{name:<34} {:>12.0} {:>10.1}",
            count / seconds.max(1e-9),
            mb / seconds.max(1e-9)
        );
    }
    println!(
        "({:.2} views and {:.1} text tokens per sample)",
        views as f64 / count,
        tokens as f64 / count
    );
    Ok(encoded as f64 / count)
}

/// A loader over `recipe` with `workers` workers and a window of `items` samples.
fn bench_loader(
    recipe: &Recipe,
    pipeline: &Arc<Pipeline>,
    args: &DataBenchArgs,
    workers: usize,
    items: usize,
    pixels: Arc<AtomicU64>,
) -> Result<StreamingLoader<usize>> {
    let items = items.div_ceil(args.batch_size) * args.batch_size;
    let config = LoaderConfig {
        batch_size: args.batch_size,
        items_per_epoch: items,
        num_workers: workers,
        prefetch: 2 * workers.max(1),
        ..LoaderConfig::default()
    };
    Ok(StreamingLoader::new(
        Mixture::open(recipe, 0, 1)?,
        pipeline.clone(),
        Arc::new(Counting(pixels)),
        Device::flex(),
        config,
    )?)
}

/// The full loader with each worker count.
fn throughput(
    recipe: &Recipe,
    pipeline: &Arc<Pipeline>,
    args: &DataBenchArgs,
    bytes_per_sample: f64,
) -> Result<()> {
    println!(
        "\nloader (decode + any-res + tokenise + batching), {} samples, batches of {}:",
        args.samples, args.batch_size
    );
    println!(
        "{:>8} {:>12} {:>12} {:>14} {:>9}",
        "workers", "samples/s", "input MB/s", "pixels MB/s", "speedup"
    );
    let mut first = None;
    for &workers in &args.workers {
        let pixels = Arc::new(AtomicU64::new(0));
        let loader = bench_loader(
            recipe,
            pipeline,
            args,
            workers,
            args.samples,
            pixels.clone(),
        )?;
        let started = Instant::now();
        let mut samples = 0usize;
        for batch in loader.iter() {
            samples += batch.map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        let seconds = started.elapsed().as_secs_f64().max(1e-9);
        let rate = samples as f64 / seconds;
        let base = *first.get_or_insert(rate);
        println!(
            "{workers:>8} {rate:>12.0} {:>12.1} {:>14.1} {:>8.2}x",
            rate * bytes_per_sample / 1e6,
            pixels.load(Ordering::Relaxed) as f64 / 1e6 / seconds,
            rate / base
        );
    }
    Ok(())
}

/// `(VmRSS, VmHWM)` in MiB, from `/proc/self/status`.
fn rss_mib() -> Option<(f64, f64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Streams `--rss-samples` samples with the largest worker count, sampling memory.
fn memory(recipe: &Recipe, pipeline: &Arc<Pipeline>, args: &DataBenchArgs) -> Result<()> {
    let workers = args.workers.iter().copied().max().unwrap_or(1);
    let total = args.rss_samples.max(args.batch_size);
    println!("\nmemory while streaming {total} samples with {workers} workers:");
    let Some(start) = rss_mib() else {
        println!("/proc/self/status is not available on this system: no memory figures");
        return Ok(());
    };
    println!("{:>9} {:>11} {:>11}", "samples", "RSS MiB", "peak MiB");
    println!("{:>9} {:>11.1} {:>11.1}", 0, start.0, start.1);
    let loader = bench_loader(
        recipe,
        pipeline,
        args,
        workers,
        total,
        Arc::new(AtomicU64::new(0)),
    )?;
    let mut samples = 0usize;
    let mut next_report = 1000;
    let mut readings = Vec::new();
    for batch in loader.iter() {
        samples += batch.map_err(|e| anyhow::anyhow!("{e}"))?;
        if samples >= next_report {
            if let Some(now) = rss_mib() {
                println!("{samples:>9} {:>11.1} {:>11.1}", now.0, now.1);
                readings.push(now);
            }
            next_report += 1000;
        }
    }
    if let (Some(first), Some(last)) = (readings.first(), readings.last()) {
        // The allocator and the prefetch queues warm up first; a leak shows as growth over the
        // second half of the run.
        let middle = readings[readings.len() / 2];
        let late_growth = readings[readings.len() / 2..]
            .iter()
            .map(|r| r.0)
            .fold(f64::MIN, f64::max)
            - middle.0;
        let flat = late_growth <= (0.1 * middle.0).max(16.0);
        println!(
            "RSS after 1k samples {:.1} MiB, after {samples}: {:.1} MiB ({:+.1} MiB); peak {:.1} \
             MiB; growth over the second half {late_growth:+.1} MiB: {}",
            first.0,
            last.0,
            last.0 - first.0,
            last.1,
            if flat {
                "flat"
            } else {
                "GROWING (possible leak)"
            }
        );
    }
    Ok(())
}
