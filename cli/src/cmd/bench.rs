//! `blip3 bench ...`: speed and memory benchmarks.

mod data;

/// Benchmark subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// Data loading: decode + any-res + tokenise throughput with 1, 2 and 4 workers, and peak
    /// memory while streaming.
    Data(data::DataBenchArgs),
}

/// Runs a benchmark.
pub fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Data(args) => data::run(args),
    }
}
