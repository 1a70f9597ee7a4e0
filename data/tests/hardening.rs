//! Hardening of image input and data readers (issue 9): image limits checked before decoding,
//! image paths of dataset files kept inside their root, and mixtures/loaders that stop when every
//! item is bad instead of restarting forever.

use std::fs;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use blip3_data::anyres::{ImageProcessor, ImageProcessorConfig, ResolutionMode};
use blip3_data::error::{BadKind, DataError};
use blip3_data::image::{
    DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, ImageLimits, decode_bytes, decode_bytes_with,
    decode_path, decode_path_with,
};
use blip3_data::loader::{LoaderConfig, StreamingLoader};
use blip3_data::mixture::{MixItem, Mixture, Recipe};
use blip3_data::paths::{OutsideRoot, resolve_inside};
use blip3_data::pipeline::{Pipeline, PipelineConfig, TrainSample};
use blip3_data::readers::eval_data::{ImageLocator, load_coco_captions, load_pope, load_scienceqa};
use blip3_data::readers::interleaved::{ImageResolver, UrlRule};
use blip3_data::readers::json_stream::StreamOptions;
use blip3_data::readers::llava::{ImageRoots, LlavaOptions, LlavaReader};
use blip3_data::sample::ImageSource;
use blip3_data::tokenizer::Blip3Tokenizer;
use burn::data::dataloader::DataLoader;
use burn::data::dataloader::batcher::Batcher;
use burn::prelude::*;

// ---------------------------------------------------------------------------------------------
// Helpers

/// A small PNG (`width` x `height`, RGB).
fn png(width: u32, height: u32) -> Vec<u8> {
    let image = ::image::RgbImage::from_pixel(width, height, ::image::Rgb([10, 200, 30]));
    let mut out = Cursor::new(Vec::new());
    image
        .write_to(&mut out, ::image::ImageFormat::Png)
        .expect("encode png");
    out.into_inner()
}

/// CRC-32 (IEEE) of PNG chunks.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A tiny PNG whose IHDR claims `width` x `height` (the CRC is fixed, so the header is valid).
fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    let mut bytes = png(1, 1);
    assert_eq!(&bytes[12..16], b"IHDR");
    bytes[16..20].copy_from_slice(&width.to_be_bytes());
    bytes[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = crc32(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    bytes
}

fn refused_msg(result: Result<::image::RgbImage, DataError>) -> (String, String) {
    match result {
        Err(DataError::ImageRefused { path, msg }) => (path, msg),
        Err(other) => panic!("expected a refusal, got {other}"),
        Ok(image) => panic!("expected a refusal, got a {:?} image", image.dimensions()),
    }
}

/// A passthrough batcher.
struct Samples;

impl Batcher<TrainSample, Vec<TrainSample>> for Samples {
    fn batch(&self, items: Vec<TrainSample>, _device: &Device) -> Vec<TrainSample> {
        items
    }
}

fn pipeline() -> Arc<Pipeline> {
    let config = PipelineConfig {
        image: ImageProcessorConfig {
            image_size: 32,
            mode: ResolutionMode::Fixed,
            ..ImageProcessorConfig::default()
        },
        max_len: 512,
        system_prompt: None,
        vision_tokens_per_group: 4,
    };
    Arc::new(Pipeline::new(Blip3Tokenizer::tiny().expect("tokenizer"), config).expect("pipeline"))
}

fn loader(recipe: &Recipe, config: LoaderConfig) -> StreamingLoader<Vec<TrainSample>> {
    let mixture = Mixture::open(recipe, 0, 1).expect("open mixture");
    StreamingLoader::new(
        mixture,
        pipeline(),
        Arc::new(Samples),
        Device::flex(),
        config,
    )
    .expect("loader")
}

/// A LLaVA record with one image.
fn llava_record(id: &str, image: &str) -> serde_json::Value {
    serde_json::json!({"id": id, "image": image, "conversations": [
        {"from": "human", "value": "<image>\nWhat colour?"},
        {"from": "gpt", "value": "Green."}]})
}

/// A dataset tree: `base/secret.png` outside the root `base/data/root`, which holds `ok.png`, a
/// symbolic link `escape.png` to the secret and a symbolic link `alias.png` to `ok.png`.
struct Tree {
    _dir: tempfile::TempDir,
    base: PathBuf,
    root: PathBuf,
}

fn tree() -> Tree {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().canonicalize().expect("canonical tempdir");
    let root = base.join("data/root");
    fs::create_dir_all(&root).expect("mkdir");
    fs::write(base.join("secret.png"), png(2, 2)).expect("write");
    fs::write(root.join("ok.png"), png(3, 3)).expect("write");
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(base.join("secret.png"), root.join("escape.png"))
            .expect("symlink");
        std::os::unix::fs::symlink("ok.png", root.join("alias.png")).expect("symlink");
    }
    Tree {
        _dir: dir,
        base,
        root,
    }
}

