//! `blip3 demo` (work in progress on this branch).

/// Arguments of `blip3 demo`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs the command.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`blip3 demo` is not wired yet")
}
