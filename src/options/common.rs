//! The option groups every model command and pipeline file share: input, tiling, runtime and
//! output; and how they become the scene side of a job.

use std::path::{Path, PathBuf};

use clap::Args;
use serde::Deserialize;

use super::{de, InvalidOption};
use crate::output::{formats, CogOptions, VectorFormat};
use crate::raster::{BandMapping, OpenOptions, Resampling, ScalingSpec};
use crate::runtime::{Device, SessionOptions};
use crate::tiling::{EdgeMode, GridOptions, GridRequest, ReadOptions, ReadOrder};

/// `[input]`: which bands, how they are scaled and resampled.
#[derive(Clone, Debug, Default, Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[command(next_help_heading = "Input")]
pub struct InputOptions {
    /// Source bands to use, 1-based, in order (e.g. 4,3,2). Default: every band but alpha.
    #[arg(long, value_name = "LIST")]
    #[serde(deserialize_with = "de::bands")]
    pub bands: Option<BandMapping>,
    /// Scaling to [0, 1] (model commands): auto (0..255 for 8-bit, 2-98 percentiles
    /// otherwise), none, minmax, percentile:LO,HI, range:LO,HI[;LO,HI...] (e.g. range:0,3000
    /// for Sentinel-2). Default: auto.
    #[arg(long, value_name = "SPEC")]
    #[serde(deserialize_with = "de::from_str")]
    pub scale: Option<ScalingSpec>,
    /// Resampling when the target resolution differs from the scene's: nearest, bilinear,
    /// cubic, cubicspline, lanczos, average, mode. Default: average.
    #[arg(long, value_name = "METHOD")]
    #[serde(deserialize_with = "de::from_str")]
    pub resampling: Option<Resampling>,
    /// Accept a raster without georeferencing (pixel coordinates, no CRS).
    #[arg(long)]
    pub pixel_coords: bool,
    /// STAC Item inputs: the asset to read, by key or role (pipeline files; `run --asset` on
    /// the command line).
    #[arg(skip)]
    pub asset: Option<String>,
}

impl InputOptions {
    /// How scenes are opened.
    pub fn open(&self) -> OpenOptions {
        OpenOptions {
            pixel_coords: self.pixel_coords,
        }
    }

    /// The scaling, `auto` unless given.
    pub fn scaling(&self) -> ScalingSpec {
        self.scale.clone().unwrap_or(ScalingSpec::Auto)
    }
}

/// The largest tile side (pixels): a tile's float32 RGB buffer is then at most 3 GiB. It also
/// bounds a model package's input size.
pub const MAX_TILE_SIZE: usize = 16_384;

/// The most tiles one model call may take.
pub const MAX_BATCH_SIZE: usize = 65_536;

/// The finest target resolution, metres per pixel.
pub const MIN_TARGET_GSD: f64 = 0.001;

/// Refuse a batch of `batch` float32 tiles of 3 x `size` x `size` that does not fit the
/// memory budget ([`crate::raster::memory_budget`]): the batch buffer is allocated whole.
///
/// # Errors
/// `batch_size`, with the bytes and the budget.
pub fn check_batch_bytes(batch: usize, size: usize) -> Result<(), InvalidOption> {
    let bytes = batch as u128 * 3 * (size as u128) * (size as u128) * 4;
    let budget = crate::raster::memory_budget();
    if bytes > u128::from(budget) {
        return Err(InvalidOption::new(
            "batch_size",
            format!(
                "{batch}: a batch of {batch} tiles of 3 x {size} x {size} float32 would need {bytes} bytes, more than the memory budget of {budget} bytes (use a smaller batch, or set {} to raise the budget)",
                crate::raster::MEMORY_BUDGET_VAR
            ),
        ));
    }
    Ok(())
}

