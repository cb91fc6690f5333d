//! Model packages and model families.
//!
//! A model package is a folder: ONNX graph(s), a `tokenizer.json` where text is involved, and
//! a manifest `model.toml` naming the family, the graphs, their input and output names,
//! preprocessing, tokenizer settings and score scaling. One file per family implements it
//! ([`clip`], [`decoder`], [`segmentation`], [`detection`], [`promptable`]), listed once in [`registry`];
//! the plumbing they share has files of its own ([`package`], [`tokenizer`], [`preprocess`],
//! [`staging`]). [`check_package`] validates a package and reports every problem at once.

pub mod chinese_clip;
pub mod clip;
pub mod cross_decoder;
pub mod decoder;
pub mod deepness;
pub mod detection;
pub mod dual_encoder;
pub mod flava;
pub mod grounding;
pub mod import;
mod manifest;
pub mod openclip;
pub mod package;
pub mod preprocess;
pub mod promptable;
pub mod registry;
pub mod segmentation;
pub mod siglip;
pub mod staging;
pub mod task_prompts;
pub mod tokenizer;

pub use manifest::{
    DecoderSpec, DetectionSpec, EmbedSpec, GenerationSpec, GraphSpec, ImageSpec, InputType,
    KvCache, Manifest, ManifestCommon, Precision, Preprocess, PromptSpec, PromptedSpec,
    PromptsSpec, Scores, Sections, SegmentationSpec, TextSpec, TilingSpec, TokenizerSpec,
};

pub(crate) use package::hex;
pub use package::{load_package, ModelPackage};
pub use preprocess::{ImageElement, Normalizer};
pub use staging::StagedBatch;
pub use tokenizer::{tokenize_prompts, Tokens};

use std::path::Path;

use thiserror::Error;

use crate::runtime::{Runtime, RuntimeError};

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ModelError {
    #[error("{path}: {reason}")]
    Package { path: String, reason: String },
    #[error("{path}: invalid model package: {}", problems.join("; "))]
    Invalid { path: String, problems: Vec<String> },
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("{path}: tokenizer: {reason}")]
    Tokenizer { path: String, reason: String },
    #[error("{path}: {reason}")]
    Input { path: String, reason: String },
    /// A package of a family that does not serve the task at hand.
    #[error("{path} is a '{family}' model; a {task} stage needs a {wanted} model")]
    WrongFamily {
        path: String,
        family: String,
        task: crate::task::Task,
        /// The families that would, quoted: `'clip'` or `'clip' or 'siglip'`.
        wanted: String,
    },
    /// A package used as a refiner (promptable segmenter) that is of another family.
    #[error(
        "{path} is a '{family}' model, not a promptable segmenter: a refiner needs a \
         'promptable-segmenter' package (SAM: export.py sam)"
    )]
    NotPromptable { path: String, family: String },
    /// Something a family or package does not do (the reason says what).
    #[error("{0}")]
    Unsupported(String),
}

/// An inference failure of the graph at `path`.
pub(crate) fn run_err(path: &Path, e: impl std::fmt::Display) -> ModelError {
    ModelError::Runtime(RuntimeError::Run {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Everything wrong with a package, as a list (empty when it is valid). Loads every graph on
/// the CPU to check its inputs and outputs against the manifest.
pub fn check_package(runtime: &Runtime, dir: &Path) -> Vec<String> {
    inspect_package(runtime, dir).problems
}

/// What `models check` reports of a package: its problems (empty when it is valid) and, when
/// its manifest parses, its family and precision.
#[derive(Clone, Debug)]
pub struct PackageCheck {
    pub problems: Vec<String>,
    pub family: Option<String>,
    pub precision: Option<Precision>,
}

/// [`check_package`], with the family and precision of a package whose manifest parses.
pub fn inspect_package(runtime: &Runtime, dir: &Path) -> PackageCheck {
    let package = match load_package(runtime, dir) {
        Ok(p) => p,
        Err(e) => {
            return PackageCheck {
                problems: vec![e.to_string()],
                family: None,
                precision: None,
            }
        }
    };
    let problems = match registry::family(&package.manifest.family) {
        Some(family) => family.check(runtime, &package),
        None => vec![registry::unknown_family(&package.manifest.family)],
    };
    PackageCheck {
        problems,
        family: Some(package.manifest.family.clone()),
        precision: Some(package.manifest.precision),
    }
}

/// The batch size to run a graph with: `requested`, unless the graph's batch axis is fixed
/// (`fixed`), which then wins (logged, when it differs).
pub fn graph_batch_size(requested: usize, fixed: Option<usize>, model: &std::path::Path) -> usize {
    match fixed {
        Some(f) if f != requested => {
            tracing::info!(
                model = %model.display(),
                requested,
                batch_size = f,
                "the model's batch axis is fixed: batch size {f} instead of {requested}"
            );
            f
        }
        _ => requested,
    }
}
