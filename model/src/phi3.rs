//! Phi-3 decoder (HF `Phi3ForCausalLM`): fused `qkv_proj` and `gate_up_proj` as in the checkpoint,
//! RMSNorm, rotate-half RoPE (plain or LongRoPE), causal attention honouring an attention mask
//! (left or right padding), a sliding window, and a KV cache for incremental decoding.
//!
//! Masks are given on the host as one `Vec<bool>` per row (true = real token), which is how
//! batches are built anyway; positions are `cumsum(mask) - 1` (clamped at 0), the rule HF's
//! `generate` uses, which equals plain `0..T` for unpadded or right-padded rows.

use blip3_shaders::activation::swiglu;
use burn::nn::{Linear, LinearConfig, RmsNorm, RmsNormConfig};
use burn::prelude::*;

use crate::attention::{merge_heads, repeat_kv, scaled_dot_product_attention, split_heads};
use crate::config::Phi3Config;
use crate::decoupled::{DecoupledEmbedding, DecoupledLinear};
use crate::error::ModelError;
use crate::kv_cache::{KvBuffers, KvSlot};
use crate::lora::{LoraBranch, LoraConfig, adapted};
use crate::rope::{Rope, apply_rotary};

pub use crate::kv_cache::KvCache;

/// Self-attention with a fused QKV projection.
#[derive(Module, Debug)]
pub struct Phi3Attention {
    /// Rows: queries, then keys, then values.
    pub qkv_proj: Linear,
    /// Output projection.
    pub o_proj: Linear,
    /// Optional LoRA update of `qkv_proj`.
    pub qkv_lora: Option<LoraBranch>,
    /// Optional LoRA update of `o_proj`.
    pub o_lora: Option<LoraBranch>,
    heads: usize,
    kv_heads: usize,
}

/// SwiGLU MLP with a fused gate/up projection (gate first).
#[derive(Module, Debug)]
pub struct Phi3Mlp {
    /// Gate rows, then up rows.
    pub gate_up_proj: Linear,
    /// Down projection.
    pub down_proj: Linear,
    /// Optional LoRA update of `gate_up_proj`.
    pub gate_up_lora: Option<LoraBranch>,
    /// Optional LoRA update of `down_proj`.
    pub down_lora: Option<LoraBranch>,
}

/// One decoder layer.
#[derive(Module, Debug)]
pub struct Phi3DecoderLayer {
    /// Attention.
    pub self_attn: Phi3Attention,
    /// MLP.
    pub mlp: Phi3Mlp,
    /// RMSNorm before attention.
    pub input_layernorm: RmsNorm,
    /// RMSNorm before the MLP.
    pub post_attention_layernorm: RmsNorm,
}

/// Embeddings, layers and final norm (HF `Phi3Model`).
#[derive(Module, Debug)]
pub struct Phi3Model {
    /// Token embeddings (decoupled when extra tokens exist).
    pub embed_tokens: DecoupledEmbedding,
    /// Decoder layers.
    pub layers: Vec<Phi3DecoderLayer>,
    /// Final RMSNorm.
    pub norm: RmsNorm,
}

/// Settings that are not parameters.
#[derive(Debug, Clone)]
pub struct Phi3Settings {
    rope: Rope,
    sliding_window: Option<usize>,
}

/// Phi-3 with its language-modelling head (HF `Phi3ForCausalLM`).
#[derive(Module, Debug)]
pub struct Phi3ForCausalLM {
    /// The decoder.
    pub model: Phi3Model,
    /// The output head.
    pub lm_head: DecoupledLinear,
    #[module(skip)]
    settings: Phi3Settings,
}

/// Which positions get logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsFor {
    /// Every position.
    All,
    /// Only the last position of each row.
    Last,
}

