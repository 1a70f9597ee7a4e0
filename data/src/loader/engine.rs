//! The loader's shared engine: it collects processed samples in mixture order, counts them,
//! groups them into global batches, hands each reader (the whole loader or one of its slices) its
//! part of every batch, and keeps the resume point of what was consumed.

use std::collections::VecDeque;
use std::sync::Arc;

use super::feed::{Feed, FeedMsg, Processed};
use super::{LoaderConfig, LoaderState, LoaderStats};
use crate::error::{DataError, SampleError};
use crate::mixture::rng::Rng;
use crate::mixture::{Mixture, MixturePosition, Recipe};
use crate::pipeline::{Pipeline, TrainSample};

/// Why the engine stopped for good.
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    /// The bad-sample rate went over the threshold.
    TooManyBad {
        bad: u64,
        seen: u64,
        rate: f64,
        threshold: f64,
        last: String,
    },
    /// Every item was bad: at least `min_samples_for_rate` of them, or all of a stream that ended.
    NoGood { seen: u64, last: String },
    /// The mixture (or the loader) failed.
    Fatal(Arc<DataError>),
    /// The readers of the loader disagree on how it is split.
    Split(String),
}

/// A shared [`DataError`] as an error type of its own, so that every reader can report it.
#[derive(Debug)]
pub(crate) struct SharedError(pub(crate) Arc<DataError>);

impl std::fmt::Display for SharedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SharedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(self.0.as_ref())
    }
}

impl Failure {
    /// The error a reader reports.
    pub(crate) fn to_error(&self) -> burn::data::dataset::DatasetError {
        use burn::data::dataset::DatasetError;
        match self {
            Failure::TooManyBad {
                bad,
                seen,
                rate,
                threshold,
                last,
            } => DatasetError::new(DataError::TooManyBadSamples {
                bad: *bad,
                seen: *seen,
                rate: *rate,
                threshold: *threshold,
                last: last.clone(),
            }),
            Failure::NoGood { seen, last } => DatasetError::new(DataError::NoGoodSamples {
                seen: *seen,
                last: last.clone(),
            }),
            Failure::Fatal(e) => DatasetError::new(SharedError(e.clone())),
            Failure::Split(msg) => DatasetError::new(DataError::Config(msg.clone())),
        }
    }
}

/// A global batch whose parts are being handed out.
struct GlobalBatch {
    /// One part per reader; `None` once taken.
    parts: Vec<Option<Vec<TrainSample>>>,
    /// The resume point once this batch is fully consumed.
    after: LoaderState,
}

/// The shared state behind a [`super::StreamingLoader`] and its slices.
pub(crate) struct Engine {
    recipe: Recipe,
    rank: usize,
    world: usize,
    pipeline: Arc<Pipeline>,
    names: Arc<Vec<String>>,
    config: LoaderConfig,
    /// A mixture waiting to be started (the feed starts on first use and after a restore).
    pending: Option<Mixture>,
    feed: Option<Feed>,
    /// The mixture position after the last collected item, and the statistics up to it.
    cursor: MixturePosition,
    stats: LoaderStats,
    /// Sort buffers started so far.
    buffers: u64,
    /// Index of the next global batch a buffer will produce (including skipped ones).
    next_index: u64,
    /// Batches of the next buffer to skip (a restore inside a buffer).
    pending_skip: u64,
    /// Produced global batches not fully consumed; `queue[0]` has index `base`.
    queue: VecDeque<GlobalBatch>,
    base: u64,
    /// How many parts every batch is split into, and each reader's next batch.
    parts: usize,
    cursors: Vec<u64>,
    /// The resume point of everything consumed.
    committed: LoaderState,
    /// The state the loader started from (for fixed-window loaders).
    initial: LoaderState,
    ended: bool,
    failure: Option<Failure>,
    /// Bad-sample warnings, each run of identical ones logged once with a count.
    warnings: RepeatedWarning,
}