/// `[tiling]`: the tile grid, batching and reading.
#[derive(Clone, Debug, Default, Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[command(next_help_heading = "Tiling")]
pub struct TilingOptions {
    /// Tile width and height, in pixels at the target resolution (required for `tiles`;
    /// model commands default to the model's input size).
    #[arg(long, value_name = "N")]
    pub tile_size: Option<usize>,
    /// Pixels shared by neighbouring tiles (stride = tile size - overlap).
    #[arg(long, value_name = "N", conflicts_with = "stride")]
    pub overlap: Option<usize>,
    /// Distance between tile origins, in pixels (alternative to --overlap).
    #[arg(long, value_name = "N")]
    pub stride: Option<usize>,
    /// Target ground resolution in metres per pixel; the scene is resampled at read time
    /// (geographic CRSs are converted at the scene centre).
    #[arg(long, value_name = "METRES")]
    pub target_gsd: Option<f64>,
    /// Edge tiles: `pad` keeps the stride and pads past the edge with nodata; `shift` moves
    /// the last tile inward. A scene smaller than a tile gives one padded tile either way.
    /// Default: pad.
    #[arg(long, value_name = "MODE")]
    #[serde(deserialize_with = "de::from_str")]
    pub edge: Option<EdgeMode>,
    /// Skip tiles whose fraction of valid pixels (inside the scene, not nodata/masked) is
    /// below this; tiles with no valid pixel are always skipped. Default: 0.
    #[arg(long, value_name = "FRACTION")]
    pub min_valid: Option<f64>,
    /// Tiles per model call (model commands; default: 16 on CPU, 256 on GPUs).
    #[arg(long, value_name = "N")]
    pub batch_size: Option<usize>,
    /// Reader threads (default: the number of CPUs, shared between the scenes of a batch).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Tiles read ahead of the consumer (default: twice the reader threads, at least a
    /// batch). Memory in flight is about (queue + threads) tiles.
    #[arg(long, value_name = "N")]
    pub queue: Option<usize>,
    /// Pipeline files: read each tile once for every stage (default true when there are
    /// several stages).
    #[arg(skip)]
    pub shared_pass: Option<bool>,
}

impl TilingOptions {
    /// Values that are wrong whatever the scene and model.
    ///
    /// # Errors
    /// The first bad value, with its key.
    pub fn validate(&self) -> Result<(), InvalidOption> {
        if let Some(v) = self.min_valid {
            if !(0.0..=1.0).contains(&v) {
                return Err(InvalidOption::new(
                    "min_valid",
                    format!("must be between 0 and 1, got {v}"),
                ));
            }
        }
        if let Some(g) = self.target_gsd {
            if !(g.is_finite() && g > 0.0) {
                return Err(InvalidOption::new(
                    "target_gsd",
                    format!("must be positive, got {g}"),
                ));
            }
            if g < MIN_TARGET_GSD {
                return Err(InvalidOption::new(
                    "target_gsd",
                    format!("{g} is finer than {MIN_TARGET_GSD} m per pixel"),
                ));
            }
        }
        if let Some(size) = self.tile_size {
            if size > MAX_TILE_SIZE {
                return Err(InvalidOption::new(
                    "tile_size",
                    format!("{size} is larger than the limit of {MAX_TILE_SIZE} pixels"),
                ));
            }
        }
        if let Some(batch) = self.batch_size {
            if batch > MAX_BATCH_SIZE {
                return Err(InvalidOption::new(
                    "batch_size",
                    format!("{batch} is larger than the limit of {MAX_BATCH_SIZE} tiles"),
                ));
            }
            if let Some(size) = self.tile_size {
                check_batch_bytes(batch, size)?;
            }
        }
        if self.overlap.is_some() && self.stride.is_some() {
            return Err(InvalidOption::new(
                "overlap",
                "and `stride` say the same thing: give one",
            ));
        }
        if let (Some(size), Some(stride)) = (self.tile_size, self.stride) {
            if stride == 0 || stride > size {
                return Err(InvalidOption::new(
                    "stride",
                    format!("must be between 1 and the tile size {size}"),
                ));
            }
        }
        for (key, v) in [
            ("batch_size", self.batch_size),
            ("threads", self.threads),
            ("queue", self.queue),
        ] {
            if v == Some(0) {
                return Err(InvalidOption::new(key, "must be at least 1"));
            }
        }
        Ok(())
    }

