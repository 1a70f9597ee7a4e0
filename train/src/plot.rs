//! `loss.png`: the training curves of one or more runs drawn with `plotters`.
//!
//! The top panel holds the training loss (raw in a light shade, a moving average on top) and the
//! validation loss (one marked point per window) against the optimizer step; the bottom panel
//! holds the learning rate. Every run and metric gets its own colour and a legend entry. Text is
//! drawn with a bundled DejaVu Sans (see `assets/DejaVuSans-LICENSE.txt`), so no system font or
//! fontconfig is needed; the picture is rendered into memory and encoded with `image`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;

use crate::metrics_file::LogRow;

/// The default size of `loss.png` in pixels.
pub const PLOT_SIZE: (u32, u32) = (1000, 700);

/// The font family name the plots register and use.
const FONT: &str = "sans-serif";

/// An error while drawing or writing a plot.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// There is no finite point to draw.
    #[error("nothing to plot: no finite loss or learning-rate value")]
    Empty,
    /// The drawing backend or the PNG encoder failed.
    #[error("drawing the plot: {0}")]
    Draw(String),
}

fn draw_err(e: impl std::fmt::Display) -> PlotError {
    PlotError::Draw(e.to_string())
}

/// The curves of one run, as `(optimizer step, value)` pairs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunCurves {
    /// The run's name in the legend (empty: no prefix).
    pub label: String,
    /// Training loss per logged micro-batch.
    pub train_loss: Vec<(f64, f64)>,
    /// Validation loss per window.
    pub valid_loss: Vec<(f64, f64)>,
    /// Learning rate per logged micro-batch.
    pub learning_rate: Vec<(f64, f64)>,
}

impl RunCurves {
    /// The curves in the rows of a metrics log: `Loss` and `Learning Rate` of `train` rows, and
    /// `Loss` of `valid-window` rows (the per-window validation means).
    pub fn from_rows<'a>(label: &str, rows: impl IntoIterator<Item = &'a LogRow>) -> Self {
        let mut curves = RunCurves {
            label: label.to_string(),
            ..Default::default()
        };
        for r in rows {
            let step = r.step as f64;
            match r.split.as_str() {
                "train" => {
                    if let Some(&v) = r.metrics.get("Loss") {
                        curves.train_loss.push((step, v));
                    }
                    if let Some(&v) = r.metrics.get("Learning Rate") {
                        curves.learning_rate.push((step, v));
                    }
                }
                "valid-window" => {
                    if let Some(&v) = r.metrics.get("Loss") {
                        curves.valid_loss.push((step, v));
                    }
                }
                _ => {}
            }
        }
        curves
    }

    /// Reads a run's `metrics.jsonl` (lines that are not log rows are skipped).
    pub fn from_metrics_jsonl(label: &str, path: &Path) -> Result<Self, PlotError> {
        let text = std::fs::read_to_string(path).map_err(|source| PlotError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let rows: Vec<LogRow> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        Ok(Self::from_rows(label, &rows))
    }

    fn name(&self, metric: &str) -> String {
        if self.label.is_empty() {
            metric.to_string()
        } else {
            format!("{}: {metric}", self.label)
        }
    }
}

/// Registers the bundled font once; plotters looks fonts up by family name.
fn register_font() -> Result<(), PlotError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(
            FONT,
            FontStyle::Normal,
            include_bytes!("../assets/DejaVuSans.ttf"),
        )
        .is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(PlotError::Draw("the bundled font does not parse".into()))
    }
}

/// Finite points only, averaged per step (gradient accumulation logs several micro-batches per
/// optimizer step), sorted by step.
fn per_step(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut sorted: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|p| p.0.is_finite() && p.1.is_finite())
        .collect();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut out: Vec<(f64, f64, usize)> = Vec::new();
    for (x, y) in sorted {
        match out.last_mut() {
            Some(last) if last.0 == x => {
                last.1 += y;
                last.2 += 1;
            }
            _ => out.push((x, y, 1)),
        }
    }
    out.into_iter().map(|(x, s, n)| (x, s / n as f64)).collect()
}

