//! Monitoring: the per-step output item, burn-train metrics (loss via Burn's `LossMetric`,
//! learning rate, tokens/s, samples/s, gradient norm, DPO reward accuracy and margin), a JSONL +
//! CSV metric log with a PNG plot of the loss and learning rate beside the checkpoints, and a plain-text renderer with an
//! ETA for terminals without the TUI (and for CI).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::prelude::*;
use burn::tensor::DType;
use burn::train::logger::{EvaluationProgressLogger, MetricLogger, TrainingProgressLogger};
use burn::train::metric::state::{FormatOptions, NumericMetricState};
use burn::train::metric::store::{EpochSummary, MetricsUpdate, NumericMetricUpdate, Split};
use burn::train::metric::{
    Adaptor, ItemLazy, LossInput, Metric, MetricAttributes, MetricDefinition, MetricId,
    MetricMetadata, MetricName, Numeric, NumericAttributes, NumericEntry, SerializedEntry,
};
use burn::train::renderer::{
    EvaluationName, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining,
};

/// What one training (or validation) step reports.
#[derive(Debug, Clone)]
pub struct StepOutput {
    /// Mean loss of the batch (unscaled, detached).
    pub loss: Tensor<1>,
    loss_value: f64,
    /// Samples in the batch.
    pub samples: usize,
    /// Label tokens the loss was computed on.
    pub tokens: usize,
    /// Global gradient norm of the last optimizer step.
    pub grad_norm: Option<f64>,
    /// DPO: fraction of pairs whose chosen reward beats the rejected one.
    pub reward_accuracy: Option<f64>,
    /// DPO: mean chosen − rejected reward.
    pub reward_margin: Option<f64>,
    /// The step was skipped (non-finite loss or a failure).
    pub skipped: bool,
}

impl StepOutput {
    /// A step with its loss (read to the host once here).
    pub fn new(loss: Tensor<1>, samples: usize, tokens: usize) -> Self {
        let loss_value = loss.clone().cast(DType::F32).into_scalar::<f32>() as f64;
        Self {
            loss,
            loss_value,
            samples,
            tokens,
            grad_norm: None,
            reward_accuracy: None,
            reward_margin: None,
            skipped: false,
        }
    }

    /// The loss as a number.
    pub fn loss_value(&self) -> f64 {
        self.loss_value
    }

    /// Marks the step skipped.
    pub fn skipped(mut self) -> Self {
        self.skipped = true;
        self
    }

    /// Adds the gradient norm.
    pub fn with_grad_norm(mut self, n: Option<f64>) -> Self {
        self.grad_norm = n;
        self
    }

    /// Adds DPO reward statistics.
    pub fn with_rewards(mut self, accuracy: f64, margin: f64) -> Self {
        self.reward_accuracy = Some(accuracy);
        self.reward_margin = Some(margin);
        self
    }
}

impl ItemLazy for StepOutput {
    fn sync(self) -> Result<Self, burn::tensor::ExecutionError> {
        Ok(self)
    }
}

impl Adaptor<LossInput> for StepOutput {
    fn adapt(&self) -> LossInput {
        LossInput::new(self.loss.clone())
    }
}

/// The scalars the custom metrics read.
#[derive(Debug, Clone, Copy)]
pub struct StepScalars {
    samples: usize,
    tokens: usize,
    grad_norm: Option<f64>,
    reward_accuracy: Option<f64>,
    reward_margin: Option<f64>,
}

impl Adaptor<StepScalars> for StepOutput {
    fn adapt(&self) -> StepScalars {
        StepScalars {
            samples: self.samples,
            tokens: self.tokens,
            grad_norm: self.grad_norm,
            reward_accuracy: self.reward_accuracy,
            reward_margin: self.reward_margin,
        }
    }
}

/// Which scalar a [`StepMetric`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepMetricKind {
    /// Label tokens per second (wall clock between updates).
    TokensPerSecond,
    /// Samples per second.
    SamplesPerSecond,
    /// Global gradient norm.
    GradNorm,
    /// DPO reward accuracy.
    RewardAccuracy,
    /// DPO reward margin.
    RewardMargin,
}

/// A numeric metric over [`StepScalars`].
#[derive(Clone)]
pub struct StepMetric {
    kind: StepMetricKind,
    name: MetricName,
    state: NumericMetricState,
    last: Option<Instant>,
}

