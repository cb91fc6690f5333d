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

use super::{peak_rss_bytes, progress_bar, stream_model_tiles, PipelineError};
use crate::models::clip::{ClipModel, ImageElement, StagedBatch};
use crate::models::ModelError;
use crate::options::InvalidOption;
use crate::output::{
    class_color, polygonize_classes, write_cog, FieldKind, FieldSpec, FieldValue, GeometryKind,
    Legend, PendingOutput, RasterSpec, VectorFormat, VectorLayerWriter,
};
use crate::raster::{GeoTransform, OpenOptions, ScalingSpec, Scene};
use crate::runtime::{Runtime, SessionOptions};
use crate::tiling::{
    stream_tiles, GridOptions, ReadOptions, StreamStats, Tile, TileData, TileGrid,
};

/// Class value of tiles whose best score is below `--min-score`.
pub const UNKNOWN: &str = "unknown";
/// Class-raster value of tiles that were skipped (no valid pixels).
pub const CLASS_NODATA: u8 = 255;

/// What `tessera classify` does.
#[derive(Debug)]
pub struct ClassifyJob {
    pub scene: String,
    pub open: OpenOptions,
    pub model: PathBuf,
    pub ort_lib: Option<PathBuf>,
    pub session: SessionOptions,
    pub labels: Vec<String>,
    pub templates: Vec<String>,
    pub min_score: Option<f32>,
    /// `tile_size` 0 means the model's input size.
    pub grid: GridOptions,
    /// `bands` empty means the first three data bands (or the first repeated).
    pub read: ReadOptions,
    pub scaling: ScalingSpec,
    pub batch_size: usize,
    pub out: Option<PathBuf>,
    pub format: &'static dyn VectorFormat,
    pub overwrite: bool,
    pub cache_dir: Option<PathBuf>,
    pub progress: bool,
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
    pub scene: String,
    pub model: String,
    pub model_trained: bool,
    pub provider: String,
    pub fallback: Option<String>,
    /// Batches are copied to the device from pinned host memory (CUDA, TensorRT).
    pub pinned_input: bool,
    /// Where the image-label similarity and softmax ran (the built-in head after the image
    /// encoder: CUDAExecutionProvider when the encoder is on a GPU).
    pub similarity_provider: String,
    /// Tiles went to the model as the bytes read (uint8-input model, 8-bit bands scaled
    /// 0..255), never as floats.
    pub byte_tiles: bool,
    pub labels: Vec<String>,
    pub templates: Vec<String>,
    pub text_cache_hit: bool,
    pub tile_size: usize,
    pub overlap: usize,
    pub cols: usize,
    pub rows: usize,
    pub tiles_total: usize,
    pub tiles_read: usize,
    pub tiles_skipped: usize,
    pub label_counts: BTreeMap<String, usize>,
    pub outputs: Vec<String>,
    pub timings: Timings,
    pub tiles_per_second: f64,
    pub peak_rss_bytes: Option<u64>,
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
        name: "area",
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
    let runtime = Runtime::load(job.ort_lib.as_deref())?;
    let mut model = ClipModel::load(runtime, &job.model, &job.session).map_err(model_err)?;
    let size = model.input_size();
    let tiles = super::ModelTiles {
        size,
        any_size: false,
        defaults: None,
    };
    let (scene, scaling, grid) = super::model_input(
        &job.scene,
        &job.open,
        &mut job.grid,
        &mut job.read,
        &job.scaling,
        &tiles,
        true,
        true,
    )?;
    timings.load_seconds = start.elapsed().as_secs_f64();
    // Claim the output folder before the long part, so a bad --out fails fast.
    let pending = match &job.out {
        Some(dir) => Some(PendingOutput::dir(dir, job.overwrite)?),
        None => None,
    };

    let t = Instant::now();
    let (label_embeds, cache_hit) = model
        .label_embeddings(&job.labels, &job.templates, job.cache_dir.as_deref())
        .map_err(model_err)?;
    timings.text_seconds = t.elapsed().as_secs_f64();

