//! The any-resolution image pipeline of xGen-MM v1.5 (docs/reference.md §2), and the
//! fixed-resolution variant used in pre-training.
//!
//! Any-resolution mode turns one image into `1 + G` square views of the base size `S` (384 for
//! v1.5):
//!
//! 1. pick a grid of `cols x rows` crops from the candidate list ([`select_grid`]): the one that
//!    keeps the most image resolution, then the one that wastes the least canvas, the earlier
//!    candidate winning ties;
//! 2. resize the image, keeping its aspect ratio, to fit the `cols*S x rows*S` canvas (Pillow
//!    bicubic) and paste it centred on a black canvas;
//! 3. cut the canvas into `S x S` crops, row-major;
//! 4. put the *original* image squashed to `S x S` (aspect not kept) first, as the global view;
//! 5. scale every view to `[0, 1]` and normalise it with the configured mean and std.
//!
//! Fixed mode produces the squashed global view only. Everything scales with the base size, so
//! tiny test models can use 32 or 64 px views.

use std::path::Path;

use crate::error::DataError;
use crate::image::{ImageLimits, ResampleFilter, RgbImage, decode_image_with, resize};
use crate::sample::ImageSource;

/// A candidate crop grid: `cols` crops across and `rows` crops down, i.e. a canvas of
/// `cols*S x rows*S` pixels (width x height) for base size `S`. Serialised as `[cols, rows]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(from = "[u32; 2]", into = "[u32; 2]")]
pub struct AnyResGrid {
    /// Crops across (the canvas width in base sizes).
    pub cols: u32,
    /// Crops down (the canvas height in base sizes).
    pub rows: u32,
}

impl From<[u32; 2]> for AnyResGrid {
    fn from([cols, rows]: [u32; 2]) -> Self {
        AnyResGrid { cols, rows }
    }
}

impl From<AnyResGrid> for [u32; 2] {
    fn from(grid: AnyResGrid) -> Self {
        [grid.cols, grid.rows]
    }
}

impl AnyResGrid {
    /// A grid of `cols x rows` crops.
    pub const fn new(cols: u32, rows: u32) -> Self {
        AnyResGrid { cols, rows }
    }

    /// The v1.5 candidates in their order: (1,2), (2,1), (2,2), (3,1), (1,3) as (cols, rows),
    /// i.e. canvases 384x768, 768x384, 768x768, 1152x384, 384x1152 (width x height) at S = 384.
    /// There is no 1x1 candidate.
    pub fn v1_5_candidates() -> Vec<AnyResGrid> {
        vec![
            AnyResGrid::new(1, 2),
            AnyResGrid::new(2, 1),
            AnyResGrid::new(2, 2),
            AnyResGrid::new(3, 1),
            AnyResGrid::new(1, 3),
        ]
    }

    /// The number of crops, `cols * rows`.
    pub fn num_crops(&self) -> usize {
        self.cols as usize * self.rows as usize
    }

    /// The canvas size `(width, height)` in pixels for base size `base`.
    pub fn canvas_size(&self, base: u32) -> (u64, u64) {
        (
            u64::from(self.cols) * u64::from(base),
            u64::from(self.rows) * u64::from(base),
        )
    }
}

/// Chooses the grid for an image of `width x height` pixels among `candidates`
/// (docs/reference.md §2.1).
///
/// For each candidate canvas `(w, h)` in order: `s = min(w/W, h/H)`, effective resolution
/// `eff = min(floor(W*s) * floor(H*s), W*H)` (upscaling gains nothing), waste `w*h - eff`. A
/// candidate replaces the best so far if its `eff` is larger, or equal with strictly less waste,
/// so the earlier candidate wins exact ties. Returns `None` only for an empty candidate list or an
/// empty image.
pub fn select_grid(
    width: u32,
    height: u32,
    base: u32,
    candidates: &[AnyResGrid],
) -> Option<AnyResGrid> {
    if width == 0 || height == 0 {
        return None;
    }
    let (iw, ih) = (f64::from(width), f64::from(height));
    let area = u64::from(width) * u64::from(height);
    // The reference starts from eff 0 and infinite waste, so a candidate with eff 0 (an extremely
    // thin image) is still taken when nothing better comes.
    let mut best: Option<(AnyResGrid, u64, u64)> = None;
    for &grid in candidates {
        let (w, h) = grid.canvas_size(base);
        let s = (w as f64 / iw).min(h as f64 / ih);
        let eff = ((iw * s) as u64).saturating_mul((ih * s) as u64).min(area);
        let waste = w.saturating_mul(h).saturating_sub(eff);
        let better = match best {
            None => true,
            Some((_, best_eff, best_waste)) => {
                eff > best_eff || (eff == best_eff && waste < best_waste)
            }
        };
        if better {
            best = Some((grid, eff, waste));
        }
    }
    best.map(|(grid, _, _)| grid)
}

