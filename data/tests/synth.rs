//! Tests of the synthetic corpus: determinism, the manifest, every layout parsed as its format,
//! held-out images, answer balance, answers that need the image, and vocabulary coverage.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use base64::Engine as _;
use blip3_data::synth::{CorpusManifest, SynthConfig, render_vocabulary, write_corpus};
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Shared corpora (written once per test run).

/// Writes `cfg` into a fresh directory under the cargo test temp dir.
fn fresh(name: &str, cfg: &SynthConfig) -> (PathBuf, CorpusManifest) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = fs::remove_dir_all(&dir);
    let m = write_corpus(&dir, cfg).unwrap();
    (dir, m)
}

/// The `tiny` preset, seed 11.
fn tiny() -> &'static (PathBuf, CorpusManifest) {
    static S: OnceLock<(PathBuf, CorpusManifest)> = OnceLock::new();
    S.get_or_init(|| fresh("synth-tiny", &SynthConfig::tiny().with_seed(11)))
}

/// A corpus with many SFT rows and evaluation questions only, for statistics.
fn medium() -> &'static (PathBuf, CorpusManifest) {
    static S: OnceLock<(PathBuf, CorpusManifest)> = OnceLock::new();
    S.get_or_init(|| {
        let cfg = SynthConfig {
            caption_samples: 0,
            interleaved_docs: 0,
            sft_single: 700,
            sft_multi: 120,
            sft_text_only: 0,
            dpo_pairs: 0,
            vlfeedback_rows: 0,
            safety_train: 60,
            safety_test: 0,
            eval_images: 400,
            pope_images: 40,
            mmbench_questions: 120,
            ..SynthConfig::tiny().with_seed(5)
        };
        fresh("synth-medium", &cfg)
    })
}

// ---------------------------------------------------------------------------------------------
// Helpers.

