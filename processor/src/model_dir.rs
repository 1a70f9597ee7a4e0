//! Reading a model directory: **the one place** that decides which config, tokenizer, image
//! settings and special token ids a model directory means. `generate`, `chat`, `serve`, `eval`,
//! `train` and the demo all come through here (see docs/model.md §"Model directories").
//!
//! A model directory is a released Hugging Face xGen-MM directory, an export of ours
//! (`export_hf`), or a native checkpoint (`model.bpk`). What is read, in this order:
//!
//! 1. `config.json` (every layout has one): the architecture, and the image settings the model
//!    was built for — base view size `vision_config.image_size`, the any-res canvases
//!    `anyres_grids`, any-res or fixed per `image_aspect_ratio` — with SigLIP's normalisation,
//!    mean = std = 0.5.
//! 2. `preprocessor_config.json`, when present: each field it has (`image_mean`, `image_std`,
//!    `image_size`/`size`, `anyres_grids`, `image_aspect_ratio`) replaces the value from step 1;
//!    fields it lacks keep the model's values. Its view size must equal the vision tower's, since
//!    the model cannot take other views.
//! 3. The tokenizer ([`TokenizerSource`]): `tokenizer.json` (+ `tokenizer_config.json`,
//!    `special_tokens_map.json`) from the model directory unless another is named. Its vocabulary
//!    before the media tokens must equal the config's `initial_tokenizer_len`.
//! 4. Special token ids (`<image>`, `<pad>`) come from that tokenizer and are set on the model;
//!    the model crate's own guess ([`blip3_model::SpecialTokens::from_config`]) is only a default
//!    for library users who load weights without a tokenizer.

use std::path::{Path, PathBuf};

use blip3_data::anyres::ImageProcessorConfig;
use blip3_data::tokenizer::Blip3Tokenizer;
use blip3_model::loader::{LoadOptions, load_model_dir, read_config};
use blip3_model::{XGenMM, XGenMMConfig};
use burn::prelude::Device;

use crate::error::ProcessorError;
use crate::processor::{Processor, check_vocab, image_config_for, special_tokens};

/// Where the tokenizer comes from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TokenizerSource {
    /// `tokenizer.json` (+ configs) in the model directory; when it has none and the model was
    /// built for the tiny test tokenizer (same `initial_tokenizer_len`), the tiny tokenizer, with
    /// a warning.
    #[default]
    ModelDir,
    /// A directory holding `tokenizer.json`.
    Dir(PathBuf),
    /// The tiny test tokenizer committed in the data crate.
    Tiny,
    /// The tiny test tokenizer padded to Phi-3's vocabulary (`tiny-phi3`: same special ids and
    /// `initial_tokenizer_len` as Phi-3; see `Blip3Tokenizer::tiny_with_base_vocab`), for models
    /// built for Phi-3's vocabulary trained on synthetic data.
    TinyPhi3,
}

impl TokenizerSource {
    /// Parses a command-line or config value: `tiny`, `tiny-phi3`, or a directory. `None` means
    /// the model directory's own tokenizer.
    pub fn parse(value: Option<&str>) -> Self {
        match value {
            None => TokenizerSource::ModelDir,
            Some("tiny") => TokenizerSource::Tiny,
            Some("tiny-phi3") => TokenizerSource::TinyPhi3,
            Some(dir) => TokenizerSource::Dir(PathBuf::from(dir)),
        }
    }

    /// Opens a tokenizer that does not come from a model directory (`tiny` or a directory), for
    /// a model built in memory from a preset.
    pub fn open_standalone(&self) -> Result<Blip3Tokenizer, ProcessorError> {
        match self {
            TokenizerSource::Tiny => Ok(Blip3Tokenizer::tiny()?),
            TokenizerSource::TinyPhi3 => Ok(tiny_phi3()?),
            TokenizerSource::Dir(d) => Ok(Blip3Tokenizer::from_dir(d)?),
            TokenizerSource::ModelDir => Err(ProcessorError::Mismatch(
                "a model built from a preset has no model directory to take the tokenizer from; \
                 name one (a directory, or `tiny`)"
                    .into(),
            )),
        }
    }
}

/// The name of the file whose fields override the model's image settings.
pub const PREPROCESSOR_CONFIG: &str = "preprocessor_config.json";

/// A model directory's configuration, tokenizer and image settings, read by the rule in the
/// module documentation. Weights are not read until [`ModelDir::load_model`].
#[derive(Debug, Clone)]
pub struct ModelDir {
    /// The directory.
    pub path: PathBuf,
    /// The model configuration from `config.json`.
    pub config: XGenMMConfig,
    /// The image settings: the model's, overridden by `preprocessor_config.json`.
    pub image: ImageProcessorConfig,
    /// The `preprocessor_config.json` that was applied, if any.
    pub preprocessor: Option<PathBuf>,
    /// The tokenizer.
    pub tokenizer: Blip3Tokenizer,
    /// Where the tokenizer came from (a directory, or `tiny`), for reports.
    pub tokenizer_name: String,
}

