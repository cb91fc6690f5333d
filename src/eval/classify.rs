//! Classification: labelled chips (a folder per class), or a scene with a polygon label
//! layer (each tile labelled by the class covering most of it). Every model runs the
//! ordinary `classify` job with the class names (or their prompt texts) as labels; its
//! `probabilities.tif` (one pixel per tile, a band per label) is scored: top-1, top-5,
//! macro precision/recall/F1 and per class, the confusion matrix.

use std::path::{Path, PathBuf};

use gdal::vector::{Geometry, LayerAccess};
use serde_json::{json, Map, Value};

use super::chips::{self, ChipSet};
use super::labels::{self, LabelLayer};
use super::metrics::{top_k, top_k_accuracy, Counts};
use super::registry::{Confusion, ModelRun, Predictions, Prepared, Scored, TaskEvaluator};
use super::EvalError;
use crate::options::{ClassifyOptions, EvalOptions, JobContext, SceneJobBase};
use crate::task::Task;

pub struct ClassifyEval;

const CHIPS_JSON: &str = "chips.json";
const LABELS_TXT: &str = "labels.txt";

/// The label text of each class: the mapping file's text, else the class name.
///
/// # Errors
/// An unreadable mapping, or two classes given the same text.
pub fn prompt_texts(classes: &[String], mapping: Option<&Path>) -> Result<Vec<String>, EvalError> {
    let mut map: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    if let Some(path) = mapping {
        let text = std::fs::read_to_string(path).map_err(|e| EvalError::io(path, e))?;
        if text.trim_start().starts_with('{') {
            let v: std::collections::HashMap<String, String> = serde_json::from_str(&text)
                .map_err(|e| EvalError::data(path, format!("not a JSON object of texts: {e}")))?;
            map.extend(v);
        } else {
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let Some((k, v)) = line.split_once('\t').or_else(|| line.split_once('=')) else {
                    return Err(EvalError::data(
                        path,
                        format!("line {}: expected class<TAB>text or class=text", n + 1),
                    ));
                };
                map.insert(k.trim().to_string(), v.trim().to_string());
            }
        }
        if let Some(unknown) = map.keys().find(|k| !classes.contains(k)) {
            return Err(EvalError::data(
                path,
                format!(
                    "maps '{unknown}', which is not a class ({})",
                    classes.join(", ")
                ),
            ));
        }
    }
    let texts: Vec<String> = classes
        .iter()
        .map(|c| map.get(c).cloned().unwrap_or_else(|| c.replace('_', " ")))
        .collect();
    for (i, t) in texts.iter().enumerate() {
        if t.is_empty() || t.contains('\n') {
            return Err(EvalError::data(
                mapping.unwrap_or(Path::new("--prompts")),
                format!("class '{}' has an empty text", classes[i]),
            ));
        }
        if let Some(j) = texts[..i].iter().position(|u| u == t) {
            return Err(EvalError::data(
                mapping.unwrap_or(Path::new("--prompts")),
                format!(
                    "classes '{}' and '{}' have the same text '{t}'",
                    classes[j], classes[i]
                ),
            ));
        }
    }
    Ok(texts)
}

enum Data {
    Chips(ChipSet),
    Scene { scene: String, layer: LabelLayer },
}

struct PreparedClassify {
    data: Data,
    classes: Vec<String>,
}

/// The scene's CRS as WKT ("" when it has none).
pub(crate) fn scene_wkt(scene: &str) -> Result<String, EvalError> {
    crate::raster::init_gdal();
    let ds = gdal::Dataset::open(scene).map_err(|e| EvalError::Data {
        path: scene.to_string(),
        reason: format!("not a raster: {}", crate::raster::gdal_reason(&e)),
    })?;
    Ok(ds.projection())
}

/// `--chips`, or `--scene` with `--labels` and `--label-field` (polygons), and nothing
/// of another task.
fn check_options(opts: &EvalOptions, task_label: &str) -> Result<(), EvalError> {
    for (given, key) in [
        (opts.coco.is_some(), "coco"),
        (opts.voc.is_some(), "voc"),
        (opts.references.is_some(), "references"),
    ] {
        if given {
            return Err(opts.not_taken(key).into());
        }
    }
    match (&opts.chips, &opts.scene) {
        (Some(_), Some(_)) => Err(crate::options::InvalidOption::new(
            "chips",
            "and `scene` are exclusive: give one",
        )
        .into()),
        (None, None) => Err(crate::options::InvalidOption::new(
            "chips",
            format!("or `scene` with `labels` and `label_field` is required for {task_label}"),
        )
        .into()),
        (Some(_), None) if opts.labels.is_some() || opts.label_field.is_some() => {
            Err(crate::options::InvalidOption::new(
                "labels",
                "is not taken with `chips` (the class of a chip is its folder)",
            )
            .into())
        }
        _ => Ok(()),
    }
}

impl TaskEvaluator for ClassifyEval {
    fn task(&self) -> Task {
        Task::Classify
    }

