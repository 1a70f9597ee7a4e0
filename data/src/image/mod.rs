//! Image decoding and Pillow-exact resampling.
//!
//! Decoding turns a file or an in-memory blob (JPEG, PNG, WebP, GIF, BMP, TIFF) into an 8-bit RGB
//! image with exactly the pixels of the Python reference's `Image.open(..).convert("RGB")`
//! (Pillow 13), checked pixel for pixel on the fixture set `tests/fixtures/images/`:
//!
//! * JPEG goes through libjpeg-turbo's decoder ([`jpeg`]), Pillow's own decoder, so the IDCT,
//!   chroma upsampling and colour conversion round the same way; CMYK and YCCK files get Pillow's
//!   inverted-CMYK reading and its CMYK→RGB formula;
//! * the EXIF orientation is **not** applied (Pillow does not apply it unless asked with
//!   `ImageOps.exif_transpose`, and the reference pipelines do not ask);
//! * grayscale is replicated to three channels; alpha is **dropped**, not composited (Pillow's
//!   RGBA→RGB, LA→RGB and palette→RGB conversions copy the colours and ignore alpha, so a fully
//!   transparent pixel keeps its stored colour);
//! * other formats are decoded by the `image` crate and converted with Pillow's rules
//!   ([`to_rgb8`]): 16-bit colour keeps the high byte (Pillow's `RGB;16B` reading), 16-bit
//!   grayscale opens as Pillow's `I;16` and converts by clipping to 255;
//! * a GIF contributes its first frame.
//!
//! Before anything is decoded, [`ImageLimits`] are enforced: only regular files are read (not
//! devices, FIFOs or directories), encoded images larger than [`ImageLimits::max_bytes`] (64 MiB by
//! default) are refused, and so are images whose header declares more than
//! [`ImageLimits::max_pixels`] pixels (178,956,970 by default, Pillow's `Image.MAX_IMAGE_PIXELS`).
//! The environment variables [`MAX_PIXELS_ENV`] and [`MAX_BYTES_ENV`] override the defaults for
//! every entry point that is not given explicit limits (`0` disables a limit).
//!
//! [`resize`] reimplements Pillow's `Image.resize` for 8-bit RGB (libImaging `Resample.c`), so that
//! the any-resolution tiling in [`crate::anyres`] reproduces the reference pixels exactly: a
//! separable convolution whose filter support is widened by the downscale factor (antialiasing),
//! per-output-pixel weight windows normalised to sum 1, weights in fixed point with 22 fractional
//! bits, two one-axis passes with an 8-bit intermediate (in Pillow 13's order), and clamping to
//! 0..=255.

use std::io::{Cursor, Read};
use std::path::Path;

use ::image::{DynamicImage, ImageDecoder, ImageReader};

use crate::error::DataError;
use crate::sample::ImageSource;

mod jpeg;

/// An 8-bit RGB image, row-major, 3 bytes a pixel (the `image` crate's buffer type).
pub use ::image::RgbImage;

/// The default pixel budget: Pillow's `Image.MAX_IMAGE_PIXELS` (`int(1024 * 1024 * 1024 // 4 //
/// 3)`), above which Pillow refuses to open an image as a likely decompression bomb.
pub const DEFAULT_MAX_PIXELS: u64 = 178_956_970;

/// The default size limit of an encoded image: 64 MiB (far above any real photograph or scan at
/// the default pixel budget, far below what would exhaust memory).
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;

/// The environment variable that overrides [`ImageLimits::max_pixels`] (a count; `0`: no limit).
pub const MAX_PIXELS_ENV: &str = "BLIP3_MAX_IMAGE_PIXELS";

/// The environment variable that overrides [`ImageLimits::max_bytes`] (a count; `0`: no limit).
pub const MAX_BYTES_ENV: &str = "BLIP3_MAX_IMAGE_BYTES";

