//! The command line: every command's arguments. Option groups shared with pipeline files
//! come from [`crate::options`] and are flattened in; what is only a command-line matter
//! (positional scene, `--out`, `--json`) is declared here.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::options::{
    CaptionOptions, ClassifyOptions, DetectOptions, EvalOptions, InputOptions, OutputOptions,
    RuntimeOptions, SegmentOptions, StacOptions, TilingOptions,
};

const AFTER_HELP: &str = "\
Scenes are any raster GDAL reads (GeoTIFF/COG first), local or remote (/vsicurl/, /vsis3/,
/vsizip/ paths pass straight to GDAL). Outputs are written under a temporary name and renamed
when complete. Exit status: 0 success (also when the reader of stdout closes it early,
`| head`), 1 error (for a batch, run or ingest: every scene failed), 2 bad command line, 3 some
scenes of a batch failed while the others completed (now or in an earlier run).";

/// Georeferenced answers from satellite and aerial scenes with vision-language models.
#[derive(Debug, Parser)]
#[command(name = "tessera", version, about, after_help = AFTER_HELP)]
pub struct Cli {
    /// ONNX Runtime library to load (default: ORT_DYLIB_PATH, then the project's
    /// .tessera/ort/ set up by `make setup`, then next to the executable).
    #[arg(long, global = true, value_name = "PATH")]
    pub ort_lib: Option<PathBuf>,

    /// No progress bars.
    #[arg(long, short, global = true, conflicts_with = "progress")]
    pub quiet: bool,

    /// Show the progress of every phase (reading, model, stitching, COG assembly,
    /// polygonizing, writing) even when stderr is not a terminal: plain lines then, for logs.
    /// Default: bars on a terminal only.
    #[arg(long, global = true)]
    pub progress: bool,

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
    /// COG, optional probabilities) and polygons made from the mosaic; with --refiner, instance
    /// segmentation (boxes refined by SAM, one instance per object across tile seams).
    Segment(SegmentArgs),
    /// Object detection over a whole scene: boxes mapped to map coordinates and merged across
    /// tiles (NMS or weighted box fusion, boxes cut by tile edges joined).
    Detect(DetectArgs),
    /// Evaluate model packages on labelled data: accuracy (top-1/top-5, mAP, mIoU, BLEU-4 and
    /// CIDEr), tiles/s, size on disk, peak memory and agreement with the first model, in one
    /// table (eval.md, eval.json) with charts (PNG).
    Eval(EvalArgs),
    /// Run a pipeline file (pipelines/*.toml) over many scenes: files, folders, globs, @lists
    /// of paths or STAC Items. Scenes run in parallel, each into OUT/<scene>/ (written under a
    /// temporary name, renamed when complete, with record.json and a STAC item.json: every
    /// output as an asset with its grid, bands and class legend, times and a derived_from
    /// link from the input Item); scenes already complete with the same inputs, pipeline and
    /// models are skipped.
    Run(RunArgs),
    /// One ingestion pass over a folder, a STAC API (--stac-api) or a static STAC catalog
    /// (--stac-catalog), for cron or a systemd timer: new or changed scenes (files, or Items by
    /// id and `updated`) are run through a pipeline once, with status, attempts, timings and
    /// errors kept in a state database; `--status` lists what was done, failed and is pending.
    Ingest(IngestArgs),
    /// Ingest a folder or STAC source continuously: a pass every --interval seconds until
    /// SIGINT/SIGTERM
    /// (the scene in progress finishes first).
    Watch(WatchArgs),
    /// Model packages: validate one (`tessera models check DIR`), or make one of a downloaded
    /// ONNX folder (`tessera models import DIR --out PKG`).
    Models(ModelsArgs),
    /// Benchmark reading, tiling and scaling a scene into float32 CHW batches.
    BenchRead(BenchReadArgs),
    /// Benchmark a model alone: images/s of a package's image graph (CLIP, segmenter,
    /// detector) on a device, batches already in memory.
    BenchModel(BenchModelArgs),
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub options: EvalOptions,
    /// Output folder (created; written under a temporary name until complete): eval.json,
    /// eval.md and the charts (accuracy_vs_speed.png, confusion_N.png, pr_curves_N.png).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    #[command(flatten)]
    pub input: InputOptions,
    #[command(flatten)]
    pub tiling: TilingOptions,
    #[command(flatten)]
    pub runtime: RuntimeOptions,
    /// Cache folder: text embeddings (default: $TESSERA_CACHE_DIR, $XDG_CACHE_HOME/tessera
    /// or ~/.cache/tessera).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Replace an existing output folder.
    #[arg(long)]
    pub overwrite: bool,
    /// Print the table as JSON (what eval.json holds, with the files written).
    #[arg(long)]
    pub json: bool,
    /// Internal: run only this model (the index into --model) and print its job's report.
    #[arg(long, hide = true, requires_all = ["worker_dir", "worker_out"])]
    pub worker_model: Option<usize>,
    /// Internal: the evaluation's scratch folder.
    #[arg(long, hide = true, value_name = "DIR")]
    pub worker_dir: Option<PathBuf>,
    /// Internal: the model's output folder.
    #[arg(long, hide = true, value_name = "DIR")]
    pub worker_out: Option<PathBuf>,
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
    /// from SLURM_ARRAY_TASK_ID/_MIN/_STEP/_COUNT (a Slurm job array over a range, task
    /// MIN + I*STEP is shard I of COUNT) or JOB_COMPLETION_INDEX/TESSERA_SHARD_COUNT
    /// (Kubernetes Indexed Jobs); all scenes otherwise.
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
    /// report.html per scene and index.html over them (on unless the pipeline's
    /// `[output] report = false`).
    #[command(flatten)]
    pub report: crate::options::ReportFlags,
}

