//! From a [`RawSample`] to a training example, on the host: decode and preprocess the images,
//! render and tokenise the text with the chat template, and attach the labels.
//!
//! * [`RawSample::Caption`] → [`ChatTemplate::encode_caption`];
//! * [`RawSample::Interleaved`] → [`ChatTemplate::encode_interleaved`];
//! * [`RawSample::Conversation`] → [`ChatTemplate::encode_conversation`];
//! * [`RawSample::Preference`] → two conversations, the prompt turns followed by the chosen answer
//!   and by the rejected answer, tokenised with the same images ([`TrainSample::rejected`]).
//!
//! Images are decoded with [`crate::image::decode_image`] and turned into views by the
//! [`ImageProcessor`] (any-resolution or fixed, from the configuration). An image of `V` views
//! costs `V * vision_tokens_per_group` positions in the model's sequence (`V` = 1 in fixed mode),
//! and the template truncates to [`PipelineConfig::max_len`] counting those positions, never cutting
//! an image in half; images that fall after the cut are dropped from the sample.
//!
//! Every failure is a [`SampleError`] naming the sample's file and key: an image file that cannot
//! be read is [`BadKind::MissingImage`], bytes that do not decode are [`BadKind::CorruptImage`], and
//! the template's own errors (marker/image count mismatch, nothing to train) pass through.

use std::collections::BTreeMap;

use crate::anyres::{ImageProcessor, ImageProcessorConfig, ProcessedImage};
use crate::error::{BadKind, DataError, SampleError};
use crate::sample::{ImageSource, Origin, RawSample, Role, Turn};
use crate::template::{ChatTemplate, DEFAULT_MAX_LEN, DEFAULT_SYSTEM_PROMPT, Encoded};
use crate::tokenizer::Blip3Tokenizer;

/// Token ids and their labels, aligned one to one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSeq {
    /// Token ids; each `<image>` id stands for one image's vision tokens.
    pub input_ids: Vec<u32>,
    /// One label per id: the id to predict there, or -100 (ignored).
    pub labels: Vec<i64>,
}

impl From<Encoded> for TokenSeq {
    fn from(encoded: Encoded) -> Self {
        TokenSeq {
            input_ids: encoded.input_ids,
            labels: encoded.labels,
        }
    }
}

/// Free-form tags that travel with a sample, e.g. the safety flags of VLGuard conversations.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SampleTags {
    /// Whether the image is safe (VLGuard `safe`); `None` when the source does not say.
    pub image_safe: Option<bool>,
    /// Whether the prompt is safe (safe image and safe instruction); `None` when unknown.
    pub prompt_safe: Option<bool>,
    /// A category such as VLGuard's `harmful_category`.
    pub category: Option<String>,
    /// Anything else, by name.
    pub extra: BTreeMap<String, String>,
}

/// A training example ready for a batcher: preprocessed images and token sequences.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSample {
    /// The file and key the sample came from.
    pub origin: Origin,
    /// The images the ids refer to, in marker order (one `<image>` id each).
    pub images: Vec<ProcessedImage>,
    /// The sequence to train on (for DPO: the prompt with the chosen answer).
    pub seq: TokenSeq,
    /// DPO only: the same prompt and images with the rejected answer.
    pub rejected: Option<TokenSeq>,
    /// The name of the mixture source the sample came from (empty outside a mixture).
    pub source: String,
    /// Tags from the reader (safety flags, ...).
    pub tags: SampleTags,
}

impl TrainSample {
    /// The sequence length the model sees: ids with every `<image>` id replaced by its image's
    /// `num_views * vision_tokens_per_group` vision tokens. For DPO, the longer of the two
    /// sequences.
    pub fn expanded_len(&self, vision_tokens_per_group: usize) -> usize {
        let vision: usize = self
            .images
            .iter()
            .map(|image| image.num_views * vision_tokens_per_group)
            .sum();
        let ids = self
            .rejected
            .as_ref()
            .map_or(0, |r| r.input_ids.len())
            .max(self.seq.input_ids.len());
        (ids + vision).saturating_sub(self.images.len())
    }
}

/// Settings of the [`Pipeline`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// The image preprocessing (any-resolution or fixed, view size, normalisation).
    pub image: ImageProcessorConfig,
    /// The maximum sequence length, vision tokens included. Default 2048.
    pub max_len: usize,
    /// The system sentence put in front of conversations without a system turn (`None`: the
    /// reference's sentence).
    pub system_prompt: Option<String>,
    /// Vision tokens per view (the resampler's number of latents, 128 for xGen-MM): an image of `V`
    /// views costs `V` times this in any-resolution mode, and this once in fixed mode.
    pub vision_tokens_per_group: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            image: ImageProcessorConfig::default(),
            max_len: DEFAULT_MAX_LEN,
            system_prompt: None,
            vision_tokens_per_group: 128,
        }
    }
}

/// Turns raw samples into [`TrainSample`]s. Shared read-only between loader workers.
#[derive(Debug, Clone)]
pub struct Pipeline {
    tokenizer: Blip3Tokenizer,
    template: ChatTemplate,
    images: ImageProcessor,
    config: PipelineConfig,
}

