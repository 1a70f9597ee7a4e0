//! `blip3`: generate, train, evaluate and benchmark xGen-MM (BLIP-3) models on Burn.

mod cmd;

use clap::{Parser, Subcommand};

/// blip3 — train, evaluate and serve xGen-MM (BLIP-3) multimodal models in pure Rust.
#[derive(Parser, Debug)]
#[command(name = "blip3", version, about, long_about = None)]
struct Cli {
    /// Log level (error, warn, info, debug, trace); `RUST_LOG` overrides it.
    #[arg(long, global = true, default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate a reply to a prompt with optional images.
    Generate(cmd::generate::Args),
    /// Interactive multi-turn chat in the terminal.
    Chat(cmd::chat::Args),
    /// Serve the model over an OpenAI-compatible HTTP API (with a chat page at /).
    Serve(cmd::serve::Args),
    /// Dataset tools (synthetic corpus, inspection).
    Data {
        #[command(subcommand)]
        command: cmd::data::DataCommand,
    },
    /// Train one stage from a TOML config.
    Train(cmd::train::Args),
    /// Serve this machine's devices to a trainer elsewhere (Burn's remote backend), for
    /// `[devices] remote` in a stage config.
    Worker(cmd::worker::Args),
    /// Train over many machines from a cluster launcher (srun, or torchrun's RANK / WORLD_SIZE /
    /// MASTER_ADDR / MASTER_PORT): rank 0 trains, every other rank serves its devices to it.
    Launch(cmd::launch::Args),
    /// Run a benchmark suite, or score / compare existing outputs.
    Eval(cmd::eval::Args),
    /// Speed and memory benchmarks.
    Bench {
        #[command(subcommand)]
        command: cmd::bench::BenchCommand,
    },
    /// The end-to-end demo: synthetic corpus, five training stages of the tiny model, evaluation
    /// and a generation, with the built-in defaults.
    Demo(cmd::demo::Args),
}

fn main() {
    // Reuse freed activation memory instead of faulting it in again (see its docs).
    blip3_model::host::keep_freed_memory();
    let cli = Cli::parse();
    // Burn's learner logs every iteration at info level; keep it at warn unless asked.
    let filter = format!(
        "{},burn_train=warn,burn_core=warn,cubecl=warn,wgpu=warn",
        cli.log
    );
    let env = env_logger::Env::default().default_filter_or(filter);
    env_logger::Builder::from_env(env)
        .format_timestamp_secs()
        .init();
    let result = match cli.command {
        Command::Generate(a) => cmd::generate::run(a),
        Command::Chat(a) => cmd::chat::run(a),
        Command::Serve(a) => cmd::serve::run(a),
        Command::Worker(a) => cmd::worker::run(a),
        Command::Launch(a) => cmd::launch::run(a),
        Command::Data { command } => cmd::data::run(command),
        Command::Train(a) => cmd::train::run(a),
        Command::Eval(a) => cmd::eval::run(a),
        Command::Bench { command } => cmd::bench::run(command),
        Command::Demo(a) => cmd::demo::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