/// Logs a warning once per run of identical messages: repeats are counted, and the count is
/// logged when another message comes, or when the loader stops or is dropped. (A source whose
/// bad record comes back every epoch must not fill the log.)
#[derive(Default)]
struct RepeatedWarning {
    last: Option<String>,
    repeats: u64,
}

impl RepeatedWarning {
    fn warn(&mut self, msg: &str) {
        if self.last.as_deref() == Some(msg) {
            self.repeats += 1;
            return;
        }
        self.flush();
        log::warn!("{msg}");
        self.last = Some(msg.to_string());
    }

    /// Logs the count of repeats of the last message, if any.
    fn flush(&mut self) {
        if self.repeats > 0
            && let Some(last) = &self.last
        {
            log::warn!("{last} (repeated {} more times)", self.repeats);
        }
        self.repeats = 0;
    }
}

impl Drop for RepeatedWarning {
    fn drop(&mut self) {
        self.flush();
    }
}

impl Engine {
    /// An engine over `mixture`; nothing is read until the first batch is asked for.
    pub(crate) fn new(
        mixture: Mixture,
        pipeline: Arc<Pipeline>,
        config: LoaderConfig,
    ) -> Result<Engine, DataError> {
        config.validate()?;
        let names: Vec<String> = (0..mixture.num_sources())
            .map(|i| mixture.source_name(i).to_string())
            .collect();
        let cursor = mixture.state();
        let initial = LoaderState {
            position: cursor.clone(),
            stats: LoaderStats::default(),
            skip_batches: 0,
            buffers: 0,
            batches: 0,
        };
        Ok(Engine {
            recipe: mixture.recipe().clone(),
            rank: mixture.rank(),
            world: mixture.world(),
            pipeline,
            names: Arc::new(names),
            config,
            pending: Some(mixture),
            feed: None,
            cursor,
            stats: LoaderStats::default(),
            buffers: 0,
            next_index: 0,
            pending_skip: 0,
            queue: VecDeque::new(),
            base: 0,
            parts: 1,
            cursors: vec![0],
            committed: initial.clone(),
            initial,
            ended: false,
            failure: None,
            warnings: RepeatedWarning::default(),
        })
    }

    /// The configuration.
    pub(crate) fn config(&self) -> &LoaderConfig {
        &self.config
    }

    /// The resume point of everything consumed so far.
    pub(crate) fn state(&self) -> LoaderState {
        self.committed.clone()
    }

    /// Statistics of every item collected so far (including prefetched batches not yet consumed).
    pub(crate) fn stats(&self) -> LoaderStats {
        self.stats.clone()
    }

    /// The next batch index reader `part` will get.
    pub(crate) fn cursor_of(&self, part: usize) -> u64 {
        if part < self.cursors.len() {
            self.cursors[part]
        } else {
            self.base
        }
    }

    /// Goes back to the initial state (fixed-window loaders).
    pub(crate) fn rewind(&mut self) -> Result<(), DataError> {
        let initial = self.initial.clone();
        self.restore(&initial)
    }

    /// Continues from `state`: stops the feed, reopens the mixture at the state's position and
    /// discards everything buffered.
    pub(crate) fn restore(&mut self, state: &LoaderState) -> Result<(), DataError> {
        if state.skip_batches > state.batches {
            return Err(DataError::Config(format!(
                "invalid loader state: {} batches to skip but only {} consumed",
                state.skip_batches, state.batches
            )));
        }
        let mixture = Mixture::open_at(&self.recipe, self.rank, self.world, &state.position)?;
        self.feed = None;
        self.pending = Some(mixture);
        self.cursor = state.position.clone();
        self.stats = state.stats.clone();
        self.buffers = state.buffers;
        self.next_index = state.batches - state.skip_batches;
        self.pending_skip = state.skip_batches;
        self.queue.clear();
        self.base = state.batches;
        self.cursors = vec![state.batches; self.parts];
        self.committed = state.clone();
        self.ended = false;
        self.failure = None;
        Ok(())
    }

