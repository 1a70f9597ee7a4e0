//! Model benchmark: forward time and per-token generation time of the `tiny` and `mid` configs on
//! flex (CPU), and the same configs in PyTorch in the same run when a Python with torch and
//! transformers is available (`BLIP3_PYTHON`, default `python3`), reported as a ratio.
//!
//! Run: `cargo bench -p blip3-model` (set `BLIP3_BENCH_CONFIGS=tiny` to skip `mid`; `full` is
//! the released size with random weights). On a GPU machine: `BLIP3_BENCH_DEVICE=cuda` (built with
//! the `cuda` feature) or `BLIP3_BENCH_DEVICE=wgpu` (Vulkan) with `BLIP3_BENCH_TORCH_DEVICE=cuda`,
//! and `BLIP3_BENCH_DTYPE=f16|bf16`; PyTorch then runs on the same GPU. After each config, a
//! table of where one decoder layer's time goes (decoding and prefill; `BLIP3_BENCH_PARTS=0`
//! skips it, `BLIP3_BENCH_PARTS=only` prints only it). Speed is measured here, never in tests.

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

/// Runs `part` `calls` times back to back (as a decoding step issues its operations: no sync in
/// between, so a lazy backend may queue and fuse them) and returns the milliseconds per call,
/// the round ended by a device sync; outputs are kept until the sync so no queued operation is
/// dropped.
fn time_round<T>(device: &Device, calls: usize, part: &impl Fn() -> T) -> f64 {
    let _ = device.sync();
    let t0 = Instant::now();
    let outputs: Vec<T> = (0..calls).map(|_| part()).collect();
    let _ = device.sync();
    let ms = t0.elapsed().as_secs_f64() * 1e3 / calls as f64;
    drop(outputs);
    ms
}

/// The median of `reps` [`time_round`]s of `part`, after one warm-up round.
fn time_part<T>(device: &Device, calls: usize, reps: usize, part: impl Fn() -> T) -> f64 {
    time_round(device, calls, &part);
    median(
        (0..reps)
            .map(|_| time_round(device, calls, &part))
            .collect(),
    )
}

/// How much slower `with` is than `without`: the median of the differences of rounds run in
/// alternation (so that drifts of a shared machine hit both alike), after one warm-up pair.
fn time_difference<T, U>(
    device: &Device,
    calls: usize,
    reps: usize,
    with: impl Fn() -> T,
    without: impl Fn() -> U,
) -> f64 {
    time_round(device, calls, &with);
    time_round(device, calls, &without);
    median(
        (0..reps)
            .map(|_| time_round(device, calls, &with) - time_round(device, calls, &without))
            .collect(),
    )
}

