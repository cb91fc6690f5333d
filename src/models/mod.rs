//! Model packages and model families.
//!
//! A model package is a folder: ONNX graph(s), a `tokenizer.json` where text is involved, and
//! a manifest `model.toml` naming the family, the graphs, their input and output names,
//! preprocessing, tokenizer settings and score scaling. One file per family implements it
//! ([`clip`] today). [`check_package`] validates a package and reports every problem at once.

pub mod clip;
pub mod decoder;
pub mod deepness;
pub mod detection;
mod manifest;
mod package;
pub mod preprocess;
pub mod segmentation;
pub mod staging;
pub mod tokenizer;

pub use manifest::{
    DecoderSpec, DetectionSpec, EmbedSpec, GenerationSpec, GraphSpec, ImageSpec, InputType,
    Manifest, Preprocess, PromptSpec, PromptedSpec, Scores, SegmentationSpec, TextSpec, TilingSpec,
    TokenizerSpec,
};

pub(crate) use package::hex;
pub use package::{load_package, ModelPackage};
pub use preprocess::{ImageElement, Normalizer};
pub use staging::StagedBatch;
pub use tokenizer::{tokenize_prompts, Tokens};

use std::path::Path;

use thiserror::Error;

use crate::runtime::{Runtime, RuntimeError, SessionOptions};

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
}

/// Everything wrong with a package, as a list (empty when it is valid). Loads every graph on
/// the CPU to check its inputs and outputs against the manifest.
pub fn check_package(runtime: &Runtime, dir: &Path) -> Vec<String> {
    let package = match load_package(runtime, dir) {
        Ok(p) => p,
        Err(e) => return vec![e.to_string()],
    };
    match package.manifest.family.as_str() {
        "clip" => clip::check(runtime, &package),
        "image-text-decoder" => decoder::check(runtime, &package),
        "segmenter" => {
            match segmentation::SegmentationModel::load(runtime, dir, &SessionOptions::default()) {
                Ok(_) => Vec::new(),
                Err(ModelError::Invalid { problems, .. }) => problems,
                Err(e) => vec![e.to_string()],
            }
        }
        "detector" => {
            match detection::DetectorModel::load(runtime, dir, &SessionOptions::default()) {
                Ok(_) => Vec::new(),
                Err(ModelError::Invalid { problems, .. }) => problems,
                Err(e) => vec![e.to_string()],
            }
        }
        other => vec![format!(
            "unknown model family '{other}' (known: clip, image-text-decoder, segmenter, detector)"
        )],
    }
}
