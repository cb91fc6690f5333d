//! `eval`: which task, which models, and the labelled data. The scene-side groups (bands,
//! scaling, tiling, device) are the shared ones, flattened into the command beside these.

use std::path::PathBuf;

use clap::Args;

use super::{parse_choice, InvalidOption};
use crate::task::Task;

/// `tessera eval`: the task, the models and the labelled data.
#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "Evaluation")]
pub struct EvalOptions {
    /// What the models do: classify, detect, segment or caption.
    #[arg(long, value_name = "TASK", value_parser = parse_choice::<Task>)]
    pub task: Task,
    /// A model package to evaluate; repeat for several (the table keeps this order, and
    /// `agreement` compares every model with the first).
    #[arg(long = "model", value_name = "PKG", required = true)]
    pub models: Vec<PathBuf>,
    /// Labelled chips: one folder per class holding its images (EuroSAT, RESISC45,
    /// UC Merced, AID layouts; any GDAL-readable chip, GeoTIFF, JPEG, PNG). Captions: a
    /// folder of chips named in `--references`.
    #[arg(long, value_name = "DIR")]
    pub chips: Option<PathBuf>,
    /// A scene (any GDAL raster) to evaluate over, with `--labels`.
    #[arg(long, value_name = "FILE")]
    pub scene: Option<String>,
    /// Labels over `--scene`: a polygon layer (GPKG, Shapefile, GeoJSON) with a class field
    /// (`--label-field`), or for segmentation a label raster of class indexes.
    #[arg(long, value_name = "FILE")]
    pub labels: Option<PathBuf>,
    /// The class field of `--labels` polygons (class names, or class indexes of the model).
    #[arg(long, value_name = "NAME")]
    pub label_field: Option<String>,
    /// Detection: chips with COCO JSON annotations.
    #[arg(long, value_name = "FILE")]
    pub coco: Option<PathBuf>,
    /// Detection: chips with Pascal VOC XML annotations (a folder of .xml files).
    #[arg(long, value_name = "DIR")]
    pub voc: Option<PathBuf>,
    /// Captions: reference captions, one JSON object a line: {"tile_id": "r0000c0001" or
    /// "chip": "name.png", "captions": ["...", ...]}.
    #[arg(long, value_name = "FILE.jsonl")]
    pub references: Option<PathBuf>,
    /// Classification: what each class is called in the prompts, a file of lines
    /// `class<TAB>text` or `class=text` (or a JSON object); classes it omits use their names.
    #[arg(long, value_name = "FILE")]
    pub prompts: Option<PathBuf>,
    /// Classification: prompt template with {} for the class text; repeat for an ensemble
    /// (default: the package's, else the family's).
    #[arg(long = "template", value_name = "TEMPLATE")]
    pub templates: Option<Vec<String>>,
    /// Detection: the score at or above which a box counts for precision, recall and F1
    /// (default: the model's detection.confidence). mAP uses every box from --min-score.
    #[arg(long, value_name = "P")]
    pub confidence: Option<f64>,
    /// Detection: the lowest score a box is kept at for mAP (COCO-style evaluations keep
    /// nearly all boxes; Ultralytics validates at 0.001). [default: 0.001]
    #[arg(long, value_name = "P")]
    pub min_score: Option<f64>,
    /// Detection: the best boxes kept per image (a scene is one image) and class, as
    /// pycocotools' maxDets (100). Raise it for scenes with more objects of a class.
    /// [default: 100]
    #[arg(long, value_name = "N")]
    pub max_dets: Option<usize>,
    /// Detection: model classes that are label classes under another name, comma-separated
    /// MODEL=LABEL pairs ("target=Tree,car=vehicle"); other classes match by equal name.
    #[arg(long, value_name = "PAIRS", value_delimiter = ',')]
    pub class_map: Option<Vec<String>>,
}

impl EvalOptions {
    /// The data options this task takes and those it does not: each is an error naming the
    /// option. The evaluators check the files themselves.
    ///
    /// # Errors
    /// A missing option, or one the task does not take.
    pub fn validate(&self) -> Result<(), InvalidOption> {
        if self.task != Task::Detect {
            for (given, key) in [
                (self.confidence.is_some(), "confidence"),
                (self.min_score.is_some(), "min_score"),
                (self.max_dets.is_some(), "max_dets"),
                (self.class_map.is_some(), "class_map"),
            ] {
                if given {
                    return Err(self.not_taken(key));
                }
            }
        }
        if let Some(t) = &self.templates {
            if t.iter().any(|t| !t.contains("{}")) {
                return Err(InvalidOption::new(
                    "template",
                    "must each contain {} where the class text goes",
                ));
            }
        }
        for (key, v) in [
            ("confidence", self.confidence),
            ("min_score", self.min_score),
        ] {
            if v.is_some_and(|v| !(0.0..=1.0).contains(&v)) {
                return Err(InvalidOption::new(key, "must be between 0 and 1"));
            }
        }
        if self.confidence.is_some_and(|c| c < self.min_score()) {
            return Err(InvalidOption::new(
                "confidence",
                format!(
                    "is below --min-score {}: boxes under it are not kept",
                    self.min_score()
                ),
            ));
        }
        if self.max_dets == Some(0) {
            return Err(InvalidOption::new("max_dets", "must be at least 1"));
        }
        self.class_pairs()?;
        let mut seen = std::collections::HashSet::new();
        for m in &self.models {
            if !seen.insert(m) {
                return Err(InvalidOption::new(
                    "model",
                    format!("{} is given twice", m.display()),
                ));
            }
        }
        Ok(())
    }

    /// Detection: the lowest score kept for mAP (`--min-score`, default 0.001).
    pub fn min_score(&self) -> f64 {
        self.min_score.unwrap_or(0.001)
    }

    /// Detection: the best boxes kept per image and class (`--max-dets`, default 100).
    pub fn max_dets(&self) -> usize {
        self.max_dets.unwrap_or(100)
    }

    /// `--class-map` as (model class, label class) pairs.
    ///
    /// # Errors
    /// A pair that is not `MODEL=LABEL` with both names non-empty, or a model class given twice.
    pub fn class_pairs(&self) -> Result<Vec<(String, String)>, InvalidOption> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for p in self.class_map.iter().flatten() {
            let (m, l) = p
                .split_once('=')
                .map(|(m, l)| (m.trim(), l.trim()))
                .filter(|(m, l)| !m.is_empty() && !l.is_empty())
                .ok_or_else(|| {
                    InvalidOption::new("class_map", format!("'{p}' is not MODEL=LABEL"))
                })?;
            if pairs.iter().any(|(seen, _)| seen == m) {
                return Err(InvalidOption::new(
                    "class_map",
                    format!("model class '{m}' is mapped twice"),
                ));
            }
            pairs.push((m.to_string(), l.to_string()));
        }
        Ok(pairs)
    }

    /// `key` is given though `task` takes no such option.
    pub fn not_taken(&self, key: &'static str) -> InvalidOption {
        InvalidOption::new(key, format!("is not taken by --task {}", self.task.name()))
    }
}
