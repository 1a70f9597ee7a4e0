//! Model configurations: one serde struct per component, presets, and the parser for the HF
//! `config.json` files that released xGen-MM, Phi-3 and SigLIP checkpoints ship with.
//!
//! The released xGen-MM `config.json` lists only a few `text_config` fields and relies on the HF
//! `Phi3Config` defaults (Phi-3-mini's sizes) for the rest; [`XGenMMConfig::from_hf_json`] applies
//! those defaults field by field. Tiny checkpoints go through the same path: every size is read
//! from the file when present (see docs/model.md, "Checkpoint layout", and the optional
//! `vision_config` / `vision_tokenizer_config` extensions).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ModelError;

/// Sizes of the SigLIP vision transformer (HF `SiglipVisionConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiglipVisionConfig {
    /// Width of the tokens.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Number of encoder layers.
    pub num_hidden_layers: usize,
    /// Number of attention heads.
    pub num_attention_heads: usize,
    /// Input channels.
    #[serde(default = "default_channels")]
    pub num_channels: usize,
    /// Native input resolution (square).
    pub image_size: usize,
    /// Patch size of the patch-embedding convolution.
    pub patch_size: usize,
    /// LayerNorm epsilon.
    #[serde(default = "default_siglip_eps")]
    pub layer_norm_eps: f64,
}

fn default_channels() -> usize {
    3
}
fn default_siglip_eps() -> f64 {
    1e-6
}

impl SiglipVisionConfig {
    /// `google/siglip-so400m-patch14-384`, the xGen-MM v1.5 vision encoder.
    pub fn so400m_patch14_384() -> Self {
        Self {
            hidden_size: 1152,
            intermediate_size: 4304,
            num_hidden_layers: 27,
            num_attention_heads: 16,
            num_channels: 3,
            image_size: 384,
            patch_size: 14,
            layer_norm_eps: 1e-6,
        }
    }

    /// A SigLIP-base-like tower (768 wide, 12 layers, 224 px, patch 16) used by benchmarks.
    pub fn base_patch16_224() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 16,
            layer_norm_eps: 1e-6,
        }
    }

    /// A tiny tower for tests and the demo (32 px, patch 8: 16 tokens a view).
    pub fn tiny() -> Self {
        Self {
            hidden_size: 64,
            intermediate_size: 128,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_channels: 3,
            image_size: 32,
            patch_size: 8,
            layer_norm_eps: 1e-6,
        }
    }

    /// Patches per side at the native resolution.
    pub fn grid_size(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Tokens a native-resolution view produces.
    pub fn num_patches(&self) -> usize {
        self.grid_size() * self.grid_size()
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    fn validate(&self) -> Result<(), ModelError> {
        check(
            self.num_attention_heads > 0,
            "vision_config.num_attention_heads must be > 0",
        )?;
        check(
            self.hidden_size.is_multiple_of(self.num_attention_heads),
            "vision_config.hidden_size must be divisible by num_attention_heads",
        )?;
        // The patch convolution floors: 384 px with patch 14 gives a 27 x 27 grid.
        check(
            self.patch_size > 0 && self.image_size >= self.patch_size,
            "vision_config.image_size must be at least patch_size",
        )
    }
}

/// Sizes of the perceiver resampler ("vision tokenizer").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerceiverConfig {
    /// Width of the incoming media tokens (the ViT width).
    pub dim: usize,
    /// Width of the output tokens (the LM width).
    pub dim_inner: usize,
    /// Number of (attention, feed-forward) layers.
    pub depth: usize,
    /// Attention heads.
    pub heads: usize,
    /// Width of one head.
    pub dim_head: usize,
    /// Latent queries, i.e. output tokens per group.
    pub num_latents: usize,
    /// Feed-forward expansion factor.
    pub ff_mult: usize,
    /// LayerNorm epsilon (PyTorch default).
    pub layer_norm_eps: f64,
}

