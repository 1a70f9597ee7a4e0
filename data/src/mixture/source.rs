//! Opening the reader of one mixture source at a position, and the per-source cursors: plain
//! streams (weighted mode) and streams with a per-item repeat count (count mode).
//!
//! Long because opening every source kind at a position is one match, kept beside its cursors.

use std::path::{Path, PathBuf};

use super::recipe::{MissingImagesSpec, PairsSpec, Recipe, SourceKind, SourceSpec, UrlRuleSpec};
use super::rng::Rng;
use crate::error::{BadKind, DataError, SampleError};
use crate::pipeline::SampleTags;
use crate::readers::interleaved::{
    ImageResolver, InterleavedJsonlReader, InterleavedOptions, InterleavedWdsReader,
    MissingImagePolicy, UrlRule, is_jsonl_name,
};
use crate::readers::json_stream::StreamOptions;
use crate::readers::llava::{ImageRoots, LlavaOptions, LlavaReader, RootRule, RuleKind};
use crate::readers::parquet::{ParquetLayout, ParquetOptions, ParquetReader, is_parquet_name};
use crate::readers::preference::{PairMode, PreferenceOptions, PreferenceReader};
use crate::readers::safety::{SafetyOptions, VlGuardReader};
use crate::readers::shards::{ShardSplit, expand_paths, expand_shards};
use crate::readers::stream::{Position, ReadScope, SampleStream};
use crate::readers::webdataset::{CaptionOptions, CaptionSource, WdsReader};
use crate::sample::RawSample;

/// One item of a source: a sample (or why its record was skipped) and its tags.
pub(crate) type Item = (Result<RawSample, SampleError>, SampleTags);

/// A source reader with an item-exact resume position.
pub(crate) trait ItemStream: Send {
    /// The next item, `None` at the end of the source.
    fn next_item(&mut self) -> Option<Item>;
    /// Where the next item is: opening the source at this position yields exactly the items this
    /// stream has not yielded yet.
    fn position(&self) -> Position;
}

/// The readers of `crate::readers` that implement [`SampleStream`] themselves.
struct Streamed<R>(R);

impl<R: SampleStream> ItemStream for Streamed<R> {
    fn next_item(&mut self) -> Option<Item> {
        self.0.next().map(|item| (item, SampleTags::default()))
    }

    fn position(&self) -> Position {
        self.0.position()
    }
}

/// A source's static description: its spec, options turned into reader options, and the
/// expanded file list.
pub(crate) struct SourceDef {
    pub(crate) spec: SourceSpec,
    /// Index of the source in the recipe (for seeds).
    index: usize,
    seed: u64,
    files: Vec<PathBuf>,
    split: ShardSplit,
}

impl SourceDef {
    /// Expands the source's patterns and checks its options.
    pub(crate) fn new(
        recipe: &Recipe,
        index: usize,
        split: ShardSplit,
    ) -> Result<SourceDef, DataError> {
        let spec = recipe.sources[index].clone();
        let name = spec.name.clone();
        let context = |e: DataError| DataError::Config(format!("source {name:?}: {e}"));
        let files = match spec.kind {
            SourceKind::Webdataset | SourceKind::WebdatasetInterleaved => {
                expand_shards(&spec.paths)
            }
            SourceKind::Parquet => expand_paths(&spec.paths, is_parquet_name),
            SourceKind::JsonlInterleaved
            | SourceKind::Llava
            | SourceKind::Dpo
            | SourceKind::Vlguard => expand_paths(&spec.paths, is_jsonl_name),
        }
        .map_err(context)?;
        let def = SourceDef {
            spec,
            index,
            seed: recipe.seed,
            files,
            split,
        };
        // Build the options once so that mistakes surface when the mixture is opened.
        def.check_options().map_err(context)?;
        Ok(def)
    }

    /// The source's name.
    pub(crate) fn name(&self) -> &str {
        &self.spec.name
    }

    /// The file order of `epoch`: as expanded, or shuffled with the recipe seed (the same on every
    /// rank, so that ranks still split the files disjointly).
    fn files_for_epoch(&self, epoch: u64) -> Vec<PathBuf> {
        let mut files = self.files.clone();
        if self.spec.shuffle_shards {
            let mut rng = Rng::stream(self.seed, "shards", self.index as u64, epoch);
            rng.shuffle(&mut files);
        }
        files
    }

