//! `blip3 generate` (work in progress on this branch).

/// Arguments of `blip3 generate`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs the command.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`blip3 generate` is not wired yet")
}