/// The hostile image paths of a dataset file, relative to a root two levels under `base`.
fn hostile(base: &Path) -> Vec<String> {
    let mut paths = vec![
        "../../secret.png".to_string(),
        base.join("secret.png").display().to_string(),
        "/proc/self/environ".to_string(),
        "../../../../../../etc/passwd".to_string(),
        "sub/../../../secret.png".to_string(),
    ];
    if cfg!(unix) {
        paths.push("escape.png".to_string());
    }
    paths
}

// ---------------------------------------------------------------------------------------------
// Image limits

#[test]
fn huge_png_header_is_refused_before_decoding() {
    let bytes = png_claiming(60_000, 60_000);
    assert!(bytes.len() < 200);
    let started = Instant::now();
    let (path, msg) = refused_msg(decode_bytes(&bytes, "huge.png"));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(path, "huge.png");
    assert!(msg.contains("60000x60000"), "{msg}");
    assert!(msg.contains(&DEFAULT_MAX_PIXELS.to_string()), "{msg}");
    assert!(msg.contains("BLIP3_MAX_IMAGE_PIXELS"), "{msg}");

    // From a file, the error names the file.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("huge.png");
    fs::write(&file, &bytes).expect("write");
    let (path, _) = refused_msg(decode_path(&file));
    assert_eq!(path, file.display().to_string());
    let shown = decode_path(&file).expect_err("refused").to_string();
    assert!(
        shown.contains("huge.png") && shown.contains("pixels"),
        "{shown}"
    );
}

#[test]
fn pixel_budget_is_configurable() {
    let bytes = png(20, 10);
    let tight = ImageLimits {
        max_pixels: 199,
        ..ImageLimits::default()
    };
    let (_, msg) = refused_msg(decode_bytes_with(&bytes, "small.png", &tight));
    assert!(
        msg.contains("20x10 = 200 pixels") && msg.contains("199"),
        "{msg}"
    );
    let exact = ImageLimits {
        max_pixels: 200,
        ..ImageLimits::default()
    };
    assert_eq!(
        decode_bytes_with(&bytes, "small.png", &exact)
            .expect("at the limit")
            .dimensions(),
        (20, 10)
    );
    // 0 disables the limit (like Pillow's MAX_IMAGE_PIXELS = None).
    let none = ImageLimits {
        max_pixels: 0,
        ..ImageLimits::default()
    };
    assert!(decode_bytes_with(&bytes, "small.png", &none).is_ok());

    // The field of the image options applies to every image the processor reads.
    let processor = ImageProcessor::new(ImageProcessorConfig {
        image_size: 32,
        mode: ResolutionMode::Fixed,
        limits: Some(tight),
        ..ImageProcessorConfig::default()
    })
    .expect("processor");
    let source = ImageSource::Bytes {
        bytes: Arc::new(bytes),
        name: "shard.tar:k.png".into(),
    };
    let e = processor.process_source(&source).expect_err("refused");
    assert!(matches!(e, DataError::ImageRefused { .. }), "{e}");
    assert!(
        e.to_string().starts_with("shard.tar:k.png: image refused"),
        "{e}"
    );
}

