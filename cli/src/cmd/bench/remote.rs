//! `blip3 bench remote`: training over `blip3 worker` processes on loopback (Burn's remote
//! backend, `[devices] remote`) with 1, 2 and 4 workers: step time, samples/s, the bytes each
//! non-main replica moves per step and the scaling efficiency against one worker.
//!
//! Each point trains the synthetic corpus's SFT stage twice through `blip3 train` (a short and a
//! longer run) and takes the step time from the difference, so process start-up, connection and
//! checkpoint writing cancel out. Every worker and the trainer share this machine's cores: on one
//! machine the figures measure the protocol's overhead, not what separate machines reach
//! (docs/scaling.md gives the arithmetic for a cluster). Results are printed as a table and
//! appended to `--results` (`runs/bench/remote.jsonl`).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use blip3_data::synth::{SynthConfig, write_corpus};
use blip3_train::config::Strategy;
use blip3_train::recipes::{SyntheticPlan, synthetic_stages};

/// Arguments of `blip3 bench remote`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Worker counts to measure (comma separated).
    #[arg(long, default_value = "1,2,4")]
    pub workers: String,
    /// Model presets (comma separated): tiny, mid. Mid is built for the 32,012-id Phi-3
    /// vocabulary, so it reads the synthetic corpus through the `tiny-phi3` tokenizer (the tiny
    /// one padded to Phi-3's ids) unless `--tokenizer` names a real one.
    #[arg(long, default_value = "tiny")]
    pub configs: String,
    /// A directory with the Phi-3 `tokenizer.json`, for `mid` (default: `tiny-phi3`).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Samples per device per step.
    #[arg(long, default_value_t = 2)]
    pub batch: usize,
    /// Optimizer steps of the short run; the long run has three times as many.
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    /// Scratch folder (corpus, runs).
    #[arg(long, default_value = "runs/bench/remote")]
    pub out: PathBuf,
    /// JSON-lines file the measured rows are appended to.
    #[arg(long, default_value = "runs/bench/remote.jsonl")]
    pub results: PathBuf,
    /// The device the workers serve (e.g. `cuda`: the workers on the GPU, the trainer on the
    /// CPU side); all workers share index 0.
    #[arg(long, value_parser = crate::cmd::common::parse_device, default_value_t = crate::cmd::common::DeviceKindArg::Flex)]
    pub worker_device: crate::cmd::common::DeviceKindArg,
}

/// One measured point.
#[derive(Debug, serde::Serialize)]
struct Point {
    config: String,
    worker_device: String,
    workers: usize,
    batch_per_device: usize,
    ms_per_step: f64,
    samples_per_s: f64,
    trainable_params: usize,
    bytes_per_replica_per_step: usize,
    efficiency_vs_one_worker: Option<f64>,
}

/// A worker process, killed when dropped.
struct Worker {
    child: Child,
    address: String,
}

impl Worker {
    fn start(token: &str, device: &str) -> Result<Worker> {
        let exe = crate::cmd::common::own_executable()?;
        let mut child = Command::new(exe)
            .args([
                "worker",
                "--listen",
                "127.0.0.1:0",
                "--token-env",
                TOKEN_ENV,
                "--device",
                device,
            ])
            .args(["--log", "warn"])
            .env(TOKEN_ENV, token)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting blip3 worker")?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            BufReader::new(out).read_line(&mut line)?;
        }
        let Some((_, address)) = line.trim().rsplit_once(" at ") else {
            let _ = child.kill();
            bail!("blip3 worker did not report its address (got {line:?})");
        };
        Ok(Worker {
            address: address.to_string(),
            child,
        })
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const TOKEN_ENV: &str = "BLIP3_BENCH_WORKER_TOKEN";

/// Runs `blip3 train` on `config` and returns (seconds, trainable parameters).
fn timed_train(config: &Path, token: &str) -> Result<(f64, usize)> {
    let exe = crate::cmd::common::own_executable()?;
    let t0 = Instant::now();
    let out = Command::new(exe)
        .args(["train", "--config"])
        .arg(config)
        .args(["--log", "error"])
        .env(TOKEN_ENV, token)
        .stdout(Stdio::null())
        .output()?;
    let secs = t0.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "blip3 train {} failed: {}",
            config.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = config.parent().unwrap_or(Path::new("."));
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(format!(
            "{}/summary.json",
            config.file_stem().and_then(|s| s.to_str()).unwrap_or("run")
        )))
        .context("summary.json")?,
    )?;
    let trainable = summary["trainable_params"].as_u64().unwrap_or(0) as usize;
    Ok((secs, trainable))
}

