//! `tessera segment`: semantic segmentation of a whole scene, tile by tile, stitched into one
//! seamless mosaic (weighted blending of overlaps, rows written as soon as they are final),
//! then a class COG, optional probability COG, and polygons made from the mosaic (never per
//! tile, so an object across a seam is one polygon).

use std::path::PathBuf;
use std::time::Instant;

use ndarray::s;
use serde::Serialize;

use super::{peak_rss_bytes, progress_bar, stream_model_tiles, PipelineError, TileBatch};
use crate::models::segmentation::{SegFormat, SegmentationModel};
use crate::output::{
    class_color, FieldKind, FieldSpec, FieldValue, GeometryKind, Legend, MosaicSpec, MosaicWriter,
    PendingOutput, VectorFormat, VectorLayerWriter,
};
use crate::raster::{OpenOptions, ScalingSpec};
use crate::runtime::{Runtime, SessionOptions};
use crate::stitch::mask::{BlendWindow, Decision, MaskStitcher};
use crate::tiling::{GridOptions, ReadOptions, ReadOrder, Tile};

/// What `tessera segment` does.
#[derive(Debug)]
pub struct SegmentJob {
    pub scene: String,
    pub open: OpenOptions,
    pub model: PathBuf,
    pub ort_lib: Option<PathBuf>,
    pub session: SessionOptions,
    /// `tile_size` 0: the model's input size; `overlap` `None`: the model's default.
    pub grid: GridOptions,
    pub overlap_given: bool,
    pub gsd_given: bool,
    pub read: ReadOptions,
    pub scaling: ScalingSpec,
    pub batch_size: usize,
    pub window: BlendWindow,
    /// Override of the model's probability threshold (binary and prompted models).
    pub threshold: Option<f32>,
    /// Text prompts for prompted models (CLIPSeg).
    pub prompts: Vec<String>,
    pub probabilities: bool,
    pub simplify: f64,
    pub min_area: f64,
    pub out: PathBuf,
    pub format: &'static dyn VectorFormat,
    pub overwrite: bool,
    pub progress: bool,
    /// Tiles from a shared read pass (multi-model pipelines) instead of reading the scene.
    pub feed: Option<super::feed::FeedPort>,
}

/// What `tessera segment` did.
#[derive(Debug, Serialize)]
pub struct SegmentReport {
    pub scene: String,
    pub model: String,
    pub provider: String,
    pub fallback: Option<String>,
    pub classes: Vec<String>,
    pub tile_size: usize,
    pub overlap: usize,
    pub target_gsd: Option<f64>,
    pub tiles_total: usize,
    pub tiles_read: usize,
    pub tiles_skipped: usize,
    pub polygons: usize,
    pub mosaic_size: (usize, usize),
    /// Most mosaic rows held in memory at once.
    pub peak_rows: usize,
    pub outputs: Vec<String>,
    pub seconds: f64,
    pub model_seconds: f64,
    /// Wall seconds of each phase: the sweep (read, model, stitch, COG tiles), COG assembly,
    /// polygonizing, and the vector layer.
    pub phase_seconds: PhaseSeconds,
    pub peak_rss_bytes: Option<u64>,
}

/// Polygons as GDAL geometries, simplified by `tolerance` map units (topology preserved) and
/// without those under `min_area` square map units.
fn finish_polygons(
    polygons: Vec<(u8, geo::Polygon<f64>)>,
    tolerance: f64,
    min_area: f64,
    raster: &std::path::Path,
) -> Result<Vec<(u8, gdal::vector::Geometry)>, crate::output::OutputError> {
    use gdal::vector::ToGdal;
    let err = |e: gdal::errors::GdalError| crate::output::OutputError::Write {
        path: raster.display().to_string(),
        reason: format!("polygon geometry: {e}"),
    };
    let mut out = Vec::with_capacity(polygons.len());
    for (class, p) in polygons {
        let g = p.to_gdal().map_err(err)?;
        let g = if tolerance > 0.0 {
            g.simplify_preserve_topology(tolerance).map_err(err)?
        } else {
            g
        };
        if g.is_empty() || g.area() < min_area {
            continue;
        }
        out.push((class, g));
    }
    Ok(out)
}

/// What the stitching thread receives, in tile order.
enum StitchWork {
    /// A tile with no valid pixel (nothing predicted; its rows may now be final).
    Skipped(Tile),
    /// A batch's tiles (with their valid masks) and the model's class probabilities.
    Batch(Vec<(Tile, Vec<u8>)>, ndarray::Array4<f32>),
}

/// Wall seconds of the phases of a segmentation run.
#[derive(Debug, Serialize)]
pub struct PhaseSeconds {
    /// Opening the model and scene, reading, inference, stitching, compressing COG tiles.
    pub sweep: f64,
    /// Assembling the COGs from their compressed tiles.
    pub cog: f64,
    /// Polygons from the class mosaic.
    pub polygonize: f64,
    /// Writing the vector layer and committing the outputs.
    pub vector: f64,
}

