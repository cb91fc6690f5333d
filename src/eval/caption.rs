//! Captions: reference captions per tile of a scene (`--scene`, keyed by `tile_id`) or per
//! chip of a folder (`--chips`, keyed by `chip`, the file's path below the folder). Every
//! model runs the ordinary `caption` job with the package's generation settings; the
//! captions of the referenced tiles are scored: corpus BLEU-4 and CIDEr-D, as pycocoevalcap
//! computes them ([`super::metrics::text`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};

use super::chips::{self, ChipSet};
use super::metrics::text::{bleu, cider, tokenize};
use super::registry::{ModelRun, Predictions, Prepared, Scored, TaskEvaluator};
use super::EvalError;
use crate::options::{
    CaptionOptions, EvalOptions, InvalidOption, JobContext, OptionsError, SceneJobBase,
};
use crate::task::Task;

pub struct CaptionEval;

const CHIPS_JSON: &str = "chips.json";

/// One line of `--references`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Reference {
    tile_id: Option<String>,
    chip: Option<String>,
    captions: Option<Vec<String>>,
    caption: Option<String>,
}

/// References by tile id or chip name, in file order.
fn read_references(path: &Path, by_chip: bool) -> Result<Vec<(String, Vec<String>)>, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|e| EvalError::io(path, e))?;
    let mut refs: Vec<(String, Vec<String>)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let line_err = |reason: String| EvalError::data(path, format!("line {}: {reason}", n + 1));
        let r: Reference = serde_json::from_str(line).map_err(|e| line_err(e.to_string()))?;
        let key = match (by_chip, r.tile_id, r.chip) {
            (false, Some(t), _) => t,
            (true, _, Some(c)) => c,
            (false, None, _) => {
                return Err(line_err(
                    "no \"tile_id\" (references of --scene tiles)".into(),
                ))
            }
            (true, _, None) => {
                return Err(line_err("no \"chip\" (references of --chips files)".into()))
            }
        };
        let mut captions = r.captions.unwrap_or_default();
        captions.extend(r.caption);
        let captions: Vec<String> = captions.iter().map(|c| tokenize(c)).collect();
        if captions.is_empty() || captions.iter().any(String::is_empty) {
            return Err(line_err(format!(
                "'{key}' has no (or an empty) reference caption"
            )));
        }
        if !seen.insert(key.clone()) {
            return Err(line_err(format!("'{key}' is given twice")));
        }
        refs.push((key, captions));
    }
    if refs.is_empty() {
        return Err(EvalError::data(path, "has no references"));
    }
    Ok(refs)
}

struct PreparedCaption {
    source: String,
    chips: Option<ChipSet>,
    references: HashMap<String, Vec<String>>,
    count: usize,
}

impl TaskEvaluator for CaptionEval {
    fn task(&self) -> Task {
        Task::Caption
    }

    fn prepare(&self, opts: &EvalOptions, work: &Path) -> Result<Box<dyn Prepared>, EvalError> {
        for (given, key) in [
            (opts.labels.is_some(), "labels"),
            (opts.label_field.is_some(), "label_field"),
            (opts.coco.is_some(), "coco"),
            (opts.voc.is_some(), "voc"),
            (opts.prompts.is_some(), "prompts"),
            (opts.templates.is_some(), "template"),
        ] {
            if given {
                return Err(opts.not_taken(key).into());
            }
        }
        let path = opts
            .references
            .clone()
            .ok_or_else(|| InvalidOption::new("references", "is required for captions"))?;
        if !path.is_file() {
            return Err(EvalError::data(&path, "no such references file"));
        }
        let (source, chips, refs) = match (&opts.chips, &opts.scene) {
            (Some(_), Some(_)) => {
                return Err(
                    InvalidOption::new("chips", "and `scene` are exclusive: give one").into(),
                )
            }
            (None, None) => {
                return Err(
                    InvalidOption::new("chips", "or `scene` is required with `references`").into(),
                )
            }
            (Some(dir), None) => {
                let mut set = chips::scan(dir, false)?;
                let refs = read_references(&path, true)?;
                let names: std::collections::HashSet<&str> =
                    set.chips.iter().map(|c| c.name.as_str()).collect();
                if let Some((missing, _)) = refs.iter().find(|(k, _)| !names.contains(k.as_str())) {
                    return Err(EvalError::data(
                        &path,
                        format!(
                            "references the chip '{missing}', which is not in {}",
                            dir.display()
                        ),
                    ));
                }
                let keep: std::collections::HashSet<&str> =
                    refs.iter().map(|(k, _)| k.as_str()).collect();
                set.chips.retain(|c| keep.contains(c.name.as_str()));
                chips::save(&set, &work.join(CHIPS_JSON))?;
                (dir.display().to_string(), Some(set), refs)
            }
            (None, Some(scene)) => (scene.clone(), None, read_references(&path, false)?),
        };
        Ok(Box::new(PreparedCaption {
            source,
            chips,
            count: refs.len(),
            references: refs.into_iter().collect(),
        }))
    }

