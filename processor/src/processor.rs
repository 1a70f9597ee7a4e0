//! [`Processor`]: the tokenizer, the image processor and the chat template of one model, turning
//! text, images and chat turns into the model's input ([`MultimodalInput`]) and generated ids back
//! into text — the role Hugging Face's `Processor` plays. Built from a model directory by
//! [`crate::ModelDir`], or from a config and a tokenizer for a model built in memory.
//!
//! Prompts come in two formats ([`PromptFormat`]):
//! - **chat**: turns rendered with the Phi-3 chat template (the default system sentence when the
//!   turns have no system turn), ending with `<|assistant|>\n`; generation stops at `<|end|>` or
//!   EOS. This is what `generate`, `chat` and `serve` send by default (docs/data.md §"Chat
//!   template").
//! - **raw**: the text as is with BOS, `<image>` markers in place (few-shot prompts for base
//!   models, `generate --raw`, `/v1/completions`); generation stops at `<|endofchunk|>` (as the
//!   OpenFlamingo harness passes it as `eos_token_id`) or EOS.
//!
//! Either way the number of `<image>` markers must equal the number of images given.

use blip3_data::anyres::{
    AnyResGrid, ImageProcessor, ImageProcessorConfig, ProcessedImage, ResolutionMode,
};
use blip3_data::image::RgbImage;
use blip3_data::sample::{ImageSource, Origin, Role, Turn};
use blip3_data::template::ChatTemplate;
use blip3_data::tokenizer::Blip3Tokenizer;
use blip3_model::{AspectMode, GenerationConfig, ImageInput, SpecialTokens, XGenMMConfig};
use burn::prelude::Device;

use crate::error::ProcessorError;

/// How a prompt's text becomes ids, and where generation stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PromptFormat {
    /// The Phi-3 chat template; stops at `<|end|>` and EOS.
    #[default]
    Chat,
    /// Raw text with BOS; stops at `<|endofchunk|>` and EOS.
    Raw,
}

/// An encoded prompt: the ids to feed and the ids that end the reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedPrompt {
    /// Token ids, one `<image>` id per image.
    pub ids: Vec<u32>,
    /// Generation stops at the first of these.
    pub stop_ids: Vec<u32>,
}

/// The special token ids a tokenizer assigns, as the model takes them.
pub fn special_tokens(tokenizer: &Blip3Tokenizer) -> SpecialTokens {
    SpecialTokens {
        image: tokenizer.image_token_id(),
        pad: tokenizer.pad_id(),
    }
}

/// The image settings a model config implies (step 1 of the rule in [`crate::model_dir`]): base size
/// `vision.image_size`, the config's any-res canvases as grids of that size, any-res or fixed
/// per `image_aspect_ratio`, mean = std = 0.5.
pub fn image_config_for(cfg: &XGenMMConfig) -> Result<ImageProcessorConfig, ProcessorError> {
    let base = cfg.vision.image_size;
    let bad = |what: String| ProcessorError::Mismatch(format!("config.json: {what}"));
    let image_size = u32::try_from(base).map_err(|_| bad(format!("image size {base}")))?;
    let mut grids = Vec::with_capacity(cfg.anyres_grids.len());
    for &(w, h) in &cfg.anyres_grids {
        if base == 0 || w == 0 || h == 0 || w % base != 0 || h % base != 0 {
            return Err(bad(format!(
                "any-res canvas {w}x{h} is not a positive multiple of the base size {base}"
            )));
        }
        let side = |n: usize| u32::try_from(n / base).map_err(|_| bad(format!("canvas {w}x{h}")));
        grids.push(AnyResGrid::new(side(w)?, side(h)?));
    }
    Ok(ImageProcessorConfig {
        image_size,
        grids,
        mode: match cfg.image_aspect_ratio {
            AspectMode::AnyRes => ResolutionMode::AnyRes,
            AspectMode::Fixed => ResolutionMode::Fixed,
        },
        ..ImageProcessorConfig::default()
    })
}

/// Checks that the tokenizer has the vocabulary the model's embedding table was built for.
pub fn check_vocab(
    config: &XGenMMConfig,
    tokenizer: &Blip3Tokenizer,
) -> Result<(), ProcessorError> {
    if config.initial_tokenizer_len != tokenizer.initial_len() {
        return Err(ProcessorError::Mismatch(format!(
            "the model expects a tokenizer of {} ids before the media tokens, tokenizer {} has {}",
            config.initial_tokenizer_len,
            tokenizer.source(),
            tokenizer.initial_len()
        )));
    }
    Ok(())
}