const POLYGON_FIELDS: [FieldSpec; 3] = [
    FieldSpec {
        name: "class",
        kind: FieldKind::Integer,
    },
    FieldSpec {
        name: "label",
        kind: FieldKind::String,
    },
    FieldSpec {
        name: "area",
        kind: FieldKind::Real,
    },
];

/// Run the job.
///
/// # Errors
/// Bad scene, model or options; inference failure; unwritable outputs (nothing partial left).
pub fn run_segment(mut job: SegmentJob) -> Result<SegmentReport, PipelineError> {
    let start = Instant::now();
    let runtime = Runtime::load(job.ort_lib.as_deref())?;
    let mut model = SegmentationModel::load(runtime, &job.model, &job.session)?;
    if super::check_prompts(
        model.is_prompted(),
        &job.prompts,
        &job.model,
        "a text-prompted model",
        "text prompts",
    )? {
        model.set_prompts(&job.prompts)?;
    }
    let tiles = super::ModelTiles {
        size: model.input_size(),
        any_size: model.any_size(),
        defaults: model.package().manifest.tiling.as_ref(),
    };
    let (scene, scaling, grid) = super::model_input(
        &job.scene,
        &job.open,
        &mut job.grid,
        &mut job.read,
        &job.scaling,
        &tiles,
        job.overlap_given,
        job.gsd_given,
    )?;
    let size = grid.tile_size();
    job.read.order = ReadOrder::RowMajor;
    job.read.deliver_skipped = true;
    let pending = PendingOutput::dir(&job.out, job.overwrite)?;

    let classes: Vec<String> = model.classes();
    let n_classes = match model.format() {
        SegFormat::Probability => 2,
        _ => classes.len(),
    };
    let decision = match model.format() {
        SegFormat::Probability => Decision::Threshold(job.threshold.unwrap_or(model.threshold())),
        SegFormat::Clipseg => Decision::Prompts(job.threshold.unwrap_or(model.threshold())),
        _ => Decision::Argmax,
    };
    // Binary models keep P(class 1); multi-class models keep every class.
    let prob_bands = if !job.probabilities {
        0
    } else if model.format() == SegFormat::Probability {
        1
    } else if model.format() == SegFormat::Clipseg {
        n_classes - 1
    } else {
        n_classes
    };
    let legend = Legend {
        names: classes.clone(),
        colors: (0..classes.len())
            .map(|i| {
                if i == 0 {
                    [0, 0, 0]
                } else {
                    class_color(i - 1)
                }
            })
            .collect(),
    };
    // The kept probability bands are the last `prob_bands` classes.
    let band_names: Vec<String> = classes[classes.len() - prob_bands.min(classes.len())..].to_vec();
    let dir = pending.path();
    let classes_out = dir.join("classes.tif");
    let mut writer = MosaicWriter::create(
        &classes_out,
        &dir.join("probabilities.tif"),
        &MosaicSpec {
            source: scene.path(),
            width: grid.working_width,
            height: grid.working_height,
            geotransform: &grid.geotransform,
            crs_wkt: scene.crs_wkt(),
            legend: &legend,
            prob_bands: if prob_bands > 0 { &band_names } else { &[] },
            // Polygons of every class but the first (background), made from the stitched
            // rows as they are final (never per tile).
            polygons_skip: Some(&[0]),
        },
    )?;
    let mut stitcher = MaskStitcher::new(&grid, n_classes, job.window, decision);
    if model.format() == SegFormat::Probability {
        stitcher = stitcher.binary_input();
    }
    if prob_bands == 0 {
        stitcher = stitcher.without_probabilities();
    }
    let norm = model.normalizer();
    let mut batch = TileBatch::<(Tile, Vec<u8>)>::new(job.batch_size, size);
    let mut model_seconds = 0.0;
    let bar = progress_bar(grid.len(), job.progress, "segmenting");
    let feed = job.feed.take();
    // The model runs on this thread while a stitching thread blends the previous batch into
    // the mosaic and compresses the finished rows into the COGs (they overlap; messages
    // keep the tiles' order).
    let (to_stitch, stitch_rx) = std::sync::mpsc::sync_channel::<StitchWork>(2);
    let (stats, (peak_rows, cog_seconds, polygons)) = std::thread::scope(|scope| {
        type Stitched = (usize, f64, Vec<(u8, geo::Polygon<f64>)>);
        let stitching = scope.spawn(move || -> Result<Stitched, PipelineError> {
            for work in stitch_rx {
                match work {
                    StitchWork::Skipped(tile) => stitcher.add(&tile, None, &[], &mut writer)?,
                    StitchWork::Batch(tiles, probs) => {
                        for (k, (tile, valid)) in tiles.into_iter().enumerate() {
                            let p = probs.slice(s![k, .., .., ..]);
                            let p = p.as_standard_layout();
                            let slice = p.as_slice().ok_or_else(|| {
                                PipelineError::Options("non-contiguous probabilities".into())
                            })?;
                            stitcher.add(&tile, Some(slice), &valid, &mut writer)?;
                        }
                    }
                }
            }
            let peak = stitcher.finish(&mut writer)?;
            let t = Instant::now();
            let polygons = writer.finish()?;
            Ok((peak, t.elapsed().as_secs_f64(), polygons))
        });
        // A failed send means the stitching thread stopped on an error: joining reports it.
        let stitch_gone = || PipelineError::Options("the stitching thread stopped".into());
        let mut run_batch = |batch: &mut TileBatch<(Tile, Vec<u8>)>,
                             model: &mut SegmentationModel|
         -> Result<(), PipelineError> {
            if batch.is_empty() {
                return Ok(());
            }
            let (pixels, tiles) = batch.take();
            let n = tiles.len();
            let t = Instant::now();
            let probs = model.predict(pixels)?;
            model_seconds += t.elapsed().as_secs_f64();
            to_stitch
                .send(StitchWork::Batch(tiles, probs))
                .map_err(|_| stitch_gone())?;
            bar.inc(n as u64);
            Ok(())
        };
        let swept = stream_model_tiles(feed, &scene, &grid, &job.read, &scaling, &norm, |t| {
            if t.pixels.is_empty() {
                // A skipped tile: nothing to predict, but its rows may now be final.
                bar.inc(1);
                return to_stitch
                    .send(StitchWork::Skipped(t.tile.clone()))
                    .map_err(|_| stitch_gone());
            }
            if batch.push(&t.pixels, (t.tile.clone(), t.valid.to_vec())) {
                run_batch(&mut batch, &mut model)?;
            }
            Ok(())
        })
        .and_then(|stats| run_batch(&mut batch, &mut model).map(|()| stats));
        drop(to_stitch);
        let stitched = stitching
            .join()
            .map_err(|_| PipelineError::Options("the stitching thread panicked".into()))?;
        // The stitching thread's own error explains a failed send better than the send.
        match (swept, stitched) {
            (_, Err(e)) => Err(e),
            (Err(e), Ok(_)) => Err(e),
            (Ok(stats), Ok(stitched)) => Ok((stats, stitched)),
        }
    })?;
    bar.finish_and_clear();

    // The COGs were assembled at the end of the sweep, on the stitching thread.
    let cog_done = Instant::now();
    let polys = finish_polygons(polygons, job.simplify, job.min_area, &classes_out)?;
    let polygons_done = Instant::now();
    let ext = job.format.extension();
    let mut layer = VectorLayerWriter::create(
        &dir.join(format!("polygons.{ext}")),
        job.format,
        "polygons",
        GeometryKind::Polygon,
        scene.crs_wkt(),
        &POLYGON_FIELDS,
        false,
    )?;
    let n_polys = polys.len();
    for (class, g) in polys {
        let area = g.area();
        let label = classes.get(class as usize).cloned().unwrap_or_default();
        layer.add(
            g,
            &[
                FieldValue::Integer(i64::from(class)),
                FieldValue::String(label),
                FieldValue::Real(area),
            ],
        )?;
    }
    layer.finish()?;
    let mut outputs: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| PipelineError::Options(format!("{}: {e}", job.out.display())))?
        .flatten()
        .map(|e| job.out.join(e.file_name()).display().to_string())
        .collect();
    outputs.sort();
    pending.commit()?;
    let (provider, fallback) = model.provider();
    Ok(SegmentReport {
        scene: job.scene.clone(),
        model: job.model.display().to_string(),
        provider: provider.to_string(),
        fallback: fallback.map(str::to_string),
        classes,
        tile_size: size,
        overlap: grid.options.overlap,
        target_gsd: grid.options.target_gsd,
        tiles_total: stats.tiles_total,
        tiles_read: stats.tiles_read,
        tiles_skipped: stats.tiles_skipped,
        polygons: n_polys,
        mosaic_size: (grid.working_width, grid.working_height),
        peak_rows,
        outputs,
        seconds: start.elapsed().as_secs_f64(),
        model_seconds,
        phase_seconds: PhaseSeconds {
            sweep: (cog_done - start).as_secs_f64() - cog_seconds,
            cog: cog_seconds,
            polygonize: (polygons_done - cog_done).as_secs_f64(),
            vector: polygons_done.elapsed().as_secs_f64(),
        },
        peak_rss_bytes: peak_rss_bytes(),
    })
}
