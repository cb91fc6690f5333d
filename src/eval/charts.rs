//! The charts of an evaluation, as PNG: accuracy (the task's headline metric) against
//! tiles/s with one point per model, a confusion matrix per model (rows: truth, columns:
//! prediction, shaded by the row's fraction, counts written in the cells), and
//! precision-recall curves per model where the task gives them (detection). Drawn with
//! `embedded-graphics` (its built-in bitmap fonts: no system font at run time) and
//! encoded with `png`.

use std::path::Path;

use embedded_graphics::mono_font::ascii::{FONT_6X10, FONT_7X13_BOLD};
use embedded_graphics::mono_font::MonoTextStyle;
use embedded_graphics::pixelcolor::Rgb888;
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::{Circle, Line, PrimitiveStyle, Rectangle};
use embedded_graphics::text::{Alignment, Baseline, Text, TextStyleBuilder};

use super::record::ModelRecord;
use super::registry::{Confusion, PrCurve, Scored};
use super::EvalError;

/// An RGB image being drawn.
pub struct Canvas {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

impl Canvas {
    pub fn new(width: u32, height: u32) -> Canvas {
        Canvas {
            width,
            height,
            pixels: vec![255; (width * height * 3) as usize],
        }
    }

    /// The colour at `(x, y)`.
    pub fn get(&self, x: u32, y: u32) -> [u8; 3] {
        let i = ((y * self.width + x) * 3) as usize;
        [self.pixels[i], self.pixels[i + 1], self.pixels[i + 2]]
    }

    /// Encode as PNG into `path`.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn write_png(&self, path: &Path) -> Result<(), EvalError> {
        let err = |e: String| {
            EvalError::Output(crate::output::OutputError::Write {
                path: path.display().to_string(),
                reason: e,
            })
        };
        let file = std::fs::File::create(path).map_err(|e| EvalError::io(path, e))?;
        let mut enc = png::Encoder::new(std::io::BufWriter::new(file), self.width, self.height);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().map_err(|e| err(e.to_string()))?;
        w.write_image_data(&self.pixels)
            .map_err(|e| err(e.to_string()))?;
        w.finish().map_err(|e| err(e.to_string()))
    }
}

impl OriginDimensions for Canvas {
    fn size(&self) -> Size {
        Size::new(self.width, self.height)
    }
}

impl DrawTarget for Canvas {
    type Color = Rgb888;
    type Error = std::convert::Infallible;

    fn draw_iter<I>(&mut self, pixels: I) -> Result<(), Self::Error>
    where
        I: IntoIterator<Item = Pixel<Self::Color>>,
    {
        for Pixel(p, c) in pixels {
            if p.x >= 0 && p.y >= 0 && (p.x as u32) < self.width && (p.y as u32) < self.height {
                let i = ((p.y as u32 * self.width + p.x as u32) * 3) as usize;
                self.pixels[i] = c.r();
                self.pixels[i + 1] = c.g();
                self.pixels[i + 2] = c.b();
            }
        }
        Ok(())
    }
}

const BLACK: Rgb888 = Rgb888::BLACK;
const GREY: Rgb888 = Rgb888::new(200, 200, 200);

/// Distinct colours for models and classes (Tableau 10).
pub const PALETTE: [Rgb888; 10] = [
    Rgb888::new(31, 119, 180),
    Rgb888::new(255, 127, 14),
    Rgb888::new(44, 160, 44),
    Rgb888::new(214, 39, 40),
    Rgb888::new(148, 103, 189),
    Rgb888::new(140, 86, 75),
    Rgb888::new(227, 119, 194),
    Rgb888::new(127, 127, 127),
    Rgb888::new(188, 189, 34),
    Rgb888::new(23, 190, 207),
];

