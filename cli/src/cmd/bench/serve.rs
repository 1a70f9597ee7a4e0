//! `blip3 bench serve`: throughput and time to first token of `blip3 serve` under concurrent
//! streaming clients, and what continuous batching gains over serving the same requests one at a
//! time.
//!
//! For each config (random weights: `tiny`, `mid`; or a model directory with `--model`), a server
//! starts on a loopback port and, for each client count (1, 8, 32 by default), that many client
//! threads send streaming chat requests (distinct prompts, greedy, `ignore_eos` so every request
//! generates exactly `--max-tokens` tokens, `logprobs` so every token arrives as its own chunk)
//! until `--requests-per-client` each are answered. Reported: generated tokens/s over the wall
//! time, and p50/p99 of the time from sending a request to its first token. Then a second server
//! that decodes one sequence at a time (`max_seqs = 1`, requests wait in its queue) serves the
//! same requests at `--baseline-clients` clients; the ratio of the two throughputs is what
//! continuous batching buys. Results are printed as a table and written as JSON lines.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use blip3_data::tokenizer::Blip3Tokenizer;
use blip3_model::XGenMMConfig;
use blip3_processor::Processor;
use blip3_server::{SchedulerConfig, ServeConfig};
use serde::Serialize;
use serde_json::{Value, json};

use crate::cmd::common::{DeviceKindArg, device, load_model_dir, parse_device};

/// Arguments of `blip3 bench serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Configs with random weights to serve (comma separated): tiny, mid. Ignored with --model.
    #[arg(long, value_delimiter = ',', default_value = "tiny,mid")]
    pub configs: Vec<String>,
    /// Serve this model directory instead of random-weight configs.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Concurrent client counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    pub clients: Vec<usize>,
    /// Requests each client sends, one after the other.
    #[arg(long, default_value_t = 4)]
    pub requests_per_client: usize,
    /// Tokens generated per request (128: a typical chat reply; shorter replies make the
    /// per-request prefill, which batching cannot share, a larger part of the work).
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// Client count of the one-at-a-time comparison (0: skip it).
    #[arg(long, default_value_t = 8)]
    pub baseline_clients: usize,
    /// Sequences the batching server decodes together at most.
    #[arg(long, default_value_t = 32)]
    pub max_seqs: usize,
    /// Compute device.
    #[arg(long, value_parser = parse_device, default_value_t = DeviceKindArg::Flex)]
    pub device: DeviceKindArg,
    /// Where to append the results as JSON lines.
    #[arg(long, default_value = "runs/bench/serve.jsonl")]
    pub out: PathBuf,
}

/// One measured load.
#[derive(Debug, Clone, Serialize)]
struct Row {
    config: String,
    device: String,
    /// `batched` (continuous batching) or `one-at-a-time`.
    mode: &'static str,
    clients: usize,
    requests: usize,
    errors: usize,
    generated_tokens: usize,
    wall_s: f64,
    tokens_per_s: f64,
    ttft_p50_ms: f64,
    ttft_p99_ms: f64,
}

/// What one request measured.
struct Outcome {
    ttft: Duration,
    tokens: usize,
}

/// Sends one streaming chat request and reads it to the end.
fn one_request(addr: SocketAddr, prompt: &str, max_tokens: usize) -> Result<Outcome> {
    let body = json!({
        "model": "bench",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": true,
        "stream_options": {"include_usage": true},
        "logprobs": true,
        "ignore_eos": true,
    });
    let sent = Instant::now();
    let response = ureq::post(&format!("http://{addr}/v1/chat/completions"))
        .timeout(Duration::from_secs(600))
        .send_json(body)
        .map_err(|e| anyhow::anyhow!("request failed: {e}"))?;
    let mut ttft = None;
    let mut tokens = None;
    for line in BufReader::new(response.into_reader()).lines() {
        let line = line.context("reading the event stream")?;
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            break;
        }
        let v: Value = serde_json::from_str(data).context("a malformed event")?;
        if let Some(e) = v.get("error") {
            bail!("the server failed the request: {e}");
        }
        if ttft.is_none() && !v["choices"][0]["logprobs"].is_null() {
            ttft = Some(sent.elapsed());
        }
        if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
            tokens = Some(n as usize);
        }
    }
    Ok(Outcome {
        ttft: ttft.context("no token arrived")?,
        tokens: tokens.context("no usage chunk")?,
    })
}

