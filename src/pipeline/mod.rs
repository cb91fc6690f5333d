//! Jobs: the library-level entry points behind each command. A job takes a validated
//! configuration, drives scene -> tiles -> (models) -> writers, and returns a serialisable
//! report; it never prints. The CLI only parses arguments into jobs and prints reports.

mod bench;
mod bench_model;
mod caption;
mod classify;
mod detect;
mod doctor;
pub mod feed;
mod segment;
mod tiles;

pub use bench::{run_bench_read, BenchReadJob, BenchReadReport};
pub use bench_model::{run_bench_model, BenchModelJob, BenchModelReport};
pub use caption::{run_caption, CaptionJob, CaptionReport, TileCaption};
pub use classify::{run_classify, ClassifyJob, ClassifyReport, TileResult, Timings};
pub use detect::{run_detect, DetectJob, DetectReport};
pub use doctor::{run_doctor, DoctorReport};
pub use segment::{run_segment, SegmentJob, SegmentReport};
pub use tiles::{run_tiles, TilesJob, TilesReport};

use thiserror::Error;

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
    #[error("{0}")]
    Options(String),
}

impl PipelineError {
    /// Whether trying again later may succeed without the input changing: writing outputs
    /// (disk full, permissions), the model runtime (device memory, driver), threads, and reads
    /// of remote scenes (network). A scene that is not a raster, a bad model or bad options
    /// fail the same way every time.
    pub fn is_transient(&self) -> bool {
        let remote = |path: &str| path.starts_with("/vsi") || path.contains("://");
        match self {
            PipelineError::Output(_)
            | PipelineError::Runtime(_)
            | PipelineError::Model(crate::models::ModelError::Runtime(_)) => true,
            PipelineError::Tiling(TilingError::Threads(_)) => true,
            PipelineError::Raster(
                RasterError::Read { path, .. } | RasterError::Open { path, .. },
            )
            | PipelineError::Tiling(TilingError::Raster(
                RasterError::Read { path, .. } | RasterError::Open { path, .. },
            )) => remote(path),
            _ => false,
        }
    }
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

    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
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
        (true, true) => Err(PipelineError::Options(format!(
            "{} is {what}: give --prompts",
            model.display()
        ))),
        (false, false) => Err(PipelineError::Options(format!(
            "{} takes no {noun} (--prompts)",
            model.display()
        ))),
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
#[allow(clippy::too_many_arguments)]
pub(crate) fn model_input(
    path: &str,
    open: &crate::raster::OpenOptions,
    grid: &mut crate::tiling::GridOptions,
    read: &mut crate::tiling::ReadOptions,
    scaling: &crate::raster::ScalingSpec,
    model: &ModelTiles<'_>,
    overlap_given: bool,
    gsd_given: bool,
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
    if grid.tile_size == 0 {
        grid.tile_size = model.size;
    }
    if grid.tile_size != model.size && !model.any_size {
        return Err(PipelineError::Options(format!(
            "--tile-size {} differs from the model's input size {}: tiles are read at the model's size (use --target-gsd to choose their ground footprint)",
            grid.tile_size, model.size
        )));
    }
    if let Some(t) = model.defaults {
        if !overlap_given {
            grid.overlap = t.overlap.unwrap_or(0).min(grid.tile_size.saturating_sub(1));
        }
        if !gsd_given {
            grid.target_gsd = t.gsd;
        }
    }
    if read.bands.is_empty() {
        read.bands = BandMapping::for_channels(scene.info(), 3);
    }
    if read.bands.len() != 3 {
        return Err(PipelineError::Options(format!(
            "the model takes 3 channels but --bands names {}",
            read.bands.len()
        )));
    }
    read.bands.validate(scene.info())?;
    let scaling = Scaling::resolve(scaling, &scene, &read.bands)?;
    let tile_grid = crate::tiling::TileGrid::new(scene.info(), grid.clone())?;
    read.read_pixels = true;
    Ok((scene, scaling, tile_grid))
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

/// Peak resident memory of this process so far (VmHWM), in bytes, where the OS reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Where progress bars go: one line per bar on stderr, several bars at once in batches.
fn progress_target() -> &'static indicatif::MultiProgress {
    static BARS: std::sync::OnceLock<indicatif::MultiProgress> = std::sync::OnceLock::new();
    BARS.get_or_init(indicatif::MultiProgress::new)
}

/// The overall bar of a batch: scenes done, rate and ETA.
pub fn scenes_bar(len: usize, show: bool) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !show || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = progress_target().add(indicatif::ProgressBar::new(len as u64));
    let style = indicatif::ProgressStyle::with_template(
        "scenes [{bar:40}] {pos}/{len}, {per_sec}, ETA {eta} {msg}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar
}

/// A progress bar on stderr, hidden when `show` is false or stderr is not a terminal.
pub(crate) fn progress_bar(len: usize, show: bool, what: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !show || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = progress_target().add(indicatif::ProgressBar::new(len as u64));
    let style = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:40}] {pos}/{len} tiles, {per_sec}, ETA {eta}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(what.to_string());
    bar
}
