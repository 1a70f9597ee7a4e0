//! Parity of the blip3 attention path with Burn's attention op and with a float64 host
//! reference, on flex and (where an adapter exists, lavapipe included) wgpu, for the shapes the
//! model produces; gradient parity under autodiff and against finite differences.

mod common;

use blip3_shaders::attention::{
    AttentionPath, MAX_BACKWARD_KERNEL_HEAD_DIM, MAX_HOST_ROWS, MIN_KERNEL_ROWS, NO_KEY_LSE,
    attention_backward, attention_with, backward_kernel_launches, burn_attention, composed_forward,
    flash_attention_with_lse, host_rows_apply, is_cube_device, kernel_applies, kernel_supports,
    saved_statistics_backward_launches, tensor_core_backward_launches, tensor_core_launches,
};
use burn::prelude::*;
use burn::tensor::DType;
use common::{Rng, devices, doubles, floats, gpu_devices, max_abs_diff, wgpu_device};

/// Which mask a case uses (host-side description; `true` = masked out).
#[derive(Clone, Debug)]
enum MaskKind {
    None,
    /// Resampler: per batch row, the number of valid media tokens; the latents (the last
    /// `sq` keys) are always valid. Shape `[B, 1, Sq, Sk]`.
    KeyPadding(Vec<usize>),
    /// Phi-3 with left padding: per batch row, the number of pad keys at the start, combined
    /// with bottom-right causality. Shape `[B, 1, Sq, Sk]`. Query rows that only see padding
    /// are fully masked.
    LeftPadding(Vec<usize>),
    /// Phi-3 sliding window: causal and at most `window` keys back. Shape `[B, 1, Sq, Sk]`.
    SlidingWindow(usize),
    /// Random per-head mask with probability `p` of masking, and every `full`-th row fully
    /// masked. Shape `[B, H, Sq, Sk]`.
    Random {
        p: f32,
        full: usize,
    },
}

#[derive(Clone, Debug)]
struct Case {
    name: &'static str,
    b: usize,
    h: usize,
    sq: usize,
    sk: usize,
    dh: usize,
    /// Value head size (`dh` unless a case says otherwise).
    dv: usize,
    mask: MaskKind,
    causal: bool,
    /// Feed q, k, v as `[B, S, H, D]` data viewed through `swap_dims(1, 2)` (as `split_heads`
    /// produces them), instead of contiguous `[B, H, S, D]`.
    strided: bool,
}

/// Host data of one case.
struct Inputs {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Mask values and its head count (1 or H).
    mask: Option<(Vec<bool>, usize)>,
}

impl Case {
    fn inputs(&self, seed: u64) -> Inputs {
        let mut rng = Rng::new(seed);
        let (b, h, sq, sk, dh) = (self.b, self.h, self.sq, self.sk, self.dh);
        let q = rng.vec(b * h * sq * dh, 2.0);
        let k = rng.vec(b * h * sk * dh, 2.0);
        let v = rng.vec(b * h * sk * self.dv, 1.0);
        let offset = sk as i64 - sq as i64;
        let shared = |f: &dyn Fn(usize, usize, usize) -> bool| {
            let mut m = Vec::with_capacity(b * sq * sk);
            for bi in 0..b {
                for i in 0..sq {
                    for j in 0..sk {
                        m.push(f(bi, i, j));
                    }
                }
            }
            Some((m, 1))
        };
        let mask = match &self.mask {
            MaskKind::None => None,
            MaskKind::KeyPadding(valid) => {
                let media = sk - sq;
                shared(&|bi, _, j| j < media && j >= valid[bi])
            }
            MaskKind::LeftPadding(pads) => {
                shared(&|bi, i, j| j < pads[bi] || j as i64 > i as i64 + offset)
            }
            MaskKind::SlidingWindow(window) => shared(&|_, i, j| {
                let i = i as i64 + offset;
                j as i64 > i || i - j as i64 >= *window as i64
            }),
            MaskKind::Random { p, full } => {
                let mut m = Vec::with_capacity(b * h * sq * sk);
                for row in 0..b * h * sq {
                    let all = *full > 0 && row % full == full - 1;
                    for _ in 0..sk {
                        m.push(all || (rng.uniform() + 1.0) / 2.0 < *p);
                    }
                }
                Some((m, h))
            }
        };
        Inputs { q, k, v, mask }
    }

    /// Float64 scaled scores of query row `i` of head `(bi, hi)`, `-inf` where the key is
    /// hidden (mask or causality).
    fn scores(&self, x: &Inputs, bi: usize, hi: usize, i: usize) -> Vec<f64> {
        let (h, sq, sk, dh) = (self.h, self.sq, self.sk, self.dh);
        let scale = 1.0 / (dh as f64).sqrt();
        let bh = bi * h + hi;
        let qi = &x.q[(bh * sq + i) * dh..(bh * sq + i + 1) * dh];
        let mut scores = vec![f64::NEG_INFINITY; sk];
        for (j, s) in scores.iter_mut().enumerate() {
            let masked = match &x.mask {
                Some((m, mh)) => {
                    let hm = if *mh == 1 { 0 } else { hi };
                    m[((bi * mh + hm) * sq + i) * sk + j]
                }
                None => false,
            } || (self.causal && j + sq > i + sk);
            if !masked {
                let kj = &x.k[(bh * sk + j) * dh..(bh * sk + j + 1) * dh];
                *s = qi
                    .iter()
                    .zip(kj)
                    .map(|(a, b)| f64::from(*a) * f64::from(*b))
                    .sum::<f64>()
                    * scale;
            }
        }
        scores
    }

