//! Model benchmark: forward time and per-token generation time of the `tiny` and `mid` configs on
//! flex (CPU), and the same configs in PyTorch in the same run when a Python with torch and
//! transformers is available (`BLIP3_PYTHON`, default `python3`), reported as a ratio.
//!
//! Run: `cargo bench -p blip3-model` (set `BLIP3_BENCH_CONFIGS=tiny` to skip `mid`; `full` is
//! the released size with random weights). On a GPU machine: `BLIP3_BENCH_DEVICE=cuda` (built with
//! the `cuda` feature) or `BLIP3_BENCH_DEVICE=wgpu` (Vulkan) with `BLIP3_BENCH_TORCH_DEVICE=cuda`,
//! and `BLIP3_BENCH_DTYPE=f16|bf16`; PyTorch then runs on the same GPU. Speed is measured here,
//! never in tests.

use std::process::Command;
use std::time::Instant;

use blip3_model::{ImageInput, KvCache, MultimodalInput, XGenMMConfig};
use burn::prelude::*;
use burn::tensor::{DType, Distribution};

/// Text tokens per prompt and generated tokens per measurement.
const TEXT_TOKENS: usize = 32;
const NEW_TOKENS: usize = 16;

struct Timing {
    forward_ms: f64,
    token_ms: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn input(cfg: &XGenMMConfig, device: &Device) -> MultimodalInput {
    let s = cfg.vision.image_size;
    // A 2x2 any-res image: global view + 4 crops.
    let pixels = Tensor::<4>::random([5, 3, s, s], Distribution::Uniform(-1.0, 1.0), device);
    let image = cfg.initial_tokenizer_len as u32;
    let mut ids: Vec<u32> = (0..TEXT_TOKENS as u32).map(|i| 10 + i % 200).collect();
    ids[4] = image;
    MultimodalInput {
        input_ids: vec![ids],
        images: vec![vec![ImageInput {
            pixels,
            grid: Some((2, 2)),
            original_size: (2 * s, 2 * s),
        }]],
        labels: None,
    }
}

/// Device and dtype from `BLIP3_BENCH_DEVICE` (flex, cpu, wgpu, vulkan, metal, cuda) and `BLIP3_BENCH_DTYPE` (f32, f16,
/// bf16).
fn bench_device() -> (String, Device, DType) {
    let name = std::env::var("BLIP3_BENCH_DEVICE").unwrap_or_else(|_| "flex".into());
    let device = name
        .parse::<blip3_model::Backend>()
        .map_err(|e| e.to_string())
        .and_then(|b| b.device(0).map_err(|e| e.to_string()))
        .unwrap_or_else(|e| panic!("BLIP3_BENCH_DEVICE: {e}"));
    let dtype = match std::env::var("BLIP3_BENCH_DTYPE").as_deref() {
        Ok("bf16") => DType::BF16,
        Ok("f16") => DType::F16,
        Ok("f32") | Err(_) => DType::F32,
        Ok(other) => panic!("BLIP3_BENCH_DTYPE={other}: use f32, f16 or bf16"),
    };
    (name, device, dtype)
}

fn bench_rust(name: &str, cfg: &XGenMMConfig, reps: usize) -> Timing {
    let (dev_name, device, dtype) = bench_device();
    let mut model = cfg.init(&device);
    if dtype != DType::F32 {
        model = blip3_model::loader::cast_module(model, dtype);
    }
    let inp = input(cfg, &device);
    // Warm-up (materialises the lazily initialised weights; on GPUs, compiles and autotunes).
    for _ in 0..2 {
        let _ = model.forward(&inp).expect("forward").logits.into_data();
    }
    let mut fwd = Vec::new();
    for _ in 0..reps {
        let t0 = Instant::now();
        let out = model.forward(&inp).expect("forward");
        let _ = out.logits.into_data();
        fwd.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    // Incremental decoding: time per token after the prefill.
    let mut tok = Vec::new();
    for _ in 0..reps.min(3) {
        let mut cache = KvCache::new();
        let _ = model
            .prefill(&inp, &mut cache)
            .expect("prefill")
            .0
            .into_data();
        let t0 = Instant::now();
        for i in 0..NEW_TOKENS {
            let l = model
                .decode_step(&[(i % 100) as u32 + 10], &[true], &mut cache)
                .expect("step");
            let _ = l.into_data();
        }
        tok.push(t0.elapsed().as_secs_f64() * 1e3 / NEW_TOKENS as f64);
    }
    let t = Timing {
        forward_ms: median(fwd),
        token_ms: median(tok),
    };
    let params = model.num_params();
    println!(
        "rust/{dev_name:5} {name:5}  forward {:9.2} ms   decode {:8.2} ms/token = {:.1} tokens/s   ({params} params, {dtype:?})",
        t.forward_ms,
        t.token_ms,
        1e3 / t.token_ms,
    );
    // The physical floor of batch-1 decoding: every weight read once per token.
    if let Some(gbps) = std::env::var("BLIP3_BENCH_MEM_GBPS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
    {
        let bytes = params as f64 * dtype.size() as f64;
        let floor_ms = bytes / (gbps * 1e9) * 1e3;
        println!(
            "limit      {name:5}  decode >= {floor_ms:.2} ms/token ({:.0} MB of weights at {gbps} GB/s); blip3 reaches {:.0}% of it, {:.0} GB/s",
            bytes / 1e6,
            100.0 * floor_ms / t.token_ms,
            bytes / (t.token_ms * 1e-3) / 1e9
        );
    }
    t
}

fn bench_torch(name: &str, cfg: &XGenMMConfig, reps: usize) -> Option<Timing> {
    let python = std::env::var("BLIP3_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/torch_reference.py");
    let cfg_json = serde_json::to_string(&cfg.to_hf_value()).ok()?;
    // PyTorch runs on `BLIP3_BENCH_TORCH_DEVICE` (cpu or cuda; default cuda when blip3 runs on
    // cuda) in `BLIP3_BENCH_TORCH_DTYPE` (default: blip3's dtype).
    let (dev_name, _, dtype) = bench_device();
    let torch_device = std::env::var("BLIP3_BENCH_TORCH_DEVICE")
        .unwrap_or_else(|_| if dev_name == "cuda" { "cuda" } else { "cpu" }.into());
    let torch_dtype = std::env::var("BLIP3_BENCH_TORCH_DTYPE").unwrap_or_else(|_| {
        match dtype {
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            _ => "f32",
        }
        .into()
    });
    let out = Command::new(&python)
        .arg(script)
        .arg(&cfg_json)
        .arg(TEXT_TOKENS.to_string())
        .arg(NEW_TOKENS.to_string())
        .arg(reps.to_string())
        .arg(torch_device)
        .arg(torch_dtype)
        .output();
    let out = match out {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            eprintln!(
                "torch reference skipped ({python}): {}",
                String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            );
            return None;
        }
        Err(e) => {
            eprintln!("torch reference skipped: cannot run {python}: {e}");
            return None;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(text.lines().last()?).ok()?;
    let t = Timing {
        forward_ms: v["forward_ms"].as_f64()?,
        token_ms: v["token_ms"].as_f64()?,
    };
    println!(
        "torch/{:5} {name:5}  forward {:9.2} ms   decode {:8.2} ms/token   (torch {} threads, {})",
        v["device"].as_str().unwrap_or("?"),
        t.forward_ms,
        t.token_ms,
        v["threads"],
        v["dtype"].as_str().unwrap_or("?")
    );
    Some(t)
}

fn main() {
    // As the `blip3` binary does.
    blip3_model::host::keep_freed_memory();
    let which = std::env::var("BLIP3_BENCH_CONFIGS").unwrap_or_else(|_| "tiny,mid".into());
    println!(
        "blip3 model benchmark: 1 image (2x2 any-res, 5 views) + {TEXT_TOKENS} text tokens; \
         decode = {NEW_TOKENS} tokens with the KV cache; medians; threads: RAYON_NUM_THREADS={}",
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "default".into())
    );
    for name in which.split(',') {
        let (cfg, reps) = match name.trim() {
            "tiny" => (XGenMMConfig::tiny(1968), 20),
            "mid" => (XGenMMConfig::mid(), 5),
            "full" => (XGenMMConfig::xgenmm_phi3_mini_v1_5(), 5),
            other => {
                eprintln!("unknown config {other}");
                continue;
            }
        };
        let r = bench_rust(name, &cfg, reps);
        if let Some(t) = bench_torch(name, &cfg, reps) {
            println!(
                "ratio      {name:5}  forward torch/rust = {:.2}x   decode torch/rust = {:.2}x  (>1 means blip3 is faster)",
                t.forward_ms / r.forward_ms,
                t.token_ms / r.token_ms
            );
        }
    }
}
