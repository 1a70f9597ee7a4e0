//! The GPU check's one binary: every test and benchmark `.ci/gpu-check` runs on a lent GPU, and
//! the `blip3` command line, linked once.
//!
//! With the CUDA backend each binary links LLVM statically (150-200 MB stripped; three packed
//! into 56 MB on 2026-12-04), and the GPU machine takes 64 MiB of files a call: separate binaries
//! fitted three of the eight the check runs. This target includes the other crates' test and benchmark files
//! as modules, so the code they share is carried once (docs/kernels.md, "GPU check script").
//! It is not part of `cargo test` (`test = false`: those tests already run from their own
//! crates); `.ci/gpu-pack` builds it with the CUDA and Vulkan features, and CI compiles it.
//!
//! * Tests keep their names under their file's module: `suite attention::`, `suite
//!   parity::parity_on_wgpu_where_available`.
//! * Benchmarks are ignored tests: `suite --ignored --exact --nocapture bench_model` (and
//!   `bench_kernels`), configured by the same `BLIP3_BENCH_*` variables as under `cargo bench`.
//! * The command line is the ignored test `blip3`, started by the launcher `.ci/gpu-check`
//!   writes beside this binary: it passes the arguments in `BLIP3_SUITE_ARGS` (joined by the
//!   unit separator, U+001F), names itself in `BLIP3_EXE` (so the CLI's child processes come back
//!   through it), and hands over the real standard output as descriptor `BLIP3_SUITE_STDOUT_FD`
//!   while libtest's banner goes to stderr, so the CLI's stdout is what the `blip3` binary would
//!   print (a loopback worker's first line is its address; a benchmark child's last line is its
//!   result).
//!
//! An included file's `cfg(feature = ...)` reads this crate's features (`flex`, `wgpu`, `cuda`,
//! `vulkan`, `metal`, `cpu`, as named in the crates it comes from), and its dependencies must be
//! this crate's too.

#[path = "../../shaders/tests/activation.rs"]
mod activation;
#[path = "../../shaders/tests/attention.rs"]
mod attention;
#[path = "../../shaders/tests/gemm.rs"]
mod gemm;
#[path = "../../shaders/benches/kernels.rs"]
mod kernels_bench;
#[path = "../../shaders/tests/matvec.rs"]
mod matvec;
#[path = "../../model/benches/model.rs"]
mod model_bench;
#[path = "../../model/tests/parity.rs"]
mod parity;
#[path = "../../shaders/tests/resample.rs"]
mod resample;

use std::io::Write;

/// Runs `f` on a thread with a main thread's stack (libtest's test threads get 2 MiB), passing
/// a panic on.
fn with_main_stack<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    let thread = std::thread::Builder::new()
        .name("main".into())
        .stack_size(8 << 20)
        .spawn(f)
        .expect("spawning the runner thread");
    thread
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

#[test]
#[ignore = "a benchmark: `--ignored --exact --nocapture bench_model`"]
fn bench_model() {
    with_main_stack(model_bench::main);
}

#[test]
#[ignore = "a benchmark: `--ignored --exact --nocapture bench_kernels`"]
fn bench_kernels() {
    with_main_stack(kernels_bench::main);
}

/// Puts descriptor `fd` back as standard output (the launcher parked the real stdout there).
#[cfg(unix)]
fn restore_stdout(fd: i32) -> std::io::Result<()> {
    unsafe extern "C" {
        fn dup2(old: i32, new: i32) -> i32;
        fn close(fd: i32) -> i32;
    }
    std::io::stdout().flush()?;
    // SAFETY: plain descriptor calls; `fd` was opened by the launcher for this process, and
    // Rust's stdout writes to descriptor 1 whatever it refers to.
    if unsafe { dup2(fd, 1) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    unsafe { close(fd) };
    Ok(())
}

#[test]
#[ignore = "the blip3 command line, through the launcher .ci/gpu-check writes"]
fn blip3() {
    let joined = std::env::var("BLIP3_SUITE_ARGS").unwrap_or_default();
    let mut args = vec!["blip3".to_string()];
    if !joined.is_empty() {
        args.extend(joined.split('\u{1f}').map(str::to_string));
    }
    #[cfg(unix)]
    if let Some(fd) = std::env::var("BLIP3_SUITE_STDOUT_FD")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        if let Err(e) = restore_stdout(fd) {
            eprintln!("cannot restore stdout from descriptor {fd}: {e}");
            std::process::exit(2);
        }
    }
    let code = with_main_stack(move || blip3_cli::run(args));
    let _ = std::io::stdout().flush();
    // The command's own exit status, without libtest's summary after it.
    std::process::exit(code);
}
