//! Command-line interface: argument definitions, their translation into jobs, and printing of
//! reports. The only place that uses `anyhow` and prints.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::models::clip::DEFAULT_TEMPLATES;
use crate::models::decoder::GenerationParams;
use crate::output::formats;
use crate::pipeline::{
    self, BenchReadJob, CaptionJob, ClassifyJob, DetectJob, SegmentJob, TilesJob,
};
use crate::raster::{BandMapping, OpenOptions, Resampling, ScalingSpec, Scene};
use crate::runtime::{Device, Runtime, SessionOptions};
use crate::stitch::boxes::MergeMethod;
use crate::stitch::mask::BlendWindow;
use crate::tiling::{EdgeMode, GridOptions, ReadOptions, ReadOrder};

const AFTER_HELP: &str = "\
Scenes are any raster GDAL reads (GeoTIFF/COG first), local or remote (/vsicurl/, /vsis3/,
/vsizip/ paths pass straight to GDAL). Outputs are written under a temporary name and renamed
when complete. Exit status: 0 success, 1 error, 2 bad command line, 3 some scenes of a batch
(run, ingest) failed while the others completed.";

/// Georeferenced answers from satellite and aerial scenes with vision-language models.
#[derive(Debug, Parser)]
#[command(name = "tessera", version, about, after_help = AFTER_HELP)]
pub struct Cli {
    /// ONNX Runtime library to load (default: ORT_DYLIB_PATH, then the project's
    /// .tessera/ort/ set up by `make setup`, then next to the executable).
    #[arg(long, global = true, value_name = "PATH")]
    pub ort_lib: Option<PathBuf>,

    /// No progress bars.
    #[arg(long, short, global = true)]
    pub quiet: bool,

