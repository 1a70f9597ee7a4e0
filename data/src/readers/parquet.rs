//! Streaming Parquet readers with a column mapping: captions (BLIP3-KALE), conversations
//! (LLaVA-NeXT-Data), interleaved documents (OBELICS, MINT-1T HTML) and preference pairs
//! (RLAIF-V).
//!
//! Files are read one row group at a time, in record batches of `batch_size` rows, and only the
//! mapped columns are decoded (projection): memory is bounded by one batch, never the whole file.
//!
//! Image columns may hold:
//! - encoded bytes (`binary`, `large_binary`, `binary_view`, `fixed_size_binary`);
//! - a struct `{bytes, path}` (the Hugging Face `Image` feature): the bytes when present, else the
//!   path;
//! - a string: a path relative to the image root, or a URL mapped by the [`ImageResolver`];
//! - for conversations and interleaved documents, a list of any of the above.
//!
//! Order, sharding and resumption: files are read in the order of the expanded patterns; the unit
//! of sharding is the row group, row group `g` of file `f` going to rank `(f + g) % world` (disjoint,
//! union = everything, balanced even for a single file). A [`Position`] is `(file index, rows of
//! that file already consumed)`; a reader opened at a saved position yields exactly the rows that
//! were still to come.
//!
//! Errors: a file whose footer cannot be read fails [`ParquetReader::open`] with a [`DataError`]
//! when it is the first file of the rank, and yields a [`SampleError`] (kind
//! [`BadKind::TruncatedShard`], naming the file) when it comes later; a batch that fails to decode
//! yields such an error and the rest of its row group is skipped; a bad row (null caption, unknown
//! role, image/marker mismatch...) yields a [`SampleError`] naming the file and the row.
//!
//! Long because one format's reader, its row layouts and Arrow cell decoding read best together.

use std::collections::VecDeque;
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use ::parquet::arrow::ProjectionMask;
use ::parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReader,
    ParquetRecordBatchReaderBuilder,
};
use arrow_array::cast::AsArray;
use arrow_array::types::{
    Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow_array::{Array, ArrayRef, RecordBatch, StructArray};
use arrow_schema::DataType;

use super::interleaved::{
    IMAGE_TOKEN, ImageResolver, InterleavedOptions, PendingItems, Piece, Unavailable, assemble,
    strip_markers,
};
use super::shards::{ShardSplit, expand_paths};
use super::stream::{Position, ReadScope, SampleStream};
use crate::error::{BadKind, DataError, SampleError};
use crate::sample::{ImageSource, Origin, RawSample, Role, Turn};

/// What a Parquet file holds, and which columns to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParquetLayout {
    /// Image-caption pairs -> [`RawSample::Caption`].
    Caption {
        /// The caption column (string).
        caption: String,
        /// The image column.
        image: String,
    },
    /// Conversations -> [`RawSample::Conversation`]; the image column may be null (text-only row)
    /// or a list (multi-image).
    Conversation {
        /// A list of structs `{from, value}` (LLaVA) or `{role, content}`.
        conversations: String,
        /// The image column.
        image: String,
    },
    /// Interleaved documents -> [`RawSample::Interleaved`]; the list columns are named by
    /// [`InterleavedOptions::texts_field`] and [`InterleavedOptions::images_field`].
    Interleaved,
    /// Preference pairs -> [`RawSample::Preference`] with a one-turn prompt.
    Preference {
        /// The image column.
        image: String,
        /// The question column (string).
        question: String,
        /// The preferred answer column (string).
        chosen: String,
        /// The dispreferred answer column (string).
        rejected: String,
    },
}

impl ParquetLayout {
    /// BLIP3-KALE: `caption` plus an image column. KALE ships URLs only (Datacomp-1B images), and
    /// its URL column name is not documented: `url` is assumed; images come through the resolver.
    pub fn blip3_kale() -> Self {
        ParquetLayout::Caption {
            caption: "caption".into(),
            image: "url".into(),
        }
    }

    /// LLaVA-NeXT-Data: `conversations` (list of `{from, value}`) and `image` (`{bytes, path}`).
    pub fn llava_next() -> Self {
        ParquetLayout::Conversation {
            conversations: "conversations".into(),
            image: "image".into(),
        }
    }