/// A model's tokenizer, image processor and chat template. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Processor {
    tokenizer: Blip3Tokenizer,
    images: ImageProcessor,
    template: ChatTemplate,
    config: XGenMMConfig,
}

impl Processor {
    /// A processor for a model of `config` with `tokenizer` and image settings `image`. The
    /// tokenizer's vocabulary must be the one the model was built for.
    pub fn new(
        tokenizer: Blip3Tokenizer,
        image: ImageProcessorConfig,
        config: &XGenMMConfig,
    ) -> Result<Self, ProcessorError> {
        check_vocab(config, &tokenizer)?;
        Ok(Processor {
            tokenizer,
            images: ImageProcessor::new(image)?,
            template: ChatTemplate::default(),
            config: config.clone(),
        })
    }

    /// A processor for a model built in memory: the image settings its config implies
    /// ([`crate::image_config_for`]).
    pub fn for_config(
        tokenizer: Blip3Tokenizer,
        config: &XGenMMConfig,
    ) -> Result<Self, ProcessorError> {
        let image = image_config_for(config)?;
        Self::new(tokenizer, image, config)
    }

    /// The same processor with another chat template (system sentence, maximum length).
    pub fn with_template(mut self, template: ChatTemplate) -> Self {
        self.template = template;
        self
    }

    /// The same processor with other image settings (e.g. a training stage's fixed mode).
    pub fn with_image_config(
        mut self,
        image: ImageProcessorConfig,
    ) -> Result<Self, ProcessorError> {
        self.images = ImageProcessor::new(image)?;
        Ok(self)
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Blip3Tokenizer {
        &self.tokenizer
    }

    /// The image processor.
    pub fn image_processor(&self) -> &ImageProcessor {
        &self.images
    }

    /// The image settings.
    pub fn image_config(&self) -> &ImageProcessorConfig {
        self.images.config()
    }

    /// The chat template.
    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }

    /// The model configuration this processor serves.
    pub fn model_config(&self) -> &XGenMMConfig {
        &self.config
    }

    /// The special token ids to set on the model.
    pub fn special_tokens(&self) -> SpecialTokens {
        special_tokens(&self.tokenizer)
    }

    /// The ids that end a reply in `format`.
    pub fn stop_ids(&self, format: PromptFormat) -> Vec<u32> {
        let t = &self.tokenizer;
        match format {
            PromptFormat::Chat => vec![t.end_id(), t.eos_id()],
            PromptFormat::Raw => vec![t.endofchunk_id(), t.eos_id()],
        }
    }

    /// Encodes chat turns (the last one a user turn) for generation with `num_images` images.
    pub fn encode_chat(
        &self,
        turns: &[Turn],
        num_images: usize,
    ) -> Result<EncodedPrompt, ProcessorError> {
        let origin = Origin {
            file: "<prompt>".into(),
            key: String::new(),
        };
        let ids = self
            .template
            .encode_prompt(&self.tokenizer, turns, num_images, &origin)
            .map_err(|e| ProcessorError::Prompt(e.to_string()))?;
        Ok(EncodedPrompt {
            ids,
            stop_ids: self.stop_ids(PromptFormat::Chat),
        })
    }

    /// Encodes one user message with the chat template and the default system sentence: the
    /// prompt `blip3 generate` sends.
    pub fn encode_user(
        &self,
        text: &str,
        num_images: usize,
    ) -> Result<EncodedPrompt, ProcessorError> {
        let turns = [Turn {
            role: Role::User,
            text: text.to_string(),
        }];
        self.encode_chat(&turns, num_images)
    }

    /// Encodes raw text with BOS; its `<image>` markers must number `num_images`.
    pub fn encode_raw(
        &self,
        text: &str,
        num_images: usize,
    ) -> Result<EncodedPrompt, ProcessorError> {
        let t = &self.tokenizer;
        let ids = t.encode(text, true)?;
        let markers = ids.iter().filter(|&&id| id == t.image_token_id()).count();
        if markers != num_images {
            return Err(ProcessorError::Prompt(format!(
                "the prompt has {markers} <image> markers but {num_images} images were given"
            )));
        }
        Ok(EncodedPrompt {
            ids,
            stop_ids: self.stop_ids(PromptFormat::Raw),
        })
    }

    /// Encodes a prompt in `format`: [`Processor::encode_user`] or [`Processor::encode_raw`].
    pub fn encode(
        &self,
        format: PromptFormat,
        text: &str,
        num_images: usize,
    ) -> Result<EncodedPrompt, ProcessorError> {
        match format {
            PromptFormat::Chat => self.encode_user(text, num_images),
            PromptFormat::Raw => self.encode_raw(text, num_images),
        }
    }

