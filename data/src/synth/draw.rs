//! Rendering a [`Scene`] to pixels, and encoding pixels as JPEG or PNG.
//!
//! Everything here is plain integer and IEEE float arithmetic (no trigonometric library calls),
//! so the same scene gives the same pixels on every platform; the `image` crate's JPEG and PNG
//! encoders are deterministic, so the same pixels give the same bytes.

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder, Rgb, RgbImage};

use super::font;
use super::rng::Rng;
use super::scene::{Object, Scene, Shape, Texture};

/// Sub-samples per pixel side when shapes are drawn (3x3 = 9 samples, for smooth edges).
const SUPERSAMPLE: u32 = 3;

/// The ten corners of the five-pointed star, in unit coordinates (y downward): outer corners at
/// radius 1 every 72 degrees starting straight up, inner corners at radius 0.5 between them. The
/// cosines and sines of multiples of 18 degrees are written out so that no `sin`/`cos` call (whose
/// last bit may differ between platforms) is needed.
const STAR: [(f32, f32); 10] = {
    const C18: f32 = 0.951_056_5; // cos 18°
    const S18: f32 = 0.309_017; // sin 18°
    const C54: f32 = 0.587_785_3; // cos 54°
    const S54: f32 = 0.809_017; // sin 54°
    const R: f32 = 0.5;
    [
        (0.0, -1.0),
        (R * C54, -R * S54),
        (C18, -S18),
        (R * C18, R * S18),
        (C54, S54),
        (0.0, R),
        (-C54, S54),
        (-R * C18, R * S18),
        (-C18, -S18),
        (-R * C54, -R * S54),
    ]
};

/// Whether the unit-coordinate point `(u, v)` (centre 0, radius 1, y downward) is inside `shape`.
fn inside(shape: Shape, u: f32, v: f32) -> bool {
    match shape {
        Shape::Circle => u * u + v * v <= 1.0,
        Shape::Square => u.abs() <= 0.82 && v.abs() <= 0.82,
        Shape::Triangle => (-0.9..=0.75).contains(&v) && u.abs() <= 0.98 * (v + 0.9) / 1.65,
        Shape::Cross => (u.abs() <= 0.3 && v.abs() <= 0.95) || (v.abs() <= 0.3 && u.abs() <= 0.95),
        Shape::Ring => {
            let r2 = u * u + v * v;
            (0.25..=1.0).contains(&r2)
        }
        Shape::Star => in_polygon(&STAR, u, v - 0.1),
        Shape::Diamond => u.abs() / 0.85 + v.abs() <= 1.0,
    }
}

/// Even-odd point-in-polygon test.
fn in_polygon(poly: &[(f32, f32)], x: f32, y: f32) -> bool {
    let mut inside = false;
    let mut j = poly.len() - 1;
    for i in 0..poly.len() {
        let (xi, yi) = poly[i];
        let (xj, yj) = poly[j];
        if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
            inside = !inside;
        }
        j = i;
    }
    inside
}

/// Fills the background texture.
fn paint_background(scene: &Scene, img: &mut RgbImage) {
    let bg = &scene.background;
    let (w, h) = (scene.width, scene.height);
    let amp = i32::from(bg.amplitude);
    let mut noise = Rng::new(bg.noise_seed);
    for y in 0..h {
        for x in 0..w {
            let along = match bg.direction {
                0 => x as f32 / w.max(2) as f32,
                1 => y as f32 / h.max(2) as f32,
                _ => (x + y) as f32 / (w + h).max(2) as f32,
            };
            let offset = match bg.texture {
                Texture::Gradient => ((2.0 * along - 1.0) * amp as f32).round() as i32,
                Texture::Stripes => {
                    let t = match bg.direction {
                        0 => y,
                        1 => x,
                        _ => x + y,
                    };
                    if (t / bg.period.max(1)).is_multiple_of(2) {
                        amp / 2
                    } else {
                        -amp / 2
                    }
                }
                Texture::Noise => noise.below(2 * amp as usize + 1) as i32 - amp,
            };
            let px = bg.base.map(|c| (i32::from(c) + offset).clamp(0, 255) as u8);
            img.put_pixel(x, y, Rgb(px));
        }
    }
}