impl PerceiverConfig {
    /// The released resampler with 128 latents: depth 6, 16 heads of 96.
    pub fn xgenmm_128(dim: usize, dim_inner: usize) -> Self {
        Self {
            dim,
            dim_inner,
            depth: 6,
            heads: 16,
            dim_head: 96,
            num_latents: 128,
            ff_mult: 4,
            layer_norm_eps: 1e-5,
        }
    }

    /// The same resampler with 64 latents (the reference's argparse default).
    pub fn xgenmm_64(dim: usize, dim_inner: usize) -> Self {
        Self {
            num_latents: 64,
            ..Self::xgenmm_128(dim, dim_inner)
        }
    }

    /// Width of the attention's inner projection.
    pub fn inner_dim(&self) -> usize {
        self.heads * self.dim_head
    }
}

/// LongRoPE ("su") scaling of the rotary frequencies, as used by the 128k Phi-3 variants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LongRopeScaling {
    /// Per-frequency divisors used while the sequence fits `original_max_position_embeddings`.
    pub short_factor: Vec<f64>,
    /// Per-frequency divisors used beyond it.
    pub long_factor: Vec<f64>,
    /// Explicit scale factor (else `max_position_embeddings / original_max_position_embeddings`).
    #[serde(default)]
    pub factor: Option<f64>,
    /// Explicit cos/sin multiplier (else `sqrt(1 + ln(factor) / ln(original))`, 1 when factor <= 1).
    #[serde(default)]
    pub attention_factor: Option<f64>,
}

/// Sizes and options of the Phi-3 decoder (HF `Phi3Config`, defaults = Phi-3-mini-4k).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Phi3Config {
    /// Rows of the embedding table and of the output head.
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (equal to query heads in Phi-3-mini).
    pub num_key_value_heads: usize,
    /// Maximum positions.
    pub max_position_embeddings: usize,
    /// Positions seen in pre-training (LongRoPE switches factors above it).
    pub original_max_position_embeddings: usize,
    /// RoPE base.
    pub rope_theta: f64,
    /// Optional LongRoPE scaling.
    pub rope_scaling: Option<LongRopeScaling>,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Sliding attention window (keys with `q - k >= window` are masked), if any.
    pub sliding_window: Option<usize>,
    /// Beginning-of-sequence id from the config (informational; the tokenizer is authoritative).
    pub bos_token_id: Option<u32>,
    /// End-of-sequence id from the config (informational).
    pub eos_token_id: Option<u32>,
    /// Padding id from the config (informational).
    pub pad_token_id: Option<u32>,
}

impl Phi3Config {
    /// `microsoft/Phi-3-mini-4k-instruct` with the xGen-MM override `sliding_window = 2047`.
    pub fn phi3_mini_4k() -> Self {
        Self {
            vocab_size: 32064,
            hidden_size: 3072,
            intermediate_size: 8192,
            num_hidden_layers: 32,
            num_attention_heads: 32,
            num_key_value_heads: 32,
            max_position_embeddings: 4096,
            original_max_position_embeddings: 4096,
            rope_theta: 10000.0,
            rope_scaling: None,
            rms_norm_eps: 1e-5,
            sliding_window: Some(2047),
            bos_token_id: Some(1),
            eos_token_id: Some(32000),
            pad_token_id: Some(32000),
        }
    }

