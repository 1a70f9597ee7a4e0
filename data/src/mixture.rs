//! Data mixtures: several sources read as one deterministic, resumable, rank-sharded stream of
//! raw samples.
//!
//! A [`Recipe`] names the sources (readers of any layout in [`crate::readers`]) and either a
//! sampling **weight** or a sample **count** for each, plus a seed:
//!
//! * **Weighted mode** (every source has `weight`): each draw picks a source with probability
//!   `weight / sum of the active sources' weights` using a seeded generator, then takes that
//!   source's next item. A source that runs out restarts from its beginning (a new epoch over it),
//!   stops the whole mixture, or is dropped from it, as its `on_exhausted` says. The stream is
//!   endless with `restart`, except that a source whose whole epoch was bad records is left out
//!   instead of restarted (it would yield the same bad records forever).
//! * **Count mode** (every source has `samples`, or the reference's `data_path: {json: n}` form):
//!   a mixture epoch holds exactly `n` items of each source (split between ranks). When the source
//!   has at least `n` items, `n` distinct items are chosen at random (without replacement);
//!   otherwise `n` items are drawn uniformly with replacement. The chosen items keep the source's
//!   read order (a repeated item comes out several times in a row), and the sources are interleaved
//!   at random in proportion to the items each still has to give, so every source finishes with
//!   the epoch. A mixture epoch that yields only bad records is the last. Counting a source's
//!   items costs one pass over it when the mixture opens (and at every epoch for sources with
//!   `shuffle_shards`).
//!
//! **Determinism**: the order depends only on the recipe (seed included), the files, and the
//! rank and world size. Within a source, items come in file order (shard order, optionally
//! shuffled per epoch with `shuffle_shards`).
//!
//! **Sharding**: every source is read for one rank of `world` data-parallel ranks with the readers'
//! own splits: WebDataset shards, JSON-lines interleaved files and Parquet row groups are dealt
//! round-robin to ranks, and JSON-record files (LLaVA, DPO, VLGuard) are split by record, so the
//! ranks see disjoint items whose union is the whole source. A source that gives a rank nothing
//! (one shard, two ranks) is left out of that rank's mixture with a warning.
//!
//! **Resumption**: [`Mixture::state`] is a [`MixturePosition`] (serde) holding each source's
//! reader position, epoch and counts, and the generator's state; [`Mixture::open_at`] continues
//! with exactly the items an uninterrupted mixture would have produced next.
//!
//! Items are [`MixItem`]s: the source, its [`RawSample`] or the [`SampleError`] that replaced a
//! bad record, and the reader's tags. A fatal [`DataError`] (a file that vanished when a source
//! restarts) ends the stream after being yielded.
//!
//! Long because both mixing modes share one resumable state machine, kept in one place.

pub mod recipe;
pub(crate) mod rng;
mod source;

pub use recipe::{
    Exhausted, MissingImagesSpec, MixMode, PairsSpec, Recipe, RootRuleSpec, SourceKind,
    SourceOptions, SourceSpec, UrlRuleSpec,
};

use crate::error::{DataError, SampleError};
use crate::pipeline::SampleTags;
use crate::readers::shards::ShardSplit;
use crate::readers::stream::Position;
use crate::sample::RawSample;
use rng::Rng;
use source::{Counted, ItemStream, Selection, SourceDef, count_items};

/// One item of a mixture.
#[derive(Debug, Clone)]
pub struct MixItem {
    /// The index of the source in the recipe.
    pub source: usize,
    /// The sample, or why its record was skipped.
    pub sample: Result<RawSample, SampleError>,
    /// Tags from the reader (VLGuard safety flags; empty otherwise).
    pub tags: SampleTags,
}

/// Where one source of a mixture stands.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourcePosition {
    /// The source's name (checked when restoring).
    pub name: String,
    /// Epochs over the source completed (weighted mode), or the mixture epoch (count mode).
    pub epoch: u64,
    /// The reader's position in the current epoch (before the current item in count mode).
    pub reader: Position,
    /// Items drawn from the source in total.
    pub drawn: u64,
    /// Items drawn in the current epoch.
    pub drawn_in_epoch: u64,
    /// Whether the source is still part of the mixture.
    pub active: bool,
    /// Count mode: index of the current item in the rank's read order of the epoch.
    #[serde(default)]
    pub ordinal: u64,
    /// Count mode: copies of the current item already emitted.
    #[serde(default)]
    pub copies: u32,
    /// Items drawn in the current epoch that were bad records ([`MixItem::sample`] an error).
    #[serde(default)]
    pub bad_in_epoch: u64,
}

