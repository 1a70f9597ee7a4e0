//! The `blip3` binary: the command line of [`blip3_cli`].

fn main() -> std::process::ExitCode {
    let code = blip3_cli::run(std::env::args_os());
    std::process::ExitCode::from(u8::try_from(code).unwrap_or(1))
}
