//! Property-based fuzzing of every data reader (issue 9, "Fuzzed, not just spot-checked").
//!
//! Each test builds a valid fixture (the synthetic corpus of `blip3_data::synth`, Parquet files
//! written here with `ArrowWriter`, images encoded here with the `image` crate), lets proptest damage
//! it (clean truncations, bit flips, interesting integers over length fields, insertions of random
//! bytes and format tokens, deletions, splices) and reads the result. Every case must finish
//! without a panic, within the time limit and under a heap bound (see `fuzz/harness.rs`), and
//! every record the reader saw must come out either good or as a reported error: the tests check
//! `good + bad = records seen` wherever a reader exposes what it saw.
//!
//! CI runs a seeded subset (a few hundred cases per reader); the full run is
//! `BLIP3_FUZZ_CASES=10000 cargo test --release -p blip3-data --test fuzz_readers -- --nocapture`
//! (see the "Fuzzing" section of docs/data.md).

#[path = "fuzz/harness.rs"]
mod harness;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use arrow_array::builder::{BinaryBuilder, ListBuilder, StringBuilder, StructBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Fields, Schema};
use blip3_data::image::decode_bytes;
use blip3_data::readers::eval_data::{
    ImageLocator, load_coco_captions, load_mc_tsv, load_pope, load_scienceqa, load_textvqa,
    load_vqa,
};
use blip3_data::readers::interleaved::{
    ImageResolver, InterleavedJsonlReader, InterleavedOptions, InterleavedWdsReader, UrlRule,
};
use blip3_data::readers::json_stream::{JsonStream, StreamOptions};
use blip3_data::readers::llava::{ImageRoots, LlavaOptions, LlavaReader};
use blip3_data::readers::parquet::{ParquetLayout, ParquetOptions, ParquetReader};
use blip3_data::readers::preference::{PreferenceOptions, PreferenceReader};
use blip3_data::readers::safety::{SafetyOptions, VlGuardReader};
use blip3_data::readers::stream::{ReadScope, SampleStream};
use blip3_data::readers::webdataset::{CaptionOptions, GroupReader, WdsReader};
use blip3_data::synth::{SynthConfig, write_corpus};
use blip3_data::{BadKind, Blip3Tokenizer, ChatTemplate, Origin, Role, SampleError, Turn};
use harness::{CountingAlloc, JSON_TOKENS, Outcome, damage, fuzz, run_case};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;
use serde_json::Value;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Heap bound of a reader case: the fixtures are a few tens of KiB, so anything near this is an
/// allocation sized by a damaged length field.
const READER_HEAP: usize = 64 << 20;

/// Heap bound of an image decode: the `image` crate's default allocation limit (512 MiB) plus the
/// RGB conversion of what it allows.
const IMAGE_HEAP: usize = 1 << 30;

// ------------------------------------------------------------------------------------------------
// Fixtures
// ------------------------------------------------------------------------------------------------

/// The synthetic corpus (small configuration), written once per test binary.
struct Corpus {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Corpus {
    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn bytes(&self, rel: &str) -> Arc<Vec<u8>> {
        Arc::new(std::fs::read(self.path(rel)).expect("corpus file"))
    }
}

fn corpus() -> &'static Corpus {
    static CORPUS: OnceLock<Corpus> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("fuzz-corpus-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("tempdir");
        let root = dir.path().join("corpus");
        let cfg = SynthConfig {
            seed: 9,
            min_side: 32,
            max_side: 48,
            jpeg_quality: 75,
            caption_samples: 6,
            shard_size: 6,
            interleaved_docs: 6,
            sft_single: 8,
            sft_multi: 4,
            sft_text_only: 2,
            dpo_pairs: 8,
            vlfeedback_rows: 4,
            safety_train: 6,
            safety_test: 2,
            eval_images: 6,
            pope_images: 2,
            mmbench_questions: 6,
        };
        write_corpus(&root, &cfg).expect("synthetic corpus");
        Corpus { _dir: dir, root }
    })
}

/// A scratch directory for the damaged inputs of one test.
fn scratch(name: &str) -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let base = DIR.get_or_init(|| {
        tempfile::Builder::new()
            .prefix("fuzz-inputs-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("tempdir")
    });
    let dir = base.path().join(name);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).expect("write damaged input");
}

fn one_rank() -> ReadScope {
    ReadScope::rank(0, 1).expect("scope")
}

// ------------------------------------------------------------------------------------------------
// WebDataset tar shards
// ------------------------------------------------------------------------------------------------

/// How a shard reaches the reader.
#[derive(Debug, Clone, Copy)]
enum TarForm {
    /// The damaged tar as a plain `.tar`.
    Plain,
    /// The damaged tar, gzip-compressed, as `.tar.gz`.
    GzOfDamaged,
    /// The gzip stream of the valid tar, damaged, as `.tar.gz`.
    DamagedGz,
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).expect("gzip");
    enc.finish().expect("gzip")
}

/// Checks the items of one shard read: at most one truncation error, and it ends the stream.
fn check_shard_items<T>(items: &[Result<T, SampleError>]) -> Result<(), TestCaseError> {
    let truncations: Vec<usize> = items
        .iter()
        .enumerate()
        .filter(|(_, item)| matches!(item, Err(e) if e.kind == BadKind::TruncatedShard))
        .map(|(i, _)| i)
        .collect();
    prop_assert!(truncations.len() <= 1, "several truncation errors");
    if let Some(&i) = truncations.first() {
        prop_assert_eq!(i + 1, items.len(), "items after the truncation error");
    }
    for item in items {
        if let Err(e) = item {
            prop_assert!(!e.msg.is_empty(), "error without a message");
        }
    }
    Ok(())
}

