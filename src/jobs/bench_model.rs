//! `tessera bench-model`: model-only throughput of a package's image graph on a device, with
//! batches already in memory (no reading, no preprocessing), so end-to-end efficiency can be
//! computed against it in the same run.

use std::path::PathBuf;
use std::time::Instant;

use ndarray::Array4;
use serde::Serialize;

use super::PipelineError;
use crate::models::registry::{self, TimedGraph};
use crate::models::ModelError;
use crate::runtime::{Runtime, SessionOptions};

/// What `tessera bench-model` does.
#[derive(Debug)]
pub struct BenchModelJob {
    pub model: PathBuf,
    pub ort_lib: Option<PathBuf>,
    pub session: SessionOptions,
    pub batch_size: usize,
    pub iterations: usize,
    pub warmup: usize,
}

/// What it measured.
#[derive(Debug, Serialize)]
pub struct BenchModelReport {
    pub model: String,
    pub family: String,
    pub provider: String,
    pub fallback: Option<String>,
    pub input_size: usize,
    pub batch_size: usize,
    pub iterations: usize,
    pub seconds: f64,
    pub images_per_second: f64,
    pub ms_per_batch: f64,
}

/// A deterministic pseudo-random batch in the normalised range (no RNG dependency).
fn batch(b: usize, size: usize) -> Array4<f32> {
    let mut state = 0x9e37_79b9_u32;
    Array4::from_shape_fn((b, 3, size, size), |_| {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        (state as f32 / u32::MAX as f32) * 4.0 - 2.0
    })
}

/// Run the benchmark on the image graph of a package whose family `bench-model` times (see
/// [`crate::models::registry::ModelFamily::load_timed`]).
///
/// # Errors
/// A package of another family, a prompted model, or inference failure.
pub fn run_bench_model(job: BenchModelJob) -> Result<BenchModelReport, PipelineError> {
    let runtime = Runtime::load(job.ort_lib.as_deref())?;
    let package = crate::models::load_package(runtime, &job.model)?;
    let family = package.manifest.family.clone();
    let b = job.batch_size.max(1);
    let graph = match registry::family(&family) {
        Some(f) => f.load_timed(runtime, &job.model, &job.session),
        None => Err(ModelError::Unsupported(registry::not_timed(&family))),
    };
    let TimedGraph {
        provider,
        fallback,
        input_size: size,
        mut run,
    } = graph.map_err(|e| match e {
        // The package named: a family bench-model does not time says only why.
        ModelError::Unsupported(reason) => {
            PipelineError::Unsupported(format!("{}: {reason}", job.model.display()))
        }
        e => PipelineError::from(e),
    })?;
    crate::options::check_batch_bytes(b, size)?;
    let provider = provider.to_string();
    tracing::info!(model = %job.model.display(), %provider, input_size = size, "model loaded");
    let mut run = move |x: &Array4<f32>| run(x).map_err(PipelineError::from);
    let input = batch(b, size);
    for _ in 0..job.warmup {
        run(&input)?;
    }
    let iterations = job.iterations.max(1);
    let start = Instant::now();
    for _ in 0..iterations {
        run(&input)?;
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(BenchModelReport {
        model: job.model.display().to_string(),
        family,
        provider,
        fallback,
        input_size: size,
        batch_size: b,
        iterations,
        seconds,
        images_per_second: (b * iterations) as f64 / seconds,
        ms_per_batch: seconds * 1000.0 / iterations as f64,
    })
}
