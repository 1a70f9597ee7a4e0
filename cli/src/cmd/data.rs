//! `blip3 data ...` (work in progress on this branch).

/// Data subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum DataCommand {}

/// Runs a data subcommand.
pub fn run(command: DataCommand) -> anyhow::Result<()> {
    match command {}
}