    fn run_model(
        &self,
        opts: &EvalOptions,
        mut base: SceneJobBase,
        work: &Path,
        out: PathBuf,
        _ctx: &JobContext,
    ) -> Result<Value, EvalError> {
        chips::aim_at_input(opts, &mut base, &work.join(CHIPS_JSON), &out)?;
        let options = CaptionOptions {
            model: base.model.clone(),
            ..Default::default()
        };
        let job = options.job(base, Some(out), false).map_err(|e| match e {
            OptionsError::Invalid(e) => EvalError::Option(e),
            OptionsError::Model(e) => EvalError::Pipeline(e.into()),
        })?;
        let report = crate::jobs::run_caption(job).map_err(EvalError::Pipeline)?;
        serde_json::to_value(&report).map_err(|e| EvalError::Worker {
            model: report.model.clone(),
            message: e.to_string(),
        })
    }
}

/// One line of the job's `captions.jsonl`.
#[derive(Deserialize)]
struct Captioned {
    tile_id: String,
    row: usize,
    col: usize,
    caption: String,
}

impl Prepared for PreparedCaption {
    fn describe(&self) -> String {
        match &self.chips {
            Some(_) => format!("{} captioned chips of {}", self.count, self.source),
            None => format!("{} captioned tiles of {}", self.count, self.source),
        }
    }

    fn score(&self, run: &ModelRun) -> Result<Scored, EvalError> {
        let path = run.out.join("captions.jsonl");
        let text = std::fs::read_to_string(&path).map_err(|e| EvalError::io(&path, e))?;
        let mut lines: Vec<Captioned> = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            lines.push(
                serde_json::from_str(line).map_err(|e| EvalError::data(&path, e.to_string()))?,
            );
        }
        lines.sort_by_key(|c| (c.row, c.col));
        let cols = self
            .chips
            .as_ref()
            .map(|s| chips::mosaic_cols(s.chips.len()));
        let mut hyps = Vec::new();
        let mut refs = Vec::new();
        let mut rows = Vec::new();
        for c in &lines {
            let key = match (&self.chips, cols) {
                (Some(set), Some(cols)) => set
                    .chips
                    .get(c.row * cols + c.col)
                    .map(|chip| chip.name.clone()),
                _ => Some(c.tile_id.clone()),
            };
            if let Some((k, r)) = key.and_then(|k| self.references.get(&k).map(|r| (k, r))) {
                let tokens = tokenize(&c.caption);
                rows.push(serde_json::json!({
                    "unit": k,
                    "caption": c.caption,
                    "tokens": tokens,
                    "references": r,
                }));
                hyps.push(tokens);
                refs.push(r.clone());
            }
        }
        if hyps.len() != self.count {
            return Err(EvalError::Worker {
                model: run.model.display().to_string(),
                message: format!(
                    "captioned {} of the {} referenced tiles (tile ids that are not the scene's, or tiles without valid pixels?)",
                    hyps.len(),
                    self.count
                ),
            });
        }
        let b = bleu(&hyps, &refs);
        let (c, _) = cider(&hyps, &refs);
        let mut metrics = Map::new();
        metrics.insert("bleu4".into(), b[3].into());
        metrics.insert("cider".into(), c.into());
        metrics.insert("tiles_evaluated".into(), hyps.len().into());
        Ok(Scored {
            metrics,
            headline: "cider",
            tiles: run.report["tiles_captioned"].as_u64().unwrap_or(0) as usize,
            seconds: run.report["tiles_seconds"].as_f64().unwrap_or(0.0),
            predictions: Predictions::Texts(lines.into_iter().map(|c| c.caption).collect()),
            confusion: None,
            curves: Vec::new(),
            rows,
        })
    }
}
