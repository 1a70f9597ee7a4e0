//! A streaming, resumable, multi-threaded data loader for Burn: [`StreamingLoader`] implements
//! `burn::data::dataloader::DataLoader`, so burn-train's learners can train on a [`Mixture`]
//! directly.
//!
//! # Stream, windows and epochs
//!
//! The loader reads one endless (or finite) stream: the mixture's items, processed by the
//! [`Pipeline`] and grouped into **global batches** of `batch_size` samples. A call of
//! [`DataLoader::iter`] yields the next **window** of `items_per_epoch` samples
//! (`items_per_epoch / batch_size` batches) and the next call continues the stream where the
//! previous window ended. A burn-train "epoch" is therefore a fixed number of optimizer steps,
//! which makes step-based checkpointing easy. Windows are aligned on batch numbers: after a
//! restore inside a window, the next `iter()` finishes that window. With
//! [`LoaderConfig::fixed_window`], every `iter()` instead starts again from the loader's initial
//! state (the same window each time, for validation).
//!
//! Each batch is a `Vec<TrainSample>` handed to the [`Batcher`] (right padding is the model's
//! job). Batches are consecutive samples of the stream, or, with
//! [`LoaderConfig::length_grouping`] = `Some(K)`, the stream is cut into buffers of `K` batches,
//! each buffer is sorted by sequence length (vision tokens included; a stable sort) and cut into
//! batches whose order is then shuffled with the recipe seed, all deterministically. When the stream
//! ends, an incomplete last batch is dropped (and counted in [`LoaderStats::dropped`]).
//!
//! # Workers
//!
//! With `num_workers` > 0, one producer thread reads the mixture and `num_workers` threads decode,
//! tile and tokenise, with bounded queues of `prefetch` items; the results are put back in mixture
//! order, so the output never depends on the number of workers. With 0 workers everything runs
//! in the thread that iterates. The threads keep prefetching across windows and stop when the last
//! handle of the loader is dropped.
//!
//! # Resuming
//!
//! [`StreamingLoader::state`] returns a [`LoaderState`] (serde): the mixture position at the start
//! of the current sort buffer, the statistics up to there, how many batches of that buffer were
//! consumed and how many batches were consumed in total. Saved after a window (or at any time) and
//! given to [`StreamingLoader::restore`] of a fresh loader built from the same recipe, it makes that
//! loader yield exactly the batches the first one would have yielded next, whatever the number of
//! workers. All handles of a loader (clones, [`DataLoader::to_device`], [`DataLoader::slice`])
//! share one state, so keep a clone of the loader you give to the learner to read it.
//!
//! # Several devices
//!
//! burn-train's multi-device strategy splits a loader with `slice(start, end)` by item counts
//! (`split_dataloader`). Here a slice is one device's share of **every** global batch: for `n`
//! slices of `items_per_epoch / n` items each, slice `k` (`k = start / (end - start)`) yields the
//! `k`-th contiguous `batch_size / n` samples of each global batch. So `n` devices reading the
//! slices of a loader with batch size `n * b` see together exactly what one device sees with that
//! loader, sample for sample, and a state saved from either resumes both. `batch_size` and
//! `items_per_epoch` must be divisible by `n`; otherwise the slice's iterator yields one error
//! that says so. Slices share the stream: read all of them (as burn-train does), or the unread
//! parts accumulate in memory.
//!
//! # Bad samples
//!
//! Every [`SampleError`](crate::error::SampleError) (corrupt image, truncated shard, malformed
//! record, missing image, marker/image count mismatch, ...) is logged as a warning naming the
//! source, file and key, counted in [`LoaderStats`] (by kind and by source, with the last one
//! described) and skipped. Once at least [`LoaderConfig::min_samples_for_rate`] items were seen,
//! a bad-sample rate above [`LoaderConfig::max_bad_rate`] makes the iterator yield an error whose
//! message is [`DataError::TooManyBadSamples`]; burn-train then stops with it. Whatever the
//! threshold (even 1.0), a stream whose items were all bad, once `min_samples_for_rate` of them
//! were seen or when it ends, yields [`DataError::NoGoodSamples`]. A warning repeated word for
//! word (the same bad record read again in every epoch) is logged once, then with its count.

