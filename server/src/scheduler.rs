//! Continuous batching: one thread owns the model and runs every admitted sequence in one decode
//! batch, one token per step. New requests join at token boundaries: between two decode steps,
//! newcomers whose prompts add up to at most `max_prefill_tokens` positions (at least one
//! newcomer) are prefilled together in one left-padded batch, so a burst of long prompts does not
//! stall running streams for long (as vLLM bounds a step's batched tokens); should that batch
//! fail, each is prefilled alone so a bad request fails by itself. Their first tokens are
//! sampled from the prefill logits, and their KV cache rows are appended to the running batch
//! ([`KvCache::append_rows`], left-padded, which keeps every row's positions). A sequence leaves
//! the batch when it produces a stop id, reaches its token budget, or its client goes away (the
//! receiving end of its event channel is dropped, or its cancel flag is set); its cache rows are
//! dropped ([`KvCache::retain_rows`]) at once, freeing the slot.
//!
//! Each sequence samples with its own settings and its own seeded generator, exactly as
//! [`XGenMM::generate`] does for a batch of one, so a greedy reply equals `blip3 generate`'s for
//! the same prompt (up to the float rounding of a batched matrix product).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::time::Instant;

use blip3_model::generate::{SplitMix64, log_prob, pick_token, top_logprobs};
use blip3_model::phi3::KvCache;
use blip3_model::{FinishReason, GenerationConfig, ImageInput, MultimodalInput, XGenMM};
use burn::prelude::*;
use tokio::sync::mpsc::UnboundedSender;

use crate::metrics::Metrics;

/// What a sequence reports to its request handler.
#[derive(Debug, Clone)]
pub enum Event {
    /// The prompt was prefilled.
    Started {
        /// Prompt positions (text plus vision tokens).
        prompt_tokens: usize,
    },
    /// A generated token (stop ids included).
    Token {
        /// The id.
        id: u32,
        /// Its natural-log probability.
        logprob: f32,
        /// The most likely ids at this step, when asked for.
        top: Vec<(u32, f32)>,
    },
    /// The sequence ended.
    Done {
        /// Why.
        finish: FinishReason,
        /// Tokens generated.
        completion_tokens: usize,
    },
    /// The model rejected the request.
    Failed(String),
}

/// One request for the scheduler.
pub struct Job {
    /// Prompt ids (one `<image>` id per image).
    pub ids: Vec<u32>,
    /// The images, processed and on the model's device.
    pub images: Vec<ImageInput>,
    /// Decoding settings (stop ids and padding id included).
    pub sampling: GenerationConfig,
    /// Where events go; the scheduler stops the sequence when the receiver is dropped.
    pub events: UnboundedSender<Event>,
    /// Set to stop the sequence (e.g. a stop string was found in its text).
    pub cancel: Arc<AtomicBool>,
    /// Prompt positions (text plus vision tokens), for the prefill budget.
    pub positions: usize,
}

/// Capacity settings.
#[derive(Debug, Clone, Copy)]
pub struct SchedulerConfig {
    /// Sequences decoded together at most.
    pub max_seqs: usize,
    /// Requests waiting for a slot at most; more are refused (HTTP 429).
    pub max_queue: usize,
    /// Prompt positions prefilled between two decode steps at most (one newcomer is always
    /// admitted, however long its prompt).
    pub max_prefill_tokens: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            max_seqs: 32,
            max_queue: 256,
            max_prefill_tokens: 512,
        }
    }
}

/// Why a job was not queued.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The queue is full.
    #[error("the server is busy: {0} requests are waiting; retry later")]
    Full(usize),
    /// The scheduler thread has stopped.
    #[error("the model thread has stopped")]
    Stopped,
}

/// The handle the HTTP side holds.
#[derive(Clone)]
pub struct Scheduler {
    jobs: SyncSender<Job>,
    queued: Arc<AtomicUsize>,
    max_queue: usize,
}

impl Scheduler {
    /// Starts the model thread.
    pub fn start(
        model: XGenMM,
        config: SchedulerConfig,
        metrics: Metrics,
    ) -> std::io::Result<Self> {
        let (jobs, rx) = sync_channel(config.max_queue.max(1));
        let queued = Arc::new(AtomicUsize::new(0));
        let q = queued.clone();
        std::thread::Builder::new()
            .name("blip3-scheduler".into())
            .spawn(move || run(model, rx, config, q, metrics))?;
        Ok(Scheduler {
            jobs,
            queued,
            max_queue: config.max_queue,
        })
    }

