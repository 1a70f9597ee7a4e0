//! Property-based fuzzing of the model loader's parsers (issue 9, "Fuzzed, not just
//! spot-checked"): the safetensors header ([`SafetensorsFile::open`]), sharded checkpoints with a
//! `model.safetensors.index.json` ([`WeightSet::open_dir`]), `config.json`
//! ([`XGenMMConfig::from_hf_json`], [`siglip_from_hf_value`]). Special token ids are read from
//! the tokenizer by `blip3-processor`, whose `tokenizer.json` parsing the data crate's
//! `tokenizer-files` target fuzzes.
//!
//! The harness (mutations, time and heap limits, seeded case counts) is the data crate's, see
//! `data/tests/fuzz/harness.rs`. Full run:
//! `BLIP3_FUZZ_CASES=10000 cargo test --release -p blip3-model --test fuzz_loader -- --nocapture`.

#[path = "../../data/tests/fuzz/harness.rs"]
mod harness;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use blip3_model::config::{XGenMMConfig, siglip_from_hf_value};
use blip3_model::loader::{SafetensorsFile, WeightSet};
use harness::{CountingAlloc, JSON_TOKENS, Outcome, damage, fuzz, run_case};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{Value, json};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Heap bound of one case: the fixtures are a few KiB.
const HEAP: usize = 64 << 20;

fn scratch(name: &str) -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let base = DIR.get_or_init(|| {
        tempfile::Builder::new()
            .prefix("fuzz-loader-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("tempdir")
    });
    let dir = base.path().join(name);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

// ------------------------------------------------------------------------------------------------
// safetensors
// ------------------------------------------------------------------------------------------------

/// Bytes of one element of a safetensors dtype.
fn dtype_size(dtype: &str) -> Option<u128> {
    Some(match dtype {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "I8" | "U8" | "BOOL" => 1,
        _ => return None,
    })
}

/// A safetensors file from a header value and a data section.
fn safetensors_bytes(header: &Value, data: &[u8]) -> Vec<u8> {
    let mut text = serde_json::to_vec(header).unwrap();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(data);
    out
}

/// A valid file: four tensors of different dtypes (one empty) and metadata.
fn safetensors_fixture() -> Vec<u8> {
    let header = json!({
        "__metadata__": {"format": "pt"},
        "a.weight": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
        "b.bias": {"dtype": "BF16", "shape": [4], "data_offsets": [24, 32]},
        "c.steps": {"dtype": "I64", "shape": [1], "data_offsets": [32, 40]},
        "d.empty": {"dtype": "U8", "shape": [0, 7], "data_offsets": [40, 40]},
    });
    let data: Vec<u8> = (0..40u8).collect();
    let bytes = safetensors_bytes(&header, &data);
    // The reference implementation agrees that the fixture is valid.
    safetensors::SafeTensors::deserialize(&bytes).expect("valid fixture");
    bytes
}

/// Checks the invariants of an accepted file: every tensor lies inside the data section, its byte
/// range matches its shape and dtype exactly (computed without overflow), and it reads back.
fn check_accepted(path: &Path, file: &SafetensorsFile) -> Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let file_len = bytes.len() as u64;
    let header_len = u64::from_le_bytes(bytes[..8].try_into().map_err(|_| "short")?);
    let data_start = 8 + header_len;
    for (key, meta) in &file.tensors {
        if !(data_start <= meta.start && meta.start <= meta.end && meta.end <= file_len) {
            return Err(format!(
                "tensor {key:?}: range {}..{} outside the data section {data_start}..{file_len}",
                meta.start, meta.end
            ));
        }
        let size = dtype_size(&meta.dtype).ok_or(format!("tensor {key:?}: dtype"))?;
        let numel = meta
            .shape
            .iter()
            .try_fold(1u128, |acc, &d| acc.checked_mul(d as u128));
        let want = numel.and_then(|n| n.checked_mul(size));
        if want != Some(u128::from(meta.end - meta.start)) {
            return Err(format!(
                "tensor {key:?}: shape {:?} of {} needs {want:?} bytes, range has {}",
                meta.shape,
                meta.dtype,
                meta.end - meta.start
            ));
        }
        let data = file
            .read_bytes(key)
            .map_err(|e| format!("tensor {key:?} does not read back: {e}"))?;
        if data.len() as u64 != meta.end - meta.start {
            return Err(format!("tensor {key:?}: read {} bytes", data.len()));
        }
    }
    Ok(())
}

