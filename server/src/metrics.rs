//! Prometheus metrics of `GET /metrics`: requests by endpoint and status, queue depth, running
//! sequences, generated tokens (its rate is tokens/s), the batch's decode speed, and time to first
//! token.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// The server's metrics, registered in their own registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `blip3_requests_total{endpoint, status}`.
    pub requests: IntCounterVec,
    /// `blip3_queue_depth`: requests waiting for a slot.
    pub queue_depth: IntGauge,
    /// `blip3_active_sequences`: sequences in the decode batch.
    pub active_sequences: IntGauge,
    /// `blip3_generated_tokens_total`.
    pub generated_tokens: IntCounter,
    /// `blip3_sequences_cancelled_total`: sequences stopped before their end because their
    /// client went away or a stop string matched.
    pub cancelled: IntCounter,
    /// `blip3_decode_tokens_per_second`: tokens of the last decode step over its duration.
    pub decode_tokens_per_second: Gauge,
    /// `blip3_time_to_first_token_seconds`: from arrival to the first generated token.
    pub time_to_first_token: Histogram,
}

impl Metrics {
    /// Creates and registers the metrics.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "blip3_requests_total",
                "HTTP requests by endpoint and status",
            ),
            &["endpoint", "status"],
        )?;
        let queue_depth = IntGauge::new("blip3_queue_depth", "requests waiting for a slot")?;
        let active_sequences =
            IntGauge::new("blip3_active_sequences", "sequences in the decode batch")?;
        let generated_tokens = IntCounter::new("blip3_generated_tokens_total", "tokens generated")?;
        let cancelled = IntCounter::new(
            "blip3_sequences_cancelled_total",
            "sequences stopped early: client gone or a stop string matched",
        )?;
        let decode_tokens_per_second = Gauge::new(
            "blip3_decode_tokens_per_second",
            "tokens per second of the last decode step (all sequences)",
        )?;
        let time_to_first_token = Histogram::with_opts(
            HistogramOpts::new(
                "blip3_time_to_first_token_seconds",
                "time from a request's arrival to its first generated token",
            )
            .buckets(vec![
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(queue_depth.clone()))?;
        registry.register(Box::new(active_sequences.clone()))?;
        registry.register(Box::new(generated_tokens.clone()))?;
        registry.register(Box::new(cancelled.clone()))?;
        registry.register(Box::new(decode_tokens_per_second.clone()))?;
        registry.register(Box::new(time_to_first_token.clone()))?;
        Ok(Metrics {
            registry,
            requests,
            queue_depth,
            active_sequences,
            generated_tokens,
            cancelled,
            decode_tokens_per_second,
            time_to_first_token,
        })
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