/// The full resume position of a [`Mixture`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MixturePosition {
    /// The recipe's seed (checked when restoring).
    pub seed: u64,
    /// This rank (checked when restoring).
    pub rank: usize,
    /// The number of ranks (checked when restoring).
    pub world: usize,
    /// The state of the interleaving generator.
    pub rng: u64,
    /// Mixture epochs completed (count mode; 0 in weighted mode).
    pub epoch: u64,
    /// Items drawn in total.
    pub drawn: u64,
    /// Whether the mixture has ended.
    pub finished: bool,
    /// Every source's position, in recipe order.
    pub sources: Vec<SourcePosition>,
}

/// How a source is being read.
enum Cursor {
    /// Not reading (inactive).
    Closed,
    /// Weighted mode: the reader itself.
    Plain(Box<dyn ItemStream>),
    /// Count mode: the reader with the epoch's selection.
    Counted(Box<Counted>),
}

impl Cursor {
    fn next_item(&mut self) -> Option<source::Item> {
        match self {
            Cursor::Closed => None,
            Cursor::Plain(stream) => stream.next_item(),
            Cursor::Counted(counted) => counted.next_item(),
        }
    }
}

/// One source of an open mixture.
struct Source {
    def: SourceDef,
    weight: f64,
    /// Count mode: items per epoch for this rank.
    target: u64,
    on_exhausted: Exhausted,
    cursor: Cursor,
    epoch: u64,
    drawn: u64,
    drawn_in_epoch: u64,
    /// Items drawn in the current epoch that were bad records.
    bad_in_epoch: u64,
    active: bool,
    /// Count mode: the rank's item count, cached when the file order does not change per epoch.
    len: Option<u64>,
}

impl Source {
    /// The position of this source.
    fn position(&self) -> SourcePosition {
        let (reader, ordinal, copies) = match &self.cursor {
            Cursor::Closed => (Position::default(), 0, 0),
            Cursor::Plain(stream) => (stream.position(), 0, 0),
            Cursor::Counted(c) => (c.reader_position(), c.ordinal, c.copies),
        };
        SourcePosition {
            name: self.def.name().to_string(),
            epoch: self.epoch,
            reader,
            drawn: self.drawn,
            drawn_in_epoch: self.drawn_in_epoch,
            active: self.active,
            ordinal,
            copies,
            bad_in_epoch: self.bad_in_epoch,
        }
    }

    /// Counts one drawn item.
    fn count(&mut self, sample: &Result<RawSample, SampleError>) {
        self.drawn += 1;
        self.drawn_in_epoch += 1;
        if sample.is_err() {
            self.bad_in_epoch += 1;
        }
    }
}

/// A mixture of sources read as one stream; see the module documentation.
pub struct Mixture {
    recipe: Recipe,
    split: ShardSplit,
    mode: MixMode,
    sources: Vec<Source>,
    rng: Rng,
    epoch: u64,
    drawn: u64,
    drawn_at_epoch_start: u64,
    finished: bool,
    /// Stop after this many items drawn in total ([`Mixture::with_limit`]).
    limit: Option<u64>,
}

impl Mixture {
    /// Opens every source of `recipe` for rank `rank` of `world`, from the beginning.
    pub fn open(recipe: &Recipe, rank: usize, world: usize) -> Result<Mixture, DataError> {
        let mut mixture = Mixture::skeleton(recipe, rank, world)?;
        match mixture.mode {
            MixMode::Weighted => {
                for source in &mut mixture.sources {
                    source.cursor = Cursor::Plain(source.def.open(0, Position::default())?);
                }
            }
            MixMode::Counts => mixture.start_count_epoch(0)?,
        }
        Ok(mixture)
    }

