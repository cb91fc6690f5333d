//! `tessera classify`: CLIP zero-shot classification of every tile of a scene, written as
//! georeferenced rasters (class index and probabilities, one pixel per tile stride, COG) and
//! vector layers (tiles with their top-3 labels; labels dissolved into multipolygons).
//!
//! Flow: reader threads read, scale and normalise tiles (in parallel, ahead of the model,
//! through the bounded queue); this thread packs them into batches and runs the image encoder;
//! probabilities are kept per tile (a few floats) and the outputs are written at the end.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use super::driver::{drive, ModelStage, RunSpec, SceneSink};
use super::{stream_model_tiles, Phase, PipelineError};
use crate::models::dual_encoder::{DeviceLabels, DualEncoderModel};
use crate::models::ModelError;
use crate::models::{ImageElement, StagedBatch};
use crate::options::InvalidOption;
use crate::output::{
    class_color, polygonize_classes, write_cog, FieldKind, FieldSpec, FieldValue, GeometryKind,
    LayerArea, LayerStyle, Legend, PendingOutput, RasterSpec, Symbol, VectorLayerWriter,
};
use crate::raster::{GeoTransform, Scene};
use crate::runtime::Runtime;
use crate::tiling::{stream_tiles, Tile, TileData, TileGrid};

/// Class value of tiles whose best score is below `--min-score`.
pub const UNKNOWN: &str = "unknown";
/// Class-raster value of tiles that were skipped (no valid pixels).
pub const CLASS_NODATA: u8 = 255;

/// What `tessera classify` does.
#[derive(Debug)]
pub struct ClassifyJob {
    /// The scene side: scene, model, runtime, grid, reading, scaling, batch, vector format.
    pub base: crate::options::SceneJobBase,
    pub labels: Vec<String>,
    /// Prompt templates; empty: the package's `[prompts]` ensemble, else the family's
    /// default ([`DualEncoderModel::default_templates`]).
    pub templates: Vec<String>,
    pub min_score: Option<f32>,
    pub out: Option<PathBuf>,
    pub overwrite: bool,
    pub cache_dir: Option<PathBuf>,
    /// Tiles from a shared read pass (multi-model pipelines) instead of reading the scene.
    pub feed: Option<super::feed::FeedPort>,
}

/// Wall-clock split of a run.
#[derive(Debug, Default, Serialize)]
pub struct Timings {
    pub total_seconds: f64,
    /// Loading the model and opening the scene.
    pub load_seconds: f64,
    /// Inside the image encoder.
    pub model_seconds: f64,
    /// Text embeddings (0 on a cache hit).
    pub text_seconds: f64,
    /// Waiting for tiles from the readers.
    pub wait_seconds: f64,
    pub write_seconds: f64,
}

/// What `tessera classify` did.
#[derive(Debug, Serialize)]
pub struct ClassifyReport {
    /// Scene, model, provider, tile counts, outputs, memory.
    #[serde(flatten)]
    pub run: super::SceneRunReport,
    pub model_trained: bool,
    /// Batches are copied to the device from pinned host memory (CUDA, TensorRT).
    pub pinned_input: bool,
    /// Where the image-label similarity and scoring ran (the built-in head after the image
    /// encoder: CUDAExecutionProvider when the encoder is on a GPU).
    pub similarity_provider: String,
    /// Tiles went to the model as the bytes read (uint8-input model, 8-bit bands scaled
    /// 0..255), never as floats.
    pub byte_tiles: bool,
    pub labels: Vec<String>,
    pub templates: Vec<String>,
    /// How labels were scored: `softmax` (one label per tile, probabilities summing to 1) or
    /// `sigmoid` (each label on its own: several can pass `--min-score` on one tile).
    pub scoring: &'static str,
    pub text_cache_hit: bool,
    pub tile_size: usize,
    pub overlap: usize,
    pub cols: usize,
    pub rows: usize,
    pub tiles_read: usize,
    pub label_counts: BTreeMap<String, usize>,
    pub timings: Timings,
    pub tiles_per_second: f64,
}

