//! Attention's statistics and gradients composed of Burn tensor ops (any backend): the Flex
//! implementation of the extension's backward and log-sum-exp, the autodiff one (differentiable),
//! and the CubeCL fallback where the kernels cannot run. They materialise the `[Sq, Sk]` scores;
//! the backward bounds that by processing large problems in chunks of heads.

use burn::backend::tensor::{BoolTensor, FloatTensor};
use burn::backend::{Backend, TensorMetadata, get_or_init_device_settings};
use burn::tensor::{DType, FloatDType, Shape, Slice};

/// The log-sum-exp `flash_attention_with_lse` gives a query row that sees no key: finite, and
/// so large that `exp(s − lse)` is 0 for every real score `s`.
pub const NO_KEY_LSE: f32 = 3.0e38;

/// Most score elements (`B·H·Sq·Sk` of one chunk) the backward materialises at once; larger
/// problems are processed in chunks of heads.
const BACKWARD_CHUNK_SCORES: usize = 1 << 26;

/// Gradients of attention with respect to `q`, `k` and `v` composed of tensor ops, recomputing
/// the probabilities (the Flex implementation of the backward, and the CubeCL fallback where the
/// kernels cannot run):
/// `P = softmax(S)`, `dV = Pᵀ·dO`, `dP = dO·Vᵀ`, `dS = P ∘ (dP − rowsum(P ∘ dP))`,
/// `dQ = dS·K·scale`, `dK = dSᵀ·Q·scale`. Half-precision inputs are computed in f32 and the
/// gradients cast back. Large problems are split over batch and heads so that at most
/// [`BACKWARD_CHUNK_SCORES`] score elements live at once.
pub(crate) fn composed_attention_backward<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    mask: Option<BoolTensor<B>>,
    causal: bool,
    grad_out: FloatTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let dtype = q.dtype();
    let work_dtype = match dtype {
        DType::F16 | DType::BF16 => Some(FloatDType::F32),
        _ => None,
    };
    let up = |t: FloatTensor<B>| match work_dtype {
        Some(d) => B::float_cast(t, d),
        None => t,
    };
    let (q, k, v, grad_out) = (up(q), up(k), up(v), up(grad_out));

    let [b, h, sq, _] = q.shape().dims::<4>();
    let [_, _, sk, _] = k.shape().dims::<4>();
    let per_head = (sq * sk).max(1);
    let heads_per_chunk = (BACKWARD_CHUNK_SCORES / per_head).clamp(1, h.max(1));
    let grads = if b * h * per_head <= BACKWARD_CHUNK_SCORES || b * h == 0 {
        attention_backward_chunk::<B>(q, k, v, mask, causal, grad_out)
    } else {
        let mut per_batch: Vec<[FloatTensor<B>; 3]> = Vec::with_capacity(b);
        for bi in 0..b {
            let mut parts: [Vec<FloatTensor<B>>; 3] = [Vec::new(), Vec::new(), Vec::new()];
            let mut h0 = 0;
            while h0 < h {
                let h1 = (h0 + heads_per_chunk).min(h);
                let slices = [
                    Slice::from(bi..bi + 1),
                    Slice::from(h0..h1),
                    Slice::from(..),
                    Slice::from(..),
                ];
                let part = attention_backward_chunk::<B>(
                    B::float_slice(q.clone(), &slices),
                    B::float_slice(k.clone(), &slices),
                    B::float_slice(v.clone(), &slices),
                    mask.clone().map(|m| B::bool_slice(m, &slices)),
                    causal,
                    B::float_slice(grad_out.clone(), &slices),
                );
                for (acc, g) in parts.iter_mut().zip(part) {
                    acc.push(g);
                }
                h0 = h1;
            }
            per_batch.push(parts.map(|p| B::float_cat(p, 1)));
        }
        let mut columns: [Vec<FloatTensor<B>>; 3] = [Vec::new(), Vec::new(), Vec::new()];
        for parts in per_batch {
            for (col, g) in columns.iter_mut().zip(parts) {
                col.push(g);
            }
        }
        columns.map(|c| B::float_cat(c, 0))
    };
    let [dq, dk, dv] = match work_dtype {
        Some(_) => grads.map(|g| B::float_cast(g, dtype.into())),
        None => grads,
    };
    (dq, dk, dv)
}

/// One chunk of [`attention_backward`], all tensors materialised.
fn attention_backward_chunk<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    mask: Option<BoolTensor<B>>,
    causal: bool,
    grad_out: FloatTensor<B>,
) -> [FloatTensor<B>; 3] {
    let dh = q.shape().dims::<4>()[3];
    let scale = 1.0 / (dh as f64).sqrt();
    let (exp, _, row_sum) = softmax_parts::<B>(q.clone(), k.clone(), mask, causal);
    let probs = normalised::<B>(exp, row_sum);

    let grad_v = B::float_matmul(B::float_transpose(probs.clone()), grad_out.clone());
    let grad_probs = B::float_matmul(grad_out, B::float_transpose(v));
    let row_dot = B::float_sum_dim(B::float_mul(probs.clone(), grad_probs.clone()), 3);
    let grad_scores = B::float_mul(probs, B::float_sub(grad_probs, row_dot));
    let grad_q = B::float_mul_scalar(B::float_matmul(grad_scores.clone(), k), scale.into());
    let grad_k = B::float_mul_scalar(
        B::float_matmul(B::float_transpose(grad_scores), q),
        scale.into(),
    );
    [grad_q, grad_k, grad_v]
}