    /// Tile size against overlap where both are given (the grid checks it again against the
    /// scene; this catches it before any scene is read).
    ///
    /// # Errors
    /// An overlap that is not smaller than the tile size.
    pub fn validate_overlap(&self) -> Result<(), InvalidOption> {
        if let (Some(size), Some(overlap)) = (self.tile_size, self.overlap) {
            if overlap >= size {
                return Err(InvalidOption::new(
                    "overlap",
                    format!("{overlap} must be smaller than `tile_size` {size}"),
                ));
            }
        }
        Ok(())
    }

    /// The grid of a model command: what is not given is the model's.
    ///
    /// # Errors
    /// A stride without a tile size, or a value [`TilingOptions::validate`] rejects.
    pub fn grid_request(&self) -> Result<GridRequest, InvalidOption> {
        self.validate()?;
        let overlap = match (self.overlap, self.stride, self.tile_size) {
            (Some(o), _, _) => Some(o),
            (None, Some(s), Some(size)) => Some(size - s),
            (None, Some(_), None) => {
                return Err(InvalidOption::new(
                    "stride",
                    "needs `tile_size` for model commands",
                ))
            }
            (None, None, _) => None,
        };
        Ok(GridRequest {
            tile_size: self.tile_size,
            overlap,
            target_gsd: self.target_gsd,
            edge: self.edge.unwrap_or(EdgeMode::Pad),
        })
    }

    /// The grid of `tiles` and `bench-read`, which need a tile size.
    ///
    /// # Errors
    /// A missing tile size, or a value [`TilingOptions::validate`] rejects.
    pub fn grid(&self) -> Result<GridOptions, InvalidOption> {
        let request = self.grid_request()?;
        let tile_size = request
            .tile_size
            .ok_or_else(|| InvalidOption::new("tile_size", "is required"))?;
        Ok(request.resolve(tile_size, None, None))
    }

    /// Reader threads and queue when `jobs` scenes run at once (the CPUs are shared), with
    /// room for a batch of `batch` tiles in flight for model commands.
    pub fn read(&self, input: &InputOptions, jobs: usize, batch: Option<usize>) -> ReadOptions {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = self.threads.unwrap_or((cpus / jobs.max(1)).max(1));
        ReadOptions {
            bands: input
                .bands
                .clone()
                .unwrap_or_else(|| BandMapping::new(Vec::new())),
            resampling: input.resampling.unwrap_or(Resampling::Average),
            threads,
            queue: self
                .queue
                .unwrap_or_else(|| (2 * threads).max(batch.unwrap_or(0))),
            min_valid: self.min_valid.unwrap_or(0.0),
            fill: 0.0,
            read_pixels: true,
            order: ReadOrder::Stripes,
            deliver_skipped: false,
            // Model outputs do not depend on thread timing (same batches every run).
            ordered: batch.is_some(),
        }
    }
}

/// `[runtime]`: where and how models run.
#[derive(Clone, Debug, Default, Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[command(next_help_heading = "Runtime")]
pub struct RuntimeOptions {
    /// Execution provider: cpu, cuda[:N] or tensorrt[:N]. Default: cpu.
    #[arg(long, value_name = "DEVICE")]
    #[serde(deserialize_with = "de::from_str")]
    pub device: Option<Device>,
    /// When the requested provider cannot load, run on the next one (TensorRT -> CUDA -> CPU)
    /// instead of failing; the provider really used is reported.
    #[arg(long)]
    pub allow_fallback: bool,
    /// Threads inside each model operator (default: one pool of one thread per core, shared by
    /// every graph of the process; N: each graph gets its own pool of N; with --jobs, the
    /// cores are divided between the scenes run at once).
    #[arg(long, value_name = "N")]
    pub intra_threads: Option<usize>,
    /// TensorRT engine cache folder (default: <cache dir>/tensorrt).
    #[arg(long, value_name = "DIR")]
    pub trt_cache: Option<PathBuf>,
}