fn text(c: &mut Canvas, s: &str, x: i32, y: i32, align: Alignment, bold: bool) {
    let font = if bold { &FONT_7X13_BOLD } else { &FONT_6X10 };
    let style = MonoTextStyle::new(font, BLACK);
    let ts = TextStyleBuilder::new()
        .alignment(align)
        .baseline(Baseline::Top)
        .build();
    let _ = Text::with_text_style(s, Point::new(x, y), style, ts).draw(c);
}

fn line(c: &mut Canvas, a: (i32, i32), b: (i32, i32), color: Rgb888, width: u32) {
    let _ = Line::new(Point::new(a.0, a.1), Point::new(b.0, b.1))
        .into_styled(PrimitiveStyle::with_stroke(color, width))
        .draw(c);
}

fn rect(c: &mut Canvas, x: i32, y: i32, w: u32, h: u32, fill: Rgb888) {
    let _ = Rectangle::new(Point::new(x, y), Size::new(w, h))
        .into_styled(PrimitiveStyle::with_fill(fill))
        .draw(c);
}

/// Up to `n` characters of `s` (with `~` when cut).
fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('~');
        t
    }
}

/// A "nice" axis maximum at or above `v` (1, 2, 2.5, 5 times a power of ten).
pub fn nice_max(v: f64) -> f64 {
    if v.is_nan() || v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * p >= v * (1.0 - 1e-12) {
            return m * p;
        }
    }
    10.0 * p
}

