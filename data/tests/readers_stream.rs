//! Streaming readers: WebDataset shards, interleaved documents (JSON lines and tar), Parquet.
//!
//! Fixtures come from `tests/fixtures/readers/make_readers_fixtures.py`, which also writes
//! `streams_expected.json`: bash brace expansions, the shard layouts, image SHA-1 digests, the
//! truncation point and the interleaved documents rendered with the OpenFlamingo rule in Python.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use blip3_data::readers::interleaved::{
    DocPart, ImageResolver, InterleavedJsonlReader, InterleavedOptions, InterleavedWdsReader,
    MissingImagePolicy, UrlRule, render_interleaved,
};
use blip3_data::readers::parquet::{ParquetLayout, ParquetOptions, ParquetReader};
use blip3_data::readers::shards::{ShardSplit, expand_braces, expand_shards};
use blip3_data::readers::stream::{Position, ReadScope, SampleStream};
use blip3_data::readers::webdataset::{
    CaptionOptions, GroupReader, ShardGroups, WdsReader, split_member_name,
};
use blip3_data::{BadKind, ImageSource, RawSample, Role, SampleError};
use serde_json::Value;

fn fixture(rel: &str) -> PathBuf {
    blip3_fixtures::fixture("readers").join(rel)
}

fn fixture_str(rel: &str) -> String {
    fixture(rel).display().to_string()
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixture("streams_expected.json")).expect("expected json");
    serde_json::from_str(&text).expect("valid expected json")
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .expect("array")
        .iter()
        .map(|v| v.as_str().expect("string").to_string())
        .collect()
}

fn sha1(bytes: &[u8]) -> String {
    sha1_smol::Sha1::from(bytes).digest().to_string()
}

fn image_bytes(source: &ImageSource) -> Vec<u8> {
    match source {
        ImageSource::Bytes { bytes, .. } => bytes.as_ref().clone(),
        ImageSource::Path(path) => std::fs::read(path).expect("image file"),
    }
}

/// A comparable summary of an item: `ok <file-name> <key>` or `err <kind> <file-name> <key>`.
fn summary(item: &Result<RawSample, SampleError>) -> String {
    let name = |file: &str| {
        Path::new(file)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
    };
    match item {
        Ok(sample) => format!(
            "ok {:?} {}",
            name(&sample.origin().file),
            sample.origin().key
        ),
        Err(e) => format!("err {:?} {:?} {}", e.kind, name(&e.file), e.key),
    }
}

fn wds_scope(rank: usize, world: usize) -> ReadScope {
    ReadScope::rank(rank, world).expect("valid split")
}

// ------------------------------------------------------------------------------------------------
// WebDataset
// ------------------------------------------------------------------------------------------------

#[test]
fn brace_expansion_matches_bash() {
    let braces = expected()["braces"].clone();
    let map = braces.as_object().expect("object");
    assert!(map.len() >= 10);
    for (pattern, bash) in map {
        assert_eq!(
            expand_braces(pattern).expect("expands"),
            strings(bash),
            "pattern {pattern}"
        );
    }
}

#[test]
fn shard_patterns_directories_and_wildcards() {
    let wds = fixture_str("wds");
    let braces = expand_shards(&[format!("{wds}/{{00000..00003}}.tar")]).expect("braces");
    let names: Vec<String> = braces
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["00000.tar", "00001.tar", "00002.tar", "00003.tar"]);
    // A directory lists only the tar shards: the .parquet / _stats.json files beside them and the
    // gz/ sub-directory are ignored.
    assert_eq!(expand_shards(&[&wds]).expect("dir"), braces);
    assert_eq!(
        expand_shards(&[format!("{wds}/*.tar")]).expect("glob"),
        braces
    );
    assert_eq!(
        expand_shards(&[format!("{wds}/0000?.tar")]).expect("glob"),
        braces
    );
    let list = expand_shards(&[format!("{wds}/{{00003,00000}}.tar")]).expect("list");
    assert_eq!(list, vec![braces[3].clone(), braces[0].clone()]);
    let two_patterns = expand_shards(&[
        format!("{wds}/00001.tar"),
        format!("{wds}/{{00002..00003}}.tar"),
    ])
    .unwrap();
    assert_eq!(two_patterns, braces[1..].to_vec());
    assert!(
        expand_shards(&[format!("{wds}/{{00000..00004}}.tar")]).is_err(),
        "00004 is missing"
    );
    assert!(expand_shards(&[format!("{wds}/*.nothing")]).is_err());
}