    /// Float64 attention probabilities of query row `i` of head `(bi, hi)`, or `None` when the
    /// row sees no key.
    fn probabilities(&self, x: &Inputs, bi: usize, hi: usize, i: usize) -> Option<Vec<f64>> {
        let scores = self.scores(x, bi, hi, i);
        let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        if max == f64::NEG_INFINITY {
            return None;
        }
        let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let total: f64 = weights.iter().sum();
        Some(weights.into_iter().map(|w| w / total).collect())
    }

    /// Float64 log-sum-exp of each query row's visible scores (`[B, H, Sq]`), `None` for a row
    /// that sees no key.
    fn reference_lse(&self, x: &Inputs) -> Vec<Option<f64>> {
        let mut lse = Vec::with_capacity(self.b * self.h * self.sq);
        for bi in 0..self.b {
            for hi in 0..self.h {
                for i in 0..self.sq {
                    let scores = self.scores(x, bi, hi, i);
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    lse.push(
                        (max > f64::NEG_INFINITY).then(|| {
                            max + scores.iter().map(|s| (s - max).exp()).sum::<f64>().ln()
                        }),
                    );
                }
            }
        }
        lse
    }

    /// Float64 softmax attention on the host with the documented semantics.
    fn reference(&self, x: &Inputs) -> Vec<f32> {
        let (b, h, sq, sk, dv) = (self.b, self.h, self.sq, self.sk, self.dv);
        let mut out = vec![0f32; b * h * sq * dv];
        for bi in 0..b {
            for hi in 0..h {
                let bh = bi * h + hi;
                for i in 0..sq {
                    // A fully masked row stays zeros.
                    let Some(p) = self.probabilities(x, bi, hi, i) else {
                        continue;
                    };
                    for d in 0..dv {
                        let acc: f64 = (0..sk)
                            .map(|j| p[j] * f64::from(x.v[(bh * sk + j) * dv + d]))
                            .sum();
                        out[(bh * sq + i) * dv + d] = acc as f32;
                    }
                }
            }
        }
        out
    }

    /// Float64 gradients `[dq, dk, dv]` on the host given the output gradient `grad_out`
    /// (`[B, H, Sq, Dv]`): `dV = Pᵀ·dO`, `dS = P ∘ (dO·Vᵀ − δ)` with `δ = rowsum(P ∘ dO·Vᵀ)`,
    /// `dQ = scale·dS·K`, `dK = scale·dSᵀ·Q`.
    fn reference_backward(&self, x: &Inputs, grad_out: &[f32]) -> [Vec<f64>; 3] {
        let (b, h, sq, sk, dh, dv) = (self.b, self.h, self.sq, self.sk, self.dh, self.dv);
        let scale = 1.0 / (dh as f64).sqrt();
        let mut dq = vec![0f64; b * h * sq * dh];
        let mut dk = vec![0f64; b * h * sk * dh];
        let mut dval = vec![0f64; b * h * sk * dv];
        for bi in 0..b {
            for hi in 0..h {
                let bh = bi * h + hi;
                for i in 0..sq {
                    let Some(p) = self.probabilities(x, bi, hi, i) else {
                        continue;
                    };
                    let go = &grad_out[(bh * sq + i) * dv..(bh * sq + i + 1) * dv];
                    let dp: Vec<f64> = (0..sk)
                        .map(|j| {
                            (0..dv)
                                .map(|d| f64::from(go[d]) * f64::from(x.v[(bh * sk + j) * dv + d]))
                                .sum()
                        })
                        .collect();
                    let delta: f64 = p.iter().zip(&dp).map(|(p, dp)| p * dp).sum();
                    for j in 0..sk {
                        let ds = p[j] * (dp[j] - delta) * scale;
                        for d in 0..dv {
                            dval[(bh * sk + j) * dv + d] += p[j] * f64::from(go[d]);
                        }
                        for d in 0..dh {
                            dq[(bh * sq + i) * dh + d] +=
                                ds * f64::from(x.k[(bh * sk + j) * dh + d]);
                            dk[(bh * sk + j) * dh + d] +=
                                ds * f64::from(x.q[(bh * sq + i) * dh + d]);
                        }
                    }
                }
            }
        }
        [dq, dk, dval]
    }