/// One classified tile.
#[derive(Debug, Clone)]
pub struct TileResult {
    pub tile: Tile,
    pub valid_fraction: f64,
    pub probs: Vec<f32>,
}

impl TileResult {
    /// Indexes of the `k` best labels, best first.
    pub fn top(&self, k: usize) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..self.probs.len()).collect();
        idx.sort_by(|&a, &b| self.probs[b].total_cmp(&self.probs[a]).then(a.cmp(&b)));
        idx.truncate(k);
        idx
    }
}

/// Fields of the tile layer (Shapefile-safe names).
pub const TILE_FIELDS: [FieldSpec; 10] = [
    FieldSpec {
        name: "tile_id",
        kind: FieldKind::String,
    },
    FieldSpec {
        name: "row",
        kind: FieldKind::Integer,
    },
    FieldSpec {
        name: "col",
        kind: FieldKind::Integer,
    },
    FieldSpec {
        name: "label",
        kind: FieldKind::String,
    },
    FieldSpec {
        name: "score",
        kind: FieldKind::Real,
    },
    FieldSpec {
        name: "top2_label",
        kind: FieldKind::String,
    },
    FieldSpec {
        name: "top2_score",
        kind: FieldKind::Real,
    },
    FieldSpec {
        name: "top3_label",
        kind: FieldKind::String,
    },
    FieldSpec {
        name: "top3_score",
        kind: FieldKind::Real,
    },
    FieldSpec {
        name: "valid_frac",
        kind: FieldKind::Real,
    },
];

/// Fields of the dissolved label layer.
pub const LABEL_FIELDS: [FieldSpec; 4] = [
    FieldSpec {
        name: "label",
        kind: FieldKind::String,
    },
    FieldSpec {
        name: "class",
        kind: FieldKind::Integer,
    },
    FieldSpec {
        name: "tiles",
        kind: FieldKind::Integer,
    },
    FieldSpec {
        name: "area_m2",
        kind: FieldKind::Real,
    },
];

fn model_err(e: ModelError) -> PipelineError {
    PipelineError::Model(e)
}

