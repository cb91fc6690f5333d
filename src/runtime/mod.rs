//! Model runtime: finding and loading ONNX Runtime, and reporting what it offers.
//!
//! ONNX Runtime is loaded at run time (ort's `load-dynamic`), so one tessera binary works with
//! the CPU library from PyPI's `onnxruntime` wheel or a CUDA/TensorRT build. The library is
//! looked for, in order, at `--ort-lib`, `ORT_DYLIB_PATH`, the project's own setup location
//! (`.tessera/ort/` in the source tree, written by `make setup`), and next to the executable.
//! Every `ort` call of the crate goes through this module (and the model families built on it),
//! since ort's API moves between release candidates.

mod session;

pub use session::{
    create_session, create_session_from_memory, BindingMemory, Device, ModelSession,
    SessionOptions, TensorSpec,
};

use std::ffi::CStr;
use std::path::{Path, PathBuf};

use serde::Serialize;
use thiserror::Error;

/// ONNX Runtime version the project sets up and is tested with.
pub const ORT_VERSION: &str = "1.31.1";

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RuntimeError {
    #[error("ONNX Runtime library not found (looked at {tried}); run `make setup` in the tessera source tree, or get libonnxruntime.so.{ORT_VERSION} from the PyPI wheel onnxruntime=={ORT_VERSION} (pip download --no-deps onnxruntime=={ORT_VERSION}; unzip; onnxruntime/capi/) and pass --ort-lib PATH or set ORT_DYLIB_PATH")]
    NotFound { tried: String },
    #[error("{path}: cannot load ONNX Runtime: {reason}")]
    Load { path: String, reason: String },
    #[error("ONNX Runtime: {0}")]
    Ort(String),
    #[error("{path}: cannot load model: {reason}")]
    Model { path: String, reason: String },
    #[error(
        "--device {device}: {reason} (pass --allow-fallback to run on the next available provider)"
    )]
    Provider { device: String, reason: String },
    #[error("{path}: inference failed: {reason}")]
    Run { path: String, reason: String },
}

/// Where the library was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LibrarySource {
    Flag,
    Environment,
    ProjectSetup,
    NextToExecutable,
}

impl std::fmt::Display for LibrarySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LibrarySource::Flag => "--ort-lib",
            LibrarySource::Environment => "ORT_DYLIB_PATH",
            LibrarySource::ProjectSetup => "project setup (.tessera/ort)",
            LibrarySource::NextToExecutable => "next to the executable",
        })
    }
}

/// A located ONNX Runtime library.
#[derive(Clone, Debug, Serialize)]
pub struct OrtLibrary {
    pub path: PathBuf,
    pub source: LibrarySource,
}

/// The loaded runtime.
#[derive(Clone, Debug, Serialize)]
pub struct RuntimeInfo {
    pub library: OrtLibrary,
    pub version: String,
    pub build_info: String,
    /// Execution providers compiled into the loaded library (CPUExecutionProvider,
    /// CUDAExecutionProvider, ...). A listed GPU provider may still fail to load at session
    /// creation when its CUDA libraries are missing.
    pub providers: Vec<String>,
}

const LIB_NAMES: [&str; 3] = [
    "libonnxruntime.so.1.31.1",
    "libonnxruntime.so.1",
    "libonnxruntime.so",
];

/// The project's setup directory, baked in at build time (the source tree of this binary).
fn project_setup_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".tessera")
        .join("ort")
}

/// Find the library: `flag`, then `ORT_DYLIB_PATH`, then the project setup, then next to the
/// executable.
///
/// # Errors
/// [`RuntimeError::NotFound`] listing every place looked at; a flag or variable naming a
/// missing file is an error rather than skipped.
pub fn locate(flag: Option<&Path>) -> Result<OrtLibrary, RuntimeError> {
    if let Some(p) = flag {
        return existing(p, LibrarySource::Flag);
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|v| !v.is_empty()) {
        return existing(Path::new(&p), LibrarySource::Environment);
    }
    let mut tried = Vec::new();
    let setup = project_setup_dir();
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf));
    let mut candidates: Vec<(PathBuf, LibrarySource)> = LIB_NAMES
        .iter()
        .map(|n| (setup.join(n), LibrarySource::ProjectSetup))
        .collect();
    if let Some(dir) = exe_dir {
        for sub in [dir.clone(), dir.join("lib")] {
            candidates.extend(
                LIB_NAMES
                    .iter()
                    .map(|n| (sub.join(n), LibrarySource::NextToExecutable)),
            );
        }
    }
    for (path, source) in candidates {
        if path.is_file() {
            return Ok(OrtLibrary { path, source });
        }
        tried.push(path.display().to_string());
    }
    Err(RuntimeError::NotFound {
        tried: format!("--ort-lib, ORT_DYLIB_PATH, {}", tried.join(", ")),
    })
}

fn existing(path: &Path, source: LibrarySource) -> Result<OrtLibrary, RuntimeError> {
    if path.is_file() {
        Ok(OrtLibrary {
            path: path.to_path_buf(),
            source,
        })
    } else {
        Err(RuntimeError::Load {
            path: path.display().to_string(),
            reason: format!("no such file (given by {source})"),
        })
    }
}

