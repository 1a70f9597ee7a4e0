//! `blip3 bench ...`: speed and memory benchmarks (never timed tests).

/// Benchmark subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// Training step time, tokens/s and peak memory (tiny, mid; options on mid; PyTorch ratio).
    Train(super::bench_train::Args),
}

/// Runs a benchmark.
pub fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Train(a) => super::bench_train::run(a),
    }
}
