//! The xGen-MM tokenizer: a Phi-3 `tokenizer.json` plus the reference's additions.
//!
//! [`Blip3Tokenizer`] wraps a [`tokenizers::Tokenizer`] and applies, at load time and in this order,
//! what the reference (LAVIS `xgen-mm` branch, `open_flamingo/src/factory.py`) does to the Phi-3
//! tokenizer:
//!
//! 1. if the pad token is missing or equals the eos token, add `<pad>` as a special token and make
//!    it the pad token; the vocabulary size at this point is `initial_tokenizer_len`
//!    ([`Blip3Tokenizer::initial_len`], 32012 for Phi-3);
//! 2. add the special tokens `<image>`, `<image placeholder>`, `<|endofchunk|>`, in that order
//!    (32012, 32013, 32014 for Phi-3).
//!
//! Tokens that are already present are not added again, so loading a tokenizer saved by
//! [`Blip3Tokenizer::save`] (or a released xGen-MM tokenizer) is idempotent and yields the same ids.
//! No id is hard-coded anywhere: every id comes from the vocabulary. The three media tokens must end
//! up as the last three ids, in order, because the model's decoupled embedding maps ids
//! `>= initial_len` to its additional rows.
//!
//! # Special-token roles
//!
//! The roles (bos, eos, pad, unk) and `add_bos_token` come from `tokenizer_config.json` and
//! `special_tokens_map.json` (the latter wins, as in Hugging Face `from_pretrained`). Without either
//! file the Phi-3 defaults apply: bos `<s>`, eos `<|endoftext|>` (or `</s>` when absent), no pad
//! (so `<pad>` is added), and the BOS behaviour of the `tokenizer.json` post-processor is kept.
//! When `add_bos_token` is given, it wins over the `tokenizer.json` post-processor (as in Hugging
//! Face's Llama tokenizers): `true` installs a `<s> $A` template, `false` removes BOS insertion.
//!
//! # Findings on the reference tokenizer (docs/reference.md §3.4; open question 2 of §6)
//!
//! * **BOS is prepended.** The reference SFT code (`sft_data_utils.py`, `preprocess_phi_3_new`)
//!   renders the conversation with a chat template that starts with the BOS string, deletes every
//!   BOS string again and relies on the tokenizer to add BOS: its per-round token counting skips one
//!   leading token of every user round after the first ("skip the bos tokens") and subtracts the
//!   token count of `"<|assistant|>\n"` (BOS included) from assistant rounds. That bookkeeping only
//!   matches the full tokenization when the tokenizer prepends exactly one BOS; otherwise every
//!   sample would be flagged as a mismatch and trained on nothing. So xGen-MM was trained with BOS
//!   [code, inferred]. The template LAVIS installs is Phi-3-mini's original chat template (it starts
//!   with `{{ bos_token }}`), whose `tokenizer_config.json` said `add_bos_token: true` as far as we
//!   recall [unverified here]; later Phi-3-family configs say `false` (a third-party copy of one,
//!   with `model_max_length` 131072, reads `add_bos_token: false`, and the July 2024 report cited
//!   below passes `add_bos_token=True` explicitly). The tiny tokenizer asset says
//!   `add_bos_token: true`.
//! * **Slow tokenizer vs `tokenizer.json`.** Training and the model cards load the tokenizer with
//!   `use_fast=False` (the cards add `legacy=False`), i.e. the SentencePiece `LlamaTokenizer`. Two
//!   differences from a `tokenizer.json` matter:
//!   - Phi-3's `tokenizer_config.json` marks `<|assistant|>`, `<|system|>`, `<|end|>`, `<|user|>`
//!     and the placeholders `rstrip: true` (seen in a third-party copy of a Phi-3-family config;
//!     `<|endoftext|>` is `rstrip: false`); the slow tokenizer honours it and drops the whitespace
//!     (the newline of the chat template) after these tokens (Hugging Face transformers issue
//!     #32136, "phi-3's LlamaTokenizer ignores newline character", July 2024). A fast tokenizer built
//!     from `tokenizer.json` follows the flags stored in `tokenizer.json` instead, which need not
//!     agree (a Phi-3 fast tokenizer printout shows `rstrip=False` everywhere).
//!   - With `legacy=False` the slow tokenizer adds the SentencePiece `▁` prefix only at the very
//!     start of the input, never to text that follows a special token; a legacy `tokenizer.json`
//!     (normalizer `Prepend("▁")`) prefixes every text segment, a `Metaspace` pre-tokenizer with
//!     `prepend_scheme: "first"` does what the slow tokenizer does.
//!
//!   This module uses whatever `tokenizer.json` it is given; to reproduce the reference exactly the
//!   file must have `rstrip: true` on the chat tokens and `prepend_scheme: "first"`. The tiny asset
//!   (`data/assets/tiny-tokenizer/`, built by `make_tiny_tokenizer.py`) is made that way. These
//!   findings come from reading code and issues; they could not be checked against the real Phi-3
//!   files here, which were not available.
//!
//! Long because the reference findings above are documented beside the loading rules they shaped.

