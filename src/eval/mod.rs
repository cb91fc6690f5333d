//! `tessera eval`: accuracy, speed and size of model packages on labelled data, in one table.
//!
//! Flow: the task's evaluator ([`registry`]) checks the data and prepares what every model
//! runs on (a mosaic of the chips, the labels on the scene's tile grid, the references); each
//! model then runs in a child process of its own (the same command line with hidden worker
//! flags, [`run::run_worker`]) that runs the task's ordinary job and prints its report, so
//! the child's peak RSS is that model's alone; the evaluator scores the child's outputs
//! against the labels ([`Scored`]); [`record`] writes `eval.json` and `eval.md`, [`charts`]
//! the PNG charts. Nothing is left under `--out` unless everything succeeded.
//!
//! One file per task: [`classify`], [`segment`], [`caption`] (the detection evaluator is one
//! more file and one line in [`registry::EVALUATORS`]). Metrics are plain functions in
//! [`metrics`], checked against scikit-learn and pycocoevalcap in the tests.

pub mod boxes;
pub mod caption;
pub mod charts;
pub mod chips;
pub mod classify;
pub mod detect;
pub mod labels;
pub mod metrics;
pub mod record;
pub mod registry;
pub mod run;
pub mod segment;

pub use record::{EvalReport, ModelRecord};
pub use registry::{evaluator, Predictions, Prepared, Scored, TaskEvaluator};
pub use run::{run_eval, run_worker, EvalJob, WorkerJob};

use thiserror::Error;

use crate::jobs::PipelineError;
use crate::options::{InvalidOption, KeyStyle};
use crate::output::OutputError;

/// Why an evaluation could not run. Every variant names the file, folder, option or model.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum EvalError {
    /// Labelled data that cannot be used (`--chips`, `--labels`, `--references`, ...).
    #[error("{path}: {reason}")]
    Data { path: String, reason: String },
    /// A model package that this evaluation cannot take (another task, no such package).
    #[error("{path}: {reason}")]
    Model { path: String, reason: String },
    /// A bad or missing option.
    #[error("{}", .0.render(KeyStyle::Flag))]
    Option(InvalidOption),
    /// A model's run failed (its child process's error line).
    #[error("{model}: {message}")]
    Worker { model: String, message: String },
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error(transparent)]
    Raster(#[from] crate::raster::RasterError),
    /// Unusable box labels (`--coco`, `--voc`).
    #[error(transparent)]
    Boxes(#[from] boxes::LabelError),
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
}

impl From<InvalidOption> for EvalError {
    fn from(e: InvalidOption) -> EvalError {
        EvalError::Option(e)
    }
}

impl EvalError {
    pub(crate) fn data(path: &std::path::Path, reason: impl Into<String>) -> EvalError {
        EvalError::Data {
            path: path.display().to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(path: &std::path::Path, error: std::io::Error) -> EvalError {
        EvalError::Io {
            path: path.display().to_string(),
            error,
        }
    }
}