    /// Device tensors for the inputs (cast to `dtype`).
    fn tensors(
        &self,
        x: &Inputs,
        device: &Device,
        dtype: DType,
    ) -> (Tensor<4>, Tensor<4>, Tensor<4>, Option<Tensor<4, Bool>>) {
        let make = |data: &[f32], s: usize, dh: usize| -> Tensor<4> {
            let (b, h) = (self.b, self.h);
            let t = if self.strided {
                let mut bshd = vec![0f32; data.len()];
                for bi in 0..b {
                    for hi in 0..h {
                        for si in 0..s {
                            for d in 0..dh {
                                bshd[((bi * s + si) * h + hi) * dh + d] =
                                    data[((bi * h + hi) * s + si) * dh + d];
                            }
                        }
                    }
                }
                Tensor::<4>::from_data(TensorData::new(bshd, [b, s, h, dh]), device).swap_dims(1, 2)
            } else {
                Tensor::<4>::from_data(TensorData::new(data.to_vec(), [b, h, s, dh]), device)
            };
            t.cast(dtype)
        };
        let mask = x.mask.as_ref().map(|(m, mh)| {
            Tensor::<4, Bool>::from_data(
                TensorData::new(m.clone(), [self.b, *mh, self.sq, self.sk]),
                device,
            )
        });
        (
            make(&x.q, self.sq, self.dh),
            make(&x.k, self.sk, self.dh),
            make(&x.v, self.sk, self.dv),
            mask,
        )
    }
}

/// Runs every case on every device in f32 (and f16 on wgpu): blip3 path vs the float64
/// reference and vs Burn's op.
/// Held by the tests that run half precision on GPU devices, so that the tensor-core launch
/// counter read by [`tensor_core_kernel_matches_reference`] only counts that test's launches.
static HALF_PRECISION: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn check_cases(cases: &[Case]) {
    let _serial = HALF_PRECISION.lock().unwrap_or_else(|e| e.into_inner());
    for (device_name, device) in devices() {
        let mut dtypes = vec![(DType::F32, 2e-5f32)];
        if device_name != "flex" && device.supports_dtype(DType::F16) {
            dtypes.push((DType::F16, 2e-2));
        }
        if device_name != "flex" && device.supports_dtype(DType::BF16) {
            dtypes.push((DType::BF16, 6e-2));
        }
        for (seed, case) in cases.iter().enumerate() {
            let x = case.inputs(seed as u64 + 1);
            let want = case.reference(&x);
            for &(dtype, tol) in &dtypes {
                let (q, k, v, mask) = case.tensors(&x, &device, dtype);
                if device_name != "flex" {
                    assert!(
                        kernel_supports(&q, &k, &v),
                        "{}: the kernel should run these tensors on {device_name}",
                        case.name
                    );
                }
                let start = std::time::Instant::now();
                let ours = floats(attention_with(
                    AttentionPath::Blip3,
                    q.clone(),
                    k.clone(),
                    v.clone(),
                    mask.clone(),
                    case.causal,
                ));
                let took = start.elapsed();
                let err_ref = max_abs_diff(&ours, &want);
                eprintln!(
                    "{device_name} {dtype:?} {}: |blip3-ref| {err_ref:.2e} ({took:.1?})",
                    case.name
                );
                assert!(
                    err_ref <= tol,
                    "{device_name} {dtype:?} {}: blip3 vs reference {err_ref}",
                    case.name
                );
                // Burn's op in f32 (in f16 both paths are compared with the f64 reference; on
                // lavapipe each new shape costs Burn seconds of autotuning).
                if dtype == DType::F32 {
                    let burn = floats(burn_attention(q, k, v, mask, case.causal));
                    let err_burn = max_abs_diff(&ours, &burn);
                    eprintln!(
                        "{device_name} {dtype:?} {}: |blip3-burn| {err_burn:.2e}",
                        case.name
                    );
                    assert!(
                        err_burn <= 2.0 * tol,
                        "{device_name} {dtype:?} {}: blip3 vs burn {err_burn}",
                        case.name
                    );
                }
            }
        }
    }
}

fn case(name: &'static str, b: usize, h: usize, sq: usize, sk: usize, dh: usize) -> Case {
    Case {
        name,
        b,
        h,
        sq,
        sk,
        dh,
        dv: dh,
        mask: MaskKind::None,
        causal: false,
        strided: false,
    }
}

#[test]
fn no_mask_matches_reference() {
    check_cases(&[
        // SigLIP-like self-attention (Dh 72), several 64-row blocks and key tiles.
        Case {
            strided: true,
            ..case("siglip dh72", 2, 3, 130, 130, 72)
        },
        case("dh64", 1, 2, 37, 53, 64),
        case("dh16 single key", 2, 2, 5, 1, 16),
        case("dh96 cross", 1, 2, 8, 200, 96),
    ]);
}

#[test]
fn large_and_unequal_head_dims_match_reference() {
    // Beyond the model's shapes: head sizes that force smaller tiles, and Dv != Dh.
    check_cases(&[
        Case {
            mask: MaskKind::Random { p: 0.3, full: 5 },
            ..case("dh200", 1, 2, 40, 45, 200)
        },
        Case {
            causal: true,
            ..case("dh256", 1, 1, 20, 33, 256)
        },
        case("decode dh256", 1, 2, 1, 50, 256),
        Case {
            dv: 40,
            causal: true,
            ..case("dh16 dv40", 2, 2, 19, 19, 16)
        },
        Case {
            dv: 12,
            ..case("decode dh64 dv12", 1, 2, 2, 70, 64)
        },
    ]);
}

#[test]
fn key_padding_mask_matches_reference() {
    // Resampler: queries are the latents, keys are media tokens + latents, media padded per row.
    check_cases(&[
        Case {
            mask: MaskKind::KeyPadding(vec![40, 17, 0]),
            strided: true,
            ..case("resampler dh96", 3, 2, 16, 56, 96)
        },
        Case {
            mask: MaskKind::KeyPadding(vec![81, 5]),
            ..case("resampler dh72", 2, 3, 64, 145, 72)
        },
    ]);
}