fn read_safetensors(path: PathBuf) -> Result<Option<usize>, String> {
    match SafetensorsFile::open(&path) {
        Ok(file) => {
            check_accepted(&path, &file)?;
            Ok(Some(file.tensors.len()))
        }
        Err(_) => Ok(None),
    }
}

fn safetensors_outcome(result: Result<Option<usize>, String>) -> Result<Outcome, TestCaseError> {
    match result {
        Err(msg) => Err(TestCaseError::fail(msg)),
        Ok(None) => Ok(Outcome::refused()),
        Ok(Some(n)) => Ok(Outcome {
            good: n as u64,
            bad: 0,
            refused: false,
        }),
    }
}

#[test]
fn fuzz_safetensors_header() {
    let fixture = safetensors_fixture();
    let dir = scratch("safetensors");
    fuzz("safetensors-header", 800, damage(6), |dmg, _| {
        let path = dir.join("model.safetensors");
        std::fs::write(&path, dmg.apply(&fixture, JSON_TOKENS)).unwrap();
        let (result, usage) = run_case(HEAP, move || read_safetensors(path))?;
        Ok((safetensors_outcome(result)?, usage))
    });
}

/// Numbers a damaged header may claim: sizes near the integer limits and products that overflow.
fn claimed_number() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..64,
        Just(u64::MAX),
        Just(u64::MAX - 7),
        Just(1 << 32),
        Just(1 << 62),
        Just(1 << 63),
        Just((1 << 62) + 1),
        Just(usize::MAX as u64 / 2 + 1),
        any::<u64>(),
    ]
}

/// One tensor of a header with claimed (possibly absurd) numbers.
fn claimed_tensor() -> impl Strategy<Value = (String, Vec<u64>, u64, u64)> {
    (
        prop_oneof![
            Just("F32"),
            Just("BF16"),
            Just("U8"),
            Just("I64"),
            Just("F64")
        ],
        prop::collection::vec(claimed_number(), 0..4),
        claimed_number(),
        claimed_number(),
    )
        .prop_map(|(dtype, shape, start, len)| (dtype.to_string(), shape, start, len))
}

/// Headers whose shapes, offsets and header length claim huge or overflowing sizes: the file must
/// be refused (or, when the claims happen to be consistent, read within its bounds), quickly and
/// without allocating what the claims say.
#[test]
fn fuzz_safetensors_claims() {
    let dir = scratch("safetensors-claims");
    let strategy = (
        prop::collection::vec(claimed_tensor(), 1..4),
        0usize..128,
        prop_oneof![3 => Just(None), 1 => claimed_number().prop_map(Some)],
    );
    fuzz(
        "safetensors-claims",
        800,
        strategy,
        |(tensors, data_len, header_len), _| {
            let mut header = serde_json::Map::new();
            for (i, (dtype, shape, start, len)) in tensors.iter().enumerate() {
                // Half of the tensors claim the byte length their shape gives in wrapping 64-bit
                // arithmetic (what a writer that overflowed would put there).
                let len = if len % 2 == 0 {
                    let size = dtype_size(dtype).unwrap() as u64;
                    shape
                        .iter()
                        .fold(1u64, |acc, &d| acc.wrapping_mul(d))
                        .wrapping_mul(size)
                } else {
                    *len
                };
                let start = if start % 3 == 0 { start % 64 } else { *start };
                let end = start.wrapping_add(len);
                header.insert(
                    format!("t{i}"),
                    json!({"dtype": dtype, "shape": shape, "data_offsets": [start, end]}),
                );
            }
            let mut bytes = safetensors_bytes(&Value::Object(header), &vec![7u8; data_len]);
            if let Some(claimed) = header_len {
                bytes[..8].copy_from_slice(&claimed.to_le_bytes());
            }
            let path = dir.join("model.safetensors");
            std::fs::write(&path, bytes).unwrap();
            let (result, usage) = run_case(HEAP, move || read_safetensors(path))?;
            Ok((safetensors_outcome(result)?, usage))
        },
    );
}

