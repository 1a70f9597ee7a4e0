//! The HF `config.json` files, as serde structs mirroring their JSON: xGen-MM's
//! (`text_config`, `vision_encoder_config`, `vision_tokenizer_config`), Phi-3's and SigLIP's.
//! Every field is optional where the HF class has a default, so a released config that lists
//! only a few fields reads as the HF class would (docs/model.md §"`config.json`"); unknown fields
//! are ignored. [`XGenMMConfig::from_hf_value`] and [`XGenMMConfig::to_hf_value`] convert between
//! these and our configs.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::{
    AspectMode, LongRopeScaling, PerceiverConfig, Phi3Config, SiglipVisionConfig, XGenMMConfig,
    default_grids, in_file,
};
use crate::error::ModelError;

/// Reads `null` as `Some(None)` and an absent field (through `#[serde(default)]`) as `None`, for
/// fields where "absent" means the HF default and `null` means "none".
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// A token id as HF writes it: one id, or a list whose first entry counts. Anything else (a
/// string, a negative number) reads as no id, as HF's tokenizer-less code paths ignore it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
enum TokenId {
    One(u32),
    Many(Vec<u32>),
    Other(Value),
}

impl TokenId {
    fn first(&self) -> Option<u32> {
        match self {
            TokenId::One(id) => Some(*id),
            TokenId::Many(ids) => ids.first().copied(),
            TokenId::Other(_) => None,
        }
    }
}

/// Phi-3's RoPE settings: the old `rope_scaling` object or the newer `rope_parameters`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct HfRope {
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rope_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rope_theta: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    original_max_position_embeddings: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    short_factor: Option<Vec<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    long_factor: Option<Vec<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    factor: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    attention_factor: Option<f64>,
}

/// HF `Phi3Config` (also xGen-MM's `text_config`, which adds `initial_tokenizer_len`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct HfPhi3 {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    model_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vocab_size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hidden_size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    intermediate_size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    num_hidden_layers: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    num_attention_heads: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    num_key_value_heads: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_position_embeddings: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    original_max_position_embeddings: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rope_theta: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rope_scaling: Option<HfRope>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rope_parameters: Option<HfRope>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rms_norm_eps: Option<f64>,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    sliding_window: Option<Option<usize>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    initial_tokenizer_len: Option<usize>,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    bos_token_id: Option<Option<TokenId>>,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    eos_token_id: Option<Option<TokenId>>,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    pad_token_id: Option<Option<TokenId>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tie_word_embeddings: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hidden_act: Option<String>,
}

/// HF `SiglipVisionConfig` (a `siglip_vision_model` file, or xGen-MM's
/// `vision_encoder_config.vision_config`): the sizes are required, as blip3 cannot guess them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct HfSiglip {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    model_type: Option<String>,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    num_channels: Option<usize>,
    image_size: usize,
    patch_size: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    layer_norm_eps: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hidden_act: Option<String>,
}

/// xGen-MM's `vision_encoder_config`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct HfVisionEncoder {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    model_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    image_aspect_ratio: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    anyres_patch_sampling: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    anyres_grids: Option<Vec<[usize; 2]>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vision_config: Option<HfSiglip>,
}

/// xGen-MM's `vision_tokenizer_config` (the perceiver resampler).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct HfVisionTokenizer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    model_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vis_feature_dim: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lang_embedding_dim: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    num_vis_tokens: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    depth: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    heads: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dim_head: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ff_mult: Option<usize>,
}

/// xGen-MM's `config.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct HfXGenMM {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    architectures: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    model_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    num_additional_tokens: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    initial_tokenizer_len: Option<usize>,
    #[serde(default)]
    text_config: Option<HfPhi3>,
    #[serde(default)]
    vision_encoder_config: Option<HfVisionEncoder>,
    #[serde(default)]
    vision_tokenizer_config: Option<HfVisionTokenizer>,
}

