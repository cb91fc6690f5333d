//! Model packages on disk: a folder with `model.toml` and the files it names, or a bare ONNX
//! file carrying Deepness metadata ([`super::deepness`]); file hashing for cache keys.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{Manifest, ModelError};
use crate::runtime::{create_session, ModelSession, Runtime, SessionOptions};

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

/// A package folder with `model.toml`, or a bare ONNX file with Deepness metadata.
///
/// # Errors
/// As for [`ModelPackage::load`] and [`super::deepness::package_from_onnx`].
pub fn load_package(runtime: &Runtime, path: &Path) -> Result<ModelPackage, ModelError> {
    if path.is_file() {
        return super::deepness::package_from_onnx(runtime, path);
    }
    if path.is_dir() && !path.join("model.toml").exists() {
        let onnx: Vec<_> = std::fs::read_dir(path)
            .map_err(|e| ModelError::Package {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "onnx"))
            .collect();
        if let [one] = onnx.as_slice() {
            return super::deepness::package_from_onnx(runtime, one);
        }
    }
    ModelPackage::load(path)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