/// Where the members of a valid tar end: the offset of its first all-zero header block.
fn tar_data_end(tar: &[u8]) -> usize {
    let mut pos = 0;
    while pos + 512 <= tar.len() && tar[pos..pos + 512].iter().any(|&b| b != 0) {
        let header = tar::Header::from_byte_slice(&tar[pos..pos + 512]);
        let size = header.entry_size().expect("valid fixture header") as usize;
        pos += 512 + size.div_ceil(512) * 512;
    }
    pos
}

#[test]
fn fuzz_webdataset_shards() {
    let tar = corpus().bytes("pretrain/captions/shard-00000.tar");
    let gz = Arc::new(gzip(&tar));
    let dir = scratch("wds");
    let form = prop_oneof![
        6 => Just(TarForm::Plain),
        1 => Just(TarForm::GzOfDamaged),
        1 => Just(TarForm::DamagedGz),
    ];
    fuzz("webdataset", 600, (damage(6), form), |(dmg, form), _| {
        let (bytes, name) = match form {
            TarForm::Plain => (dmg.apply(&tar, &[]), "shard.tar"),
            TarForm::GzOfDamaged => (gzip(&dmg.apply(&tar, &[])), "shard.tar.gz"),
            TarForm::DamagedGz => (dmg.apply(&gz, &[]), "shard.tar.gz"),
        };
        let path = dir.join(name);
        write(&path, &bytes);
        let cut = match form {
            TarForm::Plain => dmg.cut(tar.len()),
            _ => None,
        };
        let data_end = tar_data_end(&tar);
        let ((samples, groups), usage) = run_case(READER_HEAP, move || {
            let samples: Vec<_> =
                WdsReader::from_shards(vec![path.clone()], one_rank(), CaptionOptions::default())
                    .collect();
            let groups: Vec<_> = GroupReader::new(vec![path], one_rank()).collect();
            (samples, groups)
        })?;
        check_shard_items(&samples)?;
        check_shard_items(&groups)?;
        // Every group becomes one sample or one error: nothing is dropped on the way.
        prop_assert_eq!(samples.len(), groups.len());
        // A cut before the end-of-archive marker that is not on a 512-byte block boundary always
        // leaves a partial header or payload behind, which must be reported.
        if let Some(cut) = cut
            && cut < data_end
            && !cut.is_multiple_of(512)
        {
            prop_assert!(
                matches!(samples.last(), Some(Err(e)) if e.kind == BadKind::TruncatedShard),
                "a cut at byte {cut} was not reported"
            );
        }
        let good = samples.iter().filter(|s| s.is_ok()).count() as u64;
        let outcome = Outcome {
            good,
            bad: samples.len() as u64 - good,
            refused: false,
        };
        Ok((outcome, usage))
    });
}

/// The interleaved-document tar layout: `key.json` records and `key.N.jpg` members.
fn interleaved_tar() -> Arc<Vec<u8>> {
    static TAR: OnceLock<Arc<Vec<u8>>> = OnceLock::new();
    TAR.get_or_init(|| {
        let c = corpus();
        let docs = std::fs::read_to_string(c.path("pretrain/interleaved/docs.jsonl")).unwrap();
        let mut builder = tar::Builder::new(Vec::new());
        for (i, line) in docs.lines().enumerate() {
            let key = format!("doc{i:04}");
            let record: Value = serde_json::from_str(line).unwrap();
            let mut append = |name: String, data: &[u8]| {
                let mut header = tar::Header::new_gnu();
                header.set_size(data.len() as u64);
                header.set_mode(0o644);
                header.set_cksum();
                builder.append_data(&mut header, name, data).unwrap();
            };
            append(format!("{key}.json"), line.as_bytes());
            let images = record["images"].as_array().cloned().unwrap_or_default();
            for (n, image) in images.iter().filter_map(Value::as_str).enumerate() {
                let bytes = std::fs::read(c.path("pretrain/interleaved").join(image)).unwrap();
                append(format!("{key}.{n}.jpg"), &bytes);
            }
        }
        Arc::new(builder.into_inner().unwrap())
    })
    .clone()
}

#[test]
fn fuzz_interleaved_webdataset_shards() {
    let tar = interleaved_tar();
    let dir = scratch("interleaved-wds");
    let root = corpus().path("pretrain/interleaved");
    fuzz("interleaved-wds", 300, damage(6), |dmg, _| {
        let path = dir.join("docs.tar");
        write(&path, &dmg.apply(&tar, JSON_TOKENS));
        let root = root.clone();
        let (items, usage) = run_case(READER_HEAP, move || {
            let resolver = ImageResolver::new(Some(root), UrlRule::Basename);
            let options = InterleavedOptions {
                report_dropped_images: false,
                ..InterleavedOptions::default()
            };
            let reader = InterleavedWdsReader::from_shards(
                vec![path.clone()],
                one_rank(),
                resolver,
                options,
            );
            let items: Vec<_> = reader.collect();
            let groups = GroupReader::new(vec![path], one_rank()).count();
            (items, groups)
        })?;
        let (items, groups) = items;
        check_shard_items(&items)?;
        // Without per-image reports, every group gives exactly one item.
        prop_assert_eq!(items.len(), groups);
        let good = items.iter().filter(|s| s.is_ok()).count() as u64;
        let outcome = Outcome {
            good,
            bad: items.len() as u64 - good,
            refused: false,
        };
        Ok((outcome, usage))
    });
}

