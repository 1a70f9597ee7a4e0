//! Pre-training data: caption pairs in img2dataset WebDataset shards, and OBELICS-style
//! interleaved documents.

use serde::Serialize;

use super::draw::Format;
use super::lang::{self, CaptionStyle};
use super::out::{self, Out, Tar};
use super::scene::{self, Plan, Scene};
use super::{Ctx, DatasetEntry, Pictured, SynthConfig, scene_rows};
use crate::error::DataError;

/// The `{key}.json` member of an img2dataset shard.
#[derive(Serialize)]
struct Img2DatasetMeta<'a> {
    url: String,
    caption: &'a str,
    key: &'a str,
    status: &'static str,
    error_message: Option<String>,
    width: u32,
    height: u32,
    original_width: u32,
    original_height: u32,
    exif: Option<String>,
    sha256: Option<String>,
}

/// Per-image metadata of an OBELICS document (the `metadata` list, JSON-encoded).
#[derive(Serialize)]
struct ObelicsImageMeta {
    document_url: String,
    unformatted_src: String,
    src: String,
    formatted_filename: String,
    alt_text: String,
    original_width: u32,
    original_height: u32,
}

/// The document-level metadata of an OBELICS document (`general_metadata`, JSON-encoded).
#[derive(Serialize)]
struct ObelicsGeneralMeta {
    url: String,
    source: &'static str,
}

/// One OBELICS-style document: parallel `texts`/`images` lists with exactly one non-null entry
/// per position.
#[derive(Serialize)]
struct ObelicsDoc {
    images: Vec<Option<String>>,
    metadata: String,
    general_metadata: String,
    texts: Vec<Option<String>>,
}

/// A pre-training image: mostly shapes, one in eight an OCR string.
fn caption_scene(ctx: &Ctx, rng: &mut super::rng::Rng) -> Scene {
    if rng.below(8) == 0 {
        let text = scene::ocr_text(rng);
        scene::ocr_scene(rng, ctx.sizes, &text)
    } else {
        scene::shapes_scene(rng, ctx.sizes, Plan::Free, None)
    }
}

