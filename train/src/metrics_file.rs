//! The row format of a run's `metrics.jsonl` (one JSON object a line; docs/training.md
//! §"Checkpoints, resume and the output directory"), shared by the logger that writes it ([`crate::monitor`]), the plot that draws it
//! ([`crate::plot`]) and the resume logic that cuts it back ([`crate::outdir`]).

/// One row of the training log.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LogRow {
    /// `train` or `valid`.
    pub split: String,
    /// Window (burn-train epoch) number, from 1.
    pub window: usize,
    /// Micro-batch index within the run (train) or the validation pass.
    pub iteration: usize,
    /// Optimizer step (train rows).
    pub step: usize,
    /// Metric values by name.
    pub metrics: std::collections::BTreeMap<String, f64>,
}