    /// OBELICS and MINT-1T HTML: `texts` / `images` lists (set the names in the options).
    pub fn obelics() -> Self {
        ParquetLayout::Interleaved
    }

    /// RLAIF-V: `image` (`{bytes, path}`), `question`, `chosen`, `rejected`.
    pub fn rlaif_v() -> Self {
        ParquetLayout::Preference {
            image: "image".into(),
            question: "question".into(),
            chosen: "chosen".into(),
            rejected: "rejected".into(),
        }
    }
}

/// Options of [`ParquetReader`].
#[derive(Debug, Clone)]
pub struct ParquetOptions {
    /// The column mapping.
    pub layout: ParquetLayout,
    /// A column holding the sample id (string or integer) used as the origin key; rows without
    /// one are keyed `row N` (0-based row index in the file).
    pub id_column: Option<String>,
    /// Rows per record batch. Default 256.
    pub batch_size: usize,
    /// Image lookup for path and URL cells.
    pub resolver: ImageResolver,
    /// Interleaved documents: rendering, image limits, missing-image policy, column names.
    pub document: InterleavedOptions,
}

impl ParquetOptions {
    /// Options for `layout` with defaults (no id column, batches of 256, no image root).
    pub fn new(layout: ParquetLayout) -> Self {
        ParquetOptions {
            layout,
            id_column: None,
            batch_size: 256,
            resolver: ImageResolver::default(),
            document: InterleavedOptions::default(),
        }
    }

    /// The columns this layout reads.
    fn columns(&self) -> Vec<&str> {
        let mut columns: Vec<&str> = match &self.layout {
            ParquetLayout::Caption { caption, image } => vec![caption, image],
            ParquetLayout::Conversation {
                conversations,
                image,
            } => vec![conversations, image],
            ParquetLayout::Interleaved => {
                vec![&self.document.texts_field, &self.document.images_field]
            }
            ParquetLayout::Preference {
                image,
                question,
                chosen,
                rejected,
            } => {
                vec![image, question, chosen, rejected]
            }
        };
        if let Some(id) = &self.id_column {
            columns.push(id);
        }
        columns
    }
}

/// Counters that show how a [`ParquetReader`] has read its files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ParquetStats {
    /// Files whose footer was read.
    pub files_opened: u64,
    /// Row groups whose reading started.
    pub row_groups_opened: u64,
    /// Record batches decoded.
    pub batches_read: u64,
}

/// Whether a file name is a Parquet file.
pub fn is_parquet_name(name: &str) -> bool {
    name.to_ascii_lowercase().ends_with(".parquet")
}

/// The open file: its metadata, projection, and the row groups this rank still has to read.
struct OpenFile {
    index: usize,
    path: PathBuf,
    file: File,
    metadata: ArrowReaderMetadata,
    projection: ProjectionMask,
    /// Owned row groups still to read, with their first row and row count, in order.
    row_groups: VecDeque<(usize, u64, u64)>,
    /// Rows to skip at the start of the first row group (resumption).
    skip_rows: u64,
}

/// The record batches of the current row group.
struct OpenRowGroup {
    reader: ParquetRecordBatchReader,
    /// Index of the row group in the file.
    group: usize,
    /// File row index of the next row to come out of `reader`.
    next_row: u64,
    /// File row index just past the row group.
    end_row: u64,
}

/// Streams samples from Parquet files with a column mapping.
pub struct ParquetReader {
    files: Vec<PathBuf>,
    split: ShardSplit,
    options: ParquetOptions,
    next_file: usize,
    skip_in_next: u64,
    file: Option<OpenFile>,
    group: Option<OpenRowGroup>,
    batch: Option<(RecordBatch, usize)>,
    pending: PendingItems,
    position: Position,
    stats: ParquetStats,
}

impl ParquetReader {
    /// Expands `patterns` (braces, wildcards, directories of `.parquet` files) and opens a reader.
    /// The rank's first file is opened at once: a missing or unreadable file, or one without the
    /// mapped columns, is a [`DataError`] naming it.
    pub fn open<S: AsRef<str>>(
        patterns: &[S],
        scope: ReadScope,
        options: ParquetOptions,
    ) -> Result<Self, DataError> {
        Self::from_files(expand_paths(patterns, is_parquet_name)?, scope, options)
    }