/// Limits checked before an image is decoded (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImageLimits {
    /// The largest `width * height` accepted, as declared by the image header
    /// ([`DEFAULT_MAX_PIXELS`]; `0`: no limit).
    pub max_pixels: u64,
    /// The largest encoded size accepted, in bytes ([`DEFAULT_MAX_BYTES`]; `0`: no limit).
    pub max_bytes: u64,
}

impl Default for ImageLimits {
    fn default() -> Self {
        ImageLimits {
            max_pixels: DEFAULT_MAX_PIXELS,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

impl ImageLimits {
    /// The defaults, overridden by [`MAX_PIXELS_ENV`] and [`MAX_BYTES_ENV`] when they are set. A
    /// value that is not a non-negative integer is a [`DataError::Config`] naming the variable.
    pub fn from_env() -> Result<ImageLimits, DataError> {
        let read = |name: &str, default: u64| -> Result<u64, DataError> {
            match std::env::var(name) {
                Err(std::env::VarError::NotPresent) => Ok(default),
                Ok(value) => value.trim().replace('_', "").parse().map_err(|_| {
                    DataError::Config(format!(
                        "{name}={value:?} is not a non-negative integer (0 disables the limit)"
                    ))
                }),
                Err(e) => Err(DataError::Config(format!("{name}: {e}"))),
            }
        };
        Ok(ImageLimits {
            max_pixels: read(MAX_PIXELS_ENV, DEFAULT_MAX_PIXELS)?,
            max_bytes: read(MAX_BYTES_ENV, DEFAULT_MAX_BYTES)?,
        })
    }

    /// Refuses an encoded size over [`ImageLimits::max_bytes`].
    fn check_bytes(&self, len: u64, name: &str) -> Result<(), DataError> {
        if self.max_bytes > 0 && len > self.max_bytes {
            return Err(DataError::ImageRefused {
                path: name.to_string(),
                msg: format!(
                    "{len} bytes, more than the limit of {} bytes ({MAX_BYTES_ENV})",
                    self.max_bytes
                ),
            });
        }
        Ok(())
    }

    /// Refuses declared dimensions over [`ImageLimits::max_pixels`].
    fn check_pixels(&self, (width, height): (u32, u32)) -> Result<(), String> {
        let pixels = u64::from(width) * u64::from(height);
        if self.max_pixels > 0 && pixels > self.max_pixels {
            return Err(format!(
                "{width}x{height} = {pixels} pixels, more than the limit of {} pixels \
                 ({MAX_PIXELS_ENV}); refused before decoding",
                self.max_pixels
            ));
        }
        Ok(())
    }
}

/// Decodes an image from wherever it lives and converts it to 8-bit RGB with Pillow's pixels
/// (see the module documentation for the rules; the EXIF orientation is not applied), within
/// the limits of [`ImageLimits::from_env`].
///
/// Errors name the file (or the `name` of an in-memory source): [`DataError::Io`] when a file cannot
/// be read, [`DataError::ImageRefused`] when it is not a regular file or exceeds a limit,
/// [`DataError::Image`] when its content does not decode.
pub fn decode_image(src: &ImageSource) -> Result<RgbImage, DataError> {
    decode_image_with(src, &ImageLimits::from_env()?)
}

/// [`decode_image`] with explicit limits.
pub fn decode_image_with(src: &ImageSource, limits: &ImageLimits) -> Result<RgbImage, DataError> {
    match src {
        ImageSource::Path(path) => decode_path_with(path, limits),
        ImageSource::Bytes { bytes, name } => decode_bytes_with(bytes, name, limits),
    }
}

/// Reads and decodes an image file. See [`decode_image`].
pub fn decode_path(path: &Path) -> Result<RgbImage, DataError> {
    decode_path_with(path, &ImageLimits::from_env()?)
}

/// [`decode_path`] with explicit limits.
pub fn decode_path_with(path: &Path, limits: &ImageLimits) -> Result<RgbImage, DataError> {
    let bytes = read_image_file(path, limits)?;
    decode_bytes_with(&bytes, &path.display().to_string(), limits)
}

/// Reads an image file: a regular file (checked before it is opened, so that a FIFO does not
/// block) of at most [`ImageLimits::max_bytes`] (checked before and while reading, so that a file
/// that grows meanwhile cannot exceed it).
pub fn read_image_file(path: &Path, limits: &ImageLimits) -> Result<Vec<u8>, DataError> {
    let name = path.display().to_string();
    let refused = |msg: String| DataError::ImageRefused {
        path: name.clone(),
        msg,
    };
    let meta = std::fs::metadata(path).map_err(|e| DataError::io(path, e))?;
    if !meta.is_file() {
        return Err(refused(format!(
            "not a regular file ({}); images are read from regular files only",
            file_kind(&meta)
        )));
    }
    limits.check_bytes(meta.len(), &name)?;
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let cap = if limits.max_bytes > 0 {
        limits.max_bytes.saturating_add(1)
    } else {
        u64::MAX
    };
    let mut bytes = Vec::with_capacity(meta.len().min(cap) as usize);
    file.take(cap)
        .read_to_end(&mut bytes)
        .map_err(|e| DataError::io(path, e))?;
    limits.check_bytes(bytes.len() as u64, &name)?;
    Ok(bytes)
}

/// What kind of non-regular file `meta` describes, for messages.
fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if meta.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

/// Decodes encoded image bytes; `name` locates them in error messages (a path, or a
/// `shard.tar:key.jpg` member). See [`decode_image`].
pub fn decode_bytes(bytes: &[u8], name: &str) -> Result<RgbImage, DataError> {
    decode_bytes_with(bytes, name, &ImageLimits::from_env()?)
}

/// [`decode_bytes`] with explicit limits.
pub fn decode_bytes_with(
    bytes: &[u8],
    name: &str,
    limits: &ImageLimits,
) -> Result<RgbImage, DataError> {
    let image_error = |msg: String| DataError::Image {
        path: name.to_string(),
        msg,
    };
    if bytes.is_empty() {
        return Err(image_error("empty file".to_string()));
    }
    limits.check_bytes(bytes.len() as u64, name)?;
    // The decoders are third-party code fed untrusted bytes: a panic inside one must become an
    // error for this image, not bring the loader down.
    let decoded = std::panic::catch_unwind(|| decode_pixels(bytes, limits)).map_err(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_string());
        image_error(format!("decoder panicked: {what}"))
    })?;
    let image = decoded.map_err(|e| match e {
        Refusal::Limit(msg) => DataError::ImageRefused {
            path: name.to_string(),
            msg,
        },
        Refusal::Decode(msg) => image_error(msg),
    })?;
    if image.width() == 0 || image.height() == 0 {
        return Err(image_error(format!(
            "image has no pixels ({}x{})",
            image.width(),
            image.height()
        )));
    }
    Ok(image)
}

/// Why [`decode_pixels`] gave no image.
enum Refusal {
    /// Over an [`ImageLimits`] limit (before decoding).
    Limit(String),
    /// Not a decodable image.
    Decode(String),
}

/// Decodes `bytes` (format guessed from the content) to Pillow's `convert("RGB")` pixels, after
/// checking the declared dimensions against `limits`. JPEG goes through libjpeg-turbo's decoder
/// ([`jpeg`]); the other formats through the `image` crate, converted by [`to_rgb8`].
fn decode_pixels(bytes: &[u8], limits: &ImageLimits) -> Result<RgbImage, Refusal> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Refusal::Decode(e.to_string()))?;
    match reader.format() {
        None => {
            return Err(Refusal::Decode(
                "unrecognised image format (expected JPEG, PNG, WebP, GIF, BMP or TIFF)"
                    .to_string(),
            ));
        }
        // libjpeg fills a cut-off stream with grey and warns; Pillow refuses such files ("image
        // file is truncated"), and so do we.
        Some(::image::ImageFormat::Jpeg) if !jpeg_has_end(bytes) => {
            return Err(Refusal::Decode(
                "truncated JPEG (no end-of-image marker after the scan data)".to_string(),
            ));
        }
        Some(::image::ImageFormat::Jpeg) => {
            return jpeg::decode(bytes, limits).map_err(|e| match e {
                jpeg::JpegError::Limit(msg) => Refusal::Limit(msg),
                jpeg::JpegError::Decode(msg) => Refusal::Decode(msg),
            });
        }
        Some(::image::ImageFormat::Tiff) => {
            if let Some(image) = decode_tiff_cmyk(bytes, limits)? {
                return Ok(image);
            }
        }
        Some(_) => {}
    }
    // `ImageReader::new` also keeps the crate's default allocation limit.
    let decoder = reader
        .into_decoder()
        .map_err(|e| Refusal::Decode(e.to_string()))?;
    // The header's dimensions are known before any pixel is decoded.
    limits
        .check_pixels(decoder.dimensions())
        .map_err(Refusal::Limit)?;
    // The EXIF orientation is not applied: `Image.open(..).convert("RGB")` ignores it.
    let image = DynamicImage::from_decoder(decoder).map_err(|e| Refusal::Decode(e.to_string()))?;
    Ok(to_rgb8(image, is_png_gray16(bytes)))
}