// ------------------------------------------------------------------------------------------------
// Interleaved JSON lines
// ------------------------------------------------------------------------------------------------

/// Lines the interleaved JSONL reader must report on: everything but blank (all-whitespace UTF-8)
/// lines.
fn non_blank_lines(bytes: &[u8]) -> u64 {
    let mut lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    if bytes.ends_with(b"\n") || bytes.is_empty() {
        lines.pop();
    }
    lines
        .iter()
        .filter(|line| match std::str::from_utf8(line) {
            Ok(text) => !text.trim().is_empty(),
            Err(_) => true,
        })
        .count() as u64
}

#[test]
fn fuzz_interleaved_jsonl() {
    let docs = corpus().bytes("pretrain/interleaved/docs.jsonl");
    let root = corpus().path("pretrain/interleaved");
    let dir = scratch("interleaved-jsonl");
    fuzz("interleaved-jsonl", 600, damage(8), |dmg, _| {
        let bytes = dmg.apply(&docs, JSON_TOKENS);
        let expected = non_blank_lines(&bytes);
        let path = dir.join("docs.jsonl");
        write(&path, &bytes);
        let root = root.clone();
        let (items, usage) = run_case(READER_HEAP, move || {
            let resolver = ImageResolver::new(Some(root), UrlRule::Unavailable);
            let options = InterleavedOptions {
                report_dropped_images: false,
                ..InterleavedOptions::default()
            };
            let mut reader =
                InterleavedJsonlReader::from_files(vec![path], one_rank(), resolver, options);
            let items: Vec<_> = reader.by_ref().collect();
            (items, reader.position())
        })?;
        let (items, position) = items;
        // One item per non-blank line (good document or the reason it was skipped).
        prop_assert_eq!(items.len() as u64, expected);
        prop_assert!(position.shard >= 1 || items.is_empty() || position.sample > 0);
        let good = items.iter().filter(|s| s.is_ok()).count() as u64;
        let outcome = Outcome {
            good,
            bad: items.len() as u64 - good,
            refused: false,
        };
        Ok((outcome, usage))
    });
}

// ------------------------------------------------------------------------------------------------
// Parquet
// ------------------------------------------------------------------------------------------------

const PARQUET_ROWS: usize = 12;

/// A Parquet file with the columns of every layout: `id`, `caption`, `image` (`{bytes, path}`),
/// `conversations` (list of `{from, value}`), `texts` / `images` (interleaved lists), `question`,
/// `chosen`, `rejected`; rows in row groups of 4.
fn parquet_fixture(compression: parquet::basic::Compression, dictionary: bool) -> Vec<u8> {
    let png = tiny_png();
    let image_fields = Fields::from(vec![
        Field::new("bytes", DataType::Binary, true),
        Field::new("path", DataType::Utf8, true),
    ]);
    let turn_fields = Fields::from(vec![
        Field::new("from", DataType::Utf8, true),
        Field::new("value", DataType::Utf8, true),
    ]);
    let mut id = StringBuilder::new();
    let mut caption = StringBuilder::new();
    let mut image = StructBuilder::from_fields(image_fields.clone(), PARQUET_ROWS);
    let mut conversations = ListBuilder::new(StructBuilder::from_fields(
        turn_fields.clone(),
        PARQUET_ROWS,
    ));
    let mut texts = ListBuilder::new(StringBuilder::new());
    let mut images = ListBuilder::new(BinaryBuilder::new());
    let mut question = StringBuilder::new();
    let mut chosen = StringBuilder::new();
    let mut rejected = StringBuilder::new();
    for row in 0..PARQUET_ROWS {
        id.append_value(format!("row-{row}"));
        caption.append_value(format!("a red square number {row}"));
        image
            .field_builder::<BinaryBuilder>(0)
            .unwrap()
            .append_value(&png);
        image
            .field_builder::<StringBuilder>(1)
            .unwrap()
            .append_value(format!("img{row}.png"));
        image.append(true);
        let turns = conversations.values();
        for (from, value) in [
            ("human", format!("<image>\nWhat is shape {row}?")),
            ("gpt", "A square.".to_string()),
        ] {
            turns
                .field_builder::<StringBuilder>(0)
                .unwrap()
                .append_value(from);
            turns
                .field_builder::<StringBuilder>(1)
                .unwrap()
                .append_value(value);
            turns.append(true);
        }
        conversations.append(true);
        texts
            .values()
            .append_value(format!("Document {row} starts."));
        texts.values().append_null();
        texts.values().append_value("It ends.");
        texts.append(true);
        images.values().append_null();
        images.values().append_value(&png);
        images.values().append_null();
        images.append(true);
        question.append_value(format!("<image>\nHow many sides does shape {row} have?"));
        chosen.append_value("Four.");
        rejected.append_value("Three.");
    }
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("id", Arc::new(id.finish())),
        ("caption", Arc::new(caption.finish())),
        ("image", Arc::new(image.finish())),
        ("conversations", Arc::new(conversations.finish())),
        ("texts", Arc::new(texts.finish())),
        ("images", Arc::new(images.finish())),
        ("question", Arc::new(question.finish())),
        ("chosen", Arc::new(chosen.finish())),
        ("rejected", Arc::new(rejected.finish())),
    ];
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|(name, array)| Field::new(*name, array.data_type().clone(), true))
            .collect::<Vec<_>>(),
    ));
    let batch = RecordBatch::try_new(
        schema.clone(),
        columns.into_iter().map(|(_, a)| a).collect(),
    )
    .unwrap();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(compression)
        .set_dictionary_enabled(dictionary)
        .set_max_row_group_row_count(Some(4))
        .build();
    let mut out = Vec::new();
    let mut writer = parquet::arrow::ArrowWriter::try_new(&mut out, schema, Some(props)).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    out
}

