//! `blip3 chat`: multi-turn chat in the terminal. Lines are messages; commands start with `/`:
//! `/image PATH` attaches an image to the next message, `/system TEXT` sets the system sentence,
//! `/reset` starts over, `/save FILE` writes the conversation as JSON, `/quit` leaves. Replies
//! stream as they are generated. When the conversation no longer fits the model's context, the
//! oldest exchanges are dropped (with a note).

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use blip3_data::image::{RgbImage, decode_path};
use blip3_data::sample::{Role, Turn};
use blip3_model::{GenerationConfig, MultimodalInput, XGenMM};
use blip3_processor::Processor;

use super::common::{DTypeArg, DeviceKindArg, device, load_model_dir, parse_device};

/// Arguments of `blip3 chat`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Tokens per reply at most.
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Sampling temperature (greedy when absent or 0).
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Nucleus filtering when sampling.
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Compute device.
    #[arg(long, value_parser = parse_device, default_value_t = DeviceKindArg::Flex)]
    pub device: DeviceKindArg,
    /// Weight dtype (default: keep the checkpoint's).
    #[arg(long, value_enum)]
    pub dtype: Option<DTypeArg>,
}

/// One message of the conversation with its images.
struct Exchange {
    turn: Turn,
    images: Vec<(PathBuf, RgbImage)>,
}

/// Runs the command.
pub fn run(args: Args) -> Result<()> {
    let sampling = GenerationConfig {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_p: args.top_p,
        seed: args.seed,
        ..GenerationConfig::default()
    };
    sampling
        .validate()
        .map_err(|e| anyhow::anyhow!("--temperature / --top-p: {e}"))?;
    let dev = device(args.device)?;
    let loaded = load_model_dir(&args.model, &dev, args.dtype)?;
    eprintln!(
        "blip3 chat with {} — /image PATH, /system TEXT, /reset, /save FILE, /quit",
        args.model.display()
    );
    let stdin = std::io::stdin();
    let mut session = Session {
        model: loaded.model,
        processor: loaded.processor,
        sampling,
        system: None,
        history: Vec::new(),
        pending_images: Vec::new(),
    };
    let mut out = std::io::stdout();
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end_matches(['\n', '\r']);
        if line.trim().is_empty() {
            continue;
        }
        match session.command(line) {
            Ok(Some(Control::Quit)) => break,
            Ok(Some(Control::Handled)) => continue,
            Ok(None) => {}
            Err(e) => {
                eprintln!("error: {e:#}");
                continue;
            }
        }
        if let Err(e) = session.reply(line, &mut out) {
            eprintln!("error: {e:#}");
        }
    }
    Ok(())
}

enum Control {
    Handled,
    Quit,
}

struct Session {
    model: XGenMM,
    processor: Processor,
    sampling: GenerationConfig,
    system: Option<String>,
    history: Vec<Exchange>,
    pending_images: Vec<(PathBuf, RgbImage)>,
}