fn read(root: &Path, rel: &str) -> Vec<u8> {
    fs::read(root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn json(root: &Path, rel: &str) -> Value {
    serde_json::from_slice(&read(root, rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn jsonl(root: &Path, rel: &str) -> Vec<Value> {
    let text = String::from_utf8(read(root, rel)).unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{rel}: {e}: {l}")))
        .collect()
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is not a string in {v}"))
}

/// All files under `dir`, as `/`-separated relative paths.
fn walk(dir: &Path) -> BTreeSet<String> {
    fn go(base: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                go(base, &p, out);
            } else {
                let rel = p.strip_prefix(base).unwrap();
                out.insert(
                    rel.components()
                        .map(|c| c.as_os_str().to_string_lossy())
                        .collect::<Vec<_>>()
                        .join("/"),
                );
            }
        }
    }
    let mut out = BTreeSet::new();
    go(dir, dir, &mut out);
    out
}

/// FNV-1a 64, written independently of the library.
fn fnv(bytes: &[u8]) -> String {
    let mut h: u64 = 14_695_981_039_346_656_037;
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(1_099_511_628_211);
    }
    format!("{h:016x}")
}

fn decode(bytes: &[u8], what: &str) -> image::RgbImage {
    image::load_from_memory(bytes)
        .unwrap_or_else(|e| panic!("{what}: {e}"))
        .to_rgb8()
}

/// A hash of decoded pixels (so that the same picture in two encodings would collide).
fn pixel_hash(img: &image::RgbImage) -> String {
    let mut b = img.width().to_le_bytes().to_vec();
    b.extend(img.height().to_le_bytes());
    // Coarse quantisation: JPEG noise of identical pictures stays inside one bucket mostly,
    // and distinct pictures still differ in many buckets.
    b.extend(img.as_raw().iter().map(|v| v / 32));
    fnv(&b)
}

/// Tar members in order: (name, bytes).
fn tar_members(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut ar = tar::Archive::new(bytes);
    let mut out = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.push((name, data));
    }
    out
}

/// The LLaVA question text without the image marker and the short-answer suffix.
fn bare_question(v: &str) -> String {
    v.replace("<image>\n", "")
        .replace("\nAnswer the question using a single word or phrase.", "")
        .trim()
        .to_string()
}

const COLORS: [&str; 8] = [
    "red", "green", "blue", "yellow", "orange", "purple", "pink", "black",
];
const SHAPES: [&str; 7] = [
    "circle", "square", "triangle", "cross", "ring", "star", "diamond",
];

fn plural(shape: &str) -> String {
    if shape == "cross" {
        "crosses".into()
    } else {
        format!("{shape}s")
    }
}

/// The question with colour and shape words replaced by placeholders.
fn template(q: &str) -> String {
    q.trim_end_matches('?')
        .split(' ')
        .map(|w| {
            if COLORS.contains(&w) {
                "{color}".to_string()
            } else if SHAPES.contains(&w) || SHAPES.iter().any(|s| plural(s) == w) {
                "{shape}".to_string()
            } else {
                w.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Answers a question from a ground-truth scene (independently of the library's logic).
fn answer_from_scene(q: &str, scene: &Value) -> Option<String> {
    let objects = scene["objects"].as_array().unwrap();
    let with_shape = |sh: &str| {
        objects
            .iter()
            .filter(|o| o["shape"] == sh)
            .collect::<Vec<_>>()
    };
    let words: Vec<&str> = q.trim_end_matches('?').split(' ').collect();
    let the_shape = |sh: &str| {
        let v = with_shape(sh);
        assert_eq!(v.len(), 1, "{q} asked about a shape that is not unique");
        v[0].clone()
    };
    Some(match words.as_slice() {
        ["What", "color", "is", "the", sh] => s(&the_shape(sh), "color").to_string(),
        ["How", "many", pl, "are", "there"] => {
            let sh = SHAPES.iter().find(|s| plural(s) == *pl).unwrap();
            with_shape(sh).len().to_string()
        }
        ["Is", "there", _, c, sh, "in", "the", "image"] => {
            let yes = objects
                .iter()
                .any(|o| o["shape"] == *sh && o["color"] == *c);
            (if yes { "yes" } else { "no" }).to_string()
        }
        ["What", "shape", "is", "the", c, "object"] => {
            let v: Vec<_> = objects.iter().filter(|o| o["color"] == *c).collect();
            assert_eq!(v.len(), 1, "{q}");
            s(v[0], "shape").to_string()
        }
        ["Which", "side", "of", "the", "image", "is", "the", sh, "on"] => {
            s(&the_shape(sh), "position")
                .split(' ')
                .nth(1)
                .unwrap()
                .to_string()
        }
        ["Is", "the", sh, "at", "the", "top", "or", "the", "bottom"] => {
            s(&the_shape(sh), "position")
                .split(' ')
                .next()
                .unwrap()
                .to_string()
        }
        ["Where", "is", "the", sh] => s(&the_shape(sh), "position").to_string(),
        ["What", "does", "the", "text", "say"] => s(&scene["label"], "text").to_string(),
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// Determinism.

#[test]
fn same_seed_gives_identical_bytes_and_other_seeds_differ() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let c = tempfile::tempdir().unwrap();
    let cfg = SynthConfig::tiny().with_seed(7);
    let ma = write_corpus(a.path(), &cfg).unwrap();
    let mb = write_corpus(b.path(), &cfg).unwrap();
    assert_eq!(ma, mb);
    let fa = walk(a.path());
    assert_eq!(fa, walk(b.path()));
    for rel in &fa {
        assert!(
            read(a.path(), rel) == read(b.path(), rel),
            "{rel} differs between two writes"
        );
    }

    let mc = write_corpus(c.path(), &SynthConfig::tiny().with_seed(8)).unwrap();
    let fc = walk(c.path());
    let common: Vec<&String> = fa.intersection(&fc).collect();
    assert!(common.len() * 2 > fa.len(), "the layouts overlap");
    let differing = common
        .iter()
        .filter(|rel| read(a.path(), rel) != read(c.path(), rel))
        .count();
    // Every data file and image depends on the seed.
    assert_eq!(
        differing,
        common.len(),
        "{differing} of {} common files differ",
        common.len()
    );
    assert_ne!(ma.files, mc.files);

    // Parts draw from separate streams: resizing the training parts leaves the eval part alone.
    let d = tempfile::tempdir().unwrap();
    let cfg_d = SynthConfig {
        sft_single: 5,
        caption_samples: 3,
        dpo_pairs: 2,
        vlfeedback_rows: 1,
        ..cfg
    };
    write_corpus(d.path(), &cfg_d).unwrap();
    for rel in fa.iter().filter(|r| r.starts_with("eval/")) {
        assert!(
            read(a.path(), rel) == read(d.path(), rel),
            "{rel} changed with training counts"
        );
    }
}

#[test]
fn rewriting_replaces_an_earlier_corpus_and_refuses_foreign_dirs() {
    let dir = tempfile::tempdir().unwrap();
    let big = SynthConfig {
        caption_samples: 30,
        shard_size: 10,
        ..SynthConfig::tiny()
    };
    write_corpus(dir.path(), &big).unwrap();
    assert!(
        dir.path()
            .join("pretrain/captions/shard-00002.tar")
            .is_file()
    );
    let small = SynthConfig {
        caption_samples: 5,
        ..big
    };
    let m = write_corpus(dir.path(), &small).unwrap();
    assert!(
        !dir.path()
            .join("pretrain/captions/shard-00002.tar")
            .exists()
    );
    let mut listed: BTreeSet<String> = m.files.iter().map(|f| f.path.clone()).collect();
    listed.insert("manifest.json".into());
    assert_eq!(walk(dir.path()), listed, "no stale file survives");

    let foreign = tempfile::tempdir().unwrap();
    fs::write(foreign.path().join("notes.txt"), "mine").unwrap();
    let err = write_corpus(foreign.path(), &SynthConfig::tiny()).unwrap_err();
    assert!(err.to_string().contains("neither empty"), "{err}");
    assert!(foreign.path().join("notes.txt").is_file());
}

// ---------------------------------------------------------------------------------------------
// Configuration.

#[test]
fn config_presets_serde_and_validation() {
    assert_eq!(SynthConfig::preset("tiny").unwrap(), SynthConfig::tiny());
    assert_eq!(
        SynthConfig::preset("default").unwrap(),
        SynthConfig::default()
    );
    assert!(SynthConfig::preset("huge").is_err());
    let d = SynthConfig::default();
    let t = SynthConfig::tiny();
    assert!(d.sft_single >= 1000 && d.caption_samples >= 1000 && t.sft_single < d.sft_single);

    let text = serde_json::to_string(&t).unwrap();
    assert_eq!(serde_json::from_str::<SynthConfig>(&text).unwrap(), t);
    let partial: SynthConfig = serde_json::from_str(r#"{"seed": 3, "eval_images": 9}"#).unwrap();
    assert_eq!(
        partial,
        SynthConfig {
            seed: 3,
            eval_images: 9,
            ..SynthConfig::default()
        }
    );
    assert!(serde_json::from_str::<SynthConfig>(r#"{"sede": 3}"#).is_err());

    let dir = tempfile::tempdir().unwrap();
    let bad = [
        SynthConfig {
            min_side: 8,
            ..t.clone()
        },
        SynthConfig {
            max_side: 40,
            ..t.clone()
        },
        SynthConfig {
            shard_size: 0,
            ..t.clone()
        },
        SynthConfig {
            shard_size: 20_000,
            ..t.clone()
        },
        SynthConfig {
            jpeg_quality: 0,
            ..t.clone()
        },
        SynthConfig {
            vlfeedback_rows: 100,
            dpo_pairs: 3,
            ..t.clone()
        },
    ];
    for cfg in bad {
        assert!(cfg.validate().is_err(), "{cfg:?}");
        assert!(write_corpus(dir.path(), &cfg).is_err());
    }
    assert_eq!(
        walk(dir.path()).len(),
        0,
        "a rejected configuration writes nothing"
    );
}

// ---------------------------------------------------------------------------------------------
// Manifest.

#[test]
fn manifest_lists_every_file_with_size_and_checksum() {
    let (root, m) = tiny();
    assert_eq!(m.format, "blip3-synth-corpus");
    assert_eq!(m.seed, 11);
    assert_eq!(m.config, SynthConfig::tiny().with_seed(11));
    assert_eq!(
        &CorpusManifest::load(&root.join("manifest.json")).unwrap(),
        m
    );
    let listed: BTreeSet<String> = m.files.iter().map(|f| f.path.clone()).collect();
    let mut on_disk = walk(root);
    assert!(on_disk.remove("manifest.json"));
    assert_eq!(listed, on_disk);
    let paths: Vec<&String> = m.files.iter().map(|f| &f.path).collect();
    assert!(paths.windows(2).all(|w| w[0] < w[1]), "files sorted");
    for f in &m.files {
        let bytes = read(root, &f.path);
        assert_eq!(bytes.len() as u64, f.bytes, "{}", f.path);
        assert_eq!(fnv(&bytes), f.fnv1a64, "{}", f.path);
    }
    for d in &m.datasets {
        for file in &d.files {
            assert!(listed.contains(file), "{} lists missing {file}", d.name);
        }
    }
    let names: Vec<&str> = m.datasets.iter().map(|d| d.name.as_str()).collect();
    for want in [
        "pretrain/captions",
        "pretrain/interleaved",
        "sft/llava",
        "sft/multi_image",
        "dpo/pairs",
        "dpo/vlfeedback",
        "safety/train",
        "safety/test",
        "eval/captions",
        "eval/vqav2",
        "eval/pope_random",
        "eval/pope_adversarial",
        "eval/mmbench",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Formats.

#[test]
fn caption_shards_follow_img2dataset() {
    let (root, m) = tiny();
    let d = m.dataset("pretrain/captions").unwrap();
    let cfg = &m.config;
    assert_eq!(d.files.len(), cfg.caption_samples.div_ceil(cfg.shard_size));
    let mut samples = 0;
    let mut exts = BTreeSet::new();
    for (si, file) in d.files.iter().enumerate() {
        assert_eq!(file, &format!("pretrain/captions/shard-{si:05}.tar"));
        let members = tar_members(&read(root, file));
        assert!(members.len().is_multiple_of(3));
        for chunk in members.chunks(3) {
            let (img_name, img) = &chunk[0];
            let (key, ext) = img_name.split_once('.').unwrap();
            exts.insert(ext.to_string());
            assert!(ext == "jpg" || ext == "png", "{img_name}");
            assert_eq!(key.len(), 9, "{key}");
            let k: usize = key.parse().unwrap();
            assert_eq!(k / 10_000, si, "key {key} in shard {si}");
            assert_eq!(chunk[1].0, format!("{key}.txt"));
            assert_eq!(chunk[2].0, format!("{key}.json"));
            let caption = String::from_utf8(chunk[1].1.clone()).unwrap();
            let meta: Value = serde_json::from_slice(&chunk[2].1).unwrap();
            assert!(
                String::from_utf8_lossy(&chunk[2].1).contains("\n    \"url\""),
                "indent 4"
            );
            assert_eq!(s(&meta, "caption"), caption);
            assert_eq!(s(&meta, "key"), key);
            assert_eq!(s(&meta, "status"), "success");
            assert!(meta["error_message"].is_null());
            assert!(s(&meta, "url").ends_with(img_name.as_str()));
            let im = decode(img, img_name);
            assert_eq!(meta["width"], im.width());
            assert_eq!(meta["height"], im.height());
            assert_eq!(meta["original_width"], im.width());
            assert_eq!(meta["original_height"], im.height());
            assert!(!caption.is_empty() && caption.ends_with('.'));
            samples += 1;
        }
    }
    assert_eq!(samples, cfg.caption_samples);
    assert_eq!(d.records, samples);
    assert_eq!(exts, BTreeSet::from(["jpg".to_string(), "png".to_string()]));
}

#[test]
fn interleaved_documents_follow_obelics() {
    let (root, m) = tiny();
    let d = m.dataset("pretrain/interleaved").unwrap();
    let base = root.join(d.image_root.as_ref().unwrap());
    let docs = jsonl(root, &d.files[0]);
    assert_eq!(docs.len(), m.config.interleaved_docs);
    let mut images = 0;
    for doc in &docs {
        let texts = doc["texts"].as_array().unwrap();
        let imgs = doc["images"].as_array().unwrap();
        assert_eq!(texts.len(), imgs.len());
        let meta: Vec<Value> = serde_json::from_str(s(doc, "metadata")).unwrap();
        assert_eq!(meta.len(), imgs.len());
        let general: Value = serde_json::from_str(s(doc, "general_metadata")).unwrap();
        assert!(general["url"].is_string());
        let mut n = 0;
        for i in 0..texts.len() {
            assert!(
                texts[i].is_null() != imgs[i].is_null(),
                "exactly one non-null at {i}: {doc}"
            );
            if let Some(p) = imgs[i].as_str() {
                n += 1;
                assert!(p.starts_with("images/"));
                let im = decode(&fs::read(base.join(p)).unwrap(), p);
                assert_eq!(meta[i]["original_width"], im.width());
                // The text right after an image describes it.
                assert!(texts.get(i + 1).is_some_and(|t| t.is_string()), "{doc}");
            } else {
                assert!(meta[i].is_null());
            }
        }
        assert!((2..=3).contains(&n), "{n} images");
        images += n;
    }
    assert_eq!(images, d.images);
}

/// Checks LLaVA conversations: alternating turns from human, `<image>` markers as expected.
fn check_conversation(row: &Value, images: usize) {
    let conv = row["conversations"].as_array().unwrap();
    assert!(conv.len() >= 2 && conv.len().is_multiple_of(2), "{row}");
    let mut markers = 0;
    for (i, turn) in conv.iter().enumerate() {
        assert_eq!(s(turn, "from"), if i % 2 == 0 { "human" } else { "gpt" });
        let v = s(turn, "value");
        assert!(!v.trim().is_empty());
        markers += v.matches("<image>").count();
        if i > 0 {
            assert!(
                !v.contains("<image>"),
                "markers only in the first turn: {row}"
            );
        }
    }
    assert_eq!(markers, images, "{row}");
}

#[test]
fn sft_files_follow_llava_and_m4() {
    let (root, m) = tiny();
    let sft = root.join("sft");
    let rows = json(root, "sft/llava.json");
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), m.dataset("sft/llava").unwrap().records);
    let mut text_only = 0;
    let mut multi_turn = 0;
    let mut ids = BTreeSet::new();
    for row in rows {
        assert!(ids.insert(s(row, "id").to_string()), "duplicate id");
        match row.get("image") {
            Some(p) => {
                let p = p.as_str().unwrap();
                decode(&fs::read(sft.join(p)).unwrap(), p);
                check_conversation(row, 1);
                assert!(s(&row["conversations"][0], "value").starts_with("<image>\n"));
            }
            None => {
                text_only += 1;
                check_conversation(row, 0);
            }
        }
        multi_turn += usize::from(row["conversations"].as_array().unwrap().len() > 2);
    }
    assert_eq!(text_only, m.config.sft_text_only);
    assert!(
        multi_turn * 2 > rows.len(),
        "most conversations are multi-turn"
    );
    // Text-only rows are mixed in, not appended.
    let first_text = rows.iter().position(|r| r.get("image").is_none()).unwrap();
    assert!(first_text < rows.len() - text_only);

    let multi = json(root, "sft/multi_image.json");
    let multi = multi.as_array().unwrap();
    assert_eq!(multi.len(), m.config.sft_multi);
    for row in multi {
        let imgs = row["image"].as_array().unwrap();
        assert_eq!(imgs.len(), 2);
        for p in imgs {
            let p = p.as_str().unwrap();
            decode(&fs::read(sft.join(p)).unwrap(), p);
        }
        check_conversation(row, 2);
        assert_eq!(row["metadata"]["num_images"], 2);
        let answer = s(&row["conversations"][1], "value");
        assert!(
            ["first", "second", "yes", "no"].contains(&answer),
            "{answer}"
        );
    }
}

#[test]
fn preference_files_follow_dpo_and_vlfeedback() {
    let (root, m) = tiny();
    let dpo = root.join("dpo");
    let pairs = jsonl(root, "dpo/pairs.jsonl");
    assert_eq!(pairs.len(), m.config.dpo_pairs);
    let scenes: BTreeMap<String, Value> = jsonl(root, "dpo/scenes.jsonl")
        .into_iter()
        .map(|r| (s(&r, "image").to_string(), r["scene"].clone()))
        .collect();
    for p in &pairs {
        for key in ["id", "prompt", "image", "chosen", "rejected"] {
            assert!(p[key].is_string(), "{key} in {p}");
        }
        assert_ne!(s(p, "chosen"), s(p, "rejected"));
        let img = s(p, "image");
        decode(&fs::read(dpo.join(img)).unwrap(), img);
        // The rejected answer names a colour-shape pair that the image lacks; the chosen one
        // names only pairs it has.
        let scene = &scenes[img];
        let has = |c: &str, sh: &str| {
            scene["objects"]
                .as_array()
                .unwrap()
                .iter()
                .any(|o| o["color"] == c && o["shape"] == sh)
        };
        let named = |text: &str| {
            let words: Vec<String> = text
                .to_lowercase()
                .split(|c: char| !c.is_alphanumeric())
                .map(String::from)
                .collect();
            let mut out = Vec::new();
            for w in words.windows(2) {
                if let Some(sh) = SHAPES.iter().find(|s| **s == w[1] || plural(s) == w[1])
                    && COLORS.contains(&w[0].as_str())
                {
                    out.push((w[0].clone(), sh.to_string()));
                }
            }
            out
        };
        let chosen_text = s(p, "chosen");
        if !chosen_text.starts_with("No,") {
            assert!(named(chosen_text).iter().all(|(c, sh)| has(c, sh)), "{p}");
        }
        assert!(
            named(s(p, "rejected")).iter().any(|(c, sh)| !has(c, sh)),
            "{p}"
        );
    }

    let fb = json(root, "dpo/vlfeedback.json");
    let fb = fb.as_array().unwrap();
    assert_eq!(fb.len(), m.config.vlfeedback_rows);
    let mut saw_na = false;
    for (row, pair) in fb.iter().zip(&pairs) {
        let comps = row["completions"].as_array().unwrap();
        let models: Vec<&str> = row["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(comps.len(), models.len());
        assert_eq!(s(row, "img_path"), s(pair, "image"));
        assert_eq!(s(row, "prompt"), s(pair, "prompt"));
        // The official recipe: mean of the parsable ratings; a completion with an unparsable
        // rating is left out of pairs. The best mean must be the pair's chosen answer.
        let mut best: Option<(f64, &str)> = None;
        for c in comps {
            assert!(models.contains(&s(c, "model")));
            let mut sum = 0.0;
            let mut n = 0.0;
            let mut parsable = true;
            for (_aspect, r) in c["annotations"].as_object().unwrap() {
                let rating = s(r, "Rating");
                match rating.parse::<f64>() {
                    Ok(v) => {
                        sum += v;
                        n += 1.0;
                    }
                    Err(_) => {
                        assert_eq!(rating, "N/A");
                        parsable = false;
                        saw_na = true;
                    }
                }
            }
            if parsable && best.is_none_or(|b| sum / n > b.0) {
                best = Some((sum / n, s(c, "response")));
            }
        }
        let chosen_present = comps.iter().any(|c| s(c, "response") == s(pair, "chosen"));
        assert!(chosen_present);
        if let Some((_, response)) = best
            && comps
                .iter()
                .all(|c| c["annotations"]["Ethical Considerations"]["Rating"] != "N/A")
        {
            assert_eq!(response, s(pair, "chosen"), "{row}");
        }
    }
    assert!(saw_na, "some ratings are N/A, as in the real data");
}

#[test]
fn safety_files_follow_vlguard() {
    let (root, m) = tiny();
    let categories = ["privacy", "risky behavior", "deception", "hateful speech"];
    for (split, n) in [
        ("train", m.config.safety_train),
        ("test", m.config.safety_test),
    ] {
        let rows = json(root, &format!("safety/{split}.json"));
        let rows = rows.as_array().unwrap();
        assert_eq!(rows.len(), n);
        for row in rows {
            let img = s(row, "image");
            decode(&fs::read(root.join("safety").join(img)).unwrap(), img);
            let ir = row["instr-resp"].as_array().unwrap();
            if row["safe"].as_bool().unwrap() {
                assert!(
                    row.get("harmful_category").is_none()
                        && row.get("harmful_subcategory").is_none()
                );
                assert_eq!(ir.len(), 2);
                assert!(ir[0]["safe_instruction"].is_string());
                assert_ne!(s(&ir[0], "response"), "I'm sorry, I cannot help with that.");
                assert!(ir[1]["unsafe_instruction"].is_string());
                assert_eq!(s(&ir[1], "response"), "I'm sorry, I cannot help with that.");
            } else {
                assert!(categories.contains(&s(row, "harmful_category")));
                assert!(row["harmful_subcategory"].is_string());
                assert_eq!(ir.len(), 1);
                assert!(ir[0]["instruction"].is_string());
                assert_eq!(s(&ir[0], "response"), "I'm sorry, I cannot help with that.");
            }
        }
    }
}

#[test]
fn eval_files_follow_coco_vqa_pope_and_mmbench() {
    let (root, m) = tiny();
    let images_dir = root.join("eval/images");
    let coco = json(root, "eval/captions.json");
    let images = coco["images"].as_array().unwrap();
    assert_eq!(images.len(), m.config.eval_images);
    let mut by_id = BTreeMap::new();
    for im in images {
        let file = s(im, "file_name");
        let pic = decode(&fs::read(images_dir.join(file)).unwrap(), file);
        assert_eq!(im["width"], pic.width());
        assert_eq!(im["height"], pic.height());
        by_id.insert(im["id"].as_u64().unwrap(), file.to_string());
    }
    let mut refs: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    let mut ann_ids = BTreeSet::new();
    for a in coco["annotations"].as_array().unwrap() {
        assert!(ann_ids.insert(a["id"].as_u64().unwrap()));
        let id = a["image_id"].as_u64().unwrap();
        assert!(by_id.contains_key(&id));
        refs.entry(id)
            .or_default()
            .insert(s(a, "caption").to_string());
    }
    assert_eq!(refs.len(), images.len());
    assert!(
        refs.values().all(|r| r.len() == 5),
        "five distinct references per image"
    );

    let qs = json(root, "eval/vqa_questions.json");
    let ans = json(root, "eval/vqa_annotations.json");
    assert_eq!(s(&qs, "task_type"), "Open-Ended");
    let questions = qs["questions"].as_array().unwrap();
    let annotations = ans["annotations"].as_array().unwrap();
    assert_eq!(questions.len(), annotations.len());
    assert_eq!(questions.len(), m.dataset("eval/vqav2").unwrap().records);
    let mut qids = BTreeSet::new();
    for (q, a) in questions.iter().zip(annotations) {
        let qid = q["question_id"].as_u64().unwrap();
        let iid = q["image_id"].as_u64().unwrap();
        assert!(qids.insert(qid));
        assert_eq!(qid / 1000, iid);
        assert!(by_id.contains_key(&iid));
        assert_eq!(a["question_id"], qid);
        assert_eq!(a["image_id"], iid);
        let answers = a["answers"].as_array().unwrap();
        assert_eq!(answers.len(), 10);
        for (k, x) in answers.iter().enumerate() {
            assert_eq!(x["answer_id"], k + 1);
            assert_eq!(x["answer"], a["multiple_choice_answer"]);
        }
        assert!(["yes/no", "number", "other"].contains(&s(a, "answer_type")));
        assert!(
            s(q, "question")
                .to_lowercase()
                .starts_with(s(a, "question_type"))
        );
    }

    for cat in ["random", "adversarial"] {
        let rows = jsonl(root, &format!("eval/pope/synth_pope_{cat}.json"));
        assert_eq!(rows.len(), 6 * m.config.pope_images);
        for (i, r) in rows.iter().enumerate() {
            assert_eq!(r["question_id"], i + 1);
            assert!(images_dir.join(s(r, "image")).is_file());
            assert!(["yes", "no"].contains(&s(r, "label")));
            assert!(s(r, "text").starts_with("Is there "));
        }
    }

    let tsv = String::from_utf8(read(root, "eval/mmbench.tsv")).unwrap();
    let mut lines = tsv.lines();
    let header: Vec<&str> = lines.next().unwrap().split('\t').collect();
    assert_eq!(
        header,
        [
            "index",
            "question",
            "hint",
            "A",
            "B",
            "C",
            "D",
            "answer",
            "category",
            "image",
            "source",
            "l2-category",
            "comment",
            "split"
        ]
    );
    let mut n = 0;
    for line in lines {
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(f.len(), header.len(), "{line:.80}");
        assert!(f[0].parse::<usize>().is_ok());
        assert!(["A", "B", "C", "D"].contains(&f[7]));
        let opts: BTreeSet<&str> = f[3..7].iter().copied().collect();
        assert_eq!(opts.len(), 4, "distinct options");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(f[9])
            .unwrap();
        decode(&bytes, f[0]);
        n += 1;
    }
    assert_eq!(n, m.config.mmbench_questions);
}

// ---------------------------------------------------------------------------------------------
// Ground truth, held-out images, sizes.

#[test]
fn answers_and_pixels_agree_with_the_ground_truth() {
    let (root, _) = tiny();
    let scenes: BTreeMap<String, Value> = jsonl(root, "eval/scenes.jsonl")
        .into_iter()
        .map(|r| (s(&r, "image").to_string(), r["scene"].clone()))
        .collect();
    let coco = json(root, "eval/captions.json");
    let file_of: BTreeMap<u64, String> = coco["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|im| (im["id"].as_u64().unwrap(), s(im, "file_name").to_string()))
        .collect();
    let qs = json(root, "eval/vqa_questions.json");
    let ans = json(root, "eval/vqa_annotations.json");
    for (q, a) in qs["questions"]
        .as_array()
        .unwrap()
        .iter()
        .zip(ans["annotations"].as_array().unwrap())
    {
        let file = &file_of[&q["image_id"].as_u64().unwrap()];
        let scene = &scenes[&format!("images/{file}")];
        let question = s(q, "question");
        let expected =
            answer_from_scene(question, scene).unwrap_or_else(|| panic!("unknown {question}"));
        assert_eq!(expected, s(a, "multiple_choice_answer"), "{question}");
    }
    for cat in ["random", "adversarial"] {
        for r in jsonl(root, &format!("eval/pope/synth_pope_{cat}.json")) {
            let scene = &scenes[&format!("images/{}", s(&r, "image"))];
            let text = s(&r, "text");
            let words: Vec<&str> = text.trim_end_matches('?').split(' ').collect();
            let objects = scene["objects"].as_array().unwrap();
            let yes = match words.as_slice() {
                ["Is", "there", _, sh, "in", "the", "image"] => {
                    objects.iter().any(|o| o["shape"] == *sh)
                }
                ["Is", "there", _, c, sh, "in", "the", "image"] => objects
                    .iter()
                    .any(|o| o["shape"] == *sh && o["color"] == *c),
                _ => panic!("{text}"),
            };
            assert_eq!(s(&r, "label"), if yes { "yes" } else { "no" }, "{text}");
        }
    }
    // Every object is drawn in its colour where the ground truth puts it.
    for (image, scene) in scenes.iter().filter(|(k, _)| k.starts_with("images/")) {
        let pic = decode(&read(&root.join("eval"), image), image);
        assert_eq!(scene["width"], pic.width());
        assert_eq!(scene["height"], pic.height());
        for o in scene["objects"].as_array().unwrap() {
            let b: Vec<f64> = o["bbox"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            let (cx, cy) = ((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0);
            // A ring is hollow: look at its band, three quarters of the radius from the centre.
            let x = if o["shape"] == "ring" {
                cx + 0.37 * (b[2] - b[0])
            } else {
                cx
            };
            let y = if o["shape"] == "triangle" {
                cy + 0.1 * (b[3] - b[1])
            } else {
                cy
            };
            let px = pic.get_pixel(x as u32, y as u32).0;
            let rgb: Vec<i32> = o["rgb"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap() as i32)
                .collect();
            let dist: i32 = (0..3)
                .map(|k| (i32::from(px[k]) - rgb[k]).abs())
                .max()
                .unwrap();
            assert!(dist < 40, "{image}: {o} drawn as {px:?}");
        }
    }
}

/// Pixel hashes of every training image of a corpus.
fn training_image_hashes(root: &Path, m: &CorpusManifest) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for file in &m.dataset("pretrain/captions").unwrap().files {
        for (name, bytes) in tar_members(&read(root, file)) {
            if name.ends_with(".jpg") || name.ends_with(".png") {
                out.insert(pixel_hash(&decode(&bytes, &name)));
            }
        }
    }
    for f in &m.files {
        let training = ["pretrain/", "sft/", "dpo/", "safety/"]
            .iter()
            .any(|p| f.path.starts_with(p));
        if training && (f.path.ends_with(".jpg") || f.path.ends_with(".png")) {
            out.insert(pixel_hash(&decode(&read(root, &f.path), &f.path)));
        }
    }
    out
}

#[test]
fn held_out_images_are_not_training_images() {
    let (root, m) = tiny();
    let train = training_image_hashes(root, m);
    let n_train = m
        .files
        .iter()
        .filter(|f| {
            !f.path.starts_with("eval/") && !f.path.ends_with("json") && !f.path.ends_with(".jsonl")
        })
        .count();
    assert!(
        train.len() + 10 >= n_train,
        "training images are (nearly all) distinct"
    );
    let mut eval = Vec::new();
    for f in m
        .files
        .iter()
        .filter(|f| f.path.starts_with("eval/images/"))
    {
        eval.push((
            f.path.clone(),
            pixel_hash(&decode(&read(root, &f.path), &f.path)),
        ));
    }
    let tsv = String::from_utf8(read(root, "eval/mmbench.tsv")).unwrap();
    for line in tsv.lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(f[9])
            .unwrap();
        eval.push((
            format!("mmbench #{}", f[0]),
            pixel_hash(&decode(&bytes, f[0])),
        ));
    }
    assert_eq!(
        eval.len(),
        m.config.eval_images + m.config.pope_images + m.config.mmbench_questions
    );
    for (name, h) in &eval {
        assert!(!train.contains(h), "{name} is also a training image");
    }
    // No training file names an evaluation image.
    for f in m.files.iter().filter(|f| !f.path.starts_with("eval/")) {
        if f.path.ends_with(".json") || f.path.ends_with(".jsonl") {
            let text = String::from_utf8(read(root, &f.path)).unwrap();
            assert!(!text.contains("synth_val_"), "{}", f.path);
        }
    }
}

#[test]
fn image_sizes_vary_within_the_configured_range() {
    let (root, m) = tiny();
    let mut wide = 0;
    let mut tall = 0;
    let mut n = 0;
    for f in m
        .files
        .iter()
        .filter(|f| f.path.ends_with(".jpg") || f.path.ends_with(".png"))
    {
        let pic = decode(&read(root, &f.path), &f.path);
        let (w, h) = pic.dimensions();
        assert!(
            (m.config.min_side..=m.config.max_side).contains(&w),
            "{} {w}x{h}",
            f.path
        );
        assert!(
            (m.config.min_side..=m.config.max_side).contains(&h),
            "{} {w}x{h}",
            f.path
        );
        wide += usize::from(w * 2 >= h * 3);
        tall += usize::from(h * 2 >= w * 3);
        n += 1;
    }
    assert!(
        wide * 6 > n && tall * 8 > n,
        "wide {wide}, tall {tall} of {n}"
    );
}

// ---------------------------------------------------------------------------------------------
// Balance and the need for the image.

#[test]
fn answers_are_balanced() {
    let (root, _) = medium();
    for cat in ["random", "adversarial"] {
        let rows = jsonl(root, &format!("eval/pope/synth_pope_{cat}.json"));
        let yes = rows.iter().filter(|r| r["label"] == "yes").count();
        assert_eq!(2 * yes, rows.len(), "POPE {cat} is half yes");
    }

    let ans = json(root, "eval/vqa_annotations.json");
    let mut per_type: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for a in ans["annotations"].as_array().unwrap() {
        let t = s(a, "question_type").to_string();
        *per_type
            .entry(t)
            .or_default()
            .entry(s(a, "multiple_choice_answer").to_string())
            .or_default() += 1;
    }
    let spread = |t: &str, values: &[&str]| {
        let counts = &per_type[t];
        let total: usize = counts.values().sum();
        let expected = total as f64 / values.len() as f64;
        for v in values {
            let c = counts.get(*v).copied().unwrap_or(0) as f64;
            assert!(
                (c - expected).abs() <= 0.25 * expected + 1.0,
                "{t}: {v} {c} of {total}: {counts:?}"
            );
        }
        assert!(
            counts.keys().all(|k| values.contains(&k.as_str())),
            "{t}: {counts:?}"
        );
    };
    spread("what color is the", &COLORS);
    spread("what shape is the", &SHAPES);
    spread("how many", &["0", "1", "2", "3", "4"]);
    spread("is there a", &["yes", "no"]);
    spread("which side", &["left", "right"]);
    spread("is the", &["top", "bottom"]);

    let tsv = String::from_utf8(read(root, "eval/mmbench.tsv")).unwrap();
    let mut letters: BTreeMap<String, usize> = BTreeMap::new();
    for line in tsv.lines().skip(1) {
        *letters
            .entry(line.split('\t').nth(7).unwrap().to_string())
            .or_default() += 1;
    }
    let counts: Vec<usize> = letters.values().copied().collect();
    assert_eq!(counts.len(), 4);
    assert!(
        counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1,
        "{letters:?}"
    );

    let safety = json(root, "safety/train.json");
    let unsafe_rows = safety
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["safe"] == false)
        .count();
    assert_eq!(2 * unsafe_rows, safety.as_array().unwrap().len());

    let multi = json(root, "sft/multi_image.json");
    let mut answers = BTreeMap::new();
    for row in multi.as_array().unwrap() {
        for turn in row["conversations"]
            .as_array()
            .unwrap()
            .iter()
            .skip(1)
            .step_by(2)
        {
            *answers
                .entry(s(turn, "value").to_string())
                .or_insert(0usize) += 1;
        }
    }
    let (a, b) = (answers["first"], answers["second"]);
    assert!(a.abs_diff(b) <= 3, "{answers:?}");
    assert!(answers["yes"].abs_diff(answers["no"]) <= 3, "{answers:?}");
}

#[test]
fn a_text_only_prior_cannot_answer_the_questions() {
    let (root, _) = medium();
    // Learn the blind prior from the training conversations: the majority answer per exact
    // question, per template, and overall.
    let rows = json(root, "sft/llava.json");
    let mut by_question: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    let mut by_template: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    let mut train_pairs = 0;
    for row in rows.as_array().unwrap() {
        let conv = row["conversations"].as_array().unwrap();
        for t in conv.chunks(2) {
            let q = bare_question(s(&t[0], "value"));
            let a = s(&t[1], "value").to_string();
            *by_question
                .entry(q.clone())
                .or_default()
                .entry(a.clone())
                .or_default() += 1;
            *by_template
                .entry(template(&q))
                .or_default()
                .entry(a)
                .or_default() += 1;
            train_pairs += 1;
        }
    }
    assert!(train_pairs > 1000);
    let majority =
        |m: &BTreeMap<String, usize>| m.iter().max_by_key(|(_, c)| **c).map(|(a, _)| a.clone());

    let qs = json(root, "eval/vqa_questions.json");
    let ans = json(root, "eval/vqa_annotations.json");
    let mut hits_q = 0;
    let mut hits_t = 0;
    let mut per_template: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut n = 0;
    for (q, a) in qs["questions"]
        .as_array()
        .unwrap()
        .iter()
        .zip(ans["annotations"].as_array().unwrap())
    {
        let question = s(q, "question");
        if question == "What does the text say?" {
            continue; // open answers: a blind guess is trivially wrong
        }
        let truth = s(a, "multiple_choice_answer");
        let t = template(question);
        let by_t = by_template.get(&t).and_then(majority);
        let by_q = by_question
            .get(question)
            .and_then(majority)
            .or(by_t.clone());
        hits_q += usize::from(by_q.as_deref() == Some(truth));
        hits_t += usize::from(by_t.as_deref() == Some(truth));
        let e = per_template.entry(t).or_default();
        e.0 += usize::from(by_t.as_deref() == Some(truth));
        e.1 += 1;
        n += 1;
    }
    assert!(n > 500);
    let acc_q = hits_q as f64 / n as f64;
    let acc_t = hits_t as f64 / n as f64;
    assert!(acc_q < 0.45, "exact-question prior scores {acc_q:.3}");
    assert!(acc_t < 0.45, "template prior scores {acc_t:.3}");
    for (t, (h, c)) in &per_template {
        if *c >= 40 {
            assert!((*h as f64 / *c as f64) < 0.6, "template {t:?}: {h} of {c}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Vocabulary.

/// Every prose string of the corpus.
fn prose(root: &Path, m: &CorpusManifest) -> Vec<String> {
    let mut out = Vec::new();
    for file in &m.dataset("pretrain/captions").unwrap().files {
        for (name, bytes) in tar_members(&read(root, file)) {
            if name.ends_with(".txt") {
                out.push(String::from_utf8(bytes).unwrap());
            }
        }
    }
    for doc in jsonl(root, "pretrain/interleaved/docs.jsonl") {
        out.extend(
            doc["texts"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|t| t.as_str().map(String::from)),
        );
        let meta: Vec<Value> = serde_json::from_str(s(&doc, "metadata")).unwrap();
        out.extend(
            meta.iter()
                .filter_map(|x| x["alt_text"].as_str().map(String::from)),
        );
    }
    for file in ["sft/llava.json", "sft/multi_image.json"] {
        for row in json(root, file).as_array().unwrap() {
            for t in row["conversations"].as_array().unwrap() {
                out.push(s(t, "value").replace("<image>", ""));
            }
        }
    }
    for p in jsonl(root, "dpo/pairs.jsonl") {
        for k in ["prompt", "chosen", "rejected"] {
            out.push(s(&p, k).to_string());
        }
    }
    for row in json(root, "dpo/vlfeedback.json").as_array().unwrap() {
        out.push(s(row, "prompt").to_string());
        for c in row["completions"].as_array().unwrap() {
            out.push(s(c, "response").to_string());
            for r in c["annotations"].as_object().unwrap().values() {
                out.push(s(r, "Rationale").to_string());
            }
        }
    }
    for split in ["train", "test"] {
        for row in json(root, &format!("safety/{split}.json"))
            .as_array()
            .unwrap()
        {
            for k in ["harmful_category", "harmful_subcategory"] {
                if let Some(v) = row.get(k) {
                    out.push(v.as_str().unwrap().to_string());
                }
            }
            for ir in row["instr-resp"].as_array().unwrap() {
                out.extend(
                    ir.as_object()
                        .unwrap()
                        .values()
                        .map(|v| v.as_str().unwrap().to_string()),
                );
            }
        }
    }
    for a in json(root, "eval/captions.json")["annotations"]
        .as_array()
        .unwrap()
    {
        out.push(s(a, "caption").to_string());
    }
    for q in json(root, "eval/vqa_questions.json")["questions"]
        .as_array()
        .unwrap()
    {
        out.push(s(q, "question").to_string());
    }
    for a in json(root, "eval/vqa_annotations.json")["annotations"]
        .as_array()
        .unwrap()
    {
        out.push(s(a, "multiple_choice_answer").to_string());
    }
    for cat in ["random", "adversarial"] {
        for r in jsonl(root, &format!("eval/pope/synth_pope_{cat}.json")) {
            out.push(s(&r, "text").to_string());
        }
    }
    let tsv = String::from_utf8(read(root, "eval/mmbench.tsv")).unwrap();
    for line in tsv.lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        out.extend(f[1..7].iter().map(|x| x.to_string()));
    }
    out
}

#[test]
fn the_vocabulary_covers_every_word_written() {
    let vocab = render_vocabulary();
    assert!(
        vocab.windows(2).all(|w| w[0] < w[1]),
        "sorted, no duplicates"
    );
    assert!(vocab.len() < 400, "a small vocabulary: {}", vocab.len());
    for w in [
        "red", "circle", "left", "two", "2", "yes", "no", "a", "first",
    ] {
        assert!(vocab.contains(&w), "{w}");
    }
    let (root, m) = tiny();
    let texts = prose(root, m);
    assert!(texts.len() > 1000);
    let mut used = BTreeSet::new();
    for text in &texts {
        for word in text
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '\''))
            .filter(|w| !w.is_empty())
        {
            let lower = word.to_lowercase();
            if vocab.contains(&lower.as_str()) {
                used.insert(lower);
                continue;
            }
            // OCR strings: upper-case letters and digits, each a vocabulary entry.
            let ocr = word
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
                && word
                    .chars()
                    .all(|c| vocab.contains(&c.to_ascii_lowercase().to_string().as_str()));
            assert!(ocr, "{word:?} (in {text:?}) is not in the vocabulary");
        }
    }
    assert!(
        used.len() * 10 > vocab.len() * 6,
        "most listed words are used: {} of {}",
        used.len(),
        vocab.len()
    );
}
