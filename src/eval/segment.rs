//! Segmentation: a scene with a label raster (class indexes of the model, on the scene's
//! grid) or label polygons (`--label-field`: class names or indexes of the model). Every
//! model runs the ordinary `segment` job; its `classes.tif` mosaic is compared pixel by
//! pixel: IoU per class, mIoU, F1 (macro), pixel accuracy, confusion matrix. Pixels without
//! a label are left out; pixels the model left without a class (nodata) count as wrong.

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use super::labels::{self, LabelLayer};
use super::metrics::Counts;
use super::registry::{Confusion, ModelRun, Predictions, Prepared, Scored, TaskEvaluator};
use super::EvalError;
use crate::options::{EvalOptions, InvalidOption, JobContext, SceneJobBase, SegmentOptions};
use crate::stitch::mask::NODATA_CLASS;
use crate::task::Task;

pub struct SegmentEval;

enum Truth {
    Raster {
        path: PathBuf,
        grid: labels::Grid<i32>,
    },
    Polygons(LabelLayer),
}

struct PreparedSegment {
    scene: String,
    truth: Truth,
}

impl TaskEvaluator for SegmentEval {
    fn task(&self) -> Task {
        Task::Segment
    }

    fn prepare(&self, opts: &EvalOptions, _work: &Path) -> Result<Box<dyn Prepared>, EvalError> {
        for (given, key) in [
            (opts.chips.is_some(), "chips"),
            (opts.coco.is_some(), "coco"),
            (opts.voc.is_some(), "voc"),
            (opts.references.is_some(), "references"),
            (opts.prompts.is_some(), "prompts"),
            (opts.templates.is_some(), "template"),
        ] {
            if given {
                return Err(opts.not_taken(key).into());
            }
        }
        let scene = opts.scene.clone().ok_or_else(|| {
            InvalidOption::new("scene", "is required for segmentation (with `labels`)")
        })?;
        let path = opts
            .labels
            .clone()
            .ok_or_else(|| InvalidOption::new("labels", "is required with `scene`"))?;
        if !path.exists() {
            return Err(EvalError::data(&path, "no such label file"));
        }
        let truth = if labels::is_vector(&path) {
            let field = opts.label_field.clone().ok_or_else(|| {
                InvalidOption::new("label_field", "is required with label polygons")
            })?;
            let wkt = super::classify::scene_wkt(&scene)?;
            Truth::Polygons(labels::read(&path, &field, Some(&wkt))?)
        } else {
            if opts.label_field.is_some() {
                return Err(InvalidOption::new(
                    "label_field",
                    "is not taken with a label raster (its values are class indexes)",
                )
                .into());
            }
            let grid = labels::read_raster::<i32>(&path)?;
            Truth::Raster { path, grid }
        };
        Ok(Box::new(PreparedSegment { scene, truth }))
    }

    fn run_model(
        &self,
        opts: &EvalOptions,
        mut base: SceneJobBase,
        _work: &Path,
        out: PathBuf,
        _ctx: &JobContext,
    ) -> Result<Value, EvalError> {
        base.scene = opts.scene.clone().unwrap_or_default();
        let options = SegmentOptions {
            model: Some(base.model.clone()),
            ..Default::default()
        };
        let job = options.job(base, out, false)?;
        let report = crate::jobs::run_segment(job).map_err(EvalError::Pipeline)?;
        serde_json::to_value(&report).map_err(|e| EvalError::Worker {
            model: report.model.clone(),
            message: e.to_string(),
        })
    }
}

/// Pixel metrics over the classes present in the truth or the predictions (scikit-learn's
/// default labels; pixels without prediction are errors but no class).
pub fn segmentation_metrics(
    classes: &[String],
    counts: &Counts,
) -> (Map<String, Value>, Confusion) {
    let present = counts.present();
    let (_, _, f1, miou) = counts.macro_average(&present);
    let mut iou = Map::new();
    for &c in &present {
        iou.insert(classes[c].clone(), counts.class(c).iou.into());
    }
    let confusion = Confusion {
        classes: classes.to_vec(),
        counts: counts.matrix(),
    };
    let mut m = Map::new();
    m.insert("miou".into(), miou.into());
    m.insert("iou".into(), Value::Object(iou));
    m.insert("f1".into(), f1.into());
    m.insert("pixel_accuracy".into(), counts.accuracy().into());
    m.insert("pixels_evaluated".into(), counts.total().into());
    m.insert(
        "confusion".into(),
        json!({"classes": confusion.classes, "matrix": confusion.counts}),
    );
    (m, confusion)
}