    /// A 12-layer, 768-wide decoder used by benchmarks (the "mid-size" config).
    pub fn mid() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_key_value_heads: 12,
            ..Self::phi3_mini_4k()
        }
    }

    /// A tiny decoder for tests and the demo. `vocab_size` must cover the tokenizer.
    pub fn tiny(vocab_size: usize) -> Self {
        Self {
            vocab_size,
            hidden_size: 64,
            intermediate_size: 128,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 4,
            max_position_embeddings: 2048,
            original_max_position_embeddings: 2048,
            rope_theta: 10000.0,
            rope_scaling: None,
            rms_norm_eps: 1e-5,
            sliding_window: Some(2047),
            bos_token_id: None,
            eos_token_id: None,
            pad_token_id: None,
        }
    }

    /// Width of one head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    fn validate(&self) -> Result<(), ModelError> {
        check(
            self.num_attention_heads > 0,
            "text_config.num_attention_heads must be > 0",
        )?;
        check(
            self.hidden_size.is_multiple_of(self.num_attention_heads),
            "text_config.hidden_size must be divisible by num_attention_heads",
        )?;
        check(
            self.num_key_value_heads > 0
                && self
                    .num_attention_heads
                    .is_multiple_of(self.num_key_value_heads),
            "text_config.num_attention_heads must be a multiple of num_key_value_heads",
        )?;
        check(
            self.head_dim().is_multiple_of(2),
            "text_config head dim must be even for RoPE",
        )?;
        if let Some(s) = &self.rope_scaling {
            let half = self.head_dim() / 2;
            check(
                s.short_factor.len() == half && s.long_factor.len() == half,
                "rope_scaling short_factor/long_factor must have head_dim/2 entries",
            )?;
        }
        Ok(())
    }

    /// Parses an HF `Phi3Config` JSON object, applying the `Phi3Config` defaults to every missing
    /// field (the released xGen-MM config relies on them).
    pub fn from_hf_value(v: &Value, ctx: &str) -> Result<Self, ModelError> {
        let d = Self::phi3_mini_4k();
        let hidden_size = get_usize(v, "hidden_size", ctx)?.unwrap_or(d.hidden_size);
        let num_attention_heads =
            get_usize(v, "num_attention_heads", ctx)?.unwrap_or(d.num_attention_heads);
        let max_position_embeddings =
            get_usize(v, "max_position_embeddings", ctx)?.unwrap_or(d.max_position_embeddings);
        // rope: old layout `rope_scaling` + `rope_theta`, new layout `rope_parameters`.
        let rope_obj = v
            .get("rope_scaling")
            .filter(|x| !x.is_null())
            .or_else(|| v.get("rope_parameters").filter(|x| !x.is_null()));
        let mut rope_theta = get_f64(v, "rope_theta", ctx)?.unwrap_or(d.rope_theta);
        let mut rope_scaling = None;
        let mut original = get_usize(v, "original_max_position_embeddings", ctx)?;
        if let Some(r) = rope_obj {
            if let Some(t) = get_f64(r, "rope_theta", ctx)? {
                rope_theta = t;
            }
            if original.is_none() {
                original = get_usize(r, "original_max_position_embeddings", ctx)?;
            }
            let kind = r
                .get("rope_type")
                .or_else(|| r.get("type"))
                .and_then(Value::as_str)
                .unwrap_or("default");
            match kind {
                "default" => {}
                "su" | "longrope" | "yarn" => {
                    let factors = |name: &str| -> Result<Vec<f64>, ModelError> {
                        let arr = r.get(name).and_then(Value::as_array).ok_or_else(|| {
                            ModelError::config(ctx, format!("rope_scaling.{name} is missing"))
                        })?;
                        arr.iter()
                            .map(|x| {
                                x.as_f64().ok_or_else(|| {
                                    ModelError::config(
                                        ctx,
                                        format!("rope_scaling.{name}: not a number"),
                                    )
                                })
                            })
                            .collect()
                    };
                    rope_scaling = Some(LongRopeScaling {
                        short_factor: factors("short_factor")?,
                        long_factor: factors("long_factor")?,
                        factor: get_f64(r, "factor", ctx)?,
                        attention_factor: get_f64(r, "attention_factor", ctx)?,
                    });
                }
                other => {
                    return Err(ModelError::config(
                        ctx,
                        format!(
                            "unsupported rope type {other:?} (supported: default, su, longrope)"
                        ),
                    ));
                }
            }
        }
        let sliding_window = match v.get("sliding_window") {
            None => d.sliding_window,
            Some(Value::Null) => None,
            Some(x) => Some(x.as_u64().ok_or_else(|| {
                ModelError::config(ctx, "sliding_window must be an integer or null")
            })? as usize),
        };
        let cfg = Self {
            vocab_size: get_usize(v, "vocab_size", ctx)?.unwrap_or(d.vocab_size),
            hidden_size,
            intermediate_size: get_usize(v, "intermediate_size", ctx)?
                .unwrap_or(d.intermediate_size),
            num_hidden_layers: get_usize(v, "num_hidden_layers", ctx)?
                .unwrap_or(d.num_hidden_layers),
            num_attention_heads,
            num_key_value_heads: get_usize(v, "num_key_value_heads", ctx)?
                .unwrap_or(num_attention_heads),
            max_position_embeddings,
            original_max_position_embeddings: original.unwrap_or(max_position_embeddings),
            rope_theta,
            rope_scaling,
            rms_norm_eps: get_f64(v, "rms_norm_eps", ctx)?.unwrap_or(d.rms_norm_eps),
            sliding_window,
            bos_token_id: get_id(v, "bos_token_id", d.bos_token_id),
            eos_token_id: get_id(v, "eos_token_id", d.eos_token_id),
            pad_token_id: get_id(v, "pad_token_id", d.pad_token_id),
        };
        cfg.validate().map_err(|e| in_file(e, ctx))?;
        Ok(cfg)
    }
}