/// A two-shard checkpoint with an index; the index or one shard is damaged.
#[test]
fn fuzz_sharded_checkpoint() {
    let shard = safetensors_fixture();
    let index = serde_json::to_vec_pretty(&json!({
        "metadata": {"total_size": 80},
        "weight_map": {
            "a.weight": "model-00001-of-00002.safetensors",
            "b.bias": "model-00001-of-00002.safetensors",
            "c.steps": "model-00002-of-00002.safetensors",
        },
    }))
    .unwrap();
    let dir = scratch("sharded");
    fuzz(
        "sharded-checkpoint",
        400,
        (damage(6), any::<bool>()),
        |(dmg, damage_index), _| {
            let (index_bytes, shard_bytes) = if damage_index {
                (dmg.apply(&index, JSON_TOKENS), shard.clone())
            } else {
                (index.clone(), dmg.apply(&shard, JSON_TOKENS))
            };
            std::fs::write(dir.join("model.safetensors.index.json"), index_bytes).unwrap();
            std::fs::write(dir.join("model-00001-of-00002.safetensors"), &shard_bytes).unwrap();
            std::fs::write(dir.join("model-00002-of-00002.safetensors"), &shard).unwrap();
            let read_dir = dir.clone();
            let (result, usage) = run_case(HEAP, move || match WeightSet::open_dir(&read_dir) {
                Ok(set) => {
                    for file in &set.files {
                        check_accepted(&file.path, file)?;
                    }
                    Ok(Some(set.files.iter().map(|f| f.tensors.len()).sum()))
                }
                Err(_) => Ok(None),
            })?;
            Ok((safetensors_outcome(result)?, usage))
        },
    );
}

// ------------------------------------------------------------------------------------------------
// config.json and tokenizer.json
// ------------------------------------------------------------------------------------------------

fn config_fixtures() -> Vec<Vec<u8>> {
    [
        XGenMMConfig::tiny(1000),
        XGenMMConfig::xgenmm_phi3_mini_v1_5(),
    ]
    .iter()
    .map(|cfg| serde_json::to_vec_pretty(&cfg.to_hf_value()).unwrap())
    .collect()
}

#[test]
fn fuzz_config_json() {
    let fixtures = config_fixtures();
    fuzz(
        "config-json",
        1000,
        (damage(6), 0..fixtures.len()),
        |(dmg, which), tally| {
            let text =
                String::from_utf8_lossy(&dmg.apply(&fixtures[which], JSON_TOKENS)).into_owned();
            let (result, usage) = run_case(HEAP, move || {
                let parsed = XGenMMConfig::from_hf_json(&text, "config.json");
                // The vision part alone, as `load_siglip_dir` reads it.
                let siglip = serde_json::from_str::<Value>(&text)
                    .ok()
                    .map(|v| {
                        let vision = v
                            .get("vision_encoder_config")
                            .cloned()
                            .unwrap_or(Value::Null);
                        siglip_from_hf_value(&vision, "config.json").is_ok()
                    })
                    .unwrap_or(false);
                let round_trip = parsed.as_ref().ok().map(|cfg| {
                    (
                        cfg.validate().is_ok(),
                        XGenMMConfig::from_hf_value(&cfg.to_hf_value(), "round trip")
                            .map(|back| &back == cfg)
                            .unwrap_or(false),
                    )
                });
                (parsed.is_ok(), siglip, round_trip)
            })?;
            let (ok, siglip, round_trip) = result;
            if let Some((valid, same)) = round_trip {
                prop_assert!(valid, "an accepted config does not validate");
                prop_assert!(same, "an accepted config does not survive to_hf_value");
            }
            tally.note("vision configs accepted", u64::from(siglip));
            let outcome = Outcome {
                good: u64::from(ok),
                bad: u64::from(!ok),
                refused: !ok,
            };
            Ok((outcome, usage))
        },
    );
}

/// Regression (found by `fuzz_safetensors_claims`): a shape whose byte size overflows 64 bits
/// (`[2^62]` of `I64` is 2^65 bytes, 0 in wrapping arithmetic) with `data_offsets [0, 0]` was
/// accepted as an empty tensor.
#[test]
fn regression_safetensors_shape_size_overflow_is_refused() {
    let dir = scratch("regression-overflow");
    let path = dir.join("model.safetensors");
    let header = json!({"t": {"dtype": "I64", "shape": [1u64 << 62], "data_offsets": [0, 0]}});
    std::fs::write(&path, safetensors_bytes(&header, &[])).unwrap();
    let err = SafetensorsFile::open(&path).expect_err("an overflowing shape must be refused");
    assert!(err.to_string().contains("do not match shape"), "{err}");
}

/// Regression (same bug family): offsets near `u64::MAX` wrapped around when the data section's
/// start was added, pointing the tensor back into the header.
#[test]
fn regression_safetensors_offset_overflow_is_refused() {
    let dir = scratch("regression-offsets");
    let path = dir.join("model.safetensors");
    let header =
        json!({"t": {"dtype": "U8", "shape": [7], "data_offsets": [u64::MAX - 7, u64::MAX]}});
    std::fs::write(&path, safetensors_bytes(&header, &[0u8; 64])).unwrap();
    assert!(SafetensorsFile::open(&path).is_err());
}