#[test]
fn member_names_split_at_first_dot_of_file_name() {
    assert_eq!(
        split_member_name("000010005.jpg"),
        Some(("000010005", "jpg"))
    );
    assert_eq!(
        split_member_name("dir/000010005.jpg"),
        Some(("dir/000010005", "jpg"))
    );
    assert_eq!(
        split_member_name("abc.page_0_image_85.tiff"),
        Some(("abc", "page_0_image_85.tiff"))
    );
    assert_eq!(split_member_name("a.b/c.d.e"), Some(("a.b/c", "d.e")));
    assert_eq!(split_member_name("noextension"), None);
    assert_eq!(split_member_name("dir/.hidden"), None);
}

#[test]
fn groups_follow_the_tar_layout() {
    let exp = expected();
    for shard in exp["wds"]["shards"].as_array().unwrap() {
        let name = shard["name"].as_str().unwrap();
        let groups = ShardGroups::open(&fixture(&format!("wds/{name}")), 7).expect("opens");
        let mut seen = Vec::new();
        let mut errors = Vec::new();
        for item in groups {
            match item {
                Ok(group) => {
                    assert_eq!(group.shard_index, 7);
                    assert_eq!(group.index as usize, seen.len());
                    let exts: Vec<String> = group.members.keys().cloned().collect();
                    seen.push((group.key.clone(), exts));
                }
                Err(e) => errors.push(e),
            }
        }
        let want: Vec<(String, Vec<String>)> = shard["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["key"].as_str().unwrap().to_string(),
                    strings(&s["members"]),
                )
            })
            .collect();
        assert_eq!(seen, want, "shard {name}");
        assert_eq!(
            errors.len(),
            usize::from(shard.get("truncated_at").is_some()),
            "shard {name}"
        );
    }
}

#[test]
fn captions_come_from_txt_or_json() {
    let exp = expected();
    let shards = exp["wds"]["shards"].as_array().unwrap();
    for shard in shards.iter().filter(|s| s.get("truncated_at").is_none()) {
        let name = shard["name"].as_str().unwrap();
        let reader = WdsReader::open(
            &[fixture_str(&format!("wds/{name}"))],
            ReadScope::default(),
            CaptionOptions::default(),
        )
        .expect("opens");
        let items: Vec<_> = reader.collect();
        let samples = shard["samples"].as_array().unwrap();
        assert_eq!(items.len(), samples.len(), "shard {name}");
        for (item, want) in items.iter().zip(samples) {
            let key = want["key"].as_str().unwrap();
            match (item, want["error"].as_str()) {
                (
                    Ok(RawSample::Caption {
                        origin,
                        image,
                        caption,
                    }),
                    None,
                ) => {
                    assert_eq!(origin.key, key);
                    assert_eq!(caption, want["caption"].as_str().unwrap());
                    let ext = want["ext"].as_str().unwrap();
                    assert!(image.describe().ends_with(&format!("{name}:{key}.{ext}")));
                    assert_eq!(
                        sha1(&image_bytes(image)),
                        want["image_sha1"].as_str().unwrap()
                    );
                }
                (Err(e), Some(kind)) => {
                    assert_eq!(format!("{:?}", e.kind), kind);
                    assert_eq!(e.key, key);
                    assert!(e.file.ends_with(name));
                }
                (other, want_error) => {
                    panic!("{key}: got {other:?}, expected error {want_error:?}")
                }
            }
        }
    }
}

#[test]
fn truncated_shard_is_reported_once_and_reading_continues() {
    let exp = expected();
    let shards = exp["wds"]["shards"].as_array().unwrap();
    let reader = WdsReader::open(
        &[fixture_str("wds")],
        ReadScope::default(),
        Default::default(),
    )
    .expect("opens");
    let items: Vec<_> = reader.collect();
    let truncations: Vec<(usize, &SampleError)> = items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| item.as_ref().err().map(|e| (i, e)))
        .filter(|(_, e)| e.kind == BadKind::TruncatedShard)
        .collect();
    assert_eq!(truncations.len(), 1);
    let (at, error) = truncations[0];
    let truncated = &shards[2];
    assert!(error.file.ends_with(truncated["name"].as_str().unwrap()));
    assert_eq!(error.key, truncated["last_key"].as_str().unwrap());
    // Everything of the complete samples is there, and the next shard's samples come after.
    let total: usize = shards
        .iter()
        .map(|s| s["samples"].as_array().unwrap().len())
        .sum();
    assert_eq!(items.len(), total + 1);
    let after: Vec<String> = items[at + 1..]
        .iter()
        .map(|item| {
            item.as_ref()
                .map(|s| s.origin().key.clone())
                .unwrap_or_default()
        })
        .collect();
    let want_after: Vec<String> = shards[3]["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(after, want_after);
}