#[test]
fn causal_matches_reference() {
    check_cases(&[
        Case {
            causal: true,
            strided: true,
            ..case("causal square dh96", 2, 2, 70, 70, 96)
        },
        // Chunked prefill against a cache: bottom-right aligned.
        Case {
            causal: true,
            ..case("causal sq<sk dh16", 1, 3, 5, 37, 16)
        },
        Case {
            causal: true,
            ..case("causal long dh64", 1, 1, 150, 150, 64)
        },
        // Phi-3 prefill length scale: many query blocks and key tiles.
        Case {
            mask: MaskKind::LeftPadding(vec![70]),
            causal: true,
            ..case("prefill 1100 dh96", 1, 1, 1100, 1100, 96)
        },
    ]);
}

#[test]
fn explicit_masks_match_reference() {
    check_cases(&[
        // Left padding: the first query rows of padded batch rows see nothing (zeros).
        Case {
            mask: MaskKind::LeftPadding(vec![0, 9]),
            ..case("left padding dh96", 2, 2, 33, 33, 96)
        },
        Case {
            mask: MaskKind::LeftPadding(vec![3, 0]),
            causal: true,
            ..case("left padding + causal dh16", 2, 1, 12, 20, 16)
        },
        Case {
            mask: MaskKind::SlidingWindow(7),
            ..case("sliding window dh64", 1, 2, 40, 40, 64)
        },
    ]);
}

#[test]
fn decode_with_long_cache_matches_reference() {
    check_cases(&[
        Case {
            mask: MaskKind::LeftPadding(vec![0, 37]),
            strided: true,
            ..case("decode masked dh96", 2, 4, 1, 300, 96)
        },
        Case {
            causal: true,
            ..case("decode causal dh96", 1, 2, 1, 257, 96)
        },
        case("decode dh72", 1, 2, 1, 129, 72),
        Case {
            mask: MaskKind::LeftPadding(vec![123]),
            ..case("decode 3000 dh96", 1, 2, 1, 3000, 96)
        },
    ]);
}

/// Decoding on Flex (`AttentionPath::Auto`) composes attention of tensor ops that read the KV
/// cache's buffer views in place: keys and values here are the filled prefix of larger buffers,
/// as `blip3_model::kv_cache` hands them over. Checked against the float64 reference on every
/// device (the composed path is backend-independent), with the routing rule.
#[test]
fn decoding_reads_cache_views() {
    let cases = [
        Case {
            mask: MaskKind::LeftPadding(vec![0, 37]),
            ..case("view decode masked dh96", 2, 4, 1, 300, 96)
        },
        Case {
            causal: true,
            ..case("view 3 rows causal dh64", 1, 2, 3, 129, 64)
        },
        Case {
            mask: MaskKind::Random { p: 0.4, full: 3 },
            ..case("view 8 rows, fully masked rows dh32", 2, 2, 8, 50, 32)
        },
    ];
    let view = |t: Tensor<4>| {
        let [b, h, s, d] = t.dims();
        let buffer = Tensor::<4>::ones([b, h, s + 37, d], (&t.device(), t.dtype()));
        buffer
            .slice_assign([0..b, 0..h, 0..s, 0..d], t)
            .narrow(2, 0, s)
    };
    for (device_name, device) in devices() {
        for (seed, c) in cases.iter().enumerate() {
            let x = c.inputs(700 + seed as u64);
            let want = c.reference(&x);
            let (q, k, v, mask) = c.tensors(&x, &device, DType::F32);
            let (k, v) = (view(k), view(v));
            assert_eq!(
                host_rows_apply(&q),
                device_name == "flex",
                "{device_name} {}: decoding composes on Flex only",
                c.name
            );
            for (path, got) in [
                (
                    "composed",
                    composed_forward(q.clone(), k.clone(), v.clone(), mask.clone(), c.causal),
                ),
                (
                    "auto",
                    attention_with(AttentionPath::Auto, q, k, v, mask, c.causal),
                ),
            ] {
                let err = max_abs_diff(&floats(got), &want);
                eprintln!("{device_name} {} {path}: |ours-ref| {err:.2e}", c.name);
                assert!(
                    err <= 2e-5,
                    "{device_name} {} {path}: differs by {err}",
                    c.name
                );
            }
        }
    }
    let flex = Device::flex();
    let rows = |n: usize, device: &Device| Tensor::<4>::zeros([1, 2, n, 8], device);
    assert!(host_rows_apply(&rows(MAX_HOST_ROWS, &flex)));
    assert!(!host_rows_apply(&rows(MAX_HOST_ROWS + 1, &flex)), "prefill");
    assert!(
        !host_rows_apply(&rows(1, &flex.clone().autodiff())),
        "training keeps Burn's op"
    );
}

