//! A built-in 5x7 pixel font for the capital letters A-Z and the digits 0-9, drawn for this
//! corpus so that no font file is needed. Glyphs are scaled by an integer factor when drawn.

use image::{Rgb, RgbImage};

/// Glyph width in font pixels.
pub(crate) const GLYPH_W: u32 = 5;
/// Glyph height in font pixels.
pub(crate) const GLYPH_H: u32 = 7;
/// Advance from one glyph to the next, in font pixels (one blank column between glyphs).
pub(crate) const ADVANCE: u32 = GLYPH_W + 1;

/// The glyphs, seven rows of five columns each; `#` is ink.
const GLYPHS: [(char, [&str; 7]); 36] = [
    (
        'A',
        [
            ".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#",
        ],
    ),
    (
        'B',
        [
            "####.", "#...#", "#...#", "####.", "#...#", "#...#", "####.",
        ],
    ),
    (
        'C',
        [
            ".###.", "#...#", "#....", "#....", "#....", "#...#", ".###.",
        ],
    ),
    (
        'D',
        [
            "####.", "#...#", "#...#", "#...#", "#...#", "#...#", "####.",
        ],
    ),
    (
        'E',
        [
            "#####", "#....", "#....", "####.", "#....", "#....", "#####",
        ],
    ),
    (
        'F',
        [
            "#####", "#....", "#....", "####.", "#....", "#....", "#....",
        ],
    ),
    (
        'G',
        [
            ".###.", "#...#", "#....", "#.###", "#...#", "#...#", ".####",
        ],
    ),
    (
        'H',
        [
            "#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#",
        ],
    ),
    (
        'I',
        [
            ".###.", "..#..", "..#..", "..#..", "..#..", "..#..", ".###.",
        ],
    ),
    (
        'J',
        [
            "..###", "...#.", "...#.", "...#.", "...#.", "#..#.", ".##..",
        ],
    ),
    (
        'K',
        [
            "#...#", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "#...#",
        ],
    ),
    (
        'L',
        [
            "#....", "#....", "#....", "#....", "#....", "#....", "#####",
        ],
    ),
    (
        'M',
        [
            "#...#", "##.##", "#.#.#", "#.#.#", "#...#", "#...#", "#...#",
        ],
    ),
    (
        'N',
        [
            "#...#", "#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#",
        ],
    ),
    (
        'O',
        [
            ".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###.",
        ],
    ),
    (
        'P',
        [
            "####.", "#...#", "#...#", "####.", "#....", "#....", "#....",
        ],
    ),
    (
        'Q',
        [
            ".###.", "#...#", "#...#", "#...#", "#.#.#", "#..#.", ".##.#",
        ],
    ),
    (
        'R',
        [
            "####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#",
        ],
    ),
    (
        'S',
        [
            ".####", "#....", "#....", ".###.", "....#", "....#", "####.",
        ],
    ),
    (
        'T',
        [
            "#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#..",
        ],
    ),
    (
        'U',
        [
            "#...#", "#...#", "#...#", "#...#", "#...#", "#...#", ".###.",
        ],
    ),
    (
        'V',
        [
            "#...#", "#...#", "#...#", "#...#", "#...#", ".#.#.", "..#..",
        ],
    ),
    (
        'W',
        [
            "#...#", "#...#", "#...#", "#.#.#", "#.#.#", "#.#.#", ".#.#.",
        ],
    ),
    (
        'X',
        [
            "#...#", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", "#...#",
        ],
    ),
    (
        'Y',
        [
            "#...#", "#...#", ".#.#.", "..#..", "..#..", "..#..", "..#..",
        ],
    ),
    (
        'Z',
        [
            "#####", "....#", "...#.", "..#..", ".#...", "#....", "#####",
        ],
    ),
    (
        '0',
        [
            ".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###.",
        ],
    ),
    (
        '1',
        [
            "..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###.",
        ],
    ),
    (
        '2',
        [
            ".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####",
        ],
    ),
    (
        '3',
        [
            "####.", "....#", "....#", ".###.", "....#", "....#", "####.",
        ],
    ),
    (
        '4',
        [
            "...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#.",
        ],
    ),
    (
        '5',
        [
            "#####", "#....", "####.", "....#", "....#", "#...#", ".###.",
        ],
    ),
    (
        '6',
        [
            ".###.", "#....", "#....", "####.", "#...#", "#...#", ".###.",
        ],
    ),
    (
        '7',
        [
            "#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#...",
        ],
    ),
    (
        '8',
        [
            ".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###.",
        ],
    ),
    (
        '9',
        [
            ".###.", "#...#", "#...#", ".####", "....#", "....#", ".###.",
        ],
    ),
];