/// An 8-bit CMYK TIFF with Pillow's pixels (the `image` crate converts CMYK with its own
/// rounding): the plain ink values through Pillow's `cmyk2rgb`. `None` for every other TIFF.
fn decode_tiff_cmyk(bytes: &[u8], limits: &ImageLimits) -> Result<Option<RgbImage>, Refusal> {
    let decode = |e: ::tiff::TiffError| Refusal::Decode(e.to_string());
    let mut decoder = ::tiff::decoder::Decoder::new(Cursor::new(bytes)).map_err(decode)?;
    if decoder.colortype().map_err(decode)? != ::tiff::ColorType::CMYK(8) {
        return Ok(None);
    }
    let (width, height) = decoder.dimensions().map_err(decode)?;
    limits
        .check_pixels((width, height))
        .map_err(Refusal::Limit)?;
    let ::tiff::decoder::DecodingResult::U8(cmyk) = decoder.read_image().map_err(decode)? else {
        return Err(Refusal::Decode(
            "8-bit CMYK TIFF gave non-8-bit samples".into(),
        ));
    };
    let rgb: Vec<u8> = cmyk
        .chunks_exact(4)
        .flat_map(|p| cmyk_to_rgb([p[0], p[1], p[2], p[3]]))
        .collect();
    RgbImage::from_raw(width, height, rgb)
        .map(Some)
        .ok_or_else(|| Refusal::Decode(format!("CMYK TIFF data does not fill {width}x{height}")))
}

