//! `report.html`: one self-contained page per scene that a GIS analyst can open offline (every
//! image a `data:` URI, no external CSS, scripts or fonts), and `index.html` over a batch.
//!
//! Data flows one way: a job describes what it found as a [`Section`] (the class raster it
//! wrote and its legend, class areas, boxes and polygons, chips and their captions, the model,
//! facts and timings); it carries no HTML. [`write_report`] reads the scene (a true-colour
//! quicklook through GDAL overviews, never more than [`QUICKLOOK_SIDE`] pixels a side) and the
//! class rasters the sections name (decimated reads), and renders the page ([`html`]).
//! Everything is written under a temporary name and renamed.

mod html;
mod image;

use std::path::{Path, PathBuf};

use super::{Legend, OutputError, Result};
use crate::raster::OpenOptions;

pub use html::escape;

/// The file name of a scene's report.
pub const REPORT_FILE: &str = "report.html";
/// The file name of a batch's index.
pub const INDEX_FILE: &str = "index.html";
/// The quicklook's longest side, in pixels.
pub const QUICKLOOK_SIDE: usize = 1024;
/// A gallery chip's longest side, in pixels.
pub const CHIP_SIDE: usize = 160;
/// Chips shown at most (the rest are counted).
pub const MAX_CHIPS: usize = 60;
/// Features drawn at most (the rest are counted).
pub const MAX_FEATURES: usize = 2000;
/// Features labelled on the map at most: beyond, labels are tooltips only.
pub const MAX_LABELLED: usize = 150;

/// The model a section ran.
#[derive(Clone, Debug, Default)]
pub struct ModelInfo {
    /// The package (or ONNX file) path.
    pub path: String,
    /// The manifest's name, family and precision (empty when not a package).
    pub name: String,
    pub family: String,
    pub precision: String,
    /// `Some(false)`: the manifest says the weights are untrained (tiny test models).
    pub trained: Option<bool>,
    /// The execution provider it ran on.
    pub provider: String,
}

/// A class raster written by the job, drawn over the quicklook with its legend.
#[derive(Clone, Debug)]
pub struct ClassMap {
    /// The raster (single band, class values indexing the legend).
    pub raster: PathBuf,
    pub legend: Legend,
    /// Class values listed in the legend but not drawn (a background class).
    pub hidden: Vec<u8>,
}

/// One class's area.
#[derive(Clone, Debug)]
pub struct ClassArea {
    pub name: String,
    pub color: [u8; 3],
    pub m2: f64,
}

/// Class areas, drawn as a bar chart.
#[derive(Clone, Debug)]
pub struct ClassAreas {
    pub rows: Vec<ClassArea>,
    /// The area the percentages are of, in m².
    pub total_m2: f64,
    /// What `total_m2` is ("the scene", "the classified tiles").
    pub basis: String,
    /// Geodesic (square metres on the ellipsoid) or planar (no CRS: square pixels).
    pub geodesic: bool,
}

/// A box or polygon drawn over the quicklook, in the scene's CRS.
#[derive(Clone, Debug)]
pub struct Feature {
    /// Rings (exterior first), map coordinates.
    pub rings: Vec<Vec<(f64, f64)>>,
    pub label: String,
    pub score: Option<f32>,
    pub color: [u8; 3],
}

/// A section's boxes or polygons.
#[derive(Clone, Debug, Default)]
pub struct Features {
    /// "detections", "polygons", "instances".
    pub kind: String,
    /// At most [`MAX_FEATURES`], best first where there is an order.
    pub items: Vec<Feature>,
    /// How many the layer holds.
    pub total: usize,
    /// Draw the labels next to the shapes (a few boxes: yes; many polygons: no; every shape
    /// has its label as a tooltip either way).
    pub labelled: bool,
    /// The classes and colours of the shapes, listed under the map when the section has no
    /// class map.
    pub legend: Option<Legend>,
}

impl Features {
    /// Keep a feature unless [`MAX_FEATURES`] are kept already (it is still counted).
    pub fn push(&mut self, f: Feature) {
        self.total += 1;
        if self.items.len() < MAX_FEATURES {
            self.items.push(f);
        }
    }
}

/// A tile with the model's text for it.
#[derive(Clone, Debug)]
pub struct Chip {
    pub id: String,
    /// Bounds in map coordinates: (min x, min y, max x, max y).
    pub bounds: (f64, f64, f64, f64),
    pub text: String,
}

