//! The per-task evaluators, in one list. An evaluator checks the labelled data of its task
//! and prepares it ([`TaskEvaluator::prepare`]), builds and runs the task's ordinary job for
//! one model inside the worker process ([`TaskEvaluator::run_model`]), and scores that run's
//! outputs against the labels ([`Prepared::score`]). To add a task's evaluation: one file in
//! `src/eval/` with a unit struct implementing [`TaskEvaluator`], and one line in
//! [`EVALUATORS`].

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::EvalError;
use crate::options::{EvalOptions, JobContext, SceneJobBase};
use crate::task::Task;

/// One task's evaluation.
pub trait TaskEvaluator: Sync {
    /// The task it evaluates (`--task`).
    fn task(&self) -> Task;

    /// Check the data options (every missing file, absent field, empty folder is an error
    /// here, before any model runs) and prepare what every model runs on in `work` (a
    /// scratch folder removed afterwards).
    ///
    /// # Errors
    /// Unusable data, with the file or option named.
    fn prepare(&self, opts: &EvalOptions, work: &Path) -> Result<Box<dyn Prepared>, EvalError>;

    /// In the worker process: build the task's job for `base` (its model is the one to run;
    /// the evaluator sets its scene: the user's, or a mosaic of the chips it lays in `out`'s
    /// folder) writing into `out`, run it and return its report as JSON. `work` is the
    /// folder `prepare` wrote into.
    ///
    /// # Errors
    /// The job's error.
    fn run_model(
        &self,
        opts: &EvalOptions,
        base: SceneJobBase,
        work: &Path,
        out: PathBuf,
        ctx: &JobContext,
    ) -> Result<Value, EvalError>;
}

/// The prepared data of one evaluation, shared by every model.
pub trait Prepared {
    /// What the data is, for the table's header ("42 chips in 3 classes from data/eurosat").
    fn describe(&self) -> String;

    /// Score one model's run.
    ///
    /// # Errors
    /// Outputs that cannot be read or do not match the data.
    fn score(&self, run: &ModelRun) -> Result<Scored, EvalError>;
}

/// One model's finished run, as the worker left it.
#[derive(Debug)]
pub struct ModelRun {
    /// The package as given.
    pub model: PathBuf,
    /// The folder the task's job wrote its outputs into.
    pub out: PathBuf,
    /// The job's report (its `--json` form).
    pub report: Value,
}

/// What scoring one model gave.
#[derive(Debug, Default)]
pub struct Scored {
    /// Metrics under the names of `eval.json` (`top1`, `miou`, `iou` as an object of classes,
    /// ...), and any task-specific detail (`per_class`, `confusion`).
    pub metrics: Map<String, Value>,
    /// The metric the charts and the table's first column use (`top1`, `miou`, `cider`,
    /// `map_50`).
    pub headline: &'static str,
    /// Units evaluated (tiles, chips) and the seconds the job spent on them, loading
    /// excluded: `tiles_per_second` is their ratio.
    pub tiles: usize,
    pub seconds: f64,
    /// Per-unit predictions, in the data's order, for the agreement with the first model.
    pub predictions: Predictions,
    /// Confusion matrix (rows: truth, columns: prediction) with its class names.
    pub confusion: Option<Confusion>,
    /// Precision-recall curves (detection), one per class.
    pub curves: Vec<PrCurve>,
    /// One JSON object per evaluated unit (its key, truth, prediction, scores), written as
    /// `predictions_N.jsonl` for error analysis and for checking the metrics elsewhere.
    pub rows: Vec<Value>,
}

/// Per-unit predictions of a model.
#[derive(Debug, Default, Clone, PartialEq)]
pub enum Predictions {
    #[default]
    None,
    /// A class index per tile (classification) or per pixel (segmentation).
    Classes(Vec<u32>),
    /// A text per tile (captions), or any per-tile signature (detection: its boxes).
    Texts(Vec<String>),
}

impl Predictions {
    /// Fraction of units where `self` and `other` predict the same (`None` when they are of
    /// different kinds or lengths, or empty).
    pub fn agreement(&self, other: &Predictions) -> Option<f64> {
        fn frac<T: PartialEq>(a: &[T], b: &[T]) -> Option<f64> {
            if a.len() != b.len() || a.is_empty() {
                return None;
            }
            let same = a.iter().zip(b).filter(|(x, y)| x == y).count();
            Some(same as f64 / a.len() as f64)
        }
        match (self, other) {
            (Predictions::Classes(a), Predictions::Classes(b)) => frac(a, b),
            (Predictions::Texts(a), Predictions::Texts(b)) => frac(a, b),
            _ => None,
        }
    }
}

/// A confusion matrix: `counts[truth][predicted]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Confusion {
    pub classes: Vec<String>,
    pub counts: Vec<Vec<u64>>,
}

/// A precision-recall curve of one class: points in order of decreasing score threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct PrCurve {
    pub class: String,
    pub recall: Vec<f64>,
    pub precision: Vec<f64>,
}

/// Every task's evaluator.
pub static EVALUATORS: &[&dyn TaskEvaluator] = &[
    &super::classify::ClassifyEval,
    &super::detect::DetectEval,
    &super::segment::SegmentEval,
    &super::caption::CaptionEval,
];

/// The evaluator of `task`.
///
/// # Errors
/// No evaluator for the task yet.
pub fn evaluator(task: Task) -> Result<&'static dyn TaskEvaluator, EvalError> {
    EVALUATORS
        .iter()
        .copied()
        .find(|e| e.task() == task)
        .ok_or_else(|| {
            let have: Vec<&str> = EVALUATORS.iter().map(|e| e.task().name()).collect();
            EvalError::Option(crate::options::InvalidOption::new(
                "task",
                format!(
                    "{} cannot be evaluated yet (evaluated: {})",
                    task.name(),
                    have.join(", ")
                ),
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agreement_is_the_fraction_of_equal_units() {
        let a = Predictions::Classes(vec![0, 1, 2, 3]);
        let b = Predictions::Classes(vec![0, 1, 0, 0]);
        assert_eq!(a.agreement(&b), Some(0.5));
        assert_eq!(a.agreement(&a), Some(1.0));
        let t = Predictions::Texts(vec!["x".into()]);
        assert_eq!(a.agreement(&t), None);
        assert_eq!(a.agreement(&Predictions::Classes(vec![0])), None);
    }
}
