//! Detection: a scene with a box or polygon label layer (`--scene`, `--labels`,
//! `--label-field`), or chips with COCO JSON (`--coco`) or Pascal VOC XML (`--voc`; the images
//! beside the labels, or in `--chips`). Every model runs tessera's own detection path
//! ([`crate::jobs::detect_with`]: tiles, decoding, the merge across tiles) keeping boxes from
//! `--min-score`; the boxes are matched with the labels in map coordinates for a scene (the
//! labels reprojected to the scene's CRS, both sides as axis-aligned bounding boxes) and in
//! each chip's pixels for chips; the metrics are COCO's ([`super::metrics::detection`]):
//! mAP@0.5, mAP@0.75, mAP@0.5:0.95, precision / recall / F1 at `--confidence`, and the
//! interpolated precision-recall curve of each class at IoU 0.5.
//!
//! A scene is one COCO image (so `--max-dets` limits its boxes per class), a chip is one
//! image. Model classes match label classes by name or through `--class-map`; boxes of model
//! classes that match none are left out (and listed as `unmatched_classes`). An
//! open-vocabulary detector is queried with the label class names. `agreement` between
//! models is the fraction of labelled objects that both find or both miss at `--confidence`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::boxes;
use super::metrics::detection::{evaluate, recall_thresholds, EvalParams, GroundTruth, Prediction};
use super::registry::{ModelRun, PrCurve, Predictions, Prepared, Scored, TaskEvaluator};
use super::EvalError;
use crate::jobs::PipelineError;
use crate::options::{DetectOptions, EvalOptions, InvalidOption, JobContext, SceneJobBase};
use crate::task::Task;

pub struct DetectEval;

/// What `prepare` leaves in the work folder for the workers.
const DATA_JSON: &str = "detect.json";
/// What each worker writes: the model's boxes.
const PREDICTIONS_JSON: &str = "predictions.json";

/// The images every model runs on, and the label classes (the queries of open-vocabulary
/// detectors).
#[derive(Serialize, Deserialize)]
struct WorkData {
    /// Chips (empty for a scene).
    chips: Vec<PathBuf>,
    classes: Vec<String>,
}

/// One model's boxes, as the worker wrote them.
#[derive(Serialize, Deserialize)]
struct ModelBoxes {
    /// The model's class names.
    classes: Vec<String>,
    /// The model's own confidence threshold.
    confidence: f64,
    /// `(image, class index of the model, [x, y, w, h], score)`: map coordinates for a
    /// scene, pixels for chips.
    boxes: Vec<(usize, usize, [f64; 4], f64)>,
}

struct PreparedDetect {
    what: String,
    /// Each image's name in `predictions_N.jsonl`: the scene, or the chip's path.
    images: Vec<String>,
    n_images: usize,
    classes: Vec<String>,
    truth: Vec<GroundTruth>,
    class_map: Vec<(String, String)>,
    confidence: Option<f64>,
    max_dets: usize,
    min_score: f64,
}

/// "1 class", "3 classes".
fn classes_count(n: usize) -> String {
    if n == 1 {
        "1 class".into()
    } else {
        format!("{n} classes")
    }
}

/// Box labels as ground truth over the classes `classes`.
fn truth_of(boxes: &[(usize, boxes::LabelBox)], classes: &[String]) -> Vec<GroundTruth> {
    boxes
        .iter()
        .filter_map(|(image, b)| {
            let class = classes.iter().position(|c| *c == b.class)?;
            Some(GroundTruth {
                image: *image,
                class,
                bbox: b.bbox,
                area: b.bbox[2] * b.bbox[3],
                crowd: b.crowd,
            })
        })
        .collect()
}

impl TaskEvaluator for DetectEval {
    fn task(&self) -> Task {
        Task::Detect
    }