/// A 4x4 RGB PNG.
fn tiny_png() -> Vec<u8> {
    let img = image::RgbImage::from_fn(4, 4, |x, y| image::Rgb([x as u8 * 60, y as u8 * 60, 9]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn parquet_fixtures() -> &'static [Vec<u8>] {
    use parquet::basic::{Compression, GzipLevel, ZstdLevel};
    static FIXTURES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        vec![
            parquet_fixture(Compression::UNCOMPRESSED, false),
            parquet_fixture(Compression::SNAPPY, true),
            parquet_fixture(Compression::ZSTD(ZstdLevel::default()), true),
            parquet_fixture(Compression::GZIP(GzipLevel::default()), false),
            parquet_fixture(Compression::LZ4_RAW, true),
        ]
    })
}

fn parquet_layout(which: usize) -> ParquetLayout {
    match which % 4 {
        0 => ParquetLayout::Caption {
            caption: "caption".into(),
            image: "image".into(),
        },
        1 => ParquetLayout::llava_next(),
        2 => ParquetLayout::obelics(),
        _ => ParquetLayout::rlaif_v(),
    }
}

/// Rows the footer of `path` announces, when it can be read.
fn footer_rows(path: &Path) -> Option<u64> {
    let file = std::fs::File::open(path).ok()?;
    let meta = parquet::arrow::arrow_reader::ArrowReaderMetadata::load(
        &file,
        parquet::arrow::arrow_reader::ArrowReaderOptions::new(),
    )
    .ok()?;
    Some(
        meta.metadata()
            .row_groups()
            .iter()
            .map(|g| g.num_rows().max(0) as u64)
            .sum(),
    )
}

#[test]
fn fuzz_parquet() {
    let fixtures = parquet_fixtures();
    let dir = scratch("parquet");
    let strategy = (damage(6), 0..fixtures.len(), 0usize..4, 1usize..6);
    fuzz(
        "parquet",
        400,
        strategy,
        |(dmg, fixture, layout, batch), tally| {
            let path = dir.join("table.parquet");
            write(&path, &dmg.apply(&fixtures[fixture], &[]));
            let read_path = path.clone();
            let (result, usage) = run_case(READER_HEAP, move || {
                let mut options = ParquetOptions::new(parquet_layout(layout));
                options.id_column = Some("id".into());
                options.batch_size = batch;
                options.document.report_dropped_images = false;
                match ParquetReader::from_files(vec![read_path.clone()], one_rank(), options) {
                    Ok(reader) => Some(reader.collect::<Vec<_>>()),
                    Err(_) => None,
                }
            })?;
            let Some(items) = result else {
                return Ok((Outcome::refused(), usage));
            };
            let row_errors = items
                .iter()
                .filter(|i| matches!(i, Err(e) if e.kind != BadKind::TruncatedShard))
                .count() as u64;
            let group_errors = items
                .iter()
                .filter(|i| matches!(i, Err(e) if e.kind == BadKind::TruncatedShard))
                .count() as u64;
            let good = items.iter().filter(|i| i.is_ok()).count() as u64;
            tally.note("row-group errors", group_errors);
            // The footer was read (the reader opened the file), so it can be read here too.
            let rows = footer_rows(&path);
            prop_assert!(
                rows.is_some(),
                "the reader opened a file whose footer does not load"
            );
            let rows = rows.unwrap_or_default();
            // Each row comes out once, good or bad; rows of a row group that fails to decode are
            // covered by that row group's error.
            prop_assert!(
                good + row_errors <= rows,
                "{good} + {row_errors} items for {rows} rows"
            );
            if group_errors == 0 {
                prop_assert_eq!(good + row_errors, rows, "rows silently dropped");
            }
            let outcome = Outcome {
                good,
                bad: row_errors + group_errors,
                refused: false,
            };
            Ok((outcome, usage))
        },
    );
}

// ------------------------------------------------------------------------------------------------
// JSON streams and the JSON dataset readers
// ------------------------------------------------------------------------------------------------

/// One of the JSON fixtures of the corpus.
fn json_fixture(rel: &str) -> (Arc<Vec<u8>>, PathBuf) {
    let c = corpus();
    (c.bytes(rel), c.path(rel).parent().unwrap().to_path_buf())
}

