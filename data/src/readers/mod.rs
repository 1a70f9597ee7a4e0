//! Dataset readers: each turns one on-disk layout into [`RawSample`](crate::sample::RawSample)s
//! (or typed evaluation items), reporting bad records as
//! [`SampleError`](crate::error::SampleError)s instead of failing.
//!
//! Shared by the readers:
//!
//! * [`stream`]: the resumable [`SampleStream`](stream::SampleStream) trait, its
//!   [`Position`](stream::Position) and the [`ReadScope`](stream::ReadScope) a reader opens with;
//! * [`shards`]: shard lists (brace, directory and wildcard expansion) and their split between
//!   ranks.
//!
//! Formats:
//!
//! * [`webdataset`]: img2dataset-style tar shards (caption pairs);
//! * [`interleaved`]: interleaved documents (OBELICS, MINT-1T);
//! * [`parquet`]: parquet tables (caption sets, OBELICS/MINT-1T HTML, LLaVA-NeXT-Data);
//! * [`json_stream`]: constant-memory streaming over huge JSON arrays and JSON lines, with
//!   resume and rank sharding (used by the JSON readers below);
//! * [`llava`]: LLaVA / M4-Instruct / Mantis SFT conversations;
//! * [`preference`]: DPO pairs (VLFeedback, generic `{prompt, chosen, rejected}`);
//! * [`safety`]: VLGuard conversations with safe/unsafe tags;
//! * [`eval_data`]: evaluation sets (COCO captions, VQA, POPE, MMBench TSV, ScienceQA).

pub mod eval_data;
pub mod interleaved;
pub mod json_stream;
pub mod llava;
pub mod parquet;
pub mod preference;
pub mod safety;
pub mod shards;
pub mod stream;
pub mod webdataset;