mod engine;
mod feed;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataloader::{DataLoader, DataLoaderIterator, Progress};
use burn::data::dataset::DatasetError;
use burn::prelude::Device;

use crate::error::{BadKind, DataError};
use crate::mixture::{Mixture, MixturePosition};
use crate::pipeline::{Pipeline, TrainSample};
use engine::Engine;

/// Settings of a [`StreamingLoader`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoaderConfig {
    /// Samples per global batch (all devices together).
    pub batch_size: usize,
    /// Samples per `iter()` window; a positive multiple of `batch_size`.
    pub items_per_epoch: usize,
    /// Pipeline worker threads (0: process in the iterating thread).
    pub num_workers: usize,
    /// Bound of each of the two worker queues, in samples (default 8). Processed samples are
    /// large (an any-res image at 384 px is about 1.8 MB a view), so memory in flight is about
    /// `2 * prefetch + num_workers` samples, plus the current sort buffer.
    pub prefetch: usize,
    /// `Some(K)`: sort by length within buffers of `K` batches; `None`: stream order.
    pub length_grouping: Option<usize>,
    /// The largest tolerated fraction of bad samples (default 0.01 = 1%).
    pub max_bad_rate: f64,
    /// The rate is only checked once this many items were seen (default 100).
    pub min_samples_for_rate: u64,
    /// Every `iter()` yields the first window again (for validation loaders).
    pub fixed_window: bool,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            batch_size: 8,
            items_per_epoch: 8 * 100,
            num_workers: 2,
            prefetch: 8,
            length_grouping: None,
            max_bad_rate: 0.01,
            min_samples_for_rate: 100,
            fixed_window: false,
        }
    }
}

impl LoaderConfig {
    /// The defaults with the given batch size and window size.
    pub fn new(batch_size: usize, items_per_epoch: usize) -> Self {
        LoaderConfig {
            batch_size,
            items_per_epoch,
            ..LoaderConfig::default()
        }
    }

    /// Checks the values.
    pub fn validate(&self) -> Result<(), DataError> {
        let bad = |msg: String| Err(DataError::Config(format!("loader: {msg}")));
        if self.batch_size == 0 {
            return bad("batch_size must be positive".into());
        }
        if self.items_per_epoch == 0 || !self.items_per_epoch.is_multiple_of(self.batch_size) {
            return bad(format!(
                "items_per_epoch {} must be a positive multiple of batch_size {}",
                self.items_per_epoch, self.batch_size
            ));
        }
        if self.prefetch == 0 {
            return bad("prefetch must be positive".into());
        }
        if self.length_grouping == Some(0) {
            return bad("length_grouping must be at least 1 batch".into());
        }
        if !(0.0..=1.0).contains(&self.max_bad_rate) {
            return bad(format!(
                "max_bad_rate {} must be between 0 and 1",
                self.max_bad_rate
            ));
        }
        Ok(())
    }
}

/// Counts of one mixture source.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceStats {
    /// Items drawn from the source.
    pub seen: u64,
    /// Items that became training samples.
    pub good: u64,
    /// Items skipped as bad.
    pub bad: u64,
}

/// What the loader has seen: good and bad samples, bad ones by kind and by source.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoaderStats {
    /// Items drawn from the mixture (good and bad).
    pub seen: u64,
    /// Items that became training samples.
    pub good: u64,
    /// Items skipped as bad.
    pub bad: u64,
    /// Bad items by kind.
    pub by_kind: BTreeMap<BadKind, u64>,
    /// The last bad item: source, file, key, kind and reason.
    pub last: Option<String>,
    /// The most recent bad items (at most [`LoaderStats::RECENT`]), oldest first.
    #[serde(default)]
    pub recent: Vec<String>,
    /// Good samples left out of an incomplete last batch when the stream ended.
    pub dropped: u64,
    /// Counts by source name.
    pub sources: BTreeMap<String, SourceStats>,
}