#[test]
fn byte_limit_is_enforced_on_files_and_blobs() {
    let bytes = png(8, 8);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("a.png");
    fs::write(&file, &bytes).expect("write");
    let limit = bytes.len() as u64 - 1;
    let tight = ImageLimits {
        max_bytes: limit,
        ..ImageLimits::default()
    };
    let (path, msg) = refused_msg(decode_path_with(&file, &tight));
    assert_eq!(path, file.display().to_string());
    assert!(msg.contains(&format!("limit of {limit} bytes")), "{msg}");
    assert!(msg.contains("BLIP3_MAX_IMAGE_BYTES"), "{msg}");
    let (_, msg) = refused_msg(decode_bytes_with(&bytes, "blob", &tight));
    assert!(msg.contains(&format!("{} bytes", bytes.len())), "{msg}");
    assert!(decode_path_with(&file, &ImageLimits::default()).is_ok());
    assert_eq!(ImageLimits::default().max_bytes, DEFAULT_MAX_BYTES);
    assert_eq!(DEFAULT_MAX_BYTES, 64 * 1024 * 1024);
    assert_eq!(DEFAULT_MAX_PIXELS, 178_956_970);
}

#[cfg(unix)]
#[test]
fn only_regular_files_are_read() {
    // /dev/zero would be read until memory runs out.
    let started = Instant::now();
    let (path, msg) = refused_msg(decode_path(Path::new("/dev/zero")));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(path, "/dev/zero");
    assert!(
        msg.contains("not a regular file") && msg.contains("character device"),
        "{msg}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let (_, msg) = refused_msg(decode_path(dir.path()));
    assert!(msg.contains("directory"), "{msg}");

    // A FIFO would block the open until a writer comes.
    let fifo = dir.path().join("pipe.png");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    if made.is_ok_and(|s| s.success()) {
        let (_, msg) = refused_msg(decode_path(&fifo));
        assert!(msg.contains("FIFO"), "{msg}");
    }
}

// ---------------------------------------------------------------------------------------------
// Image paths stay inside their root

#[test]
fn resolve_inside_refuses_every_escape() {
    let t = tree();
    for path in hostile(&t.base) {
        let e: OutsideRoot = resolve_inside(&t.root, Path::new(&path), false)
            .expect_err(&format!("{path} must be refused"));
        assert_eq!(e.root, t.root);
        let shown = e.to_string();
        assert!(shown.contains(&t.root.display().to_string()), "{shown}");
        assert!(shown.contains("outside the image root"), "{shown}");
        // The explicit opt-in accepts it, joined as written.
        assert_eq!(
            resolve_inside(&t.root, Path::new(&path), true).expect("allowed"),
            t.root.join(&path)
        );
    }
    // Inside: plain files, `..` that stays inside, links inside, files not there (yet).
    for path in [
        "ok.png",
        "sub/../ok.png",
        "./ok.png",
        "missing/new.png",
        "alias.png",
    ] {
        assert_eq!(
            resolve_inside(&t.root, Path::new(path), false).expect(path),
            t.root.join(path)
        );
    }
    let absolute_inside = t.root.join("ok.png");
    assert_eq!(
        resolve_inside(&t.root, &absolute_inside, false).expect("absolute inside"),
        absolute_inside
    );
    // A root that does not exist contains nothing outside it either.
    let nowhere = t.base.join("nowhere");
    assert!(resolve_inside(&nowhere, Path::new("a/b.png"), false).is_ok());
    assert!(resolve_inside(&nowhere, Path::new("../secret.png"), false).is_err());
    // No root: the working directory.
    assert!(resolve_inside(Path::new(""), Path::new("/etc/passwd"), false).is_err());
    assert!(resolve_inside(Path::new(""), Path::new("Cargo.toml"), false).is_ok());
}

#[test]
fn llava_reader_refuses_paths_outside_the_root() {
    let t = tree();
    let mut records = vec![llava_record("good", "ok.png")];
    for (i, path) in hostile(&t.base).iter().enumerate() {
        records.push(llava_record(&format!("bad{i}"), path));
    }
    let file = t.base.join("data/train.json");
    fs::write(&file, serde_json::to_string(&records).expect("json")).expect("write");
    let read = |allow: bool| {
        let options = LlavaOptions {
            roots: ImageRoots::new(&t.root).allowing_outside(allow),
            ..LlavaOptions::default()
        };
        LlavaReader::open(&file, options, StreamOptions::default())
            .expect("open")
            .map(|(_, r)| r)
            .collect::<Vec<_>>()
    };
    let refused = read(false);
    assert!(refused[0].is_ok());
    for item in &refused[1..] {
        let e = item.as_ref().expect_err("outside the root");
        assert_eq!(e.kind, BadKind::OutsideRoot, "{e}");
        assert!(e.to_string().contains("outside the image root"), "{e}");
    }
    // With the opt-in, the existing files outside the root are read.
    let allowed = read(true);
    assert!(allowed.iter().take(3).all(Result::is_ok), "{allowed:?}");

    // Rules: a prefix rule's directory is the root of the paths it maps.
    let roots = ImageRoots::new(&t.root).with_prefix("coco/", t.root.display().to_string());
    assert!(roots.locate("coco/ok.png").is_ok());
    assert!(roots.locate("coco/../../secret.png").is_err());
    let sub = t.root.join("sub/");
    let roots = ImageRoots::default().with_substring("SUB/", sub.display().to_string() + "/");
    assert!(roots.locate("SUB/x.png").is_ok());
    assert!(roots.locate("SUB/../../x.png").is_err());
}

/// A recipe in `dir` with one source of `kind` reading `file`, image root `data/root`.
fn one_source(dir: &Path, kind: &str, file: &str, extra: &str) -> Recipe {
    let yaml = format!(
        "seed: 1\non_exhausted: stop\nsources:\n  - {{name: s, kind: {kind}, paths: [{file}], \
         image_root: data/root, weight: 1{extra}}}\n"
    );
    Recipe::from_yaml_str(&yaml, dir, "test recipe").expect("recipe")
}

fn mixture_items(recipe: &Recipe) -> Vec<MixItem> {
    Mixture::open(recipe, 0, 1)
        .expect("open")
        .take(10_000)
        .map(|item| item.expect("no fatal error"))
        .collect()
}

fn kinds(items: &[MixItem]) -> Vec<Option<BadKind>> {
    items
        .iter()
        .map(|i| i.sample.as_ref().err().map(|e| e.kind))
        .collect()
}

#[test]
fn every_reader_refuses_paths_outside_the_root_unless_allowed() {
    let t = tree();
    let bad = hostile(&t.base);
    let lines = |make: &dyn Fn(usize, &str) -> serde_json::Value| -> String {
        std::iter::once("ok.png")
            .chain(bad.iter().map(String::as_str))
            .enumerate()
            .map(|(i, p)| make(i, p).to_string() + "\n")
            .collect()
    };
    let llava = lines(&|i, p| llava_record(&format!("r{i}"), p));
    fs::write(t.base.join("llava.jsonl"), llava).expect("write");
    let dpo = lines(&|i, p| {
        serde_json::json!({"id": format!("p{i}"), "prompt": "<image>\nWhich?", "image": p,
            "chosen": "A", "rejected": "B"})
    });
    fs::write(t.base.join("dpo.jsonl"), dpo).expect("write");
    let vlguard: Vec<serde_json::Value> = std::iter::once("ok.png")
        .chain(bad.iter().map(String::as_str))
        .enumerate()
        .map(|(i, p)| {
            serde_json::json!({"id": format!("g{i}"), "image": p, "safe": true,
                "instr-resp": [{"instruction": "Describe.", "response": "Green."}]})
        })
        .collect();
    fs::write(
        t.base.join("vlguard.json"),
        serde_json::to_string(&vlguard).expect("json"),
    )
    .expect("write");
    let docs = lines(&|i, p| {
        serde_json::json!({"id": format!("d{i}"), "texts": ["A picture.", null],
            "images": [null, p]})
    });
    fs::write(t.base.join("docs.jsonl"), docs).expect("write");

    let n = bad.len();
    for (kind, file) in [
        ("llava", "llava.jsonl"),
        ("dpo", "dpo.jsonl"),
        ("vlguard", "vlguard.json"),
    ] {
        let items = mixture_items(&one_source(&t.base, kind, file, ""));
        let got = kinds(&items);
        assert_eq!(got[0], None, "{kind}: {:?}", items[0].sample);
        assert_eq!(got.len(), n + 1, "{kind}");
        assert!(
            got[1..].iter().all(|k| *k == Some(BadKind::OutsideRoot)),
            "{kind}: {got:?}"
        );
        // The opt-in reads the files that exist outside the root.
        let allowed = mixture_items(&one_source(
            &t.base,
            kind,
            file,
            ", allow_outside_root: true",
        ));
        assert!(
            kinds(&allowed)[..3].iter().all(Option::is_none),
            "{kind}: {:?}",
            kinds(&allowed)
        );
    }

    // Interleaved documents: the refused image is reported (and the document, left without
    // images, skipped).
    let items = mixture_items(&one_source(&t.base, "jsonl_interleaved", "docs.jsonl", ""));
    let got = kinds(&items);
    assert_eq!(got[0], None);
    let refused = got
        .iter()
        .filter(|k| **k == Some(BadKind::OutsideRoot))
        .count();
    assert_eq!(refused, n, "{got:?}");
    let allowed = mixture_items(&one_source(
        &t.base,
        "jsonl_interleaved",
        "docs.jsonl",
        ", allow_outside_root: true",
    ));
    assert!(kinds(&allowed)[..3].iter().all(Option::is_none));

    // The resolver itself, as the Parquet reader uses it.
    let resolver = ImageResolver::new(Some(t.root.clone()), UrlRule::Basename);
    assert!(resolver.locate("ok.png").is_ok());
    let (kind, msg) = resolver.locate("../../secret.png").expect_err("outside");
    assert_eq!(kind, BadKind::OutsideRoot, "{msg}");
    let (kind, _) = resolver.locate("nope.png").expect_err("missing");
    assert_eq!(kind, BadKind::MissingImage);
    assert!(
        resolver
            .allowing_outside(true)
            .locate("../../secret.png")
            .is_ok()
    );
}

#[test]
fn recipes_parse_the_opt_in() {
    let dir = Path::new("/data");
    let toml = "[[sources]]\nname = \"s\"\nkind = \"llava\"\npaths = [\"a.json\"]\nweight = 1.0\n\
                image_root = \"img\"\nallow_outside_root = true\n";
    let recipe = Recipe::from_toml_str(toml, dir, "r.toml").expect("toml");
    assert!(recipe.sources[0].allow_outside_root);
    let yaml = "sources:\n  - {name: s, kind: llava, paths: a.json, weight: 1}\n";
    let recipe = Recipe::from_yaml_str(yaml, dir, "r.yaml").expect("yaml");
    assert!(!recipe.sources[0].allow_outside_root);
    let yaml = "allow_outside_root: true\nimage_root: img\ndata_path:\n  a.json: 3\n";
    let recipe = Recipe::from_yaml_str(yaml, dir, "r.yaml").expect("yaml");
    assert!(recipe.sources[0].allow_outside_root);
}

#[test]
fn eval_sets_refuse_images_outside_their_directory() {
    let t = tree();
    let pope: String = ["ok.png", "../../secret.png", "/etc/passwd"]
        .iter()
        .enumerate()
        .map(|(i, p)| {
            serde_json::json!({"question_id": i, "image": p, "text": "Is there a cat?",
                "label": "no"})
            .to_string()
                + "\n"
        })
        .collect();
    let file = t.base.join("pope.jsonl");
    fs::write(&file, pope).expect("write");
    let loaded = load_pope(&file, &t.root, None).expect("load");
    assert_eq!(loaded.items.len(), 1);
    assert_eq!(loaded.problems.len(), 2);
    assert!(
        loaded
            .problems
            .iter()
            .all(|p| p.kind == BadKind::OutsideRoot)
    );

    let coco = serde_json::json!({
        "images": [{"id": 1, "file_name": "ok.png"}, {"id": 2, "file_name": "../../secret.png"},
                   {"id": 3, "file_name": "escape.png"}],
        "annotations": [{"image_id": 1, "caption": "a"}, {"image_id": 2, "caption": "b"},
                        {"image_id": 3, "caption": "c"}]});
    let file = t.base.join("captions.json");
    fs::write(&file, coco.to_string()).expect("write");
    let locator = ImageLocator::new(&t.root, "{id}.jpg").expect("locator");
    let loaded = load_coco_captions(&file, Some(&locator)).expect("load");
    assert_eq!(loaded.items.len(), 1);
    assert_eq!(loaded.items[0].image, Some(t.root.join("ok.png")));
    let expected = if cfg!(unix) { 2 } else { 1 };
    assert_eq!(loaded.problems.len(), expected, "{:?}", loaded.problems);
    assert!(
        loaded
            .problems
            .iter()
            .all(|p| p.kind == BadKind::OutsideRoot)
    );
    // Ids are file names too.
    let hostile_id = blip3_data::readers::eval_data::Id::Str("../../secret".into());
    assert!(locator.locate_inside(&hostile_id).is_err());

    let sqa = serde_json::json!([
        {"id": "a", "question": "q", "choices": ["x", "y"], "answer": 0, "image": "ok.png"},
        {"id": "b", "question": "q", "choices": ["x", "y"], "answer": 0,
         "image": "/proc/self/environ"},
        {"id": "c", "question": "q", "choices": ["x", "y"], "answer": 0,
         "image": "../../../../../../etc/passwd"}]);
    let file = t.base.join("sqa.json");
    fs::write(&file, sqa.to_string()).expect("write");
    let loaded = load_scienceqa(&file, Some(&t.root)).expect("load");
    assert_eq!(loaded.items.len(), 1);
    assert_eq!(loaded.problems.len(), 2);
    assert!(
        loaded
            .problems
            .iter()
            .all(|p| p.kind == BadKind::OutsideRoot)
    );
}

// ---------------------------------------------------------------------------------------------
// Streams whose items are all bad end

/// Deterministic pseudo-random bytes.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (x >> 56) as u8
        })
        .collect()
}