impl ModelDir {
    /// Reads `config.json`, `preprocessor_config.json` (if present) and the tokenizer of `dir`.
    pub fn open(dir: &Path, tokenizer: &TokenizerSource) -> Result<Self, ProcessorError> {
        let config = read_config(dir)?;
        let mut image = image_config_for(&config)?;
        let pre = dir.join(PREPROCESSOR_CONFIG);
        let preprocessor = pre.is_file().then_some(pre);
        if let Some(pre) = &preprocessor {
            image = image.overridden_by_hf_file(pre)?;
            if image.image_size as usize != config.vision.image_size {
                return Err(ProcessorError::Mismatch(format!(
                    "{}: image size {} differs from the vision tower's {} in {}",
                    pre.display(),
                    image.image_size,
                    config.vision.image_size,
                    dir.join("config.json").display()
                )));
            }
        }
        let (tokenizer, tokenizer_name) = open_tokenizer(dir, tokenizer, &config)?;
        check_vocab(&config, &tokenizer)?;
        Ok(ModelDir {
            path: dir.to_path_buf(),
            config,
            image,
            preprocessor,
            tokenizer,
            tokenizer_name,
        })
    }

    /// The processor of this directory (tokenizer, image settings, chat template).
    pub fn processor(&self) -> Result<Processor, ProcessorError> {
        Processor::new(self.tokenizer.clone(), self.image.clone(), &self.config)
    }

    /// Loads the weights (native checkpoint or HF layout) on `device` and sets the special token
    /// ids from the tokenizer.
    pub fn load_model(&self, device: &Device, opts: LoadOptions) -> Result<XGenMM, ProcessorError> {
        let model = load_model_dir(&self.path, device, opts)?;
        if model.config() != &self.config {
            return Err(ProcessorError::Mismatch(format!(
                "{}: the weights' config differs from config.json",
                self.path.display()
            )));
        }
        Ok(model.with_special_tokens(special_tokens(&self.tokenizer)))
    }
}

/// A loaded model with its processor.
#[derive(Debug)]
pub struct Loaded {
    /// The model, special token ids set from the tokenizer.
    pub model: XGenMM,
    /// Its processor.
    pub processor: Processor,
    /// What was read from the directory.
    pub dir: ModelDir,
}

/// Opens a model directory and loads its weights on `device`: [`ModelDir::open`], then
/// [`ModelDir::load_model`] and [`ModelDir::processor`].
pub fn load(
    dir: &Path,
    tokenizer: &TokenizerSource,
    device: &Device,
    opts: LoadOptions,
) -> Result<Loaded, ProcessorError> {
    let dir = ModelDir::open(dir, tokenizer)?;
    let model = dir.load_model(device, opts)?;
    let processor = dir.processor()?;
    Ok(Loaded {
        model,
        processor,
        dir,
    })
}

/// The `tiny-phi3` tokenizer.
fn tiny_phi3() -> Result<Blip3Tokenizer, blip3_data::DataError> {
    Blip3Tokenizer::tiny_with_base_vocab(blip3_data::tokenizer::PHI3_BASE_VOCAB)
}

fn open_tokenizer(
    dir: &Path,
    source: &TokenizerSource,
    config: &XGenMMConfig,
) -> Result<(Blip3Tokenizer, String), ProcessorError> {
    Ok(match source {
        TokenizerSource::Dir(d) => (Blip3Tokenizer::from_dir(d)?, d.display().to_string()),
        TokenizerSource::Tiny => (Blip3Tokenizer::tiny()?, "tiny".to_string()),
        TokenizerSource::TinyPhi3 => (tiny_phi3()?, "tiny-phi3".to_string()),
        TokenizerSource::ModelDir if dir.join("tokenizer.json").is_file() => {
            (Blip3Tokenizer::from_dir(dir)?, dir.display().to_string())
        }
        TokenizerSource::ModelDir => {
            let tiny = Blip3Tokenizer::tiny()?;
            if tiny.initial_len() != config.initial_tokenizer_len {
                return Err(ProcessorError::Mismatch(format!(
                    "{} has no tokenizer.json; give the tokenizer directory",
                    dir.display()
                )));
            }
            log::warn!(
                "{} has no tokenizer.json; using the tiny test tokenizer, which matches the \
                 model's vocabulary size",
                dir.display()
            );
            (tiny, "tiny".to_string())
        }
    })
}