/// Where one decoder layer's time goes: each part of the layer (the model's own modules and
/// functions, random weights of the config's sizes, `BLIP3_BENCH_DTYPE`) timed alone, for a
/// decoding step (one token against a cache of the benchmark prompt's length) and for the
/// prefill of that prompt, then the whole layer's parts back to back. This is the profile that
/// decides whether a part (the RMSNorms, the rotary embedding) deserves a fused kernel. Timed
/// alone, a part runs with its weights and inputs hot in the caches, which flatters the
/// memory-bound ones; so the parts that can be dropped without changing shapes are also timed
/// in place, as the whole layer minus the layer without that part (rounds of the two in
/// alternation, the median difference): what fusing it away could save at most; on a noisy
/// machine a small part's figure can come out below zero. `BLIP3_BENCH_PARTS=0` skips it.
fn bench_layer_parts(name: &str, cfg: &XGenMMConfig, reps: usize) {
    use blip3_model::attention::{
        merge_heads, repeat_kv, scaled_dot_product_attention, split_heads,
    };
    use blip3_model::kv_cache::KvBuffers;
    use blip3_model::lora::adapted;
    use blip3_model::rope::{Rope, apply_rotary};
    use blip3_shaders::activation::swiglu;
    use std::cell::RefCell;

    if parts_mode() == PartsMode::Skip {
        return;
    }
    let (dev_name, device, dtype) = bench_device();
    let mut text = cfg.text.clone();
    text.num_hidden_layers = 1;
    text.vocab_size = 64;
    let mut lm = text.init(&device);
    if dtype != DType::F32 {
        lm = blip3_model::loader::cast_module(lm, dtype);
    }
    let layer = &lm.model.layers[0];
    let (d, hd) = (text.hidden_size, text.head_dim());
    let (heads, kv_heads) = (text.num_attention_heads, text.num_key_value_heads);
    let group = heads / kv_heads;
    // The benchmark prompt: every view's latents plus the text tokens.
    let context = 5 * cfg.resampler.num_latents + TEXT_TOKENS;
    let rope = Rope::new(&text);
    println!();
    println!(
        "decoder layer parts, {name} ({dev_name}, {dtype:?}; d {d}, {heads} heads of {hd}, \
         prompt {context} tokens; ms per call, back to back):"
    );
    println!(
        "| phase | part | alone ms | in the layer ms (layer − layer without it) | share of the layer |"
    );
    println!("|---|---|---:|---:|---:|");
    for (phase, t, calls) in [("decode", 1, 20), ("prefill", context, 3)] {
        let rand = |shape: [usize; 3]| {
            Tensor::<3>::random(shape, Distribution::Uniform(-1.0, 1.0), &device).cast(dtype)
        };
        let past = |w: usize| {
            Tensor::<4>::random(
                [1, kv_heads, context - 1, w],
                Distribution::Uniform(-1.0, 1.0),
                &device,
            )
            .cast(dtype)
        };
        let x = rand([1, t, d]);
        let positions = vec![((context - t) as i64..context as i64).collect::<Vec<_>>()];
        let (cos, sin) = rope.cos_sin(&positions, &device);
        let attn = &layer.self_attn;
        let mlp = &layer.mlp;
        let normed = layer.input_layernorm.forward(x.clone());
        let qkv = adapted(&attn.qkv_proj, None, normed.clone());
        let (q_width, kv_width) = (heads * hd, kv_heads * hd);
        let split = |qkv: Tensor<3>| {
            (
                split_heads(qkv.clone().narrow(2, 0, q_width), heads),
                split_heads(qkv.clone().narrow(2, q_width, kv_width), kv_heads),
                split_heads(qkv.narrow(2, q_width + kv_width, kv_width), kv_heads),
            )
        };
        let (q, k, v) = split(qkv.clone());
        let (past_k, past_v) = (past(hd), past(hd));
        // The model's cache: the prompt's keys and values, then each decoding call writes one
        // position after them (rewinding first, so the context stays the prompt's length).
        let cache = RefCell::new(KvBuffers::new(past_k.clone(), past_v.clone()));
        let append = |k: Tensor<4>, v: Tensor<4>| {
            if phase == "decode" {
                let mut cache = cache.borrow_mut();
                cache.truncate(context - 1);
                cache.append(k, v)
            } else {
                (k, v)
            }
        };
        // Attention alone reads copies, so that nothing else holds the cache's buffers.
        let (keys, values) = if phase == "decode" {
            (
                Tensor::cat(vec![past_k.clone(), k.clone()], 2),
                Tensor::cat(vec![past_v.clone(), v.clone()], 2),
            )
        } else {
            (k.clone(), v.clone())
        };
        let causal = phase == "prefill";
        let attend = |q: Tensor<4>, keys: Tensor<4>, values: Tensor<4>| {
            scaled_dot_product_attention(
                q,
                repeat_kv(keys, group),
                repeat_kv(values, group),
                None,
                causal,
            )
        };
        let attended = merge_heads(attend(q.clone(), keys.clone(), values.clone()));
        let h = x.clone() + adapted(&attn.o_proj, None, attended.clone());
        let post = layer.post_attention_layernorm.forward(h.clone());
        let gate_up = adapted(&mlp.gate_up_proj, None, post.clone());
        let inner = text.intermediate_size;
        let act = swiglu(gate_up.clone());
        // The layer with one part left out (`skip`), back to back: what the part costs in place,
        // where the layer's other memory traffic and the backend's fusion surround it.
        let layer_without = |skip: &str| {
            let normed = if skip == NORM {
                x.clone()
            } else {
                layer.input_layernorm.forward(x.clone())
            };
            let (q, k, v) = split(adapted(&attn.qkv_proj, None, normed));
            let (q, k) = if skip == ROTARY {
                (q, k)
            } else {
                (apply_rotary(q, &cos, &sin), apply_rotary(k, &cos, &sin))
            };
            let (keys, values) = if skip == APPEND && phase == "decode" {
                (past_k.clone(), past_v.clone())
            } else {
                append(k, v)
            };
            let attended = if skip == ATTENTION {
                merge_heads(q)
            } else {
                merge_heads(attend(q, keys, values))
            };
            let h = x.clone() + adapted(&attn.o_proj, None, attended);
            let post = if skip == POST_NORM {
                h.clone()
            } else {
                layer.post_attention_layernorm.forward(h.clone())
            };
            let gate_up = adapted(&mlp.gate_up_proj, None, post);
            let act = if skip == SWIGLU {
                gate_up.narrow(2, 0, inner)
            } else {
                swiglu(gate_up)
            };
            h + adapted(&mlp.down_proj, None, act)
        };
        let whole = time_part(&device, calls, reps, || layer_without(""));
        let alone: Vec<(&str, f64)> = vec![
            (
                NORM,
                time_part(&device, calls, reps, || {
                    layer.input_layernorm.forward(x.clone())
                }),
            ),
            (
                "qkv projection",
                time_part(&device, calls, reps, || {
                    adapted(&attn.qkv_proj, None, normed.clone())
                }),
            ),
            (
                ROTARY,
                time_part(&device, calls, reps, || {
                    let (q, k, _) = split(qkv.clone());
                    (apply_rotary(q, &cos, &sin), apply_rotary(k, &cos, &sin))
                }),
            ),
            (
                APPEND,
                // The views are dropped at once, as the layer drops them after attention.
                time_part(&device, calls, reps, || {
                    drop(append(k.clone(), v.clone()));
                }),
            ),
            (
                ATTENTION,
                time_part(&device, calls, reps, || {
                    attend(q.clone(), keys.clone(), values.clone())
                }),
            ),
            (
                "o projection + residual",
                time_part(&device, calls, reps, || {
                    x.clone() + adapted(&attn.o_proj, None, attended.clone())
                }),
            ),
            (
                POST_NORM,
                time_part(&device, calls, reps, || {
                    layer.post_attention_layernorm.forward(h.clone())
                }),
            ),
            (
                "gate_up projection",
                time_part(&device, calls, reps, || {
                    adapted(&mlp.gate_up_proj, None, post.clone())
                }),
            ),
            (
                SWIGLU,
                time_part(&device, calls, reps, || swiglu(gate_up.clone())),
            ),
            (
                "down projection + residual",
                time_part(&device, calls, reps, || {
                    h.clone() + adapted(&mlp.down_proj, None, act.clone())
                }),
            ),
        ];
        for (part, ms) in &alone {
            let in_layer = if [NORM, ROTARY, APPEND, ATTENTION, POST_NORM, SWIGLU].contains(part)
                && (*part != APPEND || phase == "decode")
            {
                let cost = time_difference(
                    &device,
                    calls,
                    2 * reps + 1,
                    || layer_without(""),
                    || layer_without(part),
                );
                format!("{cost:.3} | {:.1}%", 100.0 * cost / whole)
            } else {
                "- | -".to_string()
            };
            println!("| {phase} | {part} | {ms:.3} | {in_layer} |");
        }
        println!("| {phase} | whole layer | {whole:.3} | {whole:.3} | 100% |");
    }
}