/// A centred moving average over `k` points (shorter at the ends).
fn moving_average(points: &[(f64, f64)], k: usize) -> Vec<(f64, f64)> {
    let half = k / 2;
    (0..points.len())
        .map(|i| {
            let lo = i.saturating_sub(half);
            let hi = (i + half + 1).min(points.len());
            let mean = points[lo..hi].iter().map(|p| p.1).sum::<f64>() / (hi - lo) as f64;
            (points[i].0, mean)
        })
        .collect()
}

/// `lo..hi` with a margin, never empty.
fn padded(lo: f64, hi: f64, frac: f64) -> std::ops::Range<f64> {
    if hi > lo {
        let pad = (hi - lo) * frac;
        lo - pad..hi + pad
    } else {
        let pad = lo.abs().max(1e-12) * 0.1;
        lo - pad..hi + pad
    }
}

fn bounds<'a>(sets: impl Iterator<Item = &'a Vec<(f64, f64)>>) -> Option<(f64, f64, f64, f64)> {
    let mut b: Option<(f64, f64, f64, f64)> = None;
    for &(x, y) in sets.flatten() {
        b = Some(match b {
            None => (x, x, y, y),
            Some((x0, x1, y0, y1)) => (x0.min(x), x1.max(x), y0.min(y), y1.max(y)),
        });
    }
    b
}

/// Ten distinguishable colours (matplotlib's `tab10`).
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The colour of metric `metric` (0 train loss, 1 validation loss, 2 learning rate) of run `run`.
fn colour(run: usize, metric: usize) -> RGBColor {
    PALETTE[(run * 3 + metric) % PALETTE.len()]
}