    /// A seed for per-epoch choices of this source (count-mode selection), the same on every rank
    /// unless `rank` is mixed in by the caller.
    pub(crate) fn rng(&self, purpose: &str, epoch: u64) -> Rng {
        Rng::stream(self.seed, purpose, self.index as u64, epoch)
    }

    /// Opens the source's reader for `epoch` at `start`.
    pub(crate) fn open(
        &self,
        epoch: u64,
        start: Position,
    ) -> Result<Box<dyn ItemStream>, DataError> {
        let files = self.files_for_epoch(epoch);
        let scope = ReadScope {
            split: self.split,
            start,
        };
        let o = &self.spec.options;
        Ok(match self.spec.kind {
            SourceKind::Webdataset => Box::new(Streamed(WdsReader::from_shards(
                files,
                scope,
                self.caption_options(),
            ))),
            SourceKind::WebdatasetInterleaved => {
                Box::new(Streamed(InterleavedWdsReader::from_shards(
                    files,
                    scope,
                    self.resolver()?,
                    self.interleaved_options(),
                )))
            }
            SourceKind::JsonlInterleaved => Box::new(Streamed(InterleavedJsonlReader::from_files(
                files,
                scope,
                self.resolver()?,
                self.interleaved_options(),
            ))),
            SourceKind::Parquet => Box::new(Streamed(ParquetReader::from_files(
                files,
                scope,
                self.parquet_options()?,
            )?)),
            SourceKind::Llava => Box::new(JsonFiles::new(
                files,
                self.split,
                start,
                JsonKind::Llava(LlavaOptions {
                    roots: self.roots(),
                    max_images: o.max_images.unwrap_or(LlavaOptions::default().max_images),
                    check_images: o.check_images,
                }),
            )),
            SourceKind::Dpo => Box::new(JsonFiles::new(
                files,
                self.split,
                start,
                JsonKind::Preference(PreferenceOptions {
                    roots: self.roots(),
                    mode: match o.pairs {
                        PairsSpec::All => PairMode::AllPairs,
                        PairsSpec::Binarized => PairMode::Binarized { seed: self.seed },
                    },
                    check_images: o.check_images,
                }),
            )),
            SourceKind::Vlguard => Box::new(JsonFiles::new(
                files,
                self.split,
                start,
                JsonKind::Safety(SafetyOptions {
                    roots: self.roots(),
                    check_images: o.check_images,
                }),
            )),
        })
    }

    /// Validates the kind-specific options.
    fn check_options(&self) -> Result<(), DataError> {
        match self.spec.kind {
            SourceKind::Parquet => self.parquet_options().map(drop),
            SourceKind::WebdatasetInterleaved | SourceKind::JsonlInterleaved => {
                self.resolver().map(drop)
            }
            _ => Ok(()),
        }
    }

    /// Image roots (rules, then the image root) of JSON-record sources.
    fn roots(&self) -> ImageRoots {
        let rules = self
            .spec
            .root_rules
            .iter()
            .map(|rule| match (&rule.prefix, &rule.substring) {
                (Some(prefix), _) => RootRule {
                    kind: RuleKind::Prefix,
                    pattern: prefix.clone(),
                    replacement: rule.root.clone().unwrap_or_default(),
                },
                (None, substring) => RootRule {
                    kind: RuleKind::Substring,
                    pattern: substring.clone().unwrap_or_default(),
                    replacement: rule.replace.clone().unwrap_or_default(),
                },
            })
            .collect();
        ImageRoots {
            rules,
            default_root: self.spec.image_root.as_ref().map(PathBuf::from),
            allow_outside: self.spec.allow_outside_root,
        }
    }

    /// The URL/path resolver of interleaved and Parquet sources.
    fn resolver(&self) -> Result<ImageResolver, DataError> {
        let o = &self.spec.options;
        let urls = match (&o.url_manifest, o.url_rule) {
            (Some(manifest), _) => ImageResolver::load_manifest(Path::new(manifest))?,
            (None, UrlRuleSpec::Unavailable) => UrlRule::Unavailable,
            (None, UrlRuleSpec::Basename) => UrlRule::Basename,
            (None, UrlRuleSpec::Sha1) => UrlRule::Sha1 {
                extensions: if o.url_extensions.is_empty() {
                    vec!["jpg".into(), "png".into(), String::new()]
                } else {
                    o.url_extensions.clone()
                },
            },
        };
        Ok(
            ImageResolver::new(self.spec.image_root.as_ref().map(PathBuf::from), urls)
                .allowing_outside(self.spec.allow_outside_root),
        )
    }