/// A one-member tar (`k.png`, `k.txt`) whose first header block is replaced by noise.
fn tar_with_corrupt_first_header() -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, data) in [("k.png", png(4, 4)), ("k.txt", b"a caption".to_vec())] {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, name, data.as_slice())
            .expect("append");
    }
    let mut bytes = builder.into_inner().expect("tar");
    bytes[..512].copy_from_slice(&noise(512, 9));
    bytes
}

fn webdataset_recipe(dir: &Path, shard: &[u8], policy: &str) -> Recipe {
    fs::write(dir.join("shard-0000.tar"), shard).expect("write");
    let yaml = format!(
        "on_exhausted: {policy}\nsources:\n  - {{name: bad, kind: webdataset, \
         paths: [shard-0000.tar], weight: 1}}\n"
    );
    Recipe::from_yaml_str(&yaml, dir, "test recipe").expect("recipe")
}

#[test]
fn a_source_of_only_bad_items_is_not_restarted_forever() {
    for (what, shard) in [
        ("random bytes", noise(10_000, 1)),
        ("corrupt first header", tar_with_corrupt_first_header()),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let recipe = webdataset_recipe(dir.path(), &shard, "restart");
        let items: Vec<_> = Mixture::open(&recipe, 0, 1)
            .expect("open")
            .take(100_000)
            .collect();
        assert!(items.len() < 100, "{what}: {} items", items.len());
        assert!(
            items
                .iter()
                .all(|i| i.as_ref().is_ok_and(|i| i.sample.is_err())),
            "{what}: {items:?}"
        );

        // The loader stops with the 100% bad rate, whatever rate it tolerates.
        let config = LoaderConfig {
            max_bad_rate: 1.0,
            num_workers: 1,
            ..LoaderConfig::new(1, 10)
        };
        let l = loader(&recipe, config);
        let results: Vec<_> = l.iter().collect();
        assert_eq!(results.len(), 1, "{what}");
        let e = match &results[0] {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{what}: expected an error"),
        };
        assert!(e.contains("bad-sample rate 100%"), "{what}: {e}");
        assert_eq!(l.stats().good, 0);
    }
}