#[test]
fn corrupt_header_is_a_truncation_error_naming_the_last_key() {
    let source = fixture("wds/00000.tar");
    // Locate the second sample's first header with the tar crate.
    let mut archive = tar::Archive::new(std::fs::File::open(&source).unwrap());
    let headers: Vec<(u64, String)> = archive
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.raw_header_position(),
                e.path().unwrap().display().to_string(),
            )
        })
        .collect();
    let first_key = split_member_name(&headers[0].1).unwrap().0.to_string();
    let (offset, _) = headers
        .iter()
        .find(|(_, name)| split_member_name(name).unwrap().0 != first_key)
        .cloned()
        .expect("a second sample");
    let mut bytes = std::fs::read(&source).unwrap();
    bytes[offset as usize + 20] ^= 0x5a; // inside the name field: the checksum no longer matches
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.tar");
    std::fs::write(&broken, &bytes).unwrap();
    let shards = vec![broken.clone(), fixture("wds/00001.tar")];
    let reader = WdsReader::from_shards(shards, ReadScope::default(), Default::default());
    let items: Vec<_> = reader.collect();
    let error = items[0].as_ref().expect_err("first item is the truncation");
    assert_eq!(error.kind, BadKind::TruncatedShard);
    assert_eq!(error.key, first_key);
    assert!(error.msg.contains("checksum"), "{}", error.msg);
    assert!(error.file.ends_with("broken.tar"));
    // The reader went on with the next shard.
    let exp = expected();
    assert_eq!(
        items.len(),
        1 + exp["wds"]["shards"][1]["samples"].as_array().unwrap().len()
    );
}

#[test]
fn ranks_read_disjoint_shards_whose_union_is_everything() {
    let all: Vec<String> = WdsReader::open(
        &[fixture_str("wds")],
        ReadScope::default(),
        Default::default(),
    )
    .unwrap()
    .map(|item| summary(&item))
    .collect();
    for world in [2, 3] {
        let mut union = Vec::new();
        let mut sets = Vec::new();
        for rank in 0..world {
            let reader = WdsReader::open(
                &[fixture_str("wds")],
                wds_scope(rank, world),
                Default::default(),
            )
            .unwrap();
            let shards: Vec<PathBuf> = reader.shards().to_vec();
            let items: Vec<_> = reader.collect();
            for item in &items {
                let file = match item {
                    Ok(s) => s.origin().file.clone(),
                    Err(e) => e.file.clone(),
                };
                let index = shards
                    .iter()
                    .position(|p| p.display().to_string() == file)
                    .unwrap();
                assert_eq!(
                    index % world,
                    rank,
                    "shard {file} read by rank {rank} of {world}"
                );
            }
            let set: BTreeSet<String> = items.iter().map(summary).collect();
            assert_eq!(set.len(), items.len());
            union.extend(items.iter().map(summary));
            sets.push(set);
        }
        for a in 0..world {
            for b in a + 1..world {
                assert!(
                    sets[a].is_disjoint(&sets[b]),
                    "ranks {a} and {b} of {world} overlap"
                );
            }
        }
        let mut want = all.clone();
        want.sort();
        union.sort();
        assert_eq!(union, want, "world {world}");
    }
    assert!(ShardSplit::new(2, 2).is_err());
}

/// Reads `k` items, saves the position, reopens there and checks that the rest is exactly what a
/// single pass yields, for every `k`.
fn check_resume<R: SampleStream>(open: impl Fn(Position) -> R) {
    let full: Vec<String> = open(Position::default()).map(|i| summary(&i)).collect();
    assert!(full.len() > 3);
    for k in 0..=full.len() {
        let mut first = open(Position::default());
        let head: Vec<String> = first.by_ref().take(k).map(|i| summary(&i)).collect();
        let saved = first.position();
        let text = serde_json::to_string(&saved).unwrap();
        let restored: Position = serde_json::from_str(&text).unwrap();
        let tail: Vec<String> = open(restored).map(|i| summary(&i)).collect();
        let mut joined = head;
        joined.extend(tail);
        assert_eq!(joined, full, "resume after {k} items at {saved:?}");
    }
}