impl Phi3Config {
    /// Builds a Phi-3 decoder with a decoupled vocabulary: the table has `vocab_size` rows of
    /// which `initial_len` are served, plus `additional` extra rows; `head_bias` adds the
    /// (xGen-MM) bias to the original head.
    pub fn init_with_vocab(
        &self,
        initial_len: usize,
        additional: usize,
        head_bias: bool,
        device: &Device,
    ) -> Phi3ForCausalLM {
        let d = self.hidden_size;
        let hd = self.head_dim();
        let lin = |i, o| LinearConfig::new(i, o).with_bias(false).init(device);
        let rms = || {
            RmsNormConfig::new(d)
                .with_epsilon(self.rms_norm_eps)
                .init(device)
        };
        let layers = (0..self.num_hidden_layers)
            .map(|_| Phi3DecoderLayer {
                self_attn: Phi3Attention {
                    qkv_proj: lin(
                        d,
                        (self.num_attention_heads + 2 * self.num_key_value_heads) * hd,
                    ),
                    o_proj: lin(self.num_attention_heads * hd, d),
                    qkv_lora: None,
                    o_lora: None,
                    heads: self.num_attention_heads,
                    kv_heads: self.num_key_value_heads,
                },
                mlp: Phi3Mlp {
                    gate_up_proj: lin(d, 2 * self.intermediate_size),
                    down_proj: lin(self.intermediate_size, d),
                    gate_up_lora: None,
                    down_lora: None,
                },
                input_layernorm: rms(),
                post_attention_layernorm: rms(),
            })
            .collect();
        Phi3ForCausalLM {
            model: Phi3Model {
                embed_tokens: DecoupledEmbedding::new(
                    self.vocab_size,
                    d,
                    initial_len,
                    additional,
                    device,
                ),
                layers,
                norm: rms(),
            },
            lm_head: DecoupledLinear::new(
                self.vocab_size,
                d,
                initial_len,
                additional,
                head_bias,
                device,
            ),
            settings: Phi3Settings {
                rope: Rope::new(self),
                sliding_window: self.sliding_window,
            },
        }
    }

    /// Builds a plain `Phi3ForCausalLM` (whole vocabulary, no head bias).
    pub fn init(&self, device: &Device) -> Phi3ForCausalLM {
        self.init_with_vocab(self.vocab_size, 0, false, device)
    }
}

/// What every decoder layer of one full-sequence pass shares (attention plan and rotary tables),
/// computed once by [`Phi3ForCausalLM::layer_plan`] for running the decoder a layer at a time.
/// Built on a device without autodiff, it serves passes with and without autodiff alike (its
/// tensors are constants to autodiff).
pub struct LayerPlan {
    plan: AttnPlan,
    cos: Tensor<4>,
    sin: Tensor<4>,
}

/// The attention pattern of one forward call.
struct AttnPlan {
    mask: Option<Tensor<4, Bool>>,
    causal: bool,
    positions: Vec<Vec<i64>>,
}

impl Phi3ForCausalLM {
    /// Positions and attention mask for `t` new positions given the full mask (past + new).
    fn plan(&self, full: &[Vec<bool>], past: usize, t: usize, device: &Device) -> AttnPlan {
        let b = full.len();
        let s = past + t;
        let positions: Vec<Vec<i64>> = full
            .iter()
            .map(|row| {
                let mut acc = 0i64;
                let cum: Vec<i64> = row
                    .iter()
                    .map(|&m| {
                        acc += m as i64;
                        (acc - 1).max(0)
                    })
                    .collect();
                cum[past..s].to_vec()
            })
            .collect();
        let window = self.settings.sliding_window.filter(|&w| s > w);
        let right_padded = full.iter().all(|row| row.windows(2).all(|p| p[0] || !p[1]));
        if past == 0 && window.is_none() && right_padded {
            // Pad keys lie after every real query, so plain causal masking is exact for real rows.
            return AttnPlan {
                mask: None,
                causal: true,
                positions,
            };
        }
        let mut m = vec![false; b * t * s];
        for (bi, row) in full.iter().enumerate() {
            for qi in 0..t {
                let q = past + qi;
                let base = (bi * t + qi) * s;
                let mut any = false;
                for k in 0..s {
                    let masked = k > q || !row[k] || window.is_some_and(|w| q - k >= w);
                    m[base + k] = masked;
                    any |= !masked;
                }
                if !any {
                    // A padding query with nothing to attend to: let it see itself (its output is
                    // never used) so the softmax stays finite.
                    m[base + q] = false;
                }
            }
        }
        let mask = Tensor::<4, Bool>::from_data(TensorData::new(m, [b, 1, t, s]), device);
        AttnPlan {
            mask: Some(mask),
            causal: false,
            positions,
        }
    }