/// The rows of `c`'s glyph, or `None` for a character the font lacks.
fn glyph(c: char) -> Option<&'static [&'static str; 7]> {
    GLYPHS.iter().find(|(g, _)| *g == c).map(|(_, rows)| rows)
}

/// The size in pixels of `text` drawn at integer `scale`.
pub(crate) fn text_size(text: &str, scale: u32) -> (u32, u32) {
    let n = text.chars().count() as u32;
    let w = if n == 0 { 0 } else { (n * ADVANCE - 1) * scale };
    (w, GLYPH_H * scale)
}

/// Draws `text` with its top-left corner at `(x, y)`, each font pixel a `scale`x`scale` block.
/// Characters the font lacks are left blank; pixels outside the image are clipped.
pub(crate) fn draw_text(img: &mut RgbImage, text: &str, x: u32, y: u32, scale: u32, ink: [u8; 3]) {
    let (w, h) = img.dimensions();
    for (i, c) in text.chars().enumerate() {
        let Some(rows) = glyph(c) else { continue };
        let gx = x + i as u32 * ADVANCE * scale;
        for (r, row) in rows.iter().enumerate() {
            for (col, bit) in row.bytes().enumerate() {
                if bit != b'#' {
                    continue;
                }
                let px = gx + col as u32 * scale;
                let py = y + r as u32 * scale;
                for dy in 0..scale {
                    for dx in 0..scale {
                        if px + dx < w && py + dy < h {
                            img.put_pixel(px + dx, py + dy, Rgb(ink));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glyphs_are_well_formed_and_distinct() {
        for (c, rows) in GLYPHS.iter() {
            assert!(rows.iter().all(|r| r.len() == GLYPH_W as usize), "{c}");
            assert!(
                rows.iter()
                    .all(|r| r.bytes().all(|b| b == b'#' || b == b'.')),
                "{c}"
            );
        }
        for (i, (a, ra)) in GLYPHS.iter().enumerate() {
            for (b, rb) in GLYPHS.iter().skip(i + 1) {
                assert_ne!(a, b);
                assert_ne!(ra, rb, "{a} and {b} share a glyph");
            }
        }
    }

    #[test]
    fn every_generated_character_has_a_glyph() {
        let words = super::super::lang::UNSAFE_WORDS.iter().map(|w| w.0);
        let words = words.chain(super::super::lang::BENIGN_WORDS);
        for c in super::super::scene::OCR_CHARS
            .iter()
            .map(|&b| b as char)
            .chain(words.flat_map(str::chars))
        {
            assert!(glyph(c).is_some(), "{c}");
        }
    }

    #[test]
    fn drawing_marks_exactly_the_ink() {
        let mut img = RgbImage::new(20, 20);
        draw_text(&mut img, "L", 1, 1, 2, [255, 0, 0]);
        let ink = img.pixels().filter(|p| p.0 == [255, 0, 0]).count();
        // 'L' has 7 + 4 ink pixels, each drawn as a 2x2 block.
        assert_eq!(ink, 11 * 4);
        assert_eq!(text_size("AB", 3), (11 * 3, 21));
    }
}