impl RuntimeOptions {
    /// # Errors
    /// Zero operator threads.
    pub fn validate(&self) -> Result<(), InvalidOption> {
        if self.intra_threads == Some(0) {
            return Err(InvalidOption::new("intra_threads", "must be at least 1"));
        }
        Ok(())
    }

    /// The device, CPU unless given.
    pub fn device(&self) -> Device {
        self.device.unwrap_or(Device::Cpu)
    }

    /// Session options when `jobs` scenes run at once (operator threads are shared).
    pub fn session(&self, ctx: &JobContext) -> SessionOptions {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let intra_threads = match self.intra_threads {
            None if ctx.jobs > 1 => Some((cpus / ctx.jobs).max(1)),
            given => given,
        };
        SessionOptions {
            device: self.device(),
            allow_fallback: self.allow_fallback,
            intra_threads,
            trt_cache: self
                .trt_cache
                .clone()
                .or_else(|| ctx.cache_dir.as_ref().map(|c| c.join("tensorrt"))),
        }
    }
}

/// `[output]`: how vector layers are written.
#[derive(Clone, Debug, Default, Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[command(next_help_heading = "Output")]
pub struct OutputOptions {
    /// Vector format: gpkg (default), shp, geojson, fgb, parquet (GeoParquet 1.1), or their
    /// long names.
    #[arg(long, value_name = "FORMAT")]
    pub format: Option<String>,
    /// GeoJSON layers in the scene's CRS (GeoJSON 2008 `crs` member) instead of RFC 7946's
    /// WGS 84 longitude, latitude; other formats always keep the scene's CRS.
    #[arg(long)]
    pub geojson_native_crs: bool,
    /// A COG creation option for every raster written, as GDAL takes it (`gdal_translate -of
    /// COG -co`); repeatable: COMPRESS=NONE|LZW|DEFLATE|LZMA|ZSTD (default DEFLATE),
    /// LEVEL=N (DEFLATE 1-12, ZSTD 1-22, LZMA 0-9), PREDICTOR=YES|NO|STANDARD|FLOATING_POINT
    /// (default NO; YES for classify's rasters of probabilities), BLOCKSIZE=N (tile edge,
    /// multiple of 16, 128-4096; default 512, 256 for classify's tile-stride rasters),
    /// OVERVIEW_RESAMPLING=NEAREST|AVERAGE (default: NEAREST for class rasters, AVERAGE for
    /// probabilities). Pipeline files: `co = ["COMPRESS=ZSTD", "LEVEL=9"]` in `[output]`.
    #[arg(long = "co", value_name = "KEY=VALUE")]
    pub co: Vec<String>,
    /// `report = true|false`: write report.html beside the outputs (pipeline files; on the
    /// command line `--report` / `--no-report`). Default: off for single-scene commands, on
    /// for `tessera run`.
    #[arg(skip)]
    pub report: Option<bool>,
    #[command(flatten)]
    #[serde(skip)]
    pub report_flags: ReportFlags,
}

/// `--report` / `--no-report`: the command-line side of `[output] report`.
#[derive(Clone, Debug, Default, Args)]
pub struct ReportFlags {
    /// Write report.html beside the outputs: a true-colour quicklook with the class map,
    /// boxes and polygons over it, legend, class areas, tile captions, models, provenance
    /// and timings, in one self-contained page that opens offline. Default: off for
    /// single-scene commands, on for `tessera run`.
    #[arg(long, overrides_with = "no_report")]
    pub report: bool,
    /// Write no report.html (`tessera run` writes one per scene and an index.html otherwise).
    #[arg(long, overrides_with = "report")]
    pub no_report: bool,
}

impl ReportFlags {
    /// What the flags say, if anything.
    pub fn value(&self) -> Option<bool> {
        match (self.report, self.no_report) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        }
    }
}

