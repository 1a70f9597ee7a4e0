//! Scenes: the ground truth of every synthetic image (size, background, coloured shapes on a grid,
//! an optional rendered word) and the planner that builds a scene satisfying a wanted answer.
//!
//! Shapes sit in distinct cells of a 2x2, 2x3 (wide images) or 3x2 (tall images) grid, so every
//! object has an unambiguous position word ("top left", "bottom middle", ...).
//!
//! Long because the scene types and the answer-driven planner that fills them are one unit.

use serde::Serialize;

use super::rng::Rng;

/// One of the eight well-separated shape colours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Color {
    Red,
    Green,
    Blue,
    Yellow,
    Orange,
    Purple,
    Pink,
    Black,
}

impl Color {
    /// All colours, in a fixed order.
    pub(crate) const ALL: [Color; 8] = [
        Color::Red,
        Color::Green,
        Color::Blue,
        Color::Yellow,
        Color::Orange,
        Color::Purple,
        Color::Pink,
        Color::Black,
    ];

    /// The colour's word.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Color::Red => "red",
            Color::Green => "green",
            Color::Blue => "blue",
            Color::Yellow => "yellow",
            Color::Orange => "orange",
            Color::Purple => "purple",
            Color::Pink => "pink",
            Color::Black => "black",
        }
    }

    /// The colour's RGB value.
    pub(crate) fn rgb(self) -> [u8; 3] {
        match self {
            Color::Red => [215, 40, 40],
            Color::Green => [40, 160, 60],
            Color::Blue => [40, 80, 215],
            Color::Yellow => [235, 200, 30],
            Color::Orange => [240, 130, 30],
            Color::Purple => [135, 60, 185],
            Color::Pink => [240, 110, 180],
            Color::Black => [30, 30, 30],
        }
    }
}

/// One of the seven shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Shape {
    Circle,
    Square,
    Triangle,
    Cross,
    Ring,
    Star,
    Diamond,
}

impl Shape {
    /// All shapes, in a fixed order.
    pub(crate) const ALL: [Shape; 7] = [
        Shape::Circle,
        Shape::Square,
        Shape::Triangle,
        Shape::Cross,
        Shape::Ring,
        Shape::Star,
        Shape::Diamond,
    ];

    /// The shape's word.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Cross => "cross",
            Shape::Ring => "ring",
            Shape::Star => "star",
            Shape::Diamond => "diamond",
        }
    }

    /// The shape's plural word.
    pub(crate) fn plural(self) -> &'static str {
        match self {
            Shape::Cross => "crosses",
            Shape::Circle => "circles",
            Shape::Square => "squares",
            Shape::Triangle => "triangles",
            Shape::Ring => "rings",
            Shape::Star => "stars",
            Shape::Diamond => "diamonds",
        }
    }
}

/// The background texture (always in light neutral tones).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Texture {
    /// A linear ramp, horizontal, vertical or diagonal.
    Gradient,
    /// Alternating bands.
    Stripes,
    /// Per-pixel speckle.
    Noise,
}

impl Texture {
    /// The texture's word, as captions use it.
    pub(crate) fn word(self) -> &'static str {
        match self {
            Texture::Gradient => "shaded",
            Texture::Stripes => "striped",
            Texture::Noise => "speckled",
        }
    }
}

/// The background of a scene.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Background {
    /// The texture.
    pub(crate) texture: Texture,
    /// The base colour.
    pub(crate) base: [u8; 3],
    /// The texture's amplitude in grey levels.
    pub(crate) amplitude: u8,
    /// Direction of the ramp or bands: 0 horizontal, 1 vertical, 2 diagonal.
    pub(crate) direction: u8,
    /// Stripe period in pixels.
    pub(crate) period: u32,
    /// Seed of the per-pixel noise.
    #[serde(skip)]
    pub(crate) noise_seed: u64,
}

