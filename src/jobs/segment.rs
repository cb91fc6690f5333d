//! `tessera segment`: semantic segmentation of a whole scene, tile by tile, stitched into one
//! seamless mosaic (weighted blending of overlaps, rows written as soon as they are final),
//! then a class COG, optional probability COG, and polygons made from the mosaic (never per
//! tile, so an object across a seam is one polygon).

use std::path::PathBuf;
use std::time::Instant;

use ndarray::s;
use serde::Serialize;

use super::driver::{drive, ModelStage, RunSpec, SceneSink};
use super::{stream_model_tiles, Phase, PipelineError, TileBatch};
use crate::models::segmentation::{SegFormat, SegmentationModel};
use crate::output::{
    class_color, FieldKind, FieldSpec, FieldValue, GeometryKind, LayerArea, Legend, MosaicSpec,
    MosaicWriter, PendingOutput, Symbol, VectorLayerWriter,
};
use crate::runtime::Runtime;
use crate::stitch::mask::{BlendWindow, Decision, MaskStitcher};
use crate::tiling::{ReadOrder, Tile, TileData};

/// What `tessera segment` does.
#[derive(Debug)]
pub struct SegmentJob {
    /// The scene side: scene, model, runtime, grid, reading, scaling, batch, vector format.
    pub base: crate::options::SceneJobBase,
    pub window: BlendWindow,
    /// Override of the model's probability threshold (binary and prompted models).
    pub threshold: Option<f32>,
    /// Text prompts for prompted models (CLIPSeg).
    pub prompts: Vec<String>,
    pub probabilities: bool,
    pub simplify: f64,
    /// Smallest polygon kept, in m^2 ([`LayerArea`]).
    pub min_area: f64,
    /// Instance segmentation: the boxes the model (a promptable segmenter) refines.
    pub instances: Option<super::InstanceSpec>,
    pub out: PathBuf,
    pub overwrite: bool,
    /// Tiles from a shared read pass (multi-model pipelines) instead of reading the scene.
    pub feed: Option<super::feed::FeedPort>,
}

/// What `tessera segment` did.
#[derive(Debug, Serialize)]
pub struct SegmentReport {
    /// Scene, model, provider, tile counts, outputs, memory.
    #[serde(flatten)]
    pub run: super::SceneRunReport,
    pub classes: Vec<String>,
    pub tile_size: usize,
    pub overlap: usize,
    pub target_gsd: Option<f64>,
    pub tiles_read: usize,
    pub polygons: usize,
    pub mosaic_size: (usize, usize),
    /// Most mosaic rows held in memory at once.
    pub peak_rows: usize,
    pub seconds: f64,
    pub model_seconds: f64,
    /// Loading the model and opening the scene (the first part of the sweep).
    pub load_seconds: f64,
    /// Wall seconds of each phase: the sweep (read, model, stitch, COG tiles), COG assembly,
    /// polygonizing, and the vector layer.
    pub phase_seconds: PhaseSeconds,
    /// Instance segmentation (a refiner): boxes, instances, time per instance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instances: Option<super::InstancesReport>,
}

/// Polygons as GDAL geometries with their area in m^2 ([`LayerArea`]), simplified by
/// `tolerance` map units (topology preserved) and without those under `min_area_m2`.
fn finish_polygons(
    polygons: Vec<(u8, geo::Polygon<f64>)>,
    tolerance: f64,
    min_area_m2: f64,
    areas: &LayerArea,
    raster: &std::path::Path,
) -> Result<Vec<(u8, gdal::vector::Geometry, f64)>, crate::output::OutputError> {
    use gdal::vector::ToGdal;
    let err = |reason: String| crate::output::OutputError::Write {
        path: raster.display().to_string(),
        reason: format!("polygon geometry: {reason}"),
    };
    let mut out = Vec::with_capacity(polygons.len());
    for (class, p) in polygons {
        let g = p.to_gdal().map_err(|e| err(e.to_string()))?;
        let g = if tolerance > 0.0 {
            g.simplify_preserve_topology(tolerance)
                .map_err(|e| err(e.to_string()))?
        } else {
            g
        };
        if g.is_empty() {
            continue;
        }
        let area = areas.gdal(&g).map_err(err)?;
        if area < min_area_m2 {
            continue;
        }
        out.push((class, g, area));
    }
    Ok(out)
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
        name: "area_m2",
        kind: FieldKind::Real,
    },
];

/// The model thread's part: class probabilities for a batch of tiles.
struct Segmenter<'m> {
    model: &'m mut SegmentationModel,
    batch_size: usize,
    tile_size: usize,
}

/// A batch's tiles, their probabilities and the margin the model's output lacks.
type SegOutput = (Vec<(Tile, Vec<u8>)>, ndarray::Array4<f32>, usize);

