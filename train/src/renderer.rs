//! A plain-text progress renderer for burn-train: one line every `every` train iterations and one
//! per validation pass, with loss, learning rate, throughput and an ETA — for terminals without the
//! TUI, and for CI logs.

use std::collections::HashMap;
use std::time::Instant;

use burn::train::logger::{EvaluationProgressLogger, TrainingProgressLogger};
use burn::train::metric::{MetricDefinition, MetricId, NumericEntry};
use burn::train::renderer::{
    EvaluationName, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining,
};

/// A renderer that prints one plain line every `every` train iterations (and a line per
/// validation pass), with loss, learning rate, throughput and an ETA.
pub struct PlainRenderer {
    every: usize,
    quiet: bool,
    names: HashMap<MetricId, String>,
    latest: HashMap<String, f64>,
    total_epochs: usize,
    epoch: usize,
    start_epoch: usize,
    items_in_split: usize,
    done_in_split: usize,
    split: String,
    started: Option<Instant>,
    iterations: usize,
    /// Whether to draw a bar (stderr is a terminal and not `quiet`) instead of progress lines.
    use_bar: bool,
    bar: Option<blip3_data::progress::Progress>,
}

impl PlainRenderer {
    /// Prints every `every` micro-batches; `quiet` prints only start/end lines. When stderr is a
    /// terminal (and not `quiet`), a progress bar over the run's windows with the latest metrics
    /// and an ETA replaces the per-iteration lines (see [`blip3_data::progress`]).
    pub fn new(every: usize, quiet: bool) -> Self {
        Self {
            every: every.max(1),
            quiet,
            names: HashMap::new(),
            latest: HashMap::new(),
            total_epochs: 0,
            epoch: 0,
            start_epoch: 1,
            items_in_split: 0,
            done_in_split: 0,
            split: String::new(),
            started: None,
            iterations: 0,
            use_bar: !quiet && blip3_data::progress::stderr_is_terminal(),
            bar: None,
        }
    }

    /// Draws the run's bar: micro-batches of the train splits over every window of the run.
    fn update_bar(&mut self) {
        if !self.use_bar || self.split != "train" || self.items_in_split == 0 {
            return;
        }
        let windows = (self.total_epochs + 1)
            .saturating_sub(self.start_epoch)
            .max(1);
        let total = (windows * self.items_in_split) as u64;
        let done = (self.epoch.saturating_sub(self.start_epoch) * self.items_in_split
            + self.done_in_split) as u64;
        let window = format!("window {}/{}", self.epoch, self.total_epochs);
        let metrics = self.metrics_text();
        let bar = self.bar.get_or_insert_with(|| {
            blip3_data::progress::Progress::with_display(
                "training",
                total,
                blip3_data::progress::Mode::Bar,
            )
        });
        bar.set_total(total);
        bar.set_message(&format!("{window}{metrics}"));
        bar.set_position(done);
    }

    fn record(&mut self, state: MetricState) {
        if let MetricState::Numeric(entry, Some(value)) = state {
            let id = &entry.metric_id;
            let name = self
                .names
                .get(id)
                .cloned()
                .unwrap_or_else(|| format!("{id:?}"));
            let v = match value {
                NumericEntry::Value(v) | NumericEntry::Final(v) => v,
                NumericEntry::Aggregated {
                    aggregated_value, ..
                } => aggregated_value,
            };
            self.latest.insert(name, v);
        }
    }

    fn line(&self) -> String {
        let mut s = format!(
            "window {}/{} {} {}/{}",
            self.epoch, self.total_epochs, self.split, self.done_in_split, self.items_in_split
        );
        s += &self.metrics_text();
        if let (Some(t0), true) = (self.started, self.items_in_split > 0) {
            let windows_left = self.total_epochs.saturating_sub(self.epoch);
            let frac_done = (self.epoch - self.start_epoch) as f64
                + self.done_in_split as f64 / self.items_in_split as f64;
            if frac_done > 0.0 {
                let per = t0.elapsed().as_secs_f64() / frac_done;
                let left = per
                    * (windows_left as f64 + 1.0
                        - self.done_in_split as f64 / self.items_in_split as f64);
                s += &format!(" | ETA {}", fmt_secs(left));
            }
        }
        s
    }

