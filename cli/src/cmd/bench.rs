//! `blip3 bench ...`: speed and memory benchmarks (never timed tests).

mod data;
mod load;
mod remote;
mod serve;
mod train;

/// Benchmark subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// Data loading: decode + any-res + tokenise throughput with 1, 2 and 4 workers, and peak
    /// memory while streaming.
    Data(data::DataBenchArgs),
    /// Training step time, tokens/s and peak memory (tiny, mid; memory options on mid; PyTorch
    /// ratio; MFU on GPUs).
    Train(train::Args),
    /// Checkpoint loading time and peak memory (a sparse full-size checkpoint by default).
    Load(load::Args),
    /// Training over 1, 2 and 4 `blip3 worker` processes on loopback: step time, samples/s,
    /// bytes per replica per step, scaling efficiency (docs/scaling.md).
    Remote(remote::Args),
    /// Serving throughput and time to first token at 1, 8 and 32 streaming clients (tiny, mid),
    /// and continuous batching against one-at-a-time serving.
    Serve(serve::Args),
}

/// Runs a benchmark.
pub fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Data(args) => data::run(args),
        BenchCommand::Train(args) => train::run(args),
        BenchCommand::Load(args) => load::run(args),
        BenchCommand::Serve(args) => serve::run(args),
        BenchCommand::Remote(args) => remote::run(args),
    }
}