/// Runs the benchmark.
pub fn run(args: Args) -> Result<()> {
    let counts: Vec<usize> = args
        .workers
        .split(',')
        .map(|s| s.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .context("--workers: comma-separated counts")?;
    if counts.contains(&0) || args.batch == 0 || args.steps == 0 {
        bail!("--workers, --batch and --steps must be at least 1");
    }
    let token = format!("bench-{}", std::process::id());
    std::fs::create_dir_all(&args.out)?;
    // Absolute, so the configs written below name the same files wherever they are read from.
    let out = std::path::absolute(&args.out)?;
    let corpus = out.join("corpus");
    if !corpus.join("manifest.json").exists() {
        write_corpus(&corpus, &SynthConfig::tiny())?;
    }
    let mut points = Vec::new();
    for preset in args.configs.split(',').map(str::trim) {
        let workers: Vec<Worker> = (0..*counts.iter().max().unwrap_or(&1))
            .map(|_| Worker::start(&token, &args.worker_device.to_string()))
            .collect::<Result<_>>()?;
        let mut one_worker_rate = None;
        for &n in &counts {
            let mut secs = Vec::new();
            let mut trainable = 0;
            for (tag, steps) in [("short", args.steps), ("long", 3 * args.steps)] {
                let plan = SyntheticPlan {
                    preset: preset.to_string(),
                    batch_size: args.batch,
                    every_steps: steps,
                    ..SyntheticPlan::default()
                };
                let run_dir = out.join(format!("plan-{preset}-{tag}"));
                let mut cfg = synthetic_stages(&corpus, &run_dir, &plan)?
                    .into_iter()
                    .find(|c| c.stage == blip3_train::config::Stage::Sft)
                    .context("the synthetic plan has an SFT stage")?;
                cfg.model.init = preset.to_string();
                if let Some(t) = &args.tokenizer {
                    cfg.model.tokenizer = std::path::absolute(t)?.display().to_string();
                } else if preset != "tiny" {
                    cfg.model.tokenizer = "tiny-phi3".into();
                }
                cfg.optim.total_steps = steps;
                cfg.optim.warmup_steps = cfg.optim.warmup_steps.min(steps);
                cfg.data.valid_samples = 0;
                cfg.checkpoint.export_hf = false;
                cfg.devices.count = 0;
                cfg.devices.strategy = Strategy::Multi;
                cfg.devices.remote = workers[..n].iter().map(|w| w.address.clone()).collect();
                cfg.devices.remote_token_env = TOKEN_ENV.into();
                let name = format!("{preset}-{n}-{tag}");
                cfg.out_dir = out.join(&name);
                let _ = std::fs::remove_dir_all(&cfg.out_dir);
                let path = out.join(format!("{name}.toml"));
                std::fs::write(&path, toml::to_string_pretty(&cfg)?)?;
                let (s, p) = timed_train(&path, &token)?;
                secs.push(s);
                trainable = p;
            }
            let ms_per_step = (secs[1] - secs[0]) * 1e3 / (2 * args.steps) as f64;
            let samples_per_s = (n * args.batch) as f64 / (ms_per_step / 1e3);
            if n == 1 {
                one_worker_rate = Some(samples_per_s);
            }
            points.push(Point {
                config: preset.to_string(),
                worker_device: args.worker_device.to_string(),
                workers: n,
                batch_per_device: args.batch,
                ms_per_step,
                samples_per_s,
                trainable_params: trainable,
                bytes_per_replica_per_step: 8 * trainable,
                efficiency_vs_one_worker: one_worker_rate
                    .map(|one| samples_per_s / (n as f64 * one)),
            });
            let p = points.last().expect("just pushed");
            println!(
                "{preset:5} {n} worker(s): {:9.1} ms/step {:8.1} samples/s  {:6.2} MB/replica/step{}",
                p.ms_per_step,
                p.samples_per_s,
                p.bytes_per_replica_per_step as f64 / 1e6,
                p.efficiency_vs_one_worker
                    .map(|e| format!("  efficiency {e:.2}"))
                    .unwrap_or_default()
            );
        }
    }
    if let Some(dir) = args.results.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.results)
        .with_context(|| format!("--results {}", args.results.display()))?;
    for p in &points {
        writeln!(file, "{}", serde_json::to_string(p)?)?;
    }
    Ok(())
}