    fn prepare(&self, opts: &EvalOptions, work: &Path) -> Result<Box<dyn Prepared>, EvalError> {
        for (given, key) in [
            (opts.references.is_some(), "references"),
            (opts.prompts.is_some(), "prompts"),
            (opts.templates.is_some(), "template"),
        ] {
            if given {
                return Err(opts.not_taken(key).into());
            }
        }
        let given = [
            opts.scene.is_some(),
            opts.coco.is_some(),
            opts.voc.is_some(),
        ];
        if given.iter().filter(|&&g| g).count() != 1 {
            return Err(InvalidOption::new(
                "scene",
                "detection takes one of: --scene with --labels and --label-field, --coco FILE, --voc DIR",
            )
            .into());
        }
        let (what, mut chips, classes, truth) = if let Some(scene) = &opts.scene {
            if opts.chips.is_some() {
                return Err(InvalidOption::new("chips", "is not taken with --scene").into());
            }
            let path = opts
                .labels
                .clone()
                .ok_or_else(|| InvalidOption::new("labels", "is required with `scene`"))?;
            let field = opts
                .label_field
                .clone()
                .ok_or_else(|| InvalidOption::new("label_field", "is required with `labels`"))?;
            let wkt = super::classify::scene_wkt(scene)?;
            let layer = super::labels::read(&path, &field, Some(&wkt))?;
            let mut labelled = Vec::with_capacity(layer.geometries.len());
            for (g, v) in layer.geometries.iter().zip(&layer.values) {
                let e = g.envelope();
                labelled.push((
                    0,
                    boxes::LabelBox {
                        class: v.clone(),
                        bbox: [e.MinX, e.MinY, e.MaxX - e.MinX, e.MaxY - e.MinY],
                        crowd: false,
                    },
                ));
            }
            let truth = truth_of(&labelled, &layer.classes);
            let what = format!(
                "{} boxes in {} ({}) over {} from {}",
                truth.len(),
                classes_count(layer.classes.len()),
                layer.classes.join(", "),
                scene,
                path.display()
            );
            (what, vec![PathBuf::from(scene)], layer.classes, truth)
        } else {
            for (given, key) in [
                (opts.labels.is_some(), "labels"),
                (opts.label_field.is_some(), "label_field"),
            ] {
                if given {
                    return Err(InvalidOption::new(key, "is only taken with --scene").into());
                }
            }
            let (labels, source) = match (&opts.coco, &opts.voc) {
                (Some(file), _) => (boxes::read_coco(file, opts.chips.as_deref())?, file),
                (None, Some(dir)) => (boxes::read_voc(dir, opts.chips.as_deref())?, dir),
                (None, None) => {
                    return Err(InvalidOption::new("coco", "or --voc is required").into())
                }
            };
            if labels.images.is_empty() {
                return Err(EvalError::data(source, "lists no images"));
            }
            let truth = truth_of(&labels.boxes, &labels.classes);
            let what = format!(
                "{} boxes in {} ({}) on {} chips from {}",
                truth.len(),
                classes_count(labels.classes.len()),
                labels.classes.join(", "),
                labels.images.len(),
                source.display()
            );
            (what, labels.images, labels.classes, truth)
        };
        if classes.is_empty() {
            return Err(InvalidOption::new("labels", "define no class").into());
        }
        let images: Vec<String> = chips.iter().map(|c| c.display().to_string()).collect();
        if opts.scene.is_some() {
            chips.clear();
        }
        let data = WorkData {
            chips: chips.clone(),
            classes: classes.clone(),
        };
        let path = work.join(DATA_JSON);
        let text =
            serde_json::to_string(&data).map_err(|e| EvalError::data(&path, e.to_string()))?;
        std::fs::write(&path, text).map_err(|e| EvalError::io(&path, e))?;
        Ok(Box::new(PreparedDetect {
            what,
            n_images: images.len(),
            images,
            classes,
            truth,
            class_map: opts.class_pairs()?,
            confidence: opts.confidence,
            max_dets: opts.max_dets(),
            min_score: opts.min_score(),
        }))
    }