    /// A reader over an explicit global file list (see [`ParquetReader::open`]).
    pub fn from_files(
        files: Vec<PathBuf>,
        scope: ReadScope,
        options: ParquetOptions,
    ) -> Result<Self, DataError> {
        if options.batch_size == 0 {
            return Err(DataError::Config(
                "parquet batch_size must be at least 1".into(),
            ));
        }
        let start = scope.start;
        let position = Position::new(start.shard, start.sample);
        let mut reader = ParquetReader {
            files,
            split: scope.split,
            options,
            next_file: start.shard,
            skip_in_next: start.sample,
            file: None,
            group: None,
            batch: None,
            pending: PendingItems::resuming(start),
            position,
            stats: ParquetStats::default(),
        };
        if reader.next_file < reader.files.len() {
            let index = reader.next_file;
            let file = reader.open_file(index)?;
            reader.next_file = index + 1;
            reader.position = Position::new(index, file.skip_rows);
            reader.file = Some(file);
        }
        Ok(reader)
    }

    /// The global file list.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Reading counters (files, row groups, batches).
    pub fn stats(&self) -> ParquetStats {
        self.stats
    }

    /// Opens file `index`: reads its footer, checks the columns and lists the owned row groups
    /// from the pending resume offset on.
    fn open_file(&mut self, index: usize) -> Result<OpenFile, DataError> {
        let path = self.files[index].clone();
        let file = File::open(&path).map_err(|e| DataError::io(&path, e))?;
        let metadata =
            ArrowReaderMetadata::load(&file, ArrowReaderOptions::new()).map_err(|e| {
                DataError::format(path.display(), format!("not a readable parquet file: {e}"))
            })?;
        self.stats.files_opened += 1;
        let schema = metadata.parquet_schema();
        let roots = schema.root_schema().get_fields();
        let mut indices = Vec::new();
        for column in self.options.columns() {
            match roots.iter().position(|field| field.name() == column) {
                Some(i) => indices.push(i),
                None => {
                    let names: Vec<&str> = roots.iter().map(|f| f.name()).collect();
                    let msg = format!("no column {column:?} (columns: {})", names.join(", "));
                    return Err(DataError::format(path.display(), msg));
                }
            }
        }
        let projection = ProjectionMask::roots(schema, indices);
        let skip = std::mem::take(&mut self.skip_in_next);
        let mut row_groups = VecDeque::new();
        let mut first_row = 0u64;
        for (group, meta) in metadata.metadata().row_groups().iter().enumerate() {
            let rows = meta.num_rows().max(0) as u64;
            let end = first_row + rows;
            if self.split.owns(index + group) && end > skip {
                row_groups.push_back((group, first_row, rows));
            }
            first_row = end;
        }
        Ok(OpenFile {
            index,
            path,
            file,
            metadata,
            projection,
            row_groups,
            skip_rows: skip,
        })
    }

    /// Starts the next owned row group of the current file; `None` when the file is done.
    fn open_row_group(&mut self) -> Option<Result<(), SampleError>> {
        let file = self.file.as_mut()?;
        let (group, first_row, rows) = file.row_groups.pop_front()?;
        let skip = file.skip_rows.saturating_sub(first_row).min(rows);
        file.skip_rows = 0;
        let (index, end_row) = (file.index, first_row + rows);
        let built = file
            .file
            .try_clone()
            .map_err(|e| format!("cannot reopen: {e}"))
            .and_then(|input| {
                ParquetRecordBatchReaderBuilder::new_with_metadata(input, file.metadata.clone())
                    .with_row_groups(vec![group])
                    .with_projection(file.projection.clone())
                    .with_batch_size(self.options.batch_size)
                    .with_offset(skip as usize)
                    .build()
                    .map_err(|e| format!("cannot read: {e}"))
            });
        self.stats.row_groups_opened += 1;
        match built {
            Ok(reader) => {
                self.position = Position::new(index, first_row + skip);
                self.group = Some(OpenRowGroup {
                    reader,
                    group,
                    next_row: first_row + skip,
                    end_row,
                });
                Some(Ok(()))
            }
            Err(msg) => Some(Err(self.file_error(group, end_row, msg))),
        }
    }