    /// Log what happens on stderr (-v: scenes and stages, -vv: details).
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Describe a scene: size, bands and data types, CRS, geotransform, resolution, nodata
    /// and masks, overviews, footprint.
    Info(InfoArgs),
    /// Lay a tile grid over a scene; write it as a vector layer and optionally as GeoTIFF chips.
    Tiles(TilesArgs),
    /// Check the installation: GDAL version and drivers, ONNX Runtime library, version and
    /// execution providers.
    Doctor(DoctorArgs),
    /// Zero-shot land-cover classification of every tile with a CLIP-family model: class and
    /// probability rasters (COG), a tile layer with top-3 labels, dissolved label polygons.
    Classify(ClassifyArgs),
    /// Caption every tile and the whole scene (or answer a question about them) with an
    /// image-conditioned language model (BLIP-2, LLaVA-style).
    Caption(CaptionArgs),
    /// Semantic segmentation of a whole scene: tiles stitched into one seamless mosaic (class
    /// COG, optional probabilities) and polygons made from the mosaic.
    Segment(SegmentArgs),
    /// Object detection over a whole scene: boxes mapped to map coordinates and merged across
    /// tiles (NMS or weighted box fusion, boxes cut by tile edges joined).
    Detect(DetectArgs),
    /// Run a pipeline file (pipelines/*.toml) over many scenes: files, folders, globs, @lists
    /// of paths or STAC Items. Scenes run in parallel, each into OUT/<scene>/ (written under a
    /// temporary name, renamed when complete, with record.json and a STAC item.json); scenes
    /// already complete with the same inputs, pipeline and models are skipped.
    Run(RunArgs),
    /// One ingestion pass over a folder (for cron or a systemd timer): new or changed scenes
    /// are run through a pipeline once, with status, attempts, timings and errors kept in a
    /// state database; `--status` lists what was done, failed and is pending.
    Ingest(IngestArgs),
    /// Ingest a folder continuously: a pass every --interval seconds until SIGINT/SIGTERM
    /// (the scene in progress finishes first).
    Watch(WatchArgs),
    /// Model packages: validate one (`tessera models check DIR`).
    Models(ModelsArgs),
    /// Benchmark reading, tiling and scaling a scene into float32 CHW batches.
    BenchRead(BenchReadArgs),
    /// Benchmark a model alone: images/s of a package's image graph (CLIP, segmenter,
    /// detector) on a device, batches already in memory.
    BenchModel(BenchModelArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The pipeline file (TOML; see pipelines/ for examples).
    pub pipeline: PathBuf,
    /// Scenes: raster files, folders (searched recursively for .tif/.tiff/.jp2/.img/.vrt and
    /// STAC Item .json), glob patterns ("data/*.tif"), text files of paths (@list.txt or a
    /// .txt file, one path per line), STAC Item JSON files, /vsicurl/ or https:// URLs.
    #[arg(required_unless_present = "check")]
    pub inputs: Vec<String>,
    /// Output folder: one sub-folder per scene, named after the file (or STAC Item id).
    #[arg(long, value_name = "DIR", required_unless_present = "check")]
    pub out: Option<PathBuf>,
    /// Validate the pipeline file (keys, types, values, models) and exit.
    #[arg(long)]
    pub check: bool,
    /// Scenes processed at once (CPU threads are divided between them).
    #[arg(long, short = 'j', default_value_t = 1, value_name = "N")]
    pub jobs: usize,
    /// Redo scenes that are already complete.
    #[arg(long)]
    pub force: bool,
    /// Skip scenes already complete with the same inputs, pipeline and models (the default;
    /// the flag exists for scripts that want to say so).
    #[arg(long, conflicts_with = "force")]
    pub resume: bool,
    /// Process only shard I of N (0-based): a deterministic share of the scenes. Default:
    /// from SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT (Slurm job arrays) or
    /// JOB_COMPLETION_INDEX/TESSERA_SHARD_COUNT (Kubernetes Indexed Jobs); all scenes otherwise.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,
    /// STAC Item inputs: the asset to read, by key or role (default: the pipeline's
    /// [input] asset, else the first GeoTIFF data asset).
    #[arg(long, value_name = "KEY")]
    pub asset: Option<String>,
    /// Text-embedding and engine cache folder (default: $TESSERA_CACHE_DIR,
    /// $XDG_CACHE_HOME/tessera or ~/.cache/tessera).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Print a JSON summary (every scene with its status, output folder and error).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct IngestArgs {
    /// The folder scenes arrive in (searched recursively; hidden files and folders skipped).
    #[arg(required_unless_present = "status")]
    pub dir: Option<PathBuf>,
    /// The pipeline file.
    #[arg(long, value_name = "FILE", required_unless_present = "status")]
    pub pipeline: Option<PathBuf>,
    /// Output folder: one sub-folder per scene (its path below DIR, '/' as '_').
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// State database (default: OUT/.tessera-state.sqlite).
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
    /// List the scenes of the state database (done, failed, retry, pending, running) and exit.
    #[arg(long)]
    pub status: bool,
    /// File-name pattern of scenes; repeat for several.
    #[arg(long = "pattern", value_name = "GLOB", default_values_t = ["*.tif".to_string(), "*.tiff".to_string(), "*.TIF".to_string()])]
    pub patterns: Vec<String>,
    /// A file is taken once unmodified for this many seconds (files still being written wait).
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    pub settle: f64,
    /// Attempts per scene before a transient failure counts as permanent.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub max_attempts: u32,
    /// Wait before the second attempt; doubled for each further one.
    #[arg(long, default_value_t = 60.0, value_name = "SECONDS")]
    pub retry_after: f64,
    /// A claim by an instance on another host older than this is taken over (that host is
    /// presumed dead). Claims of dead processes on this host are taken over at once.
    #[arg(long, default_value_t = 21600.0, value_name = "SECONDS")]
    pub lease: f64,
    /// Instances on several hosts share the state database over a network file system (uses
    /// SQLite's rollback journal, which needs working file locks, instead of WAL).
    #[arg(long)]
    pub shared_fs: bool,
    /// Scenes processed at once.
    #[arg(long, short = 'j', default_value_t = 1, value_name = "N")]
    pub jobs: usize,
    /// Only scenes of shard I of N (0-based); default from Slurm/Kubernetes variables.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,
    /// Cache folder (text embeddings, TensorRT engines).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub ingest: IngestArgs,
    /// Seconds between passes.
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    pub interval: f64,
}

#[derive(Debug, Args)]
pub struct BenchModelArgs {
    /// Model package folder (or an ONNX file with Deepness metadata).
    pub model: PathBuf,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Timed batches.
    #[arg(long, default_value_t = 20)]
    pub iterations: usize,
    /// Untimed batches first (provider warm-up, allocations).
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
}

#[derive(Debug, Args)]
pub struct CaptionArgs {
    /// The scene (any GDAL raster).
    pub scene: String,
    /// Model package folder (model.toml, image_prefix/embed_tokens/decoder ONNX, tokenizer.json).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// Text after the image, e.g. "Question: how many buildings are there? Answer:" (default:
    /// none, plain captioning).
    #[arg(long, default_value = "", value_name = "TEXT")]
    pub prompt: String,
    /// Beam search width (1: greedy). Default: the model's.
    #[arg(long, value_name = "N")]
    pub num_beams: Option<usize>,
    /// Most tokens to generate. Default: the model's.
    #[arg(long, value_name = "N")]
    pub max_new_tokens: Option<usize>,
    /// Fewest tokens to generate before the end token is allowed.
    #[arg(long, value_name = "N")]
    pub min_new_tokens: Option<usize>,
    /// Penalty (> 1 discourages) for tokens already in the sequence.
    #[arg(long, value_name = "P")]
    pub repetition_penalty: Option<f32>,
    /// Beam search: finished hypotheses score sum_logprobs / length^P.
    #[arg(long, value_name = "P")]
    pub length_penalty: Option<f32>,
    /// Caption only the whole scene, not every tile.
    #[arg(long)]
    pub scene_only: bool,
    /// Source pixel window X,Y,W,H for the scene caption (default: the whole scene).
    #[arg(long, value_name = "X,Y,W,H")]
    pub scene_window: Option<String>,
    #[command(flatten)]
    pub tiling: TilingArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Scaling to [0, 1]: auto, none, minmax, percentile:LO,HI, range:LO,HI[;LO,HI...].
    #[arg(long, default_value = "auto", value_name = "SPEC")]
    pub scale: ScalingSpec,
    /// Output folder: captions.jsonl, tiles.<ext> (caption per tile), scene.<ext>, and for
    /// Shapefiles captions.csv with captions longer than 254 bytes.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Vector format: gpkg (default), shp, geojson, fgb.
    #[arg(long, default_value = "gpkg", value_name = "FORMAT")]
    pub format: String,
    /// Replace an existing output folder.
    #[arg(long)]
    pub overwrite: bool,
    /// Print a JSON summary.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SegmentArgs {
    /// The scene (any GDAL raster).
    pub scene: String,
    /// Model package folder (model.toml + ONNX) or an ONNX file with Deepness metadata.
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    #[command(flatten)]
    pub tiling: TilingArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Scaling to [0, 1]: auto, none, minmax, percentile:LO,HI, range:LO,HI[;LO,HI...].
    #[arg(long, default_value = "auto", value_name = "SPEC")]
    pub scale: ScalingSpec,
    /// Weighting of overlapping predictions: flat, linear or cosine ramp toward tile edges.
    #[arg(long, value_enum, default_value = "cosine")]
    pub blend: BlendWindow,
    /// Binary and text-prompted models: probability at or above which a pixel is the object
    /// (or the prompt) class (default: the model's).
    #[arg(long, value_name = "P")]
    pub threshold: Option<f32>,
    /// Text prompts for text-prompted models (CLIPSeg), comma-separated: "building,road".
    #[arg(long, value_name = "LIST")]
    pub prompts: Option<String>,
    /// Also write probabilities.tif (float32; P(object) for binary models, one band per class
    /// otherwise).
    #[arg(long)]
    pub probabilities: bool,
    /// Simplify polygons with this tolerance in map units (topology preserved; 0: none).
    #[arg(long, default_value_t = 0.0, value_name = "TOL")]
    pub simplify: f64,
    /// Drop polygons smaller than this area in square map units.
    #[arg(long, default_value_t = 0.0, value_name = "AREA")]
    pub min_area: f64,
    /// Output folder: classes.tif, [probabilities.tif], polygons.<ext>.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Vector format: gpkg (default), shp, geojson, fgb.
    #[arg(long, default_value = "gpkg", value_name = "FORMAT")]
    pub format: String,
    /// Replace an existing output folder.
    #[arg(long)]
    pub overwrite: bool,
    /// Print a JSON summary.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DetectArgs {
    /// The scene (any GDAL raster).
    pub scene: String,
    /// Model package folder (model.toml + ONNX) or an ONNX file with Deepness metadata.
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    #[command(flatten)]
    pub tiling: TilingArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Scaling to [0, 1]: auto, none, minmax, percentile:LO,HI, range:LO,HI[;LO,HI...].
    #[arg(long, default_value = "auto", value_name = "SPEC")]
    pub scale: ScalingSpec,
    /// Keep boxes scoring at least this (default: the model's).
    #[arg(long, value_name = "P")]
    pub confidence: Option<f32>,
    /// Text queries for open-vocabulary detectors (OWL-ViT), comma-separated: "car,ship".
    #[arg(long, value_name = "LIST")]
    pub prompts: Option<String>,
    /// Overlap (IoU) above which two boxes of a class are the same object (default: the
    /// model's).
    #[arg(long, value_name = "IOU")]
    pub iou: Option<f32>,
    /// How duplicates from overlapping tiles are resolved: nms keeps the best box, wbf averages
    /// the cluster weighted by score.
    #[arg(long = "merge", value_enum, default_value = "nms")]
    pub method: MergeMethod,
    /// A box touching an inner tile edge is joined with a box of its class covering at least
    /// this fraction of the smaller of the two (its other part).
    #[arg(long, default_value_t = 0.6, value_name = "FRACTION")]
    pub cut_ios: f64,
    /// Merge boxes of different classes too.
    #[arg(long)]
    pub class_agnostic: bool,
    /// Output folder: detections.<ext> (polygons with class, label, score, tile_id).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Vector format: gpkg (default), shp, geojson, fgb.
    #[arg(long, default_value = "gpkg", value_name = "FORMAT")]
    pub format: String,
    /// Replace an existing output folder.
    #[arg(long)]
    pub overwrite: bool,
    /// Print a JSON summary.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ModelsArgs {
    #[command(subcommand)]
    pub command: ModelsCommand,
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Validate a model package and report every problem at once (exit 1 when any).
    Check {
        /// The package folder (with model.toml).
        dir: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Where and how models run.
#[derive(Debug, Args)]
pub struct DeviceArgs {
    /// Execution provider: cpu, cuda[:N] or tensorrt[:N].
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    pub device: Device,
    /// When the requested provider cannot load, run on the next one (TensorRT -> CUDA -> CPU)
    /// instead of failing; the provider really used is reported.
    #[arg(long)]
    pub allow_fallback: bool,
    /// Tiles per model call (default: 16 on CPU, 256 on GPUs).
    #[arg(long, value_name = "N")]
    pub batch_size: Option<usize>,
    /// Threads inside each model operator (default: ONNX Runtime's, one per core).
    #[arg(long, value_name = "N")]
    pub intra_threads: Option<usize>,
    /// TensorRT engine cache folder (default: <cache dir>/tensorrt).
    #[arg(long, value_name = "DIR")]
    pub trt_cache: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ClassifyArgs {
    /// The scene (any GDAL raster).
    pub scene: String,
    /// Model package folder (model.toml, ONNX encoders, tokenizer.json).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// Comma-separated labels, e.g. "forest,river,city".
    #[arg(long, value_name = "LIST", required_unless_present = "labels_file")]
    pub labels: Option<String>,
    /// File with one label per line (blank lines and lines starting with # ignored).
    #[arg(long, value_name = "FILE", conflicts_with = "labels")]
    pub labels_file: Option<PathBuf>,
    /// Prompt template with {} for the label; repeat to give an ensemble. Replaces the default
    /// satellite-imagery ensemble.
    #[arg(long = "template", value_name = "TEMPLATE")]
    pub templates: Vec<String>,
    /// Tiles whose best probability is below this are labelled "unknown".
    #[arg(long, value_name = "P")]
    pub min_score: Option<f32>,
    #[command(flatten)]
    pub tiling: TilingArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Scaling to [0, 1]: auto (0..255 for 8-bit, 2-98 percentiles otherwise), none, minmax,
    /// percentile:LO,HI, range:LO,HI[;LO,HI...] (e.g. range:0,3000 for Sentinel-2).
    #[arg(long, default_value = "auto", value_name = "SPEC")]
    pub scale: ScalingSpec,
    /// Output folder (created; written under a temporary name until complete):
    /// classes.tif, probabilities.tif, tiles.<ext>, labels.<ext>.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Vector format: gpkg (default), shp, geojson, fgb.
    #[arg(long, default_value = "gpkg", value_name = "FORMAT")]
    pub format: String,
    /// Replace an existing output folder.
    #[arg(long)]
    pub overwrite: bool,
    /// Text-embedding cache folder (default: $TESSERA_CACHE_DIR, $XDG_CACHE_HOME/tessera or
    /// ~/.cache/tessera).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Do not read or write the text-embedding cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Print a JSON summary (every written path, counts, timings).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct InfoArgs {
    /// The scene (any GDAL raster).
    pub scene: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Accept a raster without georeferencing (pixel coordinates, no CRS).
    #[arg(long)]
    pub pixel_coords: bool,
}

/// Options shared by every command that tiles a scene.
#[derive(Debug, Args)]
pub struct TilingArgs {
    /// Tile width and height, in pixels at the target resolution (required for `tiles`; model
    /// commands default to the model's input size).
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
    #[arg(long, value_enum, default_value = "pad")]
    pub edge: EdgeMode,
    /// Skip tiles whose fraction of valid pixels (inside the scene, not nodata/masked) is
    /// below this; tiles with no valid pixel are always skipped.
    #[arg(long, value_name = "FRACTION", default_value_t = 0.0)]
    pub min_valid: f64,
    /// Source bands to use, 1-based, in order (e.g. 4,3,2). Default: every band but alpha.
    #[arg(long, value_name = "LIST")]
    pub bands: Option<BandMapping>,
    /// Resampling when the target resolution differs from the scene's.
    #[arg(long, value_enum, default_value = "average")]
    pub resampling: Resampling,
    /// Reader threads (default: the number of CPUs).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Tiles read ahead of the consumer (default: twice the reader threads). Memory in flight
    /// is about (queue + threads) tiles.
    #[arg(long, value_name = "N")]
    pub queue: Option<usize>,
    /// Accept a raster without georeferencing (pixel coordinates, no CRS).
    #[arg(long)]
    pub pixel_coords: bool,
}

impl TilingArgs {
    /// Grid options; `default_size` stands in for a missing --tile-size (0: the model's).
    fn grid(&self, default_size: Option<usize>) -> Result<GridOptions> {
        let tile_size = match (self.tile_size, default_size) {
            (Some(n), _) => n,
            (None, Some(d)) => d,
            (None, None) => bail!("--tile-size is required"),
        };
        let overlap = match (self.overlap, self.stride) {
            (Some(o), _) => o,
            (None, Some(s)) => {
                if tile_size == 0 {
                    bail!("--stride needs --tile-size for model commands");
                }
                if s == 0 || s > tile_size {
                    bail!("--stride must be between 1 and the tile size {tile_size}");
                }
                tile_size - s
            }
            (None, None) => 0,
        };
        if !(0.0..=1.0).contains(&self.min_valid) {
            bail!(
                "--min-valid must be between 0 and 1, got {}",
                self.min_valid
            );
        }
        Ok(GridOptions {
            tile_size,
            overlap,
            target_gsd: self.target_gsd,
            edge: self.edge,
        })
    }

    fn read(&self) -> ReadOptions {
        let threads = self.threads.unwrap_or_else(default_threads);
        ReadOptions {
            bands: self
                .bands
                .clone()
                .unwrap_or_else(|| BandMapping::new(Vec::new())),
            resampling: self.resampling,
            threads,
            queue: self.queue.unwrap_or(2 * threads),
            min_valid: self.min_valid,
            fill: 0.0,
            read_pixels: true,
            order: ReadOrder::Stripes,
            deliver_skipped: false,
            ordered: false,
        }
    }
}

/// Batch size and read options for a model command: a batch worth of tiles is read ahead while
/// the model runs (unless --queue says otherwise).
fn model_reading(tiling: &TilingArgs, device: &DeviceArgs) -> (usize, ReadOptions) {
    let batch = device
        .batch_size
        .unwrap_or_else(|| device.device.default_batch_size());
    let mut read = tiling.read();
    // Model outputs do not depend on thread timing (same batches every run).
    read.ordered = true;
    if tiling.queue.is_none() {
        read.queue = batch.max(read.queue);
    }
    (batch, read)
}

/// A comma-separated list (`--prompts`, `--labels`), trimmed.
fn comma_list(list: Option<&str>) -> Vec<String> {
    list.map(|p| p.split(',').map(|q| q.trim().to_string()).collect())
        .unwrap_or_default()
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[derive(Debug, Args)]
pub struct TilesArgs {
    /// The scene (any GDAL raster).
    pub scene: String,
    #[command(flatten)]
    pub tiling: TilingArgs,
    /// Write the grid as a vector layer "tiles" (tile_id, row, col, x, y, src_x, src_y, src_w,
    /// src_h, valid_frac, padded); format from the extension or --format.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Vector format: gpkg (default), shp, geojson, fgb.
    #[arg(long, value_name = "FORMAT")]
    pub format: Option<String>,
    /// Also write every kept tile as a GeoTIFF chip <tile_id>.tif (source data type, tile
    /// geotransform, scene CRS; padding as nodata or masked) into this new directory.
    #[arg(long, value_name = "DIR")]
    pub chips: Option<PathBuf>,
    /// Replace existing outputs.
    #[arg(long)]
    pub overwrite: bool,
    /// Print a JSON summary.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BenchReadArgs {
    /// The scene (any GDAL raster).
    pub scene: String,
    #[command(flatten)]
    pub tiling: TilingArgs,
    /// Tiles per batch.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Scaling to [0, 1]: auto, none, minmax, percentile:LO,HI, range:LO,HI[;LO,HI...].
    #[arg(long, default_value = "auto")]
    pub scale: ScalingSpec,
}

/// Parse arguments, run, print. Returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            // One line: the chain of causes joined by ": ".
            let msg = format!("{e:#}").replace('\n', " ");
            let _ = writeln!(std::io::stderr(), "tessera: error: {msg}");
            1
        }
    }
}

fn run(cli: Cli) -> Result<i32> {
    init_logging(cli.verbose);
    match cli.command {
        Command::Info(a) => info(a),
        Command::Tiles(a) => tiles(a, cli.quiet),
        Command::Doctor(a) => doctor(a, cli.ort_lib),
        Command::Classify(a) => classify(a, cli.ort_lib, cli.quiet),
        Command::Caption(a) => caption(a, cli.ort_lib, cli.quiet),
        Command::Segment(a) => segment(a, cli.ort_lib, cli.quiet),
        Command::Detect(a) => detect(a, cli.ort_lib, cli.quiet),
        Command::Models(a) => models(a, cli.ort_lib),
        Command::Run(a) => run_pipeline(a, cli.ort_lib, cli.quiet),
        Command::Ingest(a) => ingest(a, None, cli.ort_lib, cli.quiet),
        Command::Watch(a) => ingest(a.ingest, Some(a.interval), cli.ort_lib, cli.quiet),
        Command::BenchRead(a) => bench_read(a),
        Command::BenchModel(a) => {
            let job = pipeline::BenchModelJob {
                model: a.model.clone(),
                ort_lib: cli.ort_lib,
                session: session_options(&a.device),
                batch_size: a
                    .device
                    .batch_size
                    .unwrap_or_else(|| a.device.device.default_batch_size()),
                iterations: a.iterations,
                warmup: a.warmup,
            };
            print_json(&pipeline::run_bench_model(job)?)?;
            Ok(0)
        }
    }
}

/// Logs through `tracing` on stderr: off by default, -v info, -vv debug.
fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => return,
        1 => tracing::Level::INFO,
        _ => tracing::Level::DEBUG,
    };
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// The shard from --shard or the scheduler's environment.
fn shard(flag: Option<&str>) -> Result<Option<crate::batch::Shard>> {
    match flag {
        Some(s) => Ok(Some(
            crate::batch::Shard::parse(s).map_err(anyhow::Error::msg)?,
        )),
        None => crate::batch::Shard::from_env().map_err(anyhow::Error::msg),
    }
}

fn run_pipeline(a: RunArgs, ort_lib: Option<PathBuf>, quiet: bool) -> Result<i32> {
    let pipeline = crate::batch::Pipeline::load(&a.pipeline)?;
    if a.check {
        println!(
            "{}: valid pipeline '{}' with {} stage(s): {}{}",
            a.pipeline.display(),
            pipeline.name,
            pipeline.stages.len(),
            pipeline
                .stages
                .iter()
                .map(|s| format!("{} ({} {})", s.name, s.task.name(), s.model.display()))
                .collect::<Vec<_>>()
                .join(", "),
            if pipeline.shared_pass {
                "; one shared read pass"
            } else {
                ""
            }
        );
        return Ok(0);
    }
    let Some(out) = a.out.clone() else {
        bail!("--out is required");
    };
    if a.jobs == 0 {
        bail!("--jobs must be at least 1");
    }
    let job = crate::batch::BatchJob {
        pipeline,
        inputs: a.inputs.clone(),
        out,
        jobs: a.jobs,
        force: a.force,
        shard: shard(a.shard.as_deref())?,
        asset: a.asset.clone(),
        ctx: crate::batch::JobContext {
            ort_lib,
            cache_dir: cache_dir(a.cache_dir.clone()),
            progress: !quiet,
            jobs: a.jobs,
        },
    };
    let report = crate::batch::run_batch(job)?;
    if a.json {
        print_json(&report)?;
    } else {
        for s in &report.scenes {
            match &s.error {
                Some(e) => println!("  failed  {}: {e}", s.name),
                None => println!(
                    "  {:<7} {} ({:.1} s)",
                    format!("{:?}", s.status).to_lowercase(),
                    s.name,
                    s.seconds
                ),
            }
        }
        println!(
            "{} scene(s): {} done, {} skipped, {} failed in {:.1} s{}",
            report.scenes.len(),
            report.done,
            report.skipped,
            report.failed,
            report.seconds,
            report
                .shard
                .map(|s| format!(
                    " (shard {}/{}; {} scene(s) in other shards)",
                    s.index, s.count, report.other_shards
                ))
                .unwrap_or_default()
        );
    }
    Ok(if report.failed > 0 { 3 } else { 0 })
}

/// Set by SIGINT/SIGTERM in `tessera watch`.
static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, std::sync::atomic::Ordering::SeqCst);
}

