//! `tessera detect`: object detection over a whole scene. Boxes from every tile are mapped to
//! map coordinates through the tile's geotransform (rotated footprints stay exact), then merged
//! across tiles: duplicates from overlaps removed (class-aware NMS or weighted box fusion) and
//! boxes cut by a tile edge joined with their other part, with a spatial index throughout.
//!
//! Two kinds of package detect: detector packages (YOLO layouts, OWL-ViT;
//! [`crate::models::detection`]) and generative packages with a `[grounding]` section, whose
//! generated text is parsed into boxes ([`crate::models::grounding`]). Both give boxes in tile
//! pixels; from there on they are treated alike. Generative packages label boxes with the user's
//! prompt or the phrase the model wrote, and the layer gets a `phrase` field.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use super::driver::{drive, ModelStage, RunSpec, SceneSink};
use super::{stream_model_tiles, PipelineError, TileBatch};
use crate::models::detection::{DetectorModel, PixelBox};
use crate::models::grounding::detector::{is_generative, GroundedBox, GroundedDetector};
use crate::models::ModelPackage;
use crate::output::{
    FieldKind, FieldSpec, FieldValue, GeometryKind, LayerArea, PendingOutput, VectorLayerWriter,
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
    /// Text queries for open-vocabulary detectors (OWL-ViT, OWLv2, Grounding DINO) and
    /// generative packages.
    pub prompts: Vec<String>,
    /// Grounding DINO's text threshold (default: the model's).
    pub text_threshold: Option<f32>,
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

/// The `phrase` field of generative packages' layers.
const PHRASE: FieldSpec = FieldSpec {
    name: "phrase",
    kind: FieldKind::String,
};

const FIELDS: [FieldSpec; 5] = [
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
    FieldSpec {
        name: "area_m2",
        kind: FieldKind::Real,
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

/// A detecting model of either kind.
// One per run, so the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum DetectModel {
    /// A detector package (fixed classes or OWL-ViT queries).
    Boxes(DetectorModel),
    /// A generative package with `[grounding]`.
    Grounded(GroundedDetector),
}

/// `$m` bound to the model of either kind, `$body` evaluated with it.
macro_rules! either {
    ($self:expr, $m:ident => $body:expr) => {
        match $self {
            DetectModel::Boxes($m) => $body,
            DetectModel::Grounded($m) => $body,
        }
    };
}

impl DetectModel {
    fn load(
        runtime: &Runtime,
        dir: &std::path::Path,
        options: &crate::runtime::SessionOptions,
    ) -> Result<DetectModel, crate::models::ModelError> {
        let generative = ModelPackage::load(dir).is_ok_and(|p| is_generative(&p));
        Ok(if generative {
            DetectModel::Grounded(GroundedDetector::load(runtime, dir, options)?)
        } else {
            DetectModel::Boxes(DetectorModel::load(runtime, dir, options)?)
        })
    }

    fn input_size(&self) -> usize {
        either!(self, m => m.input_size())
    }

    fn package(&self) -> &ModelPackage {
        either!(self, m => m.package())
    }

    fn iou(&self) -> f32 {
        either!(self, m => m.iou())
    }

    fn confidence(&self) -> f32 {
        either!(self, m => m.confidence())
    }

    fn normalizer(&self) -> crate::models::Normalizer {
        either!(self, m => m.normalizer())
    }

    fn provider(&self) -> (&'static str, Option<&str>) {
        either!(self, m => m.provider())
    }

    fn fixed_batch(&self) -> Option<usize> {
        match self {
            DetectModel::Boxes(m) => m.fixed_batch(),
            DetectModel::Grounded(_) => None,
        }
    }
}

/// A box in tile pixels with its label and phrase (generative packages) or class.
#[derive(Clone, Debug)]
enum TileBox {
    Class(PixelBox),
    Text(GroundedBox),
}

impl TileBox {
    /// The box with `class` (0 for text boxes: their class is set by the sink).
    fn pixel_box(&self) -> PixelBox {
        match self {
            TileBox::Class(b) => *b,
            TileBox::Text(g) => PixelBox {
                class: 0,
                score: g.score,
                x0: g.x0,
                y0: g.y0,
                x1: g.x1,
                y1: g.y1,
                // A text box's phrase is its class's (the sink numbers them).
                phrase: None,
            },
        }
    }
}

/// The model thread's part: boxes (in tile pixels) for a batch of tiles.
struct Detector<'m> {
    model: &'m mut DetectModel,
    batch_size: usize,
    confidence: f32,
}

impl ModelStage<f32> for Detector<'_> {
    type Batch = TileBatch<Tile>;
    type Output = (Vec<Tile>, Vec<Vec<TileBox>>);

    fn new_batch(&self) -> Result<TileBatch<Tile>, PipelineError> {
        Ok(TileBatch::new(self.batch_size, self.model.input_size()))
    }

    fn push(batch: &mut TileBatch<Tile>, t: TileData<f32>) -> bool {
        batch.push(&t.pixels, t.tile)
    }

    fn run(&mut self, batch: &mut TileBatch<Tile>) -> Result<Self::Output, PipelineError> {
        let (pixels, tiles) = batch.take();
        let boxes = match self.model {
            DetectModel::Boxes(m) => {
                let inside: Vec<_> = tiles.iter().map(|t| (t.inside_w, t.inside_h)).collect();
                m.detect_tiles(pixels, &inside, self.confidence)?
                    .into_iter()
                    .map(|v| v.into_iter().map(TileBox::Class).collect())
                    .collect()
            }
            DetectModel::Grounded(m) => m
                .detect(pixels, self.confidence)?
                .boxes
                .into_iter()
                .map(|v| v.into_iter().map(TileBox::Text).collect())
                .collect(),
        };
        Ok((tiles, boxes))
    }
}

