//! Where request images may come from: `data:` URLs (base64 PNG, JPEG, WebP, GIF, BMP, TIFF) and,
//! only when the server was given an `--allow-root` folder, local files inside it (`file://`
//! URLs or plain paths, symbolic links resolved before the check). Remote `http(s)` URLs are
//! refused: the server never fetches from the network. Decoding applies the same pixel and byte
//! limits as `blip3 generate` (docs/data.md, `BLIP3_MAX_IMAGE_PIXELS` / `BLIP3_MAX_IMAGE_BYTES`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use blip3_data::image::{ImageLimits, RgbImage, decode_image_with};
use blip3_data::sample::ImageSource;

/// Why an image URL was refused or could not be read (each a 400 for the client).
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// `http(s)://`: the server does not fetch.
    #[error(
        "remote image URLs are not fetched by this server ({0}); send the image as a data: URL"
    )]
    Remote(String),
    /// A local path without `--allow-root`, or outside it.
    #[error("{0}")]
    LocalRefused(String),
    /// A malformed `data:` URL.
    #[error("bad data: URL: {0}")]
    BadDataUrl(String),
    /// The image does not decode or breaks a limit.
    #[error("{0}")]
    Decode(String),
}

/// The image policy of a server.
#[derive(Debug, Clone)]
pub struct ImagePolicy {
    /// Local files are served from inside this folder only; `None`: no local files.
    pub allow_root: Option<PathBuf>,
    /// Decoding limits.
    pub limits: ImageLimits,
}

impl ImagePolicy {
    /// Where the URL points, checked against the policy.
    pub fn source(&self, url: &str) -> Result<ImageSource, ImageError> {
        let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            return Err(ImageError::Remote(truncate(url)));
        }
        if let Some(rest) = url.strip_prefix("data:") {
            return data_url(rest).map(|bytes| ImageSource::Bytes {
                bytes: Arc::new(bytes),
                name: "data: URL".into(),
            });
        }
        let path = url.strip_prefix("file://").unwrap_or(url);
        let Some(root) = &self.allow_root else {
            return Err(ImageError::LocalRefused(format!(
                "local image {} refused: the server was started without --allow-root",
                truncate(path)
            )));
        };
        let resolved = blip3_data::paths::resolve_inside(root, Path::new(path), false)
            .map_err(|e| ImageError::LocalRefused(format!("local image: {e}")))?;
        Ok(ImageSource::Path(resolved))
    }

    /// Reads and decodes an image URL.
    pub fn decode(&self, url: &str) -> Result<RgbImage, ImageError> {
        let src = self.source(url)?;
        decode_image_with(&src, &self.limits).map_err(|e| ImageError::Decode(e.to_string()))
    }
}

/// The bytes of a `data:[<mediatype>][;base64],<data>` URL (after `data:`).
fn data_url(rest: &str) -> Result<Vec<u8>, ImageError> {
    let (meta, payload) = rest
        .split_once(',')
        .ok_or_else(|| ImageError::BadDataUrl("no ',' before the data".into()))?;
    if !meta.ends_with(";base64") {
        return Err(ImageError::BadDataUrl(
            "only base64 data: URLs are accepted (…;base64,…)".into(),
        ));
    }
    let media = meta.trim_end_matches(";base64");
    if !media.is_empty() && !media.starts_with("image/") {
        return Err(ImageError::BadDataUrl(format!(
            "media type {media:?} is not an image"
        )));
    }
    let compact: String = payload.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .map_err(|e| ImageError::BadDataUrl(format!("invalid base64: {e}")))
}

fn truncate(s: &str) -> String {
    if s.chars().count() > 80 {
        format!("{}…", s.chars().take(80).collect::<String>())
    } else {
        s.to_string()
    }
}