#[test]
fn resuming_from_a_saved_position_yields_exactly_the_rest() {
    for (rank, world) in [(0, 1), (0, 2), (1, 2)] {
        check_resume(|start| {
            WdsReader::open(
                &[fixture_str("wds")],
                wds_scope(rank, world).resumed(start),
                Default::default(),
            )
            .unwrap()
        });
    }
    let groups = GroupReader::open(&[fixture_str("wds")], ReadScope::default()).unwrap();
    let positions: Vec<Position> = groups
        .scan((), |_, item| {
            Some(item.map(|g| Position::new(g.shard_index, g.index)))
        })
        .filter_map(Result::ok)
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "global order is increasing"
    );
}

#[test]
fn gzipped_shard_reads_like_the_plain_one() {
    let read = |path: &str| -> Vec<(String, String, Vec<u8>)> {
        WdsReader::open(
            &[fixture_str(path)],
            ReadScope::default(),
            Default::default(),
        )
        .unwrap()
        .map(|item| match item.unwrap() {
            RawSample::Caption {
                origin,
                image,
                caption,
            } => (origin.key, caption, image_bytes(&image)),
            other => panic!("not a caption: {other:?}"),
        })
        .collect()
    };
    let plain = read("wds/00000.tar");
    assert!(!plain.is_empty());
    assert_eq!(read("wds/gz/00000.tar.gz"), plain);
    assert_eq!(read("wds/gz"), plain, "directories list .tar.gz shards too");
}

// ------------------------------------------------------------------------------------------------
// Interleaved
// ------------------------------------------------------------------------------------------------

#[test]
fn rendering_places_markers_like_open_flamingo() {
    use DocPart::{Image, Text};
    let text = render_interleaved(&[Text("intro"), Image, Text("a"), Text("b"), Image, Image]);
    // `<image>` sits right before the text it introduces, `<|endofchunk|>` closes each chunk
    // before the next image and ends the document; consecutive texts are joined by one space.
    assert_eq!(
        text,
        "intro<image>a b<|endofchunk|><image><|endofchunk|><image><|endofchunk|>"
    );
    assert_eq!(text.matches("<image>").count(), 3);
    assert!(text.ends_with("<|endofchunk|>"));
}

fn obelics_reader(
    rule: UrlRule,
    root: &str,
    options: InterleavedOptions,
) -> InterleavedJsonlReader {
    InterleavedJsonlReader::open(
        &[fixture_str("interleaved/obelics.jsonl")],
        ReadScope::default(),
        ImageResolver::new(Some(fixture(root)), rule),
        options,
    )
    .expect("opens")
}

/// Checks the documents of obelics.jsonl against the Python expectations for `policy`.
fn check_documents(
    items: &[Result<RawSample, SampleError>],
    policy: &str,
    report_dropped: bool,
    local: &dyn Fn(&str) -> PathBuf,
) {
    let exp = expected();
    let interleaved = &exp["interleaved"];
    let docs = interleaved["policies"][policy].as_array().unwrap();
    let mut items = items.iter();
    for (n, want) in docs.iter().enumerate() {
        let dropped = want["dropped"].as_u64().unwrap() as usize;
        if report_dropped {
            for _ in 0..dropped {
                let e = items
                    .next()
                    .unwrap()
                    .as_ref()
                    .expect_err("dropped image report");
                assert_eq!(e.kind, BadKind::MissingImage, "doc {n}");
            }
        }
        let item = items.next().unwrap();
        match (item, want.get("error")) {
            (Ok(RawSample::Interleaved { text, images, .. }), None) => {
                assert_eq!(text, want["text"].as_str().unwrap(), "doc {n}");
                let paths: Vec<PathBuf> = images
                    .iter()
                    .map(|i| match i {
                        ImageSource::Path(p) => p.clone(),
                        other => panic!("doc {n}: {other:?}"),
                    })
                    .collect();
                let want_paths: Vec<PathBuf> =
                    strings(&want["images"]).iter().map(|u| local(u)).collect();
                assert_eq!(paths, want_paths, "doc {n}");
                assert_eq!(text.matches("<image>").count(), images.len());
            }
            (Err(e), Some(kind)) => assert_eq!(format!("{:?}", e.kind), kind.as_str().unwrap()),
            (other, want_error) => panic!("doc {n}: {other:?}, expected error {want_error:?}"),
        }
    }
    // The malformed record and the line that is not JSON.
    let lines: Vec<u64> = interleaved["malformed_line_numbers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    for line in lines {
        let e = items.next().unwrap().as_ref().expect_err("malformed");
        assert_eq!(e.kind, BadKind::MalformedRecord);
        assert_eq!(e.key, format!("line {line}"));
    }
    assert!(items.next().is_none());
}