fn ingest(
    a: IngestArgs,
    interval: Option<f64>,
    ort_lib: Option<PathBuf>,
    quiet: bool,
) -> Result<i32> {
    use crate::batch::ingest::{status, IngestJob};
    let state = a
        .state
        .clone()
        .unwrap_or_else(|| IngestJob::default_state(&a.out));
    if a.status {
        let (rows, counts) = status(&state)?;
        if a.json {
            print_json(&serde_json::json!({ "state": state, "counts": counts, "scenes": rows }))?;
        } else {
            println!(
                "{}: {}",
                state.display(),
                counts
                    .iter()
                    .map(|(k, v)| format!("{v} {k}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            for r in &rows {
                println!(
                    "  {:<8} {} (attempts {}{}){}",
                    r.status.to_string(),
                    r.path,
                    r.attempts,
                    r.seconds.map(|s| format!(", {s:.1} s")).unwrap_or_default(),
                    r.error
                        .as_ref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                );
            }
        }
        return Ok(0);
    }
    let (Some(dir), Some(pipeline)) = (a.dir.clone(), a.pipeline.clone()) else {
        bail!("DIR and --pipeline are required");
    };
    if !dir.is_dir() {
        bail!("{}: not a folder", dir.display());
    }
    if a.jobs == 0 || a.max_attempts == 0 {
        bail!("--jobs and --max-attempts must be at least 1");
    }
    if !(a.settle >= 0.0 && a.retry_after >= 0.0 && a.lease > 0.0) {
        bail!("--settle and --retry-after must not be negative, --lease must be positive");
    }
    let patterns = a
        .patterns
        .iter()
        .map(|p| glob::Pattern::new(p).map_err(|e| anyhow::anyhow!("--pattern '{p}': {e}")))
        .collect::<Result<Vec<_>>>()?;
    let pipeline = crate::batch::Pipeline::load(&pipeline)?;
    let job = IngestJob {
        dir,
        pipeline,
        out: a.out.clone(),
        state,
        patterns,
        settle_seconds: a.settle,
        retry: crate::batch::state::RetryPolicy {
            max_attempts: a.max_attempts,
            backoff_seconds: a.retry_after,
        },
        lease_seconds: a.lease,
        shared_fs: a.shared_fs,
        jobs: a.jobs,
        shard: shard(a.shard.as_deref())?,
        ctx: crate::batch::JobContext {
            ort_lib,
            cache_dir: cache_dir(a.cache_dir.clone()),
            progress: !quiet,
            jobs: a.jobs,
        },
    };
    let identity = crate::batch::run::Identity::of(&job.pipeline)?;
    let print = |r: &crate::batch::ingest::IngestReport| {
        if a.json {
            let _ = print_json(r);
            return;
        }
        for s in &r.processed {
            match &s.error {
                Some(e) => println!("  failed  {}: {e}", s.name),
                None => println!("  done    {} ({:.1} s)", s.name, s.seconds),
            }
        }
        println!(
            "{} scene file(s): {} processed, {} failed, {} still being written",
            r.found,
            r.done,
            r.failed,
            r.waiting.len()
        );
    };
    match interval {
        None => {
            let report = job.run_once(&identity, &STOP)?;
            print(&report);
            Ok(if report.failed > 0 { 3 } else { 0 })
        }
        Some(interval) => {
            // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
            unsafe {
                libc::signal(
                    libc::SIGINT,
                    on_stop_signal as *const () as libc::sighandler_t,
                );
                libc::signal(
                    libc::SIGTERM,
                    on_stop_signal as *const () as libc::sighandler_t,
                );
            }
            job.watch(&identity, interval, &STOP, |r| {
                if !r.processed.is_empty() {
                    print(r);
                }
            })?;
            Ok(0)
        }
    }
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    let s = serde_json::to_string_pretty(value).context("encoding JSON")?;
    println!("{s}");
    Ok(())
}

fn info(a: InfoArgs) -> Result<i32> {
    let scene = Scene::open(
        &a.scene,
        &OpenOptions {
            pixel_coords: a.pixel_coords,
        },
    )?;
    let i = scene.info();
    if a.json {
        print_json(i)?;
        return Ok(0);
    }
    println!("{}", i.path);
    println!("  driver:      {}", i.driver);
    println!(
        "  size:        {} x {} pixels, {} bands",
        i.width,
        i.height,
        i.bands.len()
    );
    match &i.crs {
        Some(c) => println!(
            "  crs:         {}{}",
            c.name.as_deref().unwrap_or("unnamed"),
            c.epsg.map(|e| format!(" (EPSG:{e})")).unwrap_or_default()
        ),
        None => println!("  crs:         none (pixel coordinates)"),
    }
    let g = i.geotransform.0;
    println!(
        "  geotransform: [{}, {}, {}, {}, {}, {}]",
        g[0], g[1], g[2], g[3], g[4], g[5]
    );
    if !i.geotransform.is_north_up() {
        println!("               (rotated or sheared)");
    }
    println!(
        "  resolution:  {} x {} (CRS units)",
        i.resolution.0, i.resolution.1
    );
    if let Some((x, y)) = i.resolution_m {
        println!("               {x:.4} x {y:.4} m");
    }
    let b = i.footprint.bounds;
    println!("  bounds:      ({}, {}) - ({}, {})", b.0, b.1, b.2, b.3);
    if let Some(ll) = &i.footprint.lonlat {
        let (lons, lats): (Vec<f64>, Vec<f64>) = ll[..4].iter().copied().unzip();
        let fold = |v: &[f64], f: fn(f64, f64) -> f64, init| v.iter().copied().fold(init, f);
        println!(
            "  lon/lat:     ({:.6}, {:.6}) - ({:.6}, {:.6})",
            fold(&lons, f64::min, f64::INFINITY),
            fold(&lats, f64::min, f64::INFINITY),
            fold(&lons, f64::max, f64::NEG_INFINITY),
            fold(&lats, f64::max, f64::NEG_INFINITY)
        );
    }
    for band in &i.bands {
        let nodata = band
            .nodata
            .map(|n| format!(", nodata {n}"))
            .unwrap_or_default();
        let ovr = if band.overviews.is_empty() {
            String::new()
        } else {
            let sizes: Vec<String> = band
                .overviews
                .iter()
                .map(|(w, h)| format!("{w}x{h}"))
                .collect();
            format!(", overviews {}", sizes.join(" "))
        };
        println!(
            "  band {}:      {} {}, mask {}{}, block {}x{}{}{}",
            band.index,
            band.dtype,
            band.color,
            band.mask,
            nodata,
            band.block_size.0,
            band.block_size.1,
            ovr,
            if band.description.is_empty() {
                String::new()
            } else {
                format!(", \"{}\"", band.description)
            }
        );
    }
    Ok(0)
}

fn tiles(a: TilesArgs, quiet: bool) -> Result<i32> {
    let out = match &a.out {
        Some(path) => {
            let format = match &a.format {
                Some(name) => formats::by_name(name).ok_or_else(|| {
                    crate::output::OutputError::UnknownFormat {
                        path: path.display().to_string(),
                        format: name.clone(),
                    }
                })?,
                None => formats::for_path(path).unwrap_or(&formats::GeoPackage),
            };
            Some((path.clone(), format))
        }
        None => {
            if a.format.is_some() {
                bail!("--format needs --out");
            }
            None
        }
    };
    let job = TilesJob {
        scene: a.scene.clone(),
        open: OpenOptions {
            pixel_coords: a.tiling.pixel_coords,
        },
        grid: a.tiling.grid(None)?,
        read: a.tiling.read(),
        out,
        chips: a.chips.clone(),
        overwrite: a.overwrite,
        progress: !quiet,
    };
    let report = pipeline::run_tiles(job)?;
    if a.json {
        print_json(&report)?;
    } else {
        println!(
            "{}: {} tiles ({} cols x {} rows) of {} px, overlap {}: {} kept, {} skipped, {} padded",
            report.scene,
            report.stats.tiles_total,
            report.cols,
            report.rows,
            report.tile_size,
            report.overlap,
            report.stats.tiles_read,
            report.stats.tiles_skipped,
            report.padded
        );
        for o in &report.outputs {
            println!("  wrote {o}");
        }
    }
    Ok(0)
}

fn doctor(a: DoctorArgs, ort_lib: Option<PathBuf>) -> Result<i32> {
    let report = pipeline::run_doctor(ort_lib.as_deref());
    let code = if report.healthy() { 0 } else { 1 };
    if a.json {
        print_json(&report)?;
        return Ok(code);
    }
    println!("tessera {}", report.tessera_version);
    println!("GDAL {}", report.gdal_version);
    for d in &report.drivers {
        println!(
            "  {:<15} {:<4} {}",
            d.name,
            if d.available { "ok" } else { "MISSING" },
            d.purpose
        );
    }
    match &report.onnxruntime {
        Ok(rt) => {
            println!("ONNX Runtime {}", rt.version);
            println!(
                "  library:   {} (found via {})",
                rt.library.path.display(),
                rt.library.source
            );
            println!("  providers: {}", rt.providers.join(", "));
        }
        Err(e) => println!("ONNX Runtime: NOT AVAILABLE: {e}"),
    }
    Ok(code)
}

fn bench_read(a: BenchReadArgs) -> Result<i32> {
    let job = BenchReadJob {
        scene: a.scene.clone(),
        grid: a.tiling.grid(None)?,
        read: a.tiling.read(),
        scaling: a.scale.clone(),
        batch_size: a.batch_size,
    };
    let report = pipeline::run_bench_read(job)?;
    print_json(&report)?;
    Ok(0)
}

/// The cache folder: flag, then $TESSERA_CACHE_DIR, $XDG_CACHE_HOME/tessera, ~/.cache/tessera.
fn cache_dir(flag: Option<PathBuf>) -> Option<PathBuf> {
    flag.or_else(|| std::env::var_os("TESSERA_CACHE_DIR").map(PathBuf::from))
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("tessera")))
        .or_else(|| {
            std::env::var_os("HOME").map(|d| PathBuf::from(d).join(".cache").join("tessera"))
        })
}