/// Draws one object with anti-aliased edges.
fn paint_object(o: &Object, img: &mut RgbImage) {
    let (w, h) = img.dimensions();
    let ink = o.color.rgb();
    let x1 = o.bbox[2].min(w);
    let y1 = o.bbox[3].min(h);
    let n = SUPERSAMPLE * SUPERSAMPLE;
    for y in o.bbox[1]..y1 {
        for x in o.bbox[0]..x1 {
            let mut hits = 0u32;
            for sy in 0..SUPERSAMPLE {
                for sx in 0..SUPERSAMPLE {
                    let fx = x as f32 + (sx as f32 + 0.5) / SUPERSAMPLE as f32;
                    let fy = y as f32 + (sy as f32 + 0.5) / SUPERSAMPLE as f32;
                    let u = (fx - o.cx) / o.radius;
                    let v = (fy - o.cy) / o.radius;
                    hits += u32::from(inside(o.shape, u, v));
                }
            }
            if hits == 0 {
                continue;
            }
            let old = img.get_pixel(x, y).0;
            let mut px = [0u8; 3];
            for k in 0..3 {
                let blend = u32::from(old[k]) * (n - hits) + u32::from(ink[k]) * hits;
                px[k] = ((blend + n / 2) / n) as u8;
            }
            img.put_pixel(x, y, Rgb(px));
        }
    }
}

/// Renders a scene.
pub(crate) fn render(scene: &Scene) -> RgbImage {
    let mut img = RgbImage::new(scene.width, scene.height);
    paint_background(scene, &mut img);
    for o in &scene.objects {
        paint_object(o, &mut img);
    }
    if let Some(label) = &scene.label {
        if let Some([bx, by, bw, bh]) = label.banner {
            for y in by..(by + bh).min(scene.height) {
                for x in bx..(bx + bw).min(scene.width) {
                    img.put_pixel(x, y, Rgb([248, 246, 236]));
                }
            }
        }
        font::draw_text(
            &mut img,
            &label.text,
            label.x,
            label.y,
            label.scale,
            label.ink.rgb(),
        );
    }
    img
}

/// An encoded image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// Baseline JPEG.
    Jpeg,
    /// PNG.
    Png,
}

impl Format {
    /// The file extension, without the dot.
    pub(crate) fn ext(self) -> &'static str {
        match self {
            Format::Jpeg => "jpg",
            Format::Png => "png",
        }
    }
}

/// Encodes an image; `quality` applies to JPEG only.
pub(crate) fn encode(img: &RgbImage, format: Format, quality: u8) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let (w, h) = img.dimensions();
    let result =
        match format {
            Format::Jpeg => JpegEncoder::new_with_quality(&mut out, quality.clamp(1, 100))
                .write_image(img.as_raw(), w, h, ExtendedColorType::Rgb8),
            Format::Png => {
                PngEncoder::new(&mut out).write_image(img.as_raw(), w, h, ExtendedColorType::Rgb8)
            }
        };
    result.map_err(|e| e.to_string())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_cover_plausible_areas() {
        // Fraction of a 2x2 box covered, on a fine grid: a circle covers pi/4.
        for shape in Shape::ALL {
            let n = 400;
            let mut hits = 0;
            for j in 0..n {
                for i in 0..n {
                    let u = -1.0 + 2.0 * (i as f32 + 0.5) / n as f32;
                    let v = -1.0 + 2.0 * (j as f32 + 0.5) / n as f32;
                    hits += usize::from(inside(shape, u, v));
                }
            }
            let frac = hits as f32 / (n * n) as f32;
            assert!((0.2..0.8).contains(&frac), "{shape:?} covers {frac}");
            if shape == Shape::Circle {
                assert!((frac - std::f32::consts::FRAC_PI_4).abs() < 0.01);
            }
        }
    }

    #[test]
    fn star_constants_match_trigonometry() {
        for (k, &(x, y)) in STAR.iter().enumerate() {
            let r = if k % 2 == 0 { 1.0 } else { 0.5 };
            let a = (-90.0 + 36.0 * k as f64).to_radians();
            assert!((f64::from(x) - r * a.cos()).abs() < 1e-6, "corner {k}");
            assert!((f64::from(y) - r * a.sin()).abs() < 1e-6, "corner {k}");
        }
    }
}
