//! `blip3 generate`: one prompt (the user turn of the Phi-3 chat template, with the default system
//! sentence) and optional images through a model directory; tokens stream to stdout as they are
//! produced; `--json` ends with one JSON object on the last line.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use blip3_data::anyres::{ImageProcessor, ImageProcessorConfig};
use blip3_data::image::decode_path;
use blip3_data::sample::{Origin, Role, Turn};
use blip3_data::template::ChatTemplate;
use blip3_data::tokenizer::Blip3Tokenizer;
use blip3_model::loader::{LoadOptions, load_model_dir};
use blip3_model::{
    AspectMode, GenerationConfig, ImageInput, MultimodalInput, SpecialTokens, XGenMM,
};
use burn::prelude::*;

use super::common::{DTypeArg, DeviceKindArg, check_dtype, device, parse_device};

/// Arguments of `blip3 generate`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model directory: a released HF xGen-MM directory, an export, or a blip3 checkpoint
    /// (with its tokenizer.json).
    #[arg(long)]
    pub model: PathBuf,
    /// An image; repeat for several. `<image>` markers in the prompt place them in order; without
    /// markers, `<image>\n` is prepended once per image. Only regular files within the image
    /// limits are read (env BLIP3_MAX_IMAGE_BYTES, default 64 MiB; BLIP3_MAX_IMAGE_PIXELS, default
    /// 178956970; see docs/data.md).
    #[arg(long = "image")]
    pub images: Vec<PathBuf>,
    /// The user's message.
    #[arg(long)]
    pub prompt: String,
    /// Maximum tokens to generate.
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// Sampling temperature (greedy when absent or 0).
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Top-k filtering when sampling.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Nucleus filtering when sampling.
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print one JSON object as the last stdout line.
    #[arg(long)]
    pub json: bool,
    /// Record the K most likely tokens of every step (natural log) in the JSON output.
    #[arg(long, default_value_t = 0)]
    pub top_logprobs: usize,
    /// Compute device.
    #[arg(long, value_parser = parse_device, default_value_t = DeviceKindArg::Flex)]
    pub device: DeviceKindArg,
    /// Weight dtype (default: keep the checkpoint's).
    #[arg(long, value_enum)]
    pub dtype: Option<DTypeArg>,
}

/// A loaded model with its tokenizer and image pipeline.
pub struct Loaded {
    /// The model (special tokens set from the tokenizer).
    pub model: XGenMM,
    /// The tokenizer.
    pub tokenizer: Blip3Tokenizer,
    /// The image pipeline matching the model.
    pub images: ImageProcessor,
}

/// Loads a model directory for inference.
pub fn load(dir: &Path, device: &Device, dtype: Option<burn::tensor::DType>) -> Result<Loaded> {
    let model = load_model_dir(dir, device, LoadOptions { dtype })
        .with_context(|| format!("loading the model from {}", dir.display()))?;
    let tokenizer = Blip3Tokenizer::from_dir(dir)
        .with_context(|| format!("loading the tokenizer from {}", dir.display()))?;
    let model = model.with_special_tokens(SpecialTokens {
        image: tokenizer.image_token_id(),
        pad: tokenizer.pad_id(),
    });
    let cfg = model.config();
    let pre = dir.join("preprocessor_config.json");
    let image_cfg = if pre.exists() {
        ImageProcessorConfig::from_hf_preprocessor_config(&pre)?
    } else {
        ImageProcessorConfig::for_model(
            cfg.vision.image_size,
            &cfg.anyres_grids,
            cfg.image_aspect_ratio == AspectMode::AnyRes,
        )
    };
    let images = ImageProcessor::new(image_cfg)?;
    Ok(Loaded {
        model,
        tokenizer,
        images,
    })
}

/// The prompt text with one `<image>` marker per image (prepended when the prompt has none).
pub fn with_markers(prompt: &str, images: usize) -> Result<String> {
    let markers = prompt.matches("<image>").count();
    if markers == 0 && images > 0 {
        return Ok(format!("{}{prompt}", "<image>\n".repeat(images)));
    }
    if markers != images {
        bail!("the prompt has {markers} <image> markers but {images} images were given");
    }
    Ok(prompt.to_string())
}