/// The sink's part: every box inside the scene, in map coordinates. Text boxes get the class of
/// their (label, phrase) pair, numbered in order of appearance (renumbered at the end).
struct Boxes {
    working: (usize, usize),
    dets: Vec<MapDetection>,
    /// (label, phrase) of each class of text boxes.
    texts: Vec<(String, String)>,
}

impl SceneSink for Boxes {
    type Input = (Vec<Tile>, Vec<Vec<TileBox>>);
    type Done = (Vec<MapDetection>, Vec<(String, String)>);

    fn consume(&mut self, (tiles, boxes): Self::Input) -> Result<(), PipelineError> {
        for (tile, tile_boxes) in tiles.into_iter().zip(boxes) {
            for tb in tile_boxes {
                let Some(mut b) = inside(&tb.pixel_box(), &tile) else {
                    continue;
                };
                if let TileBox::Text(g) = &tb {
                    let key = (g.label.clone(), g.phrase.clone());
                    b.class = match self.texts.iter().position(|t| *t == key) {
                        Some(i) => i,
                        None => {
                            self.texts.push(key);
                            self.texts.len() - 1
                        }
                    };
                }
                self.dets
                    .push(MapDetection::from_pixel_box(&b, &tile, self.working));
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<Self::Done, PipelineError> {
        Ok((self.dets, self.texts))
    }
}

/// Text classes in a fixed order whatever order the tiles came in: the user's prompts first
/// (in their order), then the rest sorted by (label, phrase). Renumbers `dets`.
fn order_texts(
    dets: &mut [MapDetection],
    texts: Vec<(String, String)>,
    prompts: &[String],
) -> Vec<(String, String)> {
    let mut order: Vec<usize> = (0..texts.len()).collect();
    let rank = |i: usize| {
        prompts
            .iter()
            .position(|p| *p == texts[i].0)
            .unwrap_or(usize::MAX)
    };
    order.sort_by(|&a, &b| rank(a).cmp(&rank(b)).then_with(|| texts[a].cmp(&texts[b])));
    let mut new_index = vec![0; texts.len()];
    for (new, &old) in order.iter().enumerate() {
        new_index[old] = new;
    }
    for d in dets.iter_mut() {
        d.class = new_index[d.class];
    }
    order.into_iter().map(|i| texts[i].clone()).collect()
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

/// The detection layer `path`; `phrases` (generative packages and Grounding DINO): each merged
/// box's phrase, written as the `phrase` field.
fn write_detections(
    job: &DetectJob,
    crs_wkt: Option<&str>,
    path: &std::path::Path,
    merged: &[MapDetection],
    classes: &[String],
    phrases: Option<&[String]>,
) -> Result<(), PipelineError> {
    let mut fields = FIELDS.to_vec();
    if phrases.is_some() {
        fields.insert(2, PHRASE);
    }
    let mut layer = VectorLayerWriter::create(
        path,
        job.base.format,
        "detections",
        GeometryKind::Polygon,
        crs_wkt,
        &fields,
        false,
    )?;
    // The style categorises by label; generative packages' classes may share one (a prompt
    // with several phrases): each label once.
    let mut names: Vec<String> = Vec::new();
    for c in classes {
        if !names.contains(c) {
            names.push(c.clone());
        }
    }
    let legend = crate::output::Legend {
        colors: (0..names.len()).map(crate::output::class_color).collect(),
        names,
    };
    layer.set_style(super::label_style(
        &legend,
        crate::output::Symbol::Outline,
        Some("label"),
    ));
    let area_err = |reason: String| crate::output::OutputError::Write {
        path: path.display().to_string(),
        reason: format!("box areas: {reason}"),
    };
    let areas = LayerArea::for_layer(crs_wkt).map_err(area_err)?;
    for (i, d) in merged.iter().enumerate() {
        let footprint = geo::Polygon::new(geo::LineString::from(d.corners.to_vec()), vec![]);
        let area = areas
            .multi_polygon(&geo::MultiPolygon(vec![footprint]))
            .map_err(area_err)?;
        let mut values = vec![
            FieldValue::Integer(d.class as i64),
            FieldValue::String(classes.get(d.class).cloned().unwrap_or_default()),
        ];
        if let Some(p) = phrases {
            values.push(FieldValue::String(p.get(i).cloned().unwrap_or_default()));
        }
        values.push(FieldValue::Real(f64::from(d.score)));
        values.push(FieldValue::String(d.tile.clone()));
        values.push(FieldValue::Real(area));
        layer.add_polygon(&d.corners, &values)?;
    }
    layer.finish()?;
    Ok(())
}

/// The report section of a detection run: the merged boxes drawn with their labels (in the
/// layer's colours), counts, the grid and timings.
fn report_section(
    job: &DetectJob,
    d: &Detected,
    counts: &BTreeMap<String, usize>,
    seconds: f64,
) -> crate::output::report::Section {
    use crate::output::report::{Feature, Features};
    let mut s = super::report::section("detect", &job.base, d.provider.0);
    // The layer's style: each label once, in order of first appearance.
    let mut names: Vec<&String> = Vec::new();
    for c in &d.classes {
        if !names.contains(&c) {
            names.push(c);
        }
    }
    let mut features = Features {
        kind: "detections".into(),
        labelled: true,
        ..Features::default()
    };
    for (i, m) in d.merged.iter().enumerate() {
        let class = d.classes.get(m.class).cloned().unwrap_or_default();
        let color = names
            .iter()
            .position(|n| **n == class)
            .map_or([128, 128, 128], crate::output::class_color);
        let label = match d.phrases.as_ref().and_then(|p| p.get(i)) {
            Some(p) if !p.is_empty() && *p != class => format!("{class}: {p}"),
            _ => class,
        };
        let mut ring = m.corners.to_vec();
        ring.push(m.corners[0]);
        features.push(Feature {
            rings: vec![ring],
            label,
            score: Some(m.score),
            color,
        });
    }
    features.legend = Some(crate::output::Legend {
        colors: (0..names.len()).map(crate::output::class_color).collect(),
        names: names.into_iter().cloned().collect(),
    });
    s.features = Some(features);
    if !job.prompts.is_empty() {
        s.fact("prompts", job.prompts.join(", "));
    }
    if let Some(c) = job.confidence {
        s.fact("confidence", c);
    }
    let per_class: Vec<String> = counts.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    s.fact("detections per class", per_class.join(", "));
    s.fact("boxes before merging", d.raw);
    s.fact(
        "tiles",
        format!(
            "{} read, {} skipped; {} px, overlap {}",
            d.stats.tiles_read, d.stats.tiles_skipped, d.tile_size, d.overlap
        ),
    );
    if let Some(g) = d.target_gsd {
        s.fact("target resolution", format!("{g} m"));
    }
    s.timing("model", d.model_seconds);
    s.timing("merging boxes across tiles", d.merge_seconds);
    s.timing("whole run", seconds);
    s
}

/// A detection sweep over a scene: the merged boxes and what the report needs.
pub(crate) struct Detected {
    pub merged: Vec<MapDetection>,
    pub raw: usize,
    /// The class of each merged box's `class` index.
    pub classes: Vec<String>,
    /// The classes the report lists: every prompt of a generative package (with or without
    /// boxes), then the other classes, each label once.
    pub report_classes: Vec<String>,
    pub stats: crate::tiling::StreamStats,
    pub model_seconds: f64,
    pub merge_seconds: f64,
    pub tile_size: usize,
    pub overlap: usize,
    pub target_gsd: Option<f64>,
    pub provider: (&'static str, Option<String>),
    pub crs_wkt: Option<String>,
    /// Each merged box's phrase (generative packages, Grounding DINO).
    pub phrases: Option<Vec<String>>,
}

/// Detect over the whole scene and merge across tiles (no output written); `before_sweep`
/// runs once the scene and model are open, before any tile is read (the caller claims its
/// output folder there, so that a folder that exists fails before the work).
///
/// # Errors
/// Bad scene, model or options; inference failure; the error of `before_sweep`.
pub(crate) fn detect_merged(
    job: &mut DetectJob,
    before_sweep: &mut dyn FnMut(&crate::raster::Scene) -> Result<(), PipelineError>,
) -> Result<Detected, PipelineError> {
    let mut model = load_for_job(job)?;
    detect_merged_with(job, &mut model, before_sweep)
}

/// The package `job` names, loaded, with its prompts and text threshold set.
fn load_for_job(job: &DetectJob) -> Result<DetectModel, PipelineError> {
    super::phase(job.base.progress, "loading model", || load_package(job))
}

fn load_package(job: &DetectJob) -> Result<DetectModel, PipelineError> {
    let runtime = Runtime::load(job.base.ort_lib.as_deref())?;
    let mut model = DetectModel::load(runtime, &job.base.model, &job.base.session)?;
    match &mut model {
        DetectModel::Boxes(m) => {
            if super::check_prompts(
                m.is_prompted(),
                &job.prompts,
                &job.base.model,
                "an open-vocabulary detector",
                "text queries",
            )? {
                m.set_queries(&job.prompts)?;
            }
            m.set_text_threshold(job.text_threshold)?;
        }
        DetectModel::Grounded(m) => {
            if m.requires_prompts() {
                super::check_prompts(
                    true,
                    &job.prompts,
                    &job.base.model,
                    "a grounded detector without a default task (grounding.task)",
                    "text prompts",
                )?;
            }
            if job.text_threshold.is_some() {
                return Err(PipelineError::Model(
                    crate::models::ModelError::Unsupported(format!(
                        "{}: text_threshold applies to Grounding DINO packages, not to \
                         generative ones",
                        job.base.model.display()
                    )),
                ));
            }
            m.set_prompts(&job.prompts)?;
        }
    }
    Ok(model)
}

/// [`detect_merged`] with a loaded model.
fn detect_merged_with(
    job: &mut DetectJob,
    model: &mut DetectModel,
    before_sweep: &mut dyn FnMut(&crate::raster::Scene) -> Result<(), PipelineError>,
) -> Result<Detected, PipelineError> {
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
    before_sweep(&scene)?;
    let iou = f64::from(job.iou.unwrap_or(model.iou()));
    let norm = model.normalizer();
    let spec = RunSpec {
        tiles: grid.len(),
        progress: job.base.progress,
        what: "detecting",
        sink: "detection",
        finishing: None,
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
        texts: Vec::new(),
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
    let (stats, model_seconds, (mut dets, texts)) = (swept.stats, swept.model_seconds, swept.done);
    let (classes, class_phrases) = match &*model {
        DetectModel::Boxes(m) => (m.classes(), None),
        DetectModel::Grounded(_) => {
            let texts = order_texts(&mut dets, texts, &job.prompts);
            let (labels, phrases): (Vec<String>, Vec<String>) = texts.into_iter().unzip();
            (labels, Some(phrases))
        }
    };

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
    // Generative packages: a phrase per class; Grounding DINO: a phrase per box.
    let phrases = match (&*model, class_phrases) {
        (_, Some(p)) => Some(
            merged
                .iter()
                .map(|d| p.get(d.class).cloned().unwrap_or_default())
                .collect(),
        ),
        (DetectModel::Boxes(m), None) if m.has_phrases() => {
            let table = m.phrases();
            Some(
                merged
                    .iter()
                    .map(|d| {
                        d.phrase
                            .and_then(|k| table.get(k as usize))
                            .cloned()
                            .unwrap_or_default()
                    })
                    .collect(),
            )
        }
        _ => None,
    };
    let mut report_classes: Vec<String> = Vec::new();
    if let DetectModel::Grounded(m) = &*model {
        report_classes.extend(m.labels());
    }
    for c in &classes {
        if !report_classes.contains(c) {
            report_classes.push(c.clone());
        }
    }
    let (provider, fallback) = model.provider();
    Ok(Detected {
        merged,
        raw,
        classes,
        report_classes,
        stats,
        model_seconds,
        merge_seconds,
        tile_size: size,
        overlap: grid.options.overlap,
        target_gsd: grid.options.target_gsd,
        provider: (provider, fallback.map(str::to_string)),
        crs_wkt: scene.crs_wkt().map(str::to_string),
        phrases,
    })
}

/// Run the job.
///
/// # Errors
/// Bad scene, model or options; inference failure; unwritable outputs.
pub fn run_detect(job: DetectJob) -> Result<DetectReport, PipelineError> {
    let start = Instant::now();
    let mut model = LoadedDetector(load_for_job(&job)?);
    let mut outcome = detect_with(job, &mut model)?;
    outcome.report.seconds = start.elapsed().as_secs_f64();
    Ok(outcome.report)
}

/// What a detection pass found: its report and the merged detections, in the scene's CRS
/// (best first), for callers that use the boxes themselves (`tessera eval`).
#[derive(Debug)]
pub struct DetectOutcome {
    pub report: DetectReport,
    pub detections: Vec<MapDetection>,
}

/// A detector package loaded once for many runs ([`detect_with`]; `tessera eval` runs one
/// over every chip). Detector packages only: a generative package's classes are the phrases
/// of each run, which a fixed class list cannot hold.
pub struct LoadedDetector(DetectModel);

impl std::fmt::Debug for LoadedDetector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedDetector").finish_non_exhaustive()
    }
}

impl LoadedDetector {
    /// Load the detector package at `dir`.
    ///
    /// # Errors
    /// A bad package, or a generative one ([`ModelError::Unsupported`]).
    pub fn load(
        runtime: &Runtime,
        dir: &std::path::Path,
        options: &crate::runtime::SessionOptions,
    ) -> Result<LoadedDetector, crate::models::ModelError> {
        match DetectModel::load(runtime, dir, options)? {
            // The caller names the package in its message.
            DetectModel::Grounded(_) => Err(crate::models::ModelError::Unsupported(
                "a generative package; evaluation takes detector packages".into(),
            )),
            m => Ok(LoadedDetector(m)),
        }
    }

    /// Whether it takes text queries.
    pub fn is_prompted(&self) -> bool {
        match &self.0 {
            DetectModel::Boxes(m) => m.is_prompted(),
            DetectModel::Grounded(_) => true,
        }
    }

    /// Set the text queries of an open-vocabulary detector.
    ///
    /// # Errors
    /// As [`DetectorModel::set_queries`].
    pub fn set_queries(&mut self, queries: &[String]) -> Result<(), crate::models::ModelError> {
        match &mut self.0 {
            DetectModel::Boxes(m) => m.set_queries(queries),
            DetectModel::Grounded(m) => m.set_prompts(queries),
        }
    }

    /// The classes its boxes' `class` indexes.
    pub fn classes(&self) -> Vec<String> {
        match &self.0 {
            DetectModel::Boxes(m) => m.classes(),
            DetectModel::Grounded(m) => m.labels(),
        }
    }

    /// Its default confidence threshold.
    pub fn confidence(&self) -> f32 {
        self.0.confidence()
    }
}

/// Run the job with a loaded detector (one model over many scenes, e.g. the chips of an
/// evaluation); the report's `seconds` count from here, without loading the model.
///
/// # Errors
/// Bad scene or options; inference failure; unwritable outputs.
pub fn detect_with(
    mut job: DetectJob,
    model: &mut LoadedDetector,
) -> Result<DetectOutcome, PipelineError> {
    let start = Instant::now();
    let mut pending = None;
    let out = job.out.clone();
    let overwrite = job.overwrite;
    let d = detect_merged_with(&mut job, &mut model.0, &mut |_scene| {
        if let Some(dir) = &out {
            pending = Some(PendingOutput::dir(dir, overwrite)?);
        }
        Ok(())
    })?;
    let mut counts = count_classes(&d.classes, &d.merged);
    // Every listed class counts, with or without boxes.
    for c in &d.report_classes {
        counts.entry(c.clone()).or_default();
    }
    let mut outputs = Vec::new();
    let mut section = None;
    if let (Some(pending), Some(dir)) = (pending, &job.out) {
        let name = format!("detections.{}", job.base.format.extension());
        super::phase(job.base.progress, &format!("writing {name}"), || {
            write_detections(
                &job,
                d.crs_wkt.as_deref(),
                &pending.path().join(&name),
                &d.merged,
                &d.classes,
                d.phrases.as_deref(),
            )
        })?;
        outputs.push(dir.join(name).display().to_string());
        let s = report_section(&job, &d, &counts, start.elapsed().as_secs_f64());
        super::report::write_report(&job.base, &pending.path(), &s)?;
        if job.base.report {
            outputs.push(
                dir.join(crate::output::report::REPORT_FILE)
                    .display()
                    .to_string(),
            );
        }
        section = Some(s);
        pending.commit()?;
    }
    let mut run = super::SceneRunReport::new(
        &job.base,
        (d.provider.0, d.provider.1.as_deref()),
        &d.stats,
        outputs,
    );
    run.section = section;
    let report = DetectReport {
        run,
        classes: d.report_classes,
        tile_size: d.tile_size,
        overlap: d.overlap,
        target_gsd: d.target_gsd,
        tiles_read: d.stats.tiles_read,
        raw_detections: d.raw,
        detections: d.merged.len(),
        counts,
        seconds: start.elapsed().as_secs_f64(),
        model_seconds: d.model_seconds,
        merge_seconds: d.merge_seconds,
    };
    Ok(DetectOutcome {
        report,
        detections: d.merged,
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