#[test]
fn a_count_mode_epoch_of_only_bad_items_is_not_restarted_forever() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("bad.jsonl"), "1\n[2]\n\"three\"\n").expect("write");
    let yaml = "sources:\n  - {name: bad, kind: llava, paths: bad.jsonl, samples: 5}\n";
    let recipe = Recipe::from_yaml_str(yaml, dir.path(), "test recipe").expect("recipe");
    let items: Vec<_> = Mixture::open(&recipe, 0, 1)
        .expect("open")
        .take(10_000)
        .collect();
    assert_eq!(items.len(), 5, "one epoch, then the mixture stops");
}

#[test]
fn with_limit_ends_an_endless_mixture() {
    let t = tree();
    let records = serde_json::to_string(&[llava_record("a", "ok.png")]).expect("json");
    fs::write(t.base.join("one.json"), records).expect("write");
    let mut recipe = one_source(&t.base, "llava", "one.json", "");
    recipe.on_exhausted = blip3_data::mixture::Exhausted::Restart;
    let endless = Mixture::open(&recipe, 0, 1).expect("open").take(50).count();
    assert_eq!(endless, 50);
    let limited = Mixture::open(&recipe, 0, 1)
        .expect("open")
        .with_limit(7)
        .take(50)
        .count();
    assert_eq!(limited, 7);
}