/// The process-wide ONNX Runtime environment. Keep it alive while sessions exist.
///
/// It holds the one operator thread pool (one thread per core) that every session without
/// its own thread count runs on. Per-session pools made a model of several graphs (vision
/// encoder, text encoder, decoder, beam reorder) keep a spinning worker per graph, which took
/// cores from the graph running: one pool made `tessera caption` with Florence-2 (mid shape,
/// batch 16, 3 beams) about 1.4x faster on 2 cores (bench/caption_profile.md).
pub struct Runtime {
    pub info: RuntimeInfo,
    env: ort::environment::Environment,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("info", &self.info).finish()
    }
}

impl Runtime {
    /// The ONNX Runtime environment sessions are created in.
    pub fn environment(&self) -> &ort::environment::Environment {
        &self.env
    }

    /// Locate and load ONNX Runtime. ONNX Runtime allows one environment per process: the
    /// first successful load is kept and returned by later calls.
    ///
    /// # Errors
    /// Not found, not loadable (wrong file, wrong architecture), or too old for ort; a later
    /// call naming a different library than the one loaded.
    pub fn load(flag: Option<&Path>) -> Result<&'static Runtime, RuntimeError> {
        static RUNTIME: std::sync::OnceLock<Runtime> = std::sync::OnceLock::new();
        static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _guard = INIT
            .lock()
            .map_err(|_| RuntimeError::Ort("runtime initialisation panicked".into()))?;
        if let Some(rt) = RUNTIME.get() {
            if let Some(p) = flag {
                if p != rt.info.library.path {
                    return Err(RuntimeError::Load {
                        path: p.display().to_string(),
                        reason: format!(
                            "{} is already loaded in this process",
                            rt.info.library.path.display()
                        ),
                    });
                }
            }
            return Ok(rt);
        }
        let rt = Self::load_new(flag)?;
        Ok(RUNTIME.get_or_init(|| rt))
    }

    fn load_new(flag: Option<&Path>) -> Result<Runtime, RuntimeError> {
        let library = locate(flag)?;
        let load_err = |reason: String| RuntimeError::Load {
            path: library.path.display().to_string(),
            reason,
        };
        let env = ort::init_from(&library.path)
            .map_err(|e| load_err(e.to_string()))?
            .with_name("tessera")
            .with_global_thread_pool(ort::environment::GlobalThreadPoolOptions::default())
            .build()
            .map_err(|e| RuntimeError::Ort(e.to_string()))?;
        let build_info = ort::info().to_string();
        let version = parse_version(&build_info)
            .or_else(|| version_from_file_name(&library.path))
            // A `libonnxruntime.so` symlink: the versioned file it points at.
            .or_else(|| {
                std::fs::canonicalize(&library.path)
                    .ok()
                    .and_then(|p| version_from_file_name(&p))
            })
            .unwrap_or_else(|| "unknown".into());
        Ok(Runtime {
            info: RuntimeInfo {
                library,
                version,
                build_info,
                providers: available_providers()?,
            },
            env,
        })
    }
}

/// `ORT Build Info: git-branch=rel-1.31.1, ...` -> `1.31.1`.
fn parse_version(build_info: &str) -> Option<String> {
    let start = build_info.find("git-branch=rel-")? + "git-branch=rel-".len();
    let rest = &build_info[start..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    (end > 0).then(|| rest[..end].to_string())
}

fn version_from_file_name(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let v = name.strip_prefix("libonnxruntime.so.")?;
    (v.split('.').count() == 3).then(|| v.to_string())
}

fn available_providers() -> Result<Vec<String>, RuntimeError> {
    let api = ort::api();
    let mut list: *mut *mut std::ffi::c_char = std::ptr::null_mut();
    let mut n: std::ffi::c_int = 0;
    // SAFETY: documented C API; on success `list` holds `n` NUL-terminated strings that we copy
    // before releasing them with the matching call.
    unsafe {
        let status = (api.GetAvailableProviders)(&mut list, &mut n);
        if !status.0.is_null() {
            (api.ReleaseStatus)(status.0);
            return Err(RuntimeError::Ort("GetAvailableProviders failed".into()));
        }
        let mut out = Vec::with_capacity(n.max(0) as usize);
        for i in 0..n.max(0) as usize {
            let p = *list.add(i);
            if !p.is_null() {
                out.push(CStr::from_ptr(p).to_string_lossy().into_owned());
            }
        }
        let status = (api.ReleaseAvailableProviders)(list, n);
        if !status.0.is_null() {
            (api.ReleaseStatus)(status.0);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_from_build_info() {
        let info = "ORT Build Info: git-branch=rel-1.31.1, git-commit-id=abc, build type=Release";
        assert_eq!(parse_version(info).as_deref(), Some("1.31.1"));
        assert_eq!(parse_version("nothing"), None);
        assert_eq!(
            version_from_file_name(Path::new("/x/libonnxruntime.so.1.31.1")).as_deref(),
            Some("1.31.1")
        );
    }

    #[test]
    fn a_flag_naming_a_missing_file_is_an_error() {
        let err = locate(Some(Path::new("/nonexistent/libonnxruntime.so"))).expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/libonnxruntime.so"));
    }
}