impl Session {
    /// Handles a `/command`; `None` when the line is a message.
    fn command(&mut self, line: &str) -> Result<Option<Control>> {
        let Some(rest) = line.strip_prefix('/') else {
            return Ok(None);
        };
        let (cmd, arg) = rest.split_once(' ').unwrap_or((rest, ""));
        let arg = arg.trim();
        match cmd {
            "quit" | "exit" => return Ok(Some(Control::Quit)),
            "reset" => {
                self.history.clear();
                self.pending_images.clear();
                eprintln!("(conversation cleared)");
            }
            "system" => {
                self.system = (!arg.is_empty()).then(|| arg.to_string());
                eprintln!(
                    "(system sentence {})",
                    if arg.is_empty() {
                        "reset to the default"
                    } else {
                        "set"
                    }
                );
            }
            "image" => {
                if arg.is_empty() {
                    bail!("/image needs a path");
                }
                let path = PathBuf::from(arg);
                let rgb = decode_path(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
                eprintln!(
                    "(image {} attached to the next message, {}x{})",
                    path.display(),
                    rgb.width(),
                    rgb.height()
                );
                self.pending_images.push((path, rgb));
            }
            "save" => {
                if arg.is_empty() {
                    bail!("/save needs a file name");
                }
                self.save(Path::new(arg))?;
                eprintln!("(saved to {arg})");
            }
            other => bail!("unknown command /{other} (/image, /system, /reset, /save, /quit)"),
        }
        Ok(Some(Control::Handled))
    }

    fn save(&self, path: &Path) -> Result<()> {
        let mut messages = Vec::new();
        if let Some(s) = &self.system {
            messages.push(serde_json::json!({"role": "system", "content": s}));
        }
        for ex in &self.history {
            let role = match ex.turn.role {
                Role::System => "system",
                Role::User => "user",
                Role::Assistant => "assistant",
            };
            let images: Vec<String> = ex
                .images
                .iter()
                .map(|(p, _)| p.display().to_string())
                .collect();
            messages
                .push(serde_json::json!({"role": role, "content": ex.turn.text, "images": images}));
        }
        let text = serde_json::to_string_pretty(&serde_json::json!({"messages": messages}))?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// The turns to send: the system sentence, the history and the new message.
    fn turns(&self) -> Vec<Turn> {
        let mut turns = Vec::with_capacity(self.history.len() + 1);
        if let Some(s) = &self.system {
            turns.push(Turn {
                role: Role::System,
                text: s.clone(),
            });
        }
        turns.extend(self.history.iter().map(|e| e.turn.clone()));
        turns
    }

    fn reply(&mut self, line: &str, out: &mut impl Write) -> Result<()> {
        let images = std::mem::take(&mut self.pending_images);
        let markers = "<image>\n".repeat(images.len());
        self.history.push(Exchange {
            turn: Turn {
                role: Role::User,
                text: format!("{markers}{line}"),
            },
            images,
        });
        let device = self.model.device();
        // Drop the oldest exchanges until the prompt and the reply budget fit the context.
        let (prompt, inputs) = loop {
            let all_images: Vec<&RgbImage> = self
                .history
                .iter()
                .flat_map(|e| e.images.iter().map(|(_, i)| i))
                .collect();
            let inputs = all_images
                .iter()
                .map(|rgb| self.processor.image(rgb, &device))
                .collect::<Result<Vec<_>, _>>()?;
            let prompt = self.processor.encode_chat(&self.turns(), inputs.len())?;
            match self
                .processor
                .check_context(&prompt, &inputs, self.sampling.max_new_tokens)
            {
                Ok(_) => break (prompt, inputs),
                Err(e) if self.history.len() > 1 => {
                    let dropped = self.history.remove(0);
                    if self
                        .history
                        .first()
                        .is_some_and(|e| e.turn.role == Role::Assistant)
                    {
                        self.history.remove(0);
                    }
                    eprintln!(
                        "(the conversation no longer fits the context: dropped the oldest {} turn)",
                        match dropped.turn.role {
                            Role::User => "user",
                            _ => "earlier",
                        }
                    );
                    let _ = e;
                }
                Err(e) => {
                    self.history.pop();
                    return Err(e.into());
                }
            }
        };
        let cfg = self.processor.generation_config(&self.sampling, &prompt);
        let input = MultimodalInput {
            input_ids: vec![prompt.ids.clone()],
            images: vec![inputs],
            labels: None,
        };
        let mut stream = self.processor.text_stream(&prompt.stop_ids);
        let generated = self.model.generate(&input, &cfg, |_, tok| {
            if let Some(piece) = stream.push(tok) {
                let _ = write!(out, "{piece}");
                let _ = out.flush();
            }
            true
        })?;
        writeln!(out)?;
        let text = self
            .processor
            .decode_reply(&generated[0].token_ids, &prompt.stop_ids)?;
        self.history.push(Exchange {
            turn: Turn {
                role: Role::Assistant,
                text,
            },
            images: Vec::new(),
        });
        Ok(())
    }
}