#[test]
fn fuzz_json_stream() {
    let fixtures = [
        corpus().bytes("sft/llava.json"),
        corpus().bytes("dpo/pairs.jsonl"),
    ];
    let dir = scratch("json-stream");
    let options = (
        0u64..6,
        1usize..4,
        any::<Index>(),
        prop_oneof![Just(usize::MAX), 1usize..512],
    );
    fuzz(
        "json-stream",
        800,
        (damage(8), 0..fixtures.len(), options),
        |(dmg, which, (start, world, rank, max_bytes)), _| {
            let path = dir.join(if which == 0 { "a.json" } else { "a.jsonl" });
            write(&path, &dmg.apply(&fixtures[which], JSON_TOKENS));
            let options = StreamOptions {
                start,
                rank: rank.index(world),
                world,
                max_element_bytes: if max_bytes == usize::MAX {
                    StreamOptions::default().max_element_bytes
                } else {
                    max_bytes
                },
            };
            let (result, usage) = run_case(READER_HEAP, move || {
                let mut stream = JsonStream::<Value>::open(&path, options).ok()?;
                let items: Vec<_> = stream.by_ref().collect();
                Some((items, stream.position(), stream.peak_buffer_bytes()))
            })?;
            let Some((items, position, peak)) = result else {
                return Ok((Outcome::refused(), usage));
            };
            // Exactly the owned indices below the position come out, in order.
            let got: Vec<u64> = items.iter().map(|(i, _)| *i).collect();
            let want: Vec<u64> = (0..position).filter(|&i| options.owns(i)).collect();
            prop_assert_eq!(got, want);
            prop_assert!(
                peak <= options.max_element_bytes,
                "buffer past the element bound"
            );
            let good = items.iter().filter(|(_, r)| r.is_ok()).count() as u64;
            let outcome = Outcome {
                good,
                bad: items.len() as u64 - good,
                refused: false,
            };
            Ok((outcome, usage))
        },
    );
}

/// Checks that a record reader yielded indices that cover `0..position` in order (a record may give
/// several items), allowing `silent` records without any item.
fn check_indices(indices: &[u64], position: u64, silent: u64) -> Result<(), TestCaseError> {
    prop_assert!(
        indices.windows(2).all(|w| w[0] <= w[1]),
        "indices out of order"
    );
    let distinct: BTreeSet<u64> = indices.iter().copied().collect();
    prop_assert!(
        distinct.iter().all(|&i| i < position),
        "index past the position"
    );
    prop_assert!(
        distinct.len() as u64 + silent >= position,
        "{} of {position} records yielded nothing ({silent} allowed)",
        position - distinct.len() as u64
    );
    Ok(())
}

fn outcome_of<T, E>(items: &[(u64, Result<T, E>)]) -> Outcome {
    let good = items.iter().filter(|(_, r)| r.is_ok()).count() as u64;
    Outcome {
        good,
        bad: items.len() as u64 - good,
        refused: false,
    }
}

#[test]
fn fuzz_llava() {
    let fixtures = [
        json_fixture("sft/llava.json"),
        json_fixture("sft/multi_image.json"),
    ];
    let dir = scratch("llava");
    fuzz(
        "llava",
        600,
        (damage(8), 0..fixtures.len()),
        |(dmg, which), _| {
            let (bytes, root) = &fixtures[which];
            let path = dir.join("llava.json");
            write(&path, &dmg.apply(bytes, JSON_TOKENS));
            let root = root.clone();
            let (result, usage) = run_case(READER_HEAP, move || {
                let options = LlavaOptions {
                    roots: ImageRoots::new(root),
                    ..LlavaOptions::default()
                };
                let mut reader =
                    LlavaReader::open(&path, options, StreamOptions::default()).ok()?;
                let items: Vec<_> = reader.by_ref().collect();
                Some((items, reader.stream().position()))
            })?;
            let Some((items, position)) = result else {
                return Ok((Outcome::refused(), usage));
            };
            // One item per record.
            prop_assert_eq!(items.len() as u64, position);
            let indices: Vec<u64> = items.iter().map(|(i, _)| *i).collect();
            check_indices(&indices, position, 0)?;
            Ok((outcome_of(&items), usage))
        },
    );
}

#[test]
fn fuzz_preference() {
    let fixtures = [
        json_fixture("dpo/pairs.jsonl"),
        json_fixture("dpo/vlfeedback.json"),
    ];
    let dir = scratch("preference");
    fuzz(
        "preference",
        600,
        (damage(8), 0..fixtures.len()),
        |(dmg, which), tally| {
            let (bytes, root) = &fixtures[which];
            let path = dir.join("pairs.json");
            write(&path, &dmg.apply(bytes, JSON_TOKENS));
            let root = root.clone();
            let (result, usage) = run_case(READER_HEAP, move || {
                let options = PreferenceOptions {
                    roots: ImageRoots::new(root),
                    ..PreferenceOptions::default()
                };
                let mut reader =
                    PreferenceReader::open(&path, options, StreamOptions::default()).ok()?;
                let items: Vec<_> = reader.by_ref().collect();
                Some((items, reader.stream().position(), reader.stats()))
            })?;
            let Some((items, position, stats)) = result else {
                return Ok((Outcome::refused(), usage));
            };
            // A VLFeedback row may give no pair (ties, unparseable ratings, one completion): it
            // is counted in `stats.rows`; every other record gives at least one item.
            let indices: Vec<u64> = items.iter().map(|(i, _)| *i).collect();
            check_indices(&indices, position, stats.rows)?;
            let good = items.iter().filter(|(_, r)| r.is_ok()).count() as u64;
            prop_assert_eq!(
                good,
                stats.pairs,
                "pairs counted differently from pairs yielded"
            );
            tally.note("vlfeedback rows", stats.rows);
            Ok((outcome_of(&items), usage))
        },
    );
}