/// How images are turned into views.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AspectMode {
    /// A global view plus grid crops (v1.5 default).
    AnyRes,
    /// A single squashed view (pre-training).
    Fixed,
}

/// The xGen-MM composite: SigLIP → perceiver resampler → Phi-3, with the decoupled vocabulary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct XGenMMConfig {
    /// Vision encoder sizes.
    pub vision: SiglipVisionConfig,
    /// Resampler sizes.
    pub resampler: PerceiverConfig,
    /// Language model sizes.
    pub text: Phi3Config,
    /// Vocabulary served by the original table and head (`initial_tokenizer_len`).
    pub initial_tokenizer_len: usize,
    /// Extra rows (`<image>`, `<image placeholder>`, `<|endofchunk|>`).
    pub num_additional_tokens: usize,
    /// Any-res or fixed single view.
    pub image_aspect_ratio: AspectMode,
    /// Resample each any-res group separately with its padding mask (v1.5: true).
    pub anyres_patch_sampling: bool,
    /// Candidate any-res grids as (width, height) in pixels, in selection order.
    pub anyres_grids: Vec<(usize, usize)>,
}

impl XGenMMConfig {
    /// The released `Salesforce/xgen-mm-phi3-mini-*-r-v1.5` sizes.
    pub fn xgenmm_phi3_mini_v1_5() -> Self {
        let vision = SiglipVisionConfig::so400m_patch14_384();
        let text = Phi3Config::phi3_mini_4k();
        Self {
            resampler: PerceiverConfig::xgenmm_128(vision.hidden_size, text.hidden_size),
            anyres_grids: default_grids(vision.image_size),
            vision,
            text,
            initial_tokenizer_len: 32012,
            num_additional_tokens: 3,
            image_aspect_ratio: AspectMode::AnyRes,
            anyres_patch_sampling: true,
        }
    }

    /// A mid-size config for benchmarks: SigLIP-base-like vision, 12-layer 768-wide decoder.
    pub fn mid() -> Self {
        let vision = SiglipVisionConfig::base_patch16_224();
        let text = Phi3Config::mid();
        Self {
            resampler: PerceiverConfig {
                depth: 2,
                heads: 8,
                dim_head: 64,
                num_latents: 64,
                ..PerceiverConfig::xgenmm_128(vision.hidden_size, text.hidden_size)
            },
            anyres_grids: default_grids(vision.image_size),
            vision,
            text,
            initial_tokenizer_len: 32012,
            num_additional_tokens: 3,
            image_aspect_ratio: AspectMode::AnyRes,
            anyres_patch_sampling: true,
        }
    }