/// Attention composed of tensor ops (two products and a softmax, `[B, H, Sq, Sk]` scores
/// materialised; half precision computed in f32 and cast back), with the module's contract:
/// fully masked rows give zeros. The products read `k` and `v` through their strides, so a view
/// of a larger buffer (the KV cache's) is used in place.
pub(crate) fn composed_attention<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    mask: Option<BoolTensor<B>>,
    causal: bool,
) -> FloatTensor<B> {
    let dtype = q.dtype();
    let (exp, _, row_sum) = softmax_parts::<B>(q, k, mask, causal);
    attended::<B>(exp, row_sum, v, dtype)
}

/// [`composed_attention`] with each query row's log-sum-exp (`[B, H, Sq]`, f32;
/// [`NO_KEY_LSE`] for a row that sees no key) from the same scores: the statistics of
/// [`FlashAttentionBackend::flash_attention_lse`](crate::attention::FlashAttentionBackend)
/// where no kernel computes them (Flex, autodiff, the kernels' fallback).
pub(crate) fn composed_attention_lse<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    mask: Option<BoolTensor<B>>,
    causal: bool,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let dtype = q.dtype();
    let [b, h, sq, _] = q.shape().dims::<4>();
    let (exp, row_max, row_sum) = softmax_parts::<B>(q, k, mask, causal);
    let settings = get_or_init_device_settings::<B>(&row_sum.device());
    let no_key = B::float_lower_equal_elem(row_sum.clone(), 0.0f32.into(), settings.bool_dtype);
    let lse = B::float_add(row_max, B::float_log(row_sum.clone()));
    let lse = B::float_mask_fill(lse, no_key, NO_KEY_LSE.into());
    (
        attended::<B>(exp, row_sum, v, dtype),
        B::float_reshape(lse, Shape::new([b, h, sq])),
    )
}

/// The pieces of a softmax over the masked scores of `q` and `k`, in f32: `exp(s − max)`, the
/// row maximum (at least `f32::MIN`, so a row whose keys are all hidden gives `exp = 0`, not
/// NaN) and the row sum (0 for such a row), both `[B, H, Sq, 1]`.
fn softmax_parts<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    mask: Option<BoolTensor<B>>,
    causal: bool,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let up = |t: FloatTensor<B>| match t.dtype() {
        DType::F16 | DType::BF16 => B::float_cast(t, FloatDType::F32),
        _ => t,
    };
    let scores = masked_scores::<B>(up(q), up(k), mask, causal);
    let row_max = B::float_clamp_min(B::float_max_dim(scores.clone(), 3), f32::MIN.into());
    let exp = B::float_exp(B::float_sub(scores, row_max.clone()));
    let row_sum = B::float_sum_dim(exp.clone(), 3);
    (exp, row_max, row_sum)
}

/// The probabilities `exp / row_sum` from [`softmax_parts`] (0 on a row that sees no key).
fn normalised<B: Backend>(exp: FloatTensor<B>, row_sum: FloatTensor<B>) -> FloatTensor<B> {
    B::float_div(exp, B::float_clamp_min(row_sum, f32::MIN_POSITIVE.into()))
}

/// `softmax · v` from [`softmax_parts`] (zeros for a row that sees no key), cast to `dtype`.
fn attended<B: Backend>(
    exp: FloatTensor<B>,
    row_sum: FloatTensor<B>,
    v: FloatTensor<B>,
    dtype: DType,
) -> FloatTensor<B> {
    let probs = normalised::<B>(exp, row_sum);
    let v = match v.dtype() {
        DType::F16 | DType::BF16 => B::float_cast(v, FloatDType::F32),
        _ => v,
    };
    let out = B::float_matmul(probs, v);
    match dtype {
        DType::F16 | DType::BF16 => B::float_cast(out, dtype.into()),
        _ => out,
    }
}

/// The scaled scores `q·kᵀ · Dh^-0.5` (`[B, H, Sq, Sk]`), `-inf` where `mask` or causality hides
/// the key.
fn masked_scores<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    mask: Option<BoolTensor<B>>,
    causal: bool,
) -> FloatTensor<B> {
    let [b, h, sq, dh] = q.shape().dims::<4>();
    let [_, _, sk, _] = k.shape().dims::<4>();
    let device = q.device();
    let scale = 1.0 / (dh as f64).sqrt();
    let scores = B::float_mul_scalar(B::float_matmul(q, B::float_transpose(k)), scale.into());
    let scores = match mask {
        Some(mask) => B::float_mask_fill(scores, mask, f32::NEG_INFINITY.into()),
        None => scores,
    };
    if causal {
        let causal_mask = B::bool_expand(
            causal_mask::<B>(&device, sq, sk),
            Shape::new([b, h, sq, sk]),
        );
        B::float_mask_fill(scores, causal_mask, f32::NEG_INFINITY.into())
    } else {
        scores
    }
}

/// `[1, 1, Sq, Sk]`, true where key `j` lies after query `i` bottom-right aligned
/// (`j > i + Sk - Sq`).
fn causal_mask<B: Backend>(device: &B::Device, sq: usize, sk: usize) -> BoolTensor<B> {
    let settings = get_or_init_device_settings::<B>(device);
    let rows = B::int_reshape(
        B::int_arange(0..sq as i64, device, settings.int_dtype),
        Shape::new([sq, 1]),
    );
    let cols = B::int_reshape(
        B::int_arange(0..sk as i64, device, settings.int_dtype),
        Shape::new([1, sk]),
    );
    let shifted = B::int_add_scalar(rows, (sk as i64 - sq as i64).into());
    let mask = B::int_lower(shifted, cols, settings.bool_dtype);
    B::bool_reshape(mask, Shape::new([1, 1, sq, sk]))
}
