//! `blip3 generate`: one prompt and optional images through a model directory; tokens stream to
//! stdout as they are produced; `--json` ends with one JSON object on the last line.
//!
//! The prompt is the user turn of the model's chat template with the default system sentence
//! (`--system` replaces the sentence), or with `--raw` the text as is with BOS (base models,
//! few-shot prompts). Without `--prompt`, or with `--prompt -`, the prompt is read from stdin.
//! Everything about the model directory (tokenizer, image settings, special tokens) comes from
//! [`blip3_processor`].

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use blip3_data::image::decode_path;
use blip3_data::sample::{Role, Turn};
use blip3_model::{EarlyStopping, GenerationConfig};
use blip3_processor::{EncodedPrompt, Loaded, Processor};

use super::common::{DTypeArg, DeviceKindArg, check_dtype, device, load_model_dir, parse_device};

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
    /// The user's message; `-` or absent: read it from stdin.
    #[arg(long)]
    pub prompt: Option<String>,
    /// The system sentence of the chat template (default: the model's default sentence).
    #[arg(long, conflicts_with = "raw")]
    pub system: Option<String>,
    /// Send the prompt as raw text with BOS, without the chat template (base models, few-shot
    /// prompts); generation then stops at `<|endofchunk|>` or EOS.
    #[arg(long)]
    pub raw: bool,
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
    /// Beam search with this many beams (HF `num_beams`; 1: greedy or sampling). The reply is
    /// printed when the search ends; `--json` adds the best beam's `sequence_score`.
    #[arg(long, default_value_t = 1)]
    pub num_beams: usize,
    /// Beam search: a finished beam scores `sum(log p) / length^LP` (HF `length_penalty`).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub length_penalty: f32,
    /// Beam search: when to stop (HF `early_stopping`). The bare flag means `all-finished` (HF
    /// `True`); `heuristic` is HF's default `False`, `never` its canonical search.
    #[arg(long, value_enum, num_args = 0..=1, default_value_t = EarlyStoppingArg::Heuristic,
          default_missing_value = "all-finished")]
    pub early_stopping: EarlyStoppingArg,
    /// Compute device.
    #[arg(long, value_parser = parse_device, default_value_t = DeviceKindArg::Flex)]
    pub device: DeviceKindArg,
    /// Weight dtype (default: keep the checkpoint's).
    #[arg(long, value_enum)]
    pub dtype: Option<DTypeArg>,
}

impl Args {
    /// The arguments for one chat-template prompt with default settings.
    pub fn new(model: PathBuf, images: Vec<PathBuf>, prompt: &str) -> Self {
        Args {
            model,
            images,
            prompt: Some(prompt.to_string()),
            system: None,
            raw: false,
            max_new_tokens: 128,
            temperature: None,
            top_k: None,
            top_p: None,
            seed: 0,
            json: false,
            top_logprobs: 0,
            num_beams: 1,
            length_penalty: 1.0,
            early_stopping: EarlyStoppingArg::Heuristic,
            device: DeviceKindArg::Flex,
            dtype: None,
        }
    }
}

/// `--early-stopping` values (HF `early_stopping`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EarlyStoppingArg {
    /// HF `False`: stop when no running beam can beat the finished ones at the current length.
    Heuristic,
    /// HF `True`: stop as soon as `--num-beams` hypotheses are finished.
    AllFinished,
    /// HF `"never"`: the canonical beam search.
    Never,
}

impl EarlyStoppingArg {
    /// The model's setting.
    pub fn setting(self) -> EarlyStopping {
        match self {
            EarlyStoppingArg::Heuristic => EarlyStopping::Heuristic,
            EarlyStoppingArg::AllFinished => EarlyStopping::AllFinished,
            EarlyStoppingArg::Never => EarlyStopping::Never,
        }
    }
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
        num_beams: args.num_beams,
        length_penalty: args.length_penalty,
        early_stopping: args.early_stopping.setting(),
        ..GenerationConfig::default()
    };
    cfg.validate().map_err(|e| {
        anyhow::anyhow!(
            "--temperature / --top-k / --top-p / --num-beams / --length-penalty / --top-logprobs: {e}"
        )
    })?;
    Ok(cfg)
}