    /// Opens `recipe` at a saved position: the mixture yields exactly what the mixture that
    /// produced `position` would have yielded next. Fails when the position belongs to another
    /// recipe (seed or source names differ) or another rank layout.
    pub fn open_at(
        recipe: &Recipe,
        rank: usize,
        world: usize,
        position: &MixturePosition,
    ) -> Result<Mixture, DataError> {
        let mut mixture = Mixture::skeleton(recipe, rank, world)?;
        let mismatch = |what: String| {
            DataError::Config(format!(
                "cannot restore the mixture position: {what} (the position was saved for another \
                 recipe or rank layout)"
            ))
        };
        if position.seed != recipe.seed {
            return Err(mismatch(format!(
                "seed {} differs from the recipe's {}",
                position.seed, recipe.seed
            )));
        }
        if (position.rank, position.world) != (rank, world) {
            return Err(mismatch(format!(
                "it is for rank {} of {}, not {rank} of {world}",
                position.rank, position.world
            )));
        }
        let names: Vec<&str> = position.sources.iter().map(|s| s.name.as_str()).collect();
        let expected: Vec<&str> = mixture.sources.iter().map(|s| s.def.name()).collect();
        if names != expected {
            return Err(mismatch(format!(
                "its sources {names:?} differ from the recipe's {expected:?}"
            )));
        }
        mixture.rng = Rng::from_state(position.rng);
        mixture.epoch = position.epoch;
        mixture.drawn = position.drawn;
        mixture.finished = position.finished;
        mixture.drawn_at_epoch_start = position.drawn
            - position
                .sources
                .iter()
                .map(|s| s.drawn_in_epoch)
                .sum::<u64>();
        let rank = mixture.split.rank;
        let mode = mixture.mode;
        for (source, saved) in mixture.sources.iter_mut().zip(&position.sources) {
            source.epoch = saved.epoch;
            source.drawn = saved.drawn;
            source.drawn_in_epoch = saved.drawn_in_epoch;
            source.bad_in_epoch = saved.bad_in_epoch;
            source.active = saved.active;
            if !saved.active {
                continue;
            }
            let stream = source.def.open(saved.epoch, saved.reader)?;
            source.cursor = match mode {
                MixMode::Weighted => Cursor::Plain(stream),
                MixMode::Counts => {
                    let selection = select_for_epoch(source, saved.epoch, rank)?;
                    Cursor::Counted(Box::new(Counted::new(
                        stream,
                        selection,
                        saved.ordinal,
                        saved.copies,
                    )))
                }
            };
        }
        Ok(mixture)
    }

    /// Reopens this mixture's recipe at `position` (see [`Mixture::open_at`]).
    pub fn restore(&mut self, position: &MixturePosition) -> Result<(), DataError> {
        *self = Mixture::open_at(&self.recipe, self.split.rank, self.split.world, position)?;
        Ok(())
    }

    /// The sources without readers: definitions, weights, targets.
    fn skeleton(recipe: &Recipe, rank: usize, world: usize) -> Result<Mixture, DataError> {
        recipe.validate()?;
        let split = ShardSplit::new(rank, world)?;
        let mode = recipe.mode();
        let mut sources = Vec::with_capacity(recipe.sources.len());
        for (index, spec) in recipe.sources.iter().enumerate() {
            let def = SourceDef::new(recipe, index, split)?;
            let target = spec.samples.map_or(0, |n| {
                n / world as u64 + u64::from((rank as u64) < n % world as u64)
            });
            sources.push(Source {
                def,
                weight: spec.weight.unwrap_or(0.0),
                target,
                on_exhausted: spec.on_exhausted.unwrap_or(recipe.on_exhausted),
                cursor: Cursor::Closed,
                epoch: 0,
                drawn: 0,
                drawn_in_epoch: 0,
                bad_in_epoch: 0,
                active: true,
                len: None,
            });
        }
        Ok(Mixture {
            recipe: recipe.clone(),
            split,
            mode,
            sources,
            rng: Rng::stream(recipe.seed, "mixture", 0, 0),
            epoch: 0,
            drawn: 0,
            drawn_at_epoch_start: 0,
            finished: false,
            limit: None,
        })
    }

    /// Ends the stream once `items` items were drawn in total (counted from the beginning of the
    /// stream, restored positions included), e.g. to inspect the first items of an endless
    /// mixture. The limit is not part of [`Mixture::state`].
    pub fn with_limit(mut self, items: u64) -> Self {
        self.limit = Some(items);
        self
    }