/// Pillow's `cmyk2rgb` for one pixel: with `nk = 255 - k`, each channel is
/// `clip(nk - nk·c/255)`, the product rounded as Pillow's `MULDIV255` does.
fn cmyk_to_rgb([c, m, y, k]: [u8; 4]) -> [u8; 3] {
    let nk = 255 - i32::from(k);
    let channel = |v: u8| {
        let t = i32::from(v) * nk + 128;
        let product = ((t >> 8) + t) >> 8;
        (nk - product).clamp(0, 255) as u8
    };
    [channel(c), channel(m), channel(y)]
}

/// Whether a JPEG stream reaches an end-of-image marker after its first scan. Walks the marker
/// segments up to the first start-of-scan (so that a thumbnail inside an EXIF segment, which has
/// its own end marker, is skipped), then looks for `FF D9` in the rest: entropy-coded data cannot
/// contain it. A stream whose structure this walk does not understand is left to the decoder.
fn jpeg_has_end(bytes: &[u8]) -> bool {
    const EOI: [u8; 2] = [0xFF, 0xD9];
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return true;
    }
    let mut i = 2;
    loop {
        // Markers may be preceded by any number of 0xFF fill bytes.
        while bytes.get(i) == Some(&0xFF) && bytes.get(i + 1) == Some(&0xFF) {
            i += 1;
        }
        let (Some(&0xFF), Some(&marker)) = (bytes.get(i), bytes.get(i + 1)) else {
            // Ran out of bytes before the scan, or not a marker where one must be.
            return i + 1 < bytes.len();
        };
        match marker {
            0xD9 => return true,
            0x01 | 0xD0..=0xD8 => {
                i += 2;
                continue;
            }
            _ => {}
        }
        let (Some(&hi), Some(&lo)) = (bytes.get(i + 2), bytes.get(i + 3)) else {
            return false;
        };
        let segment_end = i + 2 + usize::from(u16::from_be_bytes([hi, lo]));
        if marker == 0xDA {
            let scan = bytes.get(segment_end..).unwrap_or(&[]);
            return scan.windows(2).any(|w| w == EOI);
        }
        i = segment_end;
    }
}

