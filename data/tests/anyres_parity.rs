//! Parity of image decoding, Pillow-exact resizing and the any-resolution pipeline with the Python
//! reference (Pillow 13), plus edge cases of grid selection, normalisation, configuration and bad
//! input. Fixtures: tests/fixtures/anyres/, written by make_anyres_fixture.py there.

use std::path::PathBuf;
use std::sync::Arc;

use blip3_data::anyres::{
    AnyResGrid, ImageProcessor, ImageProcessorConfig, ResolutionMode, fit_size, select_grid,
};
use blip3_data::error::DataError;
use blip3_data::image::{
    ResampleFilter, RgbImage, decode_bytes, decode_image, decode_path, resize,
};
use blip3_data::sample::ImageSource;
use serde_json::Value;

fn fixture(rel: &str) -> PathBuf {
    blip3_fixtures::fixture("anyres").join(rel)
}

fn index() -> Value {
    let path = fixture("index.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn load(rel: &str) -> RgbImage {
    decode_path(&fixture(rel)).unwrap_or_else(|e| panic!("{e}"))
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("index.json: {key} is not a string in {v}"))
}

fn pair_of(v: &Value, key: &str) -> (u32, u32) {
    let get = |i: usize| {
        v[key][i]
            .as_u64()
            .unwrap_or_else(|| panic!("index.json: bad {key} in {v}")) as u32
    };
    (get(0), get(1))
}

fn grids_of(v: &Value) -> Vec<AnyResGrid> {
    let list = v["grids"]
        .as_array()
        .unwrap_or_else(|| panic!("index.json: no grids in {v}"));
    list.iter()
        .map(|g| {
            let side = |i: usize| g[i].as_u64().unwrap_or_else(|| panic!("bad grid {g}")) as u32;
            AnyResGrid::new(side(0), side(1))
        })
        .collect()
}

/// Mean and max absolute difference in 8-bit units; panics on a size mismatch.
fn diff(ours: &RgbImage, reference: &RgbImage, what: &str) -> (f64, u8) {
    assert_eq!(ours.dimensions(), reference.dimensions(), "{what}: size");
    let mut sum = 0u64;
    let mut max = 0u8;
    for (a, b) in ours.as_raw().iter().zip(reference.as_raw()) {
        let d = a.abs_diff(*b);
        sum += u64::from(d);
        max = max.max(d);
    }
    (sum as f64 / ours.as_raw().len().max(1) as f64, max)
}

fn filter_named(name: &str) -> ResampleFilter {
    match name {
        "bicubic" => ResampleFilter::Bicubic,
        "bilinear" => ResampleFilter::Bilinear,
        "box" => ResampleFilter::Box,
        "hamming" => ResampleFilter::Hamming,
        "lanczos" => ResampleFilter::Lanczos,
        other => panic!("index.json: unknown filter {other}"),
    }
}

// ------------------------------------------------------------------------------------------------
// Resize: bit-exact against Image.resize
// ------------------------------------------------------------------------------------------------

#[test]
fn resize_is_bit_exact_with_pillow() {
    let index = index();
    let cases = index["resize"].as_array().expect("resize cases");
    assert!(cases.len() >= 20);
    for case in cases {
        let src = load(str_of(case, "image"));
        let (w, h) = pair_of(case, "size");
        let filter = filter_named(str_of(case, "filter"));
        let ours = resize(&src, w, h, filter);
        let reference = load(str_of(case, "reference"));
        let what = format!("{} -> {w}x{h} {filter:?}", str_of(case, "image"));
        let (_, max) = diff(&ours, &reference, &what);
        assert_eq!(max, 0, "{what}: differs from Pillow");
    }
}

#[test]
fn default_filter_is_bicubic() {
    assert_eq!(ResampleFilter::default(), ResampleFilter::Bicubic);
}

// ------------------------------------------------------------------------------------------------
// Decoding: orientation, colour conversion, formats
// ------------------------------------------------------------------------------------------------

#[test]
fn decoding_matches_pillow_convert_rgb() {
    let index = index();
    let cases = index["decode"].as_array().expect("decode cases");
    for case in cases {
        let name = str_of(case, "image");
        let ours = load(name);
        let reference = load(str_of(case, "reference"));
        let (mean, max) = diff(&ours, &reference, name);
        // JPEGs included: they decode through libjpeg-turbo, as in Pillow.
        match str_of(case, "match") {
            "exact" => assert_eq!(
                max, 0,
                "{name}: decoded pixels differ from Pillow (mean {mean})"
            ),
            other => panic!("index.json: unknown match kind {other}"),
        }
    }
}