    /// The recipe.
    pub fn recipe(&self) -> &Recipe {
        &self.recipe
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.split.rank
    }

    /// The number of ranks.
    pub fn world(&self) -> usize {
        self.split.world
    }

    /// Weighted or count mode.
    pub fn mode(&self) -> MixMode {
        self.mode
    }

    /// The number of sources.
    pub fn num_sources(&self) -> usize {
        self.sources.len()
    }

    /// The name of source `index` (empty past the last).
    pub fn source_name(&self, index: usize) -> &str {
        self.sources.get(index).map_or("", |s| s.def.name())
    }

    /// Whether source `index` is still part of the mixture.
    pub fn source_active(&self, index: usize) -> bool {
        self.sources.get(index).is_some_and(|s| s.active)
    }

    /// The position of the next item (the mixture's resume state).
    pub fn state(&self) -> MixturePosition {
        MixturePosition {
            seed: self.recipe.seed,
            rank: self.split.rank,
            world: self.split.world,
            rng: self.rng.state(),
            epoch: self.epoch,
            drawn: self.drawn,
            finished: self.finished,
            sources: self.sources.iter().map(Source::position).collect(),
        }
    }

    /// Count mode: opens every source for mixture epoch `epoch` and chooses its items.
    fn start_count_epoch(&mut self, epoch: u64) -> Result<(), DataError> {
        self.epoch = epoch;
        self.drawn_at_epoch_start = self.drawn;
        let rank = self.split.rank;
        for source in &mut self.sources {
            source.epoch = epoch;
            source.drawn_in_epoch = 0;
            source.bad_in_epoch = 0;
            let selection = select_for_epoch(source, epoch, rank)?;
            source.active = selection.len() > 0 && source.target > 0;
            if selection.len() == 0 && source.target > 0 {
                log::warn!(
                    "mixture source {:?} has no items for rank {} of {}; it is left out",
                    source.def.name(),
                    rank,
                    self.split.world
                );
            }
            let stream = source.def.open(epoch, Position::default())?;
            source.cursor = Cursor::Counted(Box::new(Counted::new(stream, selection, 0, 0)));
        }
        Ok(())
    }

    /// Weighted mode: the next item.
    fn next_weighted(&mut self) -> Option<Result<MixItem, DataError>> {
        loop {
            let total: f64 = self
                .sources
                .iter()
                .filter(|s| s.active)
                .map(|s| s.weight)
                .sum();
            if total <= 0.0 {
                self.finished = true;
                return None;
            }
            let mut r = self.rng.unit() * total;
            let mut chosen = None;
            for (i, s) in self.sources.iter().enumerate().filter(|(_, s)| s.active) {
                chosen = Some(i);
                if r < s.weight {
                    break;
                }
                r -= s.weight;
            }
            let i = chosen?;
            match self.pull_weighted(i) {
                Ok(Some(item)) => return Some(Ok(item)),
                Ok(None) if self.finished => return None,
                Ok(None) => continue,
                Err(e) => {
                    self.finished = true;
                    return Some(Err(e));
                }
            }
        }
    }