    /// Queues a job, or refuses it at once when the queue is full.
    pub fn submit(&self, job: Job) -> Result<(), SubmitError> {
        self.queued.fetch_add(1, Ordering::SeqCst);
        match self.jobs.try_send(job) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.queued.fetch_sub(1, Ordering::SeqCst);
                match e {
                    TrySendError::Full(_) => Err(SubmitError::Full(self.max_queue)),
                    TrySendError::Disconnected(_) => Err(SubmitError::Stopped),
                }
            }
        }
    }

    /// Requests waiting for a slot.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }
}

/// One running sequence.
struct Sequence {
    job: Job,
    rng: SplitMix64,
    generated: usize,
    last: u32,
}

impl Sequence {
    /// Samples the next token from `logits` and reports it; false when the sequence has ended.
    fn step(&mut self, logits: &[f32], metrics: &Metrics) -> bool {
        if self.job.cancel.load(Ordering::SeqCst) || self.job.events.is_closed() {
            metrics.cancelled.inc();
            self.finish(FinishReason::Cancelled);
            return false;
        }
        let cfg = &self.job.sampling;
        let id = pick_token(logits, cfg, &mut self.rng);
        let logprob = log_prob(logits, id);
        let top = top_logprobs(logits, cfg.top_logprobs);
        self.generated += 1;
        self.last = id;
        metrics.generated_tokens.inc();
        if self
            .job
            .events
            .send(Event::Token { id, logprob, top })
            .is_err()
        {
            metrics.cancelled.inc();
            self.finish(FinishReason::Cancelled);
            return false;
        }
        if cfg.stop_ids.contains(&id) {
            self.finish(FinishReason::Stop);
            return false;
        }
        if self.generated >= cfg.max_new_tokens {
            self.finish(FinishReason::Length);
            return false;
        }
        true
    }

    fn finish(&self, finish: FinishReason) {
        let _ = self.job.events.send(Event::Done {
            finish,
            completion_tokens: self.generated,
        });
    }
}

fn rows(logits: Tensor<2>) -> Result<Vec<Vec<f32>>, String> {
    let [b, v] = logits.dims();
    let data = logits
        .cast(burn::tensor::DType::F32)
        .into_data()
        .try_into_vec_as::<f32>()
        .map_err(|e| format!("cannot read logits: {e:?}"))?;
    Ok((0..b).map(|i| data[i * v..(i + 1) * v].to_vec()).collect())
}

/// Runs `f`, turning a panic inside the model (a backend assertion, say) into an error, so that
/// one bad request fails alone and the model thread keeps serving.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            log::error!("{what} failed inside the model: {msg}");
            Err(format!("{what} failed inside the model: {msg}"))
        }
    }
}

/// A prefilled batch of newcomers.
struct Prefilled {
    /// The batch's cache, one row a newcomer.
    cache: KvCache,
    /// Each row's logits at its last prompt position.
    logits: Vec<Vec<f32>>,
    /// Each row's prompt positions.
    prompts: Vec<usize>,
}

/// Prefills jobs together (one left-padded batch).
fn prefill(model: &XGenMM, jobs: &[Job]) -> Result<Prefilled, String> {
    for job in jobs {
        job.sampling.validate().map_err(|e| e.to_string())?;
    }
    let input = MultimodalInput {
        input_ids: jobs.iter().map(|j| j.ids.clone()).collect(),
        images: jobs.iter().map(|j| j.images.clone()).collect(),
        labels: None,
    };
    let mut cache = KvCache::new();
    let (logits, fused) = model
        .prefill(&input, &mut cache)
        .map_err(|e| e.to_string())?;
    let prompts = fused
        .mask
        .iter()
        .map(|row| row.iter().filter(|&&m| m).count())
        .collect();
    Ok(Prefilled {
        cache,
        logits: rows(logits)?,
        prompts,
    })
}