/// One shape in a scene.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Object {
    /// Its shape.
    pub(crate) shape: Shape,
    /// Its colour.
    pub(crate) color: Color,
    /// The colour's RGB value as drawn.
    pub(crate) rgb: [u8; 3],
    /// Its grid row (0 = top).
    pub(crate) row: u32,
    /// Its grid column (0 = left).
    pub(crate) col: u32,
    /// Its position words, e.g. "top left".
    pub(crate) position: String,
    /// Its bounding box in pixels: x0, y0, x1, y1 (exclusive ends).
    pub(crate) bbox: [u32; 4],
    /// Its centre x in pixels.
    #[serde(skip)]
    pub(crate) cx: f32,
    /// Its centre y in pixels.
    #[serde(skip)]
    pub(crate) cy: f32,
    /// Its radius in pixels.
    #[serde(skip)]
    pub(crate) radius: f32,
}

/// The grid the shapes sit on.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Grid {
    /// Left edge of the grid region.
    pub(crate) x0: u32,
    /// Top edge of the grid region.
    pub(crate) y0: u32,
    /// Width of the grid region.
    pub(crate) w: u32,
    /// Height of the grid region.
    pub(crate) h: u32,
    /// Number of rows (2 or 3).
    pub(crate) rows: u32,
    /// Number of columns (2 or 3).
    pub(crate) cols: u32,
}

impl Grid {
    /// The grid for a region: three columns when it is wide, three rows when it is tall.
    fn for_region(x0: u32, y0: u32, w: u32, h: u32) -> Grid {
        let aspect = w as f32 / h.max(1) as f32;
        let cols = if aspect >= 1.3 { 3 } else { 2 };
        let rows = if aspect <= 1.0 / 1.3 { 3 } else { 2 };
        Grid {
            x0,
            y0,
            w,
            h,
            rows,
            cols,
        }
    }

    /// The word for column `col`: left, middle or right.
    pub(crate) fn col_word(&self, col: u32) -> &'static str {
        if col == 0 {
            "left"
        } else if col + 1 == self.cols {
            "right"
        } else {
            "middle"
        }
    }

    /// The word for row `row`: top, middle or bottom.
    pub(crate) fn row_word(&self, row: u32) -> &'static str {
        if row == 0 {
            "top"
        } else if row + 1 == self.rows {
            "bottom"
        } else {
            "middle"
        }
    }
}

/// What a rendered word means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LabelKind {
    /// A random string to be read (OCR images).
    Ocr,
    /// A benign sign word on a banner.
    Benign,
    /// A warning word on a banner: the image is unsafe.
    Unsafe,
}

/// A word drawn in the image.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Label {
    /// The characters (A-Z, 0-9).
    pub(crate) text: String,
    /// What the word means.
    pub(crate) kind: LabelKind,
    /// The ink colour.
    pub(crate) ink: Color,
    /// Left edge of the text in pixels.
    pub(crate) x: u32,
    /// Top edge of the text in pixels.
    pub(crate) y: u32,
    /// Font scale (pixels per font pixel).
    pub(crate) scale: u32,
    /// The banner behind the text (x, y, w, h), if any.
    pub(crate) banner: Option<[u32; 4]>,
}

/// A complete scene: everything needed to render the image and to answer questions about it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Scene {
    /// Image width in pixels.
    pub(crate) width: u32,
    /// Image height in pixels.
    pub(crate) height: u32,
    /// The background.
    pub(crate) background: Background,
    /// The shape grid (absent on OCR images).
    pub(crate) grid: Option<Grid>,
    /// The shapes, in reading order (row by row, left to right).
    pub(crate) objects: Vec<Object>,
    /// The rendered word, if any.
    pub(crate) label: Option<Label>,
}

impl Scene {
    /// How many objects have `shape`.
    pub(crate) fn count_shape(&self, shape: Shape) -> usize {
        self.objects.iter().filter(|o| o.shape == shape).count()
    }

    /// How many objects have `color`.
    pub(crate) fn count_color(&self, color: Color) -> usize {
        self.objects.iter().filter(|o| o.color == color).count()
    }

    /// Whether some object is a `color` `shape`.
    pub(crate) fn has(&self, color: Color, shape: Shape) -> bool {
        self.objects
            .iter()
            .any(|o| o.color == color && o.shape == shape)
    }

    /// The only object with `shape`, if exactly one has it.
    pub(crate) fn unique_shape(&self, shape: Shape) -> Option<&Object> {
        let mut it = self.objects.iter().filter(|o| o.shape == shape);
        let first = it.next()?;
        if it.next().is_some() {
            None
        } else {
            Some(first)
        }
    }

