//! Plots written as SVG and PNG: line charts in panels (training curves, the
//! residual-learning experiments) and heat maps (confusion matrices).
//!
//! Drawn with `plotters`; PNG text uses the bundled DejaVu Sans Mono (see
//! NOTICE), so plots render the same on any machine without system fonts.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use resnet::error::{Error, Result};

/// A named line.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend entry.
    pub name: String,
    /// `(x, y)` points.
    pub points: Vec<(f64, f64)>,
    /// Palette index (same index, same colour across panels).
    pub color: usize,
    /// Drawn thick (e.g. test curves) rather than thin.
    pub bold: bool,
}

/// One chart.
#[derive(Clone, Debug, Default)]
pub struct Panel {
    /// Title above the chart.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// Logarithmic y axis.
    pub log_y: bool,
    /// Lines.
    pub series: Vec<Series>,
}

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let font: &'static [u8] = include_bytes!("assets/fonts/DejaVuSansMono.ttf");
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, font);
    });
}

fn err(e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("plotting failed: {e}"))
}

fn draw_panel<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, p: &Panel) -> Result<()> {
    let pts = p.series.iter().flat_map(|s| s.points.iter()).filter(|(x, y)| x.is_finite() && y.is_finite());
    let pts: Vec<(f64, f64)> = pts.filter(|(_, y)| !p.log_y || *y > 0.0).copied().collect();
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in &pts {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if pts.is_empty() {
        (x0, x1, y0, y1) = (0.0, 1.0, if p.log_y { 0.1 } else { 0.0 }, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if p.log_y {
        (y0, y1) = (y0 / 1.5, y1 * 1.5);
    } else {
        let pad = ((y1 - y0) * 0.05).max(1e-6);
        (y0, y1) = ((y0 - pad).max(if y0 >= 0.0 { 0.0 } else { f64::MIN }), y1 + pad);
    }
    let mut builder = ChartBuilder::on(area);
    builder.caption(&p.title, ("sans-serif", 18)).margin(12).x_label_area_size(40).y_label_area_size(64);
    let series_style = |s: &Series| {
        let c = PALETTE[s.color % PALETTE.len()];
        ShapeStyle { color: c.to_rgba(), filled: false, stroke_width: if s.bold { 3 } else { 1 } }
    };
    macro_rules! body {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(&p.x_label)
                .y_desc(&p.y_label)
                .x_label_formatter(&|v| if (x1 - x0) >= 20.0 { format!("{v:.0}") } else { format!("{v:.2}") })
                .y_label_formatter(&|v| tick(*v))
                .label_style(("sans-serif", 13))
                .light_line_style(WHITE.mix(0.0))
                .draw()
                .map_err(err)?;
            for s in &p.series {
                let style = series_style(s);
                let points =
                    s.points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite() && (!p.log_y || *y > 0.0));
                chart
                    .draw_series(LineSeries::new(points, style))
                    .map_err(err)?
                    .label(&s.name)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], style));
            }
            if p.series.iter().any(|s| !s.name.is_empty()) {
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::UpperRight)
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK.mix(0.3))
                    .label_font(("sans-serif", 12))
                    .draw()
                    .map_err(err)?;
            }
        }};
    }
    if p.log_y {
        body!(builder.build_cartesian_2d(x0..x1, (y0..y1).log_scale()).map_err(err)?);
    } else {
        body!(builder.build_cartesian_2d(x0..x1, y0..y1).map_err(err)?);
    }
    Ok(())
}

/// A short axis label: `1e-5`, `0.25`, `90`, `2e6`.
fn tick(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-2..1e4).contains(&a) {
        return format!("{v:.0e}");
    }
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn draw_panels<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, panels: &[Panel]) -> Result<()> {
    root.fill(&WHITE).map_err(err)?;
    let areas = root.split_evenly((1, panels.len().max(1)));
    for (a, p) in areas.iter().zip(panels) {
        draw_panel(a, p)?;
    }
    root.present().map_err(err)
}

/// Writes `stem.svg` and `stem.png` with the panels side by side (atomically).
pub fn line_charts(stem: &Path, panels: &[Panel]) -> Result<()> {
    let (w, h) = (560 * panels.len().max(1) as u32, 420);
    render(stem, (w, h), |root| draw_panels(root, panels), |root| draw_panels(root, panels))
}

