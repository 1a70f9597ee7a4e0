//! `blip3 launch --config stage.toml`: one command for every process of a multi-machine job,
//! started by a cluster launcher (`srun`, `torchrun`-style environments, or by hand with
//! `RANK`/`WORLD_SIZE`/`MASTER_ADDR`/`MASTER_PORT`). Rank 0 trains the stage; every other rank
//! serves its devices as a `blip3 worker` would, registers them with rank 0, and exits when the
//! run ends. See `blip3_train::launch` for the rendezvous and docs/scaling.md for the recipes.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use anyhow::{Context, Result};
use blip3_train::config::Strategy;
use blip3_train::launch::{ClusterEnv, gather_workers, register, wait_for_trainer};
use burn::server::WebSocketTransport;

use super::common::{DeviceKindArg, parse_device};

/// Arguments of `blip3 launch`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// What rank 0 trains (the same options as `blip3 train`).
    #[command(flatten)]
    pub train: super::train::Args,
    /// Ranks ≥ 1: the device kind to serve.
    #[arg(long, value_parser = parse_device, default_value_t = DeviceKindArg::Flex)]
    pub worker_device: DeviceKindArg,
    /// Ranks ≥ 1: the device indices to serve (each becomes one replica). Default: the
    /// launcher's local rank (`LOCAL_RANK`, `SLURM_LOCALID`; one process per GPU), else 0.
    #[arg(long = "worker-index")]
    pub worker_indices: Vec<usize>,
    /// Ranks ≥ 1: where their Burn server listens (port 0: a free port, registered with rank 0).
    #[arg(long, default_value = "0.0.0.0:0")]
    pub worker_listen: SocketAddr,
}

/// Runs the command as the trainer (rank 0) or as a worker (any other rank).
pub fn run(args: Args) -> Result<()> {
    let env = ClusterEnv::from_env().map_err(anyhow::Error::msg)?;
    let mut cfg = args.train.stage_config()?;
    // Both sides need the shared token: the workers check it on every device connection, the
    // trainer on every registration.
    let token = super::worker::required_token(&cfg.devices.remote_token_env)?;
    let timeout = match cfg.devices.remote_timeout_s {
        0 => Duration::from_secs(u64::from(u32::MAX)),
        s => Duration::from_secs(s),
    };
    log::info!(
        "rank {} of {} from {}",
        env.rank,
        env.world_size,
        env.source
    );
    if env.rank > 0 {
        return serve_as_worker(&env, &args, &token, timeout);
    }
    let (registrations, workers) = if env.world_size > 1 {
        gather_workers(env.master_port, env.world_size, &token, timeout)?
    } else {
        (Vec::new(), Vec::new())
    };
    cfg.devices.remote.extend(workers);
    if cfg.devices.total() > 1 && cfg.devices.strategy == Strategy::Single {
        log::info!(
            "{} devices: training with strategy multi",
            cfg.devices.total()
        );
        cfg.devices.strategy = Strategy::Multi;
    }
    let trained = super::train::run_config(cfg, &args.train);
    // Closing the registrations releases the workers.
    drop(registrations);
    trained
}

/// A worker rank: serves its devices, registers them with rank 0, and returns when rank 0 closes
/// the registration (its run ended).
fn serve_as_worker(env: &ClusterEnv, args: &Args, token: &str, timeout: Duration) -> Result<()> {
    let indices = if args.worker_indices.is_empty() {
        vec![env.local_rank.unwrap_or(0)]
    } else {
        args.worker_indices.clone()
    };
    let (server, name) =
        super::worker::server(args.worker_device, &indices, Some(token.to_string()))?;
    let listener = TcpListener::bind(args.worker_listen)
        .with_context(|| format!("--worker-listen {}: cannot bind", args.worker_listen))?;
    let address = listener.local_addr().context("listening address")?;
    std::thread::spawn(move || {
        if let Err(e) = server.serve(WebSocketTransport::from_listener(listener)) {
            log::error!("worker on ws://{address}: {e}");
        }
    });
    let registration = register(env, address.port(), indices.len(), token, timeout)?;
    log::info!(
        "rank {}: serving {name} on port {}, registered with {}:{}",
        env.rank,
        address.port(),
        env.master_addr,
        env.master_port
    );
    wait_for_trainer(registration);
    log::info!(
        "rank {}: the trainer closed the rendezvous; exiting",
        env.rank
    );
    Ok(())
}
