//! PNG line charts of benchmark series (plotters, drawing text with a system TrueType font
//! so no font library has to be linked).

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;
use plotters::style::FontStyle;

/// Fonts tried in order (Debian: fonts-dejavu-core, which `bench/scale-out` installs).
const FONT_CANDIDATES: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    /// Dashed reference lines (the ideal) are drawn thin and grey.
    pub reference: bool,
}

fn register_font() -> anyhow::Result<()> {
    static REGISTERED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let path = FONT_CANDIDATES
                .iter()
                .find(|path| Path::new(path).is_file())
                .ok_or_else(|| format!("no font in {FONT_CANDIDATES:?} (apt-get install fonts-dejavu-core)"))?;
            let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
            // plotters keeps fonts for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                .map_err(|_| format!("{path} is not a usable TrueType font"))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// Draws `series` against `x_label`/`y_label` into a PNG at `path`.
pub fn line_chart(path: &Path, title: &str, x_label: &str, y_label: &str, series: &[Series]) -> anyhow::Result<()> {
    register_font()?;
    let x_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(1.0f64, f64::max);
    let y_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(1.0f64, f64::max)
        * 1.15;
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 24))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(72)
            .build_cartesian_2d(0.0..x_max + 0.5, 0.0..y_max)?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .x_labels(x_max as usize + 2)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .label_style(("sans-serif", 16))
            .axis_desc_style(("sans-serif", 18))
            .draw()?;
        let colours = [RGBColor(0, 90, 181), RGBColor(220, 50, 32), RGBColor(0, 140, 70)];
        for (index, one) in series.iter().enumerate() {
            let colour = if one.reference {
                RGBColor(140, 140, 140)
            } else {
                colours[index % colours.len()]
            };
            let width = if one.reference { 1 } else { 3 };
            chart
                .draw_series(LineSeries::new(one.points.clone(), colour.stroke_width(width)))?
                .label(one.label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], colour.stroke_width(width)));
            if !one.reference {
                chart.draw_series(one.points.iter().map(|&point| Circle::new(point, 5, colour.filled())))?;
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .label_font(("sans-serif", 16))
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw()
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("drawing {}", path.display()))
}