    /// Takes reader `part`'s share (of `parts`) of its next global batch. `Ok(None)` when the
    /// stream has ended.
    pub(crate) fn take(
        &mut self,
        part: usize,
        parts: usize,
    ) -> Result<Option<Vec<TrainSample>>, Failure> {
        if let Some(failure) = &self.failure {
            return Err(failure.clone());
        }
        if parts != self.parts {
            let clean = self.queue.is_empty() && self.cursors.iter().all(|&c| c == self.base);
            if !clean {
                let msg = format!(
                    "the loader is read as {} slices and as {parts} slices at the same time",
                    self.parts
                );
                return Err(Failure::Split(msg));
            }
            self.parts = parts;
            self.cursors = vec![self.base; parts];
        }
        let wanted = self.cursors[part];
        while self.base + self.queue.len() as u64 <= wanted {
            if self.ended {
                return Ok(None);
            }
            if let Err(failure) = self.fill_buffer() {
                self.warnings.flush();
                self.failure = Some(failure.clone());
                return Err(failure);
            }
        }
        let index = (wanted - self.base) as usize;
        let taken = self.queue[index].parts[part].take();
        self.cursors[part] += 1;
        while self
            .queue
            .front()
            .is_some_and(|b| b.parts.iter().all(Option::is_none))
        {
            if let Some(done) = self.queue.pop_front() {
                self.committed = done.after;
                self.base += 1;
            }
        }
        Ok(taken)
    }

    /// The next processed item from the feed (starting it if needed).
    fn next_processed(&mut self) -> Result<Option<Box<Processed>>, Failure> {
        if self.feed.is_none() {
            let Some(mixture) = self.pending.take() else {
                return Ok(None);
            };
            let feed = Feed::start(
                mixture,
                self.pipeline.clone(),
                self.names.clone(),
                self.config.num_workers,
                self.config.prefetch,
            )
            .map_err(|e| Failure::Fatal(Arc::new(e)))?;
            self.feed = Some(feed);
        }
        let Some(feed) = self.feed.as_mut() else {
            return Ok(None);
        };
        match feed.next() {
            FeedMsg::Item(item) => Ok(Some(item)),
            FeedMsg::End => Ok(None),
            FeedMsg::Fatal(e) => Err(Failure::Fatal(e)),
        }
    }

    /// Counts one collected item; a failure when the bad-sample rate goes over the threshold.
    fn account(
        &mut self,
        source: usize,
        result: &Result<TrainSample, SampleError>,
    ) -> Result<(), Failure> {
        let name = self.names.get(source).map_or("", String::as_str);
        let stats = &mut self.stats;
        stats.seen += 1;
        let per_source = stats.sources.entry(name.to_string()).or_default();
        per_source.seen += 1;
        match result {
            Ok(_) => {
                stats.good += 1;
                per_source.good += 1;
            }
            Err(e) => {
                per_source.bad += 1;
                stats.bad += 1;
                *stats.by_kind.entry(e.kind).or_default() += 1;
                let described = format!("{name}: {e}");
                self.warnings.warn(&described);
                if stats.recent.len() >= LoaderStats::RECENT {
                    stats.recent.remove(0);
                }
                stats.recent.push(described.clone());
                stats.last = Some(described);
            }
        }
        let policy = &self.config;
        if stats.seen >= policy.min_samples_for_rate && stats.seen > 0 {
            let rate = stats.bad as f64 / stats.seen as f64;
            if rate > policy.max_bad_rate {
                return Err(Failure::TooManyBad {
                    bad: stats.bad,
                    seen: stats.seen,
                    rate: rate * 100.0,
                    threshold: policy.max_bad_rate * 100.0,
                    last: stats.last.clone().unwrap_or_default(),
                });
            }
        }
        // However high the tolerated rate (`blip3 data inspect` tolerates everything), a stream
        // that has given nothing good is broken.
        if stats.good == 0 && stats.seen >= policy.min_samples_for_rate.max(1) {
            return Err(Failure::NoGood {
                seen: stats.seen,
                last: stats.last.clone().unwrap_or_default(),
            });
        }
        Ok(())
    }