    fn prepare(&self, opts: &EvalOptions, work: &Path) -> Result<Box<dyn Prepared>, EvalError> {
        check_options(opts, "classification")?;
        let (data, classes) = if let Some(dir) = &opts.chips {
            let set = chips::scan(dir, true)?;
            if set.classes.len() < 2 {
                return Err(EvalError::data(
                    dir,
                    "has one class folder: classification needs at least two",
                ));
            }
            chips::save(&set, &work.join(CHIPS_JSON))?;
            let classes = set.classes.clone();
            (Data::Chips(set), classes)
        } else {
            let scene = opts.scene.clone().unwrap_or_default();
            let labels_path = opts.labels.clone().ok_or_else(|| {
                crate::options::InvalidOption::new("labels", "is required with `scene`")
            })?;
            let field = opts.label_field.clone().ok_or_else(|| {
                crate::options::InvalidOption::new("label_field", "is required with `labels`")
            })?;
            let wkt = scene_wkt(&scene)?;
            let layer = labels::read(&labels_path, &field, Some(&wkt))?;
            if layer.classes.len() < 2 {
                return Err(EvalError::data(
                    &labels_path,
                    format!("has one class in '{field}': classification needs at least two"),
                ));
            }
            let classes = layer.classes.clone();
            (Data::Scene { scene, layer }, classes)
        };
        let texts = prompt_texts(&classes, opts.prompts.as_deref())?;
        let path = work.join(LABELS_TXT);
        std::fs::write(&path, texts.join("\n") + "\n").map_err(|e| EvalError::io(&path, e))?;
        Ok(Box::new(PreparedClassify { data, classes }))
    }

    fn run_model(
        &self,
        opts: &EvalOptions,
        mut base: SceneJobBase,
        work: &Path,
        out: PathBuf,
        ctx: &JobContext,
    ) -> Result<Value, EvalError> {
        chips::aim_at_input(opts, &mut base, &work.join(CHIPS_JSON), &out)?;
        let options = ClassifyOptions {
            model: base.model.clone(),
            labels_file: Some(work.join(LABELS_TXT)),
            templates: opts.templates.clone(),
            ..Default::default()
        };
        let job = options.job(base, Some(out), false, ctx.cache_dir.as_deref())?;
        let report = crate::jobs::run_classify(job).map_err(EvalError::Pipeline)?;
        serde_json::to_value(&report).map_err(|e| EvalError::Worker {
            model: report.model.clone(),
            message: e.to_string(),
        })
    }
}

/// The label probabilities of every tile: `probs[row * cols + col]` (empty: skipped tile).
fn tile_probabilities(out: &Path) -> Result<(usize, usize, Vec<Vec<f32>>), EvalError> {
    let grid = labels::read_raster::<f32>(&out.join("probabilities.tif"))?;
    let n = grid.width * grid.height;
    let probs = (0..n)
        .map(|i| {
            let p: Vec<f32> = grid.bands.iter().map(|b| b[i]).collect();
            if p.iter().any(|v| v.is_nan()) {
                Vec::new()
            } else {
                p
            }
        })
        .collect();
    Ok((grid.width, grid.height, probs))
}

/// Tile footprints of the job's tile layer, by `row * cols + col`.
fn tile_footprints(out: &Path, cols: usize, n: usize) -> Result<Vec<Option<Geometry>>, EvalError> {
    let path = labels::output_named(out, "tiles")
        .ok_or_else(|| EvalError::data(out, "the classify job wrote no tile layer"))?;
    let ds = gdal::Dataset::open(&path)
        .map_err(|e| EvalError::data(&path, crate::raster::gdal_reason(&e)))?;
    let mut layer = ds
        .layer(0)
        .map_err(|e| EvalError::data(&path, crate::raster::gdal_reason(&e)))?;
    let mut tiles: Vec<Option<Geometry>> = (0..n).map(|_| None).collect();
    for f in layer.features() {
        let get = |name: &str| {
            f.field_index(name)
                .ok()
                .and_then(|i| f.field_as_integer(i).ok().flatten())
                .and_then(|v| usize::try_from(v).ok())
        };
        if let (Some(row), Some(col), Some(g)) = (get("row"), get("col"), f.geometry()) {
            if let Some(slot) = tiles.get_mut(row * cols + col) {
                *slot = Some(g.clone());
            }
        }
    }
    Ok(tiles)
}

/// The metrics of tiles with a class and a prediction.
pub fn classification_metrics(
    classes: &[String],
    truth: &[usize],
    probs: &[Vec<f32>],
) -> (Map<String, Value>, Confusion) {
    let k = classes.len();
    let mut counts = Counts::new(k);
    for (t, p) in truth.iter().zip(probs) {
        counts.add(*t, top_k(p, 1).first().copied());
    }
    let all: Vec<usize> = (0..k).collect();
    let (precision, recall, f1, _) = counts.macro_average(&all);
    let mut per_class = Map::new();
    for (c, name) in classes.iter().enumerate() {
        let s = counts.class(c);
        per_class.insert(
            name.clone(),
            json!({"precision": s.precision, "recall": s.recall, "f1": s.f1, "support": s.support}),
        );
    }
    let confusion = Confusion {
        classes: classes.to_vec(),
        counts: counts.matrix(),
    };
    let mut m = Map::new();
    m.insert("top1".into(), counts.accuracy().into());
    m.insert("top5".into(), top_k_accuracy(truth, probs, 5).into());
    m.insert("precision".into(), precision.into());
    m.insert("recall".into(), recall.into());
    m.insert("f1".into(), f1.into());
    m.insert("per_class".into(), Value::Object(per_class));
    m.insert(
        "confusion".into(),
        json!({"classes": confusion.classes, "matrix": confusion.counts}),
    );
    m.insert("tiles_evaluated".into(), truth.len().into());
    (m, confusion)
}