/// The size `(width, height)` an image of `width x height` is resized to before it is pasted on a
/// `canvas_w x canvas_h` canvas (docs/reference.md §2.2): the scale of the tighter side, the
/// other side rounded **up** and capped at the canvas.
pub fn fit_size(width: u32, height: u32, canvas_w: u64, canvas_h: u64) -> (u64, u64) {
    let sw = canvas_w as f64 / f64::from(width);
    let sh = canvas_h as f64 / f64::from(height);
    if sw < sh {
        (
            canvas_w,
            ((f64::from(height) * sw).ceil() as u64).min(canvas_h),
        )
    } else {
        (
            ((f64::from(width) * sh).ceil() as u64).min(canvas_w),
            canvas_h,
        )
    }
}

/// Whether an image becomes a tiled any-resolution input or a single view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum ResolutionMode {
    /// Global view plus grid crops (v1.5 SFT and inference).
    #[default]
    #[serde(rename = "anyres")]
    AnyRes,
    /// Only the squashed global view, grid 1x1 (pre-training).
    #[serde(rename = "fixed")]
    Fixed,
}

/// Settings of the image pipeline. `Default` gives the v1.5 values: base size 384, mean = std = 0.5,
/// the five v1.5 grids, any-resolution mode.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImageProcessorConfig {
    /// The base (view) size `S` in pixels; grids are multiples of it.
    pub image_size: u32,
    /// Per-channel mean subtracted after scaling to `[0, 1]` (R, G, B).
    pub image_mean: [f32; 3],
    /// Per-channel standard deviation divided by after the mean (R, G, B).
    pub image_std: [f32; 3],
    /// Candidate grids, in preference order for ties.
    pub grids: Vec<AnyResGrid>,
    /// Any-resolution or fixed single view.
    pub mode: ResolutionMode,
    /// Limits checked before an image is decoded ([`ImageLimits`]: pixel budget, file size);
    /// `None`: the defaults, overridden by the `BLIP3_MAX_IMAGE_PIXELS` and
    /// `BLIP3_MAX_IMAGE_BYTES` environment variables ([`ImageLimits::from_env`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<ImageLimits>,
}

impl Default for ImageProcessorConfig {
    fn default() -> Self {
        ImageProcessorConfig {
            image_size: 384,
            image_mean: [0.5; 3],
            image_std: [0.5; 3],
            grids: AnyResGrid::v1_5_candidates(),
            mode: ResolutionMode::AnyRes,
            limits: None,
        }
    }
}

impl ImageProcessorConfig {
    /// The pipeline a model expects: base size `image_size`, candidate canvases `grids_px` given as
    /// `(width, height)` in pixels (multiples of the base), any-res or fixed mode, v1.5 mean/std.
    pub fn for_model(image_size: usize, grids_px: &[(usize, usize)], anyres: bool) -> Self {
        let base = image_size.max(1);
        ImageProcessorConfig {
            image_size: image_size as u32,
            grids: grids_px
                .iter()
                .map(|&(w, h)| AnyResGrid::new((w / base) as u32, (h / base) as u32))
                .collect(),
            mode: if anyres {
                ResolutionMode::AnyRes
            } else {
                ResolutionMode::Fixed
            },
            ..ImageProcessorConfig::default()
        }
    }

    /// Reads a Hugging Face `preprocessor_config.json` on top of the v1.5 defaults. See
    /// [`ImageProcessorConfig::overridden_by_hf_json`] for the fields.
    pub fn from_hf_preprocessor_config(path: &Path) -> Result<Self, DataError> {
        ImageProcessorConfig::default().overridden_by_hf_file(path)
    }

    /// Applies a Hugging Face `preprocessor_config.json` file to `self`; see
    /// [`ImageProcessorConfig::overridden_by_hf_json`].
    pub fn overridden_by_hf_file(self, path: &Path) -> Result<Self, DataError> {
        let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
        self.overridden_by_hf_json(&text, &path.display().to_string())
    }

    /// Parses the content of a `preprocessor_config.json` on top of the v1.5 defaults; `name`
    /// locates it in errors.
    pub fn from_hf_json(text: &str, name: &str) -> Result<Self, DataError> {
        ImageProcessorConfig::default().overridden_by_hf_json(text, name)
    }