    /// A tiny config (a few MB) for tests and the demo. `initial_tokenizer_len` is the tokenizer
    /// length before the three media tokens are added; the table gets a few dead rows on top, as
    /// the released one does.
    pub fn tiny(initial_tokenizer_len: usize) -> Self {
        let vision = SiglipVisionConfig::tiny();
        let text = Phi3Config::tiny(initial_tokenizer_len.div_ceil(64) * 64);
        Self {
            resampler: PerceiverConfig {
                dim: vision.hidden_size,
                dim_inner: text.hidden_size,
                depth: 2,
                heads: 4,
                dim_head: 16,
                num_latents: 8,
                ff_mult: 4,
                layer_norm_eps: 1e-5,
            },
            anyres_grids: default_grids(vision.image_size),
            vision,
            text,
            initial_tokenizer_len,
            num_additional_tokens: 3,
            image_aspect_ratio: AspectMode::AnyRes,
            anyres_patch_sampling: true,
        }
    }

    /// Looks a preset up by name: `xgenmm-phi3-mini-v1.5`, `mid`, or `tiny` (with the given
    /// initial tokenizer length).
    pub fn preset(name: &str, initial_tokenizer_len: usize) -> Result<Self, ModelError> {
        match name {
            "xgenmm-phi3-mini-v1.5" => Ok(Self::xgenmm_phi3_mini_v1_5()),
            "mid" => Ok(Self::mid()),
            "tiny" => Ok(Self::tiny(initial_tokenizer_len)),
            other => Err(ModelError::Config {
                path: "<preset>".into(),
                msg: format!("unknown preset {other:?} (xgenmm-phi3-mini-v1.5, mid, tiny)"),
            }),
        }
    }

    /// Size of the full output vocabulary (`initial_tokenizer_len + num_additional_tokens`).
    pub fn output_vocab(&self) -> usize {
        self.initial_tokenizer_len + self.num_additional_tokens
    }

    /// Checks internal consistency.
    pub fn validate(&self) -> Result<(), ModelError> {
        self.vision.validate()?;
        self.text.validate()?;
        check(
            self.resampler.dim == self.vision.hidden_size,
            "vision_tokenizer dim must equal the vision hidden size",
        )?;
        check(
            self.resampler.dim_inner == self.text.hidden_size,
            "vision_tokenizer lang_embedding_dim must equal the text hidden size",
        )?;
        check(
            self.initial_tokenizer_len <= self.text.vocab_size,
            "initial_tokenizer_len must not exceed text_config.vocab_size",
        )?;
        check(
            self.image_aspect_ratio == AspectMode::Fixed || self.anyres_patch_sampling,
            "anyres without patch sampling (one padded sequence per image) is not supported; \
             xGen-MM v1.5 uses anyres_patch_sampling = true",
        )?;
        for &(w, h) in &self.anyres_grids {
            check(
                w % self.vision.image_size == 0
                    && h % self.vision.image_size == 0
                    && w > 0
                    && h > 0,
                "anyres_grids entries must be positive multiples of the image size",
            )?;
        }
        Ok(())
    }

