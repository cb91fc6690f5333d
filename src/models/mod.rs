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
pub mod segmentation;

pub use manifest::{
    DecoderSpec, DetectionSpec, EmbedSpec, GenerationSpec, GraphSpec, ImageSpec, InputType,
    Manifest, Preprocess, PromptSpec, PromptedSpec, Scores, SegmentationSpec, TextSpec, TilingSpec,
    TokenizerSpec,
};

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::runtime::{create_session, ModelSession, Runtime, RuntimeError, SessionOptions};

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

/// A model package on disk with its parsed manifest.
#[derive(Clone, Debug)]
pub struct ModelPackage {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl ModelPackage {
    /// Read `dir/model.toml`.
    ///
    /// # Errors
    /// Missing folder or manifest, or a manifest that does not parse (with its line).
    pub fn load(dir: &Path) -> Result<ModelPackage, ModelError> {
        let err = |reason: String| ModelError::Package {
            path: dir.display().to_string(),
            reason,
        };
        if !dir.is_dir() {
            return Err(err("no such model package folder".into()));
        }
        let manifest_path = dir.join("model.toml");
        let text = std::fs::read_to_string(&manifest_path).map_err(|e| ModelError::Package {
            path: manifest_path.display().to_string(),
            reason: format!("cannot read the manifest: {e}"),
        })?;
        let manifest = Manifest::parse(&text).map_err(|reason| ModelError::Package {
            path: manifest_path.display().to_string(),
            reason,
        })?;
        Ok(ModelPackage {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    /// Path of a file named in the manifest.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Load one graph of the package.
    ///
    /// # Errors
    /// As for [`create_session`].
    pub fn session(
        &self,
        runtime: &Runtime,
        file: &str,
        options: &SessionOptions,
    ) -> Result<ModelSession, ModelError> {
        Ok(create_session(runtime, &self.file(file), options)?)
    }

    /// SHA-256 of the given package files, in order (for cache keys).
    ///
    /// # Errors
    /// A file that cannot be read.
    pub fn hash_files(&self, files: &[&str]) -> Result<String, ModelError> {
        let mut h = Sha256::new();
        for f in files {
            let path = self.file(f);
            let bytes = std::fs::read(&path).map_err(|e| ModelError::Package {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(&bytes);
        }
        Ok(hex(&h.finalize()))
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Everything wrong with a package, as a list (empty when it is valid). Loads every graph on
/// the CPU to check its inputs and outputs against the manifest.
pub fn check_package(runtime: &Runtime, dir: &Path) -> Vec<String> {
    let package = match segmentation::load_package(runtime, dir) {
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