impl Prepared for PreparedSegment {
    fn describe(&self) -> String {
        match &self.truth {
            Truth::Raster { path, grid } => format!(
                "pixels of {} labelled by the raster {} ({}x{})",
                self.scene,
                path.display(),
                grid.width,
                grid.height
            ),
            Truth::Polygons(layer) => format!(
                "pixels of {} labelled by {} ({} polygons, classes {})",
                self.scene,
                layer.path.display(),
                layer.values.len(),
                layer.classes.join(", ")
            ),
        }
    }

    fn score(&self, run: &ModelRun) -> Result<Scored, EvalError> {
        let classes: Vec<String> = run.report["classes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let k = classes.len();
        let pred = labels::read_raster::<u8>(&run.out.join("classes.tif"))?;
        let (w, h) = (pred.width, pred.height);
        let truth: Vec<i32> = match &self.truth {
            Truth::Raster { path, grid } => {
                if (grid.width, grid.height) != (w, h) {
                    return Err(EvalError::data(
                        path,
                        format!(
                            "is {}x{} but the model's class mosaic is {w}x{h}: give labels on the grid the model writes (the scene's, unless --target-gsd)",
                            grid.width, grid.height
                        ),
                    ));
                }
                let nodata = grid.nodata;
                grid.bands[0]
                    .iter()
                    .map(|&v| if nodata == Some(f64::from(v)) { -1 } else { v })
                    .collect()
            }
            Truth::Polygons(layer) => {
                for v in &layer.classes {
                    if class_index(v, &classes).is_none() {
                        return Err(EvalError::data(
                            &layer.path,
                            format!(
                                "class '{v}' is not a class of {} ({})",
                                run.model.display(),
                                classes.join(", ")
                            ),
                        ));
                    }
                }
                let burn = |v: &str| class_index(v, &classes).map(|c| c as f64 + 1.0);
                layer
                    .rasterize(pred.geotransform, w, h, &burn)?
                    .into_iter()
                    .map(|v| v - 1)
                    .collect()
            }
        };
        let mut counts = Counts::new(k);
        let mut unlabelled = 0u64;
        for (&t, &p) in truth.iter().zip(&pred.bands[0]) {
            match usize::try_from(t) {
                Ok(t) if t < k => {
                    counts.add(t, (p != NODATA_CLASS).then_some(usize::from(p)));
                }
                _ => unlabelled += 1,
            }
        }
        if counts.total() == 0 {
            return Err(EvalError::Worker {
                model: run.model.display().to_string(),
                message: "no pixel of the model's mosaic has a label".into(),
            });
        }
        let (mut metrics, confusion) = segmentation_metrics(&classes, &counts);
        metrics.insert("pixels_unlabelled".into(), unlabelled.into());
        let seconds = run.report["phase_seconds"]["sweep"].as_f64().unwrap_or(0.0)
            - run.report["load_seconds"].as_f64().unwrap_or(0.0);
        Ok(Scored {
            metrics,
            headline: "miou",
            tiles: run.report["tiles_read"].as_u64().unwrap_or(0) as usize,
            seconds: seconds.max(0.0),
            predictions: Predictions::Classes(
                pred.bands[0].iter().map(|&p| u32::from(p)).collect(),
            ),
            confusion: Some(confusion),
            curves: Vec::new(),
            rows: Vec::new(),
        })
    }
}

/// A label value as a class of the model: its name, or its index.
fn class_index(value: &str, classes: &[String]) -> Option<usize> {
    classes
        .iter()
        .position(|c| c == value)
        .or_else(|| value.parse::<usize>().ok().filter(|&i| i < classes.len()))
}