#[test]
fn jsonl_documents_with_sha1_named_images() {
    let exp = expected();
    let names = exp["interleaved"]["sha1_names"].clone();
    let root = fixture("interleaved/images");
    let local = |url: &str| root.join(names[url].as_str().unwrap());
    let rule = UrlRule::Sha1 {
        extensions: vec!["png".into(), "jpg".into()],
    };
    let items: Vec<_> =
        obelics_reader(rule, "interleaved/images", InterleavedOptions::default()).collect();
    check_documents(&items, "drop_image", true, &local);
}

#[test]
fn jsonl_documents_with_basename_and_manifest_rules() {
    let exp = expected();
    let basenames = exp["interleaved"]["basenames"].clone();
    let by_name = fixture("interleaved/images_by_name");
    let local = |url: &str| by_name.join(basenames[url].as_str().unwrap());
    let options = InterleavedOptions {
        report_dropped_images: false,
        ..Default::default()
    };
    let items: Vec<_> = obelics_reader(
        UrlRule::Basename,
        "interleaved/images_by_name",
        options.clone(),
    )
    .collect();
    check_documents(&items, "drop_image", false, &local);

    let manifest = ImageResolver::load_manifest(&fixture("interleaved/manifest.tsv")).unwrap();
    let images = fixture("interleaved/images");
    let number = |url: &str| {
        basenames[url]
            .as_str()
            .unwrap()
            .replace("photo_", "manifest_")
    };
    let local = |url: &str| images.join(number(url));
    let items: Vec<_> = obelics_reader(manifest, "interleaved/images", options).collect();
    check_documents(&items, "drop_image", false, &local);
}

#[test]
fn jsonl_missing_image_policies_and_image_limit() {
    let exp = expected();
    let basenames = exp["interleaved"]["basenames"].clone();
    let by_name = fixture("interleaved/images_by_name");
    let local = |url: &str| by_name.join(basenames[url].as_str().unwrap());
    let drop_document = InterleavedOptions {
        on_missing: MissingImagePolicy::DropDocument,
        ..Default::default()
    };
    let items: Vec<_> = obelics_reader(
        UrlRule::Basename,
        "interleaved/images_by_name",
        drop_document,
    )
    .collect();
    check_documents(&items, "drop_document", false, &local);

    let unlimited = InterleavedOptions {
        max_images: 0,
        ..Default::default()
    };
    let items: Vec<_> =
        obelics_reader(UrlRule::Basename, "interleaved/images_by_name", unlimited).collect();
    check_documents(&items, "unlimited", true, &local);

    // Without a URL rule every image is missing: no document survives.
    let items: Vec<_> = obelics_reader(
        UrlRule::Unavailable,
        "interleaved/images",
        Default::default(),
    )
    .collect();
    assert!(items.iter().all(|i| i.is_err()));
    assert!(
        items
            .iter()
            .any(|i| i.as_ref().err().unwrap().kind == BadKind::MissingImage)
    );
}

#[test]
fn jsonl_resume_is_exact() {
    check_resume(|start| {
        InterleavedJsonlReader::open(
            &[fixture_str("interleaved/obelics.jsonl")],
            ReadScope::default().resumed(start),
            ImageResolver::new(
                Some(fixture("interleaved/images_by_name")),
                UrlRule::Basename,
            ),
            InterleavedOptions::default(),
        )
        .unwrap()
    });
}

#[test]
fn resume_inside_a_multi_item_record_is_exact() {
    // Documents with dropped images yield reports before the sample: positions can fall between.
    check_resume(|start| {
        InterleavedWdsReader::open(
            &[fixture_str("interleaved/mint_pdf-00000.tar")],
            ReadScope::default().resumed(start),
            ImageResolver::default(),
            InterleavedOptions::default(),
        )
        .unwrap()
    });
    check_resume(|start| {
        let options = ParquetOptions {
            resolver: ImageResolver::new(
                Some(fixture("interleaved/images_by_name")),
                UrlRule::Basename,
            ),
            batch_size: 2,
            ..ParquetOptions::new(ParquetLayout::obelics())
        };
        ParquetReader::open(
            &[fixture_str("parquet/obelics.parquet")],
            ReadScope::default().resumed(start),
            options,
        )
        .unwrap()
    });
}

