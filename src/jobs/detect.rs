//! `tessera detect`: object detection over a whole scene. Boxes from every tile are mapped to
//! map coordinates through the tile's geotransform (rotated footprints stay exact), then merged
//! across tiles: duplicates from overlaps removed (class-aware NMS or weighted box fusion) and
//! boxes cut by a tile edge joined with their other part, with a spatial index throughout.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use super::driver::{drive, ModelStage, RunSpec, SceneSink};
use super::{stream_model_tiles, PipelineError, TileBatch};
use crate::models::detection::{DetectorModel, PixelBox};
use crate::output::{
    FieldKind, FieldSpec, FieldValue, GeometryKind, PendingOutput, VectorLayerWriter,
};
use crate::runtime::Runtime;
use crate::stitch::boxes::{merge, MapDetection, MergeMethod, MergeOptions};
use crate::tiling::{Tile, TileData};

/// What `tessera detect` does.
#[derive(Debug)]
pub struct DetectJob {
    /// The scene side: scene, model, runtime, grid, reading, scaling, batch, vector format.
    pub base: crate::options::SceneJobBase,
    pub confidence: Option<f32>,
    /// Text queries for open-vocabulary detectors (OWL-ViT).
    pub prompts: Vec<String>,
    pub iou: Option<f32>,
    pub method: MergeMethod,
    pub cut_ios: f64,
    pub class_aware: bool,
    pub out: Option<PathBuf>,
    pub overwrite: bool,
    /// Tiles from a shared read pass (multi-model pipelines) instead of reading the scene.
    pub feed: Option<super::feed::FeedPort>,
}

/// What `tessera detect` did.
#[derive(Debug, Serialize)]
pub struct DetectReport {
    /// Scene, model, provider, tile counts, outputs, memory.
    #[serde(flatten)]
    pub run: super::SceneRunReport,
    pub classes: Vec<String>,
    pub tile_size: usize,
    pub overlap: usize,
    pub target_gsd: Option<f64>,
    pub tiles_read: usize,
    /// Boxes from all tiles before merging.
    pub raw_detections: usize,
    pub detections: usize,
    pub counts: BTreeMap<String, usize>,
    pub seconds: f64,
    pub model_seconds: f64,
    pub merge_seconds: f64,
}

const FIELDS: [FieldSpec; 4] = [
    FieldSpec {
        name: "class",
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
        name: "tile_id",
        kind: FieldKind::String,
    },
];

/// Keep the part of a box inside the scene: boxes wholly in a tile's padding are dropped.
fn inside(b: &PixelBox, tile: &Tile) -> Option<PixelBox> {
    let (w, h) = (tile.inside_w as f32, tile.inside_h as f32);
    if b.x0 >= w || b.y0 >= h {
        return None;
    }
    let mut c = *b;
    c.x1 = c.x1.min(w);
    c.y1 = c.y1.min(h);
    (c.x1 > c.x0 && c.y1 > c.y0).then_some(c)
}

/// The model thread's part: boxes (in tile pixels) for a batch of tiles.
struct Detector<'m> {
    model: &'m mut DetectorModel,
    batch_size: usize,
    confidence: f32,
}

impl ModelStage<f32> for Detector<'_> {
    type Batch = TileBatch<Tile>;
    type Output = (Vec<Tile>, Vec<Vec<PixelBox>>);

    fn new_batch(&self) -> Result<TileBatch<Tile>, PipelineError> {
        Ok(TileBatch::new(self.batch_size, self.model.input_size()))
    }

    fn push(batch: &mut TileBatch<Tile>, t: TileData<f32>) -> bool {
        batch.push(&t.pixels, t.tile)
    }

    fn run(&mut self, batch: &mut TileBatch<Tile>) -> Result<Self::Output, PipelineError> {
        let (pixels, tiles) = batch.take();
        let boxes = self.model.detect(pixels, self.confidence)?;
        Ok((tiles, boxes))
    }
}

/// The sink's part: every box inside the scene, in map coordinates.
struct Boxes {
    working: (usize, usize),
    dets: Vec<MapDetection>,
}

impl SceneSink for Boxes {
    type Input = (Vec<Tile>, Vec<Vec<PixelBox>>);
    type Done = Vec<MapDetection>;