#[test]
fn fuzz_vlguard() {
    let (bytes, root) = json_fixture("safety/train.json");
    let dir = scratch("vlguard");
    fuzz("vlguard", 600, damage(8), |dmg, _| {
        let path = dir.join("train.json");
        write(&path, &dmg.apply(&bytes, JSON_TOKENS));
        let root = root.clone();
        let (result, usage) = run_case(READER_HEAP, move || {
            let options = SafetyOptions {
                roots: ImageRoots::new(root),
                ..SafetyOptions::default()
            };
            let mut reader = VlGuardReader::open(&path, options, StreamOptions::default()).ok()?;
            let items: Vec<_> = reader.by_ref().collect();
            Some((items, reader.stream().position()))
        })?;
        let Some((items, position)) = result else {
            return Ok((Outcome::refused(), usage));
        };
        let indices: Vec<u64> = items.iter().map(|(i, _)| *i).collect();
        // Every record gives one conversation per instruction, or one error.
        check_indices(&indices, position, 0)?;
        Ok((outcome_of(&items), usage))
    });
}

// ------------------------------------------------------------------------------------------------
// Evaluation formats
// ------------------------------------------------------------------------------------------------

/// The evaluation loaders, each fed one damaged file.
#[derive(Debug, Clone, Copy)]
enum EvalFile {
    Coco,
    VqaQuestions,
    VqaAnnotations,
    Pope,
    MmbenchTsv,
    ScienceQa,
    TextVqa,
}

const EVAL_FILES: [EvalFile; 7] = [
    EvalFile::Coco,
    EvalFile::VqaQuestions,
    EvalFile::VqaAnnotations,
    EvalFile::Pope,
    EvalFile::MmbenchTsv,
    EvalFile::ScienceQa,
    EvalFile::TextVqa,
];

fn scienceqa_fixture() -> Vec<u8> {
    let records: Vec<Value> = (0..6)
        .map(|i| {
            serde_json::json!({
                "id": format!("q{i}"),
                "question": format!("Which shape is number {i}?"),
                "choices": ["circle", "square", "triangle"],
                "answer": i % 3,
                "hint": "Look closely.",
                "image": if i % 2 == 0 { Value::from("image.png") } else { Value::Null },
                "subject": "shapes",
                "split": "test",
            })
        })
        .collect();
    let keyed: serde_json::Map<String, Value> = records
        .iter()
        .map(|r| (r["id"].as_str().unwrap().to_string(), r.clone()))
        .collect();
    serde_json::to_vec_pretty(&keyed).unwrap()
}

fn textvqa_fixture() -> Vec<u8> {
    let data: Vec<Value> = (0..6)
        .map(|i| {
            serde_json::json!({
                "question_id": i,
                "image_id": format!("img{i:03}"),
                "question": "What does the sign say?",
                "answers": vec!["stop"; 10],
            })
        })
        .collect();
    serde_json::to_vec_pretty(&serde_json::json!({ "dataset_name": "textvqa", "data": data }))
        .unwrap()
}

/// Elements of a JSON array or JSON-lines file, as the stream sees them (`None`: not a stream).
fn stream_elements(path: &Path) -> Option<u64> {
    let mut stream = JsonStream::<Value>::open(path, StreamOptions::default()).ok()?;
    stream.by_ref().for_each(drop);
    Some(stream.position())
}

#[test]
fn fuzz_eval_formats() {
    let c = corpus();
    let fixtures: Vec<Arc<Vec<u8>>> = vec![
        c.bytes("eval/captions.json"),
        c.bytes("eval/vqa_questions.json"),
        c.bytes("eval/vqa_annotations.json"),
        c.bytes("eval/pope/synth_pope_random.json"),
        c.bytes("eval/mmbench.tsv"),
        Arc::new(scienceqa_fixture()),
        Arc::new(textvqa_fixture()),
    ];
    let images = c.path("eval/images");
    let questions = c.path("eval/vqa_questions.json");
    let annotations = c.path("eval/vqa_annotations.json");
    let dir = scratch("eval");
    let tsv_tokens: &[&[u8]] = &[b"\t", b"\n", b"\"", b"\"\"", b"nan", b"A", b"\r", b"\xff"];
    fuzz(
        "eval-formats",
        700,
        (damage(8), 0..EVAL_FILES.len()),
        |(dmg, which), tally| {
            let kind = EVAL_FILES[which];
            let tokens = match kind {
                EvalFile::MmbenchTsv => tsv_tokens,
                _ => JSON_TOKENS,
            };
            let path = dir.join(format!("{kind:?}.data"));
            write(&path, &dmg.apply(&fixtures[which], tokens));
            let (images, questions, annotations) =
                (images.clone(), questions.clone(), annotations.clone());
            let read_path = path.clone();
            let (result, usage) = run_case(READER_HEAP, move || {
                let path = read_path;
                let locator = ImageLocator::coco(&images, "val2014");
                let counts =
                    |items: usize, problems: &[SampleError]| (items as u64, problems.len() as u64);
                let loaded = match kind {
                    EvalFile::Coco => load_coco_captions(&path, Some(&locator))
                        .map(|l| counts(l.items.len(), &l.problems)),
                    EvalFile::VqaQuestions => load_vqa(&path, Some(&annotations), &locator)
                        .map(|l| counts(l.items.len(), &l.problems)),
                    EvalFile::VqaAnnotations => load_vqa(&questions, Some(&path), &locator)
                        .map(|l| counts(l.items.len(), &l.problems)),
                    EvalFile::Pope => load_pope(&path, &images, Some("random"))
                        .map(|l| counts(l.items.len(), &l.problems)),
                    EvalFile::MmbenchTsv => {
                        load_mc_tsv(&path).map(|l| counts(l.items.len(), &l.problems))
                    }
                    EvalFile::ScienceQa => load_scienceqa(&path, Some(&images))
                        .map(|l| counts(l.items.len(), &l.problems)),
                    EvalFile::TextVqa => {
                        load_textvqa(&path, &locator).map(|l| counts(l.items.len(), &l.problems))
                    }
                };
                loaded.ok()
            })?;
            let Some((items, problems)) = result else {
                tally.note("files refused", 1);
                return Ok((Outcome::refused(), usage));
            };
            if let EvalFile::Pope = kind {
                // POPE is a record stream: every element is an item or a problem.
                let elements = stream_elements(&path);
                prop_assert_eq!(Some(items + problems), elements);
            }
            let outcome = Outcome {
                good: items,
                bad: problems,
                refused: false,
            };
            Ok((outcome, usage))
        },
    );
}

