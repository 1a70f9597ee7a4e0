//! Progress output for long jobs (corpus synthesis, evaluation, training windows, model loading):
//! an `indicatif` bar with an ETA when stderr is a terminal, and otherwise a plain `log::info!`
//! line every ten seconds and at the end, so that CI logs stay readable.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How often a plain progress line is written when stderr is not a terminal.
pub const PLAIN_INTERVAL: Duration = Duration::from_secs(10);

/// Whether progress bars can be drawn (stderr is a terminal).
pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// Where progress goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A bar on stderr.
    Bar,
    /// Periodic `log::info!` lines.
    Lines,
    /// Nothing.
    Hidden,
}

impl Mode {
    /// [`Mode::Bar`] on a terminal, [`Mode::Lines`] otherwise; [`Mode::Hidden`] when
    /// `enabled` is false.
    pub fn auto(enabled: bool) -> Self {
        match (enabled, stderr_is_terminal()) {
            (false, _) => Mode::Hidden,
            (true, true) => Mode::Bar,
            (true, false) => Mode::Lines,
        }
    }
}

/// The progress of a job of `total` items.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    display: Mode,
    label: String,
    total: u64,
    done: u64,
    resumed: u64,
    start: Instant,
    last_line: Instant,
    interval: Duration,
    message: String,
}

impl Progress {
    /// Progress of `total` items named `label`, shown as [`Mode::auto`] decides.
    pub fn new(label: &str, total: u64, enabled: bool) -> Self {
        Self::with_display(label, total, Mode::auto(enabled))
    }

    /// Progress shown as `display` says.
    pub fn with_display(label: &str, total: u64, display: Mode) -> Self {
        let bar = (display == Mode::Bar).then(|| {
            let bar = indicatif::ProgressBar::new(total);
            let style = indicatif::ProgressStyle::with_template(
                "{msg} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, ETA {eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_message(label.to_string());
            bar
        });
        Progress {
            bar,
            display,
            label: label.to_string(),
            total,
            done: 0,
            resumed: 0,
            start: Instant::now(),
            last_line: Instant::now(),
            interval: PLAIN_INTERVAL,
            message: String::new(),
        }
    }

    /// Progress that shows nothing (library calls, tests).
    pub fn hidden() -> Self {
        Self::with_display("", 0, Mode::Hidden)
    }

    /// The same progress with plain lines every `interval` instead of [`PLAIN_INTERVAL`].
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Marks `n` items as done before this run started (a resumed job): they count in the
    /// position but not in the rate or the ETA.
    pub fn resume_from(&mut self, n: u64) {
        self.done = n;
        self.resumed = n;
        if let Some(bar) = &self.bar {
            bar.set_position(n);
            bar.reset_eta();
        } else if self.display == Mode::Lines && n > 0 {
            log::info!("{}: {n}/{} already done, resuming", self.label, self.total);
        }
    }

    /// How it is shown.
    pub fn display(&self) -> Mode {
        self.display
    }

    /// Items done so far.
    pub fn position(&self) -> u64 {
        self.done
    }

    /// Changes the number of items (an estimate that became exact).
    pub fn set_total(&mut self, total: u64) {
        self.total = total;
        if let Some(bar) = &self.bar {
            bar.set_length(total);
        }
    }

    /// Shows `text` after the label (the bar's message; appended to plain lines).
    pub fn set_message(&mut self, text: &str) {
        if let Some(bar) = &self.bar {
            if text.is_empty() {
                bar.set_message(self.label.clone());
            } else {
                bar.set_message(format!("{} {text}", self.label));
            }
        }
        self.message = text.to_string();
    }

    /// Adds `n` done items.
    pub fn inc(&mut self, n: u64) {
        self.set_position(self.done + n);
    }

    /// Sets the number of done items.
    pub fn set_position(&mut self, done: u64) {
        self.done = done;
        if let Some(bar) = &self.bar {
            bar.set_position(done);
        } else if self.display == Mode::Lines && self.last_line.elapsed() >= self.interval {
            self.last_line = Instant::now();
            log::info!("{}", self.line());
        }
    }

    /// Prints `text` as its own line (above the bar, or as a log line).
    pub fn println(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None if self.display == Mode::Lines => log::info!("{text}"),
            None => {}
        }
    }

