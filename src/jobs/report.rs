//! What every scene run reports, and the reports of the model commands as one type.

use std::path::Path;

use serde::Serialize;

use super::{CaptionReport, ClassifyReport, DetectReport, PipelineError, SegmentReport};
use crate::output::report::{ClassAreas, ModelInfo, SceneReport, Section};
use crate::output::{LayerArea, Legend};

/// The part every model command's report shares, flattened into it: the JSON keys are the
/// report's own (`"scene"`, `"outputs"`, ...). The reports dereference to it, so
/// `report.provider` reads as before.
#[derive(Clone, Debug, Serialize)]
pub struct SceneRunReport {
    pub scene: String,
    /// The model package's path.
    pub model: String,
    /// The execution provider the model ran on.
    pub provider: String,
    /// Why it is not the one asked for, when it fell back.
    pub fallback: Option<String>,
    pub tiles_total: usize,
    pub tiles_skipped: usize,
    /// Every file written, named where it is once the run is committed.
    pub outputs: Vec<String>,
    pub peak_rss_bytes: Option<u64>,
    /// What the run contributes to its scene's report.html (not in the JSON report).
    #[serde(skip)]
    pub section: Option<Section>,
}

impl SceneRunReport {
    /// The shared part of a finished run of `base`: the model ran on `provider` (with the
    /// fallback reason, if it fell back), the stream's counts, the files written.
    pub fn new(
        base: &crate::options::SceneJobBase,
        (provider, fallback): (&str, Option<&str>),
        stats: &crate::tiling::StreamStats,
        outputs: Vec<String>,
    ) -> SceneRunReport {
        SceneRunReport {
            scene: base.scene.clone(),
            model: base.model.display().to_string(),
            provider: provider.to_string(),
            fallback: fallback.map(str::to_string),
            tiles_total: stats.tiles_total,
            tiles_skipped: stats.tiles_skipped,
            outputs,
            peak_rss_bytes: super::peak_rss_bytes(),
            section: None,
        }
    }

    /// Outputs under `from` named under `to` instead (a batch run writes into a temporary
    /// folder and then renames it into place).
    pub fn rebase(&mut self, from: &Path, to: &Path) {
        for o in &mut self.outputs {
            if let Ok(rest) = Path::new(o.as_str()).strip_prefix(from) {
                *o = to.join(rest).display().to_string();
            }
        }
    }
}

/// The start of a job's report section: its task, the model at `model` (its manifest's name,
/// family and precision when it is a package) on `provider`, the scene bands it read.
pub(crate) fn section(task: &str, base: &crate::options::SceneJobBase, provider: &str) -> Section {
    let package = crate::models::ModelPackage::load(&base.model).ok();
    let m = package.as_ref().map(|p| &p.manifest);
    Section {
        name: task.to_string(),
        task: task.to_string(),
        model: ModelInfo {
            path: base.model.display().to_string(),
            name: m.map(|m| m.name.clone()).unwrap_or_default(),
            family: m.map(|m| m.family.clone()).unwrap_or_default(),
            precision: m
                .map(|m| m.precision.as_str().to_string())
                .unwrap_or_default(),
            trained: m.map(|m| m.trained),
            provider: provider.to_string(),
        },
        bands: base.read.bands.bands().to_vec(),
        ..Section::default()
    }
}

/// Class areas in the legend's order (classes without area listed at 0, `skip`ped ones
/// left out), as percentages of `total_m2` (the whole of `basis`).
pub(crate) fn class_areas(
    legend: &Legend,
    areas: &[(u8, f64)],
    skip: &[u8],
    (total_m2, basis): (Option<f64>, &str),
    geodesic: bool,
) -> ClassAreas {
    let mut rows = Vec::new();
    for (i, (name, color)) in legend.names.iter().zip(&legend.colors).enumerate() {
        if i <= 255 && skip.contains(&(i as u8)) {
            continue;
        }
        let m2 = areas
            .iter()
            .filter(|(c, _)| usize::from(*c) == i)
            .fold(0.0, |sum, (_, a)| sum + a);
        rows.push(crate::output::report::ClassArea {
            name: name.clone(),
            color: *color,
            m2,
        });
    }
    let sum = rows.iter().fold(0.0, |sum, r| sum + r.m2);
    ClassAreas {
        rows,
        total_m2: total_m2.unwrap_or(sum),
        basis: basis.to_string(),
        geodesic,
    }
}

/// The area of a `width x height` pixel grid on `gt` in the layer CRS `crs` (m² on its
/// ellipsoid; square CRS units without a CRS).
pub(crate) fn grid_area(
    crs: Option<&str>,
    gt: &crate::raster::GeoTransform,
    (width, height): (usize, usize),
) -> Option<f64> {
    let ring = gt.footprint(width as f64, height as f64);
    let poly = geo::Polygon::new(geo::LineString::from(ring.to_vec()), vec![]);
    LayerArea::for_layer(crs)
        .ok()?
        .multi_polygon(&geo::MultiPolygon(vec![poly]))
        .ok()
}

/// Write `dir/report.html` of a single-scene run when the job asks for one.
///
/// # Errors
/// The scene or a class raster cannot be read, or the page cannot be written.
pub(crate) fn write_report(
    base: &crate::options::SceneJobBase,
    dir: &Path,
    section: &Section,
) -> Result<(), PipelineError> {
    if !base.report {
        return Ok(());
    }
    let title = Path::new(&base.scene)
        .file_name()
        .map_or_else(|| base.scene.clone(), |n| n.to_string_lossy().into_owned());
    let report = SceneReport {
        title,
        scene: base.scene.clone(),
        open: base.open.clone(),
        sections: std::slice::from_ref(section),
        provenance: SceneReport::default_provenance(),
        pipeline_text: None,
    };
    crate::output::report::write_report(dir, &report).map_err(PipelineError::Output)?;
    Ok(())
}

/// A section's class raster named where the committed folder puts it.
pub(crate) fn rebase_section(section: &mut Section, from: &Path, to: &Path) {
    if let Some(cm) = &mut section.class_map {
        if let Ok(rest) = cm.raster.strip_prefix(from) {
            cm.raster = to.join(rest);
        }
    }
}

/// Field access to the shared part (`report.outputs`).
macro_rules! shares_run_report {
    ($($report:ty),*) => {$(
        impl std::ops::Deref for $report {
            type Target = SceneRunReport;
            fn deref(&self) -> &SceneRunReport {
                &self.run
            }
        }
        impl std::ops::DerefMut for $report {
            fn deref_mut(&mut self) -> &mut SceneRunReport {
                &mut self.run
            }
        }
    )*};
}

shares_run_report!(ClassifyReport, CaptionReport, DetectReport, SegmentReport);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebase_names_outputs_in_the_final_folder() {
        let mut r = SceneRunReport {
            scene: "/data/.out-tmp/s.tif".into(),
            model: "m".into(),
            provider: "CPUExecutionProvider".into(),
            fallback: None,
            tiles_total: 1,
            tiles_skipped: 0,
            outputs: vec![
                "/data/.out-tmp/seg/classes.tif".into(),
                "/elsewhere/x.tif".into(),
                "/data/.out-tmpx/y.tif".into(),
            ],
            peak_rss_bytes: None,
            section: None,
        };
        r.rebase(Path::new("/data/.out-tmp"), Path::new("/data/out"));
        assert_eq!(
            r.outputs,
            [
                "/data/out/seg/classes.tif",
                "/elsewhere/x.tif",
                "/data/.out-tmpx/y.tif"
            ]
        );
        // Only outputs are renamed.
        assert_eq!(r.scene, "/data/.out-tmp/s.tif");
    }
}
