//! Model configurations: one serde struct per component and presets. The HF `config.json` files
//! that released xGen-MM, Phi-3 and SigLIP checkpoints ship with are read through serde structs
//! mirroring them, in [`hf`].
//!
//! The released xGen-MM `config.json` lists only a few `text_config` fields and relies on the HF
//! `Phi3Config` defaults (Phi-3-mini's sizes) for the rest; [`XGenMMConfig::from_hf_json`] applies
//! those defaults field by field. Tiny checkpoints go through the same path: every size is read
//! from the file when present (see docs/model.md, "Checkpoint layout", and the optional
//! `vision_config` / `vision_tokenizer_config` extensions).

use serde::{Deserialize, Serialize};

use crate::error::ModelError;

mod hf;

pub use hf::siglip_from_hf_value;

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

    pub(crate) fn validate(&self) -> Result<(), ModelError> {
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

    pub(crate) fn validate(&self) -> Result<(), ModelError> {
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
}

/// The v1.5 candidate grids (1,2),(2,1),(2,2),(3,1),(1,3) as (width, height) in pixels.
pub fn default_grids(base: usize) -> Vec<(usize, usize)> {
    [(1, 2), (2, 1), (2, 2), (3, 1), (1, 3)]
        .iter()
        .map(|&(m, n)| (m * base, n * base))
        .collect()
}

fn check(cond: bool, msg: &str) -> Result<(), ModelError> {
    if cond {
        Ok(())
    } else {
        Err(ModelError::config("<config>", msg))
    }
}

/// Re-labels a validation error with the file it came from.
pub(crate) fn in_file(e: ModelError, ctx: &str) -> ModelError {
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

    #[test]
    fn null_and_list_fields_read_as_hf_does() {
        let v = serde_json::json!({"text_config": {"sliding_window": null,
            "eos_token_id": [32007, 32000], "pad_token_id": null, "bos_token_id": "x"}});
        let c = XGenMMConfig::from_hf_value(&v, "c").unwrap();
        assert_eq!(c.text.sliding_window, None);
        assert_eq!(c.text.eos_token_id, Some(32007));
        assert_eq!(c.text.pad_token_id, None);
        assert_eq!(c.text.bos_token_id, None);
        // Absent fields take the HF defaults instead.
        let d = XGenMMConfig::from_hf_value(&serde_json::json!({}), "d").unwrap();
        assert_eq!(
            d.text.sliding_window,
            Phi3Config::phi3_mini_4k().sliding_window
        );
        assert_eq!(d.text.bos_token_id, Phi3Config::phi3_mini_4k().bos_token_id);
        let err = XGenMMConfig::from_hf_value(
            &serde_json::json!({"text_config": {"hidden_size": 1.5}}),
            "e.json",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("e.json") && err.contains("1.5"), "{err}");
    }
}
