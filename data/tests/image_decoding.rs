//! Decoding parity with Pillow 13: every file under tests/fixtures/images/src (JPEG in every
//! layout libjpeg-turbo handles, PNG at every bit depth and colour type, GIF, WebP, BMP, TIFF)
//! must decode to exactly the pixels of `Image.open(f).convert("RGB")` (max |Δ| = 0); and the
//! any-res pipeline from file bytes to normalised views must give the reference's float32 tensors
//! exactly. The fixtures and their Pillow pixels are written by make_image_fixture.py there.

use std::path::PathBuf;

use blip3_data::anyres::{ImageProcessor, ImageProcessorConfig};
use blip3_data::image::{RgbImage, decode_bytes, decode_path};
use blip3_data::sample::ImageSource;
use serde_json::Value;

fn fixture(rel: &str) -> PathBuf {
    blip3_fixtures::fixture("images").join(rel)
}

fn index() -> Value {
    let path = fixture("index.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn cases() -> Vec<Value> {
    index()["cases"]
        .as_array()
        .expect("index.json: cases")
        .clone()
}

fn field<'a>(case: &'a Value, key: &str) -> &'a str {
    case[key]
        .as_str()
        .unwrap_or_else(|| panic!("index.json: {key} missing in {case}"))
}

/// The largest per-channel difference and how many channels differ.
fn max_delta(ours: &RgbImage, reference: &RgbImage) -> (u8, usize) {
    let mut max = 0u8;
    let mut count = 0;
    for (a, b) in ours.as_raw().iter().zip(reference.as_raw()) {
        let d = a.abs_diff(*b);
        if d > 0 {
            count += 1;
            max = max.max(d);
        }
    }
    (max, count)
}

#[test]
fn every_fixture_decodes_to_pillows_pixels() {
    let cases = cases();
    assert!(
        cases.len() >= 80,
        "only {} cases in index.json",
        cases.len()
    );
    let mut failures = Vec::new();
    for case in &cases {
        let source = field(case, "source");
        let reference = decode_path(&fixture(field(case, "pillow")))
            .unwrap_or_else(|e| panic!("reference of {source}: {e}"));
        match decode_path(&fixture(source)) {
            Err(e) => failures.push(format!("{source}: {e}")),
            Ok(ours) if ours.dimensions() != reference.dimensions() => failures.push(format!(
                "{source}: {:?}, Pillow {:?}",
                ours.dimensions(),
                reference.dimensions()
            )),
            Ok(ours) => {
                let (max, count) = max_delta(&ours, &reference);
                if max > 0 {
                    failures.push(format!(
                        "{source} ({}): max |delta| {max} on {count} of {} channels",
                        field(case, "pillow_mode"),
                        ours.as_raw().len()
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from Pillow:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn the_fixture_set_covers_every_layout() {
    let names: Vec<String> = cases()
        .iter()
        .map(|c| field(c, "source").to_string())
        .collect();
    let has = |part: &str| names.iter().any(|n| n.contains(part));
    for part in [
        "base_444",
        "base_422",
        "base_420",
        "base_440",
        "prog_",
        "restart_",
        "grey_33x29.jpg",
        "cmyk_",
        "ycck_",
        "_1x1.jpg",
        "_17x3.jpg",
        "_4001x3.jpg",
        "exif6",
        "rgb16",
        "grey16",
        "adam7",
        "palette1",
        "palette8_trns",
        "rgb8_trns",
        ".gif",
        "lossy_",
        "lossless_",
        ".bmp",
        ".tiff",
    ] {
        assert!(has(part), "no fixture named like {part}");
    }
}

#[test]
fn exif_orientation_is_ignored_like_pillow() {
    // Orientation 6 asks viewers to rotate by 90 degrees; Pillow's open/convert keeps the stored
    // 24x16 layout, and so do we.
    let img = decode_path(&fixture("src/exif6_24x16.jpg")).expect("decode");
    assert_eq!(img.dimensions(), (24, 16));
}

#[test]
fn broken_jpegs_are_errors_naming_the_source() {
    let bytes = std::fs::read(fixture("src/base_420_64x48.jpg")).expect("fixture");
    // Cut inside the scan: refused as truncated, like Pillow.
    let err = decode_bytes(&bytes[..bytes.len() / 2], "shard.tar:cut.jpg").expect_err("cut");
    assert!(err.to_string().contains("shard.tar:cut.jpg"), "{err}");
    assert!(err.to_string().contains("truncated"), "{err}");
    // A frame header with a 12-bit sample precision: libjpeg's error, not a panic.
    let mut twelve = bytes.clone();
    let sof = twelve
        .windows(2)
        .position(|w| w == [0xFF, 0xC0])
        .expect("SOF0");
    twelve[sof + 4] = 12;
    let err = decode_bytes(&twelve, "twelve.jpg").expect_err("12-bit");
    assert!(err.to_string().contains("twelve.jpg"), "{err}");
    // Two components: Pillow refuses 2-layer JPEGs.
    let mut two = bytes.clone();
    two[sof + 9] = 2;
    let err = decode_bytes(&two, "two.jpg").expect_err("2 components");
    assert!(err.to_string().contains("two.jpg"), "{err}");
    // Garbage over the entropy-coded data: either an error naming the file or an image of the
    // declared size, never a panic.
    let mut garbage = bytes.clone();
    let mid = garbage.len() * 2 / 3;
    garbage[mid..mid + 40].fill(0x5A);
    match decode_bytes(&garbage, "garbage.jpg") {
        Ok(img) => assert_eq!(img.dimensions(), (64, 48)),
        Err(e) => assert!(e.to_string().contains("garbage.jpg"), "{e}"),
    }
}

#[test]
fn anyres_views_from_file_bytes_match_the_reference_tensors() {
    let bytes = std::fs::read(fixture("pipeline.safetensors")).expect("pipeline.safetensors");
    let tensors = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let cases = index()["pipeline"]
        .as_array()
        .expect("pipeline cases")
        .clone();
    assert!(cases.len() >= 5);
    for case in &cases {
        let source = field(case, "source");
        let size = case["image_size"].as_u64().expect("image_size") as u32;
        let processor = ImageProcessor::new(ImageProcessorConfig {
            image_size: size,
            ..Default::default()
        })
        .expect("config");
        let ours = processor
            .process_source(&ImageSource::Path(fixture(source)))
            .expect("process");
        let grid = [
            case["grid"][0].as_u64().expect("grid") as u32,
            case["grid"][1].as_u64().expect("grid") as u32,
        ];
        assert_eq!([ours.grid_cols, ours.grid_rows], grid, "{source}: grid");
        let reference = tensors.tensor(field(case, "tensor")).expect("tensor");
        assert_eq!(
            reference.shape(),
            ours.shape().as_slice(),
            "{source}: view tensor shape"
        );
        let want: Vec<f32> = reference
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let max = ours
            .pixels
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert_eq!(max, 0.0, "{source}: normalised views differ by up to {max}");
    }
}