fn tick(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The plot area of the x-y charts: left, top, width, height.
const PLOT: (i32, i32, i32, i32) = (70, 40, 460, 300);

/// Axes with 5 ticks each over `[0, xmax] x [0, ymax]`; returns the mapping to pixels.
fn axes(
    c: &mut Canvas,
    title: &str,
    xlabel: &str,
    ylabel: &str,
    xmax: f64,
    ymax: f64,
) -> impl Fn(f64, f64) -> (i32, i32) {
    let (l, t, w, h) = PLOT;
    text(c, title, l + w / 2, 10, Alignment::Center, true);
    for i in 0..=5 {
        let fx = f64::from(i) / 5.0;
        let x = l + (fx * f64::from(w)) as i32;
        let y = t + h - (fx * f64::from(h)) as i32;
        line(c, (x, t), (x, t + h), GREY, 1);
        line(c, (l, y), (l + w, y), GREY, 1);
        text(c, &tick(fx * xmax), x, t + h + 6, Alignment::Center, false);
        text(c, &tick(fx * ymax), l - 6, y - 5, Alignment::Right, false);
    }
    line(c, (l, t + h), (l + w, t + h), BLACK, 1);
    line(c, (l, t), (l, t + h), BLACK, 1);
    text(c, xlabel, l + w / 2, t + h + 22, Alignment::Center, false);
    text(c, ylabel, 8, t - 16, Alignment::Left, false);
    move |x: f64, y: f64| {
        (
            l + ((x / xmax).clamp(0.0, 1.0) * f64::from(w)).round() as i32,
            t + h - ((y / ymax).clamp(0.0, 1.0) * f64::from(h)).round() as i32,
        )
    }
}

/// Legend lines to the right of the plot: a colour swatch and a name each.
fn legend(c: &mut Canvas, names: &[String]) {
    let x = PLOT.0 + PLOT.2 + 16;
    for (i, n) in names.iter().enumerate() {
        let y = PLOT.1 + 14 * i as i32;
        rect(c, x, y + 1, 9, 9, PALETTE[i % PALETTE.len()]);
        text(c, &clip(n, 34), x + 14, y, Alignment::Left, false);
    }
}

/// The headline metric of each model against its tiles/s: one coloured point per model.
pub fn accuracy_vs_speed(records: &[ModelRecord]) -> Canvas {
    let mut c = Canvas::new(780, 380);
    let metric = records.first().map_or("accuracy", |r| r.headline);
    let xmax = nice_max(
        records
            .iter()
            .map(|r| r.tiles_per_second)
            .fold(0.0, f64::max)
            * 1.05,
    );
    let ymax_data = records
        .iter()
        .filter_map(ModelRecord::headline_value)
        .fold(0.0, f64::max);
    let ymax = if ymax_data <= 1.0 {
        1.0
    } else {
        nice_max(ymax_data * 1.05)
    };
    let map = axes(
        &mut c,
        &format!("{metric} vs tiles/s"),
        "tiles per second",
        metric,
        xmax,
        ymax,
    );
    for (i, r) in records.iter().enumerate() {
        if let Some(y) = r.headline_value() {
            let (px, py) = map(r.tiles_per_second, y);
            let _ = Circle::with_center(Point::new(px, py), 11)
                .into_styled(PrimitiveStyle::with_fill(PALETTE[i % PALETTE.len()]))
                .draw(&mut c);
            text(
                &mut c,
                &(i + 1).to_string(),
                px + 8,
                py - 12,
                Alignment::Left,
                false,
            );
        }
    }
    let names: Vec<String> = records
        .iter()
        .enumerate()
        .map(|(i, r)| match &r.precision {
            Some(p) => format!("{} {} ({p})", i + 1, r.model),
            None => format!("{} {}", i + 1, r.model),
        })
        .collect();
    legend(&mut c, &names);
    c
}

/// Cell side and origin of a confusion matrix of `k` classes.
pub fn confusion_layout(k: usize) -> (i32, i32, i32) {
    let cell = (480 / k.max(1) as i32).clamp(6, 48);
    (cell, 140, 60)
}

/// The shade of a cell holding `frac` of its row: white to dark blue.
pub fn shade(frac: f64) -> Rgb888 {
    let f = frac.clamp(0.0, 1.0);
    let mix = |a: f64, b: f64| (a + (b - a) * f).round() as u8;
    Rgb888::new(mix(247.0, 8.0), mix(251.0, 48.0), mix(255.0, 107.0))
}

/// A confusion matrix: rows truth, columns prediction.
pub fn confusion_matrix(title: &str, m: &Confusion) -> Canvas {
    let k = m.classes.len();
    let (cell, left, top) = confusion_layout(k);
    let side = cell * k as i32;
    let width = (left + side + 30).max(420) as u32;
    let height = (top + side + 40) as u32;
    let mut c = Canvas::new(width, height);
    text(
        &mut c,
        &clip(title, 60),
        width as i32 / 2,
        8,
        Alignment::Center,
        true,
    );
    text(
        &mut c,
        "truth (rows) / predicted (columns)",
        width as i32 / 2,
        26,
        Alignment::Center,
        false,
    );
    for (t, row) in m.counts.iter().enumerate() {
        let total: u64 = row.iter().sum();
        for (p, &n) in row.iter().enumerate() {
            let frac = if total > 0 {
                n as f64 / total as f64
            } else {
                0.0
            };
            let x = left + p as i32 * cell;
            let y = top + t as i32 * cell;
            rect(&mut c, x, y, cell as u32, cell as u32, shade(frac));
            let s = n.to_string();
            if cell >= 6 * s.len() as i32 + 4 && cell >= 14 {
                let color = if frac > 0.5 { Rgb888::WHITE } else { BLACK };
                let style = MonoTextStyle::new(&FONT_6X10, color);
                let ts = TextStyleBuilder::new()
                    .alignment(Alignment::Center)
                    .baseline(Baseline::Middle)
                    .build();
                let _ =
                    Text::with_text_style(&s, Point::new(x + cell / 2, y + cell / 2), style, ts)
                        .draw(&mut c);
            }
        }
        if cell >= 10 {
            let name = clip(&m.classes[t], ((left - 8) / 6) as usize);
            text(
                &mut c,
                &name,
                left - 4,
                top + t as i32 * cell + cell / 2 - 5,
                Alignment::Right,
                false,
            );
        }
    }
    // Column names: numbered under the matrix (the rows' names give the numbers' classes).
    if cell >= 14 {
        for p in 0..k {
            text(
                &mut c,
                &(p + 1).to_string(),
                left + p as i32 * cell + cell / 2,
                top + side + 4,
                Alignment::Center,
                false,
            );
        }
        for t in 0..k {
            text(
                &mut c,
                &(t + 1).to_string(),
                left + side + 4,
                top + t as i32 * cell + cell / 2 - 5,
                Alignment::Left,
                false,
            );
        }
    }
    let _ = Rectangle::new(Point::new(left, top), Size::new(side as u32, side as u32))
        .into_styled(PrimitiveStyle::with_stroke(BLACK, 1))
        .draw(&mut c);
    c
}

/// Precision-recall curves, one colour per class.
pub fn pr_curves(title: &str, curves: &[PrCurve]) -> Canvas {
    let mut c = Canvas::new(780, 380);
    let map = axes(&mut c, title, "recall", "precision", 1.0, 1.0);
    for (i, curve) in curves.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let pts: Vec<(i32, i32)> = curve
            .recall
            .iter()
            .zip(&curve.precision)
            .map(|(&r, &p)| map(r, p))
            .collect();
        for w in pts.windows(2) {
            line(&mut c, w[0], w[1], color, 2);
        }
        if let [only] = pts.as_slice() {
            let _ = Circle::with_center(Point::new(only.0, only.1), 5)
                .into_styled(PrimitiveStyle::with_fill(color))
                .draw(&mut c);
        }
    }
    let names: Vec<String> = curves.iter().map(|c| c.class.clone()).collect();
    legend(&mut c, &names);
    c
}