fn read_labels(a: &ClassifyArgs) -> Result<Vec<String>> {
    let labels: Vec<String> = match (&a.labels, &a.labels_file) {
        (Some(list), _) => list.split(',').map(|l| l.trim().to_string()).collect(),
        (None, Some(file)) => std::fs::read_to_string(file)
            .with_context(|| format!("{}: cannot read the labels file", file.display()))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect(),
        (None, None) => Vec::new(),
    };
    if labels.iter().any(String::is_empty) {
        bail!(
            "empty label in --labels \"{}\"",
            a.labels.clone().unwrap_or_default()
        );
    }
    Ok(labels)
}

fn classify(a: ClassifyArgs, ort_lib: Option<PathBuf>, quiet: bool) -> Result<i32> {
    let format =
        formats::by_name(&a.format).ok_or_else(|| crate::output::OutputError::UnknownFormat {
            path: a
                .out
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            format: a.format.clone(),
        })?;
    let labels = read_labels(&a)?;
    let templates = if a.templates.is_empty() {
        DEFAULT_TEMPLATES.iter().map(|t| t.to_string()).collect()
    } else {
        a.templates.clone()
    };
    let cache = if a.no_cache {
        None
    } else {
        cache_dir(a.cache_dir.clone())
    };
    let device = a.device.device;
    let (batch, read) = model_reading(&a.tiling, &a.device);
    let job = ClassifyJob {
        scene: a.scene.clone(),
        open: OpenOptions {
            pixel_coords: a.tiling.pixel_coords,
        },
        model: a.model.clone(),
        ort_lib,
        session: SessionOptions {
            device,
            allow_fallback: a.device.allow_fallback,
            intra_threads: a.device.intra_threads.unwrap_or(0),
            trt_cache: a
                .device
                .trt_cache
                .clone()
                .or_else(|| cache.as_ref().map(|c| c.join("tensorrt"))),
        },
        labels,
        templates,
        min_score: a.min_score,
        grid: a.tiling.grid(Some(0))?,
        read,
        scaling: a.scale.clone(),
        batch_size: batch,
        out: a.out.clone(),
        format,
        overwrite: a.overwrite,
        cache_dir: cache.map(|c| c.join("text-embeddings")),
        progress: !quiet,
        feed: None,
    };
    let report = pipeline::run_classify(job)?;
    if let Some(reason) = &report.fallback {
        if !quiet {
            eprintln!("tessera: warning: {reason}; running on {}", report.provider);
        }
    }
    if a.json {
        print_json(&report)?;
        return Ok(0);
    }
    if !report.model_trained {
        println!(
            "note: {} has untrained (random) weights: its labels are meaningless",
            report.model
        );
    }
    println!(
        "{}: {} tiles classified ({} skipped) with {} on {} in {:.1} s",
        report.scene,
        report.tiles_read,
        report.tiles_skipped,
        report.model,
        report.provider,
        report.timings.total_seconds
    );
    for (label, n) in &report.label_counts {
        println!("  {label:<20} {n}");
    }
    for o in &report.outputs {
        println!("  wrote {o}");
    }
    Ok(0)
}