    fn consume(&mut self, (tiles, boxes): Self::Input) -> Result<(), PipelineError> {
        for (tile, tile_boxes) in tiles.into_iter().zip(boxes) {
            for b in tile_boxes.iter().filter_map(|b| inside(b, &tile)) {
                self.dets
                    .push(MapDetection::from_pixel_box(&b, &tile, self.working));
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<Vec<MapDetection>, PipelineError> {
        Ok(self.dets)
    }
}

/// Class counts of the merged boxes (every class, 0 for those without any).
fn count_classes(classes: &[String], merged: &[MapDetection]) -> BTreeMap<String, usize> {
    let mut counts: BTreeMap<String, usize> = classes.iter().map(|c| (c.clone(), 0)).collect();
    for d in merged {
        if let Some(name) = classes.get(d.class) {
            *counts.entry(name.clone()).or_default() += 1;
        }
    }
    counts
}

/// The detection layer `path`.
fn write_detections(
    job: &DetectJob,
    scene: &crate::raster::Scene,
    path: &std::path::Path,
    merged: &[MapDetection],
    classes: &[String],
) -> Result<(), PipelineError> {
    let mut layer = VectorLayerWriter::create(
        path,
        job.base.format,
        "detections",
        GeometryKind::Polygon,
        scene.crs_wkt(),
        &FIELDS,
        false,
    )?;
    for d in merged {
        layer.add_polygon(
            &d.corners,
            &[
                FieldValue::Integer(d.class as i64),
                FieldValue::String(classes.get(d.class).cloned().unwrap_or_default()),
                FieldValue::Real(f64::from(d.score)),
                FieldValue::String(d.tile.clone()),
            ],
        )?;
    }
    layer.finish()?;
    Ok(())
}

/// What a detection pass found: its report and the merged detections, in the scene's CRS
/// (best first), for callers that use the boxes themselves (`tessera eval`).
#[derive(Debug)]
pub struct DetectOutcome {
    pub report: DetectReport,
    pub detections: Vec<MapDetection>,
}

/// Load the detector `job` names (and set its text queries when it is open-vocabulary).
///
/// # Errors
/// No ONNX Runtime, a bad package, queries given to a closed-set detector or missing for an
/// open-vocabulary one.
pub fn load_detector(job: &DetectJob) -> Result<DetectorModel, PipelineError> {
    let runtime = Runtime::load(job.base.ort_lib.as_deref())?;
    let mut model = DetectorModel::load(runtime, &job.base.model, &job.base.session)?;
    if super::check_prompts(
        model.is_prompted(),
        &job.prompts,
        &job.base.model,
        "an open-vocabulary detector",
        "text queries",
    )? {
        model.set_queries(&job.prompts)?;
    }
    Ok(model)
}

/// Run the job.
///
/// # Errors
/// Bad scene, model or options; inference failure; unwritable outputs.
pub fn run_detect(job: DetectJob) -> Result<DetectReport, PipelineError> {
    let start = Instant::now();
    let mut model = load_detector(&job)?;
    let mut outcome = detect_with(job, &mut model)?;
    outcome.report.seconds = start.elapsed().as_secs_f64();
    Ok(outcome.report)
}

/// Run the job with a loaded detector (one model over many scenes, e.g. the chips of an
/// evaluation); the report's `seconds` count from here, without loading the model.
///
/// # Errors
/// Bad scene or options; inference failure; unwritable outputs.
pub fn detect_with(
    mut job: DetectJob,
    model: &mut DetectorModel,
) -> Result<DetectOutcome, PipelineError> {
    let start = Instant::now();
    let size = model.input_size();
    let tiles = super::ModelTiles {
        size,
        any_size: false,
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
    crate::options::check_batch_bytes(job.base.batch_size, grid.tile_size())?;
    let pending = match &job.out {
        Some(dir) => Some(PendingOutput::dir(dir, job.overwrite)?),
        None => None,
    };
    let iou = f64::from(job.iou.unwrap_or(model.iou()));
    let norm = model.normalizer();
    let spec = RunSpec {
        tiles: grid.len(),
        progress: job.base.progress,
        what: "detecting",
        sink: "detection",
    };
    let stage = Detector {
        confidence: job.confidence.unwrap_or(model.confidence()),
        batch_size: crate::models::graph_batch_size(
            job.base.batch_size,
            model.fixed_batch(),
            &job.base.model,
        ),
        model,
    };
    let sink = Boxes {
        working: (grid.working_width, grid.working_height),
        dets: Vec::new(),
    };
    let feed = job.feed.take();
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
    let (stats, model_seconds, dets) = (swept.stats, swept.model_seconds, swept.done);

    let raw = dets.len();
    let t = Instant::now();
    let merged = merge(
        dets,
        &MergeOptions {
            method: job.method,
            iou,
            cut_ios: job.cut_ios,
            class_aware: job.class_aware,
        },
    );
    let merge_seconds = t.elapsed().as_secs_f64();
    let classes = model.classes();
    let counts = count_classes(&classes, &merged);
    let mut outputs = Vec::new();
    if let (Some(pending), Some(dir)) = (pending, &job.out) {
        let name = format!("detections.{}", job.base.format.extension());
        write_detections(&job, &scene, &pending.path().join(&name), &merged, &classes)?;
        outputs.push(dir.join(name).display().to_string());
        pending.commit()?;
    }
    let (provider, fallback) = model.provider();
    let report = DetectReport {
        run: super::SceneRunReport::new(&job.base, (provider, fallback), &stats, outputs),
        classes,
        tile_size: size,
        overlap: grid.options.overlap,
        target_gsd: grid.options.target_gsd,
        tiles_read: stats.tiles_read,
        raw_detections: raw,
        detections: merged.len(),
        counts,
        seconds: start.elapsed().as_secs_f64(),
        model_seconds,
        merge_seconds,
    };
    Ok(DetectOutcome {
        report,
        detections: merged,
    })
}

impl crate::task::SceneJob for DetectJob {
    type Report = DetectReport;
    fn set_feed(&mut self, port: super::feed::FeedPort) {
        self.feed = Some(port);
    }
    fn run(self) -> Result<DetectReport, PipelineError> {
        run_detect(self)
    }
}