fn render(
    stem: &Path,
    (w, h): (u32, u32),
    svg: impl FnOnce(DrawingArea<SVGBackend<'_>, Shift>) -> Result<()>,
    png: impl FnOnce(DrawingArea<BitMapBackend<'_>, Shift>) -> Result<()>,
) -> Result<()> {
    register_font();
    let mut text = String::new();
    svg(SVGBackend::with_string(&mut text, (w, h)).into_drawing_area())?;
    resnet::io::atomic::write(&stem.with_extension("svg"), text.as_bytes())?;
    let mut buf = vec![255u8; (w * h * 3) as usize];
    png(BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area())?;
    let png_path = stem.with_extension("png");
    resnet::io::atomic::write_with(&png_path, |f| {
        use image::ImageEncoder;
        image::codecs::png::PngEncoder::new(f)
            .write_image(&buf, w, h, image::ExtendedColorType::Rgb8)
            .map_err(std::io::Error::other)
    })
}

fn draw_heatmap<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    m: &[Vec<u64>],
    labels: &[String],
) -> Result<()> {
    use plotters::coord::ranged1d::SegmentValue;
    use plotters::style::text_anchor::{HPos, Pos, VPos};
    root.fill(&WHITE).map_err(err)?;
    let n = m.len();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(50)
        .y_label_area_size(130)
        .build_cartesian_2d((0..n - 1).into_segmented(), (0..n - 1).into_segmented())
        .map_err(err)?;
    // Row 0 at the top: y = n - 1 - true class.
    // Rows carry the names, columns the class numbers (names would collide).
    let name = |v: &SegmentValue<usize>, row: bool| match v {
        SegmentValue::CenterOf(i) if *i < n && row => {
            let c = n - 1 - *i;
            format!("{} {c}", labels.get(c).map(String::as_str).unwrap_or(""))
        }
        SegmentValue::CenterOf(i) if *i < n => i.to_string(),
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc("predicted")
        .y_desc("true")
        .x_labels(n.min(40))
        .y_labels(n.min(40))
        .x_label_formatter(&|v| name(v, false))
        .y_label_formatter(&|v| name(v, true))
        .label_style(("sans-serif", 11))
        .draw()
        .map_err(err)?;
    for (t, row) in m.iter().enumerate() {
        let total = row.iter().sum::<u64>().max(1) as f64;
        for (p, &v) in row.iter().enumerate() {
            let f = v as f64 / total;
            let shade = (255.0 * (1.0 - f)) as u8;
            let y = n - 1 - t;
            let cell = [
                (SegmentValue::Exact(p), SegmentValue::Exact(y)),
                (SegmentValue::Exact(p + 1), SegmentValue::Exact(y + 1)),
            ];
            chart
                .draw_series(std::iter::once(Rectangle::new(cell, RGBColor(shade, shade, 255).filled())))
                .map_err(err)?;
            if n <= 20 && v > 0 {
                let color = if f > 0.5 { WHITE } else { BLACK };
                let style = TextStyle::from(("sans-serif", 11).into_font())
                    .color(&color)
                    .pos(Pos::new(HPos::Center, VPos::Center));
                let at = (SegmentValue::CenterOf(p), SegmentValue::CenterOf(y));
                chart.draw_series(std::iter::once(Text::new(v.to_string(), at, style))).map_err(err)?;
            }
        }
    }
    root.present().map_err(err)
}

/// Writes a confusion-matrix heat map (`stem.svg`, `stem.png`); rows are true
/// classes, shaded by the fraction of the row.
pub fn confusion_heatmap(stem: &Path, title: &str, m: &[Vec<u64>], labels: &[String]) -> Result<()> {
    if m.is_empty() {
        return Err(Error::Invalid("empty confusion matrix".into()));
    }
    let side = (260 + 36 * m.len().min(40)) as u32;
    render(stem, (side, side), |r| draw_heatmap(r, title, m, labels), |r| draw_heatmap(r, title, m, labels))
}

/// A small image for [`image_grid`]: 8-bit gray (`c = 1`) or RGB (`c = 3`), HWC.
pub struct Thumb<'a> {
    /// Width.
    pub w: usize,
    /// Height.
    pub h: usize,
    /// Channels.
    pub c: usize,
    /// Pixels.
    pub data: &'a [u8],
    /// Caption lines under the image.
    pub caption: Vec<String>,
    /// Caption colour: true for a correct prediction (green), false (red).
    pub ok: bool,
}

fn draw_grid<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    thumbs: &[Thumb<'_>],
    cols: usize,
    scale: usize,
    cell: (usize, usize),
) -> Result<()> {
    root.fill(&WHITE).map_err(err)?;
    for (k, t) in thumbs.iter().enumerate() {
        let (cx, cy) = ((k % cols) * cell.0 + 10, (k / cols) * cell.1 + 10);
        for y in 0..t.h {
            for x in 0..t.w {
                let p = &t.data[(y * t.w + x) * t.c..][..t.c];
                let color = if t.c == 1 { RGBColor(p[0], p[0], p[0]) } else { RGBColor(p[0], p[1], p[2]) };
                let (x0, y0) = ((cx + x * scale) as i32, (cy + y * scale) as i32);
                root.draw(&Rectangle::new([(x0, y0), (x0 + scale as i32, y0 + scale as i32)], color.filled()))
                    .map_err(err)?;
            }
        }
        let color = if t.ok { RGBColor(20, 120, 20) } else { RGBColor(200, 30, 30) };
        for (l, line) in t.caption.iter().enumerate() {
            let at = (cx as i32, (cy + t.h * scale + 4 + 15 * l) as i32);
            root.draw(&Text::new(line.clone(), at, ("sans-serif", 13).into_font().color(&color))).map_err(err)?;
        }
    }
    root.present().map_err(err)
}

/// Writes a grid of small images with captions (`stem.svg`, `stem.png`).
pub fn image_grid(stem: &Path, thumbs: &[Thumb<'_>], cols: usize) -> Result<()> {
    let cols = cols.max(1);
    let (w, h) = thumbs.iter().fold((1, 1), |(a, b), t| (a.max(t.w), b.max(t.h)));
    let scale = (112 / w.max(h)).max(1);
    let lines = thumbs.iter().map(|t| t.caption.len()).max().unwrap_or(0);
    let cell = ((w * scale + 60).max(150), h * scale + 20 + 15 * lines);
    let rows = thumbs.len().div_ceil(cols);
    let size = ((cols * cell.0 + 20) as u32, (rows * cell.1 + 20) as u32);
    render(stem, size, |r| draw_grid(r, thumbs, cols, scale, cell), |r| draw_grid(r, thumbs, cols, scale, cell))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_labels_are_short() {
        assert_eq!(tick(9.999999999999999e-5), "1e-4");
        assert_eq!(tick(1000000.0), "1e6");
        assert_eq!(tick(90.0), "90");
        assert_eq!(tick(0.25), "0.25");
        assert_eq!(tick(0.0), "0");
    }

    #[test]
    fn writes_nonempty_svg_and_png() {
        let dir = std::env::temp_dir().join(format!("resnet-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = Panel {
            title: "loss".into(),
            x_label: "iteration".into(),
            y_label: "loss".into(),
            log_y: true,
            series: vec![Series { name: "train".into(), points: vec![(0.0, 2.0), (10.0, 0.5)], color: 0, bold: false }],
        };
        line_charts(&dir.join("curves"), &[p.clone(), Panel { log_y: false, ..p }]).unwrap();
        let png = std::fs::read(dir.join("curves.png")).unwrap();
        let img = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!(img.width(), 1120);
        // Something other than white was drawn.
        assert!(img.pixels().filter(|p| p.0 != [255, 255, 255]).count() > 1000);
        assert!(std::fs::read_to_string(dir.join("curves.svg")).unwrap().contains("<svg"));
        confusion_heatmap(&dir.join("cm"), "confusion", &[vec![5, 1], vec![2, 7]], &["a".into(), "b".into()]).unwrap();
        assert!(std::fs::metadata(dir.join("cm.png")).unwrap().len() > 1000);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
