//! `blip3 train` (work in progress on this branch).

/// Arguments of `blip3 train`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs the command.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`blip3 train` is not wired yet")
}