    /// The only object with `color`, if exactly one has it.
    pub(crate) fn unique_color(&self, color: Color) -> Option<&Object> {
        let mut it = self.objects.iter().filter(|o| o.color == color);
        let first = it.next()?;
        if it.next().is_some() {
            None
        } else {
            Some(first)
        }
    }

    /// Groups of identical objects (same colour and shape) with their sizes, in reading order of
    /// each group's first member.
    pub(crate) fn groups(&self) -> Vec<(Color, Shape, usize)> {
        let mut out: Vec<(Color, Shape, usize)> = Vec::new();
        for o in &self.objects {
            match out.iter_mut().find(|g| g.0 == o.color && g.1 == o.shape) {
                Some(g) => g.2 += 1,
                None => out.push((o.color, o.shape, 1)),
            }
        }
        out
    }

    /// The word for the horizontal side of `o`: "left", "right", or `None` in a middle column.
    pub(crate) fn side(&self, o: &Object) -> Option<&'static str> {
        let g = self.grid?;
        match g.col_word(o.col) {
            "middle" => None,
            w => Some(w),
        }
    }

    /// The word for the vertical half of `o`: "top", "bottom", or `None` in a middle row.
    pub(crate) fn half(&self, o: &Object) -> Option<&'static str> {
        let g = self.grid?;
        match g.row_word(o.row) {
            "middle" => None,
            w => Some(w),
        }
    }
}

/// The image size limits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sizes {
    /// Smallest side in pixels.
    pub(crate) min_side: u32,
    /// Largest side in pixels.
    pub(crate) max_side: u32,
}

/// What a scene must contain so that a chosen question has a chosen answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Plan {
    /// One to four random objects, identical ones allowed.
    Free,
    /// Exactly one `shape`, and it is `color`.
    ColorOf { shape: Shape, color: Color },
    /// Exactly one `color` object, and it is a `shape`.
    ShapeOf { color: Color, shape: Shape },
    /// Exactly `count` objects with `shape` (0 to 4), and at least one object in all.
    Count { shape: Shape, count: usize },
    /// A `color` `shape` is present or not.
    Exist {
        color: Color,
        shape: Shape,
        present: bool,
    },
    /// Exactly one `shape`, in the left or right column.
    Side { shape: Shape, right: bool },
    /// Exactly one `shape`, in the top or bottom row.
    Half { shape: Shape, bottom: bool },
    /// `count` objects with pairwise different shapes and pairwise different colours.
    Distinct { count: usize },
    /// One to four objects, none of them `color`.
    Without { color: Color },
}

/// A sign on a banner at the top of a shapes scene (safety images).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sign {
    /// The word.
    pub(crate) word: &'static str,
    /// Whether the word marks the image unsafe.
    pub(crate) unsafe_word: bool,
}

/// Characters of OCR strings: A-Z and 0-9 without the look-alikes O/0 and I/1.
pub(crate) const OCR_CHARS: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";

/// Chooses an image size: about 40% near-square, 30% wide and 30% tall (60% wide and 40%
/// near-square with `wide_bias`), wide and tall meaning an aspect ratio of 1.4 to 2.2, with at
/// least `min_w` width and `min_h` height where the limits allow.
fn pick_size(rng: &mut Rng, sizes: Sizes, min_w: u32, min_h: u32, wide_bias: bool) -> (u32, u32) {
    let lo = sizes.min_side;
    let hi = sizes.max_side.max(lo);
    let (ratio, landscape) = match (wide_bias, rng.below(10)) {
        (true, 0..=5) | (false, 4..=6) => (rng.uniform(1.4, 2.2), true),
        (false, 7..=9) => (rng.uniform(1.4, 2.2), false),
        _ => (rng.uniform(1.0, 1.15), rng.chance(0.5)),
    };
    let long_lo = ((lo as f32 * ratio).ceil() as u32).min(hi);
    let long = rng.range(long_lo, hi);
    let short = ((long as f32 / ratio).round() as u32).clamp(lo, long);
    let (w, h) = if landscape {
        (long, short)
    } else {
        (short, long)
    };
    (w.max(min_w).min(hi), h.max(min_h).min(hi))
}

