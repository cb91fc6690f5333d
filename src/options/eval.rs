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
}

impl EvalOptions {
    /// The data options this task takes and those it does not: each is an error naming the
    /// option. The evaluators check the files themselves.
    ///
    /// # Errors
    /// A missing option, or one the task does not take.
    pub fn validate(&self) -> Result<(), InvalidOption> {
        if let Some(t) = &self.templates {
            if t.iter().any(|t| !t.contains("{}")) {
                return Err(InvalidOption::new(
                    "template",
                    "must each contain {} where the class text goes",
                ));
            }
        }
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

    /// `key` is given though `task` takes no such option.
    pub fn not_taken(&self, key: &'static str) -> InvalidOption {
        InvalidOption::new(key, format!("is not taken by --task {}", self.task.name()))
    }
}