    /// The latest metrics as ` | loss 1.2345 | lr 1.00e-4 | ...`.
    fn metrics_text(&self) -> String {
        let get = |k: &str| self.latest.get(k).copied();
        let mut s = String::new();
        if let Some(v) = get("Loss") {
            s += &format!(" | loss {v:.4}");
        }
        if let Some(v) = get("Learning Rate") {
            s += &format!(" | lr {v:.2e}");
        }
        if let Some(v) = get("Tokens/s") {
            s += &format!(" | {v:.0} tok/s");
        }
        if let Some(v) = get("Samples/s") {
            s += &format!(" | {v:.1} samples/s");
        }
        if let Some(v) = get("Grad Norm") {
            s += &format!(" | grad {v:.3}");
        }
        if let Some(v) = get("Reward Accuracy") {
            s += &format!(" | reward acc {v:.2}");
        }
        s
    }
}

fn fmt_secs(s: f64) -> String {
    let s = s.max(0.0) as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

impl MetricsRendererTraining for PlainRenderer {
    fn update_train(&mut self, state: MetricState) {
        self.record(state);
    }
    fn update_valid(&mut self, state: MetricState) {
        self.record(state);
    }
}

impl MetricsRendererEvaluation for PlainRenderer {
    fn update_test(&mut self, _name: EvaluationName, state: MetricState) {
        self.record(state);
    }
}

impl TrainingProgressLogger for PlainRenderer {
    fn start(
        &mut self,
        total_epochs: usize,
        starting_epoch: usize,
        _items: Option<usize>,
        label: Option<&str>,
    ) {
        self.total_epochs = total_epochs;
        self.start_epoch = starting_epoch.max(1);
        self.started = Some(Instant::now());
        println!(
            "training {}: windows {starting_epoch}..={total_epochs}",
            label.unwrap_or("run")
        );
    }
    fn update_epoch(&mut self, epoch: usize) {
        // Called when a window is complete; the next train split is the following window.
        self.epoch = epoch + 1;
    }
    fn start_split(&mut self, split: &str, total_items: usize) {
        self.split = split.to_string();
        self.items_in_split = total_items;
        self.done_in_split = 0;
        if self.epoch == 0 {
            self.epoch = self.start_epoch;
        }
    }
    fn update_split(&mut self, items_processed: usize) {
        self.done_in_split = items_processed;
        if self.split == "train" {
            self.iterations += 1;
            if self.use_bar {
                self.update_bar();
            } else if !self.quiet && self.iterations.is_multiple_of(self.every) {
                println!("{}", self.line());
            }
        }
    }
    fn end_split(&mut self) {
        if !self.quiet && self.split != "train" && self.items_in_split > 0 {
            match &self.bar {
                Some(bar) => bar.println(&self.line()),
                None => println!("{}", self.line()),
            }
        }
    }
    fn end(&mut self) {
        if let Some(mut bar) = self.bar.take() {
            bar.finish();
        }
        println!(
            "training ended after {}",
            self.started
                .map(|t| fmt_secs(t.elapsed().as_secs_f64()))
                .unwrap_or_default()
        );
    }
    fn log_event_training(&mut self, event: String) {
        log::debug!("{event}");
    }
}

impl EvaluationProgressLogger for PlainRenderer {
    fn start_global_progress(&mut self, _n: usize) {}
    fn start_test(&mut self, _name: &str, _n: usize) {}
    fn update_test_progress(&mut self, _n: usize) {}
    fn end_test(&mut self) {}
    fn end_global_progress(&mut self) {}
    fn log_event_evaluation(&mut self, _event: String) {}
}

impl MetricsRenderer for PlainRenderer {
    fn manual_close(&mut self) {}
    fn register_metric(&mut self, definition: MetricDefinition) {
        self.names
            .insert(definition.metric_id.clone(), definition.name.to_string());
    }
}
