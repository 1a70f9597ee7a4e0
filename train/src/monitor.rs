//! Monitoring: the per-step output item, burn-train metrics (loss via Burn's `LossMetric`,
//! learning rate, tokens/s, samples/s, gradient norm, DPO reward accuracy and margin), a JSONL +
//! CSV metric log with a PNG plot of the loss and learning rate beside the checkpoints. The
//! plain-text renderer is in [`crate::renderer`].

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::prelude::*;
use burn::tensor::DType;
use burn::train::logger::MetricLogger;
use burn::train::metric::state::{FormatOptions, NumericMetricState};
use burn::train::metric::store::{EpochSummary, MetricsUpdate, NumericMetricUpdate, Split};
use burn::train::metric::{
    Adaptor, ItemLazy, LossInput, Metric, MetricAttributes, MetricDefinition, MetricId,
    MetricMetadata, MetricName, Numeric, NumericAttributes, NumericEntry, SerializedEntry,
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

pub use crate::renderer::PlainRenderer;
