//! The feed: mixture items turned into [`TrainSample`]s, in mixture order, either in the calling
//! thread or by a producer thread and `num_workers` pipeline workers.
//!
//! Threaded layout: the producer reads the mixture (I/O, tar and JSON parsing) and numbers every
//! item; workers take items from a bounded queue, run the [`Pipeline`] (decode, any-res, tokenise)
//! and send the results to a second bounded queue; the consumer puts them back in mixture order
//! with a small reorder buffer. The order of the output therefore never depends on the number of
//! workers or on their timing. Memory is bounded by the two queues (`prefetch` items each) plus one
//! item per worker. Dropping the feed stops and joins its threads.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::error::{BadKind, DataError, SampleError};
use crate::mixture::{MixItem, Mixture, MixturePosition};
use crate::pipeline::{Pipeline, TrainSample};

/// One processed mixture item.
pub(crate) struct Processed {
    /// The source index.
    pub(crate) source: usize,
    /// The training sample, or why the item was skipped.
    pub(crate) result: Result<TrainSample, SampleError>,
    /// The mixture position just after this item.
    pub(crate) after: MixturePosition,
}

/// What the feed gives next.
pub(crate) enum FeedMsg {
    /// The next item in mixture order.
    Item(Box<Processed>),
    /// The mixture has ended.
    End,
    /// The mixture failed (the error is shared because every reader of the loader reports it).
    Fatal(Arc<DataError>),
}

/// Runs the pipeline on one mixture item and fills in the source name and tags.
fn process(
    pipeline: &Pipeline,
    names: &[String],
    item: MixItem,
) -> Result<TrainSample, SampleError> {
    let raw = item.sample?;
    let origin = raw.origin().clone();
    // The decoders already turn their panics into errors; this guards the rest of the pipeline so
    // that one sample can never take a worker (and with it the ordered stream) down.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pipeline.process(raw)))
        .unwrap_or_else(|_| {
            Err(SampleError::new(
                &origin.file,
                &origin.key,
                BadKind::Invalid,
                "the sample pipeline panicked",
            ))
        });
    result.map(|mut sample| {
        sample.source = names.get(item.source).cloned().unwrap_or_default();
        sample.tags = item.tags;
        sample
    })
}

/// The source of processed items.
pub(crate) enum Feed {
    /// Everything happens in the calling thread.
    Inline {
        mixture: Box<Mixture>,
        pipeline: Arc<Pipeline>,
        names: Arc<Vec<String>>,
        last: Option<Arc<DataError>>,
        ended: bool,
    },
    /// A producer thread and workers.
    Threads(Workers),
}

impl Feed {
    /// A feed over `mixture`: inline when `num_workers` is 0, else threaded with queues of
    /// `prefetch` items.
    pub(crate) fn start(
        mixture: Mixture,
        pipeline: Arc<Pipeline>,
        names: Arc<Vec<String>>,
        num_workers: usize,
        prefetch: usize,
    ) -> Result<Feed, DataError> {
        if num_workers == 0 {
            return Ok(Feed::Inline {
                mixture: Box::new(mixture),
                pipeline,
                names,
                last: None,
                ended: false,
            });
        }
        Workers::start(mixture, pipeline, names, num_workers, prefetch).map(Feed::Threads)
    }

    /// The next message in mixture order. After `End` or `Fatal`, the same message repeats.
    pub(crate) fn next(&mut self) -> FeedMsg {
        match self {
            Feed::Inline {
                mixture,
                pipeline,
                names,
                last,
                ended,
            } => {
                if let Some(e) = last {
                    return FeedMsg::Fatal(e.clone());
                }
                if *ended {
                    return FeedMsg::End;
                }
                match mixture.next() {
                    Some(Ok(item)) => {
                        let source = item.source;
                        let result = process(pipeline, names, item);
                        FeedMsg::Item(Box::new(Processed {
                            source,
                            result,
                            after: mixture.state(),
                        }))
                    }
                    Some(Err(e)) => {
                        let e = Arc::new(e);
                        *last = Some(e.clone());
                        FeedMsg::Fatal(e)
                    }
                    None => {
                        *ended = true;
                        FeedMsg::End
                    }
                }
            }
            Feed::Threads(workers) => workers.next(),
        }
    }
}

/// A numbered message from a worker or the producer.
type Numbered = (u64, FeedMsg);

/// One unit of work for a worker.
struct Job {
    seq: u64,
    item: MixItem,
    after: MixturePosition,
}