/// Writes `pretrain/`.
pub(super) fn write(
    out: &mut Out,
    ctx: &Ctx,
    cfg: &SynthConfig,
) -> Result<Vec<DatasetEntry>, DataError> {
    let mut scenes: Vec<Pictured> = Vec::new();

    // Caption shards. Keys follow img2dataset: shard * 10^4 + index, nine digits.
    let mut shard_files: Vec<String> = Vec::new();
    let mut current: Option<(String, Tar)> = None;
    for i in 0..cfg.caption_samples {
        let (shard, idx) = (i / cfg.shard_size, i % cfg.shard_size);
        if idx == 0 {
            if let Some((name, tar)) = current.take() {
                out.write(&name, &tar.finish()?)?;
                shard_files.push(name);
            }
            let name = format!("pretrain/captions/shard-{shard:05}.tar");
            current = Some((name.clone(), Tar::new(&name)));
        }
        let Some((name, tar)) = current.as_mut() else {
            continue;
        };
        let key = format!("{:09}", shard * 10_000 + idx);
        let mut rng = ctx.rng("pretrain-caption", i);
        let s = caption_scene(ctx, &mut rng);
        let style = CaptionStyle::ALL[rng.below(CaptionStyle::ALL.len())];
        let caption = lang::caption(&s, style);
        let format = if s.label.is_some() || i % 10 == 9 {
            Format::Png
        } else {
            Format::Jpeg
        };
        let member = format!("{key}.{}", format.ext());
        let image = out.encode(&s, format, &format!("{name}:{member}"))?;
        let meta = Img2DatasetMeta {
            url: format!("https://synth.invalid/pretrain/{member}"),
            caption: &caption,
            key: &key,
            status: "success",
            error_message: None,
            width: s.width,
            height: s.height,
            original_width: s.width,
            original_height: s.height,
            exif: None,
            sha256: None,
        };
        let meta = out::to_json(&meta, 4, name)?;
        tar.add(&member, &image)?;
        tar.add(&format!("{key}.txt"), caption.as_bytes())?;
        tar.add(&format!("{key}.json"), &meta)?;
        let shard_base = name.trim_start_matches("pretrain/");
        scenes.push((format!("{shard_base}:{member}"), s));
    }
    if let Some((name, tar)) = current.take() {
        out.write(&name, &tar.finish()?)?;
        shard_files.push(name);
    }

    // Interleaved documents: an optional introduction, then each image followed by text about it.
    let mut docs = Vec::new();
    let mut doc_images = 0;
    for d in 0..cfg.interleaved_docs {
        let mut rng = ctx.rng("pretrain-doc", d);
        let n = rng.range(2, 3) as usize;
        let url = format!("https://synth.invalid/doc/{d:06}");
        let mut images: Vec<Option<String>> = Vec::new();
        let mut texts: Vec<Option<String>> = Vec::new();
        let mut metadata: Vec<Option<ObelicsImageMeta>> = Vec::new();
        if rng.chance(0.5) {
            images.push(None);
            texts.push(Some(lang::doc_intro(n)));
            metadata.push(None);
        }
        let variant = rng.below(2);
        for k in 0..n {
            let s = scene::shapes_scene(&mut rng, ctx.sizes, Plan::Free, None);
            let rel = out.image(
                &format!("pretrain/interleaved/images/doc{d:06}_{k}"),
                &s,
                Format::Jpeg,
            )?;
            let local = out::strip(&rel, "pretrain/interleaved");
            let alt = lang::caption(&s, CaptionStyle::List);
            // Styles that read well after "Picture one shows".
            let styles = [
                CaptionStyle::List,
                CaptionStyle::Positions,
                CaptionStyle::Background,
            ];
            let style = styles[rng.below(styles.len())];
            metadata.push(Some(ObelicsImageMeta {
                document_url: url.clone(),
                unformatted_src: format!("https://synth.invalid/{local}"),
                src: format!("https://synth.invalid/{local}"),
                formatted_filename: format!("doc{d:06} {k}"),
                alt_text: alt,
                original_width: s.width,
                original_height: s.height,
            }));
            images.push(Some(local));
            texts.push(None);
            images.push(None);
            texts.push(Some(lang::doc_about(
                k + 1,
                &lang::caption(&s, style),
                variant,
            )));
            metadata.push(None);
            scenes.push((out::strip(&rel, "pretrain"), s));
            doc_images += 1;
        }
        let general = ObelicsGeneralMeta {
            url,
            source: "blip3-synth",
        };
        docs.push(ObelicsDoc {
            images,
            metadata: String::from_utf8_lossy(&out::to_json(&metadata, 0, "metadata")?)
                .into_owned(),
            general_metadata: String::from_utf8_lossy(&out::to_json(
                &general,
                0,
                "general_metadata",
            )?)
            .into_owned(),
            texts,
        });
    }
    out.jsonl("pretrain/interleaved/docs.jsonl", &docs)?;

    let rows = scene_rows(&scenes);
    out.jsonl("pretrain/scenes.jsonl", &rows)?;

    Ok(vec![
        DatasetEntry {
            name: "pretrain/captions".into(),
            format: "webdataset".into(),
            files: shard_files,
            records: cfg.caption_samples,
            images: cfg.caption_samples,
            image_root: None,
        },
        DatasetEntry {
            name: "pretrain/interleaved".into(),
            format: "obelics-jsonl".into(),
            files: vec!["pretrain/interleaved/docs.jsonl".into()],
            records: docs.len(),
            images: doc_images,
            image_root: Some("pretrain/interleaved".into()),
        },
        DatasetEntry {
            name: "pretrain/scenes".into(),
            format: "scenes-jsonl".into(),
            files: vec!["pretrain/scenes.jsonl".into()],
            records: rows.len(),
            images: rows.len(),
            image_root: Some("pretrain".into()),
        },
    ])
}