impl StepMetric {
    /// A metric of `kind`.
    pub fn new(kind: StepMetricKind) -> Self {
        let name = match kind {
            StepMetricKind::TokensPerSecond => "Tokens/s",
            StepMetricKind::SamplesPerSecond => "Samples/s",
            StepMetricKind::GradNorm => "Grad Norm",
            StepMetricKind::RewardAccuracy => "Reward Accuracy",
            StepMetricKind::RewardMargin => "Reward Margin",
        };
        Self {
            kind,
            name: Arc::new(name.to_string()),
            state: NumericMetricState::new(),
            last: None,
        }
    }
}

impl Metric for StepMetric {
    type Input = StepScalars;

    fn update(
        &mut self,
        item: &StepScalars,
        _metadata: &MetricMetadata,
    ) -> Result<SerializedEntry, burn::tensor::TensorReadError> {
        let now = Instant::now();
        let value = match self.kind {
            StepMetricKind::TokensPerSecond | StepMetricKind::SamplesPerSecond => {
                let count = if self.kind == StepMetricKind::TokensPerSecond {
                    item.tokens
                } else {
                    item.samples
                };
                let rate = self
                    .last
                    .map(|t| count as f64 / now.duration_since(t).as_secs_f64().max(1e-9));
                self.last = Some(now);
                rate
            }
            StepMetricKind::GradNorm => item.grad_norm,
            StepMetricKind::RewardAccuracy => item.reward_accuracy,
            StepMetricKind::RewardMargin => item.reward_margin,
        };
        match value {
            Some(v) if v.is_finite() => self.state.update(v, 1),
            _ => return Ok(SerializedEntry::not_available(None)),
        }
        Ok(self
            .state
            .compute_update(FormatOptions::new(self.name()).precision(3)))
    }

    fn compute(&mut self) -> Result<SerializedEntry, burn::tensor::TensorReadError> {
        Ok(self
            .state
            .compute_final(FormatOptions::new(self.name()).precision(3)))
    }

    fn clear(&mut self) {
        self.state.reset();
        self.last = None;
    }

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn attributes(&self) -> MetricAttributes {
        NumericAttributes {
            unit: None,
            higher_is_better: !matches!(self.kind, StepMetricKind::GradNorm),
        }
        .into()
    }
}

impl Numeric for StepMetric {
    fn value(&self) -> Option<NumericEntry> {
        Some(self.state.current_value())
    }
    fn running_value(&self) -> Option<NumericEntry> {
        Some(self.state.running_value())
    }
    fn final_value(&self) -> NumericEntry {
        self.state.final_value()
    }
}

fn numeric_value(u: &NumericMetricUpdate) -> Option<f64> {
    match u.numeric_entry.as_ref()? {
        NumericEntry::Value(v) | NumericEntry::Final(v) => Some(*v),
        NumericEntry::Aggregated {
            aggregated_value, ..
        } => Some(*aggregated_value),
    }
}

pub use crate::metrics_file::LogRow;

/// Writes `metrics.jsonl` and `metrics.csv` in the run directory, keeps the loss history and draws
/// `loss.png` at the end of every window (i.e. at every checkpoint).
pub struct RunLogger {
    dir: PathBuf,
    names: HashMap<MetricId, String>,
    micro_per_window: usize,
    grad_accum: usize,
    start_window: usize,
    counters: HashMap<String, usize>,
    history: Vec<(usize, f64)>,
    valid_history: Vec<(usize, f64)>,
    lr_history: Vec<(usize, f64)>,
    jsonl: Option<std::fs::File>,
    csv: Option<std::fs::File>,
}

impl RunLogger {
    /// A logger writing into `dir`; `micro_per_window` micro-batches make one window.
    pub fn new(
        dir: &Path,
        micro_per_window: usize,
        grad_accum: usize,
        start_window: usize,
    ) -> Self {
        let open = |name: &str| {
            std::fs::create_dir_all(dir).ok()?;
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(name))
                .ok()
        };
        let csv = open("metrics.csv");
        if let Some(mut f) = csv.as_ref()
            && f.metadata().map(|m| m.len() == 0).unwrap_or(false)
        {
            let _ = writeln!(f, "split,window,iteration,step,metric,value");
        }
        let mut me = Self {
            dir: dir.to_path_buf(),
            names: HashMap::new(),
            micro_per_window: micro_per_window.max(1),
            grad_accum: grad_accum.max(1),
            start_window,
            counters: HashMap::new(),
            history: Vec::new(),
            valid_history: Vec::new(),
            lr_history: Vec::new(),
            jsonl: open("metrics.jsonl"),
            csv,
        };
        me.history = read_history(&dir.join("metrics.jsonl"), "train");
        me.valid_history = read_history(&dir.join("metrics.jsonl"), "valid-window");
        me.lr_history = read_metric(&dir.join("metrics.jsonl"), "train", "Learning Rate");
        me
    }
}