// ------------------------------------------------------------------------------------------------
// Images
// ------------------------------------------------------------------------------------------------

fn encode(img: &image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, format)
        .expect("encode fixture image");
    out.into_inner()
}

/// Valid images of every decoded format (JPEG from the corpus and encoded here, PNG in several
/// colour types, GIF, BMP, lossless WebP, TIFF).
fn image_fixtures() -> Vec<Arc<Vec<u8>>> {
    use image::{DynamicImage, ImageFormat};
    let rgb = image::RgbImage::from_fn(24, 16, |x, y| {
        image::Rgb([(x * 10) as u8, (y * 15) as u8, ((x + y) * 5) as u8])
    });
    let rgb = DynamicImage::ImageRgb8(rgb);
    let rgba = DynamicImage::ImageRgba8(rgb.to_rgba8());
    let gray16 = DynamicImage::ImageLuma16(rgb.to_luma16());
    let mut out = vec![
        encode(&rgb, ImageFormat::Jpeg),
        encode(&rgb, ImageFormat::Png),
        encode(&rgba, ImageFormat::Png),
        encode(&gray16, ImageFormat::Png),
        encode(&rgba, ImageFormat::Gif),
        encode(&rgb, ImageFormat::Bmp),
        encode(&rgba, ImageFormat::WebP),
        encode(&rgb, ImageFormat::Tiff),
    ];
    let c = corpus();
    let shard = std::fs::read(c.path("pretrain/captions/shard-00000.tar")).unwrap();
    let mut archive = tar::Archive::new(std::io::Cursor::new(shard));
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".jpg") || name.ends_with(".png") {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
            out.push(bytes);
            if out.len() >= 10 {
                break;
            }
        }
    }
    out.into_iter().map(Arc::new).collect()
}

/// Tokens that matter to image parsers: markers, chunk names and large dimensions.
const IMAGE_TOKENS: &[&[u8]] = &[
    b"\xff\xd8",
    b"\xff\xd9",
    b"\xff\xc0\x00\x11\x08\xff\xff\xff\xff\x03",
    b"\xff\xda",
    b"\xff\xe1\x00\x10Exif\x00\x00",
    b"IHDR",
    b"IDAT",
    b"IEND",
    b"acTL",
    b"eXIf",
    b"\x7f\xff\xff\xff",
    b"RIFF",
    b"VP8L",
    b"VP8X",
    b"GIF89a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
];

#[test]
fn fuzz_image_decoding() {
    let fixtures = image_fixtures();
    fuzz(
        "image",
        400,
        (damage(6), 0..fixtures.len()),
        |(dmg, which), tally| {
            let bytes = dmg.apply(&fixtures[which], IMAGE_TOKENS);
            let (result, usage) = run_case(IMAGE_HEAP, move || {
                decode_bytes(&bytes, "fuzz").map(|img| (img.width(), img.height()))
            })?;
            match &result {
                Ok((w, h)) => prop_assert!(*w > 0 && *h > 0),
                Err(blip3_data::DataError::Image { msg, .. }) => {
                    if msg.contains("decoder panicked") {
                        tally.note("decoder panics caught", 1);
                    }
                }
                Err(blip3_data::DataError::ImageRefused { .. }) => {
                    tally.note("refused by the size limits", 1);
                }
                Err(other) => prop_assert!(false, "unexpected error kind: {other}"),
            }
            let outcome = Outcome {
                good: u64::from(result.is_ok()),
                bad: u64::from(result.is_err()),
                refused: false,
            };
            Ok((outcome, usage))
        },
    );
}

// ------------------------------------------------------------------------------------------------
// Tokenizer and chat template
// ------------------------------------------------------------------------------------------------

fn tokenizer() -> &'static Blip3Tokenizer {
    static TOK: OnceLock<Blip3Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| Blip3Tokenizer::tiny().expect("tiny tokenizer"))
}

/// Prompt text: arbitrary Unicode, arbitrary bytes read lossily, or a chat prompt with special
/// tokens, damaged.
fn prompt_text() -> impl Strategy<Value = String> {
    const PROMPT: &str = "<|user|>\n<image>\nWhat colour is the <image placeholder> square?<|end|>\n<|assistant|>\nRed.<|endofchunk|><|endoftext|><s></s><pad>";
    prop_oneof![
        any::<String>(),
        prop::collection::vec(any::<u8>(), 0..256)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        damage(6).prop_map(|d| {
            let tokens: &[&[u8]] = &[
                b"<image>",
                b"<|end|>",
                b"<s>",
                b"\xe2\x96\x81",
                b"\x00",
                b"<",
            ];
            String::from_utf8_lossy(&d.apply(PROMPT.as_bytes(), tokens)).into_owned()
        }),
        "[\\PC\\s<>|]{0,400}",
    ]
}