    /// An error about row group `group` of the current file; reading resumes after `end_row`.
    fn file_error(&mut self, group: usize, end_row: u64, msg: String) -> SampleError {
        let (index, path) = match &self.file {
            Some(file) => (file.index, file.path.display().to_string()),
            None => (0, String::new()),
        };
        self.group = None;
        self.batch = None;
        self.position = Position::new(index, end_row);
        SampleError::new(
            path,
            format!("row group {group}"),
            BadKind::TruncatedShard,
            msg,
        )
    }

    /// Advances to the next batch (opening row groups and files as needed); `None` at the end.
    fn next_batch(&mut self) -> Option<Result<(), SampleError>> {
        loop {
            if let Some(group) = self.group.as_mut() {
                match group.reader.next() {
                    Some(Ok(batch)) => {
                        self.stats.batches_read += 1;
                        self.batch = Some((batch, 0));
                        return Some(Ok(()));
                    }
                    Some(Err(e)) => {
                        let (number, end) = (group.group, group.end_row);
                        let msg = format!("cannot decode a batch: {e}");
                        return Some(Err(self.file_error(number, end, msg)));
                    }
                    None => self.group = None,
                }
            }
            if self.file.is_some() {
                match self.open_row_group() {
                    Some(Ok(())) => continue,
                    Some(Err(e)) => return Some(Err(e)),
                    None => self.file = None,
                }
            }
            let index = self.next_file;
            if index >= self.files.len() {
                return None;
            }
            self.next_file = index + 1;
            match self.open_file(index) {
                Ok(file) => {
                    self.position = Position::new(index, file.skip_rows);
                    self.file = Some(file);
                }
                Err(e) => {
                    self.position = Position::new(index + 1, 0);
                    let path = self.files[index].display().to_string();
                    return Some(Err(SampleError::new(
                        path,
                        "",
                        BadKind::TruncatedShard,
                        e.to_string(),
                    )));
                }
            }
        }
    }

    /// The items of the next row of the current batch, if any.
    fn next_row_items(&mut self) -> Option<(Position, Vec<Result<RawSample, SampleError>>)> {
        let (batch, row) = self.batch.as_mut()?;
        if *row >= batch.num_rows() {
            self.batch = None;
            return None;
        }
        let this_row = *row;
        *row += 1;
        let group = self.group.as_mut()?;
        let file_row = group.next_row;
        group.next_row += 1;
        let file = self.file.as_ref()?;
        let path = file.path.display().to_string();
        let record = Position::new(file.index, file_row);
        self.position = Position::new(file.index, file_row + 1);
        let batch = &self.batch.as_ref()?.0;
        Some((
            record,
            row_items(batch, this_row, &path, file_row, &self.options),
        ))
    }
}

impl Iterator for ParquetReader {
    type Item = Result<RawSample, SampleError>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.pending.is_empty() {
            match self.next_row_items() {
                Some((record, items)) => self.pending.fill(record, items),
                None => match self.next_batch()? {
                    Ok(()) => {}
                    Err(e) => return Some(Err(e)),
                },
            }
        }
        self.pending.pop()
    }
}

impl SampleStream for ParquetReader {
    fn position(&self) -> Position {
        self.pending.position(self.position)
    }
}

// ---------------------------------------------------------------------------------------------
// Rows
// ---------------------------------------------------------------------------------------------