#[test]
fn mint_pdf_tar_documents_use_group_members() {
    let exp = expected();
    let docs = exp["interleaved"]["mint"].as_array().unwrap();
    let reader = InterleavedWdsReader::open(
        &[fixture_str("interleaved/mint_pdf-00000.tar")],
        ReadScope::default(),
        ImageResolver::default(),
        InterleavedOptions::default(),
    )
    .unwrap();
    let mut items = reader.into_iter();
    for want in docs {
        for _ in 0..want.get("dropped").and_then(Value::as_u64).unwrap_or(0) {
            let e = items.next().unwrap().expect_err("dropped image");
            assert_eq!(e.kind, BadKind::MissingImage);
            assert_eq!(e.key, want["key"].as_str().unwrap());
        }
        match items.next().unwrap() {
            Ok(RawSample::Interleaved {
                origin,
                text,
                images,
            }) => {
                assert_eq!(origin.key, want["key"].as_str().unwrap());
                assert_eq!(text, want["text"].as_str().unwrap());
                let names: Vec<String> = images.iter().map(|i| i.describe()).collect();
                for (name, member) in names.iter().zip(strings(&want["images"])) {
                    assert!(
                        name.ends_with(&format!("mint_pdf-00000.tar:{member}")),
                        "{name}"
                    );
                }
                let digests: Vec<String> = images.iter().map(|i| sha1(&image_bytes(i))).collect();
                assert_eq!(digests, strings(&want["sha1"]));
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(items.next().is_none());
}

// ------------------------------------------------------------------------------------------------
// Parquet
// ------------------------------------------------------------------------------------------------

fn caption_options(batch_size: usize) -> ParquetOptions {
    ParquetOptions {
        id_column: Some("key".into()),
        batch_size,
        ..ParquetOptions::new(ParquetLayout::Caption {
            caption: "caption".into(),
            image: "jpg".into(),
        })
    }
}

#[test]
fn parquet_reads_row_groups_lazily_in_batches() {
    let exp = expected();
    let want = &exp["parquet"]["captions"];
    let row_groups: Vec<u64> = want["row_groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert!(row_groups.len() >= 3);
    let batch_size = 2;
    let mut reader = ParquetReader::open(
        &[fixture_str("parquet/captions.parquet")],
        ReadScope::default(),
        caption_options(batch_size),
    )
    .unwrap();
    assert_eq!(
        reader.stats().row_groups_opened,
        0,
        "nothing decoded before the first next()"
    );
    let first = reader.next().unwrap();
    assert!(first.is_ok());
    assert_eq!(reader.stats().row_groups_opened, 1);
    assert_eq!(reader.stats().batches_read, 1);
    let mut items = vec![first];
    items.extend(reader.by_ref());
    let stats = reader.stats();
    assert_eq!(stats.files_opened, 1);
    assert_eq!(stats.row_groups_opened as usize, row_groups.len());
    let batches: u64 = row_groups
        .iter()
        .map(|n| n.div_ceil(batch_size as u64))
        .sum();
    assert_eq!(stats.batches_read, batches);

    let keys = strings(&want["keys"]);
    let digests = strings(&want["image_sha1"]);
    assert_eq!(items.len(), keys.len());
    for (i, item) in items.iter().enumerate() {
        match (item, want["captions"][i].as_str()) {
            (
                Ok(RawSample::Caption {
                    origin,
                    image,
                    caption,
                }),
                Some(text),
            ) => {
                assert_eq!(origin.key, keys[i]);
                assert_eq!(caption, text);
                assert_eq!(sha1(&image_bytes(image)), digests[i]);
                assert!(image.describe().contains("captions.parquet"));
            }
            (Err(e), None) => {
                assert_eq!(e.kind, BadKind::MalformedRecord);
                assert_eq!(e.key, keys[i]);
                assert!(e.file.ends_with("captions.parquet"));
            }
            (other, text) => panic!("row {i}: {other:?} vs {text:?}"),
        }
    }
}

#[test]
fn parquet_row_group_sharding_and_resume() {
    let open = |scope: ReadScope| {
        ParquetReader::open(
            &[fixture_str("parquet/captions.parquet")],
            scope,
            caption_options(2),
        )
        .unwrap()
    };
    let all: Vec<String> = open(ReadScope::default()).map(|i| summary(&i)).collect();
    let rank0: Vec<String> = open(wds_scope(0, 2)).map(|i| summary(&i)).collect();
    let rank1: Vec<String> = open(wds_scope(1, 2)).map(|i| summary(&i)).collect();
    assert!(!rank0.is_empty() && !rank1.is_empty());
    let (set0, set1): (BTreeSet<_>, BTreeSet<_>) = (
        rank0.iter().cloned().collect(),
        rank1.iter().cloned().collect(),
    );
    assert!(set0.is_disjoint(&set1));
    let union: BTreeSet<_> = set0.union(&set1).cloned().collect();
    assert_eq!(union, all.iter().cloned().collect::<BTreeSet<_>>());
    for (rank, world) in [(0, 1), (0, 2), (1, 2)] {
        check_resume(|start| open(wds_scope(rank, world).resumed(start)));
    }
}

#[test]
fn truncated_parquet_is_an_error_naming_the_file() {
    let err = match ParquetReader::open(
        &[fixture_str("parquet/truncated.parquet")],
        ReadScope::default(),
        caption_options(4),
    ) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a truncated file must not open"),
    };
    assert!(err.contains("truncated.parquet"), "{err}");

    let files = vec![
        fixture("parquet/captions.parquet"),
        fixture("parquet/truncated.parquet"),
    ];
    let items: Vec<_> = ParquetReader::from_files(files, ReadScope::default(), caption_options(4))
        .unwrap()
        .collect();
    let last = items
        .last()
        .unwrap()
        .as_ref()
        .expect_err("truncated file reported");
    assert_eq!(last.kind, BadKind::TruncatedShard);
    assert!(last.file.ends_with("truncated.parquet"));
    let exp = expected();
    assert_eq!(
        items.len(),
        exp["parquet"]["captions"]["keys"].as_array().unwrap().len() + 1
    );

    let missing_column = ParquetOptions::new(ParquetLayout::Caption {
        caption: "no_such_column".into(),
        image: "jpg".into(),
    });
    let err = ParquetReader::open(
        &[fixture_str("parquet/captions.parquet")],
        ReadScope::default(),
        missing_column,
    )
    .err()
    .expect("missing column");
    assert!(
        err.to_string().contains("no_such_column") && err.to_string().contains("captions.parquet")
    );
}

#[test]
fn kale_urls_resolve_to_downloaded_files() {
    let exp = expected();
    let want = &exp["parquet"]["kale"];
    let options = ParquetOptions {
        resolver: ImageResolver::new(Some(fixture("parquet/kale_images")), UrlRule::Basename),
        ..ParquetOptions::new(ParquetLayout::blip3_kale())
    };
    let items: Vec<_> = ParquetReader::open(
        &[fixture_str("parquet/kale.parquet")],
        ReadScope::default(),
        options,
    )
    .unwrap()
    .collect();
    let urls = strings(&want["urls"]);
    let missing: Vec<u64> = want["missing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(items.len(), urls.len());
    for (i, item) in items.iter().enumerate() {
        if missing.contains(&(i as u64)) {
            let e = item.as_ref().expect_err("missing image");
            assert_eq!(e.kind, BadKind::MissingImage);
            assert_eq!(e.key, format!("row {i}"));
            continue;
        }
        match item {
            Ok(RawSample::Caption {
                image: ImageSource::Path(path),
                caption,
                ..
            }) => {
                assert_eq!(caption, want["captions"][i].as_str().unwrap());
                let basename = urls[i].rsplit('/').next().unwrap();
                assert_eq!(path, &fixture("parquet/kale_images").join(basename));
            }
            other => panic!("row {i}: {other:?}"),
        }
    }
}

#[test]
fn llava_next_parquet_conversations() {
    let exp = expected();
    let want = &exp["parquet"]["llava_next"];
    let options = ParquetOptions {
        id_column: Some("id".into()),
        ..ParquetOptions::new(ParquetLayout::llava_next())
    };
    let items: Vec<_> = ParquetReader::open(
        &[fixture_str("parquet/llava_next.parquet")],
        ReadScope::default(),
        options,
    )
    .unwrap()
    .collect();
    let ids = strings(&want["ids"]);
    assert_eq!(items.len(), ids.len());
    for (i, item) in items.iter().enumerate() {
        if ids[i] == want["error_id"].as_str().unwrap() {
            let e = item.as_ref().expect_err("bad role");
            assert_eq!(e.kind, BadKind::MalformedRecord);
            assert_eq!(e.key, ids[i]);
            continue;
        }
        match item {
            Ok(RawSample::Conversation {
                origin,
                images,
                turns,
            }) => {
                assert_eq!(origin.key, ids[i]);
                assert_eq!(turns.len() as u64, want["turns"][i].as_u64().unwrap());
                assert_eq!(turns[0].role, Role::User);
                assert_eq!(turns[1].role, Role::Assistant);
                assert_eq!(turns[0].text, want["first_user"][i].as_str().unwrap());
                match want["image_sha1"][i].as_str() {
                    None => assert!(images.is_empty()),
                    Some(digest) => {
                        assert_eq!(images.len(), 1);
                        assert_eq!(sha1(&image_bytes(&images[0])), digest);
                        let name = want["image_names"][i].as_str().unwrap();
                        assert!(images[0].describe().ends_with(name));
                    }
                }
            }
            other => panic!("row {i}: {other:?}"),
        }
    }
}

#[test]
fn obelics_parquet_documents() {
    let exp = expected();
    let want = exp["parquet"]["obelics"].as_array().unwrap();
    let root = fixture("interleaved/images_by_name");
    let options = ParquetOptions {
        resolver: ImageResolver::new(Some(root.clone()), UrlRule::Basename),
        batch_size: 2,
        ..ParquetOptions::new(ParquetLayout::obelics())
    };
    let items: Vec<_> = ParquetReader::open(
        &[fixture_str("parquet/obelics.parquet")],
        ReadScope::default(),
        options,
    )
    .unwrap()
    .collect();
    let mut items = items.into_iter();
    for (n, doc) in want.iter().enumerate() {
        for _ in 0..doc["dropped"].as_u64().unwrap() {
            assert_eq!(
                items.next().unwrap().unwrap_err().kind,
                BadKind::MissingImage
            );
        }
        match (items.next().unwrap(), doc.get("error")) {
            (Ok(RawSample::Interleaved { text, images, .. }), None) => {
                assert_eq!(text, doc["text"].as_str().unwrap(), "doc {n}");
                let want_paths: Vec<ImageSource> = strings(&doc["images"])
                    .iter()
                    .map(|u| {
                        let base = u.split('?').next().unwrap().rsplit('/').next().unwrap();
                        ImageSource::Path(root.join(base))
                    })
                    .collect();
                assert_eq!(images, want_paths, "doc {n}");
            }
            (Err(e), Some(kind)) => assert_eq!(format!("{:?}", e.kind), kind.as_str().unwrap()),
            (other, kind) => panic!("doc {n}: {other:?} vs {kind:?}"),
        }
    }
    assert!(items.next().is_none());
}

#[test]
fn rlaif_v_parquet_preference_pairs() {
    let exp = expected();
    let want = &exp["parquet"]["rlaif_v"];
    let options = ParquetOptions {
        id_column: Some("idx".into()),
        ..ParquetOptions::new(ParquetLayout::rlaif_v())
    };
    let items: Vec<_> = ParquetReader::open(
        &[fixture_str("parquet/rlaif_v.parquet")],
        ReadScope::default(),
        options,
    )
    .unwrap()
    .collect();
    let ids = strings(&want["idx"]);
    assert_eq!(items.len(), ids.len());
    for (i, item) in items.iter().enumerate() {
        if ids[i] == want["bad_idx"].as_str().unwrap() {
            let e = item.as_ref().expect_err("empty rejected answer");
            assert_eq!(e.kind, BadKind::MalformedRecord);
            assert_eq!(e.key, ids[i]);
            continue;
        }
        match item {
            Ok(RawSample::Preference {
                origin,
                images,
                prompt,
                chosen,
                rejected,
            }) => {
                assert_eq!(origin.key, ids[i]);
                assert_eq!(prompt.len(), 1);
                assert_eq!(prompt[0].role, Role::User);
                let question = want["question"][i].as_str().unwrap();
                assert_eq!(prompt[0].text, format!("<image>\n{question}"));
                assert_eq!(chosen, want["chosen"][i].as_str().unwrap());
                assert_eq!(rejected, want["rejected"][i].as_str().unwrap());
                assert_eq!(images.len(), 1);
                assert_eq!(
                    sha1(&image_bytes(&images[0])),
                    want["image_sha1"][i].as_str().unwrap()
                );
            }
            other => panic!("row {i}: {other:?}"),
        }
    }
}