/// Formats an axis value compactly (scientific for learning rates and other tiny numbers).
fn fmt_value(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-2..1e5).contains(&a) {
        format!("{v:.1e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    }
}

/// Draws the curves of `runs` into an RGB image of `size` pixels under the title `title`.
pub fn render(
    runs: &[RunCurves],
    title: &str,
    size: (u32, u32),
) -> Result<image::RgbImage, PlotError> {
    register_font()?;
    let runs: Vec<RunCurves> = runs
        .iter()
        .map(|r| RunCurves {
            label: r.label.clone(),
            train_loss: per_step(&r.train_loss),
            valid_loss: per_step(&r.valid_loss),
            learning_rate: per_step(&r.learning_rate),
        })
        .collect();
    let loss = bounds(runs.iter().flat_map(|r| [&r.train_loss, &r.valid_loss]));
    let lr = bounds(runs.iter().map(|r| &r.learning_rate));
    let steps = bounds(
        runs.iter()
            .flat_map(|r| [&r.train_loss, &r.valid_loss, &r.learning_rate]),
    )
    .ok_or(PlotError::Empty)?;
    let x_range = padded(steps.0, steps.1, 0.0);

    let (w, h) = size;
    let mut buf = vec![255u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let root = root.titled(title, (FONT, 24)).map_err(draw_err)?;
        let (top, bottom) = match (loss.is_some(), lr.is_some()) {
            (true, true) => {
                let (a, b) = root.split_vertically(root.dim_in_pixel().1 * 62 / 100);
                (Some(a), Some(b))
            }
            (true, false) => (Some(root.clone()), None),
            _ => (None, Some(root.clone())),
        };
        if let (Some(area), Some((_, _, y0, y1))) = (top, loss) {
            let mut chart = ChartBuilder::on(&area)
                .margin(12)
                .x_label_area_size(45)
                .y_label_area_size(75)
                .caption("loss", (FONT, 18))
                .build_cartesian_2d(x_range.clone(), padded(y0, y1, 0.05))
                .map_err(draw_err)?;
            chart
                .configure_mesh()
                .x_desc("optimizer step")
                .y_desc("loss")
                .x_label_formatter(&|v| fmt_value(*v))
                .y_label_formatter(&|v| fmt_value(*v))
                .label_style((FONT, 14))
                .axis_desc_style((FONT, 16))
                .light_line_style(RGBColor(235, 235, 235))
                .draw()
                .map_err(draw_err)?;
            for (i, run) in runs.iter().enumerate() {
                let c = colour(i, 0);
                let pts = &run.train_loss;
                let k = (pts.len() / 25).max(1) | 1;
                if k > 1 {
                    chart
                        .draw_series(LineSeries::new(
                            pts.iter().copied(),
                            c.mix(0.3).stroke_width(1),
                        ))
                        .map_err(draw_err)?;
                }
                if !pts.is_empty() {
                    let name = if k > 1 {
                        run.name(&format!("train loss (moving average of {k})"))
                    } else {
                        run.name("train loss")
                    };
                    chart
                        .draw_series(LineSeries::new(moving_average(pts, k), c.stroke_width(2)))
                        .map_err(draw_err)?
                        .label(name)
                        .legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                        });
                }
                if !run.valid_loss.is_empty() {
                    let c = colour(i, 1);
                    chart
                        .draw_series(
                            LineSeries::new(run.valid_loss.iter().copied(), c.stroke_width(2))
                                .point_size(4),
                        )
                        .map_err(draw_err)?
                        .label(run.name("validation loss"))
                        .legend(move |(x, y)| {
                            // Offsets from the legend anchor.
                            EmptyElement::at((x, y))
                                + PathElement::new(vec![(0, 0), (20, 0)], c.stroke_width(2))
                                + Circle::new((10, 0), 4, c.filled())
                        });
                }
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.5))
                .label_font((FONT, 14))
                .draw()
                .map_err(draw_err)?;
        }
        if let (Some(area), Some((_, _, y0, y1))) = (bottom, lr) {
            let mut chart = ChartBuilder::on(&area)
                .margin(12)
                .x_label_area_size(45)
                .y_label_area_size(75)
                .caption("learning rate", (FONT, 18))
                .build_cartesian_2d(x_range, padded(y0.min(0.0), y1, 0.05))
                .map_err(draw_err)?;
            chart
                .configure_mesh()
                .x_desc("optimizer step")
                .y_desc("learning rate")
                .x_label_formatter(&|v| fmt_value(*v))
                .y_label_formatter(&|v| fmt_value(*v))
                .y_labels(5)
                .label_style((FONT, 14))
                .axis_desc_style((FONT, 16))
                .light_line_style(RGBColor(235, 235, 235))
                .draw()
                .map_err(draw_err)?;
            for (i, run) in runs.iter().enumerate() {
                if run.learning_rate.is_empty() {
                    continue;
                }
                let c = colour(i, 2);
                chart
                    .draw_series(LineSeries::new(
                        run.learning_rate.iter().copied(),
                        c.stroke_width(2),
                    ))
                    .map_err(draw_err)?
                    .label(run.name("learning rate"))
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                    });
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.5))
                .label_font((FONT, 14))
                .draw()
                .map_err(draw_err)?;
        }
        root.present().map_err(draw_err)?;
    }
    image::RgbImage::from_raw(w, h, buf).ok_or_else(|| PlotError::Draw("buffer size".into()))
}