/// A light neutral background with a random texture.
fn pick_background(rng: &mut Rng) -> Background {
    let g = rng.range(180, 225) as i32;
    let tint = [rng.range(0, 12) as i32 - 6, rng.range(0, 12) as i32 - 6];
    let base = [
        (g + tint[0]).clamp(0, 255) as u8,
        g as u8,
        (g + tint[1]).clamp(0, 255) as u8,
    ];
    let texture = match rng.below(3) {
        0 => Texture::Gradient,
        1 => Texture::Stripes,
        _ => Texture::Noise,
    };
    Background {
        texture,
        base,
        amplitude: rng.range(6, 14) as u8,
        direction: rng.below(3) as u8,
        period: rng.range(6, 12),
        noise_seed: rng.next_u64(),
    }
}

/// Whether an extra object `(color, shape)` keeps the plan's promise given what is placed.
fn allowed(plan: Plan, placed: &[(Color, Shape)], color: Color, shape: Shape) -> bool {
    match plan {
        Plan::Free => true,
        Plan::ColorOf { shape: s, .. }
        | Plan::Count { shape: s, .. }
        | Plan::Side { shape: s, .. }
        | Plan::Half { shape: s, .. } => shape != s,
        Plan::ShapeOf { color: c, .. } | Plan::Without { color: c } => color != c,
        Plan::Exist {
            color: c,
            shape: s,
            present,
        } => present || (color, shape) != (c, s),
        Plan::Distinct { .. } => placed.iter().all(|&(c, s)| c != color && s != shape),
    }
}

/// A random colour.
fn any_color(rng: &mut Rng) -> Color {
    Color::ALL[rng.below(Color::ALL.len())]
}

/// A random shape.
fn any_shape(rng: &mut Rng) -> Shape {
    Shape::ALL[rng.below(Shape::ALL.len())]
}

/// Where a required object must go.
#[derive(Debug, Clone, Copy)]
enum CellRule {
    Anywhere,
    Col(u32),
    Row(u32),
}

