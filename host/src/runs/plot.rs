//! Training-curve plots (PNG or SVG, by the file extension) with plotters: a line per run, a
//! title, axis labels and a legend.
//!
//! Text in a bitmap needs a font. plotters' `ab_glyph` feature rasterizes glyphs from TTF bytes
//! registered at run time; the bytes are DejaVu Sans, compiled in from the `dejavu` crate (a
//! crates.io package holding the upstream 2.37 TTFs; only the regular face is linked, ~740 KB).
//! So a plot renders the same on every machine, offline, with no font lookup (fontconfig,
//! system paths) and no download at run time. SVG keeps its text as text; the font only sizes the
//! legend box there. The bitmap is encoded by the `png` crate rather than plotters' encoder,
//! which would pull in the whole `image` crate.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::util::atomic::write_with;

/// A plotting failure, with the file it was for.
#[derive(Debug, thiserror::Error)]
#[error("plotting {path}: {message}")]
pub struct PlotError {
    pub path: PathBuf,
    pub message: String,
}

impl PlotError {
    fn new(path: &Path, message: impl ToString) -> Self {
        PlotError { path: path.to_path_buf(), message: message.to_string() }
    }
}

/// One line: its legend label and `(x, y)` points in x order.
#[derive(Debug, Clone, PartialEq)]
pub struct Curve {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// Picture size in pixels (the SVG's user units too).
const SIZE: (u32, u32) = (1024, 640);

/// Register DejaVu Sans as plotters' sans-serif face, once per process.
fn register_font() -> Result<(), String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
                .map_err(|_| "the embedded DejaVu Sans font did not parse".to_string())
        })
        .clone()
}

/// Plot `curves` to `path` (`.png` or `.svg`), written atomically.
pub fn plot_curves(curves: &[Curve], title: &str, x_label: &str, y_label: &str, path: &Path) -> Result<(), PlotError> {
    register_font().map_err(|m| PlotError::new(path, m))?;
    let extension = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    let bytes = match extension.as_deref() {
        Some("svg") => {
            let mut svg = String::new();
            {
                let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
                draw(&root, curves, title, x_label, y_label).map_err(|m| PlotError::new(path, m))?;
            }
            svg.into_bytes()
        }
        Some("png") => {
            let mut rgb = vec![0u8; SIZE.0 as usize * SIZE.1 as usize * 3];
            {
                let root = BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area();
                draw(&root, curves, title, x_label, y_label).map_err(|m| PlotError::new(path, m))?;
            }
            encode_png(&rgb, SIZE).map_err(|m| PlotError::new(path, m))?
        }
        _ => return Err(PlotError::new(path, "name the plot file .png or .svg")),
    };
    write_with(path, |out| out.write_all(&bytes).map_err(|e| PlotError::new(path, e)), PlotError::new)
}

/// An RGB8 buffer as PNG bytes.
fn encode_png(rgb: &[u8], (width, height): (u32, u32)) -> Result<Vec<u8>, png::EncodingError> {
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish()?;
    Ok(bytes)
}

/// A range that contains every value, padded a little so lines do not sit on the frame; a
/// single value gets a unit-wide range.
fn padded_range(values: impl Iterator<Item = f64>, pad: f64) -> std::ops::Range<f64> {
    let (mut low, mut high) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        low = low.min(v);
        high = high.max(v);
    }
    if low > high {
        return 0.0..1.0;
    }
    if low == high {
        return (low - 0.5)..(high + 0.5);
    }
    let margin = (high - low) * pad;
    (low - margin)..(high + margin)
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    curves: &[Curve],
    title: &str,
    x_label: &str,
    y_label: &str,
) -> Result<(), String> {
    let error = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(error)?;
    let finite =
        |c: &Curve| c.points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()).collect::<Vec<_>>();
    let x_range = padded_range(curves.iter().flat_map(|c| c.points.iter().map(|p| p.0)), 0.0);
    let y_range = padded_range(curves.iter().flat_map(|c| c.points.iter().map(|p| p.1)), 0.05);
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 26))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(x_range, y_range)
        .map_err(error)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        // Steps are whole numbers.
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_desc(y_label)
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 18))
        .draw()
        .map_err(error)?;
    for (i, curve) in curves.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(finite(curve), color.stroke_width(2)))
            .map_err(error)?
            .label(curve.label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(("sans-serif", 16))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(error)?;
    root.present().map_err(error)
}