impl OutputOptions {
    /// The COG creation options (`--co`), checked against GDAL's COG driver.
    ///
    /// # Errors
    /// The first bad `--co` item ([`super::parse_cog_options`]).
    pub fn cog_options(&self) -> Result<CogOptions, InvalidOption> {
        super::parse_cog_options(&self.co)
    }

    /// Whether to write report.html: the flags, else the pipeline key, else `default`.
    pub fn report(&self, default: bool) -> bool {
        self.report_flags.value().or(self.report).unwrap_or(default)
    }

    /// The vector format, GeoPackage unless given.
    ///
    /// # Errors
    /// An unknown format name, listing the known ones.
    pub fn vector_format(&self) -> Result<&'static dyn VectorFormat, InvalidOption> {
        let format = match self.format.as_deref() {
            None => formats::ALL[0],
            Some(name) => formats::by_name(name).ok_or_else(|| {
                InvalidOption::new(
                    "format",
                    format!("'{name}' is not a vector format ({})", formats::names()),
                )
            })?,
        };
        Ok(match (self.geojson_native_crs, format.native_crs()) {
            (true, Some(native)) => native,
            _ => format,
        })
    }
}

/// What every job of a command or batch shares.
#[derive(Clone, Debug, Default)]
pub struct JobContext {
    pub ort_lib: Option<PathBuf>,
    /// Text-embedding and engine cache folder.
    pub cache_dir: Option<PathBuf>,
    pub progress: crate::jobs::Progress,
    /// Scenes running at once (CPU threads are divided between them).
    pub jobs: usize,
}

/// The cache folder: `flag`, then $TESSERA_CACHE_DIR, $XDG_CACHE_HOME/tessera,
/// ~/.cache/tessera.
pub fn cache_dir(flag: Option<PathBuf>) -> Option<PathBuf> {
    flag.or_else(|| std::env::var_os("TESSERA_CACHE_DIR").map(PathBuf::from))
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("tessera")))
        .or_else(|| {
            std::env::var_os("HOME").map(|d| PathBuf::from(d).join(".cache").join("tessera"))
        })
}

/// The scene side of a model job, from the shared groups: what every task's job takes.
#[derive(Clone, Debug)]
pub struct SceneJobBase {
    pub scene: String,
    pub open: OpenOptions,
    pub model: PathBuf,
    pub ort_lib: Option<PathBuf>,
    pub session: SessionOptions,
    /// `None` values: the model's (input size, recommended overlap and resolution).
    pub grid: GridRequest,
    pub read: ReadOptions,
    pub scaling: ScalingSpec,
    pub batch_size: usize,
    pub format: &'static dyn VectorFormat,
    /// COG creation options of every raster the job writes.
    pub cog: CogOptions,
    pub progress: crate::jobs::Progress,
    /// Write report.html into the output folder (single-scene commands; a batch writes one
    /// report per scene itself).
    pub report: bool,
}

impl SceneJobBase {
    /// The shared part of a model job on `scene` with `model`.
    ///
    /// # Errors
    /// A bad tiling value or vector format.
    pub fn new(
        scene: &str,
        model: &Path,
        input: &InputOptions,
        tiling: &TilingOptions,
        runtime: &RuntimeOptions,
        output: &OutputOptions,
        ctx: &JobContext,
    ) -> Result<SceneJobBase, InvalidOption> {
        runtime.validate()?;
        let batch_size = tiling
            .batch_size
            .unwrap_or_else(|| runtime.device().default_batch_size());
        Ok(SceneJobBase {
            scene: scene.to_string(),
            open: input.open(),
            model: model.to_path_buf(),
            ort_lib: ctx.ort_lib.clone(),
            session: runtime.session(ctx),
            grid: tiling.grid_request()?,
            read: tiling.read(input, ctx.jobs, Some(batch_size)),
            scaling: input.scaling(),
            batch_size,
            format: output.vector_format()?,
            cog: output.cog_options()?,
            progress: ctx.progress,
            report: output.report(false),
        })
    }
}