/// Run the job.
///
/// # Errors
/// Bad scene, model, labels or options; inference failure; unwritable outputs. Nothing is
/// left under `--out` unless the whole job succeeded.
pub fn run_classify(mut job: ClassifyJob) -> Result<ClassifyReport, PipelineError> {
    let start = Instant::now();
    let mut timings = Timings::default();
    validate_labels(&job)?;
    let loading = Phase::spinner(job.base.progress, "loading model");
    let runtime = Runtime::load(job.base.ort_lib.as_deref())?;
    let mut model =
        DualEncoderModel::load(runtime, &job.base.model, &job.base.session).map_err(model_err)?;
    tracing::info!(
        model = %job.base.model.display(),
        provider = model.image_provider().0,
        input_size = model.input_size(),
        "model loaded"
    );
    if job.templates.is_empty() {
        job.templates = model.default_templates();
    }
    check_templates(&job.templates)?;
    let size = model.input_size();
    crate::options::check_batch_bytes(job.base.batch_size, size)?;
    let tiles = super::ModelTiles {
        size,
        any_size: false,
        defaults: None,
    };
    let (scene, scaling, grid) = super::model_input(
        &job.base.scene,
        &job.base.open,
        &job.base.grid,
        &mut job.base.read,
        &job.base.scaling,
        &tiles,
    )?;
    timings.load_seconds = start.elapsed().as_secs_f64();
    loading.finish();
    // Claim the output folder before the long part, so a bad --out fails fast.
    let pending = match &job.out {
        Some(dir) => Some(PendingOutput::dir(dir, job.overwrite)?),
        None => None,
    };

    let t = Instant::now();
    let (label_embeds, cache_hit) = super::phase(job.base.progress, "embedding labels", || {
        model
            .label_embeddings(&job.labels, &job.templates, job.cache_dir.as_deref())
            .map_err(model_err)
    })?;
    timings.text_seconds = t.elapsed().as_secs_f64();

    let swept = classify_tiles(&mut job, &mut model, &scene, &scaling, &grid, &label_embeds)?;
    let Classified {
        stats,
        mut results,
        model_seconds,
        wait_seconds,
        bytes,
    } = swept;
    timings.model_seconds = model_seconds;
    timings.wait_seconds = wait_seconds;
    tracing::info!(
        read = stats.tiles_read,
        skipped = stats.tiles_skipped,
        model_seconds,
        "tiles classified"
    );
    results.sort_by_key(|r| (r.tile.row, r.tile.col));

    // Labels with the optional "unknown" class.
    let mut names = job.labels.clone();
    if job.min_score.is_some() {
        names.push(UNKNOWN.to_string());
    }
    let class_of = |r: &TileResult| -> u8 {
        let best = r.top(1)[0];
        match job.min_score {
            Some(min) if r.probs[best] < min => job.labels.len() as u8,
            _ => best as u8,
        }
    };
    let label_counts = count_labels(&names, &results, &class_of);

    let t = Instant::now();
    let mut outputs = Vec::new();
    let (provider, fallback) = model.image_provider();
    let mut section = None;
    if let (Some(pending), Some(dir)) = (pending, &job.out) {
        let model_name = model.package().manifest.name.clone();
        let (legend, areas) = write_outputs(
            &job,
            &scene,
            &grid,
            &results,
            &names,
            &class_of,
            &pending,
            &model_name,
        )?;
        timings.write_seconds = t.elapsed().as_secs_f64();
        let mut s = report_section(&job, provider, &grid, &label_counts, &timings);
        s.areas = Some(super::report::class_areas(
            &legend,
            &areas,
            &[],
            (None, "the classified tiles"),
            scene.crs_wkt().is_some(),
        ));
        s.class_map = Some(crate::output::report::ClassMap {
            raster: pending.path().join("classes.tif"),
            legend,
            hidden: vec![],
        });
        super::report::write_report(&job.base, &pending.path(), &s)?;
        outputs = super::output_names(&pending.path(), dir)?;
        let from = pending.path();
        pending.commit()?;
        super::report::rebase_section(&mut s, &from, dir);
        section = Some(s);
        super::log_outputs(&outputs);
    }
    timings.write_seconds = t.elapsed().as_secs_f64();
    timings.total_seconds = start.elapsed().as_secs_f64();
    let mut run = super::SceneRunReport::new(&job.base, (provider, fallback), &stats, outputs);
    run.section = section;
    Ok(ClassifyReport {
        run,
        model_trained: model.package().manifest.trained,
        pinned_input: model.pinned_input(),
        similarity_provider: model.head_provider().to_string(),
        byte_tiles: bytes,
        labels: job.labels.clone(),
        templates: job.templates.clone(),
        scoring: if model.multi_label() {
            "sigmoid"
        } else {
            "softmax"
        },
        text_cache_hit: cache_hit,
        tile_size: size,
        overlap: grid.options.overlap,
        cols: grid.cols(),
        rows: grid.rows(),
        tiles_read: stats.tiles_read,
        label_counts,
        tiles_per_second: stats.tiles_read as f64 / timings.total_seconds,
        timings,
    })
}