/// Write every chart of the evaluation into `dir`; returns their names.
///
/// # Errors
/// A chart cannot be written.
pub fn write_charts(
    records: &[ModelRecord],
    scores: &[Scored],
    dir: &Path,
) -> Result<Vec<String>, EvalError> {
    let mut names = Vec::new();
    if records.iter().any(|r| r.headline_value().is_some()) {
        let name = "accuracy_vs_speed.png".to_string();
        accuracy_vs_speed(records).write_png(&dir.join(&name))?;
        names.push(name);
    }
    for (i, (r, s)) in records.iter().zip(scores).enumerate() {
        if let Some(m) = &s.confusion {
            let name = format!("confusion_{}.png", i + 1);
            confusion_matrix(&format!("{} {}", i + 1, r.model), m).write_png(&dir.join(&name))?;
            names.push(name);
        }
        if !s.curves.is_empty() {
            let name = format!("pr_curves_{}.png", i + 1);
            pr_curves(
                &format!("{} {}: precision-recall", i + 1, r.model),
                &s.curves,
            )
            .write_png(&dir.join(&name))?;
            names.push(name);
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confusion_cells_are_shaded_by_their_row_fraction() {
        let m = Confusion {
            classes: vec!["a".into(), "b".into(), "c".into()],
            counts: vec![vec![4, 0, 0], vec![1, 3, 0], vec![0, 2, 2]],
        };
        let c = confusion_matrix("t", &m);
        let (cell, left, top) = confusion_layout(3);
        // A corner of each cell (away from the count text).
        let at = |t: i32, p: i32| c.get((left + p * cell + 2) as u32, (top + t * cell + 2) as u32);
        let rgb = |s: Rgb888| [s.r(), s.g(), s.b()];
        assert_eq!(at(0, 0), rgb(shade(1.0)));
        assert_eq!(at(0, 1), rgb(shade(0.0)));
        assert_eq!(at(1, 0), rgb(shade(0.25)));
        assert_eq!(at(1, 1), rgb(shade(0.75)));
        assert_eq!(at(2, 2), rgb(shade(0.5)));
        assert_ne!(shade(0.25), shade(0.75));
    }

    #[test]
    fn axis_maxima_are_round() {
        assert_eq!(nice_max(0.83), 1.0);
        assert_eq!(nice_max(13.0), 20.0);
        assert_eq!(nice_max(230.0), 250.0);
        assert_eq!(nice_max(0.0), 1.0);
    }
}