impl Pipeline {
    /// Builds the pipeline; fails on an invalid image configuration, a zero maximum length or a
    /// zero token count per view.
    pub fn new(tokenizer: Blip3Tokenizer, config: PipelineConfig) -> Result<Self, DataError> {
        if config.max_len == 0 {
            return Err(DataError::Config(
                "pipeline max_len must be positive".into(),
            ));
        }
        if config.vision_tokens_per_group == 0 {
            return Err(DataError::Config(
                "pipeline vision_tokens_per_group must be positive".into(),
            ));
        }
        let images = ImageProcessor::new(config.image.clone())?;
        let template = ChatTemplate {
            system_prompt: config
                .system_prompt
                .clone()
                .unwrap_or_else(|| DEFAULT_SYSTEM_PROMPT.to_string()),
            max_len: config.max_len,
        };
        Ok(Pipeline {
            tokenizer,
            template,
            images,
            config,
        })
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Blip3Tokenizer {
        &self.tokenizer
    }

    /// The chat template.
    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }

    /// The configuration.
    pub fn config(&self) -> &PipelineConfig {
        &self.config
    }

    /// Processes one raw sample (see the module documentation). The result's `source` is empty
    /// and its `tags` default; a loader fills them in.
    pub fn process(&self, raw: RawSample) -> Result<TrainSample, SampleError> {
        match raw {
            RawSample::Caption {
                origin,
                image,
                caption,
            } => {
                let images = self.load_images(std::slice::from_ref(&image), &origin)?;
                let tokens = self.image_tokens(&images);
                let encoded =
                    self.template
                        .encode_caption(&self.tokenizer, &caption, tokens[0], &origin)?;
                Ok(self.finish(origin, images, encoded, None))
            }
            RawSample::Interleaved {
                origin,
                text,
                images,
            } => {
                let images = self.load_images(&images, &origin)?;
                let tokens = self.image_tokens(&images);
                let encoded =
                    self.template
                        .encode_interleaved(&self.tokenizer, &text, &tokens, &origin)?;
                Ok(self.finish(origin, images, encoded, None))
            }
            RawSample::Conversation {
                origin,
                images,
                turns,
            } => {
                let images = self.load_images(&images, &origin)?;
                let tokens = self.image_tokens(&images);
                let encoded =
                    self.template
                        .encode_conversation(&self.tokenizer, &turns, &tokens, &origin)?;
                Ok(self.finish(origin, images, encoded, None))
            }
            RawSample::Preference {
                origin,
                images,
                prompt,
                chosen,
                rejected,
            } => {
                let images = self.load_images(&images, &origin)?;
                let tokens = self.image_tokens(&images);
                let chosen = self.answer_turns(&prompt, chosen);
                let rejected = self.answer_turns(&prompt, rejected);
                let tok = &self.tokenizer;
                let chosen = self
                    .template
                    .encode_conversation(tok, &chosen, &tokens, &origin)?;
                let rejected = self
                    .template
                    .encode_conversation(tok, &rejected, &tokens, &origin)?;
                if chosen.num_images != rejected.num_images {
                    return Err(SampleError::new(
                        &origin.file,
                        &origin.key,
                        BadKind::Invalid,
                        format!(
                            "truncation keeps {} images with the chosen answer but {} with the \
                             rejected one (max_len {})",
                            chosen.num_images, rejected.num_images, self.config.max_len
                        ),
                    ));
                }
                Ok(self.finish(origin, images, chosen, Some(rejected.into())))
            }
        }
    }

    /// The prompt turns followed by one assistant answer.
    fn answer_turns(&self, prompt: &[Turn], answer: String) -> Vec<Turn> {
        let mut turns = prompt.to_vec();
        turns.push(Turn {
            role: Role::Assistant,
            text: answer,
        });
        turns
    }

    /// Decodes and preprocesses `sources`; a failure names the sample and the image.
    fn load_images(
        &self,
        sources: &[ImageSource],
        origin: &Origin,
    ) -> Result<Vec<ProcessedImage>, SampleError> {
        sources
            .iter()
            .map(|source| {
                self.images.process_source(source).map_err(|e| {
                    let kind = match e {
                        DataError::Io { .. } => BadKind::MissingImage,
                        DataError::ImageRefused { .. } => BadKind::Invalid,
                        _ => BadKind::CorruptImage,
                    };
                    let msg = format!("image {}: {e}", source.describe());
                    SampleError::new(&origin.file, &origin.key, kind, msg)
                })
            })
            .collect()
    }

    /// The vision-token count of each image.
    fn image_tokens(&self, images: &[ProcessedImage]) -> Vec<usize> {
        images
            .iter()
            .map(|image| image.num_views * self.config.vision_tokens_per_group)
            .collect()
    }

    /// Builds the sample, keeping only the images the (possibly truncated) ids refer to.
    fn finish(
        &self,
        origin: Origin,
        mut images: Vec<ProcessedImage>,
        encoded: Encoded,
        rejected: Option<TokenSeq>,
    ) -> TrainSample {
        images.truncate(encoded.num_images);
        TrainSample {
            origin,
            images,
            seq: encoded.into(),
            rejected,
            source: String::new(),
            tags: SampleTags::default(),
        }
    }
}
