//! `blip3 bench train` end to end on flex: the table row of a measured step, with the first
//! (warm-up) step's time beside the median, and the measuring process's progress on stderr as it
//! happens (what a GPU run stopped by a time limit leaves behind).

mod common;

use common::blip3;

#[test]
fn the_training_benchmark_reports_the_first_step_and_shows_its_progress() {
    let out = blip3()
        .args(["bench", "train", "--configs", "tiny", "--steps", "2"])
        .args(["--no-options", "--python", "/nonexistent/python"])
        .output()
        .expect("run blip3 bench train");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");

    let header = stdout
        .lines()
        .find(|l| l.starts_with("config"))
        .unwrap_or_else(|| panic!("no table header in\n{stdout}"));
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>().join(" "),
        "config option ms/step first s tokens/s peak RSS MB trainable MFU"
    );
    let row: Vec<&str> = stdout
        .lines()
        .find(|l| l.starts_with("tiny") && l.contains("baseline"))
        .unwrap_or_else(|| panic!("no tiny baseline row in\n{stdout}"))
        .split_whitespace()
        .collect();
    let number = |i: usize| -> f64 {
        row[i]
            .parse()
            .unwrap_or_else(|_| panic!("column {i} of {row:?}"))
    };
    let (ms_per_step, first_s, tokens_per_s) = (number(2), number(3), number(4));
    assert!(
        ms_per_step > 0.0 && first_s > 0.0 && tokens_per_s > 0.0,
        "{row:?}"
    );
    // The child's messages reach the terminal: its progress through the first step.
    assert!(
        stderr.contains("tiny/baseline: first step took"),
        "no progress from the measuring process:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