    /// Interleaved-document options.
    fn interleaved_options(&self) -> InterleavedOptions {
        let o = &self.spec.options;
        let defaults = InterleavedOptions::default();
        InterleavedOptions {
            max_images: o.max_images.unwrap_or(defaults.max_images),
            min_images: o.min_images.unwrap_or(defaults.min_images),
            on_missing: match o.missing_images {
                MissingImagesSpec::DropImage => MissingImagePolicy::DropImage,
                MissingImagesSpec::DropDocument => MissingImagePolicy::DropDocument,
            },
            report_dropped_images: o.report_dropped_images,
            texts_field: o.texts_field.clone().unwrap_or(defaults.texts_field),
            images_field: o.images_field.clone().unwrap_or(defaults.images_field),
        }
    }

    /// WebDataset caption options.
    fn caption_options(&self) -> CaptionOptions {
        let o = &self.spec.options;
        let mut options = CaptionOptions::default();
        if !o.caption_sources.is_empty() {
            options.sources = o
                .caption_sources
                .iter()
                .map(|s| match s.split_once('.') {
                    Some((member, field)) => CaptionSource::JsonField {
                        member: member.to_string(),
                        field: field.to_string(),
                    },
                    None => CaptionSource::Member(s.clone()),
                })
                .collect();
        }
        if !o.image_extensions.is_empty() {
            options.image_extensions = o.image_extensions.clone();
        }
        options
    }

    /// Parquet options from the layout name and column overrides.
    fn parquet_options(&self) -> Result<ParquetOptions, DataError> {
        let o = &self.spec.options;
        let layout_name = o.layout.as_deref().unwrap_or_default();
        let column = |role: &str, default: &str| -> String {
            o.columns
                .get(role)
                .cloned()
                .unwrap_or_else(|| default.to_string())
        };
        let known_roles = [
            "caption",
            "image",
            "conversations",
            "question",
            "chosen",
            "rejected",
        ];
        if let Some(role) = o
            .columns
            .keys()
            .find(|k| !known_roles.contains(&k.as_str()))
        {
            return Err(DataError::Config(format!(
                "unknown parquet column role {role:?} (expected one of {known_roles:?})"
            )));
        }
        let base = match layout_name {
            "blip3_kale" | "kale" => ParquetLayout::blip3_kale(),
            "llava_next" => ParquetLayout::llava_next(),
            "obelics" | "mint1t" | "interleaved" => ParquetLayout::obelics(),
            "rlaif_v" => ParquetLayout::rlaif_v(),
            "caption" => ParquetLayout::Caption {
                caption: "caption".into(),
                image: "image".into(),
            },
            "conversation" => ParquetLayout::Conversation {
                conversations: "conversations".into(),
                image: "image".into(),
            },
            "preference" => ParquetLayout::Preference {
                image: "image".into(),
                question: "question".into(),
                chosen: "chosen".into(),
                rejected: "rejected".into(),
            },
            other => {
                return Err(DataError::Config(format!(
                    "unknown parquet layout {other:?} (expected blip3_kale, llava_next, obelics, \
                     rlaif_v, caption, conversation, interleaved or preference)"
                )));
            }
        };
        let layout = match base {
            ParquetLayout::Caption { caption, image } => ParquetLayout::Caption {
                caption: column("caption", &caption),
                image: column("image", &image),
            },
            ParquetLayout::Conversation {
                conversations,
                image,
            } => ParquetLayout::Conversation {
                conversations: column("conversations", &conversations),
                image: column("image", &image),
            },
            ParquetLayout::Interleaved => ParquetLayout::Interleaved,
            ParquetLayout::Preference {
                image,
                question,
                chosen,
                rejected,
            } => ParquetLayout::Preference {
                image: column("image", &image),
                question: column("question", &question),
                chosen: column("chosen", &chosen),
                rejected: column("rejected", &rejected),
            },
        };
        let mut options = ParquetOptions::new(layout);
        options.id_column = o.id_column.clone();
        if let Some(batch_size) = o.batch_size {
            options.batch_size = batch_size;
        }
        options.resolver = self.resolver()?;
        options.document = self.interleaved_options();
        Ok(options)
    }
}

