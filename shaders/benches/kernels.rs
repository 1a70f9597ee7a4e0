//! Kernel benchmark: the blip3 attention kernel against Burn's attention op for the shapes the
//! model produces (SigLIP so400m, the perceiver resampler, Phi-3 mini prefill and decode; in half
//! precision on devices with MMA instructions also the tensor-core kernel against the scalar
//! one), decoding on a KV cache's strided view against Burn's op on the view and on a copy, the
//! MLP activations against Burn's tensor ops, the
//! same for a training step's forward and backward (the backward kernels against Burn's
//! autodiff), and
//! the decode GEMV kernel against Burn's matmul on Phi-3's weight products (with the bandwidth
//! each reaches), on CUDA the vendor GEMM (cuBLAS) against Burn's matmul and PyTorch on prefill
//! products, and the resampling kernel on a batch of views, printing milliseconds per call
//! and the ratio.
//!
//! Run: `cargo bench --workspace --bench kernels`. The device is wgpu by default
//! (`BLIP3_BENCH_DEVICE=flex`, or `cuda` with the `cuda` feature); `BLIP3_BENCH_SCALE=full` uses the real
//! sequence lengths and batch sizes, the default `small` shrinks the long ones so that a CPU
//! Vulkan driver (lavapipe) finishes in minutes. Each shape is warmed up (kernel compilation,
//! Burn's autotuning) before timing; every timed call gets fresh inputs and ends in a device
//! sync. `BLIP3_BENCH_FILTER=<text>` keeps the shapes whose name contains the text,
//! `BLIP3_BENCH_REPS` sets the timed calls (default 5). Speed is measured here, never in tests.

use std::time::Instant;

use blip3_shaders::attention::{
    AttentionPath, attention_with, set_tensor_cores, tensor_core_launches,
};
use blip3_shaders::gemm::{is_cuda_device, vendor_available, vendor_matmul};
use blip3_shaders::matvec::gemv;
use blip3_shaders::pillow::resize_rgb8;
use blip3_shaders::resample::{ResampleFilter, resize_batch};
use burn::prelude::*;
use burn::tensor::{DType, Distribution};

/// One attention problem.
struct Shape {
    name: &'static str,
    b: usize,
    h: usize,
    sq: usize,
    sk: usize,
    dh: usize,
    mask: MaskKind,
    causal: bool,
}

#[derive(Clone, Copy)]
enum MaskKind {
    None,
    /// `[B, 1, Sq, Sk]`, the first `pad` keys of every row masked.
    KeyPrefix(usize),
}

fn shapes(full: bool) -> Vec<Shape> {
    // (small, full)
    let pick = |small: usize, big: usize| if full { big } else { small };
    vec![
        Shape {
            name: "siglip so400m (5 views, 729 tokens, Dh 72)",
            b: pick(1, 5),
            h: 16,
            sq: 729,
            sk: 729,
            dh: 72,
            mask: MaskKind::None,
            causal: false,
        },
        Shape {
            name: "resampler (128 latents over 729+128, Dh 96, key padding)",
            b: pick(1, 5),
            h: 16,
            sq: 128,
            sk: 857,
            dh: 96,
            mask: MaskKind::KeyPrefix(0),
            causal: false,
        },
        Shape {
            name: "phi-3 prefill causal (Dh 96)",
            b: 1,
            h: 32,
            sq: pick(512, 2048),
            sk: pick(512, 2048),
            dh: 96,
            mask: MaskKind::None,
            causal: true,
        },
        Shape {
            name: "phi-3 prefill, left-padding mask + causal (Dh 96)",
            b: 2,
            h: 32,
            sq: pick(256, 1024),
            sk: pick(256, 1024),
            dh: 96,
            mask: MaskKind::KeyPrefix(17),
            causal: true,
        },
        Shape {
            name: "phi-3 decode Sq=1 (Dh 96, masked cache)",
            b: pick(1, 4),
            h: 32,
            sq: 1,
            sk: pick(1024, 4096),
            dh: 96,
            mask: MaskKind::KeyPrefix(5),
            causal: false,
        },
        Shape {
            name: "tiny preset (Dh 16)",
            b: 2,
            h: 4,
            sq: 80,
            sk: 80,
            dh: 16,
            mask: MaskKind::None,
            causal: true,
        },
    ]
}