impl LoaderStats {
    /// How many recent bad items [`LoaderStats::recent`] keeps.
    pub const RECENT: usize = 20;

    /// The fraction of bad items (0 when nothing was seen).
    pub fn bad_rate(&self) -> f64 {
        if self.seen == 0 {
            0.0
        } else {
            self.bad as f64 / self.seen as f64
        }
    }
}

/// A loader's resume point (serde; save it in a checkpoint).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoaderState {
    /// The mixture position at the start of the current sort buffer (with sequential batching:
    /// just after the last consumed batch).
    pub position: MixturePosition,
    /// Statistics up to `position`.
    pub stats: LoaderStats,
    /// Batches of the current buffer already consumed (always 0 with sequential batching).
    pub skip_batches: u64,
    /// Sort buffers started before the current one.
    pub buffers: u64,
    /// Global batches consumed in total.
    pub batches: u64,
}

/// Which part of the stream a loader handle reads.
#[derive(Debug, Clone, PartialEq, Eq)]
enum View {
    /// Whole global batches.
    Whole,
    /// Part `k` of every global batch cut into `n`.
    Slice { k: usize, n: usize },
    /// A slice request that cannot be honoured: the message, and the item count asked for.
    Invalid { msg: String, items: usize },
}

/// A streaming data loader over a [`Mixture`]; see the module documentation.
pub struct StreamingLoader<O> {
    engine: Arc<Mutex<Engine>>,
    batcher: Arc<dyn Batcher<TrainSample, O>>,
    device: Device,
    view: View,
    batch_size: usize,
    items_per_epoch: usize,
    fixed_window: bool,
}

impl<O> Clone for StreamingLoader<O> {
    fn clone(&self) -> Self {
        StreamingLoader {
            engine: self.engine.clone(),
            batcher: self.batcher.clone(),
            device: self.device.clone(),
            view: self.view.clone(),
            batch_size: self.batch_size,
            items_per_epoch: self.items_per_epoch,
            fixed_window: self.fixed_window,
        }
    }
}

impl<O> StreamingLoader<O> {
    /// A loader over `mixture` (from its current position), processing with `pipeline` and
    /// batching with `batcher` on `device`. Nothing is read before the first batch is asked for.
    pub fn new(
        mixture: Mixture,
        pipeline: Arc<Pipeline>,
        batcher: Arc<dyn Batcher<TrainSample, O>>,
        device: Device,
        config: LoaderConfig,
    ) -> Result<Self, DataError> {
        let (batch_size, items_per_epoch, fixed_window) = (
            config.batch_size,
            config.items_per_epoch,
            config.fixed_window,
        );
        let engine = Engine::new(mixture, pipeline, config)?;
        Ok(StreamingLoader {
            engine: Arc::new(Mutex::new(engine)),
            batcher,
            device,
            view: View::Whole,
            batch_size,
            items_per_epoch,
            fixed_window,
        })
    }

    /// The resume point of everything consumed so far (shared by all handles of the loader).
    pub fn state(&self) -> LoaderState {
        self.lock().state()
    }

    /// Continues from a saved state (see the module documentation); call it before training
    /// resumes. Fails when the state belongs to another recipe or rank layout.
    pub fn restore(&self, state: &LoaderState) -> Result<(), DataError> {
        self.lock().restore(state)
    }

    /// Statistics of every item processed so far, including prefetched batches.
    pub fn stats(&self) -> LoaderStats {
        self.lock().stats()
    }

    /// The configuration.
    pub fn config(&self) -> LoaderConfig {
        self.lock().config().clone()
    }

    fn lock(&self) -> MutexGuard<'_, Engine> {
        match self.engine.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// `(part, parts)` of this handle.
    fn part(&self) -> (usize, usize) {
        match self.view {
            View::Slice { k, n } => (k, n),
            _ => (0, 1),
        }
    }
}