#[derive(Debug, Args)]
pub struct IngestArgs {
    /// The folder scenes arrive in (searched recursively; hidden files and folders skipped).
    /// Not with --stac-api / --stac-catalog (or a pipeline's [ingest] source).
    pub dir: Option<PathBuf>,
    /// The pipeline file.
    #[arg(long, value_name = "FILE", required_unless_present = "status")]
    pub pipeline: Option<PathBuf>,
    /// Output folder: one sub-folder per scene (its path below DIR, '/' as '_'; a STAC Item's
    /// <collection>.<id>).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// The ingestion state: a SQLite file (default: OUT/.tessera-state.sqlite; one host), or a
    /// PostgreSQL database URL, postgresql://USER[:PASSWORD]@HOST[:PORT]/DB (or postgres://),
    /// for instances on several hosts.
    #[arg(long, value_name = "FILE|URL")]
    pub state: Option<String>,
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
    /// A claim not renewed for this long is taken over (its instance is presumed dead); a
    /// running scene renews its claim every quarter of it. SQLite state: claims of instances on
    /// other hosts (default 21600; dead processes on this host are taken over at once).
    /// PostgreSQL state: every claim (default 300).
    #[arg(long, value_name = "SECONDS")]
    pub lease: Option<f64>,
    /// Instances on several hosts share the SQLite state file over a network file system (uses
    /// SQLite's rollback journal, which needs working file locks, instead of WAL). A
    /// PostgreSQL state (--state postgresql://...) needs no shared file system.
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
    #[command(flatten)]
    pub stac: StacOptions,
    /// STAC Items: the asset to read, by key or role (default: the pipeline's [input] asset,
    /// else the first GeoTIFF data asset).
    #[arg(long, value_name = "KEY")]
    pub asset: Option<String>,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Seconds between passes.
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    pub interval: f64,
    #[command(flatten)]
    pub ingest: IngestArgs,
}

#[derive(Debug, Args)]
pub struct BenchModelArgs {
    /// Model package folder (or an ONNX file with Deepness metadata).
    pub model: PathBuf,
    #[command(flatten)]
    pub runtime: RuntimeOptions,
    /// Tiles per model call (default: 16 on CPU, 256 on GPUs).
    #[arg(long, value_name = "N")]
    pub batch_size: Option<usize>,
    /// Timed batches.
    #[arg(long, default_value_t = 20)]
    pub iterations: usize,
    /// Untimed batches first (provider warm-up, allocations).
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
}

/// What every model command shares: the scene side, the runtime, the vector format.
#[derive(Debug, Args)]
pub struct ModelCommandArgs {
    #[command(flatten)]
    pub input: InputOptions,
    #[command(flatten)]
    pub tiling: TilingOptions,
    #[command(flatten)]
    pub runtime: RuntimeOptions,
    #[command(flatten)]
    pub output: OutputOptions,
    /// Cache folder: text embeddings, TensorRT engines (default: $TESSERA_CACHE_DIR,
    /// $XDG_CACHE_HOME/tessera or ~/.cache/tessera).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Replace an existing output folder.
    #[arg(long)]
    pub overwrite: bool,
    /// Print a JSON summary (every written path, counts, timings).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ClassifyArgs {
    /// The scene (any GDAL raster).
    pub scene: String,
    #[command(flatten)]
    pub options: ClassifyOptions,
    /// Output folder (created; written under a temporary name until complete):
    /// classes.tif, probabilities.tif, tiles.<ext>, labels.<ext>.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub common: ModelCommandArgs,
}

#[derive(Debug, Args)]
pub struct CaptionArgs {
    /// The scene (any GDAL raster).
    pub scene: String,
    #[command(flatten)]
    pub options: CaptionOptions,
    /// Output folder: captions.jsonl, tiles.<ext> (caption per tile), scene.<ext>, and for
    /// Shapefiles captions.csv with captions longer than 254 bytes.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub common: ModelCommandArgs,
}