    /// Weighted mode: the next item of source `i`, restarting it when it runs out and its policy
    /// says so. `None` when the source left the mixture or stopped it.
    fn pull_weighted(&mut self, i: usize) -> Result<Option<MixItem>, DataError> {
        let (rank, world) = (self.split.rank, self.split.world);
        loop {
            let source = &mut self.sources[i];
            if let Some((sample, tags)) = source.cursor.next_item() {
                source.count(&sample);
                self.drawn += 1;
                return Ok(Some(MixItem {
                    source: i,
                    sample,
                    tags,
                }));
            }
            if source.drawn_in_epoch == 0 {
                log::warn!(
                    "mixture source {:?} has no items for rank {rank} of {world}; it is left out",
                    source.def.name()
                );
                source.active = false;
                source.cursor = Cursor::Closed;
                return Ok(None);
            }
            if source.on_exhausted == Exhausted::Restart
                && source.bad_in_epoch == source.drawn_in_epoch
            {
                // Restarting a source that only gives bad records would loop forever.
                log::warn!(
                    "mixture source {:?} gave no good item in epoch {} ({} bad); it is left out \
                     instead of restarting",
                    source.def.name(),
                    source.epoch,
                    source.bad_in_epoch
                );
                source.active = false;
                source.cursor = Cursor::Closed;
                return Ok(None);
            }
            match source.on_exhausted {
                Exhausted::Stop => {
                    log::info!(
                        "mixture source {:?} ran out: the mixture stops",
                        source.def.name()
                    );
                    self.finished = true;
                    return Ok(None);
                }
                Exhausted::Drop => {
                    log::info!(
                        "mixture source {:?} ran out: it leaves the mixture",
                        source.def.name()
                    );
                    source.active = false;
                    source.cursor = Cursor::Closed;
                    return Ok(None);
                }
                Exhausted::Restart => {
                    source.epoch += 1;
                    source.drawn_in_epoch = 0;
                    source.bad_in_epoch = 0;
                    // A small source restarts often: only its first restart is worth an info line.
                    let level = if source.epoch == 1 {
                        log::Level::Info
                    } else {
                        log::Level::Debug
                    };
                    log::log!(
                        level,
                        "mixture source {:?} restarts (epoch {})",
                        source.def.name(),
                        source.epoch
                    );
                    source.cursor =
                        Cursor::Plain(source.def.open(source.epoch, Position::default())?);
                }
            }
        }
    }

    /// Count mode: the next item.
    fn next_counted(&mut self) -> Option<Result<MixItem, DataError>> {
        loop {
            let total: u64 = self
                .sources
                .iter()
                .filter(|s| s.active)
                .map(|s| s.target.saturating_sub(s.drawn_in_epoch))
                .sum();
            if total == 0 {
                let drawn = self.drawn - self.drawn_at_epoch_start;
                let bad: u64 = self.sources.iter().map(|s| s.bad_in_epoch).sum();
                if self.recipe.on_exhausted != Exhausted::Restart || drawn == 0 {
                    self.finished = true;
                    return None;
                }
                if bad == drawn {
                    // Another epoch of the same bad records would loop forever.
                    log::warn!(
                        "mixture epoch {} gave no good item ({bad} bad); the mixture stops \
                         instead of restarting",
                        self.epoch
                    );
                    self.finished = true;
                    return None;
                }
                if let Err(e) = self.start_count_epoch(self.epoch + 1) {
                    self.finished = true;
                    return Some(Err(e));
                }
                log::info!("mixture epoch {} starts", self.epoch);
                continue;
            }
            let mut r = self.rng.below(total);
            let mut chosen = None;
            for (i, s) in self.sources.iter().enumerate().filter(|(_, s)| s.active) {
                let left = s.target.saturating_sub(s.drawn_in_epoch);
                if r < left {
                    chosen = Some(i);
                    break;
                }
                r -= left;
            }
            let i = chosen?;
            let source = &mut self.sources[i];
            match source.cursor.next_item() {
                Some((sample, tags)) => {
                    source.count(&sample);
                    self.drawn += 1;
                    return Some(Ok(MixItem {
                        source: i,
                        sample,
                        tags,
                    }));
                }
                None => {
                    log::warn!(
                        "mixture source {:?} ended before its counted items (did its files \
                         change?); it is left out of this epoch",
                        source.def.name()
                    );
                    source.active = false;
                }
            }
        }
    }
}

impl Iterator for Mixture {
    type Item = Result<MixItem, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished || self.limit.is_some_and(|limit| self.drawn >= limit) {
            return None;
        }
        match self.mode {
            MixMode::Weighted => self.next_weighted(),
            MixMode::Counts => self.next_counted(),
        }
    }
}

/// Count mode: the items of `source` chosen for `epoch` on `rank` (counting the source's items
/// first when needed).
fn select_for_epoch(source: &mut Source, epoch: u64, rank: usize) -> Result<Selection, DataError> {
    let len = match source.len {
        Some(len) => len,
        None => {
            let len = count_items(source.def.open(epoch, Position::default())?);
            if !source.def.spec.shuffle_shards {
                source.len = Some(len);
            }
            len
        }
    };
    let mut rng = source
        .def
        .rng("select", epoch.wrapping_mul(0x1_0000_0001) ^ rank as u64);
    Selection::choose(len, source.target, &mut rng)
}