use std::path::Path;

use tokenizers::Tokenizer;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, PostProcessorWrapper};

use crate::error::DataError;

/// The media token that marks where an image goes; the model replaces its id by vision tokens.
pub const IMAGE_TOKEN: &str = "<image>";
/// The second media token added by the reference (unused in text, never trained).
pub const IMAGE_PLACEHOLDER_TOKEN: &str = "<image placeholder>";
/// The end-of-chunk token of interleaved documents (never trained, like the reference).
pub const END_OF_CHUNK_TOKEN: &str = "<|endofchunk|>";
/// The pad token added when the base tokenizer has none or pads with eos.
pub const PAD_TOKEN: &str = "<pad>";
/// The Phi-3 end-of-turn token; generation stops on it.
pub const END_TOKEN: &str = "<|end|>";
/// The Phi-3 system-turn token.
pub const SYSTEM_TOKEN: &str = "<|system|>";
/// The Phi-3 user-turn token.
pub const USER_TOKEN: &str = "<|user|>";
/// The Phi-3 assistant-turn token.
pub const ASSISTANT_TOKEN: &str = "<|assistant|>";

/// The three special tokens the reference appends, in the order they get their ids.
pub const MEDIA_TOKENS: [&str; 3] = [IMAGE_TOKEN, IMAGE_PLACEHOLDER_TOKEN, END_OF_CHUNK_TOKEN];

/// Phi-3's base vocabulary (ids below its first special token, `<|endoftext|>` = 32000).
pub const PHI3_BASE_VOCAB: usize = 32_000;

const TINY_TOKENIZER_JSON: &str = include_str!("../assets/tiny-tokenizer/tokenizer.json");
const TINY_TOKENIZER_CONFIG: &str = include_str!("../assets/tiny-tokenizer/tokenizer_config.json");

/// The special-token roles of a tokenizer, as `tokenizer_config.json` / `special_tokens_map.json`
/// state them. `None` means "not said"; [`Blip3Tokenizer`] then falls back to the Phi-3 defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenizerConfig {
    /// The beginning-of-sequence token (`<s>` for Phi-3).
    pub bos_token: Option<String>,
    /// The end-of-sequence token (`<|endoftext|>` for Phi-3).
    pub eos_token: Option<String>,
    /// The padding token (`<|endoftext|>` for Phi-3, `<pad>` once the reference has added it).
    pub pad_token: Option<String>,
    /// The unknown token (`<unk>` for Phi-3).
    pub unk_token: Option<String>,
    /// Whether encoding with special tokens prepends BOS.
    pub add_bos_token: Option<bool>,
    /// Whether encoding with special tokens appends EOS (must not be `true`: the chat-template
    /// masking assumes nothing is appended).
    pub add_eos_token: Option<bool>,
}