// ---------------------------------------------------------------------------------------------
// JSON record files
// ---------------------------------------------------------------------------------------------

/// Which JSON-record reader a [`JsonFiles`] stream uses.
#[derive(Clone)]
enum JsonKind {
    Llava(LlavaOptions),
    Preference(PreferenceOptions),
    Safety(SafetyOptions),
}

/// An open JSON-record reader; every item carries the index of its record.
enum JsonReader {
    Llava(LlavaReader),
    Preference(PreferenceReader),
    Safety(VlGuardReader),
}

impl JsonReader {
    fn open(kind: &JsonKind, path: &Path, options: StreamOptions) -> Result<Self, DataError> {
        Ok(match kind {
            JsonKind::Llava(o) => JsonReader::Llava(LlavaReader::open(path, o.clone(), options)?),
            JsonKind::Preference(o) => {
                JsonReader::Preference(PreferenceReader::open(path, o.clone(), options)?)
            }
            JsonKind::Safety(o) => {
                JsonReader::Safety(VlGuardReader::open(path, o.clone(), options)?)
            }
        })
    }

    fn next(&mut self) -> Option<(u64, Item)> {
        match self {
            JsonReader::Llava(r) => r
                .next()
                .map(|(index, item)| (index, (item, SampleTags::default()))),
            JsonReader::Preference(r) => r
                .next()
                .map(|(index, item)| (index, (item, SampleTags::default()))),
            JsonReader::Safety(r) => r.next().map(|(index, item)| {
                let item = item.map(|s| {
                    let tags = SampleTags {
                        image_safe: Some(s.image_safe),
                        prompt_safe: Some(s.prompt_safe),
                        category: s.category,
                        extra: s
                            .subcategory
                            .map(|sub| ("subcategory".to_string(), sub))
                            .into_iter()
                            .collect(),
                    };
                    (s.sample, tags)
                });
                match item {
                    Ok((sample, tags)) => (index, (Ok(sample), tags)),
                    Err(e) => (index, (Err(e), SampleTags::default())),
                }
            }),
        }
    }
}

/// JSON-record files (LLaVA, DPO, VLGuard) read one after the other. Every file is sharded by
/// record (`index % world == rank`), so one file is enough for any number of ranks. A position is
/// `(file, record, part)`: record `record` of file `file` is the current one and `part` of its
/// items were yielded (a VLFeedback row or a VLGuard record gives several items).
struct JsonFiles {
    files: Vec<PathBuf>,
    split: ShardSplit,
    kind: JsonKind,
    reader: Option<JsonReader>,
    file: usize,
    record: u64,
    part: u32,
    /// Resuming: items of record `record` to skip in the first opened file.
    skip_parts: u32,
}

impl JsonFiles {
    fn new(files: Vec<PathBuf>, split: ShardSplit, start: Position, kind: JsonKind) -> Self {
        JsonFiles {
            files,
            split,
            kind,
            reader: None,
            file: start.shard,
            record: start.sample,
            part: 0,
            skip_parts: start.part,
        }
    }

    /// Opens the current file at the current record. An unreadable file gives an error item and
    /// the stream moves on to the next one.
    fn open_current(&mut self) -> Result<(), SampleError> {
        let path = &self.files[self.file];
        let options = StreamOptions {
            start: self.record,
            ..StreamOptions::sharded(self.split.rank, self.split.world.max(1))
        };
        match JsonReader::open(&self.kind, path, options) {
            Ok(reader) => {
                self.reader = Some(reader);
                Ok(())
            }
            Err(e) => {
                let error = SampleError::new(
                    path.display(),
                    "",
                    BadKind::TruncatedShard,
                    format!("cannot open: {e}"),
                );
                self.next_file();
                Err(error)
            }
        }
    }

    fn next_file(&mut self) {
        self.reader = None;
        self.file += 1;
        self.record = 0;
        self.part = 0;
        self.skip_parts = 0;
    }
}

