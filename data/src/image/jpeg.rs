//! JPEG decoding with Pillow's pixels.
//!
//! Pillow decodes JPEG through libjpeg-turbo with the library's defaults (the accurate integer
//! IDCT, "fancy" triangle-filter chroma upsampling, its YCbCr→RGB tables) and then converts the
//! opened mode to RGB. Pure-Rust decoders round the IDCT and the upsampling differently, which
//! moves colour pixels by a few levels and image-conditioned losses by up to 1e-2. We decode with
//! libjpeg-turbo's own code instead (through MozJPEG, a libjpeg-turbo fork whose decoder is
//! unchanged), built from vendored C sources by `cc`, and reproduce Pillow's conversions:
//!
//! * YCbCr and RGB files (three components) → RGB by libjpeg, as Pillow asks it;
//! * greyscale → replicated by libjpeg's gray→RGB conversion, as Pillow's `L`→`RGB`;
//! * CMYK and YCCK (Adobe) files → CMYK by libjpeg, read with Pillow's `CMYK;I` unpacker (every
//!   channel inverted: Pillow always assumes Adobe's inverted polarity) and converted with
//!   Pillow's `cmyk2rgb` (`255 - k - c·(255 - k)/255` per channel in Pillow's rounding);
//! * other component counts are refused, like Pillow's "cannot handle N-layer images";
//! * EXIF orientation and ICC profiles are ignored, as `Image.open(..).convert("RGB")` does.
//!
//! The fixture set under `tests/fixtures/images/` (baseline, progressive, arithmetic-free
//! restart intervals, 4:4:4/4:2:2/4:2:0/4:4:0, greyscale, CMYK, YCCK, odd sizes) is compared with
//! Pillow 13's output pixel for pixel (max |Δ| = 0).

use mozjpeg::{ColorSpace, Decompress};

use super::{ImageLimits, RgbImage, cmyk_to_rgb};

/// Why a JPEG gave no image (mapped to the crate's errors by the caller).
pub(super) enum JpegError {
    /// The header declares more pixels than allowed.
    Limit(String),
    /// Not a decodable JPEG.
    Decode(String),
}

/// Decodes a complete JPEG stream to 8-bit RGB with Pillow's pixels (see the module docs). The
/// caller has already checked that the stream is not truncated. libjpeg reports fatal errors by
/// unwinding (MozJPEG's error manager); the caller's `catch_unwind` turns them into errors.
pub(super) fn decode(bytes: &[u8], limits: &ImageLimits) -> Result<RgbImage, JpegError> {
    let decode_error = |e: std::io::Error| JpegError::Decode(e.to_string());
    let header = Decompress::new_mem(bytes).map_err(decode_error)?;
    let (width, height) = (header.width(), header.height());
    let dims = (
        u32::try_from(width).unwrap_or(u32::MAX),
        u32::try_from(height).unwrap_or(u32::MAX),
    );
    limits.check_pixels(dims).map_err(JpegError::Limit)?;
    let components = header.components().len();
    let samples = match header.color_space() {
        ColorSpace::JCS_CMYK | ColorSpace::JCS_YCCK => {
            let mut started = header
                .to_colorspace(ColorSpace::JCS_CMYK)
                .map_err(decode_error)?;
            let cmyk = started.read_scanlines::<u8>().map_err(decode_error)?;
            cmyk_inverted_to_rgb(&cmyk)
        }
        _ if components == 1 || components == 3 => {
            let mut started = header.rgb().map_err(decode_error)?;
            started.read_scanlines::<u8>().map_err(decode_error)?
        }
        _ => {
            return Err(JpegError::Decode(format!(
                "cannot handle {components}-component JPEG images (Pillow reads 1, 3 or 4)"
            )));
        }
    };
    if samples.len() != width * height * 3 {
        return Err(JpegError::Decode(format!(
            "decoded {} bytes for a {width}x{height} image (expected {})",
            samples.len(),
            width * height * 3
        )));
    }
    RgbImage::from_raw(dims.0, dims.1, samples)
        .ok_or_else(|| JpegError::Decode("pixel buffer of the wrong size".to_string()))
}

/// Pillow's `CMYK;I` unpacking (each channel inverted) followed by its `cmyk2rgb` conversion.
fn cmyk_inverted_to_rgb(cmyk: &[u8]) -> Vec<u8> {
    cmyk.chunks_exact(4)
        .flat_map(|p| {
            let [c, m, y, k] = [255 - p[0], 255 - p[1], 255 - p[2], 255 - p[3]];
            cmyk_to_rgb([c, m, y, k])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverted_cmyk_reads_like_pillows_cmyk_i() {
        // Adobe stores ink inverted: 255 everywhere is no ink (white).
        assert_eq!(
            cmyk_inverted_to_rgb(&[255, 255, 255, 255]),
            vec![255, 255, 255]
        );
        assert_eq!(cmyk_inverted_to_rgb(&[255, 255, 255, 0]), vec![0, 0, 0]);
    }

    #[test]
    fn cmyk_conversion_matches_pillow_corner_values() {
        // No ink is white, full black is black, full cyan without black is (0, 255, 255).
        assert_eq!(cmyk_to_rgb([0, 0, 0, 0]), [255, 255, 255]);
        assert_eq!(cmyk_to_rgb([0, 0, 0, 255]), [0, 0, 0]);
        assert_eq!(cmyk_to_rgb([255, 0, 0, 0]), [0, 255, 255]);
        // Half black, half cyan: nk = 127, 127 - round(127 * 128 / 255) = 63.
        assert_eq!(cmyk_to_rgb([128, 0, 0, 128]), [63, 127, 127]);
    }
}
