//! SigLIP vision transformer (HF `SiglipVisionTransformer`): patch-embedding convolution, learned
//! absolute positions (bicubically interpolated when the input size differs from the config),
//! pre-LN encoder layers with tanh-GELU MLPs, and a final LayerNorm. Returns the last hidden
//! state; the attention-pooling head exists in checkpoints but is not part of xGen-MM's path
//! (its weights are accepted and skipped by the loader).

use blip3_shaders::activation::gelu_tanh;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;

use crate::attention::{merge_heads, scaled_dot_product_attention, split_heads};
use crate::config::SiglipVisionConfig;
use crate::linear::linear;

/// Patch embedding plus learned positions.
#[derive(Module, Debug)]
pub struct SiglipEmbeddings {
    /// Conv2d with kernel = stride = patch size.
    pub patch_embedding: Conv2d,
    /// One learned vector per patch of the native grid (row-major).
    pub position_embedding: Embedding,
    grid: usize,
}

/// Multi-head self-attention with biases on every projection.
#[derive(Module, Debug)]
pub struct SiglipAttention {
    /// Query projection.
    pub q_proj: Linear,
    /// Key projection.
    pub k_proj: Linear,
    /// Value projection.
    pub v_proj: Linear,
    /// Output projection.
    pub out_proj: Linear,
    num_heads: usize,
}

/// Two-layer MLP with tanh-approximated GELU.
#[derive(Module, Debug)]
pub struct SiglipMlp {
    /// Expansion.
    pub fc1: Linear,
    /// Contraction.
    pub fc2: Linear,
}

/// One pre-LN encoder layer.
#[derive(Module, Debug)]
pub struct SiglipEncoderLayer {
    /// Attention.
    pub self_attn: SiglipAttention,
    /// LayerNorm before attention.
    pub layer_norm1: LayerNorm,
    /// MLP.
    pub mlp: SiglipMlp,
    /// LayerNorm before the MLP.
    pub layer_norm2: LayerNorm,
}

/// The stack of encoder layers.
#[derive(Module, Debug)]
pub struct SiglipEncoder {
    /// Layers in order.
    pub layers: Vec<SiglipEncoderLayer>,
}

/// The SigLIP vision transformer.
#[derive(Module, Debug)]
pub struct SiglipVisionTransformer {
    /// Patch and position embeddings.
    pub embeddings: SiglipEmbeddings,
    /// Encoder layers.
    pub encoder: SiglipEncoder,
    /// Final LayerNorm (applied: xGen-MM uses its output).
    pub post_layernorm: LayerNorm,
}

impl SiglipVisionConfig {
    /// Builds the tower on `device` (parameters are initialised lazily, so building the full-size
    /// model before loading weights costs no memory).
    pub fn init(&self, device: &Device) -> SiglipVisionTransformer {
        let d = self.hidden_size;
        let ln = || {
            LayerNormConfig::new(d)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        };
        let lin = |i, o| LinearConfig::new(i, o).init(device);
        let layers = (0..self.num_hidden_layers)
            .map(|_| SiglipEncoderLayer {
                self_attn: SiglipAttention {
                    q_proj: lin(d, d),
                    k_proj: lin(d, d),
                    v_proj: lin(d, d),
                    out_proj: lin(d, d),
                    num_heads: self.num_attention_heads,
                },
                layer_norm1: ln(),
                mlp: SiglipMlp {
                    fc1: lin(d, self.intermediate_size),
                    fc2: lin(self.intermediate_size, d),
                },
                layer_norm2: ln(),
            })
            .collect();
        let p = self.patch_size;
        SiglipVisionTransformer {
            embeddings: SiglipEmbeddings {
                patch_embedding: Conv2dConfig::new([self.num_channels, d], [p, p])
                    .with_stride([p, p])
                    .init(device),
                position_embedding: EmbeddingConfig::new(self.num_patches(), d).init(device),
                grid: self.grid_size(),
            },
            encoder: SiglipEncoder { layers },
            post_layernorm: ln(),
        }
    }
}