fn models(a: ModelsArgs, ort_lib: Option<PathBuf>) -> Result<i32> {
    match a.command {
        ModelsCommand::Check { dir, json } => {
            let runtime = Runtime::load(ort_lib.as_deref())?;
            let problems = crate::models::check_package(runtime, &dir);
            if json {
                print_json(
                    &serde_json::json!({ "package": dir, "valid": problems.is_empty(), "problems": problems }),
                )?;
            } else if problems.is_empty() {
                println!("{}: valid model package", dir.display());
            } else {
                println!("{}: {} problem(s)", dir.display(), problems.len());
                for p in &problems {
                    println!("  - {p}");
                }
            }
            Ok(if problems.is_empty() { 0 } else { 1 })
        }
    }
}

fn caption(a: CaptionArgs, ort_lib: Option<PathBuf>, quiet: bool) -> Result<i32> {
    let format =
        formats::by_name(&a.format).ok_or_else(|| crate::output::OutputError::UnknownFormat {
            path: a
                .out
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            format: a.format.clone(),
        })?;
    let scene_window = match &a.scene_window {
        None => None,
        Some(w) => {
            let v: Vec<usize> = w
                .split(',')
                .map(|p| p.trim().parse::<usize>())
                .collect::<std::result::Result<_, _>>()
                .map_err(|_| anyhow::anyhow!("--scene-window '{w}' is not X,Y,W,H in pixels"))?;
            match v.as_slice() {
                [x, y, w, h] => Some((*x, *y, *w, *h)),
                _ => bail!("--scene-window '{w}' is not X,Y,W,H in pixels"),
            }
        }
    };
    // Generation settings: flags override the manifest's defaults, filled in by the job.
    let overrides = [
        a.num_beams.is_some(),
        a.max_new_tokens.is_some(),
        a.min_new_tokens.is_some(),
        a.repetition_penalty.is_some(),
        a.length_penalty.is_some(),
    ];
    let params = if overrides.iter().any(|&o| o) {
        let package = crate::models::ModelPackage::load(&a.model)?;
        let g = package.manifest.generation.clone().unwrap_or_default();
        let p = GenerationParams {
            max_new_tokens: a.max_new_tokens.unwrap_or(g.max_new_tokens),
            min_new_tokens: a.min_new_tokens.unwrap_or(g.min_new_tokens),
            num_beams: a.num_beams.unwrap_or(g.num_beams),
            repetition_penalty: a.repetition_penalty.unwrap_or(g.repetition_penalty),
            length_penalty: a.length_penalty.unwrap_or(g.length_penalty),
        };
        if p.num_beams == 0 || p.max_new_tokens == 0 {
            bail!("--num-beams and --max-new-tokens must be at least 1");
        }
        if p.min_new_tokens > p.max_new_tokens {
            bail!(
                "--min-new-tokens {} is above --max-new-tokens {}",
                p.min_new_tokens,
                p.max_new_tokens
            );
        }
        if !p.repetition_penalty.is_finite() || p.repetition_penalty <= 0.0 {
            bail!("--repetition-penalty must be positive");
        }
        Some(p)
    } else {
        None
    };
    let device = a.device.device;
    let (batch, read) = model_reading(&a.tiling, &a.device);
    let job = CaptionJob {
        scene: a.scene.clone(),
        open: OpenOptions {
            pixel_coords: a.tiling.pixel_coords,
        },
        model: a.model.clone(),
        ort_lib,
        session: SessionOptions {
            device,
            allow_fallback: a.device.allow_fallback,
            intra_threads: a.device.intra_threads.unwrap_or(0),
            trt_cache: a
                .device
                .trt_cache
                .clone()
                .or_else(|| cache_dir(None).map(|c| c.join("tensorrt"))),
        },
        prompt: a.prompt.clone(),
        params,
        grid: a.tiling.grid(Some(0))?,
        read,
        scaling: a.scale.clone(),
        batch_size: batch,
        tiles: !a.scene_only,
        scene_window,
        out: a.out.clone(),
        format,
        overwrite: a.overwrite,
        progress: !quiet,
        feed: None,
    };
    let report = pipeline::run_caption(job)?;
    if let Some(reason) = &report.fallback {
        if !quiet {
            eprintln!("tessera: warning: {reason}; running on {}", report.provider);
        }
    }
    if a.json {
        print_json(&report)?;
        return Ok(0);
    }
    if !report.model_trained {
        println!(
            "note: {} has untrained (random) weights: its captions are meaningless",
            report.model
        );
    }
    println!("scene: {}", report.scene_caption);
    println!(
        "{} tiles captioned ({} skipped) on {} in {:.1} s ({:.1} captions/s, {:.0} tokens/s)",
        report.tiles_captioned,
        report.tiles_skipped,
        report.provider,
        report.seconds,
        report.captions_per_second,
        report.tokens_per_second
    );
    for o in &report.outputs {
        println!("  wrote {o}");
    }
    Ok(0)
}

