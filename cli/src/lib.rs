//! `blip3`: generate, train, evaluate and benchmark xGen-MM (BLIP-3) models on Burn.
//!
//! The command line lives in this library and `src/main.rs` only calls [`run`], so that another
//! program can carry the whole CLI: the GPU check's single suite binary does (docs/kernels.md,
//! "GPU check script").

mod cmd;

use clap::{Parser, Subcommand};

/// blip3 — train, evaluate and serve xGen-MM (BLIP-3) multimodal models in pure Rust.
#[derive(Parser, Debug)]
#[command(name = "blip3", version, about, long_about = None)]
struct Cli {
    /// Log level of blip3's own messages (error, warn, info, debug, trace); dependencies log
    /// warnings and errors only. `RUST_LOG` overrides both (e.g. `RUST_LOG=debug`).
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

/// The default log filter: `level` for blip3's crates, warnings for every dependency.
///
/// Dependencies' info messages are more than noise: Burn's learner logs every iteration, and the
/// compiler behind Burn's CUDA and `cpu` backends (pliron, in `cubecl-llvm`) logs each kernel's
/// whole IR after every pass at info level: 624 MB of stderr for one tiny training step on `cpu`,
/// burying the run's own messages (docs/kernels.md). The `blip3` directive matches every target
/// starting with it: the `blip3_*` crates, this one (`blip3_cli`) included.
fn log_filter(level: &str) -> String {
    format!("warn,blip3={level}")
}

/// Runs the `blip3` command line on `args` (the program's name first, as
/// [`std::env::args_os`] gives them) and returns the process's exit code: 0, or 1 after printing
/// the error. Clap exits by itself on `--help`, `--version` and malformed arguments.
pub fn run<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    // Reuse freed activation memory instead of faulting it in again (see its docs).
    blip3_model::host::keep_freed_memory();
    let cli = Cli::parse_from(args);
    let env = env_logger::Env::default().default_filter_or(log_filter(&cli.log));
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
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::log_filter;
    use log::{Level, Log, Metadata};

    fn enabled(filter: &str, target: &str, level: Level) -> bool {
        let logger = env_logger::Builder::new().parse_filters(filter).build();
        logger.enabled(&Metadata::builder().target(target).level(level).build())
    }

    #[test]
    fn dependencies_log_warnings_only_and_blip3_logs_at_the_chosen_level() {
        let info = log_filter("info");
        for ours in [
            "blip3_cli::cmd::worker",
            "blip3_train::launch",
            "blip3_data::loader",
        ] {
            assert!(enabled(&info, ours, Level::Info), "{ours}");
            assert!(!enabled(&info, ours, Level::Debug), "{ours}");
        }
        for theirs in [
            "pliron::pass",
            "burn_train::learner",
            "cubecl_runtime",
            "wgpu_core",
        ] {
            assert!(!enabled(&info, theirs, Level::Info), "{theirs}");
            assert!(enabled(&info, theirs, Level::Warn), "{theirs}");
        }
        let debug = log_filter("debug");
        assert!(enabled(&debug, "blip3_model::generate", Level::Debug));
        assert!(!enabled(&debug, "pliron::pass", Level::Info));
        assert!(!enabled(
            &log_filter("error"),
            "blip3_cli::cmd::train",
            Level::Warn
        ));
    }
}