/// Encodes the prompt as the arguments ask (chat template with an optional system sentence, or raw).
pub fn encode_prompt(
    processor: &Processor,
    prompt: &str,
    system: Option<&str>,
    raw: bool,
    images: usize,
) -> Result<EncodedPrompt> {
    let text = with_markers(prompt, images)?;
    let encoded = if raw {
        processor.encode_raw(&text, images)
    } else {
        let mut turns = Vec::with_capacity(2);
        if let Some(system) = system {
            turns.push(Turn {
                role: Role::System,
                text: system.to_string(),
            });
        }
        turns.push(Turn {
            role: Role::User,
            text,
        });
        processor.encode_chat(&turns, images)
    };
    Ok(encoded?)
}

/// The prompt text: `--prompt`, or stdin when it is absent or `-`.
fn prompt_text(arg: Option<&str>) -> Result<String> {
    match arg {
        Some(p) if p != "-" => Ok(p.to_string()),
        _ => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading the prompt from stdin")?;
            let text = text.trim_end_matches(['\n', '\r']).to_string();
            if text.is_empty() {
                bail!("no prompt: give --prompt TEXT or write the prompt to stdin");
            }
            Ok(text)
        }
    }
}

/// Runs the command.
pub fn run(args: Args) -> Result<()> {
    let sampling = sampling_config(&args)?;
    let dev = device(args.device)?;
    let dtype = args.dtype.map(|d| d.dtype());
    check_dtype(&dev, dtype)?;
    let prompt = prompt_text(args.prompt.as_deref())?;
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
        model, processor, ..
    } = load_model_dir(&args.model, &dev, args.dtype)?;
    let encoded = encode_prompt(
        &processor,
        &prompt,
        args.system.as_deref(),
        args.raw,
        args.images.len(),
    )?;
    let mut inputs = Vec::with_capacity(args.images.len());
    for (path, rgb) in args.images.iter().zip(&decoded) {
        inputs.push(
            processor
                .image(rgb, &dev)
                .with_context(|| format!("processing {}", path.display()))?,
        );
    }
    let prompt_tokens = encoded.ids.len();
    let cfg = processor.generation_config(&sampling, &encoded);
    let input = blip3_model::MultimodalInput {
        input_ids: vec![encoded.ids.clone()],
        images: vec![inputs],
        labels: None,
    };
    // Stream the reply as it is produced (multi-byte safe).
    let mut stream = processor.text_stream(&encoded.stop_ids);
    let mut out = std::io::stdout();
    let gen_start = Instant::now();
    let generated = model.generate(&input, &cfg, |_, tok| {
        if let Some(new) = stream.push(tok) {
            let _ = write!(out, "{new}");
            let _ = out.flush();
        }
        true
    })?;
    println!();
    let g = &generated[0];
    let text = processor.decode_reply(&g.token_ids, &encoded.stop_ids)?;
    log::info!(
        "{} tokens in {:.0} ms ({:.1} ms/token), prompt {} text + {} vision tokens",
        g.token_ids.len(),
        gen_start.elapsed().as_secs_f64() * 1e3,
        gen_start.elapsed().as_secs_f64() * 1e3 / g.token_ids.len().max(1) as f64,
        prompt_tokens,
        g.vision_tokens
    );
    if args.json {
        let obj = serde_json::json!({
            "text": text,
            "token_ids": g.token_ids,
            "prompt_tokens": prompt_tokens,
            "vision_tokens": g.vision_tokens,
            "top_logprobs": g.top_logprobs,
            "sequence_score": g.sequence_score,
            "num_beams": cfg.num_beams,
            "finish_reason": format!("{:?}", g.finish).to_lowercase(),
            "time_ms": t0.elapsed().as_secs_f64() * 1e3,
        });
        println!("{obj}");
    }
    Ok(())
}
