//! Training-curve plots (PNG or SVG, by the file extension) with plotters: a line per sweep point
//! (the mean over its seeds) in a band spanning the seeds, a title, axis labels, and a legend in
//! its own column beside the data.
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

/// One line of a plot: a sweep point's mean over its seeds, with the band the seeds span.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The legend entry.
    pub label: String,
    /// `(x, mean)` in x order.
    pub mean: Vec<(f64, f64)>,
    /// `(x, lowest, highest)` over the seeds, where more than one seed has the x.
    pub band: Vec<(f64, f64, f64)>,
    /// Drawn in grey: a stage every point shares, so not one of the points.
    pub shared: bool,
}

/// What a plot shows: its series and the words around them.
#[derive(Debug, Clone)]
pub struct Figure {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// The legend's heading (what the entries are values of).
    pub legend_title: String,
    /// Lines under the legend (how the lines and bands were made).
    pub legend_notes: Vec<String>,
    pub series: Vec<Series>,
}

/// Picture size in pixels (the SVG's user units too).
const SIZE: (u32, u32) = (1024, 600);

/// Line colours: matplotlib's `tab10` without its olive yellow, which is faint on white. Points
/// past the ninth reuse them dashed.
const COLOURS: [RGBColor; 9] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x17, 0xbe, 0xcf),
    RGBColor(0x1a, 0x1a, 0x6e),
];
/// The legend column is at most this wide; longer labels are cut short with an ellipsis.
const MAX_LEGEND_WIDTH: u32 = 400;
const SHARED: RGBColor = RGBColor(0x55, 0x55, 0x55);

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

/// Plot `figure` to `path` (`.png` or `.svg`), written atomically.
pub fn plot(figure: &Figure, path: &Path) -> Result<(), PlotError> {
    register_font().map_err(|m| PlotError::new(path, m))?;
    let extension = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    let bytes = match extension.as_deref() {
        Some("svg") => {
            let mut svg = String::new();
            {
                let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
                draw(&root, figure).map_err(|m| PlotError::new(path, m))?;
            }
            svg.into_bytes()
        }
        Some("png") => {
            let mut rgb = vec![0u8; SIZE.0 as usize * SIZE.1 as usize * 3];
            {
                let root = BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area();
                draw(&root, figure).map_err(|m| PlotError::new(path, m))?;
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

/// The colour and dash of the `index`th point's line.
fn style_of(series: &Series, index: usize) -> (RGBColor, bool) {
    if series.shared { (SHARED, false) } else { (COLOURS[index % COLOURS.len()], index >= COLOURS.len()) }
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, figure: &Figure) -> Result<(), String> {
    let error = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(error)?;
    let body = root.titled(&figure.title, ("sans-serif", 24)).map_err(error)?;

    // The legend gets a column of its own to the right, as wide as its longest line, so it
    // never covers data.
    let legend_font = TextStyle::from(("sans-serif", 16).into_font());
    let lines =
        std::iter::once(&figure.legend_title).chain(figure.series.iter().map(|s| &s.label)).chain(&figure.legend_notes);
    let mut widest = 0;
    for line in lines {
        widest = widest.max(body.estimate_text_size(line, &legend_font).map_err(error)?.0);
    }
    let legend_width = (widest + 60).clamp(140, MAX_LEGEND_WIDTH);
    let (plot_area, legend_area) = body.split_horizontally(SIZE.0 - legend_width);

    let x_range = padded_range(figure.series.iter().flat_map(|s| s.mean.iter().map(|p| p.0)), 0.0);
    let y_values = figure
        .series
        .iter()
        .flat_map(|s| s.mean.iter().map(|p| p.1).chain(s.band.iter().flat_map(|&(_, low, high)| [low, high])));
    let y_range = padded_range(y_values, 0.05);
    let mut chart = ChartBuilder::on(&plot_area)
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(x_range, y_range)
        .map_err(error)?;
    chart
        .configure_mesh()
        .x_desc(&figure.x_label)
        // Steps are whole numbers.
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_desc(&figure.y_label)
        .light_line_style(WHITE.mix(0.0))
        .bold_line_style(BLACK.mix(0.08))
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 18))
        .draw()
        .map_err(error)?;
    let finite = |x: f64, y: f64| x.is_finite() && y.is_finite();
    // Bands first, so that no band covers another point's line.
    for (i, series) in figure.series.iter().enumerate() {
        let band: Vec<(f64, f64, f64)> =
            series.band.iter().copied().filter(|&(x, low, high)| finite(x, low) && high.is_finite()).collect();
        if band.len() < 2 {
            continue;
        }
        let outline: Vec<(f64, f64)> =
            band.iter().map(|&(x, _, high)| (x, high)).chain(band.iter().rev().map(|&(x, low, _)| (x, low))).collect();
        let (colour, _) = style_of(series, i);
        chart.draw_series(std::iter::once(Polygon::new(outline, colour.mix(0.18).filled()))).map_err(error)?;
    }
    for (i, series) in figure.series.iter().enumerate() {
        let points: Vec<(f64, f64)> = series.mean.iter().copied().filter(|&(x, y)| finite(x, y)).collect();
        let (colour, dashed) = style_of(series, i);
        let style = colour.stroke_width(2);
        if dashed {
            chart.draw_series(DashedLineSeries::new(points, 8, 5, style)).map_err(error)?;
        } else {
            chart.draw_series(LineSeries::new(points, style)).map_err(error)?;
        }
    }
    draw_legend(&legend_area, figure, &legend_font).map_err(error)?;
    root.present().map_err(error)
}

/// `text`, cut short with an ellipsis where it is wider than `width` pixels.
fn fitted<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    text: &str,
    font: &TextStyle,
    width: u32,
) -> Result<String, DrawingAreaErrorKind<DB::ErrorType>> {
    let mut chars: Vec<char> = text.chars().collect();
    let mut fitted = text.to_string();
    while area.estimate_text_size(&fitted, font)?.0 > width && !chars.is_empty() {
        chars.pop();
        fitted = chars.iter().collect::<String>() + "…";
    }
    Ok(fitted)
}

/// The legend column: heading, a swatch and label per series, then the notes.
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    figure: &Figure,
    font: &TextStyle,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    const LINE: i32 = 24;
    let mut y = 20;
    area.draw_text(&fitted(area, &figure.legend_title, font, MAX_LEGEND_WIDTH - 16)?, font, (8, y))?;
    y += LINE + 4;
    for (i, series) in figure.series.iter().enumerate() {
        let (colour, dashed) = style_of(series, i);
        let middle = y + 9;
        if !series.band.is_empty() {
            area.draw(&Rectangle::new([(8, middle - 7), (40, middle + 7)], colour.mix(0.18).filled()))?;
        }
        let segments: Vec<[(i32, i32); 2]> = if dashed {
            vec![[(8, middle), (18, middle)], [(23, middle), (33, middle)]]
        } else {
            vec![[(8, middle), (40, middle)]]
        };
        for segment in segments {
            area.draw(&PathElement::new(segment.to_vec(), colour.stroke_width(3)))?;
        }
        area.draw_text(&fitted(area, &series.label, font, MAX_LEGEND_WIDTH - 56)?, font, (48, y))?;
        y += LINE;
    }
    y += 8;
    for note in &figure.legend_notes {
        area.draw_text(note, &font.color(&RGBColor(0x44, 0x44, 0x44)), (8, y))?;
        y += LINE - 2;
    }
    Ok(())
}