    let bar = progress_bar(grid.len(), job.progress, "classifying");
    let norm = model.normalizer();
    // Byte path: a uint8-input model on 8-bit bands scaled 0..255 gets the bytes as read (no
    // float tiles at all); otherwise float tiles, scaled and normalised (or quantised).
    let bytes = model.takes_bytes()
        && job.feed.is_none()
        && scaling.is_byte_range()
        && job
            .read
            .bands
            .bands()
            .iter()
            .all(|&b| scene.info().bands[b - 1].dtype == "uint8");
    let batch_size = job.batch_size;
    let (stats, mut results, model_seconds, wait_seconds) = if bytes {
        let prepare = |t: &mut TileData<u8>| norm.apply_bytes(&mut t.pixels, &t.valid);
        double_buffered::<u8, _>(&mut model, &label_embeds, batch_size, &bar, |push| {
            stream_tiles::<u8, PipelineError, _, _>(&scene, &grid, &job.read, prepare, |t| {
                push(&t.pixels, t.tile.clone(), t.valid_fraction)
            })
        })?
    } else {
        let feed = job.feed.take();
        double_buffered::<f32, _>(&mut model, &label_embeds, batch_size, &bar, |push| {
            stream_model_tiles(feed, &scene, &grid, &job.read, &scaling, &norm, |t| {
                push(&t.pixels, t.tile.clone(), t.valid_fraction)
            })
        })?
    };
    timings.model_seconds = model_seconds;
    timings.wait_seconds = wait_seconds;
    results.sort_by_key(|r| (r.tile.row, r.tile.col));
    bar.finish_and_clear();

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
    let mut label_counts: BTreeMap<String, usize> = names.iter().map(|n| (n.clone(), 0)).collect();
    for r in &results {
        *label_counts
            .entry(names[class_of(r) as usize].clone())
            .or_default() += 1;
    }

    let t = Instant::now();
    let mut outputs = Vec::new();
    if let (Some(pending), Some(dir)) = (pending, &job.out) {
        write_outputs(&job, &scene, &grid, &results, &names, &class_of, &pending)?;
        for entry in std::fs::read_dir(pending.path())
            .map_err(|e| PipelineError::io(dir, e))?
            .flatten()
        {
            outputs.push(dir.join(entry.file_name()).display().to_string());
        }
        outputs.sort();
        pending.commit()?;
    }
    timings.write_seconds = t.elapsed().as_secs_f64();
    timings.total_seconds = start.elapsed().as_secs_f64();
    let (provider, fallback) = model.image_provider();
    Ok(ClassifyReport {
        scene: job.scene.clone(),
        model: job.model.display().to_string(),
        model_trained: model.package().manifest.trained,
        provider: provider.to_string(),
        fallback: fallback.map(str::to_string),
        pinned_input: model.pinned_input(),
        similarity_provider: model.head_provider().to_string(),
        byte_tiles: bytes,
        labels: job.labels.clone(),
        templates: job.templates.clone(),
        text_cache_hit: cache_hit,
        tile_size: size,
        overlap: grid.options.overlap,
        cols: grid.cols(),
        rows: grid.rows(),
        tiles_total: stats.tiles_total,
        tiles_read: stats.tiles_read,
        tiles_skipped: stats.tiles_skipped,
        label_counts,
        outputs,
        tiles_per_second: stats.tiles_read as f64 / timings.total_seconds,
        timings,
        peak_rss_bytes: peak_rss_bytes(),
    })
}

