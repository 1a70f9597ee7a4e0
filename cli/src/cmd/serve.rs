//! `blip3 serve`: the OpenAI-compatible server (blip3-server) over a model directory.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Result;
use blip3_data::image::ImageLimits;
use blip3_server::{SchedulerConfig, ServeConfig};

use super::common::{DTypeArg, DeviceKindArg, device, load_model_dir, parse_device};

/// Arguments of `blip3 serve`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model directory (released HF layout, an export, or a blip3 checkpoint).
    #[arg(long)]
    pub model: PathBuf,
    /// Address to bind; the default serves this machine only. Use 0.0.0.0 to serve others (and
    /// set --api-key).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port (0: any free port, printed at start).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` (env BLIP3_API_KEY).
    #[arg(long, env = "BLIP3_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// The model name `/v1/models` lists (default: the directory's name).
    #[arg(long)]
    pub served_name: Option<String>,
    /// Allow images from local files inside this folder (`file://` URLs or paths); without it
    /// only `data:` URLs are accepted.
    #[arg(long)]
    pub allow_root: Option<PathBuf>,
    /// Largest request body in MiB.
    #[arg(long, default_value_t = 32)]
    pub max_body_mib: usize,
    /// Sequences decoded together at most.
    #[arg(long, default_value_t = 32)]
    pub max_seqs: usize,
    /// Requests waiting for a slot at most; more get HTTP 429.
    #[arg(long, default_value_t = 256)]
    pub max_queue: usize,
    /// Prompt positions prefilled between two decode steps at most (bounds how long running
    /// streams wait while newcomers are prefilled; one newcomer is always admitted).
    #[arg(long, default_value_t = 512)]
    pub max_prefill_tokens: usize,
    /// `max_tokens` for requests that give none (capped by the context left).
    #[arg(long, default_value_t = 512)]
    pub default_max_tokens: usize,
    /// Compute device.
    #[arg(long, value_parser = parse_device, default_value_t = DeviceKindArg::Flex)]
    pub device: DeviceKindArg,
    /// Weight dtype (default: keep the checkpoint's).
    #[arg(long, value_enum)]
    pub dtype: Option<DTypeArg>,
}

/// Runs the command.
pub fn run(args: Args) -> Result<()> {
    let dev = device(args.device)?;
    let loaded = load_model_dir(&args.model, &dev, args.dtype)?;
    let name = args.served_name.clone().unwrap_or_else(|| {
        args.model
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| "blip3".into())
    });
    let config = ServeConfig {
        addr: SocketAddr::new(args.host, args.port),
        model_name: name,
        api_key: args.api_key.filter(|k| !k.is_empty()),
        max_body_bytes: args.max_body_mib << 20,
        allow_root: args.allow_root,
        image_limits: ImageLimits::from_env()?,
        scheduler: SchedulerConfig {
            max_seqs: args.max_seqs.max(1),
            max_queue: args.max_queue.max(1),
            max_prefill_tokens: args.max_prefill_tokens.max(1),
        },
        default_max_tokens: args.default_max_tokens.max(1),
    };
    if !config.addr.ip().is_loopback() && config.api_key.is_none() {
        log::warn!(
            "serving on {} without --api-key: anyone who can reach this address can use the model",
            config.addr
        );
    }
    blip3_server::serve(loaded.model, loaded.processor, config)?;
    Ok(())
}
