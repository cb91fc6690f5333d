//! `tessera bench-model`: model-only throughput of a package's image graph on a device, with
//! batches already in memory (no reading, no preprocessing), so end-to-end efficiency can be
//! computed against it in the same run.

use std::path::PathBuf;
use std::time::Instant;

use ndarray::Array4;
use serde::Serialize;

use super::PipelineError;
use crate::models::clip::ClipModel;
use crate::models::detection::DetectorModel;
use crate::models::segmentation::SegmentationModel;
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

/// One timed call of the model on a batch.
type RunBatch = Box<dyn FnMut(&Array4<f32>) -> Result<(), PipelineError>>;

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

/// Run the benchmark on the image graph of a CLIP, segmenter or (closed-set) detector package.
///
/// # Errors
/// A package of another family, a prompted model, or inference failure.
pub fn run_bench_model(job: BenchModelJob) -> Result<BenchModelReport, PipelineError> {
    let runtime = Runtime::load(job.ort_lib.as_deref())?;
    let package = crate::models::segmentation::load_package(runtime, &job.model)?;
    let family = package.manifest.family.clone();
    let b = job.batch_size.max(1);
    let (size, provider, fallback, mut run): (usize, String, Option<String>, RunBatch) =
        match family.as_str() {
            "clip" => {
                let mut m = ClipModel::load(runtime, &job.model, &job.session)?;
                let (p, f) = m.image_provider();
                let (p, f) = (p.to_string(), f.map(str::to_string));
                (m.input_size(), p, f, {
                    // uint8-input packages are timed on byte batches, as classify feeds
                    // them (made once from the float batch, outside the timing).
                    let mut bytes: Option<Array4<u8>> = None;
                    Box::new(move |x: &Array4<f32>| {
                        let r = if m.takes_bytes() {
                            let b = bytes.get_or_insert_with(|| {
                                x.mapv(|v| (v.abs() * 64.0).min(255.0) as u8)
                            });
                            m.encode_images(b.view())
                        } else {
                            m.encode_images(x.view())
                        };
                        r.map(|_| ()).map_err(PipelineError::from)
                    })
                })
            }
            "segmenter" => {
                let mut m = SegmentationModel::load(runtime, &job.model, &job.session)?;
                if m.is_prompted() {
                    return Err(PipelineError::Unsupported(
                        "bench-model does not time text-prompted models".into(),
                    ));
                }
                let (p, f) = m.provider();
                let (p, f) = (p.to_string(), f.map(str::to_string));
                (
                    m.input_size(),
                    p,
                    f,
                    Box::new(move |x: &Array4<f32>| {
                        m.predict(x.view()).map(|_| ()).map_err(PipelineError::from)
                    }),
                )
            }
            "detector" => {
                let mut m = DetectorModel::load(runtime, &job.model, &job.session)?;
                if m.is_prompted() {
                    return Err(PipelineError::Unsupported(
                        "bench-model does not time open-vocabulary detectors".into(),
                    ));
                }
                let (p, f) = m.provider();
                let (p, f) = (p.to_string(), f.map(str::to_string));
                (
                    m.input_size(),
                    p,
                    f,
                    Box::new(move |x: &Array4<f32>| {
                        m.detect(x.view(), 1.0)
                            .map(|_| ())
                            .map_err(PipelineError::from)
                    }),
                )
            }
            other => {
                return Err(PipelineError::Unsupported(format!(
                    "bench-model times clip, segmenter and detector packages, not '{other}'"
                )))
            }
        };
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