    /// Runs the decoder on input embeddings `[B, T, D]` whose real positions are given by `mask`
    /// (`B` rows of `T` booleans). With a cache, `mask` covers only the new positions and the cache
    /// is extended. Returns logits `[B, T or 1, V]`.
    pub fn forward_embeds(
        &self,
        embeds: Tensor<3>,
        mask: &[Vec<bool>],
        cache: Option<&mut KvCache>,
        logits_for: LogitsFor,
    ) -> Result<Tensor<3>, ModelError> {
        let hidden = self.hidden_states(embeds, mask, cache)?;
        let hidden = match logits_for {
            LogitsFor::All => hidden,
            LogitsFor::Last => {
                let [_, t, _] = hidden.dims();
                hidden.narrow(1, t - 1, 1)
            }
        };
        Ok(self.lm_head.forward(hidden))
    }

    /// Like [`forward_embeds`](Self::forward_embeds) but returns the final-norm hidden states.
    pub fn hidden_states(
        &self,
        embeds: Tensor<3>,
        mask: &[Vec<bool>],
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor<3>, ModelError> {
        let [b, t, _] = embeds.dims();
        if mask.len() != b || mask.iter().any(|r| r.len() != t) {
            return Err(ModelError::Input(format!(
                "attention mask must be {b} rows of {t} entries, got {} rows",
                mask.len()
            )));
        }
        let device = embeds.device();
        let dtype = self.model.norm.gamma.val().dtype();
        let mut x = embeds.cast(dtype);
        match cache {
            None => {
                let plan = self.plan(mask, 0, t, &device);
                let (cos, sin) = self.settings.rope.cos_sin(&plan.positions, &device);
                for layer in &self.model.layers {
                    x = layer.forward(x, &cos, &sin, &plan, None);
                }
            }
            Some(cache) => {
                if !cache.mask.is_empty() && cache.mask.len() != b {
                    return Err(ModelError::Input(format!(
                        "cache holds {} rows but the input has {b}",
                        cache.mask.len()
                    )));
                }
                let past = cache.len();
                if cache.mask.is_empty() {
                    cache.mask = vec![Vec::new(); b];
                }
                for (row, new) in cache.mask.iter_mut().zip(mask) {
                    row.extend_from_slice(new);
                }
                if cache.layers.len() != self.model.layers.len() {
                    cache.layers = vec![None; self.model.layers.len()];
                }
                let plan = self.plan(&cache.mask, past, t, &device);
                let (cos, sin) = self.settings.rope.cos_sin(&plan.positions, &device);
                for (layer, slot) in self.model.layers.iter().zip(cache.layers.iter_mut()) {
                    x = layer.forward(x, &cos, &sin, &plan, Some(slot));
                }
            }
        }
        Ok(self.model.norm.forward(x))
    }

    /// The plan of a full-sequence pass (no cache) over `mask` (`B` rows of `T` booleans) that
    /// runs the decoder one layer at a time: [`layer_input`](Self::layer_input), then
    /// [`run_layer`](Self::run_layer) for every layer, then [`run_head`](Self::run_head)
    /// compute what [`forward_embeds`](Self::forward_embeds) does, so a trainer can keep only
    /// each layer's input and rerun the layer in the backward (per-layer activation
    /// checkpointing).
    pub fn layer_plan(&self, mask: &[Vec<bool>], device: &Device) -> Result<LayerPlan, ModelError> {
        let t = mask.first().map_or(0, Vec::len);
        if mask.iter().any(|r| r.len() != t) {
            return Err(ModelError::Input(
                "attention mask rows must all have the same length".into(),
            ));
        }
        let plan = self.plan(mask, 0, t, device);
        let (cos, sin) = self.settings.rope.cos_sin(&plan.positions, device);
        Ok(LayerPlan { plan, cos, sin })
    }

    /// Number of decoder layers.
    pub fn num_layers(&self) -> usize {
        self.model.layers.len()
    }

    /// The input of layer 0: the embeddings `[B, T, D]` in the weights' dtype.
    pub fn layer_input(&self, embeds: Tensor<3>) -> Tensor<3> {
        embeds.cast(self.model.norm.gamma.val().dtype())
    }

    /// Decoder layer `i` on hidden states `x` (`[B, T, D]`) under `plan`. Panics when `i` is
    /// not below [`num_layers`](Self::num_layers).
    pub fn run_layer(&self, i: usize, x: Tensor<3>, plan: &LayerPlan) -> Tensor<3> {
        self.model.layers[i].forward(x, &plan.cos, &plan.sin, &plan.plan, None)
    }

    /// The final norm and output head on the last layer's output: logits `[B, T, V]`.
    pub fn run_head(&self, x: Tensor<3>) -> Tensor<3> {
        self.lm_head.forward(self.model.norm.forward(x))
    }

    /// Embeds token ids `[B, T]`.
    pub fn embed(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        self.model.embed_tokens.forward(ids)
    }

    /// Convenience forward on token ids with an optional cache.
    pub fn forward_ids(
        &self,
        ids: Tensor<2, Int>,
        mask: &[Vec<bool>],
        cache: Option<&mut KvCache>,
        logits_for: LogitsFor,
    ) -> Result<Tensor<3>, ModelError> {
        let e = self.embed(ids);
        self.forward_embeds(e, mask, cache, logits_for)
    }
}

impl Phi3Attention {
    /// Causal self-attention of `x` `[B, T, D]` (already normalised): the fused projection is
    /// split into queries (`heads` heads), keys and values (`kv_heads` heads each), RoPE rotates
    /// queries and keys at the plan's positions (`cos`/`sin` `[B, 1, T, head_dim]`), the cache (if
    /// any) is extended with the new keys and values, and key/value heads are repeated for
    /// grouped-query attention. Returns `[B, T, D]` after the output projection.
    fn forward(
        &self,
        x: Tensor<3>,
        cos: &Tensor<4>,
        sin: &Tensor<4>,
        plan: &AttnPlan,
        cache: Option<&mut KvSlot>,
    ) -> Tensor<3> {
        let qkv = adapted(&self.qkv_proj, self.qkv_lora.as_ref(), x);
        let [_, _, qkv_width] = qkv.dims();
        let head_dim = qkv_width / (self.heads + 2 * self.kv_heads);
        let q_width = self.heads * head_dim;
        let kv_width = self.kv_heads * head_dim;
        let queries = split_heads(qkv.clone().narrow(2, 0, q_width), self.heads);
        let keys = split_heads(qkv.clone().narrow(2, q_width, kv_width), self.kv_heads);
        let values = split_heads(qkv.narrow(2, q_width + kv_width, kv_width), self.kv_heads);
        let queries = apply_rotary(queries, cos, sin);
        let mut keys = apply_rotary(keys, cos, sin);
        let mut values = values;
        if let Some(slot) = cache {
            (keys, values) = match slot {
                Some(buffers) => buffers.append(keys, values),
                None => {
                    let buffers = KvBuffers::new(keys, values);
                    let filled = buffers.filled();
                    *slot = Some(buffers);
                    filled
                }
            };
        }
        let group = self.heads / self.kv_heads;
        let attended = scaled_dot_product_attention(
            queries,
            repeat_kv(keys, group),
            repeat_kv(values, group),
            plan.mask.clone(),
            plan.causal,
        );
        adapted(&self.o_proj, self.o_lora.as_ref(), merge_heads(attended))
    }
}

impl Phi3Mlp {
    /// SwiGLU of `x` `[B, T, D]` (already normalised): `down(silu(gate) * up)`, with gate and up
    /// taken from the two halves of the fused projection.
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let gate_up = adapted(&self.gate_up_proj, self.gate_up_lora.as_ref(), x);
        adapted(&self.down_proj, self.down_lora.as_ref(), swiglu(gate_up))
    }
}