/// The job's seconds over its tiles: the whole run but loading, text embeddings and writing.
pub(crate) fn classify_seconds(report: &Value) -> f64 {
    let t = &report["timings"];
    let f = |k: &str| t[k].as_f64().unwrap_or(0.0);
    (f("total_seconds") - f("load_seconds") - f("text_seconds") - f("write_seconds")).max(0.0)
}

impl Prepared for PreparedClassify {
    fn describe(&self) -> String {
        match &self.data {
            Data::Chips(set) => format!(
                "{} chips in {} classes ({}) from {}",
                set.chips.len(),
                self.classes.len(),
                self.classes.join(", "),
                set.dir.display()
            ),
            Data::Scene { scene, layer } => format!(
                "tiles of {scene} labelled by {} ({} polygons, {} classes: {})",
                layer.path.display(),
                layer.values.len(),
                self.classes.len(),
                self.classes.join(", ")
            ),
        }
    }

    fn score(&self, run: &ModelRun) -> Result<Scored, EvalError> {
        let (cols, rows, probs) = tile_probabilities(&run.out)?;
        let n = cols * rows;
        let truth_of_tile: Vec<Option<usize>> = match &self.data {
            Data::Chips(set) => {
                if n != set.chips.len() {
                    return Err(EvalError::data(
                        &run.out,
                        format!("{n} tiles for {} chips", set.chips.len()),
                    ));
                }
                set.chips.iter().map(|c| Some(c.class)).collect()
            }
            Data::Scene { layer, .. } => tile_footprints(&run.out, cols, n)?
                .iter()
                .map(|g| g.as_ref().and_then(|g| layer.class_of(g, &self.classes)))
                .collect(),
        };
        let mut truth = Vec::new();
        let mut scored_probs = Vec::new();
        for (t, p) in truth_of_tile.iter().zip(&probs) {
            if let (Some(t), false) = (t, p.is_empty()) {
                if p.len() != self.classes.len() {
                    return Err(EvalError::data(
                        &run.out,
                        format!(
                            "{} label probabilities for {} classes",
                            p.len(),
                            self.classes.len()
                        ),
                    ));
                }
                truth.push(*t);
                scored_probs.push(p.clone());
            }
        }
        if truth.is_empty() {
            return Err(EvalError::Worker {
                model: run.model.display().to_string(),
                message: "no labelled tile got a prediction".into(),
            });
        }
        let (metrics, confusion) = classification_metrics(&self.classes, &truth, &scored_probs);
        let rows = probs
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let unit = match &self.data {
                    Data::Chips(set) => set.chips[i].name.clone(),
                    Data::Scene { .. } => format!("r{:04}c{:04}", i / cols, i % cols),
                };
                let name =
                    |c: Option<usize>| c.map_or(Value::Null, |c| self.classes[c].clone().into());
                json!({
                    "unit": unit,
                    "truth": name(truth_of_tile[i]),
                    "predicted": name(top_k(p, 1).first().copied()),
                    "scores": p,
                })
            })
            .collect();
        let predictions = probs
            .iter()
            .map(|p| top_k(p, 1).first().map_or(u32::MAX, |&c| c as u32))
            .collect();
        Ok(Scored {
            metrics,
            headline: "top1",
            tiles: run.report["tiles_read"].as_u64().unwrap_or(0) as usize,
            seconds: classify_seconds(&run.report),
            predictions: Predictions::Classes(predictions),
            confusion: Some(confusion),
            curves: Vec::new(),
            rows,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_texts_map_or_name_classes() {
        let dir = tempfile::tempdir().expect("tmp");
        let classes = vec!["AnnualCrop".to_string(), "Sea_Lake".to_string()];
        assert_eq!(
            prompt_texts(&classes, None).expect("names"),
            ["AnnualCrop", "Sea Lake"]
        );
        let map = dir.path().join("m.txt");
        std::fs::write(&map, "# texts\nAnnualCrop\tfields of crops\n").expect("write");
        assert_eq!(
            prompt_texts(&classes, Some(&map)).expect("map"),
            ["fields of crops", "Sea Lake"]
        );
        std::fs::write(&map, "{\"Sea_Lake\": \"AnnualCrop\"}").expect("write");
        let e = prompt_texts(&classes, Some(&map)).expect_err("same text");
        assert!(e.to_string().contains("same text"), "{e}");
        std::fs::write(&map, "Forest=trees\n").expect("write");
        let e = prompt_texts(&classes, Some(&map)).expect_err("unknown");
        assert!(
            e.to_string().contains("'Forest', which is not a class"),
            "{e}"
        );
    }
}
