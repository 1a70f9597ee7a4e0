//! Pillow's resampling on the host: the filters, the fixed-point coefficient tables and an
//! 8-bit RGB resize that reproduces Pillow 13's `Image.resize` bit for bit (docs/data.md
//! §"Images"). The device kernel ([`crate::resample`]) uses the same tables; the data crate's
//! image pipeline resizes through [`resize_rgb8`].

pub use crate::resample::{AxisCoefficients, PRECISION_BITS, ResampleFilter};

/// The input window and weights of output position `i` (empty past the end of the table).
fn taps(weights: &AxisCoefficients, i: usize) -> (usize, &[i32]) {
    weights.window(i).unwrap_or((0, &[]))
}

/// Rounds a fixed-point accumulator (which starts at one half) to an 8-bit sample, clamping.
#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes packed 8-bit RGB pixels (`in_size` = (width, height), row-major, 3 bytes a pixel) to
/// `out_size` exactly as Pillow 13's `Image.resize(out_size, filter)` does for an RGB image (no
/// `box`, no `reducing_gap`).
///
/// The two passes keep an 8-bit intermediate, so their order matters. Pillow 13 resamples
/// vertically first when the height shrinks by more than twice as many pixels as the width
/// (`in_h - out_h > 2 * (in_w - out_w)`, which includes every height reduction with a width that
/// grows or stays), horizontally first otherwise. (This rule was established against Pillow 13.0.0
/// on thousands of random sizes; Pillow 12 always went horizontally first, except for images over
/// 100 times taller than wide.) An axis whose size does not change is not resampled at all; a
/// same-size request returns a copy. Sizes with a zero side, or a buffer shorter than `in_size`
/// says, give black pixels of the requested size.
pub fn resize_rgb8(
    pixels: &[u8],
    in_size: (usize, usize),
    out_size: (usize, usize),
    filter: ResampleFilter,
) -> Vec<u8> {
    let ((in_w, in_h), (out_w, out_h)) = (in_size, out_size);
    if in_w == 0 || in_h == 0 || out_w == 0 || out_h == 0 || pixels.len() < in_w * in_h * 3 {
        return vec![0; out_w * out_h * 3];
    }
    if in_size == out_size {
        return pixels[..in_w * in_h * 3].to_vec();
    }
    if out_w == in_w {
        resample_vertical(
            pixels,
            in_w,
            &AxisCoefficients::pillow(in_h, out_h, filter),
            0,
        )
    } else if out_h == in_h {
        resample_horizontal(
            pixels,
            in_w,
            0..in_h,
            &AxisCoefficients::pillow(in_w, out_w, filter),
        )
    } else {
        let horizontal = AxisCoefficients::pillow(in_w, out_w, filter);
        let vertical = AxisCoefficients::pillow(in_h, out_h, filter);
        let shrink_h = in_h as i64 - out_h as i64;
        let shrink_w = in_w as i64 - out_w as i64;
        if shrink_h > 0 && shrink_h > 2 * shrink_w {
            let band = resample_vertical(pixels, in_w, &vertical, 0);
            resample_horizontal(&band, in_w, 0..out_h, &horizontal)
        } else {
            // Only the rows the vertical pass reads go through the horizontal pass.
            let (first, end) = vertical.span();
            let band = resample_horizontal(pixels, in_w, first..end, &horizontal);
            resample_vertical(&band, out_w, &vertical, first)
        }
    }
}

/// Horizontal pass over the input rows `rows`: returns `rows.len()` rows of
/// `weights.out_size` RGB pixels.
fn resample_horizontal(
    src: &[u8],
    in_w: usize,
    rows: std::ops::Range<usize>,
    weights: &AxisCoefficients,
) -> Vec<u8> {
    let out_w = weights.out_size;
    let half = 1i32 << (PRECISION_BITS - 1);
    let mut out = vec![0u8; rows.len() * out_w * 3];
    for (y, out_row) in rows.zip(out.chunks_exact_mut(out_w * 3)) {
        let (in_row, _) = src[y * in_w * 3..(y + 1) * in_w * 3].as_chunks::<3>();
        let (out_row, _) = out_row.as_chunks_mut::<3>();
        for (x, out_px) in out_row.iter_mut().enumerate() {
            let (first, ks) = taps(weights, x);
            let taps = &in_row[first..first + ks.len()];
            let (mut r, mut g, mut b) = (half, half, half);
            for (&[pr, pg, pb], &k) in taps.iter().zip(ks) {
                r += i32::from(pr) * k;
                g += i32::from(pg) * k;
                b += i32::from(pb) * k;
            }
            *out_px = [clip8(r), clip8(g), clip8(b)];
        }
    }
    out
}

/// Vertical pass: `src` holds rows of `width` RGB pixels starting at input row `row_offset` (the
/// horizontal pass may have skipped rows no output reads); returns `weights.out_size` rows.
fn resample_vertical(
    src: &[u8],
    width: usize,
    weights: &AxisCoefficients,
    row_offset: usize,
) -> Vec<u8> {
    let row_len = width * 3;
    let out_h = weights.out_size;
    let half = 1i32 << (PRECISION_BITS - 1);
    let mut out = vec![0u8; out_h * row_len];
    // One accumulator row, reused: whole input rows are added in turn, which keeps memory access
    // sequential (integer sums do not depend on the order).
    let mut acc = vec![0i32; row_len];
    for (y, out_row) in out.chunks_exact_mut(row_len).enumerate() {
        let (first, ks) = taps(weights, y);
        acc.fill(half);
        for (i, &k) in ks.iter().enumerate() {
            let row = first + i - row_offset;
            let in_row = &src[row * row_len..(row + 1) * row_len];
            for (a, &v) in acc.iter_mut().zip(in_row) {
                *a += i32::from(v) * k;
            }
        }
        for (o, &a) in out_row.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    out
}
