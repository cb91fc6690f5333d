//! The HTML of the report and the index: every text escaped, every picture a `data:` URI, the
//! layers of the map switched by CSS alone (no script).

use std::fmt::Write as _;
use std::path::Path;

use super::image::{base64, class_png, Quicklook, SceneSource};
use super::{
    write_err, ClassAreas, Features, IndexEntry, SceneReport, Section, CHIP_SIDE, QUICKLOOK_SIDE,
};
use crate::output::Result;
use crate::raster::GeoTransform;

/// `text` safe inside HTML text and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn hex(c: [u8; 3]) -> String {
    format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2])
}

const STYLE: &str = "
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0 auto;max-width:1100px;padding:1em 1.5em;color:#222;background:#fafafa}
h1{font-size:1.5em;margin:.2em 0}h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
h3{font-size:1em;margin:1em 0 .4em}
.sub{color:#666;font-size:.9em;word-break:break-all}
.map{position:relative;display:inline-block;line-height:0;max-width:100%;overflow:hidden;border:1px solid #bbb;background:#e6e6e6}
.map>img.base{max-width:100%;height:auto}
.map>img.classes{position:absolute;image-rendering:pixelated;opacity:.55}
.map>svg{position:absolute;left:0;top:0;width:100%;height:100%}
.map text{font-size:11px;paint-order:stroke;stroke:#fff;stroke-width:3px;font-family:sans-serif}
.maparea>label{margin-right:1.2em;font-size:.9em}.maparea>.map{display:block;width:fit-content;margin-top:.4em}
ul.legend{list-style:none;padding:0;margin:.3em 0;display:flex;flex-wrap:wrap;gap:.3em 1.2em}
ul.legend li{display:flex;align-items:center;gap:.4em;font-size:.9em}
.swatch{display:inline-block;width:1em;height:1em;border:1px solid #555}
table{border-collapse:collapse;font-size:.9em;margin:.3em 0}td,th{padding:.15em .6em;text-align:left;vertical-align:top;border-bottom:1px solid #e2e2e2}td{overflow-wrap:anywhere}th{white-space:nowrap}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.bars td.bar{width:22em}.bars .fill{height:.9em;border:1px solid #555;min-width:1px}
.gallery{display:flex;flex-wrap:wrap;gap:.8em}
.gallery figure{margin:0;width:170px;font-size:.8em}.gallery img{width:160px;height:auto;border:1px solid #bbb;image-rendering:auto}
.gallery figcaption{word-break:break-word}
.answer{background:#fff;border-left:4px solid #888;padding:.4em .8em;white-space:pre-wrap}
pre{background:#fff;border:1px solid #ddd;padding:.6em;overflow:auto;font-size:.85em}
.warn{color:#8a4b00}
.ok{color:#17692c}.failed{color:#b00020}.skipped{color:#666}
";

/// Quicklook pixel of map `(x, y)`.
fn to_px(g: &GeoTransform, (x, y): (f64, f64)) -> (f64, f64) {
    g.apply(x, y)
}

/// An SVG `points` list of a ring in quicklook pixels, dropping vertices under half a pixel
/// from the previous one.
fn points(g: &GeoTransform, ring: &[(f64, f64)]) -> String {
    let mut out = String::new();
    let mut last: Option<(f64, f64)> = None;
    for &p in ring {
        let (x, y) = to_px(g, p);
        if let Some((lx, ly)) = last {
            if (x - lx).abs() < 0.5 && (y - ly).abs() < 0.5 {
                continue;
            }
        }
        let _ = write!(out, "{x:.1},{y:.1} ");
        last = Some((x, y));
    }
    out.trim_end().to_string()
}

/// The map: quicklook, class rasters, features; with one checkbox per layer (CSS switches
/// the layer off: the checkboxes are siblings before the map).
fn map_html(
    report: &SceneReport<'_>,
    source: &SceneSource,
    page: &Path,
) -> Result<(String, Quicklook)> {
    let ql = source
        .quicklook(QUICKLOOK_SIDE)
        .map_err(|e| write_err(page, format!("quicklook of {}: {e}", report.scene)))?;
    let (qw, qh) = (ql.width as f64, ql.height as f64);
    let mut toggles = String::new();
    let mut rules = String::new();
    let mut layers = String::new();
    let mut svg = String::new();
    let mut toggle = |id: &str, label: String| {
        let _ = write!(
            toggles,
            "<input type=\"checkbox\" id=\"t-{id}\" checked><label for=\"t-{id}\">{}</label> ",
            escape(&label)
        );
        let _ = write!(rules, "#t-{id}:not(:checked)~.map .l-{id}{{display:none}}");
    };
    for (i, s) in report.sections.iter().enumerate() {
        if let Some(cm) = &s.class_map {
            let pic = class_png(&cm.raster, &cm.legend.colors, &cm.hidden, QUICKLOOK_SIDE)
                .map_err(|e| write_err(page, format!("{}: {e}", cm.raster.display())))?;
            let (gt, (w, h), png) = (pic.geotransform, pic.size, pic.png);
            let a = to_px(&ql.to_pixel, gt.apply(0.0, 0.0));
            let b = to_px(&ql.to_pixel, gt.apply(w as f64, h as f64));
            let (left, top) = (a.0.min(b.0), a.1.min(b.1));
            let (width, height) = ((a.0 - b.0).abs(), (a.1 - b.1).abs());
            let id = format!("c{i}");
            toggle(&id, format!("{} classes", s.name));
            let _ = write!(
                layers,
                "<img class=\"classes l-{id}\" alt=\"{} classes\" src=\"data:image/png;base64,{}\" style=\"left:{:.4}%;top:{:.4}%;width:{:.4}%;height:{:.4}%\">",
                escape(&s.name),
                base64(&png),
                100.0 * left / qw,
                100.0 * top / qh,
                100.0 * width / qw,
                100.0 * height / qh
            );
        }
        if let Some(f) = &s.features {
            let id = format!("f{i}");
            toggle(&id, format!("{} {}", s.name, f.kind));
            svg.push_str(&features_svg(&id, f, &ql.to_pixel));
        }
    }
    let mut html = String::new();
    if !rules.is_empty() {
        let _ = write!(html, "<style>{rules}</style>");
    }
    let _ = write!(html, "<div class=\"maparea\">");
    if !toggles.is_empty() {
        let _ = write!(html, "<span class=\"toggles\">Layers: </span>{toggles}");
    }
    let _ = write!(
        html,
        "<div class=\"map\"><img class=\"base\" alt=\"true-colour quicklook of {}\" width=\"{}\" height=\"{}\" src=\"data:image/jpeg;base64,{}\">{layers}<svg viewBox=\"0 0 {} {}\" preserveAspectRatio=\"none\" xmlns=\"http://www.w3.org/2000/svg\">{svg}</svg></div></div>",
        escape(&report.title),
        ql.width,
        ql.height,
        base64(&ql.jpeg),
        ql.width,
        ql.height
    );
    let stretch: Vec<String> = ql
        .stretch
        .iter()
        .map(|(lo, hi)| format!("{lo:.4}..{hi:.4}"))
        .collect();
    let bands: Vec<String> = source.bands().iter().map(ToString::to_string).collect();
    let _ = write!(
        html,
        "<p class=\"sub\">{} x {} px quicklook of the {} x {} px scene, bands {}, stretched 2-98 % per band ({}).</p>",
        ql.width,
        ql.height,
        source.width(),
        source.height(),
        bands.join(", "),
        escape(&stretch.join("; "))
    );
    Ok((html, ql))
}

fn features_svg(id: &str, f: &Features, g: &GeoTransform) -> String {
    let mut out = format!("<g class=\"l-{id}\" fill=\"none\" stroke-width=\"1.5\">");
    for item in &f.items {
        let color = hex(item.color);
        let title = match item.score {
            Some(s) => format!("{} {s:.2}", item.label),
            None => item.label.clone(),
        };
        let _ = write!(
            out,
            "<g stroke=\"{color}\"><title>{}</title>",
            escape(&title)
        );
        for ring in &item.rings {
            let pts = points(g, ring);
            if !pts.is_empty() {
                let _ = write!(out, "<polygon points=\"{pts}\"/>");
            }
        }
        out.push_str("</g>");
        if f.labelled && f.items.len() <= super::MAX_LABELLED {
            if let Some(ring) = item.rings.first() {
                let px: Vec<(f64, f64)> = ring.iter().map(|&p| to_px(g, p)).collect();
                let x = px.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
                let y = px.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
                if x.is_finite() && y.is_finite() {
                    let _ = write!(
                        out,
                        "<text x=\"{x:.1}\" y=\"{:.1}\" fill=\"{color}\" stroke=\"#fff\">{}</text>",
                        (y - 2.0).max(10.0),
                        escape(&title)
                    );
                }
            }
        }
    }
    out.push_str("</g>");
    out
}

fn gallery_html(s: &Section, source: &SceneSource, ql: &Quicklook, page: &Path) -> Result<String> {
    let mut out = String::new();
    if let Some(a) = &s.answer {
        let _ = write!(out, "<h3>Scene</h3><p class=\"answer\">{}</p>", escape(a));
    }
    if s.chips.is_empty() {
        return Ok(out);
    }
    let _ = write!(out, "<h3>Tiles</h3>");
    if s.chips_total > s.chips.len() {
        let _ = write!(
            out,
            "<p class=\"sub\">The first {} of {} tiles.</p>",
            s.chips.len(),
            s.chips_total
        );
    }
    out.push_str("<div class=\"gallery\">");
    for c in &s.chips {
        let jpeg = source
            .chip(ql, c.bounds, CHIP_SIDE)
            .map_err(|e| write_err(page, format!("chip {}: {e}", c.id)))?;
        let Some(jpeg) = jpeg else { continue };
        let _ = write!(
            out,
            "<figure><img alt=\"tile {}\" src=\"data:image/jpeg;base64,{}\"><figcaption><b>{}</b> {}</figcaption></figure>",
            escape(&c.id),
            base64(&jpeg),
            escape(&c.id),
            escape(&c.text)
        );
    }
    out.push_str("</div>");
    Ok(out)
}

fn legend_html(s: &Section) -> String {
    let (legend, hidden) = match (&s.class_map, &s.features) {
        (Some(cm), _) => (&cm.legend, cm.hidden.as_slice()),
        (
            None,
            Some(Features {
                legend: Some(l), ..
            }),
        ) => (l, &[][..]),
        _ => return String::new(),
    };
    let mut out = format!(
        "<h3>Legend</h3><ul class=\"legend\" data-layer=\"{}\">",
        escape(&s.name)
    );
    for (i, (name, c)) in legend.names.iter().zip(&legend.colors).enumerate() {
        let hidden = i <= 255 && hidden.contains(&(i as u8));
        let _ = write!(
            out,
            "<li data-class=\"{}\"><span class=\"swatch\" style=\"background:{}\"></span>{}{}</li>",
            escape(name),
            hex(*c),
            escape(name),
            if hidden { " (not drawn)" } else { "" }
        );
    }
    out.push_str("</ul>");
    out
}

fn areas_html(a: &ClassAreas) -> String {
    let unit = if a.geodesic { "m²" } else { "px²" };
    let mut out = format!(
        "<h3>Class areas</h3><table class=\"bars\"><tr><th>class</th><th class=\"num\">{unit}</th><th class=\"num\">%</th><th>of {}</th></tr>",
        escape(&a.basis)
    );
    for r in &a.rows {
        let pct = if a.total_m2 > 0.0 {
            100.0 * r.m2 / a.total_m2
        } else {
            0.0
        };
        let _ = write!(
            out,
            "<tr data-class=\"{}\"><td>{}</td><td class=\"num\">{:.1}</td><td class=\"num\">{:.2}</td><td class=\"bar\"><div class=\"fill\" style=\"width:{:.2}%;background:{}\"></div></td></tr>",
            escape(&r.name),
            escape(&r.name),
            r.m2,
            pct,
            pct.clamp(0.0, 100.0),
            hex(r.color)
        );
    }
    let _ = write!(
        out,
        "</table><p class=\"sub\">{} {:.1} {unit}; {}.</p>",
        escape(&a.basis),
        a.total_m2,
        if a.geodesic {
            "areas are geodesic, on the CRS's ellipsoid"
        } else {
            "the scene has no CRS: areas in square pixels"
        }
    );
    out
}

fn table(rows: &[(String, String)]) -> String {
    let mut out = String::from("<table>");
    for (k, v) in rows {
        let _ = write!(out, "<tr><th>{}</th><td>{}</td></tr>", escape(k), escape(v));
    }
    out.push_str("</table>");
    out
}

fn timings_html(t: &[(String, f64)]) -> String {
    let mut out = String::from("<h3>Timings</h3><table>");
    for (k, v) in t {
        let _ = write!(
            out,
            "<tr><th>{}</th><td class=\"num\">{v:.2} s</td></tr>",
            escape(k)
        );
    }
    out.push_str("</table>");
    out
}

fn section_html(s: &Section, gallery: &str) -> String {
    // A stage named after its task (single commands, `name = "classify"`) shows the name once.
    let sub = if s.name == s.task {
        String::new()
    } else {
        format!(" <span class=\"sub\">{}</span>", escape(&s.task))
    };
    let mut out = format!(
        "<section class=\"stage\" data-name=\"{}\" data-task=\"{}\"><h2>{}{sub}</h2>",
        escape(&s.name),
        escape(&s.task),
        escape(&s.name),
    );
    let m = &s.model;
    let mut model = vec![("package".to_string(), m.path.clone())];
    for (k, v) in [
        ("name", &m.name),
        ("family", &m.family),
        ("precision", &m.precision),
        ("provider", &m.provider),
    ] {
        if !v.is_empty() {
            model.push((k.to_string(), v.clone()));
        }
    }
    out.push_str("<h3>Model</h3>");
    out.push_str(&table(&model));
    if m.trained == Some(false) {
        out.push_str("<p class=\"warn\">The package says its weights are untrained (a test model): its answers are meaningless.</p>");
    }
    out.push_str(&legend_html(s));
    if let Some(a) = &s.areas {
        out.push_str(&areas_html(a));
    }
    if let Some(f) = &s.features {
        let _ = write!(
            out,
            "<h3>{}</h3><p>{} {}{}.</p>",
            escape(&capitalise(&f.kind)),
            f.total,
            escape(&f.kind),
            if f.total > f.items.len() {
                format!(", the first {} drawn", f.items.len())
            } else {
                String::new()
            }
        );
    }
    out.push_str(gallery);
    if !s.facts.is_empty() {
        out.push_str("<h3>Run</h3>");
        out.push_str(&table(&s.facts));
    }
    if !s.timings.is_empty() {
        out.push_str(&timings_html(&s.timings));
    }
    out.push_str("</section>");
    out
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

fn head(title: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><meta name=\"generator\" content=\"tessera {}\"><title>{}</title><style>{STYLE}</style></head><body>",
        env!("CARGO_PKG_VERSION"),
        escape(title)
    )
}

/// The whole page of a scene.
pub(super) fn scene_page(report: &SceneReport<'_>, page: &Path) -> Result<String> {
    let bands = report
        .sections
        .iter()
        .find(|s| !s.bands.is_empty())
        .map(|s| s.bands.clone())
        .unwrap_or_default();
    let source = SceneSource::open(&report.scene, &report.open, &bands)
        .map_err(|e| write_err(page, format!("report quicklook: {e}")))?;
    let (map, ql) = map_html(report, &source, page)?;
    let mut out = head(&format!("tessera report: {}", report.title));
    let _ = write!(
        out,
        "<header><h1>{}</h1><p class=\"sub\">{}</p></header><main>{map}",
        escape(&report.title),
        escape(&report.scene)
    );
    for s in report.sections {
        let gallery = gallery_html(s, &source, &ql, page)?;
        out.push_str(&section_html(s, &gallery));
    }
    out.push_str("<section id=\"provenance\"><h2>Provenance</h2>");
    let mut prov = vec![("input".to_string(), report.scene.clone())];
    prov.extend(report.provenance.iter().cloned());
    out.push_str(&table(&prov));
    if let Some(text) = &report.pipeline_text {
        let _ = write!(out, "<h3>Pipeline file</h3><pre>{}</pre>", escape(text));
    }
    out.push_str("</section></main></body></html>\n");
    Ok(out)
}

/// The index of a batch.
pub(super) fn index_page(title: &str, entries: &[IndexEntry]) -> String {
    let mut out = head(&format!("tessera: {title}"));
    let count = |s: &str| entries.iter().filter(|e| e.status == s).count();
    let _ = write!(
        out,
        "<header><h1>{}</h1><p class=\"sub\">{} scenes: {} ok, {} skipped, {} failed</p></header><main><table id=\"scenes\"><tr><th>scene</th><th>status</th><th class=\"num\">seconds</th><th>input</th><th>error</th></tr>",
        escape(title),
        entries.len(),
        count("ok"),
        count("skipped"),
        count("failed")
    );
    for e in entries {
        let name = match &e.report {
            Some(href) => format!(
                "<a href=\"{}\">{}</a>",
                escape(&href_path(href)),
                escape(&e.name)
            ),
            None => escape(&e.name),
        };
        let _ = write!(
            out,
            "<tr data-status=\"{}\"><td>{name}</td><td class=\"{}\">{}</td><td class=\"num\">{:.1}</td><td class=\"sub\">{}</td><td>{}</td></tr>",
            escape(&e.status),
            escape(&e.status),
            escape(&e.status),
            e.seconds,
            escape(&e.input),
            escape(e.error.as_deref().unwrap_or(""))
        );
    }
    out.push_str("</table></main></body></html>\n");
    out
}

/// A relative path as a URL path: each segment percent-encoded where needed.
fn href_path(path: &str) -> String {
    let mut out = String::new();
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_for_html() {
        assert_eq!(
            escape("<b a=\"x\">Tom & 'Jerry'</b>"),
            "&lt;b a=&quot;x&quot;&gt;Tom &amp; &#39;Jerry&#39;&lt;/b&gt;"
        );
    }

    #[test]
    fn links_are_percent_encoded() {
        assert_eq!(href_path("a b/report.html"), "a%20b/report.html");
        assert_eq!(href_path("é#?/x"), "%C3%A9%23%3F/x");
    }
}