#[test]
fn exif_orientation_is_ignored_as_pillow_does() {
    // The fixture's orientation-k files hold the same 32x16 picture with EXIF orientation k;
    // `Image.open(..).convert("RGB")` keeps the stored layout, and so do we: every file decodes
    // to the same pixels.
    let upright = load("decode/exif1_32x16.png");
    for orientation in 1..=8 {
        let img = load(&format!("images/exif{orientation}_32x16.jpg"));
        assert_eq!(img.dimensions(), (32, 16), "orientation {orientation}");
        let (_, max) = diff(&img, &upright, "orientation");
        assert_eq!(max, 0, "orientation {orientation} changed the pixels");
    }
    // The picture is asymmetric: rotating it by 180 degrees would have been noticed.
    let rotated = ::image::imageops::rotate180(&upright);
    let (mean, _) = diff(&rotated, &upright, "180 vs 0");
    assert!(
        mean > 10.0,
        "the orientation fixture is not asymmetric enough (mean {mean})"
    );
}

#[test]
fn conversion_drops_alpha_and_replicates_gray() {
    // The 37x211 RGBA fixture has fully transparent rows on top with non-black colour: Pillow keeps
    // the colour, and so must we.
    let rgba = ::image::open(fixture("images/alpha_37x211.png"))
        .expect("png")
        .to_rgba8();
    let ours = load("images/alpha_37x211.png");
    assert_eq!(rgba.get_pixel(5, 0).0[3], 0);
    for (o, p) in ours.pixels().zip(rgba.pixels()) {
        assert_eq!(o.0, [p.0[0], p.0[1], p.0[2]]);
    }
    let gray = load("images/gray_523x389.png");
    assert!(gray.pixels().all(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2]));
    // CMYK: compared against Pillow's CMYK->RGB in the decode cases; here: not all equal channels.
    let cmyk = load("images/cmyk_24x16.jpg");
    assert!(cmyk.pixels().any(|p| p.0[0] != p.0[1] || p.0[1] != p.0[2]));
}

#[test]
fn sixteen_bit_gray_clips_like_pillows_i16_conversion() {
    let gray = ::image::ImageBuffer::<::image::Luma<u16>, _>::from_fn(7, 5, |x, y| {
        // Values on both sides of 255.
        ::image::Luma([((x * 97 + y * 131) % 600) as u16])
    });
    let mut png = Vec::new();
    ::image::DynamicImage::ImageLuma16(gray.clone())
        .write_to(
            &mut std::io::Cursor::new(&mut png),
            ::image::ImageFormat::Png,
        )
        .expect("encode");
    let ours = decode_bytes(&png, "gray16.png").expect("decode");
    // Pillow opens 16-bit gray as `I;16`; its conversion to RGB clips every value to 0..=255.
    for (o, g) in ours.pixels().zip(gray.pixels()) {
        assert_eq!(o.0, [g.0[0].min(255) as u8; 3]);
    }
}

#[test]
fn corrupt_or_truncated_bytes_name_the_source() {
    let expect_named = |result: Result<RgbImage, DataError>, name: &str| match result {
        Err(e @ DataError::Image { .. }) => {
            assert!(
                e.to_string().contains(name),
                "error does not name {name}: {e}"
            );
        }
        Err(other) => panic!("{name}: expected an image error, got {other}"),
        Ok(img) => panic!("{name}: decoded to {:?}", img.dimensions()),
    };
    expect_named(decode_bytes(b"", "empty.jpg"), "empty.jpg");
    expect_named(
        decode_bytes(b"this is not an image", "text.jpg"),
        "text.jpg",
    );
    for file in [
        "images/tex_151x97.jpg",
        "images/alpha_37x211.png",
        "images/lossless_41x27.webp",
    ] {
        let bytes = std::fs::read(fixture(file)).expect("fixture");
        for cut in [8, 40, bytes.len() / 2] {
            let name = format!("shard-0001.tar:{file}@{cut}");
            expect_named(decode_bytes(&bytes[..cut], &name), &name);
        }
        // Garbage in the middle of the data.
        let mut broken = bytes.clone();
        let mid = broken.len() / 3;
        broken[mid..mid + 32].fill(0xFF);
        let name = format!("{file}+garbage");
        if let Err(e) = decode_bytes(&broken, &name) {
            assert!(e.to_string().contains(&name), "{e}");
        }
    }
    let source = ImageSource::Bytes {
        bytes: Arc::new(vec![0x89, b'P', b'N', b'G']),
        name: "x.png".into(),
    };
    expect_named(decode_image(&source), "x.png");

    let missing = fixture("images/does_not_exist.jpg");
    match decode_image(&ImageSource::Path(missing.clone())) {
        Err(e @ DataError::Io { .. }) => assert!(e.to_string().contains("does_not_exist.jpg")),
        other => panic!("expected an I/O error, got {other:?}"),
    }
}