#[test]
fn fully_masked_rows_give_zeros() {
    check_cases(&[
        Case {
            mask: MaskKind::Random { p: 0.5, full: 3 },
            ..case("random mask dh72", 2, 2, 9, 23, 72)
        },
        Case {
            mask: MaskKind::Random { p: 0.9, full: 2 },
            ..case("sparse mask dh16", 1, 3, 1, 80, 16)
        },
    ]);
    // And the reference agrees that such rows are zero, so the check above is not vacuous.
    let c = Case {
        mask: MaskKind::Random { p: 0.5, full: 3 },
        ..case("probe", 1, 1, 3, 4, 8)
    };
    let x = c.inputs(7);
    let want = c.reference(&x);
    assert!(want[2 * 8..3 * 8].iter().all(|&v| v == 0.0));
    assert!(want[..8].iter().any(|&v| v != 0.0));
}

/// The three gradients of `sum(attention(q, k, v) * w)` along `path` on `device` (autodiff),
/// with the weights `w` drawn from a fixed seed.
fn gradients(
    path: AttentionPath,
    c: &Case,
    x: &Inputs,
    device: &Device,
    dtype: DType,
) -> [Vec<f64>; 3] {
    let w = Rng::new(99).vec(c.b * c.h * c.sq * c.dv, 1.0);
    weighted_gradients(path, c, x, device, dtype, &w)
}

/// The three gradients of `sum(attention(q, k, v) * w)` along `path` on `device` (autodiff):
/// the backward given the output gradient `w` (`[B, H, Sq, Dv]`).
fn weighted_gradients(
    path: AttentionPath,
    c: &Case,
    x: &Inputs,
    device: &Device,
    dtype: DType,
    w: &[f32],
) -> [Vec<f64>; 3] {
    let ad = device.clone().autodiff();
    let (q, k, v, mask) = c.tensors(x, &ad, dtype);
    let (q, k, v) = (q.require_grad(), k.require_grad(), v.require_grad());
    let w = Tensor::<4>::from_data(TensorData::new(w.to_vec(), [c.b, c.h, c.sq, c.dv]), &ad)
        .cast(dtype);
    let out = attention_with(path, q.clone(), k.clone(), v.clone(), mask, c.causal);
    let grads = (out * w).sum().backward();
    [q, k, v].map(|t| doubles(t.grad(&grads).expect("gradient")))
}

fn max_diff64(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let d = (x - y).abs();
            if d.is_nan() { f64::INFINITY } else { d }
        })
        .fold(0.0, f64::max)
}

/// Asserts that gradients `got` (of q, k, v) are within `tol` of the largest reference gradient
/// of `want`, and that the reference is not all zeros (which would make the check vacuous).
fn check_gradients(label: &str, got: &[Vec<f64>; 3], want: &[Vec<f64>; 3], tol: f64) {
    for (name, (g, w)) in ["q", "k", "v"].iter().zip(got.iter().zip(want)) {
        let scale = w.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        let err = max_diff64(g, w);
        eprintln!("{label}: d{name} |blip3-ref| {err:.2e} (max |ref| {scale:.1})");
        assert!(
            err <= tol * scale,
            "{label}: d{name} differs from the reference by {err}"
        );
        assert!(
            w.iter().any(|v| *v != 0.0),
            "{label}: reference d{name} is all zeros"
        );
    }
}

/// Held by the tests that run the backward kernels, so that `backward_kernel_launches` (one
/// counter per process) counts only the checking test's launches.
static BACKWARD_KERNELS: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn gradients_match_burn_autodiff() {
    let _serial = BACKWARD_KERNELS.lock().unwrap_or_else(|e| e.into_inner());
    let cases = [
        Case {
            mask: MaskKind::Random { p: 0.4, full: 4 },
            ..case("grad random mask dh16", 2, 2, 7, 11, 16)
        },
        Case {
            causal: true,
            strided: true,
            ..case("grad causal dh72", 1, 2, 20, 20, 72)
        },
        Case {
            mask: MaskKind::KeyPadding(vec![10, 3]),
            ..case("grad resampler dh96", 2, 1, 6, 22, 96)
        },
        Case {
            mask: MaskKind::LeftPadding(vec![2]),
            ..case("grad decode dh64", 1, 2, 1, 30, 64)
        },
    ];
    for (device_name, device) in devices() {
        for (seed, c) in cases.iter().enumerate() {
            let x = c.inputs(100 + seed as u64);
            let launches = backward_kernel_launches();
            let saved = saved_statistics_backward_launches();
            let ours = gradients(AttentionPath::Blip3, c, &x, &device, DType::F32);
            assert_eq!(
                backward_kernel_launches() > launches,
                is_cube_device(&device),
                "{device_name} {}: the autodiff backward should run the kernels exactly on CubeCL",
                c.name
            );
            assert_eq!(
                saved_statistics_backward_launches() - saved,
                backward_kernel_launches() - launches,
                "{device_name} {}: the autodiff backward reads the forward's statistics",
                c.name
            );
            let burn = gradients(AttentionPath::Burn, c, &x, &device, DType::F32);
            for (name, (a, b)) in ["q", "k", "v"].iter().zip(ours.iter().zip(&burn)) {
                let err = max_diff64(a, b);
                eprintln!("{device_name} {}: d{name} |blip3-burn| {err:.2e}", c.name);
                assert!(
                    err <= 1e-4,
                    "{device_name} {}: d{name} differs by {err}",
                    c.name
                );
                assert!(
                    a.iter().any(|g| *g != 0.0),
                    "{device_name} {}: d{name} is all zeros",
                    c.name
                );
            }
        }
    }
}