/// The report section of a run: the model, the grid, tiles per label, timings (the class map
/// and areas are added by the caller).
fn report_section(
    job: &ClassifyJob,
    provider: &str,
    grid: &TileGrid,
    label_counts: &BTreeMap<String, usize>,
    timings: &Timings,
) -> crate::output::report::Section {
    let mut s = super::report::section("classify", &job.base, provider);
    s.fact("labels", job.labels.join(", "));
    s.fact("prompt templates", job.templates.join(" | "));
    if let Some(m) = job.min_score {
        s.fact("min score", m);
    }
    s.fact(
        "tile grid",
        format!(
            "{} x {} tiles of {} px, overlap {}",
            grid.cols(),
            grid.rows(),
            grid.options.tile_size,
            grid.options.overlap
        ),
    );
    if let Some(g) = grid.options.target_gsd {
        s.fact("target resolution", format!("{g} m"));
    }
    let counts: Vec<String> = label_counts
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    s.fact("tiles per label", counts.join(", "));
    s.timing("loading the model and scene", timings.load_seconds);
    s.timing("label embeddings", timings.text_seconds);
    s.timing("image encoder", timings.model_seconds);
    s.timing("waiting for tiles", timings.wait_seconds);
    s.timing("writing rasters and layers", timings.write_seconds);
    s
}

/// What the sweep over the tiles gave.
struct Classified {
    stats: crate::tiling::StreamStats,
    results: Vec<TileResult>,
    model_seconds: f64,
    wait_seconds: f64,
    /// The tiles went to the model as bytes.
    bytes: bool,
}

/// Classify every tile of the scene: bytes as read for a uint8-input model on 8-bit bands
/// scaled 0..255 (no float tiles at all), float tiles otherwise (scaled and normalised, or
/// quantised).
fn classify_tiles(
    job: &mut ClassifyJob,
    model: &mut DualEncoderModel,
    scene: &Scene,
    scaling: &crate::raster::Scaling,
    grid: &TileGrid,
    label_embeds: &ndarray::Array2<f32>,
) -> Result<Classified, PipelineError> {
    let norm = model.normalizer();
    let bytes = model.takes_bytes()
        && job.feed.is_none()
        && scaling.is_byte_range()
        && job
            .base
            .read
            .bands
            .bands()
            .iter()
            .all(|&b| scene.info().bands[b - 1].dtype == "uint8");
    let spec = RunSpec {
        tiles: grid.len(),
        progress: job.base.progress,
        what: "classifying",
        sink: "results",
        finishing: None,
    };
    // The label embeddings go where the model runs once (GPU memory on CUDA): each batch's
    // probabilities are computed there, only `[B, labels]` comes back.
    let labels = model.device_labels(label_embeds).map_err(model_err)?;
    let stage = Classifier {
        model,
        labels,
        batch_size: job.base.batch_size,
    };
    let sink = Results(Vec::new());
    let read = &job.base.read;
    let swept = if bytes {
        let prepare = |t: &mut TileData<u8>| norm.apply_bytes(&mut t.pixels, &t.valid);
        let swept = drive(&spec, stage, sink, |consume| {
            stream_tiles::<u8, PipelineError, _, _>(scene, grid, read, prepare, consume)
        })?;
        (
            swept.stats,
            swept.done,
            swept.model_seconds,
            swept.wait_seconds,
        )
    } else {
        let feed = job.feed.take();
        let swept = drive(&spec, stage, sink, |consume| {
            stream_model_tiles(feed, scene, grid, read, scaling, &norm, consume)
        })?;
        (
            swept.stats,
            swept.done,
            swept.model_seconds,
            swept.wait_seconds,
        )
    };
    let (stats, results, model_seconds, wait_seconds) = swept;
    Ok(Classified {
        stats,
        results,
        model_seconds,
        wait_seconds,
        bytes,
    })
}

/// Tiles per label (every label, 0 for those without tiles).
fn count_labels(
    names: &[String],
    results: &[TileResult],
    class_of: &dyn Fn(&TileResult) -> u8,
) -> BTreeMap<String, usize> {
    let mut counts: BTreeMap<String, usize> = names.iter().map(|n| (n.clone(), 0)).collect();
    for r in results {
        *counts
            .entry(names[class_of(r) as usize].clone())
            .or_default() += 1;
    }
    counts
}