/// The threaded feed.
pub(crate) struct Workers {
    results: Option<Receiver<Numbered>>,
    /// Messages that arrived before their turn.
    reorder: BTreeMap<u64, FeedMsg>,
    next_seq: u64,
    /// A final message (end or failure), repeated once reached.
    last: Option<FeedMsg>,
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
}

impl Workers {
    fn start(
        mut mixture: Mixture,
        pipeline: Arc<Pipeline>,
        names: Arc<Vec<String>>,
        num_workers: usize,
        prefetch: usize,
    ) -> Result<Workers, DataError> {
        let (job_tx, job_rx) = sync_channel::<Job>(prefetch);
        let (out_tx, out_rx) = sync_channel::<Numbered>(prefetch);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::with_capacity(num_workers + 1);
        let spawn_error =
            |e: std::io::Error| DataError::Config(format!("cannot start a loader thread: {e}"));

        let producer_out = out_tx.clone();
        let producer_stop = stop.clone();
        let producer = std::thread::Builder::new()
            .name("blip3-loader-producer".into())
            .spawn(move || produce(&mut mixture, &job_tx, &producer_out, &producer_stop))
            .map_err(spawn_error)?;
        handles.push(producer);
        for w in 0..num_workers {
            let (jobs, out, stop, pipeline, names) = (
                job_rx.clone(),
                out_tx.clone(),
                stop.clone(),
                pipeline.clone(),
                names.clone(),
            );
            let handle = std::thread::Builder::new()
                .name(format!("blip3-loader-worker-{w}"))
                .spawn(move || work(&jobs, &out, &stop, &pipeline, &names))
                .map_err(spawn_error)?;
            handles.push(handle);
        }
        Ok(Workers {
            results: Some(out_rx),
            reorder: BTreeMap::new(),
            next_seq: 0,
            last: None,
            stop,
            handles,
        })
    }

    /// The next message in order.
    fn next(&mut self) -> FeedMsg {
        loop {
            if let Some(last) = &self.last {
                return match last {
                    FeedMsg::Fatal(e) => FeedMsg::Fatal(e.clone()),
                    _ => FeedMsg::End,
                };
            }
            if let Some(msg) = self.reorder.remove(&self.next_seq) {
                match msg {
                    FeedMsg::Item(item) => {
                        self.next_seq += 1;
                        return FeedMsg::Item(item);
                    }
                    FeedMsg::End => self.last = Some(FeedMsg::End),
                    FeedMsg::Fatal(e) => self.last = Some(FeedMsg::Fatal(e)),
                }
                continue;
            }
            let received = self.results.as_ref().map(|rx| rx.recv());
            match received {
                Some(Ok((seq, msg))) => {
                    self.reorder.insert(seq, msg);
                }
                _ => {
                    let e = DataError::Config("the loader's worker threads stopped".into());
                    self.last = Some(FeedMsg::Fatal(Arc::new(e)));
                }
            }
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Dropping the receiver makes every blocked sender fail, which ends the threads.
        self.results = None;
        for handle in self.handles.drain(..) {
            let _ = handle.join();
        }
    }
}

/// The producer: numbers mixture items and queues them for the workers; ends with `End` or
/// `Fatal` (sent straight to the consumer with the next number).
fn produce(
    mixture: &mut Mixture,
    jobs: &SyncSender<Job>,
    out: &SyncSender<Numbered>,
    stop: &AtomicBool,
) {
    let mut seq = 0u64;
    while !stop.load(Ordering::SeqCst) {
        match mixture.next() {
            Some(Ok(item)) => {
                let job = Job {
                    seq,
                    item,
                    after: mixture.state(),
                };
                if jobs.send(job).is_err() {
                    return;
                }
                seq += 1;
            }
            Some(Err(e)) => {
                let _ = out.send((seq, FeedMsg::Fatal(Arc::new(e))));
                return;
            }
            None => {
                let _ = out.send((seq, FeedMsg::End));
                return;
            }
        }
    }
}

/// A worker: runs the pipeline on queued items until the queue closes or the consumer is gone.
fn work(
    jobs: &Mutex<Receiver<Job>>,
    out: &SyncSender<Numbered>,
    stop: &AtomicBool,
    pipeline: &Pipeline,
    names: &[String],
) {
    loop {
        let job = {
            let guard = match jobs.lock() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            guard.recv()
        };
        let Ok(job) = job else { return };
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let source = job.item.source;
        let result = process(pipeline, names, job.item);
        let msg = FeedMsg::Item(Box::new(Processed {
            source,
            result,
            after: job.after,
        }));
        if out.send((job.seq, msg)).is_err() {
            return;
        }
    }
}