#[derive(Debug, Args)]
pub struct SegmentArgs {
    /// The scene (any GDAL raster).
    pub scene: String,
    #[command(flatten)]
    pub options: SegmentOptions,
    /// Output folder: classes.tif, [probabilities.tif], polygons.<ext>; with --refiner
    /// classes.tif, instances.tif and instances.<ext>.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    #[command(flatten)]
    pub common: ModelCommandArgs,
}

#[derive(Debug, Args)]
pub struct DetectArgs {
    /// The scene (any GDAL raster).
    pub scene: String,
    #[command(flatten)]
    pub options: DetectOptions,
    /// Output folder: detections.<ext> (polygons with class, label, score, tile_id; and phrase,
    /// the text the model wrote, for generative packages).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub common: ModelCommandArgs,
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
    /// Make a model package of a downloaded ONNX folder (transformers.js or optimum layout).
    #[command(after_long_help = IMPORT_HELP)]
    Import(ImportArgs),
}

const IMPORT_HELP: &str = "\
Layouts:
  transformers.js (Xenova/*, onnx-community/*): config.json, preprocessor_config.json,
    tokenizer.json, onnx/vision_model.onnx + onnx/text_model.onnx, precision variants
    onnx/vision_model_<suffix>.onnx (fp16 _fp16, int8 _int8 else _quantized, uint8 _uint8,
    q4 _q4, q4f16 _q4f16, bnb4 _bnb4, quantized/q8 _quantized), often onnx/model.onnx too.
  optimum (optimum-cli export onnx): model.onnx (input_ids, pixel_values, attention_mask ->
    logits_per_image, logits_per_text, text_embeds, image_embeds) with the same JSON files.
    A combined graph alone is split into an image graph and a text graph whose other tower is
    fed a constant (ONNX Runtime folds it when loading): same answers, but each graph file
    holds both towers' weights (about twice the model's size in memory and on disk).
Families, from config.json model_type: clip -> clip, siglip and siglip2 -> siglip,
chinese_clip -> chinese-clip.

Scores: config.json holds only the initial logit_scale (and SigLIP logit_bias), not the
trained ones. With a combined graph in the folder (onnx/model.onnx, model.onnx) they are
recovered by running it once on two small images and four texts (its logits are
scale * cos (+ bias)); otherwise give --logit-scale (and --logit-bias for SigLIP): the
checkpoint's exp(logit_scale), e.g. 100 for OpenAI CLIP. Labels (the argmax) do not depend
on the scale; the softmax probabilities do, and SigLIP's sigmoid scores depend on both.

The package is written under a temporary name, checked like `tessera models check`, and
renamed into place; when it is not valid nothing is left.";

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The downloaded folder (with config.json, preprocessor_config.json, tokenizer.json and
    /// the ONNX graphs).
    pub dir: PathBuf,
    /// The package folder to write (must not exist, or be empty).
    #[arg(long, value_name = "PKG")]
    pub out: PathBuf,
    /// Precision variant of transformers.js folders: fp32, fp16, int8, uint8, q4, q4f16,
    /// bnb4, quantized (q8). A variant the folder lacks is an error listing those it has.
    #[arg(long, default_value = "fp32", value_name = "V", value_parser = parse_variant)]
    pub variant: crate::models::import::Variant,
    /// Copy the files into the package instead of linking them (relative symbolic links into
    /// DIR, the default: no second copy of the weights, but DIR must stay where it is).
    #[arg(long)]
    pub copy: bool,
    /// The trained score scale, exp(logit_scale) of the checkpoint (needed when the folder has
    /// no combined model.onnx to recover it from; overrides the recovered one).
    #[arg(long, value_name = "X", allow_negative_numbers = true)]
    pub logit_scale: Option<f32>,
    /// SigLIP's trained score bias (with --logit-scale).
    #[arg(long, value_name = "Y", allow_negative_numbers = true)]
    pub logit_bias: Option<f32>,
    /// The package's name in model.toml (default: the folder's name).
    #[arg(long, value_name = "N")]
    pub name: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

fn parse_variant(s: &str) -> Result<crate::models::import::Variant, String> {
    crate::models::import::Variant::parse(s).ok_or_else(|| {
        let names: Vec<&str> = crate::models::import::Variant::ALL
            .iter()
            .map(|v| v.name())
            .collect();
        format!("'{s}' is not a variant ({})", names.join(", "))
    })
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

#[derive(Debug, Args)]
pub struct TilesArgs {
    /// The scene (any GDAL raster).
    pub scene: String,
    #[command(flatten)]
    pub input: InputOptions,
    #[command(flatten)]
    pub tiling: TilingOptions,
    /// Write the grid as a vector layer "tiles" (tile_id, row, col, x, y, src_x, src_y, src_w,
    /// src_h, valid_frac, padded); format from the extension or --format.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub output: OutputOptions,
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
    pub input: InputOptions,
    /// Tiling; --batch-size is the tiles per batch (default 64).
    #[command(flatten)]
    pub tiling: TilingOptions,
}