/// The model thread's part: label probabilities for a batch of tiles. Tiles are gathered
/// straight into the model's input memory (pinned on a GPU): the driver keeps two such
/// batches, one filling while the other is encoded, so reading, batching and copying overlap
/// inference. Batches are the same as with one thread (tiles arrive in grid order), so are
/// the results.
struct Classifier<'m> {
    model: &'m mut DualEncoderModel,
    labels: DeviceLabels,
    batch_size: usize,
}

impl<T: ImageElement + Default + Send> ModelStage<T> for Classifier<'_> {
    type Batch = (StagedBatch<T>, Vec<(Tile, f64)>);
    type Output = (Vec<(Tile, f64)>, ndarray::Array2<f32>);

    fn new_batch(&self) -> Result<Self::Batch, PipelineError> {
        let staged = self
            .model
            .staged_batch::<T>(self.batch_size)
            .map_err(model_err)?;
        Ok((staged, Vec::with_capacity(self.batch_size)))
    }

    fn push((staged, tiles): &mut Self::Batch, t: TileData<T>) -> bool {
        tiles.push((t.tile, t.valid_fraction));
        staged.push(&t.pixels)
    }

    fn run(&mut self, (staged, tiles): &mut Self::Batch) -> Result<Self::Output, PipelineError> {
        let probs = self
            .model
            .classify_staged(staged, &self.labels)
            .map_err(model_err)?;
        staged.clear();
        let tiles = std::mem::replace(tiles, Vec::with_capacity(self.batch_size));
        Ok((tiles, probs))
    }
}

/// The sink's part: one result per tile.
struct Results(Vec<TileResult>);

impl SceneSink for Results {
    type Input = (Vec<(Tile, f64)>, ndarray::Array2<f32>);
    type Done = Vec<TileResult>;

    fn consume(&mut self, (tiles, probs): Self::Input) -> Result<(), PipelineError> {
        for ((tile, valid_fraction), row) in tiles.into_iter().zip(probs.outer_iter()) {
            self.0.push(TileResult {
                tile,
                valid_fraction,
                probs: row.to_vec(),
            });
        }
        Ok(())
    }

    fn finish(self) -> Result<Vec<TileResult>, PipelineError> {
        Ok(self.0)
    }
}

fn validate_labels(job: &ClassifyJob) -> Result<(), PipelineError> {
    if job.labels.is_empty() {
        return Err(InvalidOption::new(
            "labels",
            "is empty: no labels given (use `labels` or `labels_file`)",
        )
        .into());
    }
    let mut seen = std::collections::BTreeSet::new();
    for l in &job.labels {
        if l.trim().is_empty() {
            return Err(
                InvalidOption::new("labels", "has an empty label in the label list").into(),
            );
        }
        if !seen.insert(l) {
            return Err(InvalidOption::new("labels", format!("gives label '{l}' twice")).into());
        }
        if l == UNKNOWN && job.min_score.is_some() {
            return Err(InvalidOption::new(
                "labels",
                format!("cannot name '{UNKNOWN}': it is reserved for tiles below `min_score`"),
            )
            .into());
        }
    }
    if job.labels.len() > 250 {
        return Err(InvalidOption::new(
            "labels",
            format!("has {} labels: at most 250 are supported", job.labels.len()),
        )
        .into());
    }
    if !job.templates.is_empty() {
        check_templates(&job.templates)?;
    }
    if let Some(m) = job.min_score {
        if !(0.0..=1.0).contains(&m) {
            return Err(InvalidOption::new(
                "min_score",
                format!("must be between 0 and 1, got {m}"),
            )
            .into());
        }
    }
    Ok(())
}

/// Every template has a `{}` where the label goes.
fn check_templates(templates: &[String]) -> Result<(), PipelineError> {
    if templates.is_empty() || templates.iter().any(|t| !t.contains("{}")) {
        return Err(
            InvalidOption::new("templates", "must each contain {} where the label goes").into(),
        );
    }
    Ok(())
}

