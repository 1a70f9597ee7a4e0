//! Mixtures and the streaming loader on the synthetic corpus: determinism, weights, sample
//! counts, rank sharding, exact resumption (mixture and loader, across worker counts), planted bad
//! inputs, the bad-sample threshold, slicing between devices, and Burn's `DataLoader` contract.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use blip3_data::anyres::{AnyResGrid, ImageProcessorConfig, ResolutionMode};
use blip3_data::error::{BadKind, DataError};
use blip3_data::loader::{LoaderConfig, LoaderState, LoaderStats, StreamingLoader};
use blip3_data::mixture::{MixItem, Mixture, MixturePosition, Recipe};
use blip3_data::pipeline::{Pipeline, PipelineConfig, TrainSample};
use blip3_data::synth::{SynthConfig, write_corpus};
use blip3_data::tokenizer::Blip3Tokenizer;
use burn::data::dataloader::DataLoader;
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataloader::split::split_dataloader;
use burn::prelude::*;
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Corpora and helpers

/// Writes the tiny synthetic corpus (seed 3) into a fresh directory named `name`.
fn fresh_corpus(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("mixture-loader-{name}"));
    let _ = fs::remove_dir_all(&dir);
    write_corpus(&dir, &SynthConfig::tiny().with_seed(3)).unwrap();
    dir
}

/// The shared, unmodified corpus.
fn corpus() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| fresh_corpus("shared"))
}

/// A small and fast pipeline: 32 px views with the v1.5 grids, 4 tokens a view.
fn pipeline() -> Arc<Pipeline> {
    let config = PipelineConfig {
        image: ImageProcessorConfig {
            image_size: 32,
            grids: AnyResGrid::v1_5_candidates(),
            mode: ResolutionMode::AnyRes,
            ..ImageProcessorConfig::default()
        },
        max_len: 2048,
        system_prompt: None,
        vision_tokens_per_group: 4,
    };
    Arc::new(Pipeline::new(Blip3Tokenizer::tiny().unwrap(), config).unwrap())
}

/// Parses a YAML recipe whose relative paths are under `dir`.
fn recipe(dir: &Path, yaml: &str) -> Recipe {
    Recipe::from_yaml_str(yaml, dir, "test recipe").unwrap()
}

/// Every source kind of the corpus, with `policy` as the exhaustion policy.
fn all_kinds(policy: &str) -> String {
    format!(
        "seed: 5
on_exhausted: {policy}
sources:
  - {{name: captions, kind: webdataset, paths: pretrain/captions, weight: 2,
      shuffle_shards: true}}
  - {{name: interleaved, kind: jsonl_interleaved, paths: pretrain/interleaved/docs.jsonl,
      image_root: pretrain/interleaved, weight: 1}}
  - {{name: llava, kind: llava, paths: [sft/llava.json, sft/multi_image.json], image_root: sft,
      weight: 2}}
  - {{name: dpo, kind: dpo, paths: [dpo/pairs.jsonl, dpo/vlfeedback.json], image_root: dpo,
      weight: 1}}
  - {{name: vlguard, kind: vlguard, paths: safety/train.json, image_root: safety, weight: 1}}
"
    )
}

/// A mixture item's identity: source, file, key and whether it is a sample or an error.
fn item_id(mixture: &Mixture, item: &MixItem) -> String {
    let name = mixture.source_name(item.source);
    match &item.sample {
        Ok(raw) => format!("{name}|{}|{}", raw.origin().file, raw.origin().key),
        Err(e) => format!("{name}|{}|{}|error", e.file, e.key),
    }
}

/// The ids of the next `n` items (fewer when the mixture ends).
fn take_ids(mixture: &mut Mixture, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    while ids.len() < n {
        match mixture.next() {
            Some(item) => {
                let item = item.unwrap();
                ids.push(item_id(mixture, &item));
            }
            None => break,
        }
    }
    ids
}

/// A training sample's identity.
fn sample_id(s: &TrainSample) -> String {
    format!("{}|{}|{}", s.source, s.origin.file, s.origin.key)
}

/// Hands the samples over unchanged.
struct Samples;

impl Batcher<TrainSample, Vec<TrainSample>> for Samples {
    fn batch(&self, items: Vec<TrainSample>, _device: &Device) -> Vec<TrainSample> {
        items
    }
}

/// A loader over `recipe` for rank 0 of 1.
fn loader(recipe: &Recipe, config: LoaderConfig) -> StreamingLoader<Vec<TrainSample>> {
    let mixture = Mixture::open(recipe, 0, 1).unwrap();
    StreamingLoader::new(
        mixture,
        pipeline(),
        Arc::new(Samples),
        Device::flex(),
        config,
    )
    .unwrap()
}

