//! Rotary position embedding in the HF "rotate_half" layout (dimension `i` pairs with `i + d/2`),
//! with the optional LongRoPE ("su") scaling of the 128k Phi-3 variants.
//!
//! Burn's `RotaryEncoding` rotates interleaved pairs, which does not match HF checkpoints, so this
//! module computes `cos`/`sin` itself. Frequencies and angles are computed in f32 as HF does.
//! LongRoPE picks the long factors for a whole call when its largest position + 1 exceeds
//! `original_max_position_embeddings`, and multiplies cos/sin by the attention factor.

use burn::prelude::*;

use crate::config::Phi3Config;

/// Precomputed inverse frequencies.
#[derive(Debug, Clone)]
pub struct Rope {
    inv_short: Vec<f32>,
    inv_long: Option<Vec<f32>>,
    original_max: usize,
    attention_factor: f32,
}

impl Rope {
    /// Frequencies for a Phi-3 config.
    pub fn new(cfg: &Phi3Config) -> Self {
        let dim = cfg.head_dim();
        let theta = cfg.rope_theta;
        let base: Vec<f64> = (0..dim / 2)
            .map(|i| {
                // HF: base ** (arange(0, dim, 2).float() / dim), in f32.
                let e = (2 * i) as f32 / dim as f32;
                (theta as f32).powf(e) as f64
            })
            .collect();
        match &cfg.rope_scaling {
            None => Self {
                inv_short: base.iter().map(|b| (1.0 / b) as f32).collect(),
                inv_long: None,
                original_max: cfg.original_max_position_embeddings,
                attention_factor: 1.0,
            },
            Some(s) => {
                let orig = cfg.original_max_position_embeddings as f64;
                let factor = s
                    .factor
                    .unwrap_or(cfg.max_position_embeddings as f64 / orig);
                let attention_factor = s.attention_factor.unwrap_or(if factor <= 1.0 {
                    1.0
                } else {
                    (1.0 + factor.ln() / orig.ln()).sqrt()
                });
                let scaled = |f: &[f64]| -> Vec<f32> {
                    f.iter()
                        .zip(&base)
                        .map(|(&fi, &b)| 1.0 / ((fi as f32) * (b as f32)))
                        .collect()
                };
                Self {
                    inv_short: scaled(&s.short_factor),
                    inv_long: Some(scaled(&s.long_factor)),
                    original_max: cfg.original_max_position_embeddings,
                    attention_factor: attention_factor as f32,
                }
            }
        }
    }

    /// `cos`, `sin` of shape `[B, 1, T, Dh]` for `positions` (`B` rows of `T` positions).
    pub fn cos_sin(&self, positions: &[Vec<i64>], device: &Device) -> (Tensor<4>, Tensor<4>) {
        let b = positions.len();
        let t = positions.first().map_or(0, Vec::len);
        let max_pos = positions.iter().flatten().copied().max().unwrap_or(0);
        let inv = match &self.inv_long {
            Some(long) if (max_pos + 1) as usize > self.original_max => long,
            _ => &self.inv_short,
        };
        let half = inv.len();
        let pos: Vec<f32> = positions.iter().flatten().map(|&p| p as f32).collect();
        let pos = Tensor::<1>::from_data(TensorData::new(pos, [b * t]), device).reshape([b, t, 1]);
        let inv = Tensor::<1>::from_data(TensorData::new(inv.clone(), [half]), device)
            .reshape([1, 1, half]);
        let freqs = pos * inv; // [B, T, half]
        let emb = Tensor::cat(vec![freqs.clone(), freqs], 2).unsqueeze_dim::<4>(1);
        let (cos, sin) = (emb.clone().cos(), emb.sin());
        if self.attention_factor != 1.0 {
            (cos * self.attention_factor, sin * self.attention_factor)
        } else {
            (cos, sin)
        }
    }
}

/// Applies the rotation to `x` `[B, H, T, Dh]` given `cos`/`sin` `[B, 1, T, Dh]`.
pub fn apply_rotary(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    let [_, _, _, dh] = x.dims();
    let dtype = x.dtype();
    let x1 = x.clone().narrow(3, 0, dh / 2);
    let x2 = x.clone().narrow(3, dh / 2, dh / 2);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos.clone().cast(dtype) + rotated * sin.clone().cast(dtype)
}