#[test]
fn gradients_match_finite_differences() {
    // Float64 on flex: central differences are accurate to ~1e-9 here.
    let device = Device::flex();
    let c = Case {
        mask: MaskKind::Random { p: 0.3, full: 3 },
        causal: true,
        ..case("fd", 1, 2, 3, 5, 4)
    };
    let x = c.inputs(5);
    let analytic = gradients(AttentionPath::Blip3, &c, &x, &device, DType::F64);
    let w = Rng::new(99).vec(c.b * c.h * c.sq * c.dv, 1.0);
    let loss = |q: &[f64], k: &[f64], v: &[f64]| -> f64 {
        let t = |data: &[f64], s: usize| {
            Tensor::<4>::from_data(
                TensorData::new(data.to_vec(), [c.b, c.h, s, c.dh]),
                (&device, DType::F64),
            )
        };
        let (q, k, v) = (t(q, c.sq), t(k, c.sk), t(v, c.sk));
        assert_eq!(q.dtype(), DType::F64);
        let mask = c.tensors(&x, &device, DType::F64).3;
        let out = attention_with(AttentionPath::Blip3, q, k, v, mask, c.causal);
        doubles(out)
            .iter()
            .zip(&w)
            .map(|(o, w)| o * f64::from(*w))
            .sum()
    };
    let base: [Vec<f64>; 3] = [&x.q, &x.k, &x.v].map(|d| d.iter().map(|&v| f64::from(v)).collect());
    let eps = 1e-6;
    for (which, grad) in analytic.iter().enumerate() {
        for i in 0..base[which].len() {
            let mut plus = base.clone();
            let mut minus = base.clone();
            plus[which][i] += eps;
            minus[which][i] -= eps;
            let fd = (loss(&plus[0], &plus[1], &plus[2]) - loss(&minus[0], &minus[1], &minus[2]))
                / (2.0 * eps);
            assert!(
                (fd - grad[i]).abs() <= 1e-6 * (1.0 + fd.abs()),
                "grad {which}[{i}]: analytic {} vs finite difference {fd}",
                grad[i]
            );
        }
    }
    assert!(analytic.iter().all(|g| g.iter().any(|v| *v != 0.0)));
}

/// Backward cases: several cubes and tiles in both directions, partial ones, every mask kind,
/// fully masked rows, causal with `Sq < Sk` and `Sq > Sk`, `Dv ≠ Dh`, strided inputs, the
/// largest head the kernels take and one above it (the composed fallback).
fn backward_cases() -> Vec<Case> {
    vec![
        case("bwd multi-tile dh64", 2, 3, 150, 130, 64),
        Case {
            causal: true,
            strided: true,
            ..case("bwd causal prefill after cache dh96", 1, 2, 70, 100, 96)
        },
        Case {
            causal: true,
            ..case("bwd causal sq>sk dh32", 1, 2, 80, 50, 32)
        },
        Case {
            mask: MaskKind::SlidingWindow(7),
            ..case("bwd sliding window dh48", 1, 2, 90, 90, 48)
        },
        Case {
            mask: MaskKind::Random { p: 0.5, full: 5 },
            dv: 24,
            ..case("bwd random mask dv24 dh40", 2, 2, 33, 77, 40)
        },
        Case {
            mask: MaskKind::KeyPadding(vec![60, 13]),
            ..case("bwd resampler key padding dh32", 2, 4, 16, 76, 32)
        },
        Case {
            mask: MaskKind::LeftPadding(vec![0, 9]),
            ..case("bwd left padding prefill dh24", 2, 1, 40, 40, 24)
        },
        Case {
            mask: MaskKind::LeftPadding(vec![5]),
            ..case("bwd decode dh64", 1, 2, 1, 65, 64)
        },
        Case {
            dv: 96,
            ..case("bwd head 128 (kernel limit)", 1, 1, 20, 70, 128)
        },
        case("bwd head 256 (composed fallback)", 1, 1, 20, 70, 256),
    ]
}