    /// The plain progress line: label, count, percentage, rate and ETA.
    pub fn line(&self) -> String {
        let secs = self.start.elapsed().as_secs_f64();
        let fresh = self.done.saturating_sub(self.resumed);
        let rate = if secs > 0.0 { fresh as f64 / secs } else { 0.0 };
        let left = self.total.saturating_sub(self.done);
        let eta = if left == 0 {
            "0s".to_string()
        } else if rate > 0.0 {
            fmt_duration(left as f64 / rate)
        } else {
            "?".to_string()
        };
        let pct = if self.total > 0 {
            100.0 * self.done as f64 / self.total as f64
        } else {
            100.0
        };
        let mut line = format!(
            "{}: {}/{} ({pct:.1}%), {rate:.2} items/s, ETA {eta}",
            self.label, self.done, self.total
        );
        if !self.message.is_empty() {
            line += " | ";
            line += &self.message;
        }
        line
    }

    /// Clears the bar and writes the final plain line (unless hidden).
    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        if self.display != Mode::Hidden {
            log::info!(
                "{} (took {})",
                self.line(),
                fmt_duration(self.start.elapsed().as_secs_f64())
            );
        }
        self.display = Mode::Hidden;
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// Runs `job`, a single blocking step of unknown length named `label`, with a spinner and the
/// elapsed time on a terminal, or a "still running" log line every `interval` otherwise.
pub fn spin<T>(label: &str, display: Mode, interval: Duration, job: impl FnOnce() -> T) -> T {
    match display {
        Mode::Hidden => job(),
        Mode::Bar => {
            let bar = indicatif::ProgressBar::new_spinner();
            let style =
                indicatif::ProgressStyle::with_template("{spinner} {msg} [{elapsed_precise}]")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
            bar.set_style(style);
            bar.set_message(label.to_string());
            bar.enable_steady_tick(Duration::from_millis(120));
            let out = job();
            bar.finish_and_clear();
            out
        }
        Mode::Lines => {
            let start = Instant::now();
            let (done, wait) = std::sync::mpsc::channel::<()>();
            // `done` moves into the scope so that a panicking job still ends the ticker.
            let out = std::thread::scope(move |s| {
                s.spawn(move || {
                    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                        wait.recv_timeout(interval)
                    {
                        log::info!(
                            "{label}: still running after {}",
                            fmt_duration(start.elapsed().as_secs_f64())
                        );
                    }
                });
                let out = job();
                let _ = done.send(());
                out
            });
            log::info!(
                "{label}: done in {}",
                fmt_duration(start.elapsed().as_secs_f64())
            );
            out
        }
    }
}

/// `1h02m`, `3m05s` or `42s`.
pub fn fmt_duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_line_counts_rate_and_eta() {
        let mut p = Progress::with_display("synth", 10, Mode::Hidden);
        assert_eq!(p.line(), "synth: 0/10 (0.0%), 0.00 items/s, ETA ?");
        p.resume_from(4);
        p.inc(1);
        assert_eq!(p.position(), 5);
        let line = p.line();
        assert!(line.starts_with("synth: 5/10 (50.0%), "), "{line}");
        assert!(line.contains("items/s, ETA "), "{line}");
        p.set_message("loss 1.23");
        assert!(p.line().ends_with(" | loss 1.23"), "{}", p.line());
        p.set_total(5);
        assert!(p.line().contains("5/5 (100.0%)") && p.line().contains("ETA 0s"));
        p.finish();
        assert_eq!(p.display(), Mode::Hidden);
    }

    #[test]
    fn lines_mode_never_draws_a_bar() {
        let mut p = Progress::with_display("eval", 3, Mode::Lines).with_interval(Duration::ZERO);
        assert!(p.bar.is_none());
        p.inc(3);
        p.println("a line");
        p.finish();
        assert_eq!(Mode::auto(false), Mode::Hidden);
    }

    #[test]
    fn spin_returns_the_jobs_value() {
        for d in [Mode::Hidden, Mode::Lines] {
            let v = spin("load", d, Duration::from_millis(1), || {
                std::thread::sleep(Duration::from_millis(5));
                7
            });
            assert_eq!(v, 7);
        }
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(fmt_duration(42.4), "42s");
        assert_eq!(fmt_duration(185.0), "3m05s");
        assert_eq!(fmt_duration(3720.0), "1h02m");
        assert_eq!(fmt_duration(-1.0), "0s");
    }
}