/// Whether `bytes` is a PNG of 16-bit grayscale without an alpha channel (colour type 0), which
/// Pillow opens as `I;16` even when a tRNS key makes the `image` crate add an alpha channel.
fn is_png_gray16(bytes: &[u8]) -> bool {
    // Signature (8), IHDR length and tag (8), width and height (8), bit depth, colour type.
    bytes.starts_with(b"\x89PNG\r\n\x1a\n")
        && bytes.get(12..16) == Some(b"IHDR")
        && bytes.get(24) == Some(&16)
        && bytes.get(25) == Some(&0)
}

/// Pillow's `I;16` → `RGB` conversion of one sample: values above 255 clip to white.
fn clip_u16(v: u16) -> u8 {
    v.min(255) as u8
}

/// Converts any decoded layout to 8-bit RGB with Pillow's `.convert("RGB")` rules: gray is
/// replicated, alpha is dropped, 16-bit colour and gray+alpha samples keep their high byte
/// (Pillow's `RGB;16B`/`LA;16B` readings), 16-bit gray opens as `I;16` and clips to 255
/// (`gray16_as_i16` marks a 16-bit gray PNG whose tRNS key the decoder expanded to alpha).
fn to_rgb8(image: DynamicImage, gray16_as_i16: bool) -> RgbImage {
    let (width, height) = (image.width(), image.height());
    let from_samples = |data: Vec<u8>| RgbImage::from_raw(width, height, data);
    let converted = match image {
        DynamicImage::ImageRgb8(rgb) => return rgb,
        DynamicImage::ImageRgba8(rgba) => {
            from_samples(rgba.pixels().flat_map(|p| [p[0], p[1], p[2]]).collect())
        }
        DynamicImage::ImageLuma8(gray) => {
            from_samples(gray.pixels().flat_map(|p| [p[0]; 3]).collect())
        }
        DynamicImage::ImageLumaA8(gray) => {
            from_samples(gray.pixels().flat_map(|p| [p[0]; 3]).collect())
        }
        DynamicImage::ImageRgb16(rgb) => from_samples(
            rgb.pixels()
                .flat_map(|p| [high_byte(p[0]), high_byte(p[1]), high_byte(p[2])])
                .collect(),
        ),
        DynamicImage::ImageRgba16(rgba) => from_samples(
            rgba.pixels()
                .flat_map(|p| [high_byte(p[0]), high_byte(p[1]), high_byte(p[2])])
                .collect(),
        ),
        DynamicImage::ImageLuma16(gray) => {
            from_samples(gray.pixels().flat_map(|p| [clip_u16(p[0]); 3]).collect())
        }
        DynamicImage::ImageLumaA16(gray) if gray16_as_i16 => {
            from_samples(gray.pixels().flat_map(|p| [clip_u16(p[0]); 3]).collect())
        }
        DynamicImage::ImageLumaA16(gray) => {
            from_samples(gray.pixels().flat_map(|p| [high_byte(p[0]); 3]).collect())
        }
        other => return other.to_rgb8(),
    };
    // The sample vectors above always hold width * height * 3 bytes, so `from_raw` succeeds; the
    // fallback keeps this total anyway.
    converted.unwrap_or_else(|| RgbImage::new(width, height))
}