impl SiglipEmbeddings {
    /// Patch tokens plus positions: `[B, C, H, W]` → `[B, (H/p)·(W/p), D]`.
    pub fn forward(&self, pixels: Tensor<4>) -> Tensor<3> {
        let dtype = self.patch_embedding.weight.val().dtype();
        let x = self.patch_embedding.forward(pixels.cast(dtype)); // [B, D, gh, gw]
        let [_, _, gh, gw] = x.dims();
        let x: Tensor<3> = x.flatten(2, 3).swap_dims(1, 2);
        x + self.positions(gh, gw).unsqueeze::<3>()
    }

    /// Position vectors for a `gh × gw` patch grid: the table itself at the native grid, else the
    /// table bicubically resampled as PyTorch's `interpolate(mode="bicubic", align_corners=False)`.
    pub fn positions(&self, gh: usize, gw: usize) -> Tensor<2> {
        let table = self.position_embedding.weight.val();
        let g = self.grid;
        if gh == g && gw == g {
            return table;
        }
        let [_, d] = table.dims();
        let device = table.device();
        let dtype = table.dtype();
        let wy = bicubic_matrix(g, gh, &device).cast(dtype); // [gh, g]
        let wx = bicubic_matrix(g, gw, &device).cast(dtype); // [gw, g]
        // Rows: [gh, g] x [g, g*d] -> [gh, g, d]
        let rows = wy.matmul(table.reshape([g, g * d])).reshape([gh, g, d]);
        // Columns: [gh, d, g] x [g, gw] -> [gh, d, gw]
        let cols = rows.swap_dims(1, 2).matmul(wx.transpose().unsqueeze::<3>());
        cols.swap_dims(1, 2).reshape([gh * gw, d])
    }
}

/// The `[out, in]` weight matrix of 1-D bicubic resampling (A = -0.75, half-pixel centres,
/// clamped borders, no antialiasing), matching PyTorch's `upsample_bicubic2d` per axis.
fn bicubic_matrix(input: usize, output: usize, device: &Device) -> Tensor<2> {
    const A: f64 = -0.75;
    let near = |x: f64| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f64| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    let scale = input as f64 / output as f64;
    let mut w = vec![0f32; output * input];
    for o in 0..output {
        let real = scale * (o as f64 + 0.5) - 0.5;
        let base = real.floor();
        let t = real - base;
        let coeffs = [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)];
        for (k, c) in coeffs.iter().enumerate() {
            let idx = (base as i64 - 1 + k as i64).clamp(0, input as i64 - 1) as usize;
            w[o * input + idx] += *c as f32;
        }
    }
    Tensor::from_data(TensorData::new(w, [output, input]), device)
}

impl SiglipAttention {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let q = split_heads(linear(&self.q_proj, x.clone()), self.num_heads);
        let k = split_heads(linear(&self.k_proj, x.clone()), self.num_heads);
        let v = split_heads(linear(&self.v_proj, x), self.num_heads);
        let out = scaled_dot_product_attention(q, k, v, None, false);
        linear(&self.out_proj, merge_heads(out))
    }
}

impl SiglipEncoderLayer {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let h = x.clone() + self.self_attn.forward(self.layer_norm1.forward(x));
        let m = linear(
            &self.mlp.fc2,
            gelu_tanh(linear(&self.mlp.fc1, self.layer_norm2.forward(h.clone()))),
        );
        h + m
    }
}

impl SiglipVisionTransformer {
    /// `[B, C, H, W]` pixels (normalised) → `[B, N, D]` post-LayerNorm last hidden state.
    /// Any `H, W` that are multiples of the patch size work; positions are interpolated.
    pub fn forward(&self, pixels: Tensor<4>) -> Tensor<3> {
        let mut x = self.embeddings.forward(pixels);
        for layer in &self.encoder.layers {
            x = layer.forward(x);
        }
        self.post_layernorm.forward(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bicubic_rows_sum_to_one_and_identity_at_same_size() {
        let dev = Device::flex();
        let m = bicubic_matrix(5, 9, &dev)
            .into_data()
            .try_into_vec_as::<f32>()
            .unwrap();
        for r in m.chunks(5) {
            assert!((r.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
        let id = bicubic_matrix(4, 4, &dev)
            .into_data()
            .try_into_vec_as::<f32>()
            .unwrap();
        for (i, r) in id.chunks(4).enumerate() {
            for (j, v) in r.iter().enumerate() {
                assert!((v - if i == j { 1.0 } else { 0.0 }).abs() < 1e-6);
            }
        }
    }
}