/// The class grid: one cell per tile position, `rows x cols`, at the tile stride, centred on
/// the tiles (offset by half the overlap).
pub fn class_grid_transform(grid: &TileGrid) -> GeoTransform {
    let stride = (grid.options.tile_size - grid.options.overlap) as f64;
    let half = grid.options.overlap as f64 / 2.0;
    grid.geotransform.sub_grid(half, half, stride, stride)
}

#[allow(clippy::too_many_arguments)]
fn write_outputs(
    job: &ClassifyJob,
    scene: &Scene,
    grid: &TileGrid,
    results: &[TileResult],
    names: &[String],
    class_of: &dyn Fn(&TileResult) -> u8,
    pending: &PendingOutput,
    model_name: &str,
) -> Result<(Legend, Vec<(u8, f64)>), PipelineError> {
    let dir = pending.path();
    let (cols, rows) = (grid.cols(), grid.rows());
    let gt = class_grid_transform(grid);
    let crs = scene.crs_wkt();
    let n_labels = job.labels.len();

    let mut classes = vec![CLASS_NODATA; cols * rows];
    let mut probs = vec![f32::NAN; n_labels * cols * rows];
    for r in results {
        let cell = r.tile.row * cols + r.tile.col;
        classes[cell] = class_of(r);
        for (k, p) in r.probs.iter().enumerate() {
            probs[k * cols * rows + cell] = *p;
        }
    }
    let mut colors: Vec<[u8; 3]> = (0..n_labels).map(class_color).collect();
    if names.len() > n_labels {
        colors.push([128, 128, 128]);
    }
    let legend = Legend {
        names: names.to_vec(),
        colors,
    };
    let metadata = vec![
        ("TESSERA_LABELS".to_string(), names.join(",")),
        // The package's name, not its path: the same run from another folder writes the
        // same bytes.
        ("TESSERA_MODEL".to_string(), model_name.to_string()),
        ("TESSERA_TEMPLATES".to_string(), job.templates.join(" | ")),
    ];
    let assembling = Phase::spinner(job.base.progress, "assembling COGs");
    write_cog(
        &dir.join("classes.tif"),
        &RasterSpec {
            width: cols,
            height: rows,
            data: &classes,
            bands: 1,
            geotransform: gt,
            crs_wkt: crs,
            nodata: Some(f64::from(CLASS_NODATA)),
            descriptions: &["class".to_string()],
            legend: Some(&legend),
            metadata: &metadata,
            options: job.base.cog,
        },
        false,
    )?;
    write_cog(
        &dir.join("probabilities.tif"),
        &RasterSpec {
            width: cols,
            height: rows,
            data: &probs,
            bands: n_labels,
            geotransform: gt,
            crs_wkt: crs,
            nodata: Some(f64::NAN),
            descriptions: &job.labels,
            legend: None,
            metadata: &metadata,
            options: job.base.cog,
        },
        false,
    )?;
    assembling.finish();
    super::write_raster_style(&dir.join("classes.tif"), &legend)?;
    let style = super::label_style(&legend, Symbol::Fill, None);
    let ext = job.base.format.extension();
    super::phase(job.base.progress, &format!("writing tiles.{ext}"), || {
        write_tile_layer(
            job,
            &dir.join(format!("tiles.{ext}")),
            crs,
            results,
            names,
            class_of,
            &style,
        )
    })?;
    let areas = write_label_layer(
        job,
        &dir.join(format!("labels.{ext}")),
        crs,
        &classes,
        (cols, rows, &gt),
        names,
        &style,
    )?;
    Ok((legend, areas))
}