// ------------------------------------------------------------------------------------------------
// Grid selection and fitting
// ------------------------------------------------------------------------------------------------

#[test]
fn grid_selection_and_fit_match_reference() {
    let index = index();
    let cases = index["grid"].as_array().expect("grid cases");
    for case in cases {
        let (w, h) = pair_of(case, "size");
        let base = case["image_size"].as_u64().expect("image_size") as u32;
        let grids = grids_of(case);
        let (cols, rows) = pair_of(case, "grid");
        let chosen = select_grid(w, h, base, &grids).expect("a grid");
        assert_eq!(
            chosen,
            AnyResGrid::new(cols, rows),
            "{w}x{h} base {base} among {grids:?}"
        );
        let (cw, ch) = chosen.canvas_size(base);
        let (fw, fh) = pair_of(case, "fit");
        assert_eq!(
            fit_size(w, h, cw, ch),
            (u64::from(fw), u64::from(fh)),
            "fit {w}x{h}"
        );
    }
}

#[test]
fn grid_selection_edge_cases() {
    let v15 = AnyResGrid::v1_5_candidates();
    // Exact tie between the first two candidates (same effective resolution and waste).
    assert_eq!(
        select_grid(100, 100, 384, &v15),
        Some(AnyResGrid::new(1, 2))
    );
    let swapped = [AnyResGrid::new(2, 1), AnyResGrid::new(1, 2)];
    assert_eq!(
        select_grid(100, 100, 384, &swapped),
        Some(AnyResGrid::new(2, 1))
    );
    // Nothing to choose from, or nothing to place.
    assert_eq!(select_grid(100, 100, 384, &[]), None);
    assert_eq!(select_grid(0, 100, 384, &v15), None);
    // Sizes that would overflow 32-bit products.
    assert!(select_grid(u32::MAX, u32::MAX, 384, &v15).is_some());
    assert!(select_grid(u32::MAX, 1, 384, &v15).is_some());
}

// ------------------------------------------------------------------------------------------------
// Whole pipeline
// ------------------------------------------------------------------------------------------------

#[test]
fn pipeline_views_match_pillow() {
    let index = index();
    let cases = index["pipeline"].as_array().expect("pipeline cases");
    for case in cases {
        let name = str_of(case, "image");
        let base = case["image_size"].as_u64().expect("image_size") as u32;
        let mode = match str_of(case, "mode") {
            "anyres" => ResolutionMode::AnyRes,
            "fixed" => ResolutionMode::Fixed,
            other => panic!("index.json: unknown mode {other}"),
        };
        let config = ImageProcessorConfig {
            image_size: base,
            mode,
            ..Default::default()
        };
        let processor = ImageProcessor::new(config).expect("config");
        let image = decode_image(&ImageSource::Path(fixture(name))).expect("decode");
        assert_eq!(
            image.dimensions(),
            pair_of(case, "original_size"),
            "{name}: original size"
        );

        let views = processor.views(&image).expect("views");
        let (cols, rows) = pair_of(case, "grid");
        assert_eq!(
            views.grid,
            AnyResGrid::new(cols, rows),
            "{name} at {base}: grid"
        );
        let files = case["views"].as_array().expect("views");
        assert_eq!(views.views.len(), files.len(), "{name}: view count");
        for (i, (ours, file)) in views.views.iter().zip(files).enumerate() {
            let file = file.as_str().expect("view file");
            let (mean, max) = diff(ours, &load(file), file);
            assert!(
                mean <= 1.0 && max <= 4,
                "{name} view {i}: mean {mean:.4} max {max}"
            );
            // Lossless sources go through exactly Pillow's arithmetic.
            if !name.ends_with(".jpg") {
                assert_eq!(max, 0, "{name} view {i}: not bit-exact");
            }
        }

        let processed = processor.process(&image).expect("process");
        let s = base as usize;
        assert_eq!(processed.shape(), [files.len(), 3, s, s]);
        assert_eq!((processed.grid_cols, processed.grid_rows), (cols, rows));
        assert_eq!(
            (processed.original_width, processed.original_height),
            image.dimensions()
        );
        assert_eq!(processed.pixels.len(), files.len() * 3 * s * s);
        // CHW layout: channel c of pixel (x, y) of view v.
        for (v, view) in views.views.iter().enumerate() {
            let chw = processed.view(v).expect("view");
            for (x, y) in [(0, 0), (s - 1, 0), (s / 2, s / 3), (s - 1, s - 1)] {
                let px = view.get_pixel(x as u32, y as u32).0;
                for c in 0..3 {
                    let expected = (f32::from(px[c]) / 255.0 - 0.5) / 0.5;
                    assert_eq!(
                        chw[c * s * s + y * s + x],
                        expected,
                        "{name} v{v} ({x},{y}) c{c}"
                    );
                }
            }
        }
        assert!(processed.view(files.len()).is_none());
    }
}