/// A batch's tiles with their valid masks.
type SegBatch = TileBatch<(Tile, Vec<u8>)>;

impl ModelStage<f32> for Segmenter<'_> {
    type Batch = SegBatch;
    type Output = SegOutput;

    fn new_batch(&self) -> Result<SegBatch, PipelineError> {
        Ok(TileBatch::new(self.batch_size, self.tile_size))
    }

    fn push(batch: &mut SegBatch, t: TileData<f32>) -> bool {
        let valid = t.valid.to_vec();
        batch.push(&t.pixels, (t.tile, valid))
    }

    fn run(&mut self, batch: &mut SegBatch) -> Result<Self::Output, PipelineError> {
        let (pixels, tiles) = batch.take();
        let probs = self.model.predict(pixels)?;
        Ok((tiles, probs, self.model.margin()))
    }
}

/// The stitching thread's part: blend every batch into the mosaic and compress the finished
/// rows into the COGs; at the end, assemble the COGs.
struct Stitching {
    stitcher: MaskStitcher,
    writer: MosaicWriter,
}

/// Most rows held, seconds assembling the COGs, and the polygons of the class mosaic.
type Stitched = (usize, f64, Vec<(u8, geo::Polygon<f64>)>);

impl SceneSink for Stitching {
    type Input = SegOutput;
    type Done = Stitched;

    fn consume(&mut self, (tiles, probs, margin): Self::Input) -> Result<(), PipelineError> {
        // Valid-convolution models: the probabilities cover the tiles' centres.
        self.stitcher.set_margin(margin);
        for (k, (tile, valid)) in tiles.into_iter().enumerate() {
            let p = probs.slice(s![k, .., .., ..]);
            let p = p.as_standard_layout();
            let slice = p
                .as_slice()
                .ok_or_else(|| PipelineError::Internal("non-contiguous probabilities".into()))?;
            self.stitcher
                .add(&tile, Some(slice), &valid, &mut self.writer)?;
        }
        Ok(())
    }

    fn skipped(&mut self, tile: Tile) -> Result<(), PipelineError> {
        // Nothing predicted, but its rows may now be final.
        Ok(self.stitcher.add(&tile, None, &[], &mut self.writer)?)
    }

    fn finish(mut self) -> Result<Stitched, PipelineError> {
        let peak = self.stitcher.finish(&mut self.writer)?;
        let t = Instant::now();
        let polygons = self.writer.finish()?;
        Ok((peak, t.elapsed().as_secs_f64(), polygons))
    }
}

/// How the model's output becomes classes: the stitcher's decision, the number of classes it
/// blends, and how many probability bands are kept (binary models keep P(class 1),
/// multi-class models every class).
fn class_setup(model: &SegmentationModel, job: &SegmentJob) -> (Decision, usize, usize) {
    let n_classes = match model.format() {
        SegFormat::Probability => 2,
        _ => model.classes().len(),
    };
    let threshold = job.threshold.unwrap_or(model.threshold());
    let decision = match model.format() {
        SegFormat::Probability => Decision::Threshold(threshold),
        SegFormat::Clipseg => Decision::Prompts(threshold),
        _ => Decision::Argmax,
    };
    let prob_bands = if !job.probabilities {
        0
    } else if model.format() == SegFormat::Probability {
        1
    } else if model.format() == SegFormat::Clipseg {
        n_classes - 1
    } else {
        n_classes
    };
    (decision, n_classes, prob_bands)
}

/// The class raster's legend: black background (class 0), then distinct colours.
fn legend(classes: &[String]) -> Legend {
    Legend {
        names: classes.to_vec(),
        colors: (0..classes.len())
            .map(|i| {
                if i == 0 {
                    [0, 0, 0]
                } else {
                    class_color(i - 1)
                }
            })
            .collect(),
    }
}

/// The mosaic writer and its stitcher over `grid`, writing into `dir`.
fn stitching(
    model: &SegmentationModel,
    job: &SegmentJob,
    scene: &crate::raster::Scene,
    grid: &crate::tiling::TileGrid,
    dir: &std::path::Path,
) -> Result<Stitching, PipelineError> {
    let classes = model.classes();
    let (decision, n_classes, prob_bands) = class_setup(model, job);
    let legend = legend(&classes);
    let skip: Vec<u8> = model.background().into_iter().collect();
    // The kept probability bands are the last `prob_bands` classes.
    let band_names: Vec<String> = classes[classes.len() - prob_bands.min(classes.len())..].to_vec();
    let writer = MosaicWriter::create(
        &dir.join("classes.tif"),
        &dir.join("probabilities.tif"),
        &MosaicSpec {
            source: scene.path(),
            width: grid.working_width,
            height: grid.working_height,
            geotransform: &grid.geotransform,
            crs_wkt: scene.crs_wkt(),
            legend: &legend,
            prob_bands: if prob_bands > 0 { &band_names } else { &[] },
            // Polygons of every class but the background (if the model has one), made from
            // the stitched rows as they are final (never per tile).
            polygons_skip: Some(skip.as_slice()),
            options: job.base.cog,
        },
    )?;
    let mut stitcher = MaskStitcher::new(grid, n_classes, job.window, decision);
    stitcher.set_margin(model.margin());
    if model.format() == SegFormat::Probability {
        stitcher = stitcher.binary_input();
    }
    if prob_bands == 0 {
        stitcher = stitcher.without_probabilities();
    }
    Ok(Stitching { stitcher, writer })
}