/// The tile layer: every tile's footprint with its top-3 labels.
fn write_tile_layer(
    job: &ClassifyJob,
    path: &std::path::Path,
    crs: Option<&str>,
    results: &[TileResult],
    names: &[String],
    class_of: &dyn Fn(&TileResult) -> u8,
    style: &LayerStyle,
) -> Result<(), PipelineError> {
    let mut tiles = VectorLayerWriter::create(
        path,
        job.base.format,
        "tiles",
        GeometryKind::Polygon,
        crs,
        &TILE_FIELDS,
        false,
    )?;
    tiles.set_style(style.clone());
    for r in results {
        let top = r.top(3);
        let label_at = |i: usize| {
            top.get(i)
                .map(|&k| job.labels[k].clone())
                .unwrap_or_default()
        };
        let score_at = |i: usize| top.get(i).map_or(0.0, |&k| f64::from(r.probs[k]));
        let ring = r
            .tile
            .geotransform
            .footprint(r.tile.size as f64, r.tile.size as f64);
        tiles.add_polygon(
            &ring,
            &[
                FieldValue::String(r.tile.id.clone()),
                FieldValue::Integer(r.tile.row as i64),
                FieldValue::Integer(r.tile.col as i64),
                FieldValue::String(names[class_of(r) as usize].clone()),
                FieldValue::Real(score_at(0)),
                FieldValue::String(label_at(1)),
                FieldValue::Real(score_at(1)),
                FieldValue::String(label_at(2)),
                FieldValue::Real(score_at(2)),
                FieldValue::Real(r.valid_fraction),
            ],
        )?;
    }
    tiles.finish()?;

    Ok(())
}

/// The label layer: the class grid's labels dissolved into multipolygons. Returns each
/// class's `area_m2`.
fn write_label_layer(
    job: &ClassifyJob,
    path: &std::path::Path,
    crs: Option<&str>,
    classes: &[u8],
    (cols, rows, gt): (usize, usize, &GeoTransform),
    names: &[String],
    style: &LayerStyle,
) -> Result<Vec<(u8, f64)>, PipelineError> {
    let mut class_areas = Vec::new();
    let polygons = super::phase(job.base.progress, "polygonizing", || {
        polygonize_classes(classes, cols, rows, gt, Some(CLASS_NODATA)).map_err(|reason| {
            crate::output::OutputError::Write {
                path: path.display().to_string(),
                reason,
            }
        })
    })?;
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let writing = Phase::spinner(job.base.progress, &format!("writing {name}"));
    let mut labels = VectorLayerWriter::create(
        path,
        job.base.format,
        "labels",
        GeometryKind::MultiPolygon,
        crs,
        &LABEL_FIELDS,
        false,
    )?;
    labels.set_style(style.clone());
    let areas = LayerArea::for_layer(crs).map_err(|reason| crate::output::OutputError::Write {
        path: path.display().to_string(),
        reason: format!("label areas: {reason}"),
    })?;
    for (class, polys) in polygons {
        let count = classes.iter().filter(|&&c| c == class).count();
        let mp = geo::MultiPolygon(polys);
        let area =
            areas
                .multi_polygon(&mp)
                .map_err(|reason| crate::output::OutputError::Write {
                    path: path.display().to_string(),
                    reason: format!("label areas: {reason}"),
                })?;
        labels.add_multipolygon(
            &mp,
            &[
                FieldValue::String(names.get(class as usize).cloned().unwrap_or_default()),
                FieldValue::Integer(i64::from(class)),
                FieldValue::Integer(count as i64),
                FieldValue::Real(area),
            ],
        )?;
        class_areas.push((class, area));
    }
    labels.finish()?;
    writing.finish();
    Ok(class_areas)
}

impl crate::task::SceneJob for ClassifyJob {
    type Report = ClassifyReport;
    fn set_feed(&mut self, port: super::feed::FeedPort) {
        self.feed = Some(port);
    }
    fn run(self) -> Result<ClassifyReport, PipelineError> {
        run_classify(self)
    }
}