#[test]
fn normalisation_matches_torchvision_float32() {
    let index = index();
    for case in index["normalise"].as_array().expect("normalise cases") {
        let triple = |key: &str| -> [f32; 3] {
            let get = |i: usize| case[key][i].as_f64().expect("number") as f32;
            [get(0), get(1), get(2)]
        };
        let config = ImageProcessorConfig {
            image_size: 4,
            image_mean: triple("mean"),
            image_std: triple("std"),
            mode: ResolutionMode::Fixed,
            ..Default::default()
        };
        let processor = ImageProcessor::new(config).expect("config");
        for (i, value) in case["values"]
            .as_array()
            .expect("values")
            .iter()
            .enumerate()
        {
            let value = value.as_u64().expect("value") as u8;
            let image = RgbImage::from_pixel(4, 4, ::image::Rgb([value; 3]));
            let out = processor.process(&image).expect("process");
            for c in 0..3 {
                let expected = case["out"][c][i].as_f64().expect("out") as f32;
                assert_eq!(out.pixels[c * 16], expected, "value {value} channel {c}");
            }
        }
    }
}

#[test]
fn fixed_mode_gives_one_view_and_unit_grid() {
    let config = ImageProcessorConfig {
        image_size: 32,
        mode: ResolutionMode::Fixed,
        ..Default::default()
    };
    let processor = ImageProcessor::new(config).expect("config");
    let image = RgbImage::from_pixel(70, 20, ::image::Rgb([10, 20, 30]));
    let out = processor.process(&image).expect("process");
    assert_eq!(out.shape(), [1, 3, 32, 32]);
    assert_eq!((out.grid_cols, out.grid_rows), (1, 1));
    assert_eq!((out.original_width, out.original_height), (70, 20));
}

#[test]
fn anyres_view_count_follows_grid() {
    let processor = ImageProcessor::new(ImageProcessorConfig {
        image_size: 16,
        ..Default::default()
    })
    .expect("config");
    for (w, h, views) in [(100, 100, 5), (300, 40, 4), (40, 300, 4), (10, 20, 3)] {
        let out = processor.process(&RgbImage::new(w, h)).expect("process");
        assert_eq!(out.num_views, views, "{w}x{h}");
        assert_eq!(out.num_views, 1 + (out.grid_cols * out.grid_rows) as usize);
    }
    assert!(processor.process(&RgbImage::new(0, 5)).is_err());
}

// ------------------------------------------------------------------------------------------------
// Configuration
// ------------------------------------------------------------------------------------------------

#[test]
fn default_config_is_v1_5() {
    let config = ImageProcessorConfig::default();
    assert_eq!(config.image_size, 384);
    assert_eq!(config.image_mean, [0.5; 3]);
    assert_eq!(config.image_std, [0.5; 3]);
    assert_eq!(config.mode, ResolutionMode::AnyRes);
    let canvases: Vec<_> = config.grids.iter().map(|g| g.canvas_size(384)).collect();
    assert_eq!(
        canvases,
        [(384, 768), (768, 384), (768, 768), (1152, 384), (384, 1152)]
    );
}