#[test]
fn fuzz_tokenizer_input() {
    let tok = tokenizer();
    let strategy = (
        prompt_text(),
        prompt_text(),
        prop::collection::vec(any::<u32>(), 0..64),
        0usize..4,
        1usize..64,
    );
    fuzz(
        "tokenizer",
        600,
        strategy,
        |(text, answer, ids, images, max_len), _| {
            let (result, usage) = run_case(READER_HEAP, move || {
                let tok = tokenizer();
                let mut errors = 0u64;
                let mut good = 0u64;
                let mut count = |ok: bool| {
                    if ok { good += 1 } else { errors += 1 }
                };
                let plain = tok.encode(&text, false);
                let special = tok.encode(&text, true);
                let vocab = tok.len() as u32;
                let in_vocab = |ids: &Vec<u32>| ids.iter().all(|&i| i < vocab);
                let ok_ids = plain.as_ref().map_or(true, in_vocab)
                    && special.as_ref().map_or(true, in_vocab);
                if let Ok(ids) = &plain {
                    count(tok.decode(ids, false).is_ok());
                }
                count(plain.is_ok());
                // Arbitrary ids, most out of the vocabulary: an error or text, never a panic.
                let _ = tok.decode(&ids, true);
                let template = ChatTemplate::new().with_max_len(max_len * 16);
                let origin = Origin {
                    file: "fuzz".into(),
                    key: "case".into(),
                };
                let turns = vec![
                    Turn {
                        role: Role::User,
                        text: text.clone(),
                    },
                    Turn {
                        role: Role::Assistant,
                        text: answer.clone(),
                    },
                ];
                let tokens = vec![max_len; images];
                count(
                    template
                        .encode_conversation(tok, &turns, &tokens, &origin)
                        .is_ok(),
                );
                count(
                    template
                        .encode_prompt(tok, &turns[..1], images, &origin)
                        .is_ok(),
                );
                count(
                    template
                        .encode_caption(tok, &text, max_len, &origin)
                        .is_ok(),
                );
                count(
                    template
                        .encode_interleaved(tok, &answer, &tokens, &origin)
                        .is_ok(),
                );
                (ok_ids, good, errors)
            })?;
            let (ok_ids, good, bad) = result;
            prop_assert!(ok_ids, "an id outside the vocabulary");
            Ok((
                Outcome {
                    good,
                    bad,
                    refused: false,
                },
                usage,
            ))
        },
    );
    let _ = tok;
}

/// The tokenizer files themselves: a damaged `tokenizer.json` / `tokenizer_config.json` loads or
/// fails with an error.
#[test]
fn fuzz_tokenizer_files() {
    const JSON: &str = include_str!("../assets/tiny-tokenizer/tokenizer.json");
    const CONFIG: &str = include_str!("../assets/tiny-tokenizer/tokenizer_config.json");
    fuzz(
        "tokenizer-files",
        300,
        (damage(4), any::<bool>()),
        |(dmg, damage_config), _| {
            let (json, config) = if damage_config {
                (
                    JSON.to_string(),
                    String::from_utf8_lossy(&dmg.apply(CONFIG.as_bytes(), JSON_TOKENS))
                        .into_owned(),
                )
            } else {
                (
                    String::from_utf8_lossy(&dmg.apply(JSON.as_bytes(), JSON_TOKENS)).into_owned(),
                    CONFIG.to_string(),
                )
            };
            let (ok, usage) = run_case(READER_HEAP, move || {
                let config = blip3_data::tokenizer::TokenizerConfig::from_json_str(&config, "cfg");
                let Ok(config) = config else { return false };
                match Blip3Tokenizer::from_json_str(&json, &config, "fuzz") {
                    Ok(tok) => {
                        let _ = tok.encode("<image>\nhello world", true);
                        true
                    }
                    Err(_) => false,
                }
            })?;
            let outcome = Outcome {
                good: u64::from(ok),
                bad: u64::from(!ok),
                refused: !ok,
            };
            Ok((outcome, usage))
        },
    );
}

/// Regression (found by `fuzz_tokenizer_files`): any syntax error inside the `decoder` section of
/// a `tokenizer.json` made the `tokenizers` crate panic (`expect("Helper")` in its decoder
/// deserializer) instead of returning an error.
#[test]
fn regression_tokenizer_json_with_broken_decoder_is_an_error() {
    const JSON: &str = include_str!("../assets/tiny-tokenizer/tokenizer.json");
    let broken = JSON.replacen(
        r#"{"type":"ByteFallback"}"#,
        r#"{"type":"ByteFallback",}"#,
        1,
    );
    assert_ne!(broken, JSON, "the fixture's decoder changed");
    let config = blip3_data::tokenizer::TokenizerConfig::default();
    let err = Blip3Tokenizer::from_json_str(&broken, &config, "broken/tokenizer.json")
        .expect_err("a broken decoder section must be refused");
    assert!(
        matches!(err, blip3_data::DataError::Tokenizer { .. }),
        "{err}"
    );
}