/// The polygon layer `dir/polygons.<ext>`; returns how many polygons it holds.
fn write_polygons(
    job: &SegmentJob,
    scene: &crate::raster::Scene,
    dir: &std::path::Path,
    polys: Vec<(u8, gdal::vector::Geometry, f64)>,
    classes: &[String],
) -> Result<usize, PipelineError> {
    let ext = job.base.format.extension();
    let mut layer = VectorLayerWriter::create(
        &dir.join(format!("polygons.{ext}")),
        job.base.format,
        "polygons",
        GeometryKind::Polygon,
        scene.crs_wkt(),
        &POLYGON_FIELDS,
        false,
    )?;
    layer.set_style(super::label_style(&legend(classes), Symbol::Fill, None));
    let n_polys = polys.len();
    for (class, g, area) in polys {
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
    Ok(n_polys)
}

/// The report section of a segmentation run: the class raster with its legend (the
/// background, which is not polygonized, not drawn), the polygons, and each class's area (the
/// polygon layer's `area_m2`) as a share of the scene.
fn report_section(
    job: &SegmentJob,
    provider: &str,
    scene: &crate::raster::Scene,
    grid: &crate::tiling::TileGrid,
    (classes, background): (&[String], &[u8]),
    polys: &[(u8, gdal::vector::Geometry, f64)],
    raster: &std::path::Path,
) -> crate::output::report::Section {
    use crate::output::report::{ClassMap, Feature, Features};
    let legend = legend(classes);
    let mut s = super::report::section("segment", &job.base, provider);
    let mut features = Features {
        kind: "polygons".into(),
        labelled: false,
        ..Features::default()
    };
    let mut areas = Vec::with_capacity(polys.len());
    for (class, g, area) in polys {
        areas.push((*class, *area));
        let rings: Vec<Vec<(f64, f64)>> = (0..g.geometry_count())
            .map(|i| {
                let mut points = Vec::new();
                g.get_geometry(i).get_points(&mut points);
                points.into_iter().map(|(x, y, _)| (x, y)).collect()
            })
            .collect();
        features.push(Feature {
            rings,
            label: classes
                .get(usize::from(*class))
                .cloned()
                .unwrap_or_default(),
            score: None,
            color: legend
                .colors
                .get(usize::from(*class))
                .copied()
                .unwrap_or([128, 128, 128]),
        });
    }
    let scene_area = super::report::grid_area(
        scene.crs_wkt(),
        &grid.geotransform,
        (grid.working_width, grid.working_height),
    );
    s.areas = Some(super::report::class_areas(
        &legend,
        &areas,
        background,
        (scene_area, "the scene"),
        scene.crs_wkt().is_some(),
    ));
    s.features = Some(features);
    s.class_map = Some(ClassMap {
        raster: raster.to_path_buf(),
        legend,
        hidden: background.to_vec(),
    });
    if !job.prompts.is_empty() {
        s.fact("prompts", job.prompts.join(", "));
    }
    s.fact(
        "tiles",
        format!(
            "{} of {} px, overlap {}",
            grid.len(),
            grid.options.tile_size,
            grid.options.overlap
        ),
    );
    s.fact(
        "mosaic",
        format!("{} x {} px", grid.working_width, grid.working_height),
    );
    if let Some(g) = grid.options.target_gsd {
        s.fact("target resolution", format!("{g} m"));
    }
    s.fact("polygons", polys.len());
    if job.min_area > 0.0 {
        s.fact("min area", format!("{} m²", job.min_area));
    }
    s
}

/// Run the job.
///
/// # Errors
/// Bad scene, model or options; inference failure; unwritable outputs (nothing partial left).
pub fn run_segment(mut job: SegmentJob) -> Result<SegmentReport, PipelineError> {
    if let Some(spec) = job.instances.take() {
        return super::instances::run_instances(job, spec);
    }
    let start = Instant::now();
    let loading = Phase::spinner(job.base.progress, "loading model");
    let runtime = Runtime::load(job.base.ort_lib.as_deref())?;
    let mut model = SegmentationModel::load(runtime, &job.base.model, &job.base.session)?;
    if super::check_prompts(
        model.is_prompted(),
        &job.prompts,
        &job.base.model,
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
        &job.base.scene,
        &job.base.open,
        &job.base.grid,
        &mut job.base.read,
        &job.base.scaling,
        &tiles,
    )?;
    let load_seconds = start.elapsed().as_secs_f64();
    loading.finish();
    let size = grid.tile_size();
    crate::options::check_batch_bytes(job.base.batch_size, size)?;
    job.base.read.order = ReadOrder::RowMajor;
    job.base.read.deliver_skipped = true;
    let pending = PendingOutput::dir(&job.out, job.overwrite)?;
    let classes: Vec<String> = model.classes();
    let dir = pending.path();
    let sink = stitching(&model, &job, &scene, &grid, &dir)?;
    let norm = model.normalizer();
    let feed = job.feed.take();
    // The model runs on its thread while the stitching thread blends the previous batch into
    // the mosaic and compresses the finished rows into the COGs (they overlap; the driver
    // keeps the tiles' order).
    let spec = RunSpec {
        tiles: grid.len(),
        progress: job.base.progress,
        what: "segmenting",
        sink: "stitching",
        finishing: Some("assembling COGs"),
    };
    let stage = Segmenter {
        batch_size: crate::models::graph_batch_size(
            job.base.batch_size,
            model.fixed_batch(),
            &job.base.model,
        ),
        model: &mut model,
        tile_size: size,
    };
    let swept = drive(&spec, stage, sink, |consume| {
        stream_model_tiles(
            feed,
            &scene,
            &grid,
            &job.base.read,
            &scaling,
            &norm,
            consume,
        )
    })?;
    let (stats, model_seconds) = (swept.stats, swept.model_seconds);
    let (peak_rows, cog_seconds, polygons) = swept.done;

    // The COGs were assembled at the end of the sweep, on the stitching thread.
    let cog_done = Instant::now();
    let classes_tif = dir.join("classes.tif");
    let areas = LayerArea::for_layer(scene.crs_wkt()).map_err(|reason| {
        crate::output::OutputError::Write {
            path: classes_tif.display().to_string(),
            reason: format!("polygon areas: {reason}"),
        }
    })?;
    let polys = super::phase(job.base.progress, "polygonizing", || {
        finish_polygons(polygons, job.simplify, job.min_area, &areas, &classes_tif)
    })?;
    let polygons_done = Instant::now();
    super::write_raster_style(&classes_tif, &legend(&classes))?;
    let (provider, fallback) = model.provider();
    let background: Vec<u8> = model.background().into_iter().collect();
    let mut section = report_section(
        &job,
        provider,
        &scene,
        &grid,
        (&classes, &background),
        &polys,
        &classes_tif,
    );
    let writing = format!("writing polygons.{}", job.base.format.extension());
    let n_polys = super::phase(job.base.progress, &writing, || {
        write_polygons(&job, &scene, &dir, polys, &classes)
    })?;
    section.timing(
        "sweep: read, model, stitch, COG tiles",
        (cog_done - start).as_secs_f64() - cog_seconds,
    );
    section.timing("COG assembly", cog_seconds);
    section.timing("polygonizing", (polygons_done - cog_done).as_secs_f64());
    section.timing("vector layer", polygons_done.elapsed().as_secs_f64());
    section.timing("of which the model", model_seconds);
    super::report::write_report(&job.base, &dir, &section)?;
    let outputs = super::output_names(&dir, &job.out)?;
    pending.commit()?;
    super::report::rebase_section(&mut section, &dir, &job.out);
    let mut run = super::SceneRunReport::new(&job.base, (provider, fallback), &stats, outputs);
    run.section = Some(section);
    Ok(SegmentReport {
        run,
        classes,
        tile_size: size,
        overlap: grid.options.overlap,
        target_gsd: grid.options.target_gsd,
        tiles_read: stats.tiles_read,
        polygons: n_polys,
        mosaic_size: (grid.working_width, grid.working_height),
        peak_rows,
        seconds: start.elapsed().as_secs_f64(),
        model_seconds,
        load_seconds,
        phase_seconds: PhaseSeconds {
            sweep: (cog_done - start).as_secs_f64() - cog_seconds,
            cog: cog_seconds,
            polygonize: (polygons_done - cog_done).as_secs_f64(),
            vector: polygons_done.elapsed().as_secs_f64(),
        },
        instances: None,
    })
}

impl crate::task::SceneJob for SegmentJob {
    type Report = SegmentReport;
    fn set_feed(&mut self, port: super::feed::FeedPort) {
        self.feed = Some(port);
    }
    fn run(self) -> Result<SegmentReport, PipelineError> {
        run_segment(self)
    }
}