#[test]
fn hf_preprocessor_config_is_read_with_defaults() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path
    };

    let path = write(
        "full.json",
        r#"{"image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_std": [0.26862954, 0.26130258, 0.27577711],
            "size": {"height": 378, "width": 378}, "image_processor_type": "Blip3ImageProcessor",
            "anyres_grids": [[378, 756], [756, 378]], "image_aspect_ratio": "anyres"}"#,
    );
    let config = ImageProcessorConfig::from_hf_preprocessor_config(&path).expect("full");
    assert_eq!(config.image_size, 378);
    // The JSON numbers rounded to f32, as the config stores them.
    let as_f32 = |v: [f64; 3]| v.map(|x| x as f32);
    assert_eq!(
        config.image_mean,
        as_f32([0.48145466, 0.4578275, 0.40821073])
    );
    assert_eq!(
        config.image_std,
        as_f32([0.26862954, 0.26130258, 0.27577711])
    );
    assert_eq!(config.grids, [AnyResGrid::new(1, 2), AnyResGrid::new(2, 1)]);

    let path = write("empty.json", "{}");
    let config = ImageProcessorConfig::from_hf_preprocessor_config(&path).expect("empty");
    assert_eq!(config, ImageProcessorConfig::default());

    let path = write(
        "int.json",
        r#"{"image_size": 64, "image_aspect_ratio": "pad"}"#,
    );
    let config = ImageProcessorConfig::from_hf_preprocessor_config(&path).expect("int");
    assert_eq!(
        (config.image_size, config.mode),
        (64, ResolutionMode::Fixed)
    );

    let path = write("edge.json", r#"{"size": {"shortest_edge": 96}}"#);
    assert_eq!(
        ImageProcessorConfig::from_hf_preprocessor_config(&path)
            .expect("edge")
            .image_size,
        96
    );

    for (name, text) in [
        ("bad_json.json", "{not json"),
        ("array.json", "[1, 2]"),
        ("short_mean.json", r#"{"image_mean": [0.5, 0.5]}"#),
        ("zero_std.json", r#"{"image_std": [0.5, 0.0, 0.5]}"#),
        ("oblong.json", r#"{"size": {"height": 384, "width": 512}}"#),
        ("bad_grid.json", r#"{"anyres_grids": [[384, 700]]}"#),
        ("zero.json", r#"{"image_size": 0}"#),
    ] {
        let path = write(name, text);
        let err = ImageProcessorConfig::from_hf_preprocessor_config(&path).expect_err(name);
        assert!(
            err.to_string().contains(name),
            "{name}: error does not name the file: {err}"
        );
    }
    let missing = dir.path().join("missing.json");
    assert!(matches!(
        ImageProcessorConfig::from_hf_preprocessor_config(&missing),
        Err(DataError::Io { .. })
    ));
}

#[test]
fn config_serde_round_trip_and_validation() {
    let config = ImageProcessorConfig {
        image_size: 32,
        mode: ResolutionMode::Fixed,
        ..Default::default()
    };
    let json = serde_json::to_string(&config).expect("serialise");
    assert!(
        json.contains(r#""grids":[[1,2],[2,1],[2,2],[3,1],[1,3]]"#),
        "{json}"
    );
    assert!(json.contains(r#""mode":"fixed""#), "{json}");
    let back: ImageProcessorConfig = serde_json::from_str(&json).expect("deserialise");
    assert_eq!(back, config);
    let partial: ImageProcessorConfig =
        serde_json::from_str(r#"{"image_size": 64}"#).expect("partial");
    assert_eq!(partial.grids, AnyResGrid::v1_5_candidates());

    let invalid = [
        ImageProcessorConfig {
            grids: vec![],
            ..Default::default()
        },
        ImageProcessorConfig {
            grids: vec![AnyResGrid::new(0, 2)],
            ..Default::default()
        },
        ImageProcessorConfig {
            image_std: [1.0, f32::NAN, 1.0],
            ..Default::default()
        },
        ImageProcessorConfig {
            image_size: 0,
            ..Default::default()
        },
    ];
    for config in invalid {
        assert!(
            matches!(
                ImageProcessor::new(config.clone()),
                Err(DataError::Config(_))
            ),
            "{config:?}"
        );
    }
}