impl TokenizerConfig {
    /// Parses the JSON text of a `tokenizer_config.json` or `special_tokens_map.json`. Token values
    /// may be plain strings or `{"content": ...}` objects; unknown keys are ignored. `path` names the
    /// file in errors.
    pub fn from_json_str(text: &str, path: &str) -> Result<Self, DataError> {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| tokenizer_error(path, format!("invalid JSON: {e}")))?;
        let object = value
            .as_object()
            .ok_or_else(|| tokenizer_error(path, "expected a JSON object"))?;
        let token = |key: &str| -> Result<Option<String>, DataError> {
            match object.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                Some(serde_json::Value::Object(o)) => match o.get("content") {
                    Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                    _ => Err(tokenizer_error(
                        path,
                        format!("`{key}` has no string `content`"),
                    )),
                },
                Some(other) => Err(tokenizer_error(
                    path,
                    format!("`{key}` must be a string or an object, found {other}"),
                )),
            }
        };
        let flag = |key: &str| -> Result<Option<bool>, DataError> {
            match object.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::Bool(b)) => Ok(Some(*b)),
                Some(other) => Err(tokenizer_error(
                    path,
                    format!("`{key}` must be a boolean, found {other}"),
                )),
            }
        };
        Ok(TokenizerConfig {
            bos_token: token("bos_token")?,
            eos_token: token("eos_token")?,
            pad_token: token("pad_token")?,
            unk_token: token("unk_token")?,
            add_bos_token: flag("add_bos_token")?,
            add_eos_token: flag("add_eos_token")?,
        })
    }

    /// `self` with every value that `other` states replaced by `other`'s.
    pub fn overridden_by(self, other: TokenizerConfig) -> TokenizerConfig {
        TokenizerConfig {
            bos_token: other.bos_token.or(self.bos_token),
            eos_token: other.eos_token.or(self.eos_token),
            pad_token: other.pad_token.or(self.pad_token),
            unk_token: other.unk_token.or(self.unk_token),
            add_bos_token: other.add_bos_token.or(self.add_bos_token),
            add_eos_token: other.add_eos_token.or(self.add_eos_token),
        }
    }
}

/// A Phi-3 tokenizer with the xGen-MM additions (`<pad>`, `<image>`, `<image placeholder>`,
/// `<|endofchunk|>`), see the module documentation.
#[derive(Debug, Clone)]
pub struct Blip3Tokenizer {
    inner: Tokenizer,
    /// Where the tokenizer came from (a path or a name), for error messages.
    source: String,
    bos: Option<(String, u32)>,
    eos: (String, u32),
    pad: (String, u32),
    unk: Option<String>,
    image_id: u32,
    placeholder_id: u32,
    endofchunk_id: u32,
    end_id: u32,
    initial_len: usize,
    /// Number of tokens `encode(_, true)` puts in front of the text (1 with BOS, else 0).
    prefix_len: usize,
}