    /// Applies the content of a `preprocessor_config.json` to `self`: each recognised field the
    /// file has replaces the value in `self`, and fields it lacks keep `self`'s values (so a model's
    /// own settings survive a partial file). Recognised fields: `image_mean`, `image_std`
    /// (3 numbers), `image_size` or `size` (an integer, `{"height": n, "width": n}` or
    /// `{"shortest_edge": n}`; a non-square size is an error), `anyres_grids` (canvas sizes
    /// `[[w, h], ...]` in pixels, multiples of the base size) and `image_aspect_ratio` (`"anyres"`
    /// selects any-resolution mode, anything else fixed mode). Other fields are ignored. `name`
    /// locates the file in errors.
    pub fn overridden_by_hf_json(self, text: &str, name: &str) -> Result<Self, DataError> {
        let json: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| DataError::format(name, format!("not valid JSON: {e}")))?;
        let obj = json
            .as_object()
            .ok_or_else(|| DataError::format(name, "expected a JSON object"))?;
        let field_err = |key: &str, what: &str| DataError::format(format!("{name}:{key}"), what);
        let mut config = self;

        for (key, target) in [
            ("image_mean", &mut config.image_mean),
            ("image_std", &mut config.image_std),
        ] {
            if let Some(v) = obj.get(key) {
                *target = parse_triple(v).ok_or_else(|| field_err(key, "expected 3 numbers"))?;
            }
        }

        let size_key = ["image_size", "size"]
            .into_iter()
            .find(|k| obj.contains_key(*k));
        if let Some(key) = size_key {
            config.image_size = parse_size(&obj[key]).map_err(|msg| field_err(key, &msg))?;
        }

        if let Some(v) = obj.get("anyres_grids") {
            let base = u64::from(config.image_size);
            let bad = || field_err("anyres_grids", "expected [[width, height], ...] in pixels");
            let list = v.as_array().ok_or_else(bad)?;
            let mut grids = Vec::with_capacity(list.len());
            for pair in list {
                let pair = pair.as_array().filter(|p| p.len() == 2).ok_or_else(bad)?;
                let w = pair[0].as_u64().ok_or_else(bad)?;
                let h = pair[1].as_u64().ok_or_else(bad)?;
                if base == 0 || w == 0 || h == 0 || w % base != 0 || h % base != 0 {
                    return Err(field_err(
                        "anyres_grids",
                        &format!("[{w}, {h}] is not a positive multiple of the base size {base}"),
                    ));
                }
                let cols = u32::try_from(w / base).map_err(|_| bad())?;
                let rows = u32::try_from(h / base).map_err(|_| bad())?;
                grids.push(AnyResGrid::new(cols, rows));
            }
            config.grids = grids;
        }

        if let Some(v) = obj.get("image_aspect_ratio") {
            let s = v
                .as_str()
                .ok_or_else(|| field_err("image_aspect_ratio", "expected a string"))?;
            config.mode = if s == "anyres" {
                ResolutionMode::AnyRes
            } else {
                ResolutionMode::Fixed
            };
        }

        config
            .validate()
            .map_err(|e| DataError::format(name, e.to_string()))?;
        Ok(config)
    }

    /// Checks the values: a positive base size, finite means, finite non-zero stds, and in
    /// any-resolution mode at least one grid, all with positive sides.
    pub fn validate(&self) -> Result<(), DataError> {
        if self.image_size == 0 {
            return Err(DataError::Config("image_size must be positive".to_string()));
        }
        if self.image_mean.iter().any(|m| !m.is_finite()) {
            return Err(DataError::Config(format!(
                "image_mean must be finite, got {:?}",
                self.image_mean
            )));
        }
        if self.image_std.iter().any(|s| !s.is_finite() || *s == 0.0) {
            return Err(DataError::Config(format!(
                "image_std must be finite and non-zero, got {:?}",
                self.image_std
            )));
        }
        if self.mode == ResolutionMode::AnyRes {
            if self.grids.is_empty() {
                return Err(DataError::Config(
                    "any-resolution mode needs at least one grid".into(),
                ));
            }
            if let Some(g) = self.grids.iter().find(|g| g.cols == 0 || g.rows == 0) {
                return Err(DataError::Config(format!(
                    "grid {}x{} has an empty side",
                    g.cols, g.rows
                )));
            }
        }
        Ok(())
    }
}

fn parse_triple(v: &serde_json::Value) -> Option<[f32; 3]> {
    let list = v.as_array().filter(|l| l.len() == 3)?;
    let mut out = [0f32; 3];
    for (o, x) in out.iter_mut().zip(list) {
        *o = x.as_f64()? as f32;
    }
    Some(out)
}