/// One row as samples or errors.
fn row_items(
    batch: &RecordBatch,
    row: usize,
    path: &str,
    file_row: u64,
    options: &ParquetOptions,
) -> Vec<Result<RawSample, SampleError>> {
    let mut key = format!("row {file_row}");
    if let Some(id_column) = &options.id_column
        && let Some(column) = batch.column_by_name(id_column)
        && let Ok(Some(id)) = scalar_text(column.as_ref(), row)
    {
        key = id;
    }
    let origin = Origin {
        file: path.to_string(),
        key,
    };
    let error = |kind: BadKind, msg: String| SampleError::new(&origin.file, &origin.key, kind, msg);
    let result = match &options.layout {
        ParquetLayout::Caption { caption, image } => {
            caption_row(batch, row, &origin, caption, image, &options.resolver)
        }
        ParquetLayout::Conversation {
            conversations,
            image,
        } => conversation_row(batch, row, &origin, conversations, image, &options.resolver),
        ParquetLayout::Preference {
            image,
            question,
            chosen,
            rejected,
        } => preference_row(
            batch,
            row,
            &origin,
            [image, question, chosen, rejected],
            &options.resolver,
        ),
        ParquetLayout::Interleaved => {
            return match interleaved_pieces(batch, row, &origin, options) {
                Ok(pieces) => assemble(origin, pieces, &options.document),
                Err((kind, msg)) => vec![Err(error(kind, msg))],
            };
        }
    };
    vec![result.map_err(|(kind, msg)| error(kind, msg))]
}

/// A row-level failure: its kind and message.
type RowError = (BadKind, String);

/// A column of the batch (projection guarantees it exists).
fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef, RowError> {
    batch.column_by_name(name).ok_or_else(|| {
        (
            BadKind::MalformedRecord,
            format!("column {name:?} missing from batch"),
        )
    })
}

/// A required non-empty string cell.
fn required_text(batch: &RecordBatch, row: usize, name: &str) -> Result<String, RowError> {
    match scalar_text(column(batch, name)?.as_ref(), row) {
        Ok(Some(text)) if !text.trim().is_empty() => Ok(text),
        Ok(_) => Err((
            BadKind::MalformedRecord,
            format!("column {name:?} is null or empty"),
        )),
        Err(msg) => Err((BadKind::MalformedRecord, format!("column {name:?}: {msg}"))),
    }
}

/// `<image>` cell(s) of a row as image sources (missing files are errors).
fn row_images(
    batch: &RecordBatch,
    row: usize,
    origin: &Origin,
    name: &str,
    resolver: &ImageResolver,
) -> Result<Vec<ImageSource>, RowError> {
    let cells = image_cells(column(batch, name)?.as_ref(), row)
        .map_err(|msg| (BadKind::MalformedRecord, format!("column {name:?}: {msg}")))?;
    let mut images = Vec::with_capacity(cells.len());
    for (i, cell) in cells.into_iter().enumerate() {
        let suffix = if i == 0 {
            String::new()
        } else {
            format!("#{i}")
        };
        images.push(cell_source(cell, origin, &suffix, resolver)?);
    }
    Ok(images)
}

/// A caption row.
fn caption_row(
    batch: &RecordBatch,
    row: usize,
    origin: &Origin,
    caption: &str,
    image: &str,
    resolver: &ImageResolver,
) -> Result<RawSample, RowError> {
    let text = required_text(batch, row, caption)?;
    let mut images = row_images(batch, row, origin, image, resolver)?;
    if images.len() != 1 {
        let msg = format!("expected one image, found {}", images.len());
        return Err((BadKind::ImageCountMismatch, msg));
    }
    let image = images.remove(0);
    Ok(RawSample::Caption {
        origin: origin.clone(),
        image,
        caption: text.trim().to_string(),
    })
}

/// A conversation row.
fn conversation_row(
    batch: &RecordBatch,
    row: usize,
    origin: &Origin,
    conversations: &str,
    image: &str,
    resolver: &ImageResolver,
) -> Result<RawSample, RowError> {
    let list = column(batch, conversations)?;
    let mut turns = conversation_turns(list.as_ref(), row).map_err(|msg| {
        (
            BadKind::MalformedRecord,
            format!("column {conversations:?}: {msg}"),
        )
    })?;
    let images = row_images(batch, row, origin, image, resolver)?;
    place_markers(&mut turns, images.len())?;
    Ok(RawSample::Conversation {
        origin: origin.clone(),
        images,
        turns,
    })
}

