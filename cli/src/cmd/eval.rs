//! `blip3 eval` (work in progress on this branch).

/// Arguments of `blip3 eval`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs the command.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`blip3 eval` is not wired yet")
}