impl Phi3DecoderLayer {
    /// Pre-norm residual block: `x + attn(norm(x))`, then `h + mlp(norm(h))`.
    fn forward(
        &self,
        x: Tensor<3>,
        cos: &Tensor<4>,
        sin: &Tensor<4>,
        plan: &AttnPlan,
        cache: Option<&mut KvSlot>,
    ) -> Tensor<3> {
        let attn_in = self.input_layernorm.forward(x.clone());
        let hidden = x + self.self_attn.forward(attn_in, cos, sin, plan, cache);
        let mlp_in = self.post_attention_layernorm.forward(hidden.clone());
        hidden + self.mlp.forward(mlp_in)
    }
}

fn linear_dims(l: &Linear) -> (usize, usize) {
    let [d_in, d_out] = l.weight.dims();
    (d_in, d_out)
}

impl Phi3ForCausalLM {
    /// Attaches fresh LoRA branches to the targeted linears of every layer (replacing any).
    pub fn attach_lora(mut self, cfg: &LoraConfig, device: &Device) -> Self {
        for layer in self.model.layers.iter_mut() {
            let a = &mut layer.self_attn;
            let branch = |name: &str, l: &Linear| {
                cfg.targets(name).then(|| {
                    let (i, o) = linear_dims(l);
                    cfg.branch(i, o, device)
                })
            };
            a.qkv_lora = branch("qkv_proj", &a.qkv_proj);
            a.o_lora = branch("o_proj", &a.o_proj);
            let m = &mut layer.mlp;
            m.gate_up_lora = branch("gate_up_proj", &m.gate_up_proj);
            m.down_lora = branch("down_proj", &m.down_proj);
        }
        self
    }