/// A preference row: the prompt is one user turn (the question, with the image marker).
fn preference_row(
    batch: &RecordBatch,
    row: usize,
    origin: &Origin,
    [image, question, chosen, rejected]: [&String; 4],
    resolver: &ImageResolver,
) -> Result<RawSample, RowError> {
    let question = required_text(batch, row, question)?;
    let chosen = required_text(batch, row, chosen)?;
    let rejected = required_text(batch, row, rejected)?;
    let images = row_images(batch, row, origin, image, resolver)?;
    let mut prompt = vec![Turn {
        role: Role::User,
        text: question,
    }];
    place_markers(&mut prompt, images.len())?;
    Ok(RawSample::Preference {
        origin: origin.clone(),
        images,
        prompt,
        chosen,
        rejected,
    })
}

/// Makes the `<image>` markers match the images (xGen-MM SFT rule): with one image and not
/// exactly one marker in the first user turn, all markers are removed and `<image>\n` is
/// prepended to the first user turn; with several images and no marker, one `<image>\n` per image
/// is prepended; text-only samples must not hold markers; other mismatches are errors.
fn place_markers(turns: &mut [Turn], images: usize) -> Result<(), RowError> {
    let count: usize = turns
        .iter()
        .map(|t| t.text.matches(IMAGE_TOKEN).count())
        .sum();
    let Some(first_user) = turns.iter().position(|t| t.role == Role::User) else {
        return Err((BadKind::MalformedRecord, "no user turn".into()));
    };
    let in_first = turns[first_user].text.matches(IMAGE_TOKEN).count();
    match images {
        0 if count == 0 => Ok(()),
        0 => Err((
            BadKind::ImageCountMismatch,
            format!("{count} <image> marker(s) but no image"),
        )),
        1 if count == 1 && in_first == 1 => Ok(()),
        1 => {
            for turn in turns.iter_mut() {
                turn.text = turn.text.replace(IMAGE_TOKEN, "");
            }
            let text = &mut turns[first_user].text;
            *text = format!("{IMAGE_TOKEN}\n{}", text.trim_start());
            Ok(())
        }
        n if count == n => Ok(()),
        n if count == 0 => {
            let text = &mut turns[first_user].text;
            *text = format!("{}{}", format!("{IMAGE_TOKEN}\n").repeat(n), text);
            Ok(())
        }
        n => Err((
            BadKind::ImageCountMismatch,
            format!("{count} <image> marker(s) for {n} images"),
        )),
    }
}

/// The pieces of an interleaved row (texts / images list columns).
fn interleaved_pieces(
    batch: &RecordBatch,
    row: usize,
    origin: &Origin,
    options: &ParquetOptions,
) -> Result<Vec<Piece>, RowError> {
    let (texts_name, images_name) = (
        &options.document.texts_field,
        &options.document.images_field,
    );
    let malformed = |msg: String| (BadKind::MalformedRecord, msg);
    let texts = list_values(column(batch, texts_name)?.as_ref(), row)
        .map_err(|m| malformed(format!("column {texts_name:?}: {m}")))?
        .ok_or_else(|| malformed(format!("column {texts_name:?} is null")))?;
    let images = list_values(column(batch, images_name)?.as_ref(), row)
        .map_err(|m| malformed(format!("column {images_name:?}: {m}")))?
        .ok_or_else(|| malformed(format!("column {images_name:?} is null")))?;
    if texts.len() != images.len() {
        let msg = format!("{} texts but {} images", texts.len(), images.len());
        return Err(malformed(msg));
    }
    let mut pieces = Vec::with_capacity(texts.len());
    let mut ordinal = 0;
    for i in 0..texts.len() {
        let text =
            scalar_text(texts.as_ref(), i).map_err(|m| malformed(format!("text {i}: {m}")))?;
        let cell =
            image_cell(images.as_ref(), i).map_err(|m| malformed(format!("image {i}: {m}")))?;
        let piece = match (text, cell) {
            (Some(text), None) => Piece::Text(strip_markers(&text)),
            (None, Some(cell)) => {
                let reference = cell.describe();
                let piece =
                    match cell_source(cell, origin, &format!("#image{ordinal}"), &options.resolver)
                    {
                        Ok(source) => Piece::Image(source),
                        Err((kind, reason)) => Piece::Missing {
                            reference,
                            kind,
                            reason,
                        },
                    };
                ordinal += 1;
                piece
            }
            (None, None) => {
                return Err(malformed(format!(
                    "position {i}: text and image are both null"
                )));
            }
            (Some(_), Some(_)) => {
                return Err(malformed(format!(
                    "position {i}: both text and image are set"
                )));
            }
        };
        pieces.push(piece);
    }
    Ok(pieces)
}