fn parse_size(v: &serde_json::Value) -> Result<u32, String> {
    let as_size = |x: &serde_json::Value| x.as_u64().and_then(|n| u32::try_from(n).ok());
    if let Some(n) = as_size(v) {
        return Ok(n);
    }
    let obj = v
        .as_object()
        .ok_or("expected an integer or {\"height\", \"width\"} / {\"shortest_edge\"}")?;
    if let Some(n) = obj.get("shortest_edge") {
        return as_size(n).ok_or_else(|| "shortest_edge must be a positive integer".to_string());
    }
    match (
        obj.get("height").and_then(as_size),
        obj.get("width").and_then(as_size),
    ) {
        (Some(h), Some(w)) if h == w => Ok(h),
        (Some(h), Some(w)) => Err(format!("views must be square, got height {h} width {w}")),
        _ => Err("expected integer height and width".to_string()),
    }
}

/// The views of one image as 8-bit RGB, before normalisation: the global view first, then the
/// crops row-major. Useful for inspection and parity tests; [`ImageProcessor::process`] normalises
/// them.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageViews {
    /// The chosen grid (1x1 in fixed mode).
    pub grid: AnyResGrid,
    /// `1 + grid.num_crops()` views in any-resolution mode, 1 in fixed mode; each `S x S`.
    pub views: Vec<RgbImage>,
}

/// A preprocessed image: what the model's any-resolution path needs.
///
/// `pixels` is a `[num_views, 3, image_size, image_size]` tensor in row-major order (one CHW block a
/// view; view 0 is the global view, then the crops row-major over the `grid_cols x grid_rows`
/// grid), normalised with the configured mean and std. The model builds the crops' padding
/// ("unpad") mask from the grid and the original size; in fixed mode the grid is 1x1 and there is
/// one view.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessedImage {
    /// Normalised pixels, `num_views * 3 * image_size * image_size` values.
    pub pixels: Vec<f32>,
    /// Number of views: `1 + grid_cols * grid_rows` in any-resolution mode, 1 in fixed mode.
    pub num_views: usize,
    /// The view side `S` in pixels.
    pub image_size: u32,
    /// Crops across.
    pub grid_cols: u32,
    /// Crops down.
    pub grid_rows: u32,
    /// Width of the decoded image, before any resizing.
    pub original_width: u32,
    /// Height of the decoded image, before any resizing.
    pub original_height: u32,
}

impl ProcessedImage {
    /// The tensor shape of `pixels`: `[num_views, 3, image_size, image_size]`.
    pub fn shape(&self) -> [usize; 4] {
        let s = self.image_size as usize;
        [self.num_views, 3, s, s]
    }

    /// The pixels of view `i` (CHW), or `None` past the last view.
    pub fn view(&self, i: usize) -> Option<&[f32]> {
        let len = 3 * (self.image_size as usize).pow(2);
        self.pixels.get(i * len..(i + 1) * len)
    }
}

/// The image pipeline with a validated configuration.
#[derive(Debug, Clone)]
pub struct ImageProcessor {
    config: ImageProcessorConfig,
    /// Per channel, the normalised value of each 8-bit sample.
    lut: [[f32; 256]; 3],
}

impl ImageProcessor {
    /// Validates `config` and precomputes the normalisation tables.
    pub fn new(config: ImageProcessorConfig) -> Result<Self, DataError> {
        config.validate()?;
        let mut lut = [[0f32; 256]; 3];
        for (c, table) in lut.iter_mut().enumerate() {
            for (v, out) in table.iter_mut().enumerate() {
                // Same float32 operations as torchvision's ToTensor + Normalize.
                *out = (v as f32 / 255.0 - config.image_mean[c]) / config.image_std[c];
            }
        }
        Ok(ImageProcessor { config, lut })
    }

    /// The configuration.
    pub fn config(&self) -> &ImageProcessorConfig {
        &self.config
    }