    /// True when any LoRA branch is attached.
    pub fn has_lora(&self) -> bool {
        self.model.layers.iter().any(|l| {
            l.self_attn.qkv_lora.is_some()
                || l.self_attn.o_lora.is_some()
                || l.mlp.gate_up_lora.is_some()
                || l.mlp.down_lora.is_some()
        })
    }

    /// Removes every branch without merging (the base model, e.g. as a DPO reference).
    pub fn without_lora(mut self) -> Self {
        for layer in self.model.layers.iter_mut() {
            layer.self_attn.qkv_lora = None;
            layer.self_attn.o_lora = None;
            layer.mlp.gate_up_lora = None;
            layer.mlp.down_lora = None;
        }
        self
    }

    /// Folds every branch into its base weight and removes the branches.
    pub fn merge_lora(mut self) -> Self {
        for layer in self.model.layers.iter_mut() {
            let a = &mut layer.self_attn;
            if let Some(b) = a.qkv_lora.take() {
                a.qkv_proj = b.merge_into(a.qkv_proj.clone());
            }
            if let Some(b) = a.o_lora.take() {
                a.o_proj = b.merge_into(a.o_proj.clone());
            }
            let m = &mut layer.mlp;
            if let Some(b) = m.gate_up_lora.take() {
                m.gate_up_proj = b.merge_into(m.gate_up_proj.clone());
            }
            if let Some(b) = m.down_lora.take() {
                m.down_proj = b.merge_into(m.down_proj.clone());
            }
        }
        self
    }
}