/// Draws the curves of `runs` (see [`render`]) and writes them to `path` as a PNG, atomically
/// (temporary file + rename).
pub fn write_png(
    path: &Path,
    runs: &[RunCurves],
    title: &str,
    size: (u32, u32),
) -> Result<(), PlotError> {
    let img = render(runs, title, size)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "plot.png".into());
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    img.save_with_format(&tmp, image::ImageFormat::Png)
        .map_err(draw_err)?;
    std::fs::rename(&tmp, path).map_err(|source| PlotError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashSet};

    fn row(split: &str, step: usize, metrics: &[(&str, f64)]) -> LogRow {
        LogRow {
            split: split.into(),
            window: 1 + step / 20,
            iteration: step,
            step,
            metrics: metrics
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    /// A small metrics log: 60 steps of a decaying noisy loss with warmup + cosine learning rate,
    /// a validation loss every 20 steps, and a line that is not a row.
    fn write_log(path: &Path, scale: f64) {
        let mut text = String::new();
        for s in 1..=60usize {
            let noise = ((s * 7919) % 13) as f64 / 13.0 - 0.5;
            let loss = scale * (2.0 + 6.0 * (-(s as f64) / 15.0).exp() + 0.3 * noise);
            let lr = if s <= 6 {
                1e-4 * s as f64 / 6.0
            } else {
                1e-4 * 0.5 * (1.0 + (std::f64::consts::PI * (s - 6) as f64 / 54.0).cos())
            };
            let r = row("train", s, &[("Loss", loss), ("Learning Rate", lr)]);
            text += &serde_json::to_string(&r).unwrap();
            text.push('\n');
            if s % 20 == 0 {
                let v = row("valid-window", s, &[("Loss", loss + 0.2)]);
                text += &serde_json::to_string(&v).unwrap();
                text.push('\n');
            }
        }
        text += "not json\n";
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn reads_the_curves_of_a_metrics_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("metrics.jsonl");
        write_log(&log, 1.0);
        let c = RunCurves::from_metrics_jsonl("run", &log).unwrap();
        assert_eq!(c.train_loss.len(), 60);
        assert_eq!(c.learning_rate.len(), 60);
        assert_eq!(c.valid_loss.len(), 3);
        assert_eq!(c.valid_loss[0].0, 20.0);
        let missing = RunCurves::from_metrics_jsonl("run", &dir.path().join("nope.jsonl"));
        assert!(matches!(missing, Err(PlotError::Io { .. })));
    }

    #[test]
    fn writes_a_readable_png_with_several_colours() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
        write_log(&a, 1.0);
        write_log(&b, 0.8);
        let runs = [
            RunCurves::from_metrics_jsonl("baseline", &a).unwrap(),
            RunCurves::from_metrics_jsonl("lora", &b).unwrap(),
        ];
        let png = dir.path().join("loss.png");
        write_png(&png, &runs, "loss.png test", PLOT_SIZE).unwrap();
        let img = image::open(&png).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), PLOT_SIZE);
        let colours: HashSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
        // White background, black text and axes, grey grid, six curve colours and anti-aliasing.
        assert!(colours.len() > 20, "{} colours", colours.len());
        for c in 0..6 {
            let want = colour(c / 3, c % 3).rgb();
            assert!(
                img.pixels().any(|p| p.0 == [want.0, want.1, want.2]),
                "curve colour {want:?} missing"
            );
        }
        // Text renders: dark pixels in the title strip (the top 30 rows hold only the title).
        let dark = (0..PLOT_SIZE.0)
            .flat_map(|x| (0..30).map(move |y| (x, y)))
            .filter(|&(x, y)| img.get_pixel(x, y).0.iter().all(|&v| v < 100))
            .count();
        assert!(dark > 50, "title pixels: {dark}");
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
    }

    #[test]
    fn a_run_without_learning_rate_or_points() {
        let loss_only = RunCurves {
            label: String::new(),
            train_loss: vec![(1.0, 3.0), (1.0, 2.0), (2.0, f64::NAN), (3.0, 1.5)],
            ..Default::default()
        };
        let img = render(&[loss_only], "t", (400, 300)).unwrap();
        assert_eq!(img.dimensions(), (400, 300));
        assert!(matches!(
            render(&[RunCurves::default()], "t", (400, 300)),
            Err(PlotError::Empty)
        ));
        assert_eq!(
            per_step(&[(2.0, 1.0), (1.0, 3.0), (1.0, 2.0)]),
            vec![(1.0, 2.5), (2.0, 1.0)]
        );
    }
}
