//! Image decoding and Pillow-exact resampling.
//!
//! Decoding turns a file or an in-memory blob (JPEG, PNG, WebP, GIF, BMP) into an 8-bit RGB image,
//! the way the Python reference sees it after `Image.open(..).convert("RGB")`:
//!
//! * the EXIF orientation tag (JPEG, WebP, PNG `eXIf`) is applied, like `ImageOps.exif_transpose`;
//! * grayscale is replicated to three channels;
//! * alpha is **dropped**, not composited: Pillow's RGBA→RGB and LA→RGB conversions copy the colour
//!   channels and ignore alpha, so a fully transparent pixel keeps its stored colour;
//! * CMYK JPEGs are converted to RGB by the decoder;
//! * 16-bit samples keep their high byte (what Pillow's `RGB;16B` unpacker does for 16-bit RGB
//!   PNGs; for 16-bit grayscale Pillow's `I;16` → RGB conversion clips every value above 255 to
//!   white instead, a quirk not copied here);
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

/// Decodes an image from wherever it lives, applies its EXIF orientation and converts it to 8-bit
/// RGB (see the module documentation for the conversion rules), within the limits of
/// [`ImageLimits::from_env`].
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
    let decoded = std::panic::catch_unwind(|| decode_oriented(bytes, limits)).map_err(|panic| {
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
    Ok(to_rgb8(image))
}

/// Why [`decode_oriented`] gave no image.
enum Refusal {
    /// Over an [`ImageLimits`] limit (before decoding).
    Limit(String),
    /// Not a decodable image.
    Decode(String),
}

/// Decodes `bytes` (format guessed from the content) and applies the EXIF orientation, after
/// checking the declared dimensions against `limits`.
fn decode_oriented(bytes: &[u8], limits: &ImageLimits) -> Result<DynamicImage, Refusal> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Refusal::Decode(e.to_string()))?;
    match reader.format() {
        None => {
            return Err(Refusal::Decode(
                "unrecognised image format (expected JPEG, PNG, WebP, GIF or BMP)".to_string(),
            ));
        }
        // The JPEG decoder fills a cut-off stream with grey instead of failing; Pillow refuses
        // such files ("image file is truncated"), and so do we.
        Some(::image::ImageFormat::Jpeg) if !jpeg_has_end(bytes) => {
            return Err(Refusal::Decode(
                "truncated JPEG (no end-of-image marker after the scan data)".to_string(),
            ));
        }
        Some(_) => {}
    }
    // `ImageReader::new` also keeps the crate's default allocation limit.
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| Refusal::Decode(e.to_string()))?;
    // The header's dimensions are known before any pixel is decoded.
    limits
        .check_pixels(decoder.dimensions())
        .map_err(Refusal::Limit)?;
    let orientation = match decoder.orientation() {
        Ok(orientation) => orientation,
        Err(e) => {
            // Broken metadata is not a reason to drop an otherwise decodable image.
            log::debug!("ignoring unreadable EXIF orientation: {e}");
            ::image::metadata::Orientation::NoTransforms
        }
    };
    let mut image =
        DynamicImage::from_decoder(decoder).map_err(|e| Refusal::Decode(e.to_string()))?;
    image.apply_orientation(orientation);
    Ok(image)
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

/// Converts any decoded layout to 8-bit RGB with Pillow's `.convert("RGB")` rules: gray is
/// replicated, alpha is dropped, 16-bit samples keep their high byte.
fn to_rgb8(image: DynamicImage) -> RgbImage {
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
            from_samples(gray.pixels().flat_map(|p| [high_byte(p[0]); 3]).collect())
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