/// What one job (a command, or a stage of a pipeline) contributes to its scene's report.
#[derive(Clone, Debug, Default)]
pub struct Section {
    /// The stage name (batch runs) or the task.
    pub name: String,
    pub task: String,
    pub model: ModelInfo,
    /// Bands of the scene the job read (1-based), used for the quicklook.
    pub bands: Vec<usize>,
    pub class_map: Option<ClassMap>,
    pub areas: Option<ClassAreas>,
    pub features: Option<Features>,
    /// The model's answer for the whole scene (a scene caption).
    pub answer: Option<String>,
    pub chips: Vec<Chip>,
    /// Chips the job had beyond those kept.
    pub chips_total: usize,
    /// Counts and settings worth a line (tiles, tile size, labels, thresholds...).
    pub facts: Vec<(String, String)>,
    /// Wall seconds of the job's phases.
    pub timings: Vec<(String, f64)>,
}

impl Section {
    /// Keep a chip unless [`MAX_CHIPS`] are kept already (it is still counted).
    pub fn push_chip(&mut self, chip: Chip) {
        self.chips_total += 1;
        if self.chips.len() < MAX_CHIPS {
            self.chips.push(chip);
        }
    }

    /// Add a fact.
    pub fn fact(&mut self, key: &str, value: impl std::fmt::Display) {
        self.facts.push((key.to_string(), value.to_string()));
    }

    /// Add a timing.
    pub fn timing(&mut self, phase: &str, seconds: f64) {
        self.timings.push((phase.to_string(), seconds));
    }
}

/// Everything a scene's report shows.
#[derive(Clone, Debug)]
pub struct SceneReport<'a> {
    /// The page title (the scene's name).
    pub title: String,
    /// The scene as given, and how it is opened.
    pub scene: String,
    pub open: OpenOptions,
    pub sections: &'a [Section],
    /// Provenance lines (command, pipeline, versions), in order.
    pub provenance: Vec<(String, String)>,
    /// The pipeline file's text, shown verbatim (batch runs).
    pub pipeline_text: Option<String>,
}

impl SceneReport<'_> {
    /// Provenance every report has: tessera's and GDAL's versions, the command line.
    pub fn default_provenance() -> Vec<(String, String)> {
        let args: Vec<String> = std::env::args().collect();
        vec![
            (
                "tessera".into(),
                format!("{} ({})", env!("CARGO_PKG_VERSION"), std::env::consts::ARCH),
            ),
            ("GDAL".into(), gdal::version::version_info("RELEASE_NAME")),
            ("command".into(), shell_words(&args)),
            ("written".into(), crate::batch::record::rfc3339(now())),
        ]
    }
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Arguments as a shell would take them back (quoted where needed).
fn shell_words(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@+%".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn write_err(path: &Path, reason: impl std::fmt::Display) -> OutputError {
    OutputError::Write {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Write `bytes` to `path` under a temporary name in the same folder, then rename it.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .map_or_else(|| "report".into(), |n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(
        "{}{name}.{}",
        super::atomic::TEMP_PREFIX,
        std::process::id()
    ));
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            write_err(path, e)
        })
}

/// Render `report` and write it as `dir/report.html`; returns its path.
///
/// # Errors
/// The scene or a class raster cannot be read, or the page cannot be written.
pub fn write_report(dir: &Path, report: &SceneReport<'_>) -> Result<PathBuf> {
    let path = dir.join(REPORT_FILE);
    let page = html::scene_page(report, &path)?;
    write_atomic(&path, page.as_bytes())?;
    Ok(path)
}

/// A scene of a batch, as the index lists it.
#[derive(Clone, Debug)]
pub struct IndexEntry {
    pub name: String,
    pub input: String,
    /// "ok", "failed" or "skipped".
    pub status: String,
    pub error: Option<String>,
    /// The scene's report relative to the index's folder, when there is one.
    pub report: Option<String>,
    pub seconds: f64,
}

/// Write the index `path` (`index.html` in the batch's output folder) linking each scene's
/// report (relative to the index's folder) with its status.
///
/// # Errors
/// The page cannot be written.
pub fn write_index(path: &Path, title: &str, entries: &[IndexEntry]) -> Result<()> {
    write_atomic(path, html::index_page(title, entries).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_are_quoted_like_a_shell() {
        let args: Vec<String> = ["tessera", "classify", "a b.tif", "--labels", "it's,x"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            shell_words(&args),
            "tessera classify 'a b.tif' --labels 'it'\\''s,x'"
        );
    }

    #[test]
    fn features_and_chips_beyond_the_limits_are_counted_not_kept() {
        let mut f = Features::default();
        let mut s = Section::default();
        for i in 0..MAX_FEATURES + 5 {
            f.push(Feature {
                rings: vec![],
                label: i.to_string(),
                score: None,
                color: [0, 0, 0],
            });
        }
        for i in 0..MAX_CHIPS + 3 {
            s.push_chip(Chip {
                id: i.to_string(),
                bounds: (0.0, 0.0, 1.0, 1.0),
                text: String::new(),
            });
        }
        assert_eq!((f.items.len(), f.total), (MAX_FEATURES, MAX_FEATURES + 5));
        assert_eq!((s.chips.len(), s.chips_total), (MAX_CHIPS, MAX_CHIPS + 3));
    }
}