// ---------------------------------------------------------------------------------------------
// Arrow cells
// ---------------------------------------------------------------------------------------------

/// An image cell: encoded bytes (with the struct's `path`, if any) or a reference (path or URL).
#[derive(Debug, Clone, PartialEq)]
enum ImageCell {
    Bytes(Vec<u8>, Option<String>),
    Reference(String),
}

impl ImageCell {
    /// A short description for messages.
    fn describe(&self) -> String {
        match self {
            ImageCell::Bytes(bytes, Some(path)) => format!("{path} ({} bytes)", bytes.len()),
            ImageCell::Bytes(bytes, None) => format!("{} embedded bytes", bytes.len()),
            ImageCell::Reference(reference) => reference.clone(),
        }
    }
}

/// Turns a cell into an image source: bytes are named `file:key[suffix][:path]`; references go
/// through the resolver.
fn cell_source(
    cell: ImageCell,
    origin: &Origin,
    suffix: &str,
    resolver: &ImageResolver,
) -> Result<ImageSource, Unavailable> {
    match cell {
        ImageCell::Bytes(bytes, path) => {
            let mut name = format!("{}:{}{suffix}", origin.file, origin.key);
            if let Some(path) = path {
                name.push(':');
                name.push_str(&path);
            }
            Ok(ImageSource::Bytes {
                bytes: Arc::new(bytes),
                name,
            })
        }
        ImageCell::Reference(reference) => resolver.locate(&reference).map(ImageSource::Path),
    }
}

/// A string or integer cell as text; `None` when null.
fn scalar_text(array: &dyn Array, row: usize) -> Result<Option<String>, String> {
    if row >= array.len() {
        return Err(format!("row {row} out of range"));
    }
    if array.is_null(row) {
        return Ok(None);
    }
    let text = match array.data_type() {
        DataType::Utf8 => array.as_string::<i32>().value(row).to_string(),
        DataType::LargeUtf8 => array.as_string::<i64>().value(row).to_string(),
        DataType::Utf8View => array.as_string_view().value(row).to_string(),
        DataType::Int8 => array.as_primitive::<Int8Type>().value(row).to_string(),
        DataType::Int16 => array.as_primitive::<Int16Type>().value(row).to_string(),
        DataType::Int32 => array.as_primitive::<Int32Type>().value(row).to_string(),
        DataType::Int64 => array.as_primitive::<Int64Type>().value(row).to_string(),
        DataType::UInt8 => array.as_primitive::<UInt8Type>().value(row).to_string(),
        DataType::UInt16 => array.as_primitive::<UInt16Type>().value(row).to_string(),
        DataType::UInt32 => array.as_primitive::<UInt32Type>().value(row).to_string(),
        DataType::UInt64 => array.as_primitive::<UInt64Type>().value(row).to_string(),
        other => return Err(format!("expected a string, found {other}")),
    };
    Ok(Some(text))
}

/// A binary cell; `None` when null.
fn binary_value(array: &dyn Array, row: usize) -> Result<Option<Vec<u8>>, String> {
    if array.is_null(row) {
        return Ok(None);
    }
    let bytes = match array.data_type() {
        DataType::Binary => array.as_binary::<i32>().value(row).to_vec(),
        DataType::LargeBinary => array.as_binary::<i64>().value(row).to_vec(),
        DataType::BinaryView => array.as_binary_view().value(row).to_vec(),
        DataType::FixedSizeBinary(_) => array.as_fixed_size_binary().value(row).to_vec(),
        other => return Err(format!("expected binary, found {other}")),
    };
    Ok(Some(bytes))
}

/// Whether a data type is a binary type.
fn is_binary(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView
            | DataType::FixedSizeBinary(_)
    )
}