    fn run_model(
        &self,
        opts: &EvalOptions,
        base: SceneJobBase,
        work: &Path,
        out: PathBuf,
        _ctx: &JobContext,
    ) -> Result<Value, EvalError> {
        let path = work.join(DATA_JSON);
        let text = std::fs::read_to_string(&path).map_err(|e| EvalError::io(&path, e))?;
        let data: WorkData =
            serde_json::from_str(&text).map_err(|e| EvalError::data(&path, e.to_string()))?;
        let runtime =
            crate::runtime::Runtime::load(base.ort_lib.as_deref()).map_err(PipelineError::from)?;
        let mut model = crate::jobs::LoadedDetector::load(runtime, &base.model, &base.session)
            .map_err(PipelineError::from)?;
        if model.is_prompted() {
            model
                .set_queries(&data.classes)
                .map_err(PipelineError::from)?;
        }
        let options = DetectOptions {
            model: base.model.clone(),
            confidence: Some(opts.min_score() as f32),
            ..Default::default()
        };
        let scenes: Vec<(String, bool)> = if data.chips.is_empty() {
            vec![(opts.scene.clone().unwrap_or_default(), false)]
        } else {
            data.chips
                .iter()
                .map(|c| (c.display().to_string(), true))
                .collect()
        };
        let mut found = Vec::new();
        let (mut tiles, mut seconds) = (0u64, 0.0f64);
        let mut last: Option<crate::jobs::DetectReport> = None;
        for (image, (scene, chip)) in scenes.iter().enumerate() {
            let mut b = base.clone();
            b.scene = scene.clone();
            if *chip {
                b.open.pixel_coords = true;
            }
            // Chips: boxes back into the chip's pixels.
            let to_pixels = if *chip {
                let s = crate::raster::Scene::open(scene, &b.open)?;
                Some(s.geotransform().invert().ok_or_else(|| {
                    EvalError::data(
                        Path::new(scene),
                        "has a geotransform that cannot be inverted",
                    )
                })?)
            } else {
                None
            };
            let job = options.job(b, None, false)?;
            let outcome = crate::jobs::detect_with(job, &mut model)?;
            tiles += outcome.report.tiles_read as u64;
            seconds += outcome.report.seconds;
            for d in &outcome.detections {
                let corners = match &to_pixels {
                    Some(inv) => d.corners.map(|(x, y)| inv.apply(x, y)),
                    None => d.corners,
                };
                let (mut x0, mut y0) = (f64::INFINITY, f64::INFINITY);
                let (mut x1, mut y1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
                for (x, y) in corners {
                    (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
                }
                found.push((
                    image,
                    d.class,
                    [x0, y0, x1 - x0, y1 - y0],
                    f64::from(d.score),
                ));
            }
            last = Some(outcome.report);
        }
        let boxes = ModelBoxes {
            classes: model.classes(),
            confidence: f64::from(model.confidence()),
            boxes: found,
        };
        std::fs::create_dir_all(&out).map_err(|e| EvalError::io(&out, e))?;
        let file = out.join(PREDICTIONS_JSON);
        let text =
            serde_json::to_string(&boxes).map_err(|e| EvalError::data(&file, e.to_string()))?;
        std::fs::write(&file, text).map_err(|e| EvalError::io(&file, e))?;
        let mut report = serde_json::to_value(&last).map_err(|e| EvalError::Worker {
            model: base.model.display().to_string(),
            message: e.to_string(),
        })?;
        report["tiles_read"] = tiles.into();
        report["seconds"] = seconds.into();
        report["images"] = scenes.len().into();
        Ok(report)
    }
}

impl PreparedDetect {
    /// The label class of each model class (`None`: no label class).
    fn class_links(
        &self,
        run: &ModelRun,
        model_classes: &[String],
    ) -> Result<Vec<Option<usize>>, EvalError> {
        let model = run.model.display().to_string();
        // A pair may name another model's class (several models in one run).
        for (_, l) in &self.class_map {
            if !self.classes.contains(l) {
                return Err(InvalidOption::new(
                    "class_map",
                    format!("'{l}' is not a label class ({})", self.classes.join(", ")),
                )
                .into());
            }
        }
        let links: Vec<Option<usize>> = model_classes
            .iter()
            .map(|m| {
                let label = self
                    .class_map
                    .iter()
                    .find(|(k, _)| k == m)
                    .map_or(m.as_str(), |(_, l)| l.as_str());
                self.classes.iter().position(|c| c == label)
            })
            .collect();
        if links.iter().all(Option::is_none) {
            return Err(EvalError::Model {
                path: model,
                reason: format!(
                    "none of its classes ({}) is a label class ({}): name them with --class-map MODEL=LABEL",
                    model_classes.join(", "),
                    self.classes.join(", ")
                ),
            });
        }
        Ok(links)
    }
}

impl Prepared for PreparedDetect {
    fn describe(&self) -> String {
        self.what.clone()
    }

    fn score(&self, run: &ModelRun) -> Result<Scored, EvalError> {
        let file = run.out.join(PREDICTIONS_JSON);
        let text = std::fs::read_to_string(&file).map_err(|e| EvalError::io(&file, e))?;
        let found: ModelBoxes =
            serde_json::from_str(&text).map_err(|e| EvalError::data(&file, e.to_string()))?;
        let links = self.class_links(run, &found.classes)?;
        let predictions: Vec<Prediction> = found
            .boxes
            .iter()
            .filter_map(|&(image, class, bbox, score)| {
                Some(Prediction {
                    image,
                    class: (*links.get(class)?)?,
                    bbox,
                    score,
                })
            })
            .collect();
        let params = EvalParams {
            max_dets: self.max_dets,
            confidence: self.confidence.unwrap_or(found.confidence),
        };
        let m = evaluate(
            self.n_images,
            &self.classes,
            &self.truth,
            &predictions,
            &params,
        );
        let mut metrics = Map::new();
        metrics.insert("map_50".into(), json!(m.map_50));
        metrics.insert("map_50_95".into(), json!(m.map_50_95));
        metrics.insert("map_75".into(), json!(m.map_75));
        let c = &m.at_confidence;
        metrics.insert("precision".into(), c.precision.into());
        metrics.insert("recall".into(), c.recall.into());
        metrics.insert("f1".into(), c.f1.into());
        metrics.insert("true_positives".into(), c.true_positives.into());
        metrics.insert("false_positives".into(), c.false_positives.into());
        metrics.insert("false_negatives".into(), c.false_negatives.into());
        metrics.insert("confidence".into(), params.confidence.into());
        metrics.insert("min_score".into(), self.min_score.into());
        metrics.insert("max_dets".into(), self.max_dets.into());
        metrics.insert("boxes".into(), predictions.len().into());
        let unmatched: Vec<&String> = found
            .classes
            .iter()
            .zip(&links)
            .filter_map(|(c, l)| l.is_none().then_some(c))
            .collect();
        metrics.insert("unmatched_classes".into(), json!(unmatched));
        let mut per_class = Map::new();
        for r in &m.classes {
            per_class.insert(
                r.name.clone(),
                json!({
                    "ap_50": r.ap_50, "ap_75": r.ap_75, "ap_50_95": r.ap_50_95,
                    "max_recall": r.max_recall,
                    "precision": r.at_confidence.precision, "recall": r.at_confidence.recall,
                    "f1": r.at_confidence.f1,
                    "true_positives": r.at_confidence.true_positives,
                    "false_positives": r.at_confidence.false_positives,
                    "false_negatives": r.at_confidence.false_negatives,
                    "ground_truths": r.ground_truths, "support": r.ground_truths,
                    "predictions": r.predictions,
                    "pr_curve": r.pr_curve,
                }),
            );
        }
        metrics.insert("per_class".into(), Value::Object(per_class));
        let thresholds = recall_thresholds().to_vec();
        let curves = m
            .classes
            .iter()
            .filter(|r| !r.pr_curve.is_empty())
            .map(|r| {
                // The chart stops at the class's final recall (pycocotools reads 0 beyond).
                let top = r.max_recall.unwrap_or(1.0);
                let n = thresholds.iter().take_while(|&&t| t <= top).count().max(1);
                PrCurve {
                    class: r.name.clone(),
                    recall: thresholds[..n].to_vec(),
                    precision: r.pr_curve[..n].to_vec(),
                }
            })
            .collect();
        // Every label (found or not at --confidence) and every box scored, for error analysis
        // and for recomputing the metrics elsewhere (pycocotools on these boxes).
        let mut rows = Vec::with_capacity(self.truth.len() + predictions.len());
        for (g, f) in self.truth.iter().zip(&m.found) {
            rows.push(json!({
                "kind": "label", "image": self.images.get(g.image), "class": self.classes[g.class],
                "bbox": g.bbox, "crowd": g.crowd, "found": f,
            }));
        }
        for p in &predictions {
            rows.push(json!({
                "kind": "box", "image": self.images.get(p.image), "class": self.classes[p.class],
                "bbox": p.bbox, "score": p.score,
            }));
        }
        Ok(Scored {
            rows,
            metrics,
            headline: "map_50",
            tiles: run.report["tiles_read"].as_u64().unwrap_or(0) as usize,
            seconds: run.report["seconds"].as_f64().unwrap_or(0.0),
            predictions: Predictions::Classes(m.found.iter().map(|&f| u32::from(f)).collect()),
            confusion: None,
            curves,
        })
    }
}