/// Session options from the device flags.
fn session_options(d: &DeviceArgs) -> SessionOptions {
    SessionOptions {
        device: d.device,
        allow_fallback: d.allow_fallback,
        intra_threads: d.intra_threads.unwrap_or(0),
        trt_cache: d
            .trt_cache
            .clone()
            .or_else(|| cache_dir(None).map(|c| c.join("tensorrt"))),
    }
}

fn segment(a: SegmentArgs, ort_lib: Option<PathBuf>, quiet: bool) -> Result<i32> {
    let format =
        formats::by_name(&a.format).ok_or_else(|| crate::output::OutputError::UnknownFormat {
            path: a.out.display().to_string(),
            format: a.format.clone(),
        })?;
    if !(a.simplify >= 0.0 && a.min_area >= 0.0) {
        bail!("--simplify and --min-area must not be negative");
    }
    if let Some(t) = a.threshold {
        if !(0.0..=1.0).contains(&t) {
            bail!("--threshold must be between 0 and 1, got {t}");
        }
    }
    let (batch, read) = model_reading(&a.tiling, &a.device);
    let job = SegmentJob {
        scene: a.scene.clone(),
        open: OpenOptions {
            pixel_coords: a.tiling.pixel_coords,
        },
        model: a.model.clone(),
        ort_lib,
        session: session_options(&a.device),
        grid: a.tiling.grid(Some(0))?,
        overlap_given: a.tiling.overlap.is_some() || a.tiling.stride.is_some(),
        gsd_given: a.tiling.target_gsd.is_some(),
        read,
        scaling: a.scale.clone(),
        batch_size: batch,
        window: a.blend,
        threshold: a.threshold,
        prompts: comma_list(a.prompts.as_deref()),
        probabilities: a.probabilities,
        simplify: a.simplify,
        min_area: a.min_area,
        out: a.out.clone(),
        format,
        overwrite: a.overwrite,
        progress: !quiet,
        feed: None,
    };
    let report = pipeline::run_segment(job)?;
    if let Some(reason) = &report.fallback {
        if !quiet {
            eprintln!("tessera: warning: {reason}; running on {}", report.provider);
        }
    }
    if a.json {
        print_json(&report)?;
        return Ok(0);
    }
    println!(
        "{}: {} tiles segmented ({} skipped) on {} in {:.1} s; {} polygons",
        report.scene,
        report.tiles_read,
        report.tiles_skipped,
        report.provider,
        report.seconds,
        report.polygons
    );
    for o in &report.outputs {
        println!("  wrote {o}");
    }
    Ok(0)
}