    /// Builds the 8-bit views of `image` (see the module documentation). Fails only for an image
    /// without pixels.
    pub fn views(&self, image: &RgbImage) -> Result<ImageViews, DataError> {
        let (width, height) = image.dimensions();
        let base = self.config.image_size;
        if width == 0 || height == 0 {
            return Err(DataError::Image {
                path: "<in-memory image>".to_string(),
                msg: format!("image has no pixels ({width}x{height})"),
            });
        }
        let global = resize(image, base, base, ResampleFilter::Bicubic);
        let grid = match self.config.mode {
            ResolutionMode::Fixed => None,
            ResolutionMode::AnyRes => select_grid(width, height, base, &self.config.grids),
        };
        let Some(grid) = grid else {
            return Ok(ImageViews {
                grid: AnyResGrid::new(1, 1),
                views: vec![global],
            });
        };

        let (canvas_w, canvas_h) = grid.canvas_size(base);
        let (fit_w, fit_h) = fit_size(width, height, canvas_w, canvas_h);
        let too_big = || {
            DataError::Config(format!(
                "grid {}x{} at base {base} is too large",
                grid.cols, grid.rows
            ))
        };
        let (fit_w, fit_h) = (
            u32::try_from(fit_w).map_err(|_| too_big())?,
            u32::try_from(fit_h).map_err(|_| too_big())?,
        );
        let resized = resize(image, fit_w, fit_h, ResampleFilter::Bicubic);
        // The canvas is never materialised: each crop copies its part of the pasted image and stays
        // black elsewhere.
        let left = (canvas_w - u64::from(fit_w)) / 2;
        let top = (canvas_h - u64::from(fit_h)) / 2;
        let mut views = Vec::with_capacity(1 + grid.num_crops());
        views.push(global);
        for row in 0..u64::from(grid.rows) {
            for col in 0..u64::from(grid.cols) {
                let origin = (col * u64::from(base), row * u64::from(base));
                views.push(crop_from_canvas(&resized, (left, top), origin, base));
            }
        }
        Ok(ImageViews { grid, views })
    }

    /// Runs the whole pipeline on a decoded image: views, then scaling to `[0, 1]` and
    /// normalisation. Fails only for an image without pixels.
    pub fn process(&self, image: &RgbImage) -> Result<ProcessedImage, DataError> {
        let ImageViews { grid, views } = self.views(image)?;
        let base = self.config.image_size;
        let plane = (base as usize).pow(2);
        let mut pixels = vec![0f32; views.len() * 3 * plane];
        for (view, out) in views.iter().zip(pixels.chunks_exact_mut(3 * plane)) {
            // Views are already S x S; the reference's per-view resize is a no-op then.
            let resized;
            let view = if view.dimensions() == (base, base) {
                view
            } else {
                resized = resize(view, base, base, ResampleFilter::Bicubic);
                &resized
            };
            let (r, rest) = out.split_at_mut(plane);
            let (g, b) = rest.split_at_mut(plane);
            for (i, px) in view.as_raw().chunks_exact(3).enumerate() {
                r[i] = self.lut[0][px[0] as usize];
                g[i] = self.lut[1][px[1] as usize];
                b[i] = self.lut[2][px[2] as usize];
            }
        }
        Ok(ProcessedImage {
            pixels,
            num_views: views.len(),
            image_size: base,
            grid_cols: grid.cols,
            grid_rows: grid.rows,
            original_width: image.width(),
            original_height: image.height(),
        })
    }

    /// Decodes `src` ([`decode_image_with`] the configured [`ImageProcessorConfig::limits`]) and
    /// processes it. Errors name the source.
    pub fn process_source(&self, src: &ImageSource) -> Result<ProcessedImage, DataError> {
        let limits = match self.config.limits {
            Some(limits) => limits,
            None => ImageLimits::from_env()?,
        };
        let image = decode_image_with(src, &limits)?;
        self.process(&image)
    }
}

/// Copies the `size x size` window at `origin` of a black canvas on which `pasted` sits at
/// `offset` (all in canvas pixels).
fn crop_from_canvas(
    pasted: &RgbImage,
    offset: (u64, u64),
    origin: (u64, u64),
    size: u32,
) -> RgbImage {
    let mut crop = RgbImage::new(size, size);
    let (pw, ph) = (u64::from(pasted.width()), u64::from(pasted.height()));
    let size64 = u64::from(size);
    // Overlap of the window with the pasted image, in canvas coordinates.
    let x0 = origin.0.max(offset.0);
    let x1 = (origin.0 + size64).min(offset.0 + pw);
    let y0 = origin.1.max(offset.1);
    let y1 = (origin.1 + size64).min(offset.1 + ph);
    if x0 >= x1 || y0 >= y1 {
        return crop;
    }
    let span = ((x1 - x0) * 3) as usize;
    let src = pasted.as_raw();
    let dst_stride = size as usize * 3;
    let src_stride = pw as usize * 3;
    let dst = &mut *crop;
    for y in y0..y1 {
        let s = (y - offset.1) as usize * src_stride + (x0 - offset.0) as usize * 3;
        let d = (y - origin.1) as usize * dst_stride + (x0 - origin.0) as usize * 3;
        dst[d..d + span].copy_from_slice(&src[s..s + span]);
    }
    crop
}