    /// Parses an xGen-MM `config.json` text (see the module docs). `ctx` names the file in errors.
    pub fn from_hf_json(text: &str, ctx: &str) -> Result<Self, ModelError> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| ModelError::config(ctx, format!("invalid JSON: {e}")))?;
        Self::from_hf_value(&v, ctx)
    }

    /// Parses an already-decoded xGen-MM `config.json`.
    pub fn from_hf_value(v: &Value, ctx: &str) -> Result<Self, ModelError> {
        let d = Self::xgenmm_phi3_mini_v1_5();
        let empty = Value::Object(Default::default());
        let text_v = v.get("text_config").unwrap_or(&empty);
        let text = Phi3Config::from_hf_value(text_v, &format!("{ctx}: text_config"))?;
        let initial_tokenizer_len = get_usize(text_v, "initial_tokenizer_len", ctx)?
            .or(get_usize(v, "initial_tokenizer_len", ctx)?)
            .unwrap_or(d.initial_tokenizer_len);

        let venc = v.get("vision_encoder_config").unwrap_or(&empty);
        let vision = match venc.get("vision_config") {
            Some(vc) => {
                let c = format!("{ctx}: vision_encoder_config.vision_config");
                SiglipVisionConfig {
                    hidden_size: require_usize(vc, "hidden_size", &c)?,
                    intermediate_size: require_usize(vc, "intermediate_size", &c)?,
                    num_hidden_layers: require_usize(vc, "num_hidden_layers", &c)?,
                    num_attention_heads: require_usize(vc, "num_attention_heads", &c)?,
                    num_channels: get_usize(vc, "num_channels", &c)?.unwrap_or(3),
                    image_size: require_usize(vc, "image_size", &c)?,
                    patch_size: require_usize(vc, "patch_size", &c)?,
                    layer_norm_eps: get_f64(vc, "layer_norm_eps", &c)?.unwrap_or(1e-6),
                }
            }
            None => d.vision.clone(),
        };
        let image_aspect_ratio = match venc.get("image_aspect_ratio").and_then(Value::as_str) {
            None | Some("anyres") => AspectMode::AnyRes,
            Some("pad") | Some("none") | Some("fixed") => AspectMode::Fixed,
            Some(other) => {
                return Err(ModelError::config(
                    ctx,
                    format!("vision_encoder_config.image_aspect_ratio {other:?} is not supported"),
                ));
            }
        };
        let anyres_patch_sampling = venc
            .get("anyres_patch_sampling")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        let anyres_grids = match venc.get("anyres_grids") {
            None | Some(Value::Null) => default_grids(vision.image_size),
            Some(g) => parse_grids(g).ok_or_else(|| {
                ModelError::config(
                    ctx,
                    "vision_encoder_config.anyres_grids must be [[w, h], ...]",
                )
            })?,
        };

        let vtok = v.get("vision_tokenizer_config").unwrap_or(&empty);
        let c = format!("{ctx}: vision_tokenizer_config");
        let base = PerceiverConfig::xgenmm_128(vision.hidden_size, text.hidden_size);
        let resampler = PerceiverConfig {
            dim: get_usize(vtok, "vis_feature_dim", &c)?.unwrap_or(vision.hidden_size),
            dim_inner: get_usize(vtok, "lang_embedding_dim", &c)?.unwrap_or(text.hidden_size),
            depth: get_usize(vtok, "depth", &c)?.unwrap_or(base.depth),
            heads: get_usize(vtok, "heads", &c)?.unwrap_or(base.heads),
            dim_head: get_usize(vtok, "dim_head", &c)?.unwrap_or(base.dim_head),
            num_latents: get_usize(vtok, "num_vis_tokens", &c)?.unwrap_or(base.num_latents),
            ff_mult: get_usize(vtok, "ff_mult", &c)?.unwrap_or(base.ff_mult),
            layer_norm_eps: 1e-5,
        };
        let num_additional_tokens =
            get_usize(v, "num_additional_tokens", ctx)?.unwrap_or(d.num_additional_tokens);
        let cfg = Self {
            vision,
            resampler,
            text,
            initial_tokenizer_len,
            num_additional_tokens,
            image_aspect_ratio,
            anyres_patch_sampling,
            anyres_grids,
        };
        cfg.validate().map_err(|e| in_file(e, ctx))?;
        Ok(cfg)
    }

    /// Renders this config as an HF-style xGen-MM `config.json` value that
    /// [`from_hf_value`](Self::from_hf_value) reads back identically.
    pub fn to_hf_value(&self) -> Value {
        let t = &self.text;
        let mut text = serde_json::json!({
            "model_type": "phi3",
            "vocab_size": t.vocab_size,
            "hidden_size": t.hidden_size,
            "intermediate_size": t.intermediate_size,
            "num_hidden_layers": t.num_hidden_layers,
            "num_attention_heads": t.num_attention_heads,
            "num_key_value_heads": t.num_key_value_heads,
            "max_position_embeddings": t.max_position_embeddings,
            "original_max_position_embeddings": t.original_max_position_embeddings,
            "rope_theta": t.rope_theta,
            "rms_norm_eps": t.rms_norm_eps,
            "sliding_window": t.sliding_window,
            "initial_tokenizer_len": self.initial_tokenizer_len,
            "bos_token_id": t.bos_token_id,
            "eos_token_id": t.eos_token_id,
            "pad_token_id": t.pad_token_id,
            "tie_word_embeddings": false,
            "hidden_act": "silu",
        });
        if let Some(s) = &t.rope_scaling {
            text["rope_scaling"] = serde_json::json!({
                "type": "longrope",
                "short_factor": s.short_factor,
                "long_factor": s.long_factor,
                "factor": s.factor,
                "attention_factor": s.attention_factor,
            });
        }
        let v = &self.vision;
        let r = &self.resampler;
        serde_json::json!({
            "architectures": ["XGenMMModelForConditionalGeneration"],
            "model_type": "xgenmm",
            "num_additional_tokens": self.num_additional_tokens,
            "text_config": text,
            "vision_encoder_config": {
                "model_type": "xgenmm_vision_encoder",
                "image_aspect_ratio": match self.image_aspect_ratio {
                    AspectMode::AnyRes => "anyres",
                    AspectMode::Fixed => "pad",
                },
                "anyres_patch_sampling": self.anyres_patch_sampling,
                "anyres_grids": self.anyres_grids.iter().map(|&(w, h)| [w, h]).collect::<Vec<_>>(),
                "vision_config": {
                    "model_type": "siglip_vision_model",
                    "hidden_size": v.hidden_size,
                    "intermediate_size": v.intermediate_size,
                    "num_hidden_layers": v.num_hidden_layers,
                    "num_attention_heads": v.num_attention_heads,
                    "num_channels": v.num_channels,
                    "image_size": v.image_size,
                    "patch_size": v.patch_size,
                    "layer_norm_eps": v.layer_norm_eps,
                    "hidden_act": "gelu_pytorch_tanh",
                },
            },
            "vision_tokenizer_config": {
                "model_type": "xgenmm_vision_tokenizer",
                "vis_feature_dim": r.dim,
                "lang_embedding_dim": r.dim_inner,
                "num_vis_tokens": r.num_latents,
                "depth": r.depth,
                "heads": r.heads,
                "dim_head": r.dim_head,
                "ff_mult": r.ff_mult,
            },
        })
    }
}