/// The decoding settings of the arguments, checked by [`GenerationConfig::validate`] (before any
/// model is loaded); the stop and padding ids come from the tokenizer later.
fn sampling_config(args: &Args) -> Result<GenerationConfig> {
    let cfg = GenerationConfig {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
        top_logprobs: args.top_logprobs,
        ..GenerationConfig::default()
    };
    cfg.validate()
        .map_err(|e| anyhow::anyhow!("--temperature / --top-k / --top-p: {e}"))?;
    Ok(cfg)
}

/// Runs the command.
pub fn run(args: Args) -> Result<()> {
    let sampling = sampling_config(&args)?;
    let dev = device(args.device)?;
    let dtype = args.dtype.map(|d| d.dtype());
    check_dtype(&dev, dtype)?;
    let t0 = Instant::now();
    // Images are read first, so that a file refused by the image limits (not a regular file, over
    // BLIP3_MAX_IMAGE_BYTES, or declaring more than BLIP3_MAX_IMAGE_PIXELS pixels) fails at once,
    // before the model is loaded. The errors name the file and the limit.
    let decoded = args
        .images
        .iter()
        .map(|path| decode_path(path).map_err(|e| anyhow::anyhow!("--image: {e}")))
        .collect::<Result<Vec<_>>>()?;
    let Loaded {
        model,
        tokenizer,
        images,
    } = load(&args.model, &dev, dtype)?;
    let prompt = with_markers(&args.prompt, args.images.len())?;
    let turns = vec![Turn {
        role: Role::User,
        text: prompt,
    }];
    let origin = Origin {
        file: "<prompt>".into(),
        key: String::new(),
    };
    let ids = ChatTemplate::default()
        .encode_prompt(&tokenizer, &turns, args.images.len(), &origin)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut inputs = Vec::with_capacity(args.images.len());
    for (path, rgb) in args.images.iter().zip(&decoded) {
        let p = images
            .process(rgb)
            .with_context(|| format!("processing {}", path.display()))?;
        let [v, c, s, _] = p.shape();
        inputs.push(ImageInput::from_host(
            p.pixels,
            v,
            c,
            s,
            (p.grid_cols as usize, p.grid_rows as usize),
            (p.original_width as usize, p.original_height as usize),
            &dev,
        )?);
    }
    let prompt_tokens = ids.len();
    let input = MultimodalInput {
        input_ids: vec![ids],
        images: vec![inputs],
        labels: None,
    };
    let cfg = GenerationConfig {
        stop_ids: vec![tokenizer.end_id(), tokenizer.eos_id()],
        pad_id: tokenizer.pad_id(),
        ..sampling
    };
    // Stream: decode everything produced so far and print the new suffix (multi-byte safe).
    let stop = cfg.stop_ids.clone();
    let mut produced: Vec<u32> = Vec::new();
    let mut shown = String::new();
    let mut out = std::io::stdout();
    let gen_start = Instant::now();
    let generated = model.generate(&input, &cfg, |_, tok| {
        if !stop.contains(&tok) {
            produced.push(tok);
            if let Ok(text) = tokenizer.decode(&produced, true)
                && text.len() > shown.len()
                && text.starts_with(&shown)
            {
                let _ = write!(out, "{}", &text[shown.len()..]);
                let _ = out.flush();
                shown = text;
            }
        }
        true
    })?;
    println!();
    let g = &generated[0];
    let text_ids: Vec<u32> = g
        .token_ids
        .iter()
        .copied()
        .filter(|t| !stop.contains(t))
        .collect();
    let text = tokenizer.decode(&text_ids, true)?;
    log::info!(
        "{} tokens in {:.0} ms ({:.1} ms/token), prompt {} text + {} vision tokens",
        g.token_ids.len(),
        gen_start.elapsed().as_secs_f64() * 1e3,
        gen_start.elapsed().as_secs_f64() * 1e3 / g.token_ids.len().max(1) as f64,
        prompt_tokens,
        g.vision_tokens
    );
    if args.json {
        let top: Vec<Vec<(u32, f32)>> = g.top_logprobs.clone();
        let obj = serde_json::json!({
            "text": text,
            "token_ids": g.token_ids,
            "prompt_tokens": prompt_tokens,
            "vision_tokens": g.vision_tokens,
            "top_logprobs": top,
            "finish_reason": format!("{:?}", g.finish).to_lowercase(),
            "time_ms": t0.elapsed().as_secs_f64() * 1e3,
        });
        println!("{obj}");
    }
    Ok(())
}