fn high_byte(v: u16) -> u8 {
    (v >> 8) as u8
}

// The filter definitions, Pillow's fixed-point coefficient tables and the host resampler live in
// the shaders crate (`blip3_shaders::pillow`), beside the device resampling kernel that shares
// the tables; the pipeline resizes through it.
pub use blip3_shaders::pillow::{AxisCoefficients, PRECISION_BITS, ResampleFilter};

/// Resizes an 8-bit RGB image to `width` x `height` exactly as Pillow 13's
/// `Image.resize((width, height), filter)` does for an RGB image (no `box`, no `reducing_gap`).
///
/// The two passes keep an 8-bit intermediate, so their order matters. Pillow 13 resamples
/// vertically first when the height shrinks by more than twice as many pixels as the width
/// (`in_h - out_h > 2 * (in_w - out_w)`, which includes every height reduction with a width that
/// grows or stays), horizontally first otherwise. (This rule was established against Pillow 13.0.0
/// on thousands of random sizes; Pillow 12 always went horizontally first, except for images over
/// 100 times taller than wide.) An axis whose size does not change is not resampled at all. A
/// same-size request returns a copy. An empty source or target gives a black image of the
/// requested size.
pub fn resize(src: &RgbImage, width: u32, height: u32, filter: ResampleFilter) -> RgbImage {
    let (in_w, in_h) = src.dimensions();
    if (in_w, in_h) == (width, height) {
        return src.clone();
    }
    if in_w == 0 || in_h == 0 || width == 0 || height == 0 {
        return RgbImage::new(width, height);
    }
    let data = blip3_shaders::pillow::resize_rgb8(
        src.as_raw(),
        (in_w as usize, in_h as usize),
        (width as usize, height as usize),
        filter,
    );
    RgbImage::from_raw(width, height, data).unwrap_or_else(|| RgbImage::new(width, height))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bicubic_weights_sum_to_one_in_fixed_point() {
        for (i, o) in [(10, 3), (3, 10), (523, 96), (97, 247), (1, 5)] {
            let w = AxisCoefficients::pillow(i, o, ResampleFilter::Bicubic);
            for x in 0..o {
                let (_, ks) = w.window(x).unwrap_or((0, &[]));
                let sum: i32 = ks.iter().sum();
                // Each weight is rounded separately, so the sum may be off by a few units.
                assert!(
                    (sum - (1 << PRECISION_BITS)).abs() <= ks.len() as i32,
                    "{i}->{o} @{x}"
                );
            }
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let src = RgbImage::from_pixel(37, 23, ::image::Rgb([200, 13, 77]));
        for filter in [
            ResampleFilter::Box,
            ResampleFilter::Bilinear,
            ResampleFilter::Hamming,
            ResampleFilter::Bicubic,
            ResampleFilter::Lanczos,
        ] {
            for (w, h) in [(5, 4), (80, 50), (37, 9), (11, 23), (1, 1)] {
                let out = resize(&src, w, h, filter);
                assert_eq!(out.dimensions(), (w, h));
                assert!(
                    out.pixels().all(|p| p.0 == [200, 13, 77]),
                    "{filter:?} {w}x{h}"
                );
            }
        }
    }

    #[test]
    fn empty_inputs_do_not_panic() {
        let src = RgbImage::new(0, 0);
        assert_eq!(
            resize(&src, 4, 3, ResampleFilter::Bicubic).dimensions(),
            (4, 3)
        );
        let src = RgbImage::new(4, 3);
        assert_eq!(
            resize(&src, 0, 3, ResampleFilter::Bicubic).dimensions(),
            (0, 3)
        );
    }
}