/// Builds a scene of coloured shapes that satisfies `plan`, optionally under a sign banner.
pub(crate) fn shapes_scene(rng: &mut Rng, sizes: Sizes, plan: Plan, sign: Option<Sign>) -> Scene {
    // Size, then the banner (if any), then the grid in the space left.
    let min_w = match sign {
        Some(_) => 96.min(sizes.max_side).max(sizes.min_side),
        None => sizes.min_side,
    };
    let (width, mut height) = pick_size(rng, sizes, min_w, sizes.min_side, false);
    let mut label = None;
    let mut top = 0;
    if let Some(s) = sign {
        let n = s.word.len() as u32;
        let scale = ((width.saturating_sub(8)) / (n * super::font::ADVANCE - 1)).clamp(1, 4);
        let pad = scale + 1;
        let band = super::font::GLYPH_H * scale + 2 * pad;
        height = height.max((band + 48).min(sizes.max_side.max(band + 16)));
        let (tw, _) = super::font::text_size(s.word, scale);
        label = Some(Label {
            text: s.word.to_string(),
            kind: if s.unsafe_word {
                LabelKind::Unsafe
            } else {
                LabelKind::Benign
            },
            ink: Color::Red,
            x: (width.saturating_sub(tw)) / 2,
            y: pad,
            scale,
            banner: Some([0, 0, width, band]),
        });
        top = band;
    }
    let background = pick_background(rng);
    let grid = Grid::for_region(0, top, width, height - top);

    // Cells in random order; required objects first, then extras that keep the plan true.
    let mut cells: Vec<(u32, u32)> = (0..grid.rows)
        .flat_map(|r| (0..grid.cols).map(move |c| (r, c)))
        .collect();
    rng.shuffle(&mut cells);
    let mut required: Vec<(Color, Shape, CellRule)> = Vec::new();
    let mut total = 0;
    match plan {
        Plan::Free => total = rng.range(1, 4) as usize,
        Plan::ColorOf { shape, color } | Plan::ShapeOf { color, shape } => {
            required.push((color, shape, CellRule::Anywhere))
        }
        Plan::Exist {
            color,
            shape,
            present,
        } => {
            if present {
                required.push((color, shape, CellRule::Anywhere));
            }
        }
        Plan::Count { shape, count } => {
            let same = rng.chance(0.5);
            let first = any_color(rng);
            for _ in 0..count.min(4) {
                let c = if same { first } else { any_color(rng) };
                required.push((c, shape, CellRule::Anywhere));
            }
        }
        Plan::Side { shape, right } => {
            let col = if right { grid.cols - 1 } else { 0 };
            required.push((any_color(rng), shape, CellRule::Col(col)));
        }
        Plan::Half { shape, bottom } => {
            let row = if bottom { grid.rows - 1 } else { 0 };
            required.push((any_color(rng), shape, CellRule::Row(row)));
        }
        Plan::Distinct { count } => total = count.clamp(1, 4),
        Plan::Without { .. } => {}
    }
    if !matches!(plan, Plan::Free | Plan::Distinct { .. }) {
        let lo = required.len().max(1) as u32;
        total = rng.range(lo, 4) as usize;
    }

    let mut placed: Vec<(Color, Shape, (u32, u32))> = Vec::new();
    for (color, shape, rule) in required {
        let pos = cells.iter().position(|&(r, c)| match rule {
            CellRule::Anywhere => true,
            CellRule::Col(k) => c == k,
            CellRule::Row(k) => r == k,
        });
        if let Some(i) = pos {
            placed.push((color, shape, cells.remove(i)));
        }
    }
    // A hard negative for existence questions: the asked shape in another colour, or the asked
    // colour on another shape.
    if let Plan::Exist {
        color,
        shape,
        present: false,
    } = plan
        && placed.len() < total
        && rng.chance(0.5)
        && !cells.is_empty()
    {
        let pair = if rng.chance(0.5) {
            let others: Vec<Color> = Color::ALL.into_iter().filter(|&c| c != color).collect();
            (rng.pick(&others).unwrap_or(Color::Black), shape)
        } else {
            let others: Vec<Shape> = Shape::ALL.into_iter().filter(|&s| s != shape).collect();
            (color, rng.pick(&others).unwrap_or(Shape::Circle))
        };
        placed.push((pair.0, pair.1, cells.remove(0)));
    }
    let mut tries = 0;
    while placed.len() < total && !cells.is_empty() && tries < 200 {
        tries += 1;
        let pairs: Vec<(Color, Shape)> = placed.iter().map(|p| (p.0, p.1)).collect();
        // Identical objects now and then, so that captions and counts see groups.
        let (color, shape) = match rng.pick(&pairs) {
            Some(p) if rng.chance(0.25) => p,
            _ => (any_color(rng), any_shape(rng)),
        };
        if allowed(plan, &pairs, color, shape) {
            placed.push((color, shape, cells.remove(0)));
        }
    }

    let mut objects: Vec<Object> = placed
        .into_iter()
        .map(|(color, shape, (row, col))| place(rng, &grid, color, shape, row, col))
        .collect();
    objects.sort_by_key(|o| (o.row, o.col));
    Scene {
        width,
        height,
        background,
        grid: Some(grid),
        objects,
        label,
    }
}

/// Puts an object in its cell with a little jitter in position and size.
fn place(rng: &mut Rng, grid: &Grid, color: Color, shape: Shape, row: u32, col: u32) -> Object {
    let cw = grid.w as f32 / grid.cols as f32;
    let ch = grid.h as f32 / grid.rows as f32;
    let m = cw.min(ch);
    let radius = 0.5 * m * rng.uniform(0.72, 0.86);
    let jx = m * rng.uniform(-0.05, 0.05);
    let jy = m * rng.uniform(-0.05, 0.05);
    let cx = grid.x0 as f32 + (col as f32 + 0.5) * cw + jx;
    let cy = grid.y0 as f32 + (row as f32 + 0.5) * ch + jy;
    let bbox = [
        (cx - radius).floor().max(0.0) as u32,
        (cy - radius).floor().max(0.0) as u32,
        (cx + radius).ceil() as u32,
        (cy + radius).ceil() as u32,
    ];
    let position = format!("{} {}", grid.row_word(row), grid.col_word(col));
    Object {
        shape,
        color,
        rgb: color.rgb(),
        row,
        col,
        position,
        bbox,
        cx,
        cy,
        radius,
    }
}

