//! ONNX Runtime sessions: the one place sessions are created, with the execution provider the
//! user asked for (`--device cpu|cuda[:N]|tensorrt[:N]`).
//!
//! A requested GPU provider that cannot load is an error naming the reason, unless
//! `--allow-fallback` is given, in which case the next provider is tried (TensorRT -> CUDA ->
//! CPU) and the fallback is recorded. Providers are registered with ort's `error_on_failure`,
//! so ONNX Runtime never falls back to CPU silently; the provider each session really runs on
//! is reported.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ort::ep::{ExecutionProviderDispatch, TensorRT, CUDA};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::{TensorElementType, ValueType};
use serde::Serialize;

use super::{Runtime, RuntimeError};

/// Where a model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "id")]
pub enum Device {
    Cpu,
    Cuda(i32),
    TensorRt(i32),
}

impl FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, id) = match s.split_once(':') {
            Some((k, n)) => (
                k,
                n.parse::<i32>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| format!("device index '{n}' is not a whole number"))?,
            ),
            None => (s, 0),
        };
        match kind.to_ascii_lowercase().as_str() {
            "cpu" if !s.contains(':') => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda(id)),
            "tensorrt" | "trt" => Ok(Device::TensorRt(id)),
            _ => Err(format!(
                "unknown device '{s}': use cpu, cuda[:N] or tensorrt[:N]"
            )),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
            Device::TensorRt(n) => write!(f, "tensorrt:{n}"),
        }
    }
}

impl Device {
    /// A sensible default batch size for this device.
    pub fn default_batch_size(&self) -> usize {
        match self {
            Device::Cpu => 16,
            Device::Cuda(_) | Device::TensorRt(_) => 256,
        }
    }
}

/// How sessions are created.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    pub device: Device,
    pub allow_fallback: bool,
    /// Threads inside each operator: `None` runs on the process's one shared pool (one thread
    /// per core, see [`crate::runtime::Runtime`]); `Some(n)` gives the session its own pool.
    pub intra_threads: Option<usize>,
    /// TensorRT engine cache folder.
    pub trt_cache: Option<PathBuf>,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            device: Device::Cpu,
            allow_fallback: false,
            intra_threads: None,
            trt_cache: None,
        }
    }
}

/// A loaded model graph and the provider it really runs on.
pub struct ModelSession {
    pub session: Session,
    pub path: PathBuf,
    /// The execution provider in use: `CPUExecutionProvider`, `CUDAExecutionProvider`, ...
    pub provider: &'static str,
    /// Why the requested provider was not used, when a fallback happened.
    pub fallback: Option<String>,
}

impl ModelSession {
    /// The CUDA device this session runs on (its provider is CUDA or TensorRT, on the device
    /// `options` asked for), or `None` on the CPU (also after a fallback).
    pub fn cuda_device(&self, options: &SessionOptions) -> Option<i32> {
        match (self.provider, options.device) {
            (
                "CUDAExecutionProvider" | "TensorrtExecutionProvider",
                Device::Cuda(n) | Device::TensorRt(n),
            ) => Some(n),
            _ => None,
        }
    }
}

/// Where I/O-bound values live: host memory, and the memory of the CUDA device a session runs
/// on (host memory again on the CPU), so outputs can stay on the GPU between graphs.
#[derive(Debug)]
pub struct BindingMemory {
    pub host: ort::memory::MemoryInfo<'static>,
    pub device: ort::memory::MemoryInfo<'static>,
}

impl BindingMemory {
    /// Host memory and CUDA device `cuda`'s memory (`None`: host memory twice).
    ///
    /// # Errors
    /// ONNX Runtime refusing the memory description.
    pub fn new(cuda: Option<i32>) -> ort::Result<BindingMemory> {
        use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
        let host = MemoryInfo::new(
            AllocationDevice::CPU,
            0,
            AllocatorType::Device,
            MemoryType::Default,
        )?;
        let device = match cuda {
            Some(id) => MemoryInfo::new(
                AllocationDevice::CUDA,
                id,
                AllocatorType::Device,
                MemoryType::Default,
            )?,
            None => host.clone(),
        };
        Ok(BindingMemory { host, device })
    }
}

impl fmt::Debug for ModelSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelSession")
            .field("path", &self.path)
            .field("provider", &self.provider)
            .finish()
    }
}

/// One input or output of a graph: name, element type and shape (-1 for dynamic dims).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<i64>,
}

fn spec_of(name: &str, ty: &ValueType) -> TensorSpec {
    TensorSpec {
        name: name.to_string(),
        dtype: ty
            .tensor_type()
            .map_or_else(|| "non-tensor".to_string(), dtype_name),
        shape: ty.tensor_shape().map(|s| s.to_vec()).unwrap_or_default(),
    }
}

