//! blip3-server: `blip3 serve`, an OpenAI-compatible HTTP API over one model with continuous
//! batching, and a small chat page.
//!
//! - [`openai`]: the request and response schema; [`api`]: the routes and axum handlers
//!   (`POST /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models`, `GET /health`,
//!   `GET /metrics`, the page at `/`), which read requests (`request.rs`) and answer them
//!   collected or streamed (`respond.rs`).
//! - [`scheduler`]: the model thread and its continuous batching.
//! - [`images`]: where request images may come from.
//! - [`reply`]: streaming text with stop strings; [`metrics`]: Prometheus metrics.
//!
//! Safe by default: binds 127.0.0.1, optional bearer key, a request body limit, a bounded number
//! of running sequences and waiting requests (429 beyond), an OpenAI-style error object on every
//! failure. docs/serving.md describes the API, the limits and the measured throughput.
#![warn(missing_docs)]

pub mod api;
pub mod images;
pub mod metrics;
pub mod openai;
pub mod reply;
mod request;
mod respond;
pub mod scheduler;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use blip3_data::image::ImageLimits;
use blip3_model::XGenMM;
use blip3_processor::Processor;
use burn::prelude::Device;

pub use scheduler::SchedulerConfig;

/// Settings of a server.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Address to bind (default 127.0.0.1:8000).
    pub addr: SocketAddr,
    /// The name `/v1/models` lists (requests may name any model).
    pub model_name: String,
    /// Require `Authorization: Bearer <key>` on `/v1/*` and `/metrics`.
    pub api_key: Option<String>,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Local image files are allowed from inside this folder only.
    pub allow_root: Option<PathBuf>,
    /// Image decoding limits.
    pub image_limits: ImageLimits,
    /// Running sequences, waiting requests, prefills per step.
    pub scheduler: SchedulerConfig,
    /// `max_tokens` when a request gives none (capped by the context left).
    pub default_max_tokens: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 8000)),
            model_name: "blip3".into(),
            api_key: None,
            max_body_bytes: 32 << 20,
            allow_root: None,
            image_limits: ImageLimits::default(),
            scheduler: SchedulerConfig::default(),
            default_max_tokens: 512,
        }
    }
}

/// What every handler shares.
pub struct AppState {
    /// The model's processor.
    pub processor: Processor,
    /// The model's device (images are uploaded there).
    pub device: Device,
    /// The model thread.
    pub scheduler: scheduler::Scheduler,
    /// Metrics.
    pub metrics: metrics::Metrics,
    /// Image policy.
    pub images: images::ImagePolicy,
    /// Settings.
    pub config: ServeConfig,
    /// Seeds for requests without one.
    pub seeds: AtomicU64,
    /// Unix time the server started (the model's `created`).
    pub started: u64,
}

/// Errors starting a server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Binding or serving failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// A running server (for tests and embedding): its address and a way to stop it.
pub struct RunningServer {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RunningServer {
    /// Stops accepting requests and waits for the server thread.
    pub fn stop(mut self) {
        self.shutdown_now();
    }

    fn shutdown_now(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.shutdown_now();
    }
}

fn state(
    model: XGenMM,
    processor: Processor,
    config: ServeConfig,
) -> Result<Arc<AppState>, ServeError> {
    let metrics = metrics::Metrics::new()?;
    let device = model.device();
    let scheduler = scheduler::Scheduler::start(model, config.scheduler, metrics.clone())?;
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Ok(Arc::new(AppState {
        processor,
        device,
        scheduler,
        metrics,
        images: images::ImagePolicy {
            allow_root: config.allow_root.clone(),
            limits: config.image_limits,
        },
        seeds: AtomicU64::new(started.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        started,
        config,
    }))
}

/// Starts a server on its own thread (a tokio runtime of its own) and returns once it listens.
pub fn spawn(
    model: XGenMM,
    processor: Processor,
    config: ServeConfig,
) -> Result<RunningServer, ServeError> {
    let state = state(model, processor, config.clone())?;
    let std_listener = std::net::TcpListener::bind(config.addr)?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("blip3-http".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    log::error!("cannot start the HTTP runtime: {e}");
                    return;
                }
            };
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(std_listener) {
                    Ok(l) => l,
                    Err(e) => {
                        log::error!("cannot listen: {e}");
                        return;
                    }
                };
                let app = api::router(state);
                let shutdown = async {
                    let _ = rx.await;
                };
                if let Err(e) = axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown)
                    .await
                {
                    log::error!("server stopped: {e}");
                }
            });
        })?;
    Ok(RunningServer {
        addr,
        shutdown: Some(tx),
        thread: Some(thread),
    })
}

/// Serves until Ctrl-C.
pub fn serve(model: XGenMM, processor: Processor, config: ServeConfig) -> Result<(), ServeError> {
    let state = state(model, processor, config.clone())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.addr).await?;
        log::info!(
            "serving {} on http://{} (OpenAI API under /v1, chat page at /)",
            config.model_name,
            listener.local_addr()?
        );
        axum::serve(listener, api::router(state))
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        Ok(())
    })
}
