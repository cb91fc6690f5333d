//! Jobs: the library-level entry points behind each command. A job takes a validated
//! configuration, drives scene -> tiles -> (models) -> writers, and returns a serialisable
//! report; it never prints. The CLI only parses arguments into jobs and prints reports.

mod bench;
mod bench_model;
mod caption;
mod classify;
mod detect;
mod doctor;
mod driver;
pub mod feed;
mod instances;
pub mod progress;
mod report;
mod segment;
mod tiles;

pub use crate::task::TaskReport;
pub use bench::{run_bench_read, BenchReadJob, BenchReadReport};
pub use bench_model::{run_bench_model, BenchModelJob, BenchModelReport};
pub use caption::{run_caption, CaptionJob, CaptionReport, TileCaption};
pub use classify::{run_classify, ClassifyJob, ClassifyReport, TileResult, Timings};
pub use detect::{detect_with, run_detect, DetectJob, DetectOutcome, DetectReport, LoadedDetector};
pub use doctor::{run_doctor, DoctorReport};
pub use instances::{BoxSource, InstanceSpec, InstancesReport};
pub use progress::{phase, Phase, Progress};
pub use report::SceneRunReport;
pub use segment::{run_segment, SegmentJob, SegmentReport};
pub use tiles::{run_tiles, TilesJob, TilesReport};

use thiserror::Error;