/// Parses an HF `SiglipVisionConfig` (a `siglip_vision_model` config.json, or a `siglip` one with
/// a `vision_config` object).
pub fn siglip_from_hf_value(v: &Value, ctx: &str) -> Result<SiglipVisionConfig, ModelError> {
    let vc = v.get("vision_config").unwrap_or(v);
    let cfg = SiglipVisionConfig {
        hidden_size: require_usize(vc, "hidden_size", ctx)?,
        intermediate_size: require_usize(vc, "intermediate_size", ctx)?,
        num_hidden_layers: require_usize(vc, "num_hidden_layers", ctx)?,
        num_attention_heads: require_usize(vc, "num_attention_heads", ctx)?,
        num_channels: get_usize(vc, "num_channels", ctx)?.unwrap_or(3),
        image_size: require_usize(vc, "image_size", ctx)?,
        patch_size: require_usize(vc, "patch_size", ctx)?,
        layer_norm_eps: get_f64(vc, "layer_norm_eps", ctx)?.unwrap_or(1e-6),
    };
    cfg.validate().map_err(|e| in_file(e, ctx))?;
    Ok(cfg)
}

/// The v1.5 candidate grids (1,2),(2,1),(2,2),(3,1),(1,3) as (width, height) in pixels.
pub fn default_grids(base: usize) -> Vec<(usize, usize)> {
    [(1, 2), (2, 1), (2, 2), (3, 1), (1, 3)]
        .iter()
        .map(|&(m, n)| (m * base, n * base))
        .collect()
}