#[test]
fn backward_matches_reference() {
    let _serial = BACKWARD_KERNELS.lock().unwrap_or_else(|e| e.into_inner());
    for (device_name, device) in devices() {
        for (seed, c) in backward_cases().iter().enumerate() {
            // f16 on a few cases (each dtype compiles its own kernels, slow on lavapipe).
            let mut dtypes = vec![(DType::F32, 1e-5f64)];
            if device_name != "flex" && seed % 3 == 0 && device.supports_dtype(DType::F16) {
                dtypes.push((DType::F16, 5e-3));
            }
            let x = c.inputs(300 + seed as u64);
            let go = Rng::new(400 + seed as u64).vec(c.b * c.h * c.sq * c.dv, 1.0);
            let want = c.reference_backward(&x, &go);
            for &(dtype, tol) in &dtypes {
                let (q, k, v, mask) = c.tensors(&x, &device, dtype);
                let grad_out = Tensor::<4>::from_data(
                    TensorData::new(go.clone(), [c.b, c.h, c.sq, c.dv]),
                    &device,
                )
                .cast(dtype);
                let cube = is_cube_device(&device);
                if cube {
                    assert!(kernel_supports(&q, &k, &v), "{}: kernel should run", c.name);
                }
                let launches = backward_kernel_launches();
                let got = attention_backward(q, k, v, mask, grad_out, c.causal);
                let got = got.map(doubles);
                if cube {
                    // Heads over the kernels' limit take the composed backward.
                    let kernel = c.dh.max(c.dv) <= MAX_BACKWARD_KERNEL_HEAD_DIM;
                    assert_eq!(
                        backward_kernel_launches() > launches,
                        kernel,
                        "{device_name} {}: backward kernels ran: expected {kernel}",
                        c.name
                    );
                }
                check_gradients(
                    &format!("{device_name} {dtype:?} {}", c.name),
                    &got,
                    &want,
                    tol,
                );
                // The same gradients through autodiff: the forward saves its output and
                // log-sum-exp, and the backward kernels read them instead of recomputing.
                let (launches, saved) = (
                    backward_kernel_launches(),
                    saved_statistics_backward_launches(),
                );
                let got = weighted_gradients(AttentionPath::Blip3, c, &x, &device, dtype, &go);
                if cube {
                    let kernel = c.dh.max(c.dv) <= MAX_BACKWARD_KERNEL_HEAD_DIM;
                    assert_eq!(
                        (
                            backward_kernel_launches() - launches,
                            saved_statistics_backward_launches() - saved
                        ),
                        if kernel { (1, 1) } else { (0, 0) },
                        "{device_name} {}: one backward from saved statistics",
                        c.name
                    );
                }
                check_gradients(
                    &format!("{device_name} {dtype:?} {} (autodiff, saved)", c.name),
                    &got,
                    &want,
                    tol,
                );
            }
        }
    }
}

/// The rows' log-sum-exp of the forward (`flash_attention_with_lse`: the kernels' statistics on
/// CubeCL devices, block, row and tensor-core kernels and the fallback; tensor ops on Flex)
/// against the float64 reference, with the output beside it; a row that sees no key gives
/// exactly `NO_KEY_LSE`.
#[test]
fn log_sum_exp_matches_reference() {
    let _serial = HALF_PRECISION.lock().unwrap_or_else(|e| e.into_inner());
    let cases = [
        case("lse block kernel, several tiles", 2, 3, 70, 90, 64),
        Case {
            mask: MaskKind::Random { p: 0.5, full: 4 },
            causal: true,
            strided: true,
            ..case("lse random mask, full rows, causal", 2, 2, 40, 40, 24)
        },
        Case {
            causal: true,
            ..case("lse causal sq<sk", 1, 2, 20, 57, 96)
        },
        Case {
            mask: MaskKind::LeftPadding(vec![3, 0]),
            ..case("lse decode rows, long cache", 2, 2, 1, 300, 64)
        },
        Case {
            mask: MaskKind::Random { p: 0.3, full: 3 },
            ..case("lse three rows, one fully masked", 2, 1, 3, 50, 32)
        },
        case("lse head 300 (Burn's op and tensor ops)", 1, 1, 9, 20, 300),
    ];
    for (device_name, device) in devices() {
        let mut dtypes = vec![(DType::F32, 1e-5f64, 1e-5f32)];
        if device_name != "flex" && device.supports_dtype(DType::F16) {
            dtypes.push((DType::F16, 2e-3, 2e-2));
        }
        for (seed, c) in cases.iter().enumerate() {
            let x = c.inputs(500 + seed as u64);
            let want = c.reference_lse(&x);
            let want_out = c.reference(&x);
            assert!(
                want.iter().any(Option::is_some),
                "{}: every row masked",
                c.name
            );
            for &(dtype, tol, out_tol) in &dtypes {
                let label = format!("{device_name} {dtype:?} {}", c.name);
                let (q, k, v, mask) = c.tensors(&x, &device, dtype);
                let (out, lse) = flash_attention_with_lse(q, k, v, mask, c.causal);
                assert_eq!(lse.dims(), [c.b, c.h, c.sq], "{label}: lse shape");
                assert_eq!(lse.dtype(), DType::F32, "{label}: lse dtype");
                let err = max_abs_diff(&floats(out), &want_out);
                assert!(err <= out_tol, "{label}: output differs by {err}");
                let got = doubles(lse);
                let mut worst = 0.0f64;
                for (row, (g, w)) in got.iter().zip(&want).enumerate() {
                    match w {
                        Some(w) => {
                            let err = (g - w).abs() / (1.0 + w.abs());
                            assert!(err <= tol, "{label}: row {row}: lse {g} vs {w}");
                            worst = worst.max(err);
                        }
                        None => {
                            assert_eq!(*g, f64::from(NO_KEY_LSE), "{label}: row {row} sees no key")
                        }
                    }
                }
                eprintln!("{label}: lse relative error {worst:.2e}");
            }
        }
    }
}