/// Decodes a JSON value into one of the HF structs; errors name `ctx` and the field.
fn decode<T: for<'de> Deserialize<'de>>(v: &Value, ctx: &str) -> Result<T, ModelError> {
    T::deserialize(v).map_err(|e| ModelError::config(ctx, e.to_string()))
}

impl HfRope {
    fn kind(&self) -> &str {
        self.rope_type
            .as_deref()
            .or(self.kind.as_deref())
            .unwrap_or("default")
    }
}

impl HfPhi3 {
    /// Our config, with `Phi3Config`'s defaults (Phi-3-mini) for every absent field.
    pub(super) fn to_config(&self, ctx: &str) -> Result<Phi3Config, ModelError> {
        let d = Phi3Config::phi3_mini_4k();
        let max_position_embeddings = self
            .max_position_embeddings
            .unwrap_or(d.max_position_embeddings);
        let rope = self.rope_scaling.as_ref().or(self.rope_parameters.as_ref());
        let mut rope_theta = self.rope_theta.unwrap_or(d.rope_theta);
        let mut original = self.original_max_position_embeddings;
        let mut rope_scaling = None;
        if let Some(r) = rope {
            if let Some(t) = r.rope_theta {
                rope_theta = t;
            }
            original = original.or(r.original_max_position_embeddings);
            match r.kind() {
                "default" => {}
                "su" | "longrope" | "yarn" => {
                    let factors = |f: &Option<Vec<f64>>, name: &str| {
                        f.clone().ok_or_else(|| {
                            ModelError::config(ctx, format!("rope_scaling.{name} is missing"))
                        })
                    };
                    rope_scaling = Some(LongRopeScaling {
                        short_factor: factors(&r.short_factor, "short_factor")?,
                        long_factor: factors(&r.long_factor, "long_factor")?,
                        factor: r.factor,
                        attention_factor: r.attention_factor,
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
        let num_attention_heads = self.num_attention_heads.unwrap_or(d.num_attention_heads);
        let id = |field: &Option<Option<TokenId>>, default: Option<u32>| match field {
            None => default,
            Some(v) => v.as_ref().and_then(TokenId::first),
        };
        let cfg = Phi3Config {
            vocab_size: self.vocab_size.unwrap_or(d.vocab_size),
            hidden_size: self.hidden_size.unwrap_or(d.hidden_size),
            intermediate_size: self.intermediate_size.unwrap_or(d.intermediate_size),
            num_hidden_layers: self.num_hidden_layers.unwrap_or(d.num_hidden_layers),
            num_attention_heads,
            num_key_value_heads: self.num_key_value_heads.unwrap_or(num_attention_heads),
            max_position_embeddings,
            original_max_position_embeddings: original.unwrap_or(max_position_embeddings),
            rope_theta,
            rope_scaling,
            rms_norm_eps: self.rms_norm_eps.unwrap_or(d.rms_norm_eps),
            sliding_window: match self.sliding_window {
                None => d.sliding_window,
                Some(w) => w,
            },
            bos_token_id: id(&self.bos_token_id, d.bos_token_id),
            eos_token_id: id(&self.eos_token_id, d.eos_token_id),
            pad_token_id: id(&self.pad_token_id, d.pad_token_id),
        };
        cfg.validate().map_err(|e| in_file(e, ctx))?;
        Ok(cfg)
    }

    fn from_config(t: &Phi3Config, initial_tokenizer_len: usize) -> Self {
        HfPhi3 {
            model_type: Some("phi3".into()),
            vocab_size: Some(t.vocab_size),
            hidden_size: Some(t.hidden_size),
            intermediate_size: Some(t.intermediate_size),
            num_hidden_layers: Some(t.num_hidden_layers),
            num_attention_heads: Some(t.num_attention_heads),
            num_key_value_heads: Some(t.num_key_value_heads),
            max_position_embeddings: Some(t.max_position_embeddings),
            original_max_position_embeddings: Some(t.original_max_position_embeddings),
            rope_theta: Some(t.rope_theta),
            rope_scaling: t.rope_scaling.as_ref().map(|s| HfRope {
                kind: Some("longrope".into()),
                short_factor: Some(s.short_factor.clone()),
                long_factor: Some(s.long_factor.clone()),
                factor: s.factor,
                attention_factor: s.attention_factor,
                ..HfRope::default()
            }),
            rope_parameters: None,
            rms_norm_eps: Some(t.rms_norm_eps),
            sliding_window: Some(t.sliding_window),
            initial_tokenizer_len: Some(initial_tokenizer_len),
            bos_token_id: Some(t.bos_token_id.map(TokenId::One)),
            eos_token_id: Some(t.eos_token_id.map(TokenId::One)),
            pad_token_id: Some(t.pad_token_id.map(TokenId::One)),
            tie_word_embeddings: Some(false),
            hidden_act: Some("silu".into()),
        }
    }
}

impl HfSiglip {
    fn to_config(&self, ctx: &str) -> Result<SiglipVisionConfig, ModelError> {
        let cfg = SiglipVisionConfig {
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            num_channels: self.num_channels.unwrap_or(3),
            image_size: self.image_size,
            patch_size: self.patch_size,
            layer_norm_eps: self.layer_norm_eps.unwrap_or(1e-6),
        };
        cfg.validate().map_err(|e| in_file(e, ctx))?;
        Ok(cfg)
    }

    fn from_config(v: &SiglipVisionConfig) -> Self {
        HfSiglip {
            model_type: Some("siglip_vision_model".into()),
            hidden_size: v.hidden_size,
            intermediate_size: v.intermediate_size,
            num_hidden_layers: v.num_hidden_layers,
            num_attention_heads: v.num_attention_heads,
            num_channels: Some(v.num_channels),
            image_size: v.image_size,
            patch_size: v.patch_size,
            layer_norm_eps: Some(v.layer_norm_eps),
            hidden_act: Some("gelu_pytorch_tanh".into()),
        }
    }
}

impl Phi3Config {
    /// Parses an HF `Phi3Config` JSON object, applying the `Phi3Config` defaults to every missing
    /// field (the released xGen-MM config relies on them).
    pub fn from_hf_value(v: &Value, ctx: &str) -> Result<Self, ModelError> {
        decode::<HfPhi3>(v, ctx)?.to_config(ctx)
    }
}

/// Parses an HF `SiglipVisionConfig` (a `siglip_vision_model` config.json, or a `siglip` one with
/// a `vision_config` object).
pub fn siglip_from_hf_value(v: &Value, ctx: &str) -> Result<SiglipVisionConfig, ModelError> {
    let vc = v.get("vision_config").unwrap_or(v);
    decode::<HfSiglip>(vc, ctx)?.to_config(ctx)
}

impl XGenMMConfig {
    /// Parses an xGen-MM `config.json` text (see the module docs). `ctx` names the file in errors.
    pub fn from_hf_json(text: &str, ctx: &str) -> Result<Self, ModelError> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| ModelError::config(ctx, format!("invalid JSON: {e}")))?;
        Self::from_hf_value(&v, ctx)
    }

    /// Parses an already-decoded xGen-MM `config.json`: absent fields take the released v1.5
    /// values (Phi-3-mini, SigLIP so400m/14-384, 128 latents, the five v1.5 canvases).
    pub fn from_hf_value(v: &Value, ctx: &str) -> Result<Self, ModelError> {
        let d = Self::xgenmm_phi3_mini_v1_5();
        let hf: HfXGenMM = decode(v, ctx)?;
        let text_hf = hf.text_config.unwrap_or_default();
        let text = text_hf.to_config(&format!("{ctx}: text_config"))?;
        let initial_tokenizer_len = text_hf
            .initial_tokenizer_len
            .or(hf.initial_tokenizer_len)
            .unwrap_or(d.initial_tokenizer_len);
        let venc = hf.vision_encoder_config.unwrap_or_default();
        let vision = match &venc.vision_config {
            Some(vc) => vc.to_config(&format!("{ctx}: vision_encoder_config.vision_config"))?,
            None => d.vision.clone(),
        };
        let image_aspect_ratio = match venc.image_aspect_ratio.as_deref() {
            None | Some("anyres") => AspectMode::AnyRes,
            Some("pad") | Some("none") | Some("fixed") => AspectMode::Fixed,
            Some(other) => {
                return Err(ModelError::config(
                    ctx,
                    format!("vision_encoder_config.image_aspect_ratio {other:?} is not supported"),
                ));
            }
        };
        let anyres_grids = match &venc.anyres_grids {
            None => default_grids(vision.image_size),
            Some(g) => g.iter().map(|&[w, h]| (w, h)).collect(),
        };
        let vtok = hf.vision_tokenizer_config.unwrap_or_default();
        let base = PerceiverConfig::xgenmm_128(vision.hidden_size, text.hidden_size);
        let resampler = PerceiverConfig {
            dim: vtok.vis_feature_dim.unwrap_or(vision.hidden_size),
            dim_inner: vtok.lang_embedding_dim.unwrap_or(text.hidden_size),
            depth: vtok.depth.unwrap_or(base.depth),
            heads: vtok.heads.unwrap_or(base.heads),
            dim_head: vtok.dim_head.unwrap_or(base.dim_head),
            num_latents: vtok.num_vis_tokens.unwrap_or(base.num_latents),
            ff_mult: vtok.ff_mult.unwrap_or(base.ff_mult),
            layer_norm_eps: 1e-5,
        };
        let cfg = Self {
            vision,
            resampler,
            text,
            initial_tokenizer_len,
            num_additional_tokens: hf.num_additional_tokens.unwrap_or(d.num_additional_tokens),
            image_aspect_ratio,
            anyres_patch_sampling: venc.anyres_patch_sampling.unwrap_or(true),
            anyres_grids,
        };
        cfg.validate().map_err(|e| in_file(e, ctx))?;
        Ok(cfg)
    }

    /// Renders this config as an HF-style xGen-MM `config.json` value that
    /// [`from_hf_value`](Self::from_hf_value) reads back identically.
    pub fn to_hf_value(&self) -> Value {
        let r = &self.resampler;
        let hf = HfXGenMM {
            architectures: Some(vec!["XGenMMModelForConditionalGeneration".into()]),
            model_type: Some("xgenmm".into()),
            num_additional_tokens: Some(self.num_additional_tokens),
            initial_tokenizer_len: None,
            text_config: Some(HfPhi3::from_config(&self.text, self.initial_tokenizer_len)),
            vision_encoder_config: Some(HfVisionEncoder {
                model_type: Some("xgenmm_vision_encoder".into()),
                image_aspect_ratio: Some(
                    match self.image_aspect_ratio {
                        AspectMode::AnyRes => "anyres",
                        AspectMode::Fixed => "pad",
                    }
                    .into(),
                ),
                anyres_patch_sampling: Some(self.anyres_patch_sampling),
                anyres_grids: Some(self.anyres_grids.iter().map(|&(w, h)| [w, h]).collect()),
                vision_config: Some(HfSiglip::from_config(&self.vision)),
            }),
            vision_tokenizer_config: Some(HfVisionTokenizer {
                model_type: Some("xgenmm_vision_tokenizer".into()),
                vis_feature_dim: Some(r.dim),
                lang_embedding_dim: Some(r.dim_inner),
                num_vis_tokens: Some(r.num_latents),
                depth: Some(r.depth),
                heads: Some(r.heads),
                dim_head: Some(r.dim_head),
                ff_mult: Some(r.ff_mult),
            }),
        };
        serde_json::to_value(hf).unwrap_or(Value::Null)
    }
}