    /// Runs a decoded image through the image pipeline and uploads it to `device`.
    pub fn image(&self, rgb: &RgbImage, device: &Device) -> Result<ImageInput, ProcessorError> {
        let processed = self.images.process(rgb)?;
        image_input(processed, device)
    }

    /// Decodes (within the image limits), processes and uploads an image from a file or bytes.
    pub fn image_from_source(
        &self,
        src: &ImageSource,
        device: &Device,
    ) -> Result<ImageInput, ProcessorError> {
        let processed = self.images.process_source(src)?;
        image_input(processed, device)
    }

    /// The sequence positions a prompt takes: its text tokens plus each image's vision tokens.
    pub fn prompt_positions(&self, prompt: &EncodedPrompt, images: &[ImageInput]) -> usize {
        let image_id = self.tokenizer.image_token_id();
        let text = prompt.ids.iter().filter(|&&t| t != image_id).count();
        let latents = self.config.resampler.num_latents;
        let vision: usize = images
            .iter()
            .map(|im| {
                let groups = if self.config.anyres_patch_sampling {
                    im.pixels.dims()[0]
                } else {
                    1
                };
                groups * latents
            })
            .sum();
        text + vision
    }

    /// Checks that a prompt and `max_new_tokens` fit the model's context.
    pub fn check_context(
        &self,
        prompt: &EncodedPrompt,
        images: &[ImageInput],
        max_new_tokens: usize,
    ) -> Result<usize, ProcessorError> {
        let positions = self.prompt_positions(prompt, images);
        let context = self.config.text.max_position_embeddings;
        if positions + max_new_tokens > context {
            return Err(ProcessorError::Prompt(format!(
                "{positions} prompt positions plus {max_new_tokens} new tokens exceed the model's \
                 context of {context}"
            )));
        }
        Ok(positions)
    }

    /// `sampling` with the stop ids of `prompt` and the tokenizer's padding id.
    pub fn generation_config(
        &self,
        sampling: &GenerationConfig,
        prompt: &EncodedPrompt,
    ) -> GenerationConfig {
        GenerationConfig {
            stop_ids: prompt.stop_ids.clone(),
            pad_id: self.tokenizer.pad_id(),
            ..sampling.clone()
        }
    }

    /// The reply text of generated ids: cut before the first of `stop_ids`, decoded with special
    /// tokens skipped.
    pub fn decode_reply(&self, ids: &[u32], stop_ids: &[u32]) -> Result<String, ProcessorError> {
        let cut = ids
            .iter()
            .position(|t| stop_ids.contains(t))
            .unwrap_or(ids.len());
        Ok(self.tokenizer.decode(&ids[..cut], true)?)
    }

    /// An incremental detokenizer for streaming a reply.
    pub fn text_stream(&self, stop_ids: &[u32]) -> TextStream<'_> {
        TextStream {
            tokenizer: &self.tokenizer,
            stop_ids: stop_ids.to_vec(),
            ids: Vec::new(),
            shown: String::new(),
        }
    }
}

/// The one conversion from the image pipeline's host output to the model's [`ImageInput`]:
/// `[views, 3, S, S]` pixels, the crop grid and the original size.
pub fn image_input(p: ProcessedImage, device: &Device) -> Result<ImageInput, ProcessorError> {
    let [views, channels, size, _] = p.shape();
    Ok(ImageInput::from_host(
        p.pixels,
        views,
        channels,
        size,
        (p.grid_cols as usize, p.grid_rows as usize),
        (p.original_width as usize, p.original_height as usize),
        device,
    )?)
}

/// Streams a reply as text: feed ids as they are generated, get the new text. Decodes the whole
/// reply so far and emits the new suffix, so multi-byte characters split across tokens come out
/// whole; stop ids are not shown.
#[derive(Debug)]
pub struct TextStream<'a> {
    tokenizer: &'a Blip3Tokenizer,
    stop_ids: Vec<u32>,
    ids: Vec<u32>,
    shown: String,
}

impl TextStream<'_> {
    /// Adds a generated id; returns the text it completes, if any.
    pub fn push(&mut self, id: u32) -> Option<String> {
        if self.stop_ids.contains(&id) {
            return None;
        }
        self.ids.push(id);
        let text = self.tokenizer.decode(&self.ids, true).ok()?;
        if text.len() > self.shown.len() && text.starts_with(&self.shown) {
            let new = text[self.shown.len()..].to_string();
            self.shown = text;
            Some(new)
        } else {
            None
        }
    }

    /// The text shown so far.
    pub fn text(&self) -> &str {
        &self.shown
    }

    /// The ids received so far (stop ids excluded).
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }
}