/// `clients` threads sending `clients * per_client` requests; returns the row's numbers.
fn load(
    addr: SocketAddr,
    clients: usize,
    per_client: usize,
    max_tokens: usize,
) -> (usize, usize, f64, Vec<f64>, usize) {
    let total = clients * per_client;
    let next = Arc::new(AtomicUsize::new(0));
    let results = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let start = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (next, results) = (next.clone(), results.clone());
            std::thread::spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= total {
                        break;
                    }
                    let prompt = format!(
                        "Request {i}: describe a picture of {} red squares and {} blue circles.",
                        i % 7 + 1,
                        i % 5 + 2
                    );
                    let r = one_request(addr, &prompt, max_tokens);
                    if let Ok(mut all) = results.lock() {
                        all.push(r);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    let wall = start.elapsed().as_secs_f64();
    let all = std::mem::take(&mut *results.lock().unwrap_or_else(|e| e.into_inner()));
    let mut ttft_ms = Vec::new();
    let (mut tokens, mut errors) = (0, 0);
    for r in all {
        match r {
            Ok(o) => {
                tokens += o.tokens;
                ttft_ms.push(o.ttft.as_secs_f64() * 1e3);
            }
            Err(e) => {
                if errors == 0 {
                    eprintln!("  first error: {e:#}");
                }
                errors += 1;
            }
        }
    }
    (total, tokens, wall, ttft_ms, errors)
}

/// The `q` quantile (nearest rank) of `v`.
fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// A random-weight model of a preset with the small built-in tokenizer. The mid config keeps its
/// full 32k-row embedding table and head (decode cost is dominated by them and the layers), with
/// the tokenizer's ids at the start of the table.
fn random_model(
    name: &str,
    dev: &burn::prelude::Device,
) -> Result<(blip3_model::XGenMM, Processor)> {
    let tok = Blip3Tokenizer::tiny()?;
    let cfg = match name {
        "tiny" => XGenMMConfig::tiny(tok.initial_len()),
        "mid" => XGenMMConfig {
            initial_tokenizer_len: tok.initial_len(),
            ..XGenMMConfig::mid()
        },
        other => bail!("unknown config {other} (tiny, mid; or --model DIR)"),
    };
    dev.seed(7);
    let model = cfg.init(dev);
    let processor = Processor::for_config(tok, &cfg)?;
    Ok((model, processor))
}

fn measure(
    args: &Args,
    label: &str,
    model: blip3_model::XGenMM,
    processor: Processor,
    max_seqs: usize,
    client_counts: &[usize],
    mode: &'static str,
) -> Result<Vec<Row>> {
    let max_clients = client_counts.iter().copied().max().unwrap_or(1);
    let server = blip3_server::spawn(
        model,
        processor,
        ServeConfig {
            addr: "127.0.0.1:0".parse()?,
            scheduler: SchedulerConfig {
                max_seqs,
                max_queue: max_clients * 2 + 8,
                ..SchedulerConfig::default()
            },
            ..ServeConfig::default()
        },
    )?;
    // Warm-up: the first request pays one-off allocations.
    one_request(server.addr, "warm up", 4).context("warm-up request")?;
    let mut rows = Vec::new();
    for &clients in client_counts {
        let (requests, tokens, wall, mut ttft, errors) = load(
            server.addr,
            clients,
            args.requests_per_client,
            args.max_tokens,
        );
        let row = Row {
            config: label.to_string(),
            device: args.device.to_string(),
            mode,
            clients,
            requests,
            errors,
            generated_tokens: tokens,
            wall_s: wall,
            tokens_per_s: tokens as f64 / wall.max(1e-9),
            ttft_p50_ms: quantile(&mut ttft, 0.5),
            ttft_p99_ms: quantile(&mut ttft, 0.99),
        };
        println!(
            "{:<8} {:<14} {:>7} {:>8} {:>6} {:>9} {:>8.1} {:>10.1} {:>10.1} {:>10.1}",
            row.config,
            row.mode,
            row.clients,
            row.requests,
            row.errors,
            row.generated_tokens,
            row.wall_s,
            row.tokens_per_s,
            row.ttft_p50_ms,
            row.ttft_p99_ms
        );
        rows.push(row);
    }
    server.stop();
    Ok(rows)
}

/// Runs the benchmark.
pub fn run(args: Args) -> Result<()> {
    let dev = device(args.device)?;
    if args.clients.is_empty() || args.clients.contains(&0) {
        bail!("--clients needs positive counts");
    }
    if args.requests_per_client == 0 || args.max_tokens == 0 {
        bail!("--requests-per-client and --max-tokens must be at least 1");
    }
    let targets: Vec<String> = match &args.model {
        Some(dir) => vec![dir.display().to_string()],
        None => args.configs.clone(),
    };
    println!(
        "serving benchmark on {}: {} tokens a request, {} requests a client",
        args.device, args.max_tokens, args.requests_per_client
    );
    println!(
        "{:<8} {:<14} {:>7} {:>8} {:>6} {:>9} {:>8} {:>10} {:>10} {:>10}",
        "config",
        "mode",
        "clients",
        "requests",
        "errors",
        "tokens",
        "wall s",
        "tokens/s",
        "TTFT p50",
        "TTFT p99"
    );
    let mut all = Vec::new();
    for target in &targets {
        let open = || -> Result<(blip3_model::XGenMM, Processor)> {
            match &args.model {
                Some(dir) => {
                    let loaded = load_model_dir(dir, &dev, None)?;
                    Ok((loaded.model, loaded.processor))
                }
                None => random_model(target, &dev),
            }
        };
        let label = if args.model.is_some() {
            "model".to_string()
        } else {
            target.clone()
        };
        let (model, processor) = open()?;
        let batched = measure(
            &args,
            &label,
            model,
            processor,
            args.max_seqs.max(1),
            &args.clients,
            "batched",
        )?;
        all.extend(batched.iter().cloned());
        if args.baseline_clients > 0 {
            let (model, processor) = open()?;
            let single = measure(
                &args,
                &label,
                model,
                processor,
                1,
                &[args.baseline_clients],
                "one-at-a-time",
            )?;
            let same = batched
                .iter()
                .find(|r| r.clients == args.baseline_clients)
                .map(|r| r.tokens_per_s);
            if let (Some(b), Some(s)) = (same, single.first().map(|r| r.tokens_per_s)) {
                println!(
                    "{label}: continuous batching {:.2}x the tokens/s of one-at-a-time serving \
                     at {} clients",
                    b / s.max(1e-9),
                    args.baseline_clients
                );
            }
            all.extend(single);
        }
    }
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut text = String::new();
    for row in &all {
        text.push_str(&serde_json::to_string(row)?);
        text.push('\n');
    }
    use std::io::Write;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.out)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!("results appended to {}", args.out.display());
    let errors: usize = all.iter().map(|r| r.errors).sum();
    if errors > 0 {
        bail!("{errors} requests failed (see above)");
    }
    Ok(())
}