/// A random OCR string of 2 to 5 characters.
pub(crate) fn ocr_text(rng: &mut Rng) -> String {
    let n = rng.range(2, 5) as usize;
    (0..n)
        .map(|_| OCR_CHARS[rng.below(OCR_CHARS.len())] as char)
        .collect()
}

/// Builds an OCR image: `text` drawn large on a plain textured background, no shapes.
pub(crate) fn ocr_scene(rng: &mut Rng, sizes: Sizes, text: &str) -> Scene {
    let n = text.chars().count().max(1) as u32;
    let min_w = (n * super::font::ADVANCE * 2 + 16)
        .min(sizes.max_side)
        .max(sizes.min_side);
    let (width, height) = pick_size(rng, sizes, min_w, sizes.min_side, true);
    let background = pick_background(rng);
    let advance = n * super::font::ADVANCE - 1;
    let by_w = width.saturating_sub(12) / advance;
    let by_h = (height * 3 / 5) / super::font::GLYPH_H;
    let scale = by_w.min(by_h).clamp(1, 6);
    let (tw, th) = super::font::text_size(text, scale);
    let free_x = width.saturating_sub(tw);
    let free_y = height.saturating_sub(th);
    let x = free_x * 3 / 8 + rng.range(0, free_x / 4);
    let y = free_y * 3 / 8 + rng.range(0, free_y / 4);
    let ink = *[Color::Black, Color::Blue, Color::Red]
        .get(rng.below(3))
        .unwrap_or(&Color::Black);
    let label = Label {
        text: text.to_string(),
        kind: LabelKind::Ocr,
        ink,
        x,
        y,
        scale,
        banner: None,
    };
    Scene {
        width,
        height,
        background,
        grid: None,
        objects: Vec::new(),
        label: Some(label),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZES: Sizes = Sizes {
        min_side: 64,
        max_side: 160,
    };

    #[test]
    fn plans_hold() {
        for i in 0..300u64 {
            let mut rng = Rng::stream(3, "plan", i);
            let shape = Shape::ALL[(i % 7) as usize];
            let color = Color::ALL[(i % 8) as usize];
            let count = (i % 5) as usize;
            let s = shapes_scene(&mut rng, SIZES, Plan::Count { shape, count }, None);
            assert_eq!(s.count_shape(shape), count);
            assert!(!s.objects.is_empty() && s.objects.len() <= 4);
            let s = shapes_scene(&mut rng, SIZES, Plan::ColorOf { shape, color }, None);
            assert_eq!(s.unique_shape(shape).map(|o| o.color), Some(color));
            let s = shapes_scene(&mut rng, SIZES, Plan::ShapeOf { color, shape }, None);
            assert_eq!(s.unique_color(color).map(|o| o.shape), Some(shape));
            let present = i % 2 == 0;
            let s = shapes_scene(
                &mut rng,
                SIZES,
                Plan::Exist {
                    color,
                    shape,
                    present,
                },
                None,
            );
            assert_eq!(s.has(color, shape), present);
            let right = i % 3 == 0;
            let s = shapes_scene(&mut rng, SIZES, Plan::Side { shape, right }, None);
            let o = s.unique_shape(shape).map(|o| s.side(o));
            assert_eq!(o, Some(Some(if right { "right" } else { "left" })));
            let s = shapes_scene(&mut rng, SIZES, Plan::Distinct { count: 4 }, None);
            assert_eq!(s.objects.len(), 4);
            assert!(s.groups().len() == 4);
            for o in &s.objects {
                assert_eq!(s.count_color(o.color), 1);
                assert_eq!(s.count_shape(o.shape), 1);
            }
        }
    }

    #[test]
    fn sizes_stay_in_range_and_vary() {
        let mut wide = 0;
        let mut tall = 0;
        for i in 0..200 {
            let mut rng = Rng::stream(1, "size", i);
            let s = shapes_scene(&mut rng, SIZES, Plan::Free, None);
            assert!((64..=160).contains(&s.width) && (64..=160).contains(&s.height));
            wide += usize::from(s.width * 4 >= s.height * 5);
            tall += usize::from(s.height * 4 >= s.width * 5);
            for o in &s.objects {
                assert!(o.bbox[2] <= s.width && o.bbox[3] <= s.height, "{o:?}");
            }
        }
        assert!(wide > 30 && tall > 30, "wide {wide} tall {tall}");
    }
}