/// The iterator of one window.
struct WindowIter<'a, O> {
    loader: &'a StreamingLoader<O>,
    part: usize,
    parts: usize,
    /// Batch numbers of this window: `[start, end)`; `next` is the next one to take.
    start: u64,
    end: u64,
    next: u64,
    /// An error to yield first (an invalid slice).
    error: Option<DatasetError>,
    done: bool,
}

impl<O> Iterator for WindowIter<'_, O> {
    type Item = Result<O, DatasetError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.error.take() {
            self.done = true;
            return Some(Err(e));
        }
        if self.done || self.next >= self.end {
            self.done = true;
            return None;
        }
        let taken = self.loader.lock().take(self.part, self.parts);
        match taken {
            Ok(Some(samples)) => {
                self.next += 1;
                Some(Ok(self.loader.batcher.batch(samples, &self.loader.device)))
            }
            Ok(None) => {
                self.done = true;
                None
            }
            Err(failure) => {
                self.done = true;
                Some(Err(failure.to_error()))
            }
        }
    }
}

impl<O> DataLoaderIterator<O> for WindowIter<'_, O> {
    fn progress(&self) -> Progress {
        let per_batch = self.loader.batch_size / self.parts.max(1);
        Progress {
            items_processed: ((self.next - self.start) as usize) * per_batch,
            items_total: ((self.end - self.start) as usize) * per_batch,
            unit: Some("samples".into()),
        }
    }
}

impl<O: 'static> DataLoader<O> for StreamingLoader<O> {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<O> + 'a> {
        let (part, parts) = self.part();
        let window = (self.items_per_epoch / self.batch_size) as u64;
        let mut error = None;
        if let View::Invalid { msg, .. } = &self.view {
            error = Some(DatasetError::new(DataError::Config(msg.clone())));
        }
        let mut engine = self.lock();
        if self.fixed_window
            && error.is_none()
            && let Err(e) = engine.rewind()
        {
            error = Some(DatasetError::new(e));
        }
        let next = engine.cursor_of(part);
        drop(engine);
        let start = next / window * window;
        Box::new(WindowIter {
            loader: self,
            part,
            parts,
            start,
            end: start + window,
            next,
            error,
            done: false,
        })
    }

    fn num_items(&self) -> usize {
        match &self.view {
            View::Whole => self.items_per_epoch,
            View::Slice { n, .. } => self.items_per_epoch / n,
            View::Invalid { items, .. } => *items,
        }
    }

    fn to_device(&self, device: &Device) -> Arc<dyn DataLoader<O>> {
        Arc::new(StreamingLoader {
            device: device.clone(),
            ..self.clone()
        })
    }

    fn slice(&self, start: usize, end: usize) -> Arc<dyn DataLoader<O>> {
        let items = end.saturating_sub(start);
        let total = self.items_per_epoch;
        let view = if self.view != View::Whole {
            View::Invalid {
                msg: "a slice of a streaming loader cannot be sliced again".into(),
                items,
            }
        } else if items == 0 || !total.is_multiple_of(items) || !start.is_multiple_of(items) {
            View::Invalid {
                msg: format!(
                    "cannot slice the streaming loader at items {start}..{end}: a slice must be \
                     one of n equal parts of the {total} items of a window (the number of \
                     devices must divide items_per_epoch and batch_size)"
                ),
                items,
            }
        } else {
            let n = total / items;
            let k = start / items;
            if !self.batch_size.is_multiple_of(n) {
                View::Invalid {
                    msg: format!(
                        "cannot split global batches of {} samples between {n} devices: the \
                         batch size must be a multiple of the number of devices",
                        self.batch_size
                    ),
                    items,
                }
            } else if n == 1 {
                View::Whole
            } else {
                View::Slice { k, n }
            }
        };
        if let View::Invalid { msg, .. } = &view {
            log::error!("{msg}");
        }
        Arc::new(StreamingLoader {
            view,
            ..self.clone()
        })
    }
}