/// The next `n` batches of `loader`, crossing windows as needed.
fn take_batches(loader: &StreamingLoader<Vec<TrainSample>>, n: usize) -> Vec<Vec<TrainSample>> {
    let mut out = Vec::new();
    while out.len() < n {
        let before = out.len();
        for batch in loader.iter() {
            out.push(batch.unwrap());
            if out.len() == n {
                break;
            }
        }
        if out.len() == before {
            break; // the stream ended
        }
    }
    out
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Recipes

#[test]
fn yaml_and_toml_recipes_agree_and_bad_recipes_are_rejected() {
    let dir = corpus();
    let yaml = recipe(dir, &all_kinds("restart"));
    let toml_text = r#"
seed = 5
on_exhausted = "restart"
[[sources]]
name = "captions"
kind = "webdataset"
paths = "pretrain/captions"
weight = 2.0
shuffle_shards = true
[[sources]]
name = "interleaved"
kind = "jsonl_interleaved"
paths = "pretrain/interleaved/docs.jsonl"
image_root = "pretrain/interleaved"
weight = 1.0
[[sources]]
name = "llava"
kind = "llava"
paths = ["sft/llava.json", "sft/multi_image.json"]
image_root = "sft"
weight = 2.0
[[sources]]
name = "dpo"
kind = "dpo"
paths = ["dpo/pairs.jsonl", "dpo/vlfeedback.json"]
image_root = "dpo"
weight = 1.0
[[sources]]
name = "vlguard"
kind = "vlguard"
paths = "safety/train.json"
image_root = "safety"
weight = 1.0
"#;
    let toml = Recipe::from_toml_str(toml_text, dir, "test.toml").unwrap();
    assert_eq!(yaml, toml);
    // Relative paths are resolved against the recipe's directory.
    assert_eq!(
        Path::new(&yaml.sources[0].paths[0]),
        dir.join("pretrain/captions")
    );

    // Files by extension, with the file named in errors.
    let path = dir.join("recipe-test.yml");
    fs::write(&path, all_kinds("stop")).unwrap();
    assert_eq!(Recipe::load(&path).unwrap().sources.len(), 5);
    let bad = dir.join("recipe-bad.yaml");
    for (text, what) in [
        (
            "sources:\n  - {name: a, kind: llava, paths: x.json, weight: 1}\n  - {name: b, kind: \
             llava, paths: y.json, samples: 3}\n",
            "weight",
        ),
        (
            "sources:\n  - {name: a, kind: llava, paths: x.json, weight: 1, colour: red}\n",
            "colour",
        ),
        (
            "sources:\n  - {name: a, kind: llava, paths: x.json, weight: -1}\n",
            "weight",
        ),
        (
            "sources:\n  - {name: a, kind: parquet, paths: x.parquet, weight: 1}\n",
            "layout",
        ),
        ("sources: []\n", "no sources"),
    ] {
        fs::write(&bad, text).unwrap();
        let err = Recipe::load(&bad).unwrap_err().to_string();
        assert!(err.contains("recipe-bad.yaml"), "{err}");
        assert!(err.contains(what), "{what}: {err}");
    }
    let unknown = dir.join("recipe.json");
    fs::write(&unknown, "{}").unwrap();
    assert!(
        Recipe::load(&unknown)
            .unwrap_err()
            .to_string()
            .contains(".toml")
    );
}

// ---------------------------------------------------------------------------------------------
// Mixtures

#[test]
fn mixture_order_is_a_function_of_the_seed() {
    let dir = corpus();
    let r5 = recipe(dir, &all_kinds("restart"));
    let a = take_ids(&mut Mixture::open(&r5, 0, 1).unwrap(), 400);
    let b = take_ids(&mut Mixture::open(&r5, 0, 1).unwrap(), 400);
    assert_eq!(a.len(), 400);
    assert_eq!(a, b);
    let r6 = recipe(dir, &all_kinds("restart").replace("seed: 5", "seed: 6"));
    let c = take_ids(&mut Mixture::open(&r6, 0, 1).unwrap(), 400);
    assert_ne!(a, c);
    // Every source takes part.
    let names: BTreeSet<&str> = a.iter().map(|id| id.split('|').next().unwrap()).collect();
    assert_eq!(names.len(), 5, "{names:?}");
}

#[test]
fn weights_are_respected_within_a_statistical_bound() {
    let dir = corpus();
    let r = recipe(
        dir,
        "seed: 11
sources:
  - {name: a, kind: llava, paths: sft/llava.json, image_root: sft, weight: 3}
  - {name: b, kind: dpo, paths: dpo/pairs.jsonl, image_root: dpo, weight: 1}
",
    );
    let n = 4000;
    let ids = take_ids(&mut Mixture::open(&r, 0, 1).unwrap(), n);
    assert_eq!(ids.len(), n);
    let from_a = ids.iter().filter(|id| id.starts_with("a|")).count() as f64;
    let p = 0.75;
    let sigma = (p * (1.0 - p) / n as f64).sqrt();
    let share = from_a / n as f64;
    assert!(
        (share - p).abs() < 5.0 * sigma,
        "share of a = {share}, expected {p} +- {}",
        5.0 * sigma
    );
}

/// The keys of every item of a single-source recipe read to its end.
fn all_items(dir: &Path, source: &str) -> Vec<String> {
    let r = recipe(
        dir,
        &format!("on_exhausted: stop\nsources:\n  - {source}\n"),
    );
    take_ids(&mut Mixture::open(&r, 0, 1).unwrap(), usize::MAX)
}

#[test]
fn sample_counts_without_and_with_replacement() {
    let dir = corpus();
    let llava = "{name: llava, kind: llava, paths: sft/llava.json, image_root: sft";
    let population: BTreeSet<String> = all_items(dir, &format!("{llava}, weight: 1}}"))
        .into_iter()
        .collect();
    let len = population.len();
    assert!(len > 40, "{len}");

    // Without replacement: `n` distinct items of the source, in file order, per epoch.
    let r = recipe(
        dir,
        &format!("seed: 2\non_exhausted: stop\nsources:\n  - {llava}, samples: 30}}\n"),
    );
    let subset = take_ids(&mut Mixture::open(&r, 0, 1).unwrap(), usize::MAX);
    assert_eq!(subset.len(), 30);
    let distinct: BTreeSet<&String> = subset.iter().collect();
    assert_eq!(distinct.len(), 30);
    assert!(subset.iter().all(|id| population.contains(id)));
    let other_seed = recipe(
        dir,
        &format!("seed: 3\non_exhausted: stop\nsources:\n  - {llava}, samples: 30}}\n"),
    );
    assert_ne!(
        subset,
        take_ids(&mut Mixture::open(&other_seed, 0, 1).unwrap(), usize::MAX)
    );

    // With replacement: more than the source holds, so some items repeat.
    let n = len + 40;
    let r = recipe(
        dir,
        &format!("seed: 2\non_exhausted: stop\nsources:\n  - {llava}, samples: {n}}}\n"),
    );
    let drawn = take_ids(&mut Mixture::open(&r, 0, 1).unwrap(), usize::MAX);
    assert_eq!(drawn.len(), n);
    assert!(drawn.iter().all(|id| population.contains(id)));
    let distinct: BTreeSet<&String> = drawn.iter().collect();
    assert!(distinct.len() < n);

    // Two sources: exact counts per epoch, epochs repeat with `restart`.
    let two = format!(
        "seed: 4\nsources:\n  - {llava}, samples: 12}}\n  - {{name: dpo, kind: dpo, paths: \
         dpo/pairs.jsonl, image_root: dpo, samples: 5}}\n"
    );
    let r = recipe(dir, &two);
    let ids = take_ids(&mut Mixture::open(&r, 0, 1).unwrap(), 51);
    for epoch in ids.chunks(17).take(3) {
        assert_eq!(
            epoch.iter().filter(|id| id.starts_with("llava|")).count(),
            12
        );
        assert_eq!(epoch.iter().filter(|id| id.starts_with("dpo|")).count(), 5);
    }

    // The reference's `data_path: {json: n}` form reads the same way.
    let reference = recipe(
        dir,
        "seed: 2\non_exhausted: stop\nimage_root: sft\ndata_path:\n  sft/llava.json: 30\n",
    );
    let ids = take_ids(&mut Mixture::open(&reference, 0, 1).unwrap(), usize::MAX);
    let strip = |id: &String| {
        id.split_once('|')
            .map(|(_, rest)| rest.to_string())
            .unwrap()
    };
    assert_eq!(
        ids.iter().map(strip).collect::<Vec<_>>(),
        subset.iter().map(strip).collect::<Vec<_>>()
    );
}

#[test]
fn ranks_read_disjoint_parts_whose_union_is_everything() {
    let dir = corpus();
    let r = recipe(dir, &all_kinds("drop"));
    let everything = take_ids(&mut Mixture::open(&r, 0, 1).unwrap(), usize::MAX);
    let all: BTreeSet<String> = everything.iter().cloned().collect();
    assert_eq!(all.len(), everything.len(), "items repeat within one pass");
    let rank0: BTreeSet<String> = take_ids(&mut Mixture::open(&r, 0, 2).unwrap(), usize::MAX)
        .into_iter()
        .collect();
    let rank1: BTreeSet<String> = take_ids(&mut Mixture::open(&r, 1, 2).unwrap(), usize::MAX)
        .into_iter()
        .collect();
    assert!(!rank0.is_empty() && !rank1.is_empty());
    assert!(rank0.is_disjoint(&rank1));
    let union: BTreeSet<String> = rank0.union(&rank1).cloned().collect();
    assert_eq!(union, all);
    // Both ranks read from every record-sharded and shard-sharded source.
    for name in ["captions", "llava", "dpo", "vlguard"] {
        for rank in [&rank0, &rank1] {
            assert!(
                rank.iter().any(|id| id.starts_with(&format!("{name}|"))),
                "{name}"
            );
        }
    }
    assert!(Mixture::open(&r, 2, 2).is_err());
}

/// Reads `k` items, saves the position (through JSON), reopens and compares the next `m` items
/// with an uninterrupted run.
fn check_mixture_resume(r: &Recipe, ks: &[usize], m: usize) {
    let full = take_ids(
        &mut Mixture::open(r, 0, 1).unwrap(),
        ks.iter().max().unwrap() + m,
    );
    for &k in ks {
        let mut first = Mixture::open(r, 0, 1).unwrap();
        assert_eq!(take_ids(&mut first, k), full[..k.min(full.len())]);
        let json = serde_json::to_string(&first.state()).unwrap();
        let position: MixturePosition = serde_json::from_str(&json).unwrap();
        let mut resumed = Mixture::open_at(r, 0, 1, &position).unwrap();
        let rest = take_ids(&mut resumed, m);
        let end = (k + m).min(full.len());
        assert_eq!(
            rest,
            full[k.min(full.len())..end],
            "resumed after {k} items"
        );
    }
}

#[test]
fn mixture_resumes_exactly() {
    let dir = corpus();
    // Weighted, with restarts (several epochs over the small sources).
    let weighted = recipe(dir, &all_kinds("restart"));
    check_mixture_resume(&weighted, &[0, 1, 7, 33, 61, 150, 311], 120);
    // Count mode with replacement (resuming between copies of a repeated item) and VLFeedback
    // rows that give several pairs each.
    let counted = recipe(
        dir,
        "seed: 9
sources:
  - {name: llava, kind: llava, paths: sft/llava.json, image_root: sft, samples: 200}
  - {name: vlf, kind: dpo, paths: dpo/vlfeedback.json, image_root: dpo, samples: 15}
  - {name: caps, kind: webdataset, paths: pretrain/captions, samples: 20}
",
    );
    check_mixture_resume(&counted, &[0, 3, 40, 101, 234, 235, 236, 290], 120);
    // A position from another recipe or rank is refused.
    let mut m = Mixture::open(&weighted, 0, 1).unwrap();
    take_ids(&mut m, 5);
    let position = m.state();
    assert!(Mixture::open_at(&counted, 0, 1, &position).is_err());
    assert!(Mixture::open_at(&weighted, 0, 2, &position).is_err());
}

/// The readers' fixtures (Parquet layouts, MINT-1T PDF tar shard).
fn reader_fixtures() -> PathBuf {
    blip3_fixtures::fixture("readers")
}

/// The ids of a reader's items, named as mixture items of source `name`.
fn reader_ids(
    name: &str,
    reader: impl Iterator<Item = Result<blip3_data::sample::RawSample, blip3_data::SampleError>>,
) -> Vec<String> {
    reader
        .map(|item| match item {
            Ok(raw) => format!("{name}|{}|{}", raw.origin().file, raw.origin().key),
            Err(e) => format!("{name}|{}|{}|error", e.file, e.key),
        })
        .collect()
}

#[test]
fn parquet_and_tar_document_sources_read_as_their_readers() {
    use blip3_data::readers::interleaved::{
        ImageResolver, InterleavedOptions, InterleavedWdsReader, UrlRule,
    };
    use blip3_data::readers::parquet::{ParquetLayout, ParquetOptions, ParquetReader};
    use blip3_data::readers::stream::ReadScope;

    let dir = reader_fixtures();
    let single = |source: &str| {
        let r = recipe(
            &dir,
            &format!("on_exhausted: stop\nsources:\n  - {source}\n"),
        );
        take_ids(&mut Mixture::open(&r, 0, 1).unwrap(), usize::MAX)
    };
    let path = |rel: &str| dir.join(rel).display().to_string();

    let captions = single(
        "{name: caps, kind: parquet, paths: parquet/captions.parquet, weight: 1, options: \
         {layout: caption, columns: {image: jpg}, id_column: key, batch_size: 2}}",
    );
    let options = ParquetOptions {
        id_column: Some("key".into()),
        batch_size: 2,
        ..ParquetOptions::new(ParquetLayout::Caption {
            caption: "caption".into(),
            image: "jpg".into(),
        })
    };
    let direct = ParquetReader::open(
        &[path("parquet/captions.parquet")],
        ReadScope::default(),
        options,
    )
    .unwrap();
    assert!(!captions.is_empty());
    assert_eq!(captions, reader_ids("caps", direct));

    let kale = single(
        "{name: kale, kind: parquet, paths: parquet/kale.parquet, image_root: \
         parquet/kale_images, weight: 1, options: {layout: blip3_kale, url_rule: basename}}",
    );
    let options = ParquetOptions {
        resolver: ImageResolver::new(Some(dir.join("parquet/kale_images")), UrlRule::Basename),
        ..ParquetOptions::new(ParquetLayout::blip3_kale())
    };
    let direct = ParquetReader::open(
        &[path("parquet/kale.parquet")],
        ReadScope::default(),
        options,
    )
    .unwrap();
    assert_eq!(kale, reader_ids("kale", direct));

    for (layout, file) in [("rlaif_v", "rlaif_v"), ("llava_next", "llava_next")] {
        let ids = single(&format!(
            "{{name: {layout}, kind: parquet, paths: parquet/{file}.parquet, weight: 1, \
             options: {{layout: {layout}}}}}"
        ));
        let preset = if layout == "rlaif_v" {
            ParquetLayout::rlaif_v()
        } else {
            ParquetLayout::llava_next()
        };
        let direct = ParquetReader::open(
            &[path(&format!("parquet/{file}.parquet"))],
            ReadScope::default(),
            ParquetOptions::new(preset),
        )
        .unwrap();
        assert!(!ids.is_empty());
        assert_eq!(ids, reader_ids(layout, direct));
    }

    let mint = single(
        "{name: mint, kind: webdataset_interleaved, paths: interleaved/mint_pdf-00000.tar, \
         weight: 1}",
    );
    let direct = InterleavedWdsReader::open(
        &[path("interleaved/mint_pdf-00000.tar")],
        ReadScope::default(),
        ImageResolver::default(),
        InterleavedOptions::default(),
    )
    .unwrap();
    assert!(
        mint.iter().any(|id| id.ends_with("|error")),
        "dropped images are reported"
    );
    assert_eq!(mint, reader_ids("mint", direct));

    // Mixed together, they resume exactly.
    let mixed = recipe(
        &dir,
        "seed: 1
sources:
  - {name: caps, kind: parquet, paths: parquet/captions.parquet, weight: 2,
     options: {layout: caption, columns: {image: jpg}, id_column: key, batch_size: 2}}
  - {name: rlaif, kind: parquet, paths: parquet/rlaif_v.parquet, weight: 1,
     options: {layout: rlaif_v}}
  - {name: mint, kind: webdataset_interleaved, paths: interleaved/mint_pdf-00000.tar,
     weight: 1}
",
    );
    check_mixture_resume(&mixed, &[0, 2, 9, 30, 77], 60);
}

#[test]
fn vlguard_tags_and_preference_pairs_reach_the_samples() {
    let dir = corpus();
    let r = recipe(
        dir,
        "on_exhausted: drop
sources:
  - {name: vlguard, kind: vlguard, paths: safety/train.json, image_root: safety, weight: 1}
  - {name: dpo, kind: dpo, paths: dpo/pairs.jsonl, image_root: dpo, weight: 1}
",
    );
    let config = LoaderConfig {
        num_workers: 0,
        ..LoaderConfig::new(1, 1000)
    };
    let samples: Vec<TrainSample> = take_batches(&loader(&r, config), 1000)
        .into_iter()
        .flatten()
        .collect();
    let guard: Vec<&TrainSample> = samples.iter().filter(|s| s.source == "vlguard").collect();
    let dpo: Vec<&TrainSample> = samples.iter().filter(|s| s.source == "dpo").collect();
    assert!(!guard.is_empty() && !dpo.is_empty());
    // Every VLGuard conversation carries both flags, and both values occur.
    assert!(
        guard
            .iter()
            .all(|s| s.tags.image_safe.is_some() && s.tags.prompt_safe.is_some())
    );
    let prompt_flags: BTreeSet<Option<bool>> = guard.iter().map(|s| s.tags.prompt_safe).collect();
    assert_eq!(prompt_flags.len(), 2);
    for s in &dpo {
        let rejected = s
            .rejected
            .as_ref()
            .expect("a DPO sample has a rejected sequence");
        assert_ne!(rejected.input_ids, s.seq.input_ids);
        assert_eq!(s.images.len(), 1);
        // Same prompt: the sequences agree up to the answer.
        let common = s
            .seq
            .input_ids
            .iter()
            .zip(&rejected.input_ids)
            .take_while(|(a, b)| a == b)
            .count();
        let first_trained = s.seq.labels.iter().position(|&l| l != -100).unwrap();
        assert!(common >= first_trained, "{common} < {first_trained}");
    }
}

// ---------------------------------------------------------------------------------------------
// The loader

/// `k` batches, a saved state, a fresh loader restored from it with another worker count: the
/// next batches equal an uninterrupted run's, sample for sample.
fn check_loader_resume(r: &Recipe, base: LoaderConfig, workers: (usize, usize), ks: &[usize]) {
    let total = ks.iter().max().unwrap() + 10;
    let uninterrupted = take_batches(
        &loader(
            r,
            LoaderConfig {
                num_workers: workers.0,
                ..base.clone()
            },
        ),
        total,
    );
    assert_eq!(uninterrupted.len(), total);
    for &k in ks {
        let first = loader(
            r,
            LoaderConfig {
                num_workers: workers.0,
                ..base.clone()
            },
        );
        assert!(take_batches(&first, k) == uninterrupted[..k]);
        let json = serde_json::to_string(&first.state()).unwrap();
        drop(first);
        let state: LoaderState = serde_json::from_str(&json).unwrap();
        assert_eq!(state.batches, k as u64);
        let second = loader(
            r,
            LoaderConfig {
                num_workers: workers.1,
                ..base.clone()
            },
        );
        second.restore(&state).unwrap();
        let rest = take_batches(&second, total - k);
        assert_eq!(rest.len(), total - k);
        for (i, (a, b)) in rest.iter().zip(&uninterrupted[k..]).enumerate() {
            assert!(a == b, "batch {} after resuming at {k} differs", k + i);
        }
    }
}

#[test]
fn loader_resumes_exactly_across_worker_counts() {
    let dir = corpus();
    let r = recipe(dir, &all_kinds("restart"));
    // Sequential batches; windows of 3 batches, resumed inside and at the end of windows.
    let sequential = LoaderConfig {
        prefetch: 4,
        ..LoaderConfig::new(4, 12)
    };
    check_loader_resume(&r, sequential.clone(), (1, 4), &[0, 3, 5]);
    check_loader_resume(&r, sequential, (4, 0), &[7]);
    // Length-grouped batches: resumed inside a sort buffer of 3 batches.
    let grouped = LoaderConfig {
        length_grouping: Some(3),
        ..LoaderConfig::new(4, 8)
    };
    check_loader_resume(&r, grouped, (4, 1), &[1, 3, 4]);
}

#[test]
fn output_does_not_depend_on_the_number_of_workers() {
    let dir = corpus();
    let r = recipe(dir, &all_kinds("restart"));
    let config = |workers| LoaderConfig {
        num_workers: workers,
        prefetch: 3,
        length_grouping: Some(2),
        ..LoaderConfig::new(3, 9)
    };
    let reference = take_batches(&loader(&r, config(0)), 20);
    for workers in [1, 2, 4] {
        assert!(take_batches(&loader(&r, config(workers)), 20) == reference);
    }
}

#[test]
fn length_grouping_sorts_within_buffers() {
    let dir = corpus();
    let r = recipe(dir, &all_kinds("restart"));
    let per_view = 4;
    let plain = take_batches(&loader(&r, LoaderConfig::new(4, 16)), 8);
    let grouped_config = LoaderConfig {
        length_grouping: Some(4),
        ..LoaderConfig::new(4, 16)
    };
    let grouped = take_batches(&loader(&r, grouped_config), 8);
    // Same samples per buffer of 4 batches, regrouped by length.
    for (a, b) in plain.chunks(4).zip(grouped.chunks(4)) {
        let mut ids_a: Vec<String> = a.iter().flatten().map(sample_id).collect();
        let mut ids_b: Vec<String> = b.iter().flatten().map(sample_id).collect();
        ids_a.sort();
        ids_b.sort();
        assert_eq!(ids_a, ids_b);
        // Batches do not overlap in length: sorted within the buffer.
        let mut ranges: Vec<(usize, usize)> = b
            .iter()
            .map(|batch| {
                let lens = batch.iter().map(|s| s.expanded_len(per_view));
                (lens.clone().min().unwrap(), lens.max().unwrap())
            })
            .collect();
        ranges.sort();
        for pair in ranges.windows(2) {
            assert!(pair[0].1 <= pair[1].0, "{ranges:?}");
        }
    }
}

#[test]
fn windows_continue_the_stream_and_report_progress() {
    let dir = corpus();
    let r = recipe(dir, &all_kinds("restart"));
    let continuous = take_batches(&loader(&r, LoaderConfig::new(2, 1000)), 9);
    let windowed = loader(&r, LoaderConfig::new(2, 6));
    assert_eq!(windowed.num_items(), 6);
    let mut all = Vec::new();
    for _ in 0..3 {
        let mut iter = windowed.iter();
        let mut n = 0;
        while let Some(batch) = iter.next() {
            n += 1;
            all.push(batch.unwrap());
            let progress = iter.progress();
            assert_eq!(progress.items_processed, 2 * n);
            assert_eq!(progress.items_total, 6);
        }
        assert_eq!(n, 3);
        assert!(iter.progress().is_completed());
    }
    assert!(all == continuous);

    // A fixed window yields the same batches every time.
    let fixed = loader(
        &r,
        LoaderConfig {
            fixed_window: true,
            ..LoaderConfig::new(2, 6)
        },
    );
    let first: Vec<Vec<TrainSample>> = fixed.iter().map(Result::unwrap).collect();
    let second: Vec<Vec<TrainSample>> = fixed.iter().map(Result::unwrap).collect();
    assert_eq!(first.len(), 3);
    assert!(first == second);
    assert!(first[..] == continuous[..3]);
}

/// Pads the input ids of a batch into one tensor (a minimal model-side batcher).
struct IdsBatcher;

impl Batcher<TrainSample, Tensor<2, Int>> for IdsBatcher {
    fn batch(&self, items: Vec<TrainSample>, device: &Device) -> Tensor<2, Int> {
        let width = items
            .iter()
            .map(|s| s.seq.input_ids.len())
            .max()
            .unwrap_or(0);
        let mut ids = vec![0i64; items.len() * width];
        for (row, s) in items.iter().enumerate() {
            for (j, &id) in s.seq.input_ids.iter().enumerate() {
                ids[row * width + j] = i64::from(id);
            }
        }
        Tensor::from_data(TensorData::new(ids, [items.len(), width]), device)
    }
}

#[test]
fn works_as_a_burn_dataloader_with_a_tensor_batcher() {
    let dir = corpus();
    let r = recipe(dir, &all_kinds("restart"));
    let reference = take_batches(&loader(&r, LoaderConfig::new(3, 9)), 3);
    let mixture = Mixture::open(&r, 0, 1).unwrap();
    let loader: Arc<dyn DataLoader<Tensor<2, Int>>> = Arc::new(
        StreamingLoader::new(
            mixture,
            pipeline(),
            Arc::new(IdsBatcher),
            Device::flex(),
            LoaderConfig::new(3, 9),
        )
        .unwrap(),
    );
    let moved = loader.to_device(&Device::flex());
    let tensors: Vec<Tensor<2, Int>> = moved.iter().map(Result::unwrap).collect();
    assert_eq!(tensors.len(), 3);
    for (tensor, batch) in tensors.iter().zip(&reference) {
        let [rows, width] = tensor.dims();
        assert_eq!(rows, 3);
        let data: Vec<i64> = tensor
            .to_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .unwrap();
        for (row, sample) in batch.iter().enumerate() {
            let ids: Vec<i64> = sample.seq.input_ids.iter().map(|&i| i64::from(i)).collect();
            assert_eq!(&data[row * width..row * width + ids.len()], &ids[..]);
        }
    }
}

#[test]
fn slices_split_every_global_batch_between_devices() {
    let dir = corpus();
    let r = recipe(dir, &all_kinds("restart"));
    let config = LoaderConfig {
        length_grouping: Some(2),
        ..LoaderConfig::new(4, 12)
    };
    let single = loader(&r, config.clone());
    let expected = take_batches(&single, 6);

    let shared = loader(&r, config.clone());
    let handle: Arc<dyn DataLoader<Vec<TrainSample>>> = Arc::new(shared.clone());
    let devices = [Device::flex(), Device::flex()];
    let parts = split_dataloader(handle, &devices);
    assert_eq!(parts.len(), 2);
    assert!(parts.iter().all(|p| p.num_items() == 6));
    let mut got = Vec::new();
    for _ in 0..2 {
        let mut first = parts[0].iter();
        let mut second = parts[1].iter();
        loop {
            match (first.next(), second.next()) {
                (Some(a), Some(b)) => {
                    let (a, b) = (a.unwrap(), b.unwrap());
                    assert_eq!((a.len(), b.len()), (2, 2));
                    got.push([a, b].concat());
                }
                (None, None) => break,
                _ => panic!("the slices' windows differ in length"),
            }
        }
        assert!(first.progress().is_completed());
    }
    assert_eq!(got.len(), 6);
    assert!(got == expected);
    // The sliced run's state is the single run's state, and resumes it.
    assert_eq!(shared.state(), single.state());
    let resumed = loader(&r, config);
    resumed.restore(&shared.state()).unwrap();
    assert!(take_batches(&resumed, 2) == take_batches(&single, 2));

    // Three devices cannot split batches of 4: the slice says so.
    let handle: Arc<dyn DataLoader<Vec<TrainSample>>> =
        Arc::new(loader(&r, LoaderConfig::new(4, 12)));
    let three = split_dataloader(handle, &[Device::flex(), Device::flex(), Device::flex()]);
    let err = three[0].iter().next().unwrap().unwrap_err().to_string();
    assert!(err.contains("cannot"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Bad input

/// The first `n` LLaVA records of the corpus with a single image: `(id, image path)`.
fn single_image_records(dir: &Path, n: usize) -> Vec<(String, String)> {
    let records = read_json(&dir.join("sft/llava.json"));
    records
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| {
            Some((
                r["id"].as_str()?.to_string(),
                r["image"].as_str()?.to_string(),
            ))
        })
        .take(n)
        .collect()
}

#[test]
fn planted_bad_inputs_are_skipped_counted_and_named() {
    let recipe_text = "on_exhausted: drop
sources:
  - {name: captions, kind: webdataset, paths: pretrain/captions, weight: 1}
  - {name: llava, kind: llava, paths: [sft/llava.json, sft/planted.jsonl], image_root: sft,
     weight: 1}
  - {name: dpo, kind: dpo, paths: dpo/pairs.jsonl, image_root: dpo, weight: 1,
     options: {check_images: false}}
";
    let config = LoaderConfig {
        max_bad_rate: 1.0,
        num_workers: 3,
        ..LoaderConfig::new(1, 100_000)
    };

    // The clean corpus has no bad sample.
    let clean_dir = fresh_corpus("clean");
    let multi = read_json(&clean_dir.join("sft/multi_image.json"));
    let pair: Vec<String> = multi[0]["image"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let good_extra = serde_json::json!({"id": "extra", "image": pair, "conversations": [
        {"from": "human", "value": "<image>\n<image>\nSame?"}, {"from": "gpt", "value": "No."}]});
    fs::write(
        clean_dir.join("sft/planted.jsonl"),
        format!("{good_extra}\n"),
    )
    .unwrap();
    let clean = loader(&recipe(&clean_dir, recipe_text), config.clone());
    let clean_samples = take_batches(&clean, usize::MAX).len() as u64;
    let clean_stats = clean.stats();
    assert_eq!(clean_stats.bad, 0, "{:?}", clean_stats.recent);
    assert_eq!(clean_stats.good, clean_samples);

    // The same corpus with one bad input of each kind.
    let dir = fresh_corpus("planted");
    let records = single_image_records(&dir, 2);
    let (corrupt_id, corrupt_image) = &records[0];
    let (missing_id, missing_image) = &records[1];
    fs::write(
        dir.join("sft").join(corrupt_image),
        b"\xff\xd8\xff not a jpeg at all",
    )
    .unwrap();
    fs::remove_file(dir.join("sft").join(missing_image)).unwrap();
    let mismatch = serde_json::json!({"id": "mismatch", "image": pair, "conversations": [
        {"from": "human", "value": "<image>\nOne marker, two images?"},
        {"from": "gpt", "value": "No."}]});
    fs::write(dir.join("sft/planted.jsonl"), format!("{mismatch}\n")).unwrap();
    let pairs_path = dir.join("dpo/pairs.jsonl");
    let mut lines: Vec<String> = fs::read_to_string(&pairs_path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    lines[2] = "{\"id\": \"broken\", \"prompt\": ".to_string();
    // The DPO image of line 5 vanishes; with check_images off, decoding finds it missing.
    let fifth: Value = serde_json::from_str(&lines[4]).unwrap();
    let dpo_missing = fifth["image"].as_str().unwrap().to_string();
    fs::remove_file(dir.join("dpo").join(&dpo_missing)).unwrap();
    fs::write(&pairs_path, lines.join("\n") + "\n").unwrap();
    let shard = dir.join("pretrain/captions/shard-00001.tar");
    let bytes = fs::read(&shard).unwrap();
    fs::write(&shard, &bytes[..bytes.len() / 2 + 100]).unwrap();

    let planted = loader(&recipe(&dir, recipe_text), config);
    let samples = take_batches(&planted, usize::MAX).len() as u64;
    let stats = planted.stats();
    let kinds: BTreeMap<BadKind, u64> = stats.by_kind.clone();
    let expected: BTreeMap<BadKind, u64> = [
        (BadKind::CorruptImage, 1),
        (BadKind::MissingImage, 2),
        (BadKind::MalformedRecord, 1),
        (BadKind::TruncatedShard, 1),
        (BadKind::ImageCountMismatch, 1),
    ]
    .into_iter()
    .collect();
    assert_eq!(kinds, expected, "{:#?}", stats.recent);
    assert_eq!(stats.bad, 6);
    let json = serde_json::to_string(&stats).unwrap();
    assert_eq!(serde_json::from_str::<LoaderStats>(&json).unwrap(), stats);
    assert_eq!(stats.good, samples);
    assert_eq!(stats.seen, stats.good + stats.bad);
    // Everything else still arrived: the samples lost are the planted ones and the captions after
    // the cut of the truncated shard.
    let lost = clean_samples - samples;
    assert!(lost > 5, "{lost}");
    assert_eq!(
        stats.sources["llava"].bad + stats.sources["dpo"].bad + stats.sources["captions"].bad,
        6
    );
    assert_eq!(
        stats.sources["llava"].good + 3,
        clean_stats.sources["llava"].good
    );
    assert_eq!(
        stats.sources["dpo"].good + 2,
        clean_stats.sources["dpo"].good
    );

    // Each bad input is named with its file and key.
    let named = |kind: &str, file: &str, key: &str| {
        assert!(
            stats
                .recent
                .iter()
                .any(|r| r.contains(kind) && r.contains(file) && r.contains(key)),
            "no {kind} naming {file} [{key}] in {:#?}",
            stats.recent
        );
    };
    named("CorruptImage", "llava.json", corrupt_id);
    named("MissingImage", "llava.json", missing_id);
    named("ImageCountMismatch", "planted.jsonl", "mismatch");
    named("MalformedRecord", "pairs.jsonl", "line 3");
    named("MissingImage", "pairs.jsonl", &dpo_missing);
    named("TruncatedShard", "shard-00001.tar", "");
    assert!(stats.last.is_some());
}

/// A LLaVA JSON-lines file of `n` good records (reusing the corpus images) with malformed lines
/// at the given 0-based positions.
fn llava_lines(dir: &Path, n: usize, malformed: &[usize]) -> PathBuf {
    let records = single_image_records(dir, 1);
    let image = &records[0].1;
    let mut text = String::new();
    for i in 0..n {
        if malformed.contains(&i) {
            text.push_str("{\"id\": \"cut\", \"image\": \n");
        } else {
            let record = serde_json::json!({"id": format!("row{i}"), "image": image,
                "conversations": [{"from": "human", "value": "<image>\nWhat is it?"},
                                  {"from": "gpt", "value": "A shape."}]});
            text.push_str(&format!("{record}\n"));
        }
    }
    let path = dir.join(format!("sft/rows-{n}-{}.jsonl", malformed.len()));
    fs::write(&path, text).unwrap();
    path
}

#[test]
fn too_many_bad_samples_stop_the_run_but_early_ones_do_not() {
    let dir = corpus();
    let source = |path: &Path| {
        recipe(
            dir,
            &format!(
                "on_exhausted: stop\nsources:\n  - {{name: rows, kind: llava, paths: {}, \
                 image_root: sft, weight: 1}}\n",
                path.display()
            ),
        )
    };
    let config = LoaderConfig {
        num_workers: 2,
        ..LoaderConfig::new(5, 1000)
    };

    // 10 malformed lines in 150 (6.7%): the iterator ends with the threshold error.
    let bad_positions: Vec<usize> = (0..10).map(|i| 7 + 14 * i).collect();
    let many = loader(
        &source(&llava_lines(dir, 150, &bad_positions)),
        config.clone(),
    );
    let results: Vec<_> = many.iter().collect();
    let last = results.last().unwrap();
    let err = last.as_ref().unwrap_err();
    assert!(results[..results.len() - 1].iter().all(Result::is_ok));
    let message = err.to_string();
    assert!(message.starts_with("bad-sample rate"), "{message}");
    let inner = std::error::Error::source(err)
        .and_then(|e| e.downcast_ref::<DataError>())
        .expect("the error is a DataError");
    match inner {
        DataError::TooManyBadSamples {
            seen, bad, last, ..
        } => {
            assert_eq!(*seen, 100, "the rate is first checked at 100 samples");
            assert_eq!(*bad, 7);
            assert!(last.contains("rows-150-10.jsonl"), "{last}");
        }
        other => panic!("unexpected error {other}"),
    }
    // The failure is sticky.
    assert!(many.iter().next().unwrap().is_err());

    // One bad line first, then only good ones: never over 1% once 100 samples were seen.
    let early = loader(&source(&llava_lines(dir, 150, &[0])), config);
    let batches: Vec<_> = early.iter().collect();
    assert!(batches.iter().all(Result::is_ok));
    let stats = early.stats();
    assert_eq!((stats.seen, stats.bad, stats.good), (150, 1, 149));
    assert_eq!(batches.len(), 149 / 5);
    assert_eq!(stats.dropped, 149 % 5);
}