fn parse_grids(v: &Value) -> Option<Vec<(usize, usize)>> {
    v.as_array()?
        .iter()
        .map(|p| {
            let p = p.as_array()?;
            if p.len() != 2 {
                return None;
            }
            Some((p[0].as_u64()? as usize, p[1].as_u64()? as usize))
        })
        .collect()
}

fn check(cond: bool, msg: &str) -> Result<(), ModelError> {
    if cond {
        Ok(())
    } else {
        Err(ModelError::config("<config>", msg))
    }
}

fn get_usize(v: &Value, key: &str, ctx: &str) -> Result<Option<usize>, ModelError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
            ModelError::config(ctx, format!("field {key:?} must be an unsigned integer"))
        }),
    }
}

fn require_usize(v: &Value, key: &str, ctx: &str) -> Result<usize, ModelError> {
    get_usize(v, key, ctx)?
        .ok_or_else(|| ModelError::config(ctx, format!("missing required field {key:?}")))
}

fn get_f64(v: &Value, key: &str, ctx: &str) -> Result<Option<f64>, ModelError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_f64()
            .map(Some)
            .ok_or_else(|| ModelError::config(ctx, format!("field {key:?} must be a number"))),
    }
}

/// A token id field: absent → the default, `null` → none, a list → its first entry.
fn get_id(v: &Value, key: &str, default: Option<u32>) -> Option<u32> {
    match v.get(key) {
        None => default,
        Some(Value::Array(a)) => a.first()?.as_u64().map(|x| x as u32),
        Some(x) => x.as_u64().map(|x| x as u32),
    }
}

/// Re-labels a validation error with the file it came from.
fn in_file(e: ModelError, ctx: &str) -> ModelError {
    match e {
        ModelError::Config { msg, .. } => ModelError::config(ctx, msg),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_config_gets_phi3_defaults() {
        let text = r#"{"architectures":["XGenMMModelForConditionalGeneration"],"model_type":"xgenmm",
            "text_config":{"initial_tokenizer_len":32012,"model_type":"phi3","sliding_window":2047,
            "torch_dtype":"bfloat16"},
            "vision_encoder_config":{"model_type":"xgenmm_vision_encoder","image_aspect_ratio":"anyres",
            "anyres_patch_sampling":true},
            "vision_tokenizer_config":{"model_type":"xgenmm_vision_tokenizer"}}"#;
        let cfg = XGenMMConfig::from_hf_json(text, "config.json").unwrap();
        assert_eq!(cfg, XGenMMConfig::xgenmm_phi3_mini_v1_5());
    }

    #[test]
    fn hf_round_trip() {
        let cfg = XGenMMConfig::tiny(300);
        let back = XGenMMConfig::from_hf_value(&cfg.to_hf_value(), "x").unwrap();
        assert_eq!(cfg, back);
    }

    #[test]
    fn vision_config_without_hidden_size_is_an_error() {
        let text = r#"{"vision_encoder_config":{"vision_config":{"intermediate_size":8,
            "num_hidden_layers":1,"num_attention_heads":1,"image_size":8,"patch_size":4}}}"#;
        let err = XGenMMConfig::from_hf_json(text, "cfg.json")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cfg.json") && err.contains("hidden_size"),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1);
    }

    #[test]
    fn longrope_is_parsed() {
        let v = serde_json::json!({"hidden_size": 64, "num_attention_heads": 4,
            "max_position_embeddings": 128, "original_max_position_embeddings": 32,
            "rope_scaling": {"type": "su", "short_factor": vec![1.0; 8], "long_factor": vec![2.0; 8]}});
        let c = Phi3Config::from_hf_value(&v, "t").unwrap();
        assert_eq!(c.original_max_position_embeddings, 32);
        assert_eq!(c.rope_scaling.unwrap().long_factor, vec![2.0; 8]);
    }
}