/// Prefills newcomers and adds those still running after their first token to the batch. They
/// are prefilled together; when that fails, each is prefilled alone, so one bad request fails
/// by itself.
fn admit(
    model: &XGenMM,
    jobs: Vec<Job>,
    cache: &mut KvCache,
    running: &mut Vec<Sequence>,
    metrics: &Metrics,
) {
    if jobs.is_empty() {
        return;
    }
    let Prefilled {
        cache: mut batch,
        logits,
        prompts,
    } = match guarded("prefill", || prefill(model, &jobs)) {
        Ok(p) => p,
        Err(e) => {
            if jobs.len() == 1 {
                for job in jobs {
                    let _ = job.events.send(Event::Failed(e.clone()));
                }
            } else {
                for job in jobs {
                    admit(model, vec![job], cache, running, metrics);
                }
            }
            return;
        }
    };
    let mut keep = Vec::with_capacity(jobs.len());
    let mut joined = Vec::with_capacity(jobs.len());
    for (row, ((job, logits), prompt_tokens)) in
        jobs.into_iter().zip(&logits).zip(prompts).enumerate()
    {
        let _ = job.events.send(Event::Started { prompt_tokens });
        let seed = job.sampling.seed;
        let mut seq = Sequence {
            job,
            rng: SplitMix64::new(seed),
            generated: 0,
            last: 0,
        };
        if seq.step(logits, metrics) {
            keep.push(row);
            joined.push(seq);
        }
    }
    if joined.is_empty() {
        return;
    }
    if let Err(e) = batch
        .retain_rows(&keep)
        .and_then(|()| cache.append_rows(batch))
    {
        for seq in joined {
            let _ = seq.job.events.send(Event::Failed(e.to_string()));
        }
        return;
    }
    running.extend(joined);
}

/// The scheduler loop (see the module documentation).
fn run(
    model: XGenMM,
    jobs: Receiver<Job>,
    config: SchedulerConfig,
    queued: Arc<AtomicUsize>,
    metrics: Metrics,
) {
    let mut cache = KvCache::new();
    let mut running: Vec<Sequence> = Vec::new();
    // A newcomer taken from the queue that did not fit the last step's prefill budget.
    let mut held: Option<Job> = None;
    loop {
        // Admit newcomers at this token boundary, within the prefill budget.
        let mut newcomers: Vec<Job> = Vec::new();
        let mut budget = config.max_prefill_tokens;
        while running.len() + newcomers.len() < config.max_seqs.max(1) {
            let job = match held.take() {
                Some(job) => job,
                None if running.is_empty() && newcomers.is_empty() => match jobs.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                },
                None => match jobs.try_recv() {
                    Ok(job) => job,
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                },
            };
            if job.cancel.load(Ordering::SeqCst) || job.events.is_closed() {
                queued.fetch_sub(1, Ordering::SeqCst);
                continue;
            }
            if !newcomers.is_empty() && job.positions > budget {
                // Over this step's budget: first in line at the next boundary.
                held = Some(job);
                break;
            }
            queued.fetch_sub(1, Ordering::SeqCst);
            budget = budget.saturating_sub(job.positions);
            newcomers.push(job);
        }
        metrics
            .queue_depth
            .set(queued.load(Ordering::SeqCst) as i64);
        admit(&model, newcomers, &mut cache, &mut running, &metrics);
        metrics.active_sequences.set(running.len() as i64);
        if running.is_empty() {
            continue;
        }

        // One decode step for every running sequence.
        let started = Instant::now();
        let ids: Vec<u32> = running.iter().map(|s| s.last).collect();
        let real = vec![true; ids.len()];
        let logits = match guarded("a decode step", || {
            model
                .decode_step(&ids, &real, &mut cache)
                .map_err(|e| e.to_string())
                .and_then(rows)
        }) {
            Ok(l) => l,
            Err(e) => {
                for seq in running.drain(..) {
                    let _ = seq.job.events.send(Event::Failed(e.clone()));
                }
                cache = KvCache::new();
                continue;
            }
        };
        let mut keep = Vec::with_capacity(running.len());
        for (i, (seq, row)) in running.iter_mut().zip(&logits).enumerate() {
            if seq.step(row, &metrics) {
                keep.push(i);
            }
        }
        let secs = started.elapsed().as_secs_f64();
        if secs > 0.0 {
            metrics
                .decode_tokens_per_second
                .set(ids.len() as f64 / secs);
        }
        if keep.len() != running.len() {
            if let Err(e) = cache.retain_rows(&keep) {
                log::error!("dropping finished rows: {e}");
                for seq in running.drain(..) {
                    let _ = seq.job.events.send(Event::Failed(e.to_string()));
                }
                cache = KvCache::new();
                continue;
            }
            let mut index = 0;
            running.retain(|_| {
                let kept = keep.contains(&index);
                index += 1;
                kept
            });
        }
        metrics.active_sequences.set(running.len() as i64);
    }
}