fn read_history(path: &Path, split: &str) -> Vec<(usize, f64)> {
    read_metric(path, split, "Loss")
}

fn read_metric(path: &Path, split: &str, metric: &str) -> Vec<(usize, f64)> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| serde_json::from_str::<LogRow>(l).ok())
        .filter(|r| r.split == split)
        .filter_map(|r| r.metrics.get(metric).map(|&v| (r.step, v)))
        .collect()
}

impl MetricLogger for RunLogger {
    fn log(&mut self, update: MetricsUpdate, epoch: usize, split: &Split) {
        let split_name = match split {
            Split::Train => "train",
            Split::Valid => "valid",
            _ => "test",
        };
        let mut metrics = std::collections::BTreeMap::new();
        let mut is_final = false;
        for u in &update.entries_numeric {
            is_final |= matches!(u.numeric_entry, Some(NumericEntry::Final(_)));
            let id = &u.entry.metric_id;
            let name = self
                .names
                .get(id)
                .cloned()
                .unwrap_or_else(|| format!("{id:?}"));
            if let Some(v) = numeric_value(u).filter(|v| v.is_finite()) {
                metrics.insert(name, v);
            }
        }
        if metrics.is_empty() {
            return;
        }
        // End-of-window aggregates (Burn's `Final` entries) are a summary row, not an iteration.
        let (row_split, iteration, step) = if is_final {
            (
                format!("{split_name}-window"),
                0,
                epoch * self.micro_per_window / self.grad_accum,
            )
        } else {
            let key = format!("{split_name}-{epoch}");
            let within = {
                let c = self.counters.entry(key).or_insert(0);
                *c += 1;
                *c
            };
            if split_name == "train" {
                let it = (epoch.saturating_sub(1)) * self.micro_per_window + within;
                (split_name.to_string(), it, it.div_ceil(self.grad_accum))
            } else {
                (
                    split_name.to_string(),
                    within,
                    epoch * self.micro_per_window / self.grad_accum,
                )
            }
        };
        if let Some(&loss) = metrics.get("Loss") {
            match row_split.as_str() {
                "train" => self.history.push((step, loss)),
                "valid-window" => self.valid_history.push((step, loss)),
                _ => {}
            }
        }
        if let (Some(&lr), "train") = (metrics.get("Learning Rate"), row_split.as_str()) {
            self.lr_history.push((step, lr));
        }
        let row = LogRow {
            split: row_split,
            window: epoch,
            iteration,
            step,
            metrics,
        };
        if let Some(f) = self.jsonl.as_mut() {
            let _ = writeln!(f, "{}", serde_json::to_string(&row).unwrap_or_default());
        }
        if let Some(f) = self.csv.as_mut() {
            for (k, v) in &row.metrics {
                let _ = writeln!(
                    f,
                    "{},{},{},{},{},{}",
                    row.split, row.window, row.iteration, row.step, k, v
                );
            }
        }
    }

    fn read_numeric(
        &mut self,
        _name: &str,
        _epoch: usize,
        _split: &Split,
    ) -> Result<Vec<NumericEntry>, String> {
        Err("RunLogger does not serve reads".into())
    }

    fn log_metric_definition(&mut self, definition: MetricDefinition) {
        self.names
            .insert(definition.metric_id.clone(), definition.name.to_string());
    }

    fn log_epoch_summary(&mut self, summary: EpochSummary) {
        if let Some(f) = self.jsonl.as_mut() {
            let _ = f.flush();
        }
        if summary.epoch_number >= self.start_window {
            let png = self.dir.join("loss.png");
            if let Err(e) = plot_loss(&png, &self.history, &self.valid_history, &self.lr_history) {
                log::warn!("{}: {e}", png.display());
            }
        }
    }
}

/// Draws `loss.png` (see [`crate::plot`]): the training loss, the validation loss per window and
/// the learning rate against the optimizer step, titled with the run directory's name.
pub fn plot_loss(
    path: &Path,
    train: &[(usize, f64)],
    valid: &[(usize, f64)],
    lr: &[(usize, f64)],
) -> Result<(), crate::plot::PlotError> {
    let pts = |v: &[(usize, f64)]| v.iter().map(|&(s, y)| (s as f64, y)).collect();
    let run = crate::plot::RunCurves {
        label: String::new(),
        train_loss: pts(train),
        valid_loss: pts(valid),
        learning_rate: pts(lr),
    };
    let name = path
        .parent()
        .and_then(|d| d.file_name())
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let title = if name.is_empty() {
        "training run".to_string()
    } else {
        format!("training run {name}")
    };
    crate::plot::write_png(path, &[run], &title, crate::plot::PLOT_SIZE)
}

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