    /// Reads one sort buffer (`length_grouping` batches, or one batch), forms its batches and
    /// queues them. Marks the engine ended when the stream ends; a final incomplete batch is
    /// dropped and counted.
    fn fill_buffer(&mut self) -> Result<(), Failure> {
        let batch_size = self.config.batch_size;
        let group = self.config.length_grouping.unwrap_or(1).max(1);
        let wanted = group * batch_size;
        let start = LoaderState {
            position: self.cursor.clone(),
            stats: self.stats.clone(),
            skip_batches: 0,
            buffers: self.buffers,
            batches: self.next_index,
        };
        let mut samples = Vec::with_capacity(wanted);
        while samples.len() < wanted {
            let Some(item) = self.next_processed()? else {
                self.ended = true;
                self.warnings.flush();
                if self.stats.good == 0 && self.stats.bad > 0 {
                    return Err(Failure::NoGood {
                        seen: self.stats.seen,
                        last: self.stats.last.clone().unwrap_or_default(),
                    });
                }
                break;
            };
            let Processed {
                source,
                result,
                after,
            } = *item;
            self.cursor = after;
            self.account(source, &result)?;
            if let Ok(sample) = result {
                samples.push(sample);
            }
        }
        let buffer_index = self.buffers;
        self.buffers += 1;
        let full = samples.len() / batch_size * batch_size;
        if full < samples.len() {
            let dropped = samples.len() - full;
            log::info!(
                "the data stream ended: {dropped} samples short of a full batch are dropped"
            );
            self.stats.dropped += dropped as u64;
            samples.truncate(full);
        }
        let batches = self.form_batches(samples, buffer_index);
        let count = batches.len() as u64;
        let skip = std::mem::take(&mut self.pending_skip);
        for (j, batch) in batches.into_iter().enumerate() {
            let j = j as u64;
            let index = self.next_index + j;
            if j < skip {
                continue;
            }
            let after = if j + 1 == count {
                LoaderState {
                    position: self.cursor.clone(),
                    stats: self.stats.clone(),
                    skip_batches: 0,
                    buffers: self.buffers,
                    batches: index + 1,
                }
            } else {
                LoaderState {
                    skip_batches: j + 1,
                    batches: index + 1,
                    ..start.clone()
                }
            };
            self.queue.push_back(GlobalBatch {
                parts: split_parts(batch, self.parts),
                after,
            });
        }
        self.next_index += count;
        Ok(())
    }

    /// Splits a buffer into batches: in stream order, or (length grouping) sorted by length and
    /// then the batches shuffled with a seeded generator.
    fn form_batches(&self, samples: Vec<TrainSample>, buffer_index: u64) -> Vec<Vec<TrainSample>> {
        let batch_size = self.config.batch_size;
        let mut samples = samples;
        if self.config.length_grouping.is_some() {
            let per_view = self.pipeline.config().vision_tokens_per_group;
            // A stable sort: equal lengths keep their stream order.
            samples.sort_by_key(|s| s.expanded_len(per_view));
        }
        let mut batches = Vec::with_capacity(samples.len() / batch_size.max(1));
        let mut rest = samples.into_iter();
        loop {
            let batch: Vec<TrainSample> = rest.by_ref().take(batch_size).collect();
            if batch.is_empty() {
                break;
            }
            batches.push(batch);
        }
        if self.config.length_grouping.is_some() {
            let mut rng = Rng::stream(self.recipe.seed, "length-groups", buffer_index, 0);
            rng.shuffle(&mut batches);
        }
        batches
    }
}

/// Cuts a global batch into `parts` contiguous parts of equal size (the batch size is a multiple
/// of `parts`, checked when slicing).
fn split_parts(batch: Vec<TrainSample>, parts: usize) -> Vec<Option<Vec<TrainSample>>> {
    if parts <= 1 {
        return vec![Some(batch)];
    }
    let size = batch.len().div_ceil(parts);
    let mut out = Vec::with_capacity(parts);
    let mut rest = batch.into_iter();
    for _ in 0..parts {
        out.push(Some(rest.by_ref().take(size).collect()));
    }
    out
}