use crate::options::{InvalidOption, KeyStyle};
use crate::output::OutputError;
use crate::raster::RasterError;
use crate::runtime::RuntimeError;
use crate::tiling::TilingError;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PipelineError {
    #[error(transparent)]
    Raster(#[from] RasterError),
    #[error(transparent)]
    Tiling(#[from] TilingError),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Model(#[from] crate::models::ModelError),
    /// An option value that cannot be used. Shown with command-line keys (`--tile-size`);
    /// [`PipelineError::render`] spells them for pipeline files. (Not a `#[source]`: the
    /// one-line chain would repeat the message.)
    #[error("{}", .0.render(KeyStyle::Flag))]
    InvalidOption(InvalidOption),
    /// A thread of the run stopped or panicked; `stage` names it ("model", "stitching").
    #[error("the {stage} thread {cause}")]
    Worker { stage: &'static str, cause: String },
    /// A file or folder of the run that could not be read or written.
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    /// Stages of one shared read pass that want different tiles.
    #[error("stages '{first}' and '{second}' need different tiling ({difference}): one read pass needs the same tiles for every stage; set [tiling] in the pipeline or split it")]
    StageTiling {
        first: String,
        second: String,
        difference: String,
    },
    /// A box file that cannot be used (unreadable, outside the scene, a CRS that cannot be
    /// transformed).
    #[error("{path}: {reason}")]
    Boxes { path: String, reason: String },
    /// A model this command does not handle (bench-model and prompted models, ...).
    #[error("{0}")]
    Unsupported(String),
    /// A broken internal invariant (a bug, not the input's fault).
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<InvalidOption> for PipelineError {
    fn from(e: InvalidOption) -> PipelineError {
        PipelineError::InvalidOption(e)
    }
}

impl PipelineError {
    /// A thread that stopped (its channel closed) or panicked.
    pub(crate) fn worker(stage: &'static str, cause: &str) -> PipelineError {
        PipelineError::Worker {
            stage,
            cause: cause.to_string(),
        }
    }

    /// An I/O error on `path`.
    pub(crate) fn io(path: &std::path::Path, error: std::io::Error) -> PipelineError {
        PipelineError::Io {
            path: path.display().to_string(),
            error,
        }
    }

    /// The message with option keys spelled for where the options came from (pipeline files:
    /// `tile_size`; the `Display` form spells command-line flags).
    pub fn render(&self, style: KeyStyle) -> String {
        match self {
            PipelineError::InvalidOption(e) => e.render(style),
            other => other.to_string(),
        }
    }

    /// Whether trying again later may succeed without the input changing: writing outputs
    /// (disk full, permissions, interrupted), the model runtime (device memory, providers,
    /// inference) and reads of remote scenes (network). An output that already exists, a
    /// scene that is not a raster, a bad model or bad options fail the same way every time.
    pub fn is_transient(&self) -> bool {
        use crate::models::ModelError;
        let remote = |path: &str| path.starts_with("/vsi") || path.contains("://");
        match self {
            PipelineError::Output(OutputError::Write { .. }) => true,
            PipelineError::Output(_) => false,
            PipelineError::Runtime(e) | PipelineError::Model(ModelError::Runtime(e)) => {
                runtime_transient(e)
            }
            PipelineError::Tiling(TilingError::Threads(_)) => true,
            PipelineError::Raster(
                RasterError::Read { path, .. } | RasterError::Open { path, .. },
            )
            | PipelineError::Tiling(TilingError::Raster(
                RasterError::Read { path, .. } | RasterError::Open { path, .. },
            )) => remote(path),
            PipelineError::Io { error, .. } => io_transient(error),
            _ => false,
        }
    }
}

/// The runtime failing at run time (device memory, a provider that did not start, inference)
/// may pass; a missing library or a model the runtime cannot load will not.
fn runtime_transient(e: &RuntimeError) -> bool {
    match e {
        RuntimeError::Ort(_) | RuntimeError::Provider { .. } | RuntimeError::Run { .. } => true,
        RuntimeError::NotFound { .. } | RuntimeError::Load { .. } | RuntimeError::Model { .. } => {
            false
        }
    }
}

/// I/O errors that depend on the moment (space, permissions, interruptions, resources), not
/// on the input.
fn io_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        e.kind(),
        K::StorageFull
            | K::QuotaExceeded
            | K::PermissionDenied
            | K::Interrupted
            | K::TimedOut
            | K::WouldBlock
            | K::OutOfMemory
            | K::ResourceBusy
            | K::ConnectionReset
            | K::ConnectionAborted
            | K::NotConnected
            | K::BrokenPipe
            | K::NetworkDown
            | K::NetworkUnreachable
            | K::HostUnreachable
            | K::StaleNetworkFileHandle
    )
}

/// Normalised tiles gathered into one `[B, 3, S, S]` model input, each with what its caller
/// needs back after inference (the tile, its valid fraction, ...). Samples are float32, or
/// bytes for models that take uint8 tiles.
pub(crate) struct TileBatch<M, T = f32> {
    pixels: ndarray::Array4<T>,
    items: Vec<M>,
}

impl<M, T: Copy + Default> TileBatch<M, T> {
    /// Room for `capacity` tiles of `size x size` pixels.
    pub(crate) fn new(capacity: usize, size: usize) -> TileBatch<M, T> {
        let capacity = capacity.max(1);
        TileBatch {
            pixels: ndarray::Array4::from_elem((capacity, 3, size, size), T::default()),
            items: Vec::with_capacity(capacity),
        }
    }

    /// Add a tile's `3 * size * size` samples; true when the batch is now full.
    pub(crate) fn push(&mut self, pixels: &[T], item: M) -> bool {
        let k = self.items.len();
        let n = pixels.len();
        if let Some(slot) = self.pixels.as_slice_mut() {
            slot[k * n..(k + 1) * n].copy_from_slice(pixels);
        }
        self.items.push(item);
        self.items.len() == self.pixels.shape()[0]
    }

    /// The filled part of the batch and its items; the batch is empty afterwards.
    pub(crate) fn take(&mut self) -> (ndarray::ArrayView4<'_, T>, Vec<M>) {
        let items = std::mem::take(&mut self.items);
        let n = items.len();
        (self.pixels.slice(ndarray::s![..n, .., .., ..]), items)
    }
}

/// Text prompts go to prompted models, and only to them. `what` names the model kind in the
/// error ("an open-vocabulary detector"), `noun` its prompts ("text queries"). Returns whether
/// the prompts are to be set.
///
/// # Errors
/// A prompted model without prompts, or prompts for a model that takes none.
pub(crate) fn check_prompts(
    prompted: bool,
    prompts: &[String],
    model: &std::path::Path,
    what: &str,
    noun: &str,
) -> Result<bool, PipelineError> {
    match (prompted, prompts.is_empty()) {
        (true, true) => Err(InvalidOption::new(
            "prompts",
            format!("is required: {} is {what}", model.display()),
        )
        .into()),
        (false, false) => Err(InvalidOption::new(
            "prompts",
            format!("is not taken: {} takes no {noun}", model.display()),
        )
        .into()),
        (prompted, _) => Ok(prompted),
    }
}

/// What a model says about the tiles it takes.
pub(crate) struct ModelTiles<'a> {
    /// Input size in pixels (the default tile size).
    pub size: usize,
    /// The graph takes any tile size (fully convolutional).
    pub any_size: bool,
    /// Tiling defaults from the model's manifest or metadata.
    pub defaults: Option<&'a crate::models::TilingSpec>,
}

/// The scene side of a model command: open the scene, settle the tile size (the model's unless
/// it takes any size), apply the model's tiling defaults where the user gave none, map three
/// bands, resolve scaling and lay the grid.
///
/// # Errors
/// A bad scene, a tile size the model cannot take, a band mapping that is not 3 bands of the
/// scene, statistics or grid errors.
pub(crate) fn model_input(
    path: &str,
    open: &crate::raster::OpenOptions,
    request: &crate::tiling::GridRequest,
    read: &mut crate::tiling::ReadOptions,
    scaling: &crate::raster::ScalingSpec,
    model: &ModelTiles<'_>,
) -> Result<
    (
        crate::raster::Scene,
        crate::raster::Scaling,
        crate::tiling::TileGrid,
    ),
    PipelineError,
> {
    use crate::raster::{BandMapping, Scaling, Scene};
    let scene = Scene::open(path, open)?;
    log_scene(&scene);
    let defaults = model.defaults;
    let grid = request.resolve(
        model.size,
        defaults.and_then(|t| t.overlap),
        defaults.and_then(|t| t.gsd),
    );
    if grid.tile_size != model.size && !model.any_size {
        return Err(InvalidOption::new(
            "tile_size",
            format!(
                "{} differs from the model's input size {}: tiles are read at the model's size (use `target_gsd` to choose their ground footprint)",
                grid.tile_size, model.size
            ),
        )
        .into());
    }
    if read.bands.is_empty() {
        read.bands = BandMapping::for_channels(scene.info(), 3);
    }
    if read.bands.len() != 3 {
        return Err(InvalidOption::new(
            "bands",
            format!(
                "names {} bands but the model takes 3 channels",
                read.bands.len()
            ),
        )
        .into());
    }
    read.bands.validate(scene.info())?;
    let scaling = Scaling::resolve(scaling, &scene, &read.bands)?;
    let tile_grid = crate::tiling::TileGrid::new(scene.info(), grid)?;
    tracing::info!(
        tile_size = tile_grid.options.tile_size,
        overlap = tile_grid.options.overlap,
        cols = tile_grid.cols(),
        rows = tile_grid.rows(),
        "tile grid laid"
    );
    tracing::debug!(bands = ?read.bands, scaling = ?scaling, "reading");
    read.read_pixels = true;
    Ok((scene, scaling, tile_grid))
}

/// `-v`: the scene a job opened, with its size.
pub(crate) fn log_scene(scene: &crate::raster::Scene) {
    let i = scene.info();
    tracing::info!(
        scene = %i.path,
        width = i.width,
        height = i.height,
        bands = i.bands.len(),
        driver = %i.driver,
        "scene opened"
    );
}

/// `-v`: a job's outputs, once committed.
pub(crate) fn log_outputs(outputs: &[String]) {
    for o in outputs {
        tracing::info!(output = %o, "written");
    }
}

/// Stream a model's tiles to `consume`: scaled to `[0, 1]` and normalised for the model, in
/// the reader threads. Read from `scene` itself, or received from a shared pass over it
/// (`feed`) when the stage runs in a multi-model pipeline.
///
/// # Errors
/// A read error, an error from `consume`, or (shared) the reader stopping early.
pub(crate) fn stream_model_tiles<F>(
    feed: Option<feed::FeedPort>,
    scene: &crate::raster::Scene,
    grid: &crate::tiling::TileGrid,
    read: &crate::tiling::ReadOptions,
    scaling: &crate::raster::Scaling,
    norm: &crate::models::Normalizer,
    consume: F,
) -> Result<crate::tiling::StreamStats, PipelineError>
where
    F: FnMut(crate::tiling::TileData<f32>) -> Result<(), PipelineError>,
{
    let bands = read.bands.len();
    let scale = |pixels: &mut [f32]| {
        let plane = pixels.len() / bands.max(1);
        for c in 0..bands {
            scaling.apply(c, &mut pixels[c * plane..(c + 1) * plane]);
        }
    };
    match feed {
        None => crate::tiling::stream_tiles::<f32, PipelineError, _, _>(
            scene,
            grid,
            read,
            |t| {
                scale(&mut t.pixels);
                norm.apply(&mut t.pixels, &t.valid);
            },
            consume,
        ),
        Some(port) => port.stream(
            feed::FeedPlan::new(scene.path(), grid, read, scaling),
            read.deliver_skipped,
            &|pixels, valid| norm.apply(pixels, valid),
            consume,
        ),
    }
}

/// The files of the pending output folder `pending`, named as they will be once it is
/// committed to `out`, sorted.
///
/// # Errors
/// The folder cannot be listed.
/// The categorised style of a layer whose `label` field holds the legend's class names, in the
/// legend's colours ([`crate::output::style`]).
pub(crate) fn label_style(
    legend: &crate::output::Legend,
    symbol: crate::output::Symbol,
    label_field: Option<&str>,
) -> crate::output::LayerStyle {
    crate::output::LayerStyle {
        field: "label".into(),
        categories: legend
            .names
            .iter()
            .cloned()
            .zip(legend.colors.iter().copied())
            .collect(),
        symbol,
        label_field: label_field.map(str::to_string),
    }
}

/// `<raster stem>.qml` beside a class raster: QGIS's paletted renderer with the legend's
/// classes, names and colours (QGIS loads it with the raster).
pub(crate) fn write_raster_style(
    raster: &std::path::Path,
    legend: &crate::output::Legend,
) -> Result<(), PipelineError> {
    let classes: Vec<(u32, String, [u8; 3])> = legend
        .names
        .iter()
        .zip(&legend.colors)
        .enumerate()
        .map(|(i, (n, c))| (i as u32, n.clone(), *c))
        .collect();
    let path = raster.with_extension("qml");
    std::fs::write(&path, crate::output::raster_qml(&classes)).map_err(|e| {
        PipelineError::Output(crate::output::OutputError::Write {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    })
}

pub(crate) fn output_names(
    pending: &std::path::Path,
    out: &std::path::Path,
) -> Result<Vec<String>, PipelineError> {
    let mut outputs: Vec<String> = std::fs::read_dir(pending)
        .map_err(|e| PipelineError::io(out, e))?
        .flatten()
        .map(|e| out.join(e.file_name()).display().to_string())
        .collect();
    outputs.sort();
    Ok(outputs)
}

/// Peak resident memory of this process so far (VmHWM), in bytes, where the OS reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The overall bar of a batch: scenes done (named by the scene running in a message).
pub fn scenes_bar(len: usize, progress: Progress) -> Phase {
    Phase::bar(progress, "scenes", len, "scenes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::ModelError;
    use std::io::{Error as IoError, ErrorKind};

    fn io(kind: ErrorKind) -> PipelineError {
        PipelineError::io(std::path::Path::new("out/classes.tif"), IoError::from(kind))
    }

    #[test]
    fn only_what_a_retry_can_fix_is_transient() {
        let write = OutputError::Write {
            path: "out".into(),
            reason: "No space left on device".into(),
        };
        let run = || RuntimeError::Run {
            path: "m.onnx".into(),
            reason: "CUDA out of memory".into(),
        };
        let cases: Vec<(&str, PipelineError, bool)> = vec![
            ("disk full", io(ErrorKind::StorageFull), true),
            ("permission", io(ErrorKind::PermissionDenied), true),
            ("interrupted", io(ErrorKind::Interrupted), true),
            ("timed out", io(ErrorKind::TimedOut), true),
            ("already exists (io)", io(ErrorKind::AlreadyExists), false),
            ("not found (io)", io(ErrorKind::NotFound), false),
            ("cannot write", PipelineError::Output(write), true),
            (
                "output exists",
                PipelineError::Output(OutputError::Exists { path: "out".into() }),
                false,
            ),
            (
                "a mosaic over the memory budget",
                PipelineError::Output(OutputError::OverBudget {
                    path: "huge.tif".into(),
                    what: "the mosaic's row buffers".into(),
                    bytes: 1 << 40,
                    budget: 1 << 32,
                }),
                false,
            ),
            (
                "unknown format",
                PipelineError::Output(OutputError::UnknownFormat {
                    path: "t.kml".into(),
                    format: "kml".into(),
                }),
                false,
            ),
            ("inference", PipelineError::Runtime(run()), true),
            (
                "inference in a model",
                PipelineError::Model(ModelError::Runtime(run())),
                true,
            ),
            (
                "provider",
                PipelineError::Runtime(RuntimeError::Provider {
                    device: "tensorrt".into(),
                    reason: "not available".into(),
                }),
                true,
            ),
            (
                "no runtime library",
                PipelineError::Runtime(RuntimeError::NotFound { tried: "x".into() }),
                false,
            ),
            (
                "model the runtime cannot load",
                PipelineError::Runtime(RuntimeError::Model {
                    path: "m.onnx".into(),
                    reason: "protobuf".into(),
                }),
                false,
            ),
            (
                "bad package",
                PipelineError::Model(ModelError::Package {
                    path: "m".into(),
                    reason: "no model.toml".into(),
                }),
                false,
            ),
            (
                "remote read",
                PipelineError::Raster(RasterError::Read {
                    path: "/vsicurl/https://x/s.tif".into(),
                    x: 0.0,
                    y: 0.0,
                    w: 8.0,
                    h: 8.0,
                    reason: "timeout".into(),
                }),
                true,
            ),
            (
                "remote read in tiling",
                PipelineError::Tiling(TilingError::Raster(RasterError::Open {
                    path: "s3://b/s.tif".into(),
                    reason: "timeout".into(),
                })),
                true,
            ),
            (
                "local file not a raster",
                PipelineError::Raster(RasterError::Open {
                    path: "notes.txt".into(),
                    reason: "not recognised".into(),
                }),
                false,
            ),
            (
                "missing scene",
                PipelineError::Raster(RasterError::NotFound {
                    path: "s.tif".into(),
                }),
                false,
            ),
            (
                "bad option",
                InvalidOption::new("tile_size", "must be at least 1").into(),
                false,
            ),
            ("thread", PipelineError::worker("model", "panicked"), false),
            (
                "stage tiling",
                PipelineError::StageTiling {
                    first: "a".into(),
                    second: "b".into(),
                    difference: "tile size".into(),
                },
                false,
            ),
            ("unsupported", PipelineError::Unsupported("x".into()), false),
        ];
        for (what, e, transient) in cases {
            assert_eq!(e.is_transient(), transient, "{what}: {e}");
        }
    }

    #[test]
    fn option_errors_name_the_key_where_it_was_given() {
        let model = std::path::Path::new("seg");
        let e = check_prompts(true, &[], model, "a text-prompted model", "text prompts")
            .expect_err("no prompts");
        assert_eq!(
            e.to_string(),
            "--prompts is required: seg is a text-prompted model"
        );
        assert_eq!(
            e.render(KeyStyle::File),
            "prompts is required: seg is a text-prompted model"
        );
        let e = check_prompts(false, &["x".into()], model, "a detector", "text queries")
            .expect_err("prompts for a closed model");
        assert!(e.to_string().contains("takes no text queries"), "{e}");
        assert_eq!(
            PipelineError::worker("stitching", "stopped").to_string(),
            "the stitching thread stopped"
        );
    }
}