type Inputs = (Tensor<4>, Tensor<4>, Tensor<4>, Option<Tensor<4, Bool>>);

fn inputs(s: &Shape, device: &Device, dtype: DType) -> Inputs {
    let r = |len: usize| {
        Tensor::<4>::random(
            [s.b, s.h, len, s.dh],
            Distribution::Uniform(-1.0, 1.0),
            device,
        )
        .cast(dtype)
    };
    let mask = match s.mask {
        MaskKind::None => None,
        MaskKind::KeyPrefix(pad) => {
            let mut m = vec![false; s.b * s.sq * s.sk];
            for row in m.chunks_exact_mut(s.sk) {
                row[..pad.min(s.sk)].fill(true);
            }
            Some(Tensor::<4, Bool>::from_data(
                TensorData::new(m, [s.b, 1, s.sq, s.sk]),
                device,
            ))
        }
    };
    (r(s.sq), r(s.sk), r(s.sk), mask)
}

/// Median milliseconds of `reps` calls (after `warmup` untimed calls), fresh inputs each time.
fn time_path(
    path: AttentionPath,
    s: &Shape,
    sets: &[Inputs],
    device: &Device,
    warmup: usize,
) -> f64 {
    let run = |(q, k, v, m): &Inputs| {
        let out = attention_with(path, q.clone(), k.clone(), v.clone(), m.clone(), s.causal);
        // A read-back of one value forces execution through fusion's lazy queue.
        let _ = out.slice([0..1, 0..1, 0..1, 0..1]).into_data();
    };
    for set in sets.iter().take(warmup) {
        run(set);
    }
    let _ = device.sync();
    let mut times = Vec::new();
    for set in &sets[warmup..] {
        let t0 = Instant::now();
        run(set);
        let _ = device.sync();
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn bench_device() -> Option<(String, Device)> {
    let which = std::env::var("BLIP3_BENCH_DEVICE").unwrap_or_else(|_| "wgpu".to_string());
    let device = match which.as_str() {
        #[cfg(feature = "cuda")]
        "cuda" => Device::cuda(0),
        #[cfg(feature = "vulkan")]
        "vulkan" => Device::vulkan(DeviceKind::DefaultDevice),
        "wgpu" => Device::wgpu(DeviceKind::DefaultDevice),
        "flex" => Device::flex(),
        other => {
            eprintln!(
                "unknown BLIP3_BENCH_DEVICE={other} (wgpu, flex; vulkan or cuda with their \
                 features)"
            );
            return None;
        }
    };
    let probe = std::panic::catch_unwind(|| {
        let t = Tensor::<1>::from_floats([1.0, 2.0], &device) * 2.0;
        t.into_data().try_into_vec_as::<f32>().ok()
    });
    match probe {
        Ok(Some(v)) if v == [2.0, 4.0] => {
            let name = device
                .identity()
                .map(|i| format!("{which} ({i:?})"))
                .unwrap_or(which);
            Some((name, device))
        }
        _ => {
            eprintln!("no working {which} adapter here: nothing to benchmark");
            None
        }
    }
}

/// Runs the benchmark (public so that the GPU check's suite binary can carry it).
pub fn main() {
    let Some((name, device)) = bench_device() else {
        return;
    };
    let full = std::env::var("BLIP3_BENCH_SCALE").is_ok_and(|s| s == "full");
    let reps: usize = std::env::var("BLIP3_BENCH_REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    println!("device: {name}");
    println!(
        "scale: {}; median of {reps} calls after 2 warm-up calls",
        if full { "full" } else { "small" }
    );
    println!();
    println!(
        "| shape | B×H×Sq×Sk×Dh | dtype | burn ms | blip3 ms | burn/blip3 | tensor-core launches | \
         blip3 scalar ms | scalar/blip3 |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|");
    let mut dtypes = vec![DType::F32];
    if device.supports_dtype(DType::F16) {
        dtypes.push(DType::F16);
    }
    let filter = std::env::var("BLIP3_BENCH_FILTER").unwrap_or_default();
    for s in shapes(full)
        .into_iter()
        .filter(|s| s.name.contains(filter.as_str()))
    {
        for &dtype in &dtypes {
            let warmup = 2;
            let sets: Vec<Inputs> = (0..warmup + reps)
                .map(|_| inputs(&s, &device, dtype))
                .collect();
            let burn = time_path(AttentionPath::Burn, &s, &sets, &device, warmup);
            let before = tensor_core_launches();
            let ours = time_path(AttentionPath::Blip3, &s, &sets, &device, warmup);
            let tensor_cores = tensor_core_launches() - before;
            // Where the tensor-core kernel ran, the scalar kernel on the same inputs beside it.
            let (scalar, ratio) = if tensor_cores > 0 {
                set_tensor_cores(Some(false));
                let scalar = time_path(AttentionPath::Blip3, &s, &sets, &device, warmup);
                set_tensor_cores(None);
                (format!("{scalar:.2}"), format!("{:.2}", scalar / ours))
            } else {
                ("-".to_string(), "-".to_string())
            };
            println!(
                "| {} | {}×{}×{}×{}×{} | {dtype:?} | {burn:.2} | {ours:.2} | {:.2} | {tensor_cores} | \
                 {scalar} | {ratio} |",
                s.name,
                s.b,
                s.h,
                s.sq,
                s.sk,
                s.dh,
                burn / ours
            );
        }
    }

    cache_view_section(&device, &dtypes, reps, &filter);
    activation_section(&device, reps, full, &filter);
    backward_section(&device, &dtypes, reps, full, &filter);
    gemv_section(&device, &dtypes, reps, full, &filter);
    gemm_section(&device, reps, full, &filter);

    // Resampling: a batch of 5 views of a 1000×750 RGB image to 384×384 (Pillow bicubic).
    println!();
    let (n, h, w) = (5, 750, 1000);
    let make =
        || Tensor::<4>::random([n, h, w, 3], Distribution::Uniform(0.0, 255.0), &device).int();
    let run = |t: Tensor<4, Int>| {
        let out = resize_batch(t, 384, 384, ResampleFilter::Bicubic).expect("resize");
        let _ = out.slice([0..1, 0..1, 0..1, 0..1]).into_data();
    };
    run(make());
    let mut times = Vec::new();
    for _ in 0..reps {
        let t = make();
        let _ = device.sync();
        let t0 = Instant::now();
        run(t);
        let _ = device.sync();
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let device_ms = times[times.len() / 2];
    // The same work on the CPU with the Pillow-exact host resize, one image at a time.
    let mut rng = 1u32;
    let bytes: Vec<u8> = (0..h * w * 3)
        .map(|_| {
            rng = rng.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (rng >> 24) as u8
        })
        .collect();
    let mut cpu = Vec::new();
    for _ in 0..reps {
        let t0 = Instant::now();
        for _ in 0..n {
            let _ = resize_rgb8(&bytes, (w, h), (384, 384), ResampleFilter::Bicubic);
        }
        cpu.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    cpu.sort_by(f64::total_cmp);
    println!(
        "resample: {n}×{w}×{h}×3 → 384×384 bicubic: device {device_ms:.2} ms, CPU (host resize, \
         one thread) {:.2} ms (medians of {reps})",
        cpu[cpu.len() / 2]
    );
}

/// Decoding against a KV cache kept in place (the model's `KvBuffers`): the keys and values are
/// the filled prefix of a larger buffer, a strided view. Burn's op on the view, Burn's op on a
/// contiguous copy of it (the copy untimed: what a cache that concatenates hands attention), and
/// the `Auto` path on the view (on Flex attention composed of tensor ops, which read the view in
/// place; on CubeCL devices the kernel). Mid and full-size decoder layers, one query row.
fn cache_view_section(device: &Device, dtypes: &[DType], reps: usize, filter: &str) {
    // (name, heads, head dim, filled positions, buffer positions)
    let cases = [
        ("cache view, mid layer", 12, 64, 352, 480),
        ("cache view, full-size layer", 32, 96, 704, 832),
    ];
    let cases: Vec<_> = cases.iter().filter(|c| c.0.contains(filter)).collect();
    if cases.is_empty() {
        return;
    }
    println!();
    println!(
        "decoding on a KV-cache view (1 query row; keys and values the filled prefix of a buffer):"
    );
    println!();
    println!(
        "| shape | H×S(buffer)×Dh | dtype | burn on view ms | burn contiguous ms | auto on view ms | \
         burn view/auto |"
    );
    println!("|---|---|---|---:|---:|---:|---:|");
    for &&(name, h, dh, filled, capacity) in &cases {
        let shape = Shape {
            name,
            b: 1,
            h,
            sq: 1,
            sk: filled,
            dh,
            mask: MaskKind::None,
            causal: false,
        };
        for &dtype in dtypes {
            let warmup = 2;
            let random = |len: usize| {
                Tensor::<4>::random([1, h, len, dh], Distribution::Uniform(-1.0, 1.0), device)
                    .cast(dtype)
            };
            let view = |buffer: Tensor<4>| buffer.slice([0..1, 0..h, 0..filled, 0..dh]);
            let views: Vec<Inputs> = (0..warmup + reps)
                .map(|_| {
                    (
                        random(1),
                        view(random(capacity)),
                        view(random(capacity)),
                        None,
                    )
                })
                .collect();
            let copy = |t: &Tensor<4>| Tensor::<4>::from_data(t.to_data(), device).cast(dtype);
            let contiguous: Vec<Inputs> = views
                .iter()
                .map(|(q, k, v, _)| (q.clone(), copy(k), copy(v), None))
                .collect();
            let on_view = time_path(AttentionPath::Burn, &shape, &views, device, warmup);
            let copied = time_path(AttentionPath::Burn, &shape, &contiguous, device, warmup);
            let auto = time_path(AttentionPath::Auto, &shape, &views, device, warmup);
            println!(
                "| {name} | {h}×{filled}({capacity})×{dh} | {dtype:?} | {on_view:.3} | \
                 {copied:.3} | {auto:.3} | {:.2} |",
                on_view / auto
            );
        }
    }
}

/// The MLPs' activations in f32: Burn's tensor ops (`up · silu(gate)` on the two halves of the
/// fused projection; `x · sigmoid(2u)` for tanh-GELU) against `blip3_shaders::activation` (on
/// Flex one vectorised pass over the values; elsewhere the same tensor ops).
fn activation_section(device: &Device, reps: usize, full: bool, filter: &str) {
    use blip3_shaders::activation::{gelu_tanh, gelu_tanh_tensor_ops, swiglu, swiglu_tensor_ops};
    // (name, rows, width): a mid and a full-size prefill's SwiGLU (352 and 704 positions), the
    // mid and full-size SigLIP MLPs over 5 views (196 and 729 patches a view).
    let mut cases = vec![
        ("activation silu·up, mid prefill", 352, 2048),
        ("activation gelu-tanh, mid SigLIP", 5 * 196, 3072),
    ];
    if full {
        cases.push(("activation silu·up, full-size prefill", 704, 8192));
        cases.push(("activation gelu-tanh, full-size SigLIP", 5 * 729, 4304));
    }
    cases.retain(|c| c.0.contains(filter));
    if cases.is_empty() {
        return;
    }
    println!();
    println!("activations, f32:");
    println!();
    println!("| shape | rows×width | burn ops ms | blip3 ms | burn/blip3 |");
    println!("|---|---|---:|---:|---:|");
    for (name, rows, width) in cases {
        let gating = name.contains("silu");
        let make = || {
            Tensor::<2>::random(
                [rows, if gating { 2 * width } else { width }],
                Distribution::Uniform(-4.0, 4.0),
                device,
            )
        };
        let time = |f: &dyn Fn(Tensor<2>) -> Tensor<2>| {
            let mut times = Vec::new();
            for i in 0..reps + 2 {
                let x = make();
                let _ = device.sync();
                let t0 = Instant::now();
                let _ = f(x).slice([0..1, 0..1]).into_data();
                let _ = device.sync();
                if i >= 2 {
                    times.push(t0.elapsed().as_secs_f64() * 1e3);
                }
            }
            times.sort_by(f64::total_cmp);
            times[times.len() / 2]
        };
        let (burn, ours) = if gating {
            (time(&swiglu_tensor_ops), time(&swiglu))
        } else {
            (time(&gelu_tanh_tensor_ops), time(&gelu_tanh))
        };
        println!(
            "| {name} | {rows}×{width} | {burn:.2} | {ours:.2} | {:.2} |",
            burn / ours
        );
    }
}

/// Training: forward and backward of `sum(attention(q, k, v) · w)` under autodiff, Burn's
/// attention (its own autodiff, which keeps the `[Sq, Sk]` probabilities from the forward) against
/// the blip3 path (the forward kernel, which also writes each row's log-sum-exp, then the two
/// backward kernels from the saved inputs, output and log-sum-exp). The memory columns give the
/// attention's own transient bytes beyond inputs and outputs: Burn's `[B, H, Sq, Sk]`
/// probabilities (kept from forward to backward) and, in the backward, about three more tensors
/// of that size; blip3's `[B, H, Sq]` f32 log-sum-exp (kept) and `[B, H, Sq, 2]` f32 statistics.
fn backward_section(device: &Device, dtypes: &[DType], reps: usize, full: bool, filter: &str) {
    println!();
    println!("attention forward + backward (autodiff):");
    println!();
    println!(
        "| shape | dtype | burn ms | blip3 ms | burn/blip3 | burn transient MiB (est.) | blip3 transient MiB |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|");
    let ad = device.clone().autodiff();
    for s in shapes(full)
        .into_iter()
        .filter(|s| s.sq > 1 && s.name.contains(filter))
    {
        for &dtype in dtypes {
            let warmup = 2;
            let sets: Vec<Inputs> = (0..warmup + reps).map(|_| inputs(&s, &ad, dtype)).collect();
            let time = |path: AttentionPath| {
                let run = |(q, k, v, m): &Inputs| {
                    let (q, k, v) = (
                        q.clone().require_grad(),
                        k.clone().require_grad(),
                        v.clone().require_grad(),
                    );
                    let out =
                        attention_with(path, q.clone(), k.clone(), v.clone(), m.clone(), s.causal);
                    let grads = out.sum().backward();
                    for t in [q, k, v] {
                        let g = t.grad(&grads).expect("gradient");
                        let _ = g.slice([0..1, 0..1, 0..1, 0..1]).into_data();
                    }
                };
                for set in sets.iter().take(warmup) {
                    run(set);
                }
                let mut times = Vec::new();
                for set in &sets[warmup..] {
                    let _ = device.sync();
                    let t0 = Instant::now();
                    run(set);
                    let _ = device.sync();
                    times.push(t0.elapsed().as_secs_f64() * 1e3);
                }
                times.sort_by(f64::total_cmp);
                times[times.len() / 2]
            };
            let burn = time(AttentionPath::Burn);
            let ours = time(AttentionPath::Blip3);
            let mib = |bytes: usize| bytes as f64 / (1024.0 * 1024.0);
            let scores = s.b * s.h * s.sq * s.sk * 4;
            println!(
                "| {} | {dtype:?} | {burn:.2} | {ours:.2} | {:.2} | {:.1} | {:.3} |",
                s.name,
                burn / ours,
                mib(4 * scores),
                mib(s.b * s.h * s.sq * 12)
            );
        }
    }
}

/// Decoding's weight products, one token (`M = 1`): Burn's matmul against the blip3 GEMV kernel,
/// with the weight-read bandwidth each reaches (`K·N·bytes / time`; the physical limit is the
/// card's memory bandwidth), and PyTorch's `x @ w` on `BLIP3_BENCH_TORCH_DEVICE` (default `cuda`
/// when the bench device is cuda, else `cpu`) through `BLIP3_PYTHON` (default `python3`) when
/// torch is there. bf16 where the device has it.
fn gemv_section(device: &Device, dtypes: &[DType], reps: usize, full: bool, filter: &str) {
    // Phi-3 mini's decoder products (K, N); the small scale quarters the big ones for lavapipe.
    let shrink = |x: usize| if full { x } else { x / 4 };
    let shapes: Vec<(&str, usize, usize)> = [
        ("phi-3 qkv_proj", 3072, 9216),
        ("phi-3 o_proj", 3072, 3072),
        ("phi-3 gate_up_proj", 3072, shrink(16384)),
        ("phi-3 down_proj", shrink(8192), 3072),
        ("phi-3 lm_head (transposed table)", 3072, shrink(32064)),
    ]
    .into_iter()
    .filter(|(name, _, _)| name.contains(filter) || "gemv".contains(filter))
    .collect();
    let mut dtypes = dtypes.to_vec();
    if device.supports_dtype(DType::BF16) && !dtypes.contains(&DType::BF16) {
        dtypes.push(DType::BF16);
    }
    let short = |d: DType| match d {
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        _ => "f32",
    };
    let layout = |name: &str| {
        if name.contains("transposed") {
            "transposed"
        } else {
            "rows"
        }
    };
    let specs: Vec<String> = shapes
        .iter()
        .flat_map(|&(name, k, n)| {
            dtypes
                .iter()
                .map(move |&d| format!("{k},{n},{},{}", short(d), layout(name)))
        })
        .collect();
    let torch = torch_gemv_times(&specs, reps.max(5));
    println!();
    println!(
        "| decode product M=1 | K×N | dtype | burn ms | blip3 ms | torch ms | burn/blip3 | \
         torch/blip3 | blip3 GB/s | torch GB/s |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for (name, k, n) in shapes {
        for &dtype in &dtypes {
            let x = Tensor::<2>::random([1, k], Distribution::Normal(0.0, 1.0), device).cast(dtype);
            let w = weight(k, n, layout(name) == "transposed", dtype, device);
            let time = |f: &dyn Fn() -> Tensor<2>| median_product_ms(device, reps, f);
            let burn = time(&|| x.clone().matmul(w.clone()));
            let ours = time(&|| gemv(x.clone(), w.clone()));
            let spec = format!("{k},{n},{},{}", short(dtype), layout(name));
            let theirs = torch.iter().find(|(s, _)| *s == spec).map(|(_, ms)| *ms);
            let gbps = |ms: f64| (k * n * dtype.size()) as f64 / ms / 1e6;
            let or_dash = |v: Option<f64>, digits: usize| {
                v.map_or("-".to_string(), |v| format!("{v:.digits$}"))
            };
            println!(
                "| {name} | {k}×{n} | {dtype:?} | {burn:.3} | {ours:.3} | {} | {:.2} | {} | {:.0} | {} |",
                or_dash(theirs, 3),
                burn / ours,
                or_dash(theirs.map(|t| t / ours), 2),
                gbps(ours),
                or_dash(theirs.map(gbps), 0),
            );
        }
    }
}

/// Prefill and training products (many rows): Burn's matmul against the vendor GEMM (cuBLAS
/// through [`vendor_matmul`]) and PyTorch's `x @ w` on the same card, with the TFLOP/s each
/// reaches (the card's dense peak is the physical limit). CUDA devices only: elsewhere the vendor
/// path is Burn's matmul itself.
fn gemm_section(device: &Device, reps: usize, full: bool, filter: &str) {
    if !"gemm".contains(filter) {
        return;
    }
    if !is_cuda_device(device) {
        println!("\ngemm section: CUDA devices only (the vendor GEMM is cuBLAS)");
        return;
    }
    if !vendor_available() {
        println!("\ngemm section: no cuBLAS library found (libcublas.so* on the library path)");
        return;
    }
    // (name, M, K, N): Phi-3 mini on 704 tokens (a 2×2 any-res image and text), and SigLIP's MLP
    // on five views of 729 patches; the small scale shortens M.
    let rows = |m: usize| if full { m } else { m / 4 };
    let shapes = [
        ("phi-3 qkv_proj", rows(704), 3072, 9216, false),
        ("phi-3 gate_up_proj", rows(704), 3072, 16384, false),
        ("phi-3 down_proj", rows(704), 8192, 3072, false),
        (
            "phi-3 lm_head (transposed table)",
            rows(704),
            3072,
            32064,
            true,
        ),
        ("siglip fc1", rows(3645), 1152, 4304, false),
    ];
    let dtypes = [DType::F32, DType::BF16];
    let short = |d: DType| if d == DType::BF16 { "bf16" } else { "f32" };
    let spec = |m: usize, k: usize, n: usize, d: DType, t: bool| {
        let layout = if t { "transposed" } else { "rows" };
        format!("{k},{n},{},{layout},{m}", short(d))
    };
    let specs: Vec<String> = shapes
        .iter()
        .flat_map(|&(_, m, k, n, t)| dtypes.iter().map(move |&d| spec(m, k, n, d, t)))
        .collect();
    let torch = torch_gemv_times(&specs, reps.max(5));
    println!();
    println!(
        "| prefill product | M×K×N | dtype | burn ms | cublas ms | torch ms | burn/cublas | \
         torch/cublas | cublas TFLOP/s | torch TFLOP/s |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for (name, m, k, n, transposed) in shapes {
        for dtype in dtypes {
            let x = Tensor::<2>::random([m, k], Distribution::Normal(0.0, 1.0), device).cast(dtype);
            let w = weight(k, n, transposed, dtype, device);
            let time = |f: &dyn Fn() -> Tensor<2>| median_product_ms(device, reps, f);
            let burn = time(&|| x.clone().matmul(w.clone()));
            let ours = time(&|| vendor_matmul(x.clone(), w.clone()));
            let key = spec(m, k, n, dtype, transposed);
            let theirs = torch.iter().find(|(s, _)| *s == key).map(|(_, ms)| *ms);
            let tflops = |ms: f64| (2 * m * k * n) as f64 / ms / 1e9;
            let or_dash = |v: Option<f64>, digits: usize| {
                v.map_or("-".to_string(), |v| format!("{v:.digits$}"))
            };
            println!(
                "| {name} | {m}×{k}×{n} | {dtype:?} | {burn:.3} | {ours:.3} | {} | {:.2} | {} | {:.1} | {} |",
                or_dash(theirs, 3),
                burn / ours,
                or_dash(theirs.map(|t| t / ours), 2),
                tflops(ours),
                or_dash(theirs.map(tflops), 1),
            );
        }
    }
}

/// A random `[K, N]` weight in `dtype`, stored as its `[N, K]` transpose when `transposed` (the
/// LM head's layout).
fn weight(k: usize, n: usize, transposed: bool, dtype: DType, device: &Device) -> Tensor<2> {
    let init = Distribution::Normal(0.0, 0.02);
    if transposed {
        Tensor::<2>::random([n, k], init, device)
            .cast(dtype)
            .transpose()
    } else {
        Tensor::<2>::random([k, n], init, device).cast(dtype)
    }
}

/// Median milliseconds of `f` over `max(reps, 5)` calls after two warm-up calls, each call
/// between device syncs.
fn median_product_ms(device: &Device, reps: usize, f: &dyn Fn() -> Tensor<2>) -> f64 {
    for _ in 0..2 {
        let _ = f().slice([0..1, 0..1]).into_data();
    }
    let mut times = Vec::new();
    for _ in 0..reps.max(5) {
        let _ = device.sync();
        let t0 = Instant::now();
        let out = f();
        let _ = device.sync();
        times.push(t0.elapsed().as_secs_f64() * 1e3);
        drop(out);
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// PyTorch's median time per spec (`K,N,DTYPE,LAYOUT[,M]`), from `torch_gemv.py`; empty (with the
/// reason printed) when Python or torch is missing.
fn torch_gemv_times(specs: &[String], reps: usize) -> Vec<(String, f64)> {
    if specs.is_empty() {
        return Vec::new();
    }
    let python = std::env::var("BLIP3_PYTHON").unwrap_or_else(|_| "python3".into());
    let bench_device = std::env::var("BLIP3_BENCH_DEVICE").unwrap_or_default();
    let torch_device = std::env::var("BLIP3_BENCH_TORCH_DEVICE").unwrap_or_else(|_| {
        if bench_device == "cuda" {
            "cuda"
        } else {
            "cpu"
        }
        .into()
    });
    let script = blip3_fixtures::checkout().join("shaders/benches/torch_gemv.py");
    let out = std::process::Command::new(&python)
        .arg(script)
        .arg(&torch_device)
        .arg(reps.to_string())
        .args(specs)
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| {
                let (spec, ms) = l.split_once(' ')?;
                Some((spec.to_string(), ms.trim().parse::<f64>().ok()?))
            })
            .collect(),
        Ok(o) => {
            eprintln!(
                "torch GEMV reference skipped ({python}): {}",
                String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            );
            Vec::new()
        }
        Err(e) => {
            eprintln!("torch GEMV reference skipped: cannot run {python}: {e}");
            Vec::new()
        }
    }
}