/// One image cell (bytes, `{bytes, path}` struct or string); `None` when null.
fn image_cell(array: &dyn Array, row: usize) -> Result<Option<ImageCell>, String> {
    if row >= array.len() {
        return Err(format!("row {row} out of range"));
    }
    if array.is_null(row) {
        return Ok(None);
    }
    let data_type = array.data_type();
    if is_binary(data_type) {
        return Ok(binary_value(array, row)?.map(|bytes| ImageCell::Bytes(bytes, None)));
    }
    if let DataType::Struct(_) = data_type {
        return struct_image(array.as_struct(), row);
    }
    Ok(scalar_text(array, row)
        .map_err(|_| format!("unsupported image type {data_type}"))?
        .map(ImageCell::Reference))
}

/// A `{bytes, path}` image struct: the bytes when present and non-empty, else the path.
fn struct_image(array: &StructArray, row: usize) -> Result<Option<ImageCell>, String> {
    let path = match array.column_by_name("path") {
        Some(column) => scalar_text(column.as_ref(), row)?.filter(|p| !p.is_empty()),
        None => None,
    };
    let bytes = match array.column_by_name("bytes") {
        Some(column) => binary_value(column.as_ref(), row)?.filter(|b| !b.is_empty()),
        None => None,
    };
    if array.column_by_name("path").is_none() && array.column_by_name("bytes").is_none() {
        return Err("image struct has neither `bytes` nor `path`".into());
    }
    Ok(match (bytes, path) {
        (Some(bytes), path) => Some(ImageCell::Bytes(bytes, path)),
        (None, Some(path)) => Some(ImageCell::Reference(path)),
        (None, None) => None,
    })
}

/// The values of a list cell; `None` when null.
fn list_values(array: &dyn Array, row: usize) -> Result<Option<ArrayRef>, String> {
    if row >= array.len() {
        return Err(format!("row {row} out of range"));
    }
    if array.is_null(row) {
        return Ok(None);
    }
    match array.data_type() {
        DataType::List(_) => Ok(Some(array.as_list::<i32>().value(row))),
        DataType::LargeList(_) => Ok(Some(array.as_list::<i64>().value(row))),
        other => Err(format!("expected a list, found {other}")),
    }
}

/// The image cells of a row: one cell, or every non-null element of a list cell.
fn image_cells(array: &dyn Array, row: usize) -> Result<Vec<ImageCell>, String> {
    match array.data_type() {
        DataType::List(_) | DataType::LargeList(_) => {
            let Some(values) = list_values(array, row)? else {
                return Ok(Vec::new());
            };
            let mut cells = Vec::with_capacity(values.len());
            for i in 0..values.len() {
                match image_cell(values.as_ref(), i)? {
                    Some(cell) => cells.push(cell),
                    None => return Err(format!("image {i} of the list is null")),
                }
            }
            Ok(cells)
        }
        _ => Ok(image_cell(array, row)?.into_iter().collect()),
    }
}

/// The turns of a conversation cell: a list of `{from, value}` or `{role, content}` structs.
fn conversation_turns(array: &dyn Array, row: usize) -> Result<Vec<Turn>, String> {
    let values = list_values(array, row)?.ok_or("conversation is null")?;
    let Some(structs) = values.as_struct_opt() else {
        return Err(format!(
            "expected a list of structs, found list of {}",
            values.data_type()
        ));
    };
    let pick = |names: [&str; 2]| {
        names
            .iter()
            .find_map(|n| structs.column_by_name(n))
            .cloned()
    };
    let (Some(speakers), Some(texts)) = (pick(["from", "role"]), pick(["value", "content"])) else {
        return Err("turn structs need `from`/`role` and `value`/`content`".into());
    };
    if structs.is_empty() {
        return Err("conversation is empty".into());
    }
    let mut turns = Vec::with_capacity(structs.len());
    for i in 0..structs.len() {
        let speaker =
            scalar_text(speakers.as_ref(), i)?.ok_or(format!("turn {i}: speaker is null"))?;
        let role = match speaker.as_str() {
            "human" | "user" => Role::User,
            "gpt" | "assistant" => Role::Assistant,
            "system" => Role::System,
            other => return Err(format!("turn {i}: unknown speaker {other:?}")),
        };
        let text = scalar_text(texts.as_ref(), i)?.ok_or(format!("turn {i}: text is null"))?;
        turns.push(Turn { role, text });
    }
    Ok(turns)
}
