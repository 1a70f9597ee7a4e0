//! Perceiver resampler (the "vision tokenizer"): a fixed set of learned latents reads a group of
//! media tokens through `depth` layers of attention over concat(media, latents) plus a bias-free
//! feed-forward block, then a LayerNorm and a projection to the language model's width.
//!
//! Per the reference (docs/model.md, "Perceiver resampler"): two separate LayerNorms for media
//! and latents inside each attention block, Q from the latents only, K/V from the concatenation
//! (media first), one fused `to_kv` split in half (K then V), padded media keys masked (latent
//! keys always valid), exact GELU in the feed-forward, and residual connections around both
//! blocks.

use burn::module::Param;
use burn::nn::{Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::gelu;

use crate::attention::{merge_heads, scaled_dot_product_attention, split_heads};
use crate::config::PerceiverConfig;
use crate::linear::linear;

/// The attention block of one resampler layer.
#[derive(Module, Debug)]
pub struct PerceiverAttention {
    /// LayerNorm applied to the media tokens.
    pub norm_media: LayerNorm,
    /// LayerNorm applied to the latents.
    pub norm_latents: LayerNorm,
    /// Latents → queries (no bias).
    pub to_q: Linear,
    /// Media and latents → keys then values (no bias).
    pub to_kv: Linear,
    /// Heads → width (no bias).
    pub to_out: Linear,
    heads: usize,
}

/// The feed-forward block: LayerNorm, Linear, exact GELU, Linear (no biases on the linears).
#[derive(Module, Debug)]
pub struct PerceiverFeedForward {
    /// Input LayerNorm.
    pub norm: LayerNorm,
    /// Expansion.
    pub fc1: Linear,
    /// Contraction.
    pub fc2: Linear,
}

/// One resampler layer.
#[derive(Module, Debug)]
pub struct PerceiverLayer {
    /// Attention from latents to media + latents.
    pub attn: PerceiverAttention,
    /// Feed-forward on the latents.
    pub ff: PerceiverFeedForward,
}

/// The perceiver resampler.
#[derive(Module, Debug)]
pub struct PerceiverResampler {
    /// Learned latent queries `[num_latents, dim]`.
    pub latents: Param<Tensor<2>>,
    /// Layers in order.
    pub layers: Vec<PerceiverLayer>,
    /// Final LayerNorm.
    pub norm: LayerNorm,
    /// Projection to the language model width (with bias).
    pub projection: Linear,
}

impl PerceiverConfig {
    /// Builds the resampler on `device` (lazily initialised parameters; latents ~ N(0, 1)).
    pub fn init(&self, device: &Device) -> PerceiverResampler {
        let d = self.dim;
        let inner = self.inner_dim();
        let ln = || {
            LayerNormConfig::new(d)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        };
        let lin = |i, o| LinearConfig::new(i, o).with_bias(false).init(device);
        let layers = (0..self.depth)
            .map(|_| PerceiverLayer {
                attn: PerceiverAttention {
                    norm_media: ln(),
                    norm_latents: ln(),
                    to_q: lin(d, inner),
                    to_kv: lin(d, 2 * inner),
                    to_out: lin(inner, d),
                    heads: self.heads,
                },
                ff: PerceiverFeedForward {
                    norm: ln(),
                    fc1: lin(d, d * self.ff_mult),
                    fc2: lin(d * self.ff_mult, d),
                },
            })
            .collect();
        PerceiverResampler {
            latents: Initializer::Normal {
                mean: 0.0,
                std: 1.0,
            }
            .init([self.num_latents, d], device),
            layers,
            norm: ln(),
            projection: LinearConfig::new(d, self.dim_inner).init(device),
        }
    }
}

impl PerceiverAttention {
    fn forward(
        &self,
        media: Tensor<3>,
        latents: Tensor<3>,
        key_mask: Option<Tensor<4, Bool>>,
    ) -> Tensor<3> {
        let x = self.norm_media.forward(media);
        let l = self.norm_latents.forward(latents);
        let q = split_heads(linear(&self.to_q, l.clone()), self.heads);
        let kv = linear(&self.to_kv, Tensor::cat(vec![x, l], 1));
        let [_, _, two_inner] = kv.dims();
        let inner = two_inner / 2;
        let k = split_heads(kv.clone().narrow(2, 0, inner), self.heads);
        let v = split_heads(kv.narrow(2, inner, inner), self.heads);
        let out = scaled_dot_product_attention(q, k, v, key_mask, false);
        linear(&self.to_out, merge_heads(out))
    }
}

impl PerceiverResampler {
    /// Resamples `G` groups of `N` media tokens: `media` is `[G, N, dim]`, `valid` (optional) is
    /// `[G, N]` with true for real tokens. Returns `[G, num_latents, dim_inner]`.
    pub fn forward(&self, media: Tensor<3>, valid: Option<Tensor<2, Bool>>) -> Tensor<3> {
        let [g, _, d] = media.dims();
        let lat = self.latents.val();
        let [n_lat, _] = lat.dims();
        let media = media.cast(lat.dtype());
        // Keys are [media..., latents...]; latent keys are always valid.
        let key_mask = valid.map(|valid| {
            let device = valid.device();
            let latent_ok = Tensor::<2, Bool>::full([g, n_lat], true, &device);
            Tensor::cat(vec![valid, latent_ok], 1)
                .bool_not()
                .unsqueeze_dims::<4>(&[1, 2])
        });
        let mut latents: Tensor<3> = lat.unsqueeze::<3>().expand([g, n_lat, d]);
        for layer in &self.layers {
            latents = layer
                .attn
                .forward(media.clone(), latents.clone(), key_mask.clone())
                + latents;
            let ff = &layer.ff;
            latents = linear(
                &ff.fc2,
                gelu(linear(&ff.fc1, ff.norm.forward(latents.clone()))),
            ) + latents;
        }
        linear(&self.projection, self.norm.forward(latents))
    }
}