fn dtype_name(t: TensorElementType) -> String {
    match t {
        TensorElementType::Float32 => "float32".into(),
        TensorElementType::Float16 => "float16".into(),
        TensorElementType::Float64 => "float64".into(),
        TensorElementType::Int64 => "int64".into(),
        TensorElementType::Int32 => "int32".into(),
        TensorElementType::Uint8 => "uint8".into(),
        TensorElementType::Int8 => "int8".into(),
        TensorElementType::Bool => "bool".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

impl ModelSession {
    pub fn inputs(&self) -> Vec<TensorSpec> {
        self.session
            .inputs()
            .iter()
            .map(|o| spec_of(o.name(), o.dtype()))
            .collect()
    }

    pub fn outputs(&self) -> Vec<TensorSpec> {
        self.session
            .outputs()
            .iter()
            .map(|o| spec_of(o.name(), o.dtype()))
            .collect()
    }
}

fn provider_chain(options: &SessionOptions) -> Vec<(&'static str, ExecutionProviderDispatch)> {
    let mut chain = Vec::new();
    match options.device {
        Device::Cpu => {}
        Device::TensorRt(id) => {
            let mut trt = TensorRT::default().with_device_id(id);
            if let Some(dir) = &options.trt_cache {
                trt = trt
                    .with_engine_cache(true)
                    .with_engine_cache_path(dir.display());
            }
            chain.push(("TensorrtExecutionProvider", trt.build().error_on_failure()));
            chain.push((
                "CUDAExecutionProvider",
                CUDA::default()
                    .with_device_id(id)
                    .build()
                    .error_on_failure(),
            ));
        }
        Device::Cuda(id) => chain.push((
            "CUDAExecutionProvider",
            CUDA::default()
                .with_device_id(id)
                .build()
                .error_on_failure(),
        )),
    }
    chain
}

fn build(
    runtime: &Runtime,
    path: &Path,
    bytes: Option<&[u8]>,
    options: &SessionOptions,
    ep: Option<ExecutionProviderDispatch>,
) -> Result<Session, String> {
    let mut builder = Session::builder(runtime.environment())
        .map_err(|e| e.to_string())?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(|e| e.to_string())?
        // A failed run comes back as an error that tessera reports in its one line (naming the
        // graph); ONNX Runtime's own log line for it would be a second one.
        .with_log_level(ort::logging::LogLevel::Fatal)
        .map_err(|e| e.to_string())?;
    if let Some(threads) = options.intra_threads {
        builder = builder
            .with_independent_thread_pool()
            .map_err(|e| e.to_string())?
            .with_intra_threads(threads)
            .map_err(|e| e.to_string())?;
    }
    if let Some(ep) = ep {
        builder = builder
            .with_execution_providers([ep])
            .map_err(|e| e.to_string())?;
    }
    match bytes {
        Some(b) => builder.commit_from_memory(b).map_err(|e| e.to_string()),
        None => builder.commit_from_file(path).map_err(|e| e.to_string()),
    }
}

/// Load the graph at `path` on the requested device.
///
/// # Errors
/// The file is missing or not a valid ONNX model, or the requested provider cannot load and
/// fallback is not allowed.
pub fn create_session(
    runtime: &Runtime,
    path: &Path,
    options: &SessionOptions,
) -> Result<ModelSession, RuntimeError> {
    if !path.is_file() {
        return Err(RuntimeError::Model {
            path: path.display().to_string(),
            reason: "no such file".into(),
        });
    }
    create(runtime, path, None, options)
}

/// Load a graph held in memory (`name` labels it in messages) on the requested device.
///
/// # Errors
/// As for [`create_session`].
pub fn create_session_from_memory(
    runtime: &Runtime,
    name: &str,
    bytes: &[u8],
    options: &SessionOptions,
) -> Result<ModelSession, RuntimeError> {
    create(runtime, Path::new(name), Some(bytes), options)
}

fn create(
    runtime: &Runtime,
    path: &Path,
    bytes: Option<&[u8]>,
    options: &SessionOptions,
) -> Result<ModelSession, RuntimeError> {
    let mut first_failure: Option<String> = None;
    for (name, ep) in provider_chain(options) {
        match build(runtime, path, bytes, options, Some(ep)) {
            Ok(session) => {
                return Ok(ModelSession {
                    session,
                    path: path.to_path_buf(),
                    provider: name,
                    fallback: first_failure,
                })
            }
            Err(reason) => {
                let reason = format!("{name} could not be used: {}", one_line(&reason));
                if !options.allow_fallback {
                    return Err(RuntimeError::Provider {
                        device: options.device.to_string(),
                        reason,
                    });
                }
                first_failure.get_or_insert(reason);
            }
        }
    }
    let session =
        build(runtime, path, bytes, options, None).map_err(|reason| RuntimeError::Model {
            path: path.display().to_string(),
            reason: one_line(&reason),
        })?;
    Ok(ModelSession {
        session,
        path: path.to_path_buf(),
        provider: "CPUExecutionProvider",
        fallback: first_failure,
    })
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!("cpu".parse(), Ok(Device::Cpu));
        assert_eq!("cuda".parse(), Ok(Device::Cuda(0)));
        assert_eq!("cuda:1".parse(), Ok(Device::Cuda(1)));
        assert_eq!("tensorrt:2".parse(), Ok(Device::TensorRt(2)));
        assert!("cuda:x".parse::<Device>().is_err());
        assert!("cuda:-1".parse::<Device>().is_err());
        assert!("tpu".parse::<Device>().is_err());
        assert!("cpu:1".parse::<Device>().is_err());
        assert_eq!(Device::Cuda(3).to_string(), "cuda:3");
    }
}