/// What `BLIP3_BENCH_PARTS` asks for: `0` skips the decoder-layer parts table, `only` prints
/// nothing else (no forward, decoding or PyTorch runs), anything else prints it after them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PartsMode {
    Skip,
    Also,
    Only,
}

fn parts_mode() -> PartsMode {
    match std::env::var("BLIP3_BENCH_PARTS").as_deref() {
        Ok("0") => PartsMode::Skip,
        Ok("only") => PartsMode::Only,
        _ => PartsMode::Also,
    }
}

/// The parts [`bench_layer_parts`] can leave out of the layer.
const NORM: &str = "input RMSNorm";
const ROTARY: &str = "split heads + rotary (q, k)";
const APPEND: &str = "KV cache append";
const ATTENTION: &str = "attention";
const POST_NORM: &str = "post-attention RMSNorm";
const SWIGLU: &str = "SiLU(gate) · up";

fn bench_torch(name: &str, cfg: &XGenMMConfig, reps: usize) -> Option<Timing> {
    let python = std::env::var("BLIP3_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = blip3_fixtures::checkout().join("model/benches/torch_reference.py");
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

/// Runs the benchmark (public so that the GPU check's suite binary can carry it).
pub fn main() {
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
        if parts_mode() != PartsMode::Only {
            let r = bench_rust(name, &cfg, reps);
            if let Some(t) = bench_torch(name, &cfg, reps) {
                println!(
                    "ratio      {name:5}  forward torch/rust = {:.2}x   decode torch/rust = {:.2}x  (>1 means blip3 is faster)",
                    t.forward_ms / r.forward_ms,
                    t.token_ms / r.token_ms
                );
            }
        }
        bench_layer_parts(name, &cfg, reps);
    }
}