#[test]
fn auto_path_routes_by_device() {
    let flex = Device::flex();
    let t = Tensor::<4>::zeros([1, 1, 2, 8], &flex);
    assert!(!is_cube_device(&flex));
    assert!(!kernel_supports(&t, &t, &t), "flex keeps Burn's op");
    assert_eq!(AttentionPath::default(), AttentionPath::Auto);
    if let Some(wgpu) = wgpu_device() {
        assert!(is_cube_device(&wgpu));
        assert!(is_cube_device(&wgpu.clone().autodiff()));
        let t = Tensor::<4>::zeros([1, 1, 2, 8], &wgpu);
        assert!(kernel_supports(&t, &t, &t));
        assert!(
            !kernel_applies(&t, &t, &t),
            "2 query rows: Burn's op is faster"
        );
        let big = Tensor::<4>::zeros([1, 1, 2, 300], &wgpu);
        assert!(
            !kernel_supports(&big, &big, &big),
            "head dim 300 goes to Burn"
        );
        // SigLIP-like: enough query rows for the kernel; one row fewer goes to Burn.
        let q = Tensor::<4>::zeros([1, 8, MIN_KERNEL_ROWS / 8, 4], &wgpu);
        let kv = Tensor::<4>::zeros([1, 8, 16, 4], &wgpu);
        assert!(kernel_applies(&q, &kv, &kv));
        let q = Tensor::<4>::zeros([1, 1, MIN_KERNEL_ROWS - 1, 4], &wgpu);
        let kv = Tensor::<4>::zeros([1, 1, 16, 4], &wgpu);
        assert!(!kernel_applies(&q, &kv, &kv));
    }
    assert_eq!(AttentionPath::parse(" Burn "), Some(AttentionPath::Burn));
    assert_eq!(AttentionPath::parse("blip3"), Some(AttentionPath::Blip3));
    assert_eq!(AttentionPath::parse("auto"), Some(AttentionPath::Auto));
    assert_eq!(AttentionPath::parse("flash"), None);
}

/// The tensor-core kernel (half precision on devices with MMA instructions: CUDA, Vulkan with
/// cooperative matrices, lavapipe from Mesa 26 on) against the float64 reference, on the model's
/// shapes and masks, alone and as the forward of a training step (gradients through autodiff).
/// On devices without MMA the scalar kernel runs the same cases (the counter says which);
/// `BLIP3_REQUIRE_TENSOR_CORES=1` makes its absence a failure, for machines known to have it.
#[test]
fn tensor_core_kernel_matches_reference() {
    let cases = [
        Case {
            strided: true,
            ..case("siglip dh72", 2, 3, 130, 130, 72)
        },
        Case {
            mask: MaskKind::KeyPadding(vec![81, 5]),
            ..case("resampler dh96", 2, 3, 64, 145, 96)
        },
        Case {
            mask: MaskKind::LeftPadding(vec![70]),
            causal: true,
            ..case("prefill 300 dh96", 1, 2, 300, 300, 96)
        },
        Case {
            causal: true,
            ..case("chunked prefill sq<sk dh64", 1, 2, 40, 97, 64)
        },
        Case {
            mask: MaskKind::Random { p: 0.5, full: 3 },
            dv: 40,
            ..case("random mask, full rows, dv40", 2, 2, 33, 23, 16)
        },
    ];
    let _serial = HALF_PRECISION.lock().unwrap_or_else(|e| e.into_inner());
    let mut ran = false;
    for (device_name, device) in gpu_devices() {
        // Tolerances: outputs (absolute), gradients (relative to the largest reference gradient).
        for (dtype, tol, grad_tol) in [(DType::F16, 2e-2f32, 5e-3f64), (DType::BF16, 6e-2, 4e-2)] {
            if !device.supports_dtype(dtype) {
                continue;
            }
            let before = tensor_core_launches();
            let before_backward = tensor_core_backward_launches();
            for (seed, c) in cases.iter().enumerate() {
                let x = c.inputs(seed as u64 + 11);
                let want = c.reference(&x);
                let (q, k, v, mask) = c.tensors(&x, &device, dtype);
                let ours = floats(attention_with(
                    AttentionPath::Blip3,
                    q,
                    k,
                    v,
                    mask,
                    c.causal,
                ));
                let err = max_abs_diff(&ours, &want);
                eprintln!("{device_name} {dtype:?} {}: |blip3-ref| {err:.2e}", c.name);
                assert!(
                    err <= tol,
                    "{device_name} {dtype:?} {}: blip3 vs reference {err}",
                    c.name
                );
                // Training: the same forward under autodiff, then the backward kernels.
                let got = gradients(AttentionPath::Blip3, c, &x, &device, dtype);
                let w = Rng::new(99).vec(c.b * c.h * c.sq * c.dv, 1.0);
                let want = c.reference_backward(&x, &w);
                check_gradients(
                    &format!("{device_name} {dtype:?} {}", c.name),
                    &got,
                    &want,
                    grad_tol,
                );
            }
            let launches = tensor_core_launches() - before;
            let backward = tensor_core_backward_launches() - before_backward;
            eprintln!(
                "{device_name} {dtype:?}: {launches} tensor-core kernel launches, {backward} of \
                 the backward's tensor-core kernels"
            );
            assert_eq!(
                backward > 0,
                launches > 0,
                "the backward takes tensor cores exactly where the forward does"
            );
            if launches > 0 {
                assert_eq!(backward, 2 * cases.len(), "a query and a key kernel a case");
                assert_eq!(
                    launches,
                    2 * cases.len(),
                    "every case has more than 8 query rows: one launch outside autodiff, one in it"
                );
                ran = true;
            }
        }
    }
    if std::env::var_os("BLIP3_REQUIRE_TENSOR_CORES").is_some() {
        assert!(
            ran,
            "BLIP3_REQUIRE_TENSOR_CORES is set but the kernel never ran"
        );
    }
}