impl ItemStream for JsonFiles {
    fn next_item(&mut self) -> Option<Item> {
        loop {
            if self.file >= self.files.len() {
                return None;
            }
            if self.reader.is_none()
                && let Err(e) = self.open_current()
            {
                return Some((Err(e), SampleTags::default()));
            }
            let next = self.reader.as_mut().and_then(JsonReader::next);
            let Some((index, item)) = next else {
                self.next_file();
                continue;
            };
            if index == self.record {
                self.part += 1;
            } else {
                self.record = index;
                self.part = 1;
                self.skip_parts = 0;
            }
            if self.part <= self.skip_parts {
                continue;
            }
            return Some(item);
        }
    }

    fn position(&self) -> Position {
        Position {
            shard: self.file,
            sample: self.record,
            part: self.part.max(self.skip_parts),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Cursors
// ---------------------------------------------------------------------------------------------

/// Count mode: which items of a source's epoch are emitted, and how often.
pub(crate) struct Selection {
    /// Copies of item `i` (in the rank's read order) to emit.
    counts: Vec<u32>,
}

impl Selection {
    /// Chooses `target` items among `len`: without replacement (a seeded random subset, each item
    /// at most once) when `target <= len`, else with replacement (`target` uniform draws).
    pub(crate) fn choose(len: u64, target: u64, rng: &mut Rng) -> Result<Selection, DataError> {
        let len_usize = usize::try_from(len)
            .map_err(|_| DataError::Config(format!("source of {len} items is too large")))?;
        let mut counts = vec![0u32; len_usize];
        if len == 0 {
            return Ok(Selection { counts });
        }
        if target <= len {
            // Partial Fisher-Yates over the indices: the first `target` are the subset.
            let mut indices: Vec<u64> = (0..len).collect();
            for i in 0..target as usize {
                let j = i + rng.below((len_usize - i) as u64) as usize;
                indices.swap(i, j);
                counts[indices[i] as usize] = 1;
            }
        } else {
            for _ in 0..target {
                let i = rng.below(len) as usize;
                counts[i] = counts[i].saturating_add(1);
            }
        }
        Ok(Selection { counts })
    }

    /// The number of items the source must have.
    pub(crate) fn len(&self) -> u64 {
        self.counts.len() as u64
    }
}

/// A count-mode cursor over a source stream: item `ordinal` is emitted `counts[ordinal]` times in
/// a row (0 = skipped).
pub(crate) struct Counted {
    pub(crate) stream: Box<dyn ItemStream>,
    pub(crate) selection: Selection,
    /// The index of the current item in the rank's read order.
    pub(crate) ordinal: u64,
    /// Copies of the current item already emitted.
    pub(crate) copies: u32,
    /// The current item (read, with copies left to emit) and the stream position before it.
    current: Option<(Item, Position)>,
}

impl Counted {
    /// A cursor over `stream`, which stands before item `ordinal`, `copies` of which were emitted.
    pub(crate) fn new(
        stream: Box<dyn ItemStream>,
        selection: Selection,
        ordinal: u64,
        copies: u32,
    ) -> Self {
        Counted {
            stream,
            selection,
            ordinal,
            copies,
            current: None,
        }
    }

    /// The next emitted item; `None` when every selected item was emitted (or the stream ended
    /// early, which means the files changed since they were counted).
    pub(crate) fn next_item(&mut self) -> Option<Item> {
        loop {
            let count = *self.selection.counts.get(self.ordinal as usize)?;
            if self.copies >= count {
                self.advance();
                continue;
            }
            if self.current.is_none() {
                let before = self.stream.position();
                let item = self.stream.next_item()?;
                self.current = Some((item, before));
            }
            let (item, _) = self.current.as_ref()?;
            let out = item.clone();
            self.copies += 1;
            if self.copies >= count {
                self.advance();
            }
            return Some(out);
        }
    }

    /// Moves to the next item, reading past the current one if it was not read.
    fn advance(&mut self) {
        if self.current.take().is_none() {
            // An item selected zero times (or fully emitted before a restore) still has to be
            // read past.
            let _ = self.stream.next_item();
        }
        self.ordinal += 1;
        self.copies = 0;
    }

    /// The stream position before the current item.
    pub(crate) fn reader_position(&self) -> Position {
        match &self.current {
            Some((_, before)) => *before,
            None => self.stream.position(),
        }
    }
}

/// Counts the items of a freshly opened stream.
pub(crate) fn count_items(mut stream: Box<dyn ItemStream>) -> u64 {
    let mut n = 0u64;
    while stream.next_item().is_some() {
        n += 1;
    }
    n
}