/// Tile batches for the image encoder, double buffered: this thread gathers tiles into one
/// batch (via the `push` it hands to `stream`) while a model thread encodes the previous one,
/// so reading, batching and copying overlap inference. Batches are the same as with one
/// thread (tiles arrive in grid order), so are the results. Returns the stream's counts, one
/// result per tile, the model's seconds and the seconds spent waiting for tiles.
#[allow(clippy::type_complexity)]
fn double_buffered<T, S>(
    model: &mut ClipModel,
    label_embeds: &ndarray::Array2<f32>,
    batch_size: usize,
    bar: &indicatif::ProgressBar,
    stream: S,
) -> Result<(StreamStats, Vec<TileResult>, f64, f64), PipelineError>
where
    T: ImageElement + Default + Send,
    S: FnOnce(
        &mut dyn FnMut(&[T], Tile, f64) -> Result<(), PipelineError>,
    ) -> Result<StreamStats, PipelineError>,
{
    use std::sync::mpsc::{channel, sync_channel};
    // Tiles are gathered straight into the model's input memory (pinned on a GPU): two such
    // batches, one filling while the other is encoded.
    type Batch<T> = (StagedBatch<T>, Vec<(Tile, f64)>);
    let (full_tx, full_rx) = sync_channel::<Batch<T>>(1);
    let (empty_tx, empty_rx) = channel::<Batch<T>>();
    // The label embeddings go where the model runs once (GPU memory on CUDA): each batch's
    // probabilities are computed there, only `[B, labels]` comes back.
    let labels = model.device_labels(label_embeds).map_err(model_err)?;
    let new_batch = |model: &ClipModel| -> Result<Batch<T>, PipelineError> {
        let staged = model.staged_batch::<T>(batch_size).map_err(model_err)?;
        Ok((staged, Vec::with_capacity(batch_size)))
    };
    let mut current = new_batch(model)?;
    let mut spare = Some(new_batch(model)?);
    std::thread::scope(|s| {
        let worker = s.spawn(move || -> Result<(Vec<TileResult>, f64), PipelineError> {
            let mut results = Vec::new();
            let mut seconds = 0.0;
            for (mut staged, mut tiles) in full_rx {
                let n = tiles.len();
                let t = Instant::now();
                let probs = model.classify_staged(&staged, &labels).map_err(model_err)?;
                seconds += t.elapsed().as_secs_f64();
                staged.clear();
                for ((tile, valid_fraction), row) in tiles.drain(..).zip(probs.outer_iter()) {
                    results.push(TileResult {
                        tile,
                        valid_fraction,
                        probs: row.to_vec(),
                    });
                }
                bar.inc(n as u64);
                // The gathering side may have finished: then the buffer is not needed.
                let _ = empty_tx.send((staged, tiles));
            }
            Ok((results, seconds))
        });
        let stopped = || PipelineError::worker("model", "stopped");
        let mut waiting = 0.0;
        let mut waited = Instant::now();
        let streamed = stream(&mut |pixels, tile, valid_fraction| {
            waiting += waited.elapsed().as_secs_f64();
            current.1.push((tile, valid_fraction));
            if current.0.push(pixels) {
                // The second buffer, or the first back from the model thread.
                let next = match spare.take() {
                    Some(b) => b,
                    None => empty_rx.recv().map_err(|_| stopped())?,
                };
                let full = std::mem::replace(&mut current, next);
                full_tx.send(full).map_err(|_| stopped())?;
            }
            waited = Instant::now();
            Ok(())
        });
        let last = match &streamed {
            Ok(_) if !current.0.is_empty() => full_tx.send(current).map_err(|_| stopped()),
            _ => Ok(()),
        };
        drop(full_tx);
        let joined = worker
            .join()
            .map_err(|_| PipelineError::worker("model", "panicked"))?;
        // The model's own error explains a "model thread stopped" on this side.
        let (results, seconds) = joined?;
        let stats = streamed?;
        last?;
        Ok((stats, results, seconds, waiting))
    })
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
    if job.templates.is_empty() || job.templates.iter().any(|t| !t.contains("{}")) {
        return Err(
            InvalidOption::new("templates", "must each contain {} where the label goes").into(),
        );
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
) -> Result<(), PipelineError> {
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
        ("TESSERA_MODEL".to_string(), job.model.display().to_string()),
        ("TESSERA_TEMPLATES".to_string(), job.templates.join(" | ")),
    ];
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
        },
        false,
    )?;

    let ext = job.format.extension();
    let mut tiles = VectorLayerWriter::create(
        &dir.join(format!("tiles.{ext}")),
        job.format,
        "tiles",
        GeometryKind::Polygon,
        crs,
        &TILE_FIELDS,
        false,
    )?;
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

    let polygons =
        polygonize_classes(&classes, cols, rows, &gt, Some(CLASS_NODATA)).map_err(|reason| {
            crate::output::OutputError::Write {
                path: dir.join(format!("labels.{ext}")).display().to_string(),
                reason,
            }
        })?;
    let mut labels = VectorLayerWriter::create(
        &dir.join(format!("labels.{ext}")),
        job.format,
        "labels",
        GeometryKind::MultiPolygon,
        crs,
        &LABEL_FIELDS,
        false,
    )?;
    for (class, polys) in polygons {
        use geo::Area;
        let count = classes.iter().filter(|&&c| c == class).count();
        let mp = geo::MultiPolygon(polys);
        let area = mp.unsigned_area();
        labels.add_multipolygon(
            &mp,
            &[
                FieldValue::String(names.get(class as usize).cloned().unwrap_or_default()),
                FieldValue::Integer(i64::from(class)),
                FieldValue::Integer(count as i64),
                FieldValue::Real(area),
            ],
        )?;
    }
    labels.finish()?;
    Ok(())
}