impl Blip3Tokenizer {
    /// Loads `tokenizer.json` from `dir`, with the roles from `tokenizer_config.json` and
    /// `special_tokens_map.json` when present, and applies the reference's additions.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self, DataError> {
        let dir = dir.as_ref();
        let json_path = dir.join("tokenizer.json");
        let json = std::fs::read_to_string(&json_path).map_err(|e| DataError::Tokenizer {
            path: json_path.display().to_string(),
            msg: format!("cannot read: {e}"),
        })?;
        let mut config = TokenizerConfig::default();
        for name in ["tokenizer_config.json", "special_tokens_map.json"] {
            let path = dir.join(name);
            if !path.exists() {
                continue;
            }
            let text = std::fs::read_to_string(&path).map_err(|e| DataError::Tokenizer {
                path: path.display().to_string(),
                msg: format!("cannot read: {e}"),
            })?;
            let file_config = TokenizerConfig::from_json_str(&text, &path.display().to_string())?;
            config = config.overridden_by(file_config);
        }
        Self::from_json_str(&json, &config, &json_path.display().to_string())
    }

    /// Builds the tokenizer from the text of a `tokenizer.json` and the given roles; `source`
    /// (a path or a name) appears in error messages.
    pub fn from_json_str(
        tokenizer_json: &str,
        config: &TokenizerConfig,
        source: &str,
    ) -> Result<Self, DataError> {
        // The `tokenizers` crate panics on some malformed sections (a `decoder` that is not a
        // known decoder object hits an `expect` in its deserializer): a bad file must be an error.
        let parsed = std::panic::catch_unwind(|| tokenizer_json.parse::<Tokenizer>());
        let inner = match parsed {
            Ok(Ok(inner)) => inner,
            Ok(Err(e)) => {
                return Err(tokenizer_error(
                    source,
                    format!("invalid tokenizer.json: {e}"),
                ));
            }
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_string());
                return Err(tokenizer_error(
                    source,
                    format!("invalid tokenizer.json: the parser panicked: {what}"),
                ));
            }
        };
        Self::from_tokenizer(inner, config, source)
    }

    /// The tiny Phi-3-shaped tokenizer committed under `data/assets/tiny-tokenizer/` (about 2000
    /// ids, for tests, the demo and the `tiny` model preset).
    pub fn tiny() -> Result<Self, DataError> {
        let source = "data/assets/tiny-tokenizer";
        let config = TokenizerConfig::from_json_str(
            TINY_TOKENIZER_CONFIG,
            "data/assets/tiny-tokenizer/tokenizer_config.json",
        )?;
        Self::from_json_str(TINY_TOKENIZER_JSON, &config, source)
    }

    /// The tiny tokenizer with its base vocabulary padded to `base_vocab` ids by tokens that
    /// encoding never produces (`<unused_N>`: no merge builds them), its special tokens moved up
    /// by the same amount. With Phi-3's 32,000 ([`PHI3_BASE_VOCAB`]) every special and media id
    /// and [`initial_len`](Self::initial_len) (32,012) equal Phi-3's, while text tokenizes
    /// exactly as with [`tiny`](Self::tiny): models built for Phi-3's vocabulary (the `mid` and
    /// full presets) then train on the synthetic corpus with no download. A `base_vocab` at or
    /// below the tiny one's gives the tiny tokenizer.
    pub fn tiny_with_base_vocab(base_vocab: usize) -> Result<Self, DataError> {
        let source = "data/assets/tiny-tokenizer (padded)";
        let bad = |msg: &str| tokenizer_error(source, msg.to_string());
        let mut json: serde_json::Value =
            serde_json::from_str(TINY_TOKENIZER_JSON).map_err(|e| bad(&e.to_string()))?;
        let vocab = json
            .pointer_mut("/model/vocab")
            .and_then(serde_json::Value::as_object_mut)
            .ok_or_else(|| bad("no model.vocab object"))?;
        let tiny_base = vocab.len();
        let shift = base_vocab.saturating_sub(tiny_base);
        for id in tiny_base..tiny_base + shift {
            vocab.insert(format!("<unused_{id}>"), serde_json::Value::from(id));
        }
        let added = json
            .get_mut("added_tokens")
            .and_then(serde_json::Value::as_array_mut)
            .ok_or_else(|| bad("no added_tokens array"))?;
        for token in added {
            let id = token
                .get("id")
                .and_then(serde_json::Value::as_u64)
                .ok_or_else(|| bad("an added token has no id"))? as usize;
            if id >= tiny_base {
                token["id"] = serde_json::Value::from(id + shift);
            }
        }
        let config = TokenizerConfig::from_json_str(
            TINY_TOKENIZER_CONFIG,
            "data/assets/tiny-tokenizer/tokenizer_config.json",
        )?;
        Self::from_json_str(&json.to_string(), &config, source)
    }

    /// Applies the reference's additions to an already parsed tokenizer.
    pub fn from_tokenizer(
        mut inner: Tokenizer,
        config: &TokenizerConfig,
        source: &str,
    ) -> Result<Self, DataError> {
        let id_of = |inner: &Tokenizer, token: &str| inner.token_to_id(token);

        // Roles, with the Phi-3 defaults for what the configuration does not say.
        let bos_name = config
            .bos_token
            .clone()
            .or_else(|| id_of(&inner, "<s>").map(|_| "<s>".to_string()));
        let eos_name = match &config.eos_token {
            Some(eos) => eos.clone(),
            None => ["<|endoftext|>", "</s>"]
                .into_iter()
                .find(|t| id_of(&inner, t).is_some())
                .map(str::to_string)
                .ok_or_else(|| {
                    tokenizer_error(
                        source,
                        "no eos token configured and none of <|endoftext|>, </s>",
                    )
                })?,
        };
        if config.add_eos_token == Some(true) {
            return Err(tokenizer_error(
                source,
                "add_eos_token=true is not supported: the chat-template masking assumes no EOS \
                 is appended",
            ));
        }

        // Hugging Face adds configured special tokens that tokenizer.json lacks; so do we.
        let mut declared: Vec<&String> = vec![&eos_name];
        declared.extend(bos_name.as_ref());
        declared.extend(config.pad_token.as_ref());
        for token in declared {
            if id_of(&inner, token).is_none() {
                inner.add_special_tokens(&[AddedToken::from(token.as_str(), true)]);
            }
        }
        let eos_id = require_id(&inner, &eos_name, source, "eos")?;
        let bos = match &bos_name {
            Some(name) => Some((name.clone(), require_id(&inner, name, source, "bos")?)),
            None => None,
        };

        // Reference step 1: a pad token distinct from eos.
        let pad_name = match &config.pad_token {
            Some(pad) if *pad != eos_name => pad.clone(),
            _ => {
                if id_of(&inner, PAD_TOKEN).is_none() {
                    inner.add_special_tokens(&[AddedToken::from(PAD_TOKEN, true)]);
                }
                PAD_TOKEN.to_string()
            }
        };
        let pad_id = require_id(&inner, &pad_name, source, "pad")?;

        // Reference step 2: the three media tokens, unless a saved blip3 tokenizer has them.
        let present = MEDIA_TOKENS
            .iter()
            .filter(|t| id_of(&inner, t).is_some())
            .count();
        let initial_len = if present == 0 {
            let before = inner.get_vocab_size(true);
            let media: Vec<AddedToken> = MEDIA_TOKENS
                .iter()
                .map(|t| AddedToken::from(*t, true))
                .collect();
            inner.add_special_tokens(&media);
            before
        } else if present == MEDIA_TOKENS.len() {
            let image = require_id(&inner, IMAGE_TOKEN, source, "image")?;
            image as usize
        } else {
            return Err(tokenizer_error(
                source,
                format!(
                    "has only {present} of the media tokens {MEDIA_TOKENS:?}: expected all or none"
                ),
            ));
        };
        let image_id = require_id(&inner, IMAGE_TOKEN, source, "image")?;
        let placeholder_id = require_id(&inner, IMAGE_PLACEHOLDER_TOKEN, source, "placeholder")?;
        let endofchunk_id = require_id(&inner, END_OF_CHUNK_TOKEN, source, "end-of-chunk")?;
        let len = inner.get_vocab_size(true);
        let expected = [initial_len, initial_len + 1, initial_len + 2];
        let got = [
            image_id as usize,
            placeholder_id as usize,
            endofchunk_id as usize,
        ];
        if got != expected || len != initial_len + 3 {
            return Err(tokenizer_error(
                source,
                format!(
                    "media tokens {MEDIA_TOKENS:?} have ids {got:?} in a vocabulary of {len}: they \
                     must be the last three ids, in this order"
                ),
            ));
        }
        if pad_id as usize >= initial_len {
            return Err(tokenizer_error(
                source,
                format!("pad token {pad_name:?} (id {pad_id}) must come before the media tokens"),
            ));
        }

        // The chat template needs the Phi-3 turn tokens.
        for token in [SYSTEM_TOKEN, USER_TOKEN, ASSISTANT_TOKEN] {
            require_id(&inner, token, source, "chat")?;
        }
        let end_id = require_id(&inner, END_TOKEN, source, "end-of-turn")?;

        // add_bos_token, when stated, decides BOS insertion (as Hugging Face's Llama tokenizers do).
        if let Some(add_bos) = config.add_bos_token {
            set_bos_insertion(&mut inner, add_bos, bos.as_ref(), source)?;
        }
        let prefix_len = count_added_tokens(&inner, source)?;

        Ok(Blip3Tokenizer {
            inner,
            source: source.to_string(),
            bos,
            eos: (eos_name, eos_id),
            pad: (pad_name, pad_id),
            unk: config.unk_token.clone(),
            image_id,
            placeholder_id,
            endofchunk_id,
            end_id,
            initial_len,
            prefix_len,
        })
    }

    /// Where the tokenizer came from (a path or a name).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The id of `<image>`, the media token replaced by vision tokens.
    pub fn image_token_id(&self) -> u32 {
        self.image_id
    }

    /// The id of `<image placeholder>`.
    pub fn placeholder_id(&self) -> u32 {
        self.placeholder_id
    }

    /// The id of `<|endofchunk|>`.
    pub fn endofchunk_id(&self) -> u32 {
        self.endofchunk_id
    }

    /// The ids of the three media tokens, in order (`<image>`, `<image placeholder>`,
    /// `<|endofchunk|>`); the losses never train on them.
    pub fn media_ids(&self) -> [u32; 3] {
        [self.image_id, self.placeholder_id, self.endofchunk_id]
    }

    /// The pad token's id (`<pad>` after the reference's addition).
    pub fn pad_id(&self) -> u32 {
        self.pad.1
    }

    /// The pad token.
    pub fn pad_token(&self) -> &str {
        &self.pad.0
    }

    /// The eos token's id (`<|endoftext|>` for Phi-3).
    pub fn eos_id(&self) -> u32 {
        self.eos.1
    }

    /// The eos token.
    pub fn eos_token(&self) -> &str {
        &self.eos.0
    }

    /// The id of `<|end|>`, the end-of-turn token generation stops on.
    pub fn end_id(&self) -> u32 {
        self.end_id
    }

    /// The bos token's id, if the tokenizer has a bos token.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos.as_ref().map(|b| b.1)
    }

    /// The bos token, if any.
    pub fn bos_token(&self) -> Option<&str> {
        self.bos.as_ref().map(|b| b.0.as_str())
    }

    /// Whether `encode(text, true)` prepends BOS.
    pub fn adds_bos(&self) -> bool {
        self.prefix_len > 0
    }

    /// The number of tokens `encode(text, true)` puts in front of the text (1 with BOS, else 0).
    pub fn special_prefix_len(&self) -> usize {
        self.prefix_len
    }

    /// The vocabulary size after adding `<pad>` and before the three media tokens: the reference's
    /// `initial_tokenizer_len` (32012 for Phi-3). Ids from here on use the model's additional
    /// embedding rows.
    pub fn initial_len(&self) -> usize {
        self.initial_len
    }

    /// The full vocabulary size, added tokens included (`initial_len() + 3`).
    pub fn len(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Always `false`: a loaded tokenizer has at least the special tokens.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The id of `token`, if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token of `id`, if any.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Encodes `text`; special-token strings in it (`<image>`, `<|end|>`, ...) become their ids.
    /// With `add_special`, the post-processor's tokens (BOS) are added.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, DataError> {
        let encoding = self
            .inner
            .encode(text, add_special)
            .map_err(|e| tokenizer_error(&self.source, format!("cannot encode text: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Decodes `ids`; with `skip_special`, special tokens (chat, media, bos/eos/pad) are left out.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, DataError> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| tokenizer_error(&self.source, format!("cannot decode ids: {e}")))
    }

    /// The wrapped Hugging Face tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// Writes `tokenizer.json` (with every added token) and `tokenizer_config.json` (the roles and
    /// `add_bos_token`) into `dir`, creating it; [`Blip3Tokenizer::from_dir`] reads them back to
    /// the same ids.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<(), DataError> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
        let json_path = dir.join("tokenizer.json");
        let json = self
            .inner
            .to_string(false)
            .map_err(|e| DataError::Tokenizer {
                path: json_path.display().to_string(),
                msg: format!("cannot serialize: {e}"),
            })?;
        std::fs::write(&json_path, json).map_err(|e| DataError::io(&json_path, e))?;

        let mut config = serde_json::Map::new();
        config.insert("add_bos_token".into(), self.adds_bos().into());
        config.insert("add_eos_token".into(), false.into());
        if let Some(bos) = self.bos_token() {
            config.insert("bos_token".into(), bos.into());
        }
        config.insert("eos_token".into(), self.eos_token().into());
        config.insert("pad_token".into(), self.pad_token().into());
        if let Some(unk) = &self.unk {
            config.insert("unk_token".into(), unk.as_str().into());
        }
        config.insert("clean_up_tokenization_spaces".into(), false.into());
        config.insert("tokenizer_class".into(), "PreTrainedTokenizerFast".into());
        let config_path = dir.join("tokenizer_config.json");
        let text =
            serde_json::to_string_pretty(&serde_json::Value::Object(config)).map_err(|e| {
                DataError::Tokenizer {
                    path: config_path.display().to_string(),
                    msg: format!("cannot serialize: {e}"),
                }
            })?;
        std::fs::write(&config_path, text + "\n").map_err(|e| DataError::io(&config_path, e))
    }
}

/// A [`DataError::Tokenizer`] for `path`.
fn tokenizer_error(path: &str, msg: impl Into<String>) -> DataError {
    DataError::Tokenizer {
        path: path.to_string(),
        msg: msg.into(),
    }
}

/// The id of `token`, or an error saying which role lacks it.
fn require_id(inner: &Tokenizer, token: &str, source: &str, role: &str) -> Result<u32, DataError> {
    inner
        .token_to_id(token)
        .ok_or_else(|| tokenizer_error(source, format!("lacks the {role} token {token:?}")))
}

/// Makes `encode(_, true)` prepend BOS (`add_bos`) or not, replacing a template post-processor.
fn set_bos_insertion(
    inner: &mut Tokenizer,
    add_bos: bool,
    bos: Option<&(String, u32)>,
    source: &str,
) -> Result<(), DataError> {
    match inner.get_post_processor() {
        None | Some(PostProcessorWrapper::Template(_)) => {}
        Some(other) => {
            log::warn!(
                "tokenizer {source}: add_bos_token is ignored, the post-processor is not a \
                 template: {other:?}"
            );
            return Ok(());
        }
    }
    if !add_bos {
        inner.with_post_processor(None::<PostProcessorWrapper>);
        return Ok(());
    }
    let (name, id) =
        bos.ok_or_else(|| tokenizer_error(source, "add_bos_token is true but there is no bos"))?;
    let template = TemplateProcessing::builder()
        .try_single(format!("{name} $A"))
        .and_then(|b| b.try_pair(format!("{name} $A {name}:1 $B:1")))
        .map_err(|e| tokenizer_error(source, format!("cannot build the BOS template: {e}")))?
        .special_tokens(vec![(name.as_str(), *id)])
        .build()
        .map_err(|e| tokenizer_error(source, format!("cannot build the BOS template: {e}")))?;
    inner.with_post_processor(Some(template));
    Ok(())
}

/// How many tokens the post-processor puts in front of a text; an error if it appends any.
fn count_added_tokens(inner: &Tokenizer, source: &str) -> Result<usize, DataError> {
    let probe = "a";
    let bare = inner
        .encode(probe, false)
        .map_err(|e| tokenizer_error(source, format!("cannot encode a probe text: {e}")))?;
    let full = inner
        .encode(probe, true)
        .map_err(|e| tokenizer_error(source, format!("cannot encode a probe text: {e}")))?;
    let added = full.get_ids().len().saturating_sub(bare.get_ids().len());
    if full.get_ids().get(added..) != Some(bare.get_ids()) {
        return Err(tokenizer_error(
            source,
            "the post-processor appends tokens after the text; only a prefix (BOS) is supported",
        ));
    }
    Ok(added)
}
