//! Where a reader stands and what it reads: the [`SampleStream`] trait every resumable reader
//! implements, the [`Position`] it reports, and the [`ReadScope`] (rank split and start position)
//! it is opened with.
//!
//! Contract: a [`Position`] names the next record of a source whose shards (or files) are listed
//! in one global order. Opening the same source with the same [`ShardSplit`] at a position taken
//! from [`SampleStream::position`] yields exactly the items the first stream had not yielded yet,
//! in the same order. How a shard list is built and split between ranks is in
//! [`shards`](super::shards).

use super::shards::ShardSplit;
use crate::error::{DataError, SampleError};
use crate::sample::RawSample;

/// A resumable position in a list of shards (or files): the next record to read is record
/// `sample` of shard `shard`, of which the first `part` items were already yielded.
///
/// `shard` is an index into the full (unsplit) shard list; `sample` counts the records already
/// consumed in that shard: tar groups for WebDataset, lines for JSON lines, rows for Parquet.
/// `part` is non-zero only when a record yields several items (an interleaved document preceded
/// by reports of the images it dropped) and the position was taken between them.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Position {
    /// Global index of the shard or file.
    pub shard: usize,
    /// Records of that shard already consumed.
    pub sample: u64,
    /// Items of record `sample` already yielded.
    #[serde(default)]
    pub part: u32,
}

impl Position {
    /// Record `sample` of shard `shard`, from its first item.
    pub fn new(shard: usize, sample: u64) -> Self {
        Position {
            shard,
            sample,
            part: 0,
        }
    }

    /// The start of shard `shard` (skips all earlier shards).
    pub fn shard_start(shard: usize) -> Self {
        Position::new(shard, 0)
    }
}

/// A stream of samples that can report where it stands, so that training can save the position
/// in a checkpoint and resume exactly. Implemented by every reader of this module family.
pub trait SampleStream: Iterator<Item = Result<RawSample, SampleError>> + Send {
    /// The position of the next record. Opening the same source at this position yields exactly
    /// the items this stream has not yielded yet.
    fn position(&self) -> Position;
}

/// Which part of a source one reader reads: the rank's split and the start position (a saved
/// [`SampleStream::position`]; default: the beginning).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReadScope {
    /// Which shards (files, row groups) this rank reads.
    pub split: ShardSplit,
    /// Where to start.
    pub start: Position,
}

impl ReadScope {
    /// Everything from the beginning, for rank `rank` of `world`.
    pub fn rank(rank: usize, world: usize) -> Result<Self, DataError> {
        Ok(ReadScope {
            split: ShardSplit::new(rank, world)?,
            start: Position::default(),
        })
    }

    /// The same split, resumed at `start`.
    pub fn resumed(self, start: Position) -> Self {
        ReadScope { start, ..self }
    }
}