// ---------------------------------------------------------------------------------------------
// Repeated warnings are logged once, with a count

struct Capture(Mutex<Vec<String>>);

impl log::Log for Capture {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Warn
    }
    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata())
            && let Ok(mut lines) = self.0.lock()
        {
            lines.push(record.args().to_string());
        }
    }
    fn flush(&self) {}
}

fn captured() -> &'static Capture {
    static CAPTURE: OnceLock<&'static Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let capture: &'static Capture = Box::leak(Box::new(Capture(Mutex::new(Vec::new()))));
        let _ = log::set_logger(capture);
        log::set_max_level(log::LevelFilter::Warn);
        capture
    })
}

#[test]
fn a_bad_record_read_every_epoch_is_logged_once_with_a_count() {
    let capture = captured();
    let t = tree();
    // Each epoch: one malformed record, then one good sample.
    fs::write(
        t.base.join("repeat.jsonl"),
        format!("42\n{}\n", llava_record("good", "ok.png")),
    )
    .expect("write");
    let mut recipe = one_source(&t.base, "llava", "repeat.jsonl", "");
    recipe.on_exhausted = blip3_data::mixture::Exhausted::Restart;
    let config = LoaderConfig {
        max_bad_rate: 1.0,
        num_workers: 0,
        ..LoaderConfig::new(1, 30)
    };
    let l = loader(&recipe, config);
    let batches: Vec<_> = l.iter().collect();
    assert_eq!(batches.len(), 30);
    let bad = l.stats().bad;
    assert!(bad >= 30, "{bad}");
    drop(l);
    let lines: Vec<String> = capture
        .0
        .lock()
        .expect("lock")
        .iter()
        .filter(|l| l.contains("repeat.jsonl"))
        .cloned()
        .collect();
    let plain = lines.iter().filter(|l| !l.contains("repeated")).count();
    assert_eq!(plain, 1, "{lines:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("(repeated {} more times)", bad - 1))),
        "{lines:#?}"
    );
}
