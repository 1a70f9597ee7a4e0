//! `blip3 bench load`: time and peak resident memory of loading a checkpoint. Without `--model`,
//! writes a sparse (all-zero, so no disk is used) bf16 checkpoint with the released layout and
//! sizes (`--config full` is the 4.4B xGen-MM v1.5: sharded safetensors, index, config.json) and
//! loads it through the same path as a downloaded model, reporting peak RSS against the size of
//! the weights: streaming keeps it near the bf16 size rather than an f32 copy plus the file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use blip3_data::progress::{Mode, PLAIN_INTERVAL, spin};
use blip3_model::XGenMMConfig;
use blip3_model::loader::{CheckpointKind, LoadOptions, expected_hf_keys, load_xgenmm_dir};
use burn::prelude::*;

use crate::cmd::common::{DTypeArg, DeviceKindArg, device, parse_device};

/// Arguments of `blip3 bench load`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// A model directory to load; default: a sparse synthetic checkpoint of `--config`.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Sizes of the synthetic checkpoint: full, mid or tiny.
    #[arg(long, default_value = "full")]
    pub config: String,
    /// Where to write the synthetic checkpoint (default: a temporary directory).
    #[arg(long)]
    pub scratch: Option<PathBuf>,
    /// Cast while loading.
    #[arg(long, value_enum)]
    pub dtype: Option<DTypeArg>,
    /// Device.
    #[arg(long, value_parser = parse_device, default_value_t = DeviceKindArg::Flex)]
    pub device: DeviceKindArg,
}

fn rss_mb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with(field)).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Writes a sparse bf16 checkpoint of `cfg` in the released layout, in shards of about 2 GB.
fn write_sparse(cfg: &XGenMMConfig, dir: &Path) -> Result<u64> {
    std::fs::create_dir_all(dir)?;
    let model = cfg.init(&Device::flex()); // lazily initialised: no parameter memory
    let keys = expected_hf_keys(&model, CheckpointKind::XGenMM);
    let mut shards: Vec<Vec<(String, Vec<usize>)>> = vec![Vec::new()];
    let mut size = 0u64;
    for (k, shape) in keys {
        let bytes = shape.iter().product::<usize>() as u64 * 2;
        if size + bytes > 2_000_000_000 && !shards.last().is_some_and(|s| s.is_empty()) {
            shards.push(Vec::new());
            size = 0;
        }
        size += bytes;
        if let Some(last) = shards.last_mut() {
            last.push((k, shape));
        }
    }
    let n = shards.len();
    let mut weight_map = serde_json::Map::new();
    let mut total = 0u64;
    for (i, shard) in shards.iter().enumerate() {
        let name = format!("model-{:05}-of-{n:05}.safetensors", i + 1);
        let mut header = serde_json::Map::new();
        let mut offset = 0u64;
        for (k, shape) in shard {
            let bytes = shape.iter().product::<usize>() as u64 * 2;
            header.insert(
                k.clone(),
                serde_json::json!({"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + bytes]}),
            );
            weight_map.insert(k.clone(), serde_json::Value::String(name.clone()));
            offset += bytes;
        }
        let mut h = serde_json::to_vec(&header)?;
        while h.len() % 8 != 0 {
            h.push(b' ');
        }
        let mut f = std::fs::File::create(dir.join(&name))?;
        f.write_all(&(h.len() as u64).to_le_bytes())?;
        f.write_all(&h)?;
        // Sparse zeros: extend the file without writing the data.
        f.set_len(8 + h.len() as u64 + offset)?;
        total += offset;
    }
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::to_string(
            &serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map}),
        )?,
    )?;
    let mut hf = cfg.to_hf_value();
    hf["torch_dtype"] = serde_json::Value::String("bfloat16".into());
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&hf)?)?;
    Ok(total)
}

/// Runs the benchmark.
pub fn run(args: Args) -> Result<()> {
    let tmp;
    let (dir, weights_mb) = match &args.model {
        Some(d) => (d.clone(), None),
        None => {
            let cfg = match args.config.as_str() {
                "full" => XGenMMConfig::xgenmm_phi3_mini_v1_5(),
                "mid" => XGenMMConfig::mid(),
                "tiny" => XGenMMConfig::tiny(1968),
                other => bail!("unknown config {other} (full, mid, tiny)"),
            };
            let dir = match &args.scratch {
                Some(d) => d.clone(),
                None => {
                    tmp = tempfile::tempdir()?;
                    tmp.path().to_path_buf()
                }
            };
            let bytes = write_sparse(&cfg, &dir).context("writing the synthetic checkpoint")?;
            (dir, Some(bytes as f64 / 1048576.0))
        }
    };
    let dev = device(args.device)?;
    let before = rss_mb("VmRSS:");
    let t0 = Instant::now();
    // One blocking call without a per-tensor hook: a spinner with the elapsed time (plain
    // "still running" lines when stderr is not a terminal).
    let model = spin(
        &format!("loading {}", dir.display()),
        Mode::auto(true),
        PLAIN_INTERVAL,
        || {
            load_xgenmm_dir(
                &dir,
                &dev,
                LoadOptions {
                    dtype: args.dtype.map(|d| d.dtype()),
                },
            )
        },
    )
    .with_context(|| format!("loading {}", dir.display()))?;
    let secs = t0.elapsed().as_secs_f64();
    let peak = rss_mb("VmHWM:");
    let dtype = model.lang_model.model.layers[0]
        .self_attn
        .qkv_proj
        .weight
        .val()
        .dtype();
    println!(
        "loaded {} ({} parameters) in {secs:.1} s on {:?} as {dtype:?}",
        dir.display(),
        model.num_params(),
        args.device
    );
    match weights_mb {
        Some(w) => println!(
            "weights on disk {w:.0} MiB (bf16); RSS before {before:.0} MiB, peak {peak:.0} MiB: peak / weights = {:.2}",
            peak / w
        ),
        None => println!("RSS before {before:.0} MiB, peak {peak:.0} MiB"),
    }
    // Free the device memory and wait for the device's queue to drain before the process exits:
    // leaving it to process teardown, the runtime's server thread could still be releasing
    // buffers while the driver unloads (the rc 139 at exit seen on a GPU).
    drop(model);
    dev.sync()
        .map_err(|e| anyhow::anyhow!("synchronising the device: {e:?}"))?;
    println!("released the weights; device idle");
    Ok(())
}
