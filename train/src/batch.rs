//! From host samples to device batches: the Burn `Batcher` the streaming loader calls, plus the
//! loader wrappers the run needs (window-state recording for checkpoints, an empty validation
//! loader).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use blip3_data::loader::{LoaderState, StreamingLoader};
use blip3_data::pipeline::{TokenSeq, TrainSample};
use blip3_model::{ImageInput, MultimodalInput};
use blip3_processor::image_input;
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataloader::{DataLoader, DataLoaderIterator, Progress};
use burn::data::dataset::DatasetError;
use burn::prelude::*;

use crate::checkpoint::WindowStates;
use crate::stage::VlmBatch;

/// Builds [`VlmBatch`]es: images become `[V, 3, S, S]` tensors, ids and labels stay on the host
/// (the model fuses and pads them).
#[derive(Debug, Clone, Copy, Default)]
pub struct VlmBatcher;

fn images(sample: &TrainSample, device: &Device) -> Vec<ImageInput> {
    sample
        .images
        .iter()
        .map(|p| {
            // The pipeline's images hold `num_views` views of their declared size by construction
            // (ImageProcessor::process), so the shape check cannot fail here.
            image_input(p.clone(), device).expect("a pipeline image matches its declared shape")
        })
        .collect()
}

fn input(seqs: Vec<&TokenSeq>, imgs: Vec<Vec<ImageInput>>) -> MultimodalInput {
    MultimodalInput {
        input_ids: seqs.iter().map(|s| s.input_ids.clone()).collect(),
        images: imgs,
        labels: Some(seqs.iter().map(|s| s.labels.clone()).collect()),
    }
}

impl Batcher<TrainSample, VlmBatch> for VlmBatcher {
    fn batch(&self, items: Vec<TrainSample>, device: &Device) -> VlmBatch {
        let imgs: Vec<Vec<ImageInput>> = items.iter().map(|s| images(s, device)).collect();
        let rejected = items.iter().all(|s| s.rejected.is_some()).then(|| {
            let seqs = items.iter().filter_map(|s| s.rejected.as_ref()).collect();
            input(seqs, imgs.clone())
        });
        VlmBatch {
            input: input(items.iter().map(|s| &s.seq).collect(), imgs),
            rejected,
        }
    }
}

/// A loader handle that records the loader's state each time one of its windows is fully read,
/// keyed by window number, so the (asynchronous) checkpointer can save the state of exactly the
/// window it checkpoints. The run's last window can be made shorter than the others
/// ([`WindowTracking::with_last_window`]).
pub struct WindowTracking {
    inner: Arc<dyn DataLoader<VlmBatch>>,
    loader: StreamingLoader<VlmBatch>,
    states: WindowStates<LoaderState>,
    next_window: Arc<AtomicUsize>,
    last: Option<LastWindow>,
}

/// The run's last window and how many of a full window's batches it yields.
#[derive(Debug, Clone, Copy)]
struct LastWindow {
    window: usize,
    full: usize,
    batches: usize,
}

impl WindowTracking {
    /// Tracks `loader`, whose next `iter()` is window `first_window`.
    pub fn new(
        loader: StreamingLoader<VlmBatch>,
        states: WindowStates<LoaderState>,
        first_window: usize,
    ) -> Self {
        Self {
            inner: Arc::new(loader.clone()),
            loader,
            states,
            next_window: Arc::new(AtomicUsize::new(first_window)),
            last: None,
        }
    }

    /// Window `window` (the run's last) ends after `batches` of the `full` batches a window has,
    /// so a run stops after exactly `total_steps` optimizer steps when `every_steps` does not
    /// divide them.
    pub fn with_last_window(mut self, window: usize, full: usize, batches: usize) -> Self {
        self.last = (batches < full).then_some(LastWindow {
            window,
            full,
            batches,
        });
        self
    }
}

struct TrackingIter<'a> {
    inner: Box<dyn DataLoaderIterator<VlmBatch> + 'a>,
    loader: &'a StreamingLoader<VlmBatch>,
    states: &'a WindowStates<LoaderState>,
    window: usize,
    recorded: bool,
    /// `(full, batches)`: this window stops after `batches` of its `full` batches.
    short: Option<(usize, usize)>,
    taken: usize,
}

impl Iterator for TrackingIter<'_> {
    type Item = Result<VlmBatch, DatasetError>;
    fn next(&mut self) -> Option<Self::Item> {
        let item = match self.short {
            Some((_, batches)) if self.taken >= batches => None,
            _ => self.inner.next(),
        };
        if item.is_some() {
            self.taken += 1;
        }
        if item.is_none() && !self.recorded {
            self.states.record(self.window, self.loader.state());
            self.recorded = true;
        }
        item
    }
}

impl DataLoaderIterator<VlmBatch> for TrackingIter<'_> {
    fn progress(&self) -> Progress {
        let mut p = self.inner.progress();
        if let Some((full, batches)) = self.short {
            p.items_total = p.items_total * batches / full.max(1);
        }
        p
    }
}

impl DataLoader<VlmBatch> for WindowTracking {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<VlmBatch> + 'a> {
        let window = self.next_window.fetch_add(1, Ordering::SeqCst);
        let short = self
            .last
            .filter(|l| l.window == window)
            .map(|l| (l.full, l.batches));
        Box::new(TrackingIter {
            inner: self.inner.iter(),
            loader: &self.loader,
            states: &self.states,
            window,
            recorded: false,
            short,
            taken: 0,
        })
    }

    fn num_items(&self) -> usize {
        self.inner.num_items()
    }

    fn to_device(&self, device: &Device) -> Arc<dyn DataLoader<VlmBatch>> {
        Arc::new(WindowTracking {
            inner: self.inner.to_device(device),
            loader: self.loader.clone(),
            states: self.states.clone(),
            next_window: self.next_window.clone(),
            last: self.last,
        })
    }

    fn slice(&self, start: usize, end: usize) -> Arc<dyn DataLoader<VlmBatch>> {
        // Slices share the stream; each records the shared state when its part of a window ends,
        // the last one to finish (after every slice read the window) wins.
        Arc::new(WindowTracking {
            inner: self.inner.slice(start, end),
            loader: self.loader.clone(),
            states: self.states.clone(),
            next_window: Arc::new(AtomicUsize::new(self.next_window.load(Ordering::SeqCst))),
            last: self.last,
        })
    }
}

/// A loader with no items (validation when no validation recipe is given).
pub struct EmptyLoader;

struct EmptyIter;

impl Iterator for EmptyIter {
    type Item = Result<VlmBatch, DatasetError>;
    fn next(&mut self) -> Option<Self::Item> {
        None
    }
}

impl DataLoaderIterator<VlmBatch> for EmptyIter {
    fn progress(&self) -> Progress {
        Progress::new(0, 0, None)
    }
}

impl DataLoader<VlmBatch> for EmptyLoader {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<VlmBatch> + 'a> {
        Box::new(EmptyIter)
    }
    fn num_items(&self) -> usize {
        0
    }
    fn to_device(&self, _device: &Device) -> Arc<dyn DataLoader<VlmBatch>> {
        Arc::new(EmptyLoader)
    }
    fn slice(&self, _start: usize, _end: usize) -> Arc<dyn DataLoader<VlmBatch>> {
        Arc::new(EmptyLoader)
    }
}