fn detect(a: DetectArgs, ort_lib: Option<PathBuf>, quiet: bool) -> Result<i32> {
    let format =
        formats::by_name(&a.format).ok_or_else(|| crate::output::OutputError::UnknownFormat {
            path: a
                .out
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            format: a.format.clone(),
        })?;
    for (name, v) in [("--confidence", a.confidence), ("--iou", a.iou)] {
        if let Some(v) = v {
            if !(0.0..=1.0).contains(&v) {
                bail!("{name} must be between 0 and 1, got {v}");
            }
        }
    }
    if !(0.0..=1.0).contains(&a.cut_ios) {
        bail!("--cut-ios must be between 0 and 1, got {}", a.cut_ios);
    }
    let (batch, read) = model_reading(&a.tiling, &a.device);
    let job = DetectJob {
        scene: a.scene.clone(),
        open: OpenOptions {
            pixel_coords: a.tiling.pixel_coords,
        },
        model: a.model.clone(),
        ort_lib,
        session: session_options(&a.device),
        grid: a.tiling.grid(Some(0))?,
        overlap_given: a.tiling.overlap.is_some() || a.tiling.stride.is_some(),
        gsd_given: a.tiling.target_gsd.is_some(),
        read,
        scaling: a.scale.clone(),
        batch_size: batch,
        confidence: a.confidence,
        prompts: comma_list(a.prompts.as_deref()),
        iou: a.iou,
        method: a.method,
        cut_ios: a.cut_ios,
        class_aware: !a.class_agnostic,
        out: a.out.clone(),
        format,
        overwrite: a.overwrite,
        progress: !quiet,
        feed: None,
    };
    let report = pipeline::run_detect(job)?;
    if let Some(reason) = &report.fallback {
        if !quiet {
            eprintln!("tessera: warning: {reason}; running on {}", report.provider);
        }
    }
    if a.json {
        print_json(&report)?;
        return Ok(0);
    }
    println!(
        "{}: {} objects ({} boxes before merging) in {} tiles on {} in {:.1} s",
        report.scene,
        report.detections,
        report.raw_detections,
        report.tiles_read,
        report.provider,
        report.seconds
    );
    for (label, n) in &report.counts {
        println!("  {label:<20} {n}");
    }
    for o in &report.outputs {
        println!("  wrote {o}");
    }
    Ok(0)
}
