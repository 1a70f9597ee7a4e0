//! `blip3 worker`: serves this machine's devices to a trainer on another machine (or this one)
//! through Burn's remote backend. A stage config lists the worker in `[devices] remote`; see
//! docs/scaling.md for the launch recipes (Slurm, ssh) and what travels over the link.
//!
//! The worker refuses clients that do not present its token (`--token-env`, default
//! `BLIP3_WORKER_TOKEN`), unless started with `--no-auth`, and logs every connection attempt with
//! the client's address (WebSocket) or authenticated key (Iroh). On start it prints one line to
//! stdout, `blip3 worker: serving DEVICE at ADDRESS`, with the address trainers dial (the real
//! port when `--listen` asked for port 0).

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::server::PeerAuthorizer;
use burn::server::{
    AuthorizationRequest, IrohIdentity, IrohRelays, IrohTransport, RemoteServer, TokenAuthorizer,
    WebSocketTransport,
};

use super::common::{DeviceKindArg, parse_device};

/// Arguments of `blip3 worker`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The device to serve.
    #[arg(long, value_parser = parse_device, default_value_t = DeviceKindArg::Flex)]
    pub device: DeviceKindArg,
    /// Device indices of that backend to serve (trainers pick one with `#INDEX`); default 0.
    #[arg(long = "index", default_values_t = [0usize])]
    pub indices: Vec<usize>,
    /// Address to listen on. The default binds loopback only; use the node's address (or
    /// 0.0.0.0) on a cluster. Port 0 picks a free port (printed on start).
    #[arg(long, default_value = "127.0.0.1:29500")]
    pub listen: SocketAddr,
    /// Transport: `websocket` (trusted networks: the token travels in clear text) or `iroh`
    /// (QUIC, encrypted, this worker authenticated by its key; no relays, direct addresses).
    #[arg(long, value_enum, default_value_t = TransportArg::Websocket)]
    pub transport: TransportArg,
    /// Environment variable holding the token clients must present.
    #[arg(long, default_value = "BLIP3_WORKER_TOKEN")]
    pub token_env: String,
    /// Accept clients without a token (loopback experiments only).
    #[arg(long)]
    pub no_auth: bool,
    /// Iroh: the file holding this worker's secret key (created on first use), so its endpoint
    /// id stays the same across restarts.
    #[arg(long, default_value = ".blip3-worker.key")]
    pub identity: PathBuf,
}

/// `--transport` values.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportArg {
    /// WebSocket over TCP.
    Websocket,
    /// Iroh (QUIC).
    Iroh,
}

/// Checks each client's token and logs who connects.
struct LoggingAuthorizer {
    token: Option<TokenAuthorizer>,
}

impl PeerAuthorizer for LoggingAuthorizer {
    fn authorize(&self, request: AuthorizationRequest<'_>) -> Result<(), String> {
        let (client, index) = (request.client, request.device_index);
        let verdict = match &self.token {
            Some(token) => token.authorize(request),
            None => Ok(()),
        };
        match &verdict {
            Ok(()) => log::info!("{client} connected to device {index}"),
            Err(why) => log::warn!("refused {client} (device {index}): {why}"),
        }
        verdict
    }
}

/// Runs the command: serves until interrupted (SIGINT/SIGTERM).
pub fn run(args: Args) -> Result<()> {
    let token = if args.no_auth {
        None
    } else {
        Some(required_token(&args.token_env)?)
    };
    let (server, name) = server(args.device, &args.indices, token)?;
    match args.transport {
        TransportArg::Websocket => {
            let listener = TcpListener::bind(args.listen)
                .with_context(|| format!("--listen {}: cannot bind", args.listen))?;
            let address = listener.local_addr().context("listening address")?;
            announce(&name, &format!("ws://{address}"))?;
            server
                .serve(WebSocketTransport::from_listener(listener))
                .map_err(|e| anyhow::anyhow!("worker on ws://{address}: {e}"))
        }
        TransportArg::Iroh => {
            if args.listen.port() == 0 {
                // Iroh binds its UDP socket inside `serve`; the start line must name the real
                // port, so it is chosen here.
                bail!("--transport iroh needs an explicit --listen port (not 0)");
            }
            let identity = IrohIdentity::load_or_create(&args.identity)
                .map_err(|e| anyhow::anyhow!("--identity {}: {e}", args.identity.display()))?;
            let transport = IrohTransport::new(identity)
                .with_relays(IrohRelays::Disabled)
                .with_port(args.listen.port());
            announce(&name, &format!("iroh://{}@{}", transport.id(), args.listen))?;
            server
                .serve(transport)
                .map_err(|e| anyhow::anyhow!("worker on iroh port {}: {e}", args.listen.port()))
        }
    }
}

/// The token in `env`, which must be set and non-empty.
pub fn required_token(env: &str) -> Result<String> {
    let value = std::env::var(env).unwrap_or_default();
    if value.is_empty() {
        bail!(
            "{env} is not set: a worker needs a token its trainers present (set it to a secret \
             shared with the trainer), or --no-auth for loopback experiments"
        );
    }
    Ok(value)
}

/// A Burn server over devices `indices` of `device`, refusing clients without `token` (none:
/// accepting everyone) and logging who connects; also returns its devices' name for messages.
pub fn server(
    device: DeviceKindArg,
    indices: &[usize],
    token: Option<String>,
) -> Result<(RemoteServer, String)> {
    let token = token
        .map(|t| TokenAuthorizer::new(t).context("the worker token"))
        .transpose()?;
    let devices = indices
        .iter()
        .map(|&i| {
            device
                .device(i)
                .map_err(|e| anyhow::anyhow!("--device: {e}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let name = format!("{device} {indices:?}");
    let server = RemoteServer::new(devices).with_authorizer(LoggingAuthorizer { token });
    Ok((server, name))
}

/// Prints the start line trainers and launch scripts read.
fn announce(device: &str, address: &str) -> Result<()> {
    let mut out = std::io::stdout();
    writeln!(out, "blip3 worker: serving {device} at {address}")?;
    out.flush()?;
    log::info!("worker ready: {device} at {address}; stop it with Ctrl-C or SIGTERM");
    Ok(())
}
