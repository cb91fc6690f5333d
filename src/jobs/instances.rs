//! `tessera segment --refiner SAM_PKG (--detector PKG | --boxes FILE)`: instance segmentation
//! of a whole scene.
//!
//! Two passes when boxes come from a detector, one with a box file:
//!
//! 1. **Boxes for the whole scene.** The detector runs over the scene at its own input size
//!    and tiling defaults and its boxes are merged across its tiles exactly as `tessera
//!    detect` merges them (NMS, boxes cut by a tile edge joined); or the boxes are read from
//!    a vector layer (reprojected to the scene's CRS). Each box is then one prospective
//!    instance, whatever tiles it crosses.
//! 2. **Refining per tile.** The refiner's tiles are read in row-major order; each tile is
//!    embedded once (only tiles that some box reaches), and every box reaching the tile's
//!    core is decoded on it as the part of the box inside the tile. The per-tile masks go to
//!    [`InstanceStitcher`], which keeps each pixel of the tile's core (overlaps are cut in
//!    their middle), joins the parts of a box into one instance and streams the id and
//!    class rows into their COGs as they are final. See `src/stitch/instances.rs`.
//!
//! Outputs (written under a temporary folder name and renamed when complete): `classes.tif`
//! (label index + 1 per pixel, 0 background, 255 nodata), `instances.tif` (uint32 instance
//! ids, 0 = none) and `instances.<ext>` (one multipolygon per instance: `id`, `label`,
//! `score`, `area_m2`, `pixels` and the source box: `box_score`, `box_source`, `box_xmin`,
//! `box_ymin`, `box_xmax`, `box_ymax` in the scene's CRS).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::driver::{drive, ModelStage, RunSpec, SceneSink};
use super::{stream_model_tiles, PipelineError, SegmentJob, TileBatch};
use crate::models::promptable::{Prompt, PromptableSegmenter};
use crate::output::{
    class_color, CogSpec, CogWriter, FieldKind, FieldSpec, FieldValue, GeometryKind, Legend,
    MosaicSpec, MosaicWriter, OverviewResampling, PendingOutput, VectorLayerWriter,
};
use crate::raster::{GeoTransform, Scene};
use crate::runtime::Runtime;
use crate::stitch::instances::{
    BoxPrompts, Instance, InstanceSink, InstanceStitcher, PromptBox, Stitched, TileInstance,
};
use crate::stitch::mask::RowSink;
use crate::tiling::{ReadOrder, Tile, TileData, TileGrid};

/// Where the boxes of an instance segmentation come from.
#[derive(Clone, Debug, PartialEq)]
pub enum BoxSource {
    /// A detector package run over the scene.
    Detector(PathBuf),
    /// A vector layer of boxes or polygons.
    File(PathBuf),
}

/// Instance segmentation's part of a [`SegmentJob`] (the refiner is the job's model).
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceSpec {
    pub source: BoxSource,
    /// The detector's box threshold (default: the detector's).
    pub confidence: Option<f32>,
}

/// What the instance part of a segmentation run did.
#[derive(Debug, Serialize)]
pub struct InstancesReport {
    /// The detector package or the box file.
    pub boxes_from: String,
    /// Boxes given to the refiner (after merging, for a detector).
    pub boxes: usize,
    /// A detector's boxes from all its tiles before merging.
    pub raw_detections: Option<usize>,
    pub instances: usize,
    /// Boxes whose masks came out empty: no instance.
    pub empty_boxes: usize,
    /// Mask decoder runs (one per box and tile whose core it reaches).
    pub masks_decoded: usize,
    /// Tiles embedded (tiles that no box reaches are not).
    pub tiles_embedded: usize,
    pub detector_seconds: f64,
    /// Seconds in the refiner (embedding and decoding).
    pub refiner_seconds: f64,
    /// Wall seconds of the whole run per instance found.
    pub seconds_per_instance: Option<f64>,
    /// Whether `area_m2` is geodesic (the scene has a CRS) or planar in pixel units.
    pub area: &'static str,
}

const FIELDS: [FieldSpec; 11] = [
    FieldSpec {
        name: "id",
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
        name: "area_m2",
        kind: FieldKind::Real,
    },
    FieldSpec {
        name: "pixels",
        kind: FieldKind::Integer,
    },
    FieldSpec {
        name: "box_score",
        kind: FieldKind::Real,
    },
    FieldSpec {
        name: "box_source",
        kind: FieldKind::String,
    },
    FieldSpec {
        name: "box_xmin",
        kind: FieldKind::Real,
    },
    FieldSpec {
        name: "box_ymin",
        kind: FieldKind::Real,
    },
    FieldSpec {
        name: "box_xmax",
        kind: FieldKind::Real,
    },
    FieldSpec {
        name: "box_ymax",
        kind: FieldKind::Real,
    },
];

/// The most labels a class raster holds (values 1..=254; 0 background, 255 nodata).
const MAX_LABELS: usize = 254;

fn boxes_err(path: &Path, reason: impl Into<String>) -> PipelineError {
    PipelineError::Boxes {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Map coordinates -> working-grid pixel box (the bounding box of the points' pixels).
fn pixel_box(inv: &GeoTransform, points: &[(f64, f64)]) -> [f64; 4] {
    let mut b = [
        f64::INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NEG_INFINITY,
    ];
    for &(x, y) in points {
        let (c, r) = inv.apply(x, y);
        b = [b[0].min(c), b[1].min(r), b[2].max(c), b[3].max(r)];
    }
    b
}

/// The boxes of a vector layer, in `grid`'s working pixels: each feature's bounding box in
/// the scene's pixel grid, after reprojection from the layer's CRS to the scene's. Labels
/// from a `label` field (else `default_label`), scores from a `score` field (else 1).
/// Returns the boxes and the labels in order of first appearance.
///
/// # Errors
/// An unreadable file, a layer without features or geometries, a CRS that cannot be
/// transformed to the scene's, or a box that lies wholly outside the scene.
pub(crate) fn read_box_file(
    path: &Path,
    scene: &Scene,
    grid: &TileGrid,
    default_label: &str,
) -> Result<(Vec<PromptBox>, Vec<String>), PipelineError> {
    use gdal::spatial_ref::{AxisMappingStrategy, CoordTransform, SpatialRef};
    use gdal::vector::LayerAccess;
    crate::raster::init_gdal();
    let gerr = |e: gdal::errors::GdalError| boxes_err(path, crate::raster::gdal_reason(&e));
    if !path.exists() {
        return Err(boxes_err(path, "no such file"));
    }
    let ds = gdal::Dataset::open_ex(
        path,
        gdal::DatasetOptions {
            open_flags: gdal::GdalOpenFlags::GDAL_OF_VECTOR,
            ..Default::default()
        },
    )
    .map_err(|_| {
        if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("parquet")) {
            boxes_err(
                path,
                "GeoParquet cannot be read back here (GDAL has no Parquet driver); write the boxes with --format gpkg",
            )
        } else {
            boxes_err(path, "not a vector layer GDAL can read")
        }
    })?;
    let mut layer = ds
        .layer(0)
        .map_err(|_| boxes_err(path, "holds no vector layer"))?;
    let scene_srs = match scene.crs_wkt() {
        Some(wkt) => {
            let mut s = SpatialRef::from_wkt(wkt).map_err(gerr)?;
            s.set_axis_mapping_strategy(AxisMappingStrategy::TraditionalGisOrder);
            Some(s)
        }
        None => None,
    };
    let transform = match (layer.spatial_ref(), &scene_srs) {
        (Some(mut from), Some(to)) if from != *to => {
            from.set_axis_mapping_strategy(AxisMappingStrategy::TraditionalGisOrder);
            let name = from.name().unwrap_or_else(|| "its CRS".into());
            Some(CoordTransform::new(&from, to).map_err(|e| {
                boxes_err(
                    path,
                    format!(
                        "its CRS ({name}) cannot be transformed to the scene's: {}",
                        crate::raster::gdal_reason(&e)
                    ),
                )
            })?)
        }
        (Some(_), None) => {
            return Err(boxes_err(
                path,
                format!(
                    "has a CRS but the scene {} has none: the boxes cannot be placed",
                    scene.path()
                ),
            ))
        }
        _ => None,
    };
    let inv = grid
        .geotransform
        .invert()
        .ok_or_else(|| boxes_err(path, "the scene's geotransform cannot be inverted"))?;
    let defn_fields: Vec<String> = layer.defn().fields().map(|f| f.name()).collect();
    let field = |name: &str| {
        defn_fields
            .iter()
            .position(|f| f.eq_ignore_ascii_case(name))
    };
    let (label_field, score_field) = (field("label"), field("score"));
    let (w, h) = (grid.working_width, grid.working_height);
    let mut boxes = Vec::new();
    let mut labels: Vec<String> = Vec::new();
    let (mut outside, mut first_outside) = (0usize, None);
    for (k, f) in layer.features().enumerate() {
        let fid = f.fid().map_or_else(|| k.to_string(), |v| v.to_string());
        let Some(g) = f.geometry() else {
            return Err(boxes_err(path, format!("feature {fid} has no geometry")));
        };
        let g = match &transform {
            Some(t) => g.transform(t).map_err(|e| {
                boxes_err(
                    path,
                    format!(
                        "feature {fid} cannot be reprojected to the scene's CRS: {}",
                        crate::raster::gdal_reason(&e)
                    ),
                )
            })?,
            None => g.clone(),
        };
        let e = g.envelope();
        if !(e.MinX.is_finite() && e.MaxX.is_finite() && e.MinY.is_finite() && e.MaxY.is_finite())
            || g.is_empty()
        {
            return Err(boxes_err(
                path,
                format!("feature {fid} has an empty geometry"),
            ));
        }
        let [x0, y0, x1, y1] = pixel_box(
            &inv,
            &[
                (e.MinX, e.MinY),
                (e.MaxX, e.MinY),
                (e.MaxX, e.MaxY),
                (e.MinX, e.MaxY),
            ],
        );
        let label = match label_field {
            Some(i) => f.field_as_string(i).map_err(gerr)?.unwrap_or_default(),
            None => String::new(),
        };
        let label = if label.trim().is_empty() {
            default_label.to_string()
        } else {
            label.trim().to_string()
        };
        let class = match labels.iter().position(|l| *l == label) {
            Some(c) => c,
            None => {
                labels.push(label);
                labels.len() - 1
            }
        };
        let score = match score_field {
            Some(i) => f.field_as_double(i).map_err(gerr)?.unwrap_or(1.0) as f32,
            None => 1.0,
        };
        let b = PromptBox {
            x0,
            y0,
            x1,
            y1,
            class,
            score,
            source: format!("feature {fid}"),
        };
        if b.pixels(w, h).is_none() {
            outside += 1;
            first_outside.get_or_insert(fid);
        }
        boxes.push(b);
    }
    if boxes.is_empty() {
        return Err(boxes_err(path, "holds no boxes"));
    }
    if let Some(fid) = first_outside {
        return Err(boxes_err(
            path,
            format!(
                "feature {fid} lies outside the scene {} ({outside} of {} boxes do; are they in the scene's CRS, or does the layer say its CRS?)",
                scene.path(),
                boxes.len()
            ),
        ));
    }
    if labels.len() > MAX_LABELS {
        return Err(boxes_err(
            path,
            format!(
                "{} labels, more than a class raster holds ({MAX_LABELS})",
                labels.len()
            ),
        ));
    }
    Ok((boxes, labels))
}

/// The model thread's part: embed each tile some box reaches, decode its boxes.
struct Refining<'m> {
    model: &'m mut PromptableSegmenter,
    prompts: Arc<BoxPrompts>,
    batch_size: usize,
    tile_size: usize,
    decoded: usize,
    embedded: usize,
}

type RefineBatch = TileBatch<(Tile, Vec<u8>)>;
type RefineOutput = Vec<(Tile, Vec<u8>, Vec<TileInstance>)>;

impl ModelStage<f32> for Refining<'_> {
    type Batch = RefineBatch;
    type Output = RefineOutput;

    fn new_batch(&self) -> Result<RefineBatch, PipelineError> {
        Ok(TileBatch::new(self.batch_size, self.tile_size))
    }

    fn push(batch: &mut RefineBatch, t: TileData<f32>) -> bool {
        let valid = t.valid.to_vec();
        batch.push(&t.pixels, (t.tile, valid))
    }

    fn run(&mut self, batch: &mut RefineBatch) -> Result<RefineOutput, PipelineError> {
        let (pixels, items) = batch.take();
        let prompts: Vec<_> = items.iter().map(|(t, _)| self.prompts.prompts(t)).collect();
        let busy: Vec<usize> = (0..items.len())
            .filter(|&k| !prompts[k].is_empty())
            .collect();
        let embeddings = if busy.is_empty() {
            Vec::new()
        } else if busy.len() == items.len() {
            self.model.embed(pixels)?
        } else {
            let some = pixels.select(ndarray::Axis(0), &busy);
            self.model.embed(some.view())?
        };
        self.embedded += embeddings.len();
        let mut out = Vec::with_capacity(items.len());
        let mut next = embeddings.iter();
        for ((tile, valid), tile_prompts) in items.into_iter().zip(prompts) {
            if tile_prompts.is_empty() {
                out.push((tile, valid, Vec::new()));
                continue;
            }
            let emb = next
                .next()
                .ok_or_else(|| PipelineError::Internal("a tile lost its embedding".into()))?;
            let asks: Vec<Prompt> = tile_prompts
                .iter()
                .map(|p| Prompt::from_box(p.tile_box))
                .collect();
            let masks = self.model.masks(emb, &asks)?;
            self.decoded += masks.len();
            let mut found = Vec::with_capacity(masks.len());
            for (p, m) in tile_prompts.iter().zip(masks) {
                let mask = m.mask.as_standard_layout();
                let flags = mask
                    .as_slice()
                    .ok_or_else(|| PipelineError::Internal("non-contiguous mask".into()))?;
                found.push(TileInstance::from_tile_mask(
                    p.index,
                    p.region,
                    &tile,
                    flags,
                    |v| v,
                    m.score,
                ));
            }
            out.push((tile, valid, found));
        }
        Ok(out)
    }
}

/// The rasters the finished rows go into.
struct Rasters {
    classes: MosaicWriter,
    ids: CogWriter<u32>,
}

impl InstanceSink for Rasters {
    type Error = crate::output::OutputError;
    fn write_rows(
        &mut self,
        y0: usize,
        rows: usize,
        ids: &[u32],
        classes: &[u8],
    ) -> Result<(), Self::Error> {
        self.classes.write_rows(y0, rows, classes, &[])?;
        self.ids.write_rows(ids)
    }
}

/// The stitching thread's part.
struct Stitching {
    stitcher: InstanceStitcher,
    rasters: Rasters,
}

impl SceneSink for Stitching {
    type Input = RefineOutput;
    type Done = Stitched;

    fn consume(&mut self, tiles: RefineOutput) -> Result<(), PipelineError> {
        for (tile, valid, found) in tiles {
            self.stitcher
                .add(&tile, Some((&found, &valid)), &mut self.rasters)?;
        }
        Ok(())
    }

    fn skipped(&mut self, tile: Tile) -> Result<(), PipelineError> {
        Ok(self.stitcher.add(&tile, None, &mut self.rasters)?)
    }

    fn finish(mut self) -> Result<Stitched, PipelineError> {
        let done = self.stitcher.finish(&mut self.rasters)?;
        self.rasters.classes.finish()?;
        self.rasters.ids.finish()?;
        Ok(done)
    }
}

/// Areas of instance polygons in m^2, as every polygon layer's `area_m2`
/// ([`crate::output::LayerArea`]): geodesic on the scene CRS's ellipsoid, or planar when the
/// scene has no CRS.
struct Areas(crate::output::LayerArea);

impl Areas {
    fn new(crs_wkt: Option<&str>, path: &Path) -> Result<Areas, PipelineError> {
        crate::output::LayerArea::for_layer(crs_wkt)
            .map(Areas)
            .map_err(|reason| {
                PipelineError::Output(crate::output::OutputError::Write {
                    path: path.display().to_string(),
                    reason: format!("geodesic areas: {reason}"),
                })
            })
    }

    fn kind(&self) -> &'static str {
        match self.0 {
            crate::output::LayerArea::Geodesic(_) => "geodesic",
            crate::output::LayerArea::Planar => "planar (no CRS: pixel units)",
        }
    }

    /// NaN for a polygon with a vertex outside the CRS's domain.
    fn area(&self, polys: &geo::MultiPolygon<f64>) -> f64 {
        self.0.multi_polygon(polys).unwrap_or(f64::NAN)
    }
}

/// The instances layer `path`.
fn write_instances(
    path: &Path,
    format: &'static dyn crate::output::VectorFormat,
    crs_wkt: Option<&str>,
    grid: &TileGrid,
    (boxes, labels): (&[PromptBox], &[String]),
    instances: &[Instance],
    areas: &Areas,
) -> Result<(), PipelineError> {
    let mut layer = VectorLayerWriter::create(
        path,
        format,
        "instances",
        GeometryKind::MultiPolygon,
        crs_wkt,
        &FIELDS,
        false,
    )?;
    for inst in instances {
        let b = &boxes[inst.index];
        let corners = [
            grid.geotransform.apply(b.x0, b.y0),
            grid.geotransform.apply(b.x1, b.y0),
            grid.geotransform.apply(b.x1, b.y1),
            grid.geotransform.apply(b.x0, b.y1),
        ];
        let (mut lo, mut hi) = (
            (f64::INFINITY, f64::INFINITY),
            (f64::NEG_INFINITY, f64::NEG_INFINITY),
        );
        for (x, y) in corners {
            lo = (lo.0.min(x), lo.1.min(y));
            hi = (hi.0.max(x), hi.1.max(y));
        }
        let geometry = geo::MultiPolygon(inst.polygons.clone());
        let area = areas.area(&geometry);
        layer.add_multipolygon(
            &geometry,
            &[
                FieldValue::Integer(i64::from(inst.id)),
                FieldValue::String(labels.get(inst.class).cloned().unwrap_or_default()),
                FieldValue::Real(f64::from(inst.score)),
                FieldValue::Real(area),
                FieldValue::Integer(inst.pixels as i64),
                FieldValue::Real(f64::from(b.score)),
                FieldValue::String(b.source.clone()),
                FieldValue::Real(lo.0),
                FieldValue::Real(lo.1),
                FieldValue::Real(hi.0),
                FieldValue::Real(hi.1),
            ],
        )?;
    }
    layer.finish()?;
    Ok(())
}

fn spec_source(spec: &InstanceSpec) -> String {
    match &spec.source {
        BoxSource::Detector(p) => format!("detector {}", p.display()),
        BoxSource::File(p) => format!("box file {}", p.display()),
    }
}

/// The report section of instance segmentation: the class raster (background not drawn),
/// every instance outlined with its label and score, class areas as shares of the scene.
fn report_section(
    job: &super::SegmentJob,
    provider: &str,
    (scene, grid): (&crate::raster::Scene, &TileGrid),
    (legend, labels): (&Legend, &[String]),
    instances: &[Instance],
    areas: &Areas,
    raster: &std::path::Path,
) -> crate::output::report::Section {
    use crate::output::report::{Feature, Features};
    let mut s = super::report::section("segment", &job.base, provider);
    let mut features = Features {
        kind: "instances".into(),
        labelled: true,
        ..Features::default()
    };
    let mut class_areas = Vec::with_capacity(instances.len());
    for inst in instances {
        let geometry = geo::MultiPolygon(inst.polygons.clone());
        // Legend class 0 is the background: instance class k is legend class k + 1.
        let legend_class = u8::try_from(inst.class + 1).unwrap_or(u8::MAX);
        class_areas.push((legend_class, areas.area(&geometry)));
        let rings = inst
            .polygons
            .iter()
            .flat_map(|p| std::iter::once(p.exterior()).chain(p.interiors()))
            .map(|r| r.coords().map(|c| (c.x, c.y)).collect())
            .collect();
        features.push(Feature {
            rings,
            label: labels.get(inst.class).cloned().unwrap_or_default(),
            score: Some(inst.score),
            color: class_color(inst.class),
        });
    }
    let scene_area = super::report::grid_area(
        scene.crs_wkt(),
        &grid.geotransform,
        (grid.working_width, grid.working_height),
    );
    s.areas = Some(super::report::class_areas(
        legend,
        &class_areas,
        &[0],
        (scene_area, "the scene"),
        scene.crs_wkt().is_some(),
    ));
    s.features = Some(features);
    s.class_map = Some(crate::output::report::ClassMap {
        raster: raster.to_path_buf(),
        legend: legend.clone(),
        hidden: vec![0],
    });
    s.fact(
        "tiles",
        format!(
            "{} of {} px, overlap {}",
            grid.len(),
            grid.options.tile_size,
            grid.options.overlap
        ),
    );
    s.fact("instances", instances.len());
    s
}

/// The scene's boxes, in a grid's working pixels.
struct SceneBoxes {
    boxes: Vec<PromptBox>,
    labels: Vec<String>,
    /// A detector's boxes before merging.
    raw: Option<usize>,
    detector_seconds: f64,
}

/// The scene's boxes from the job's source, in `grid`'s working pixels, with their labels.
fn scene_boxes(
    job: &SegmentJob,
    spec: &InstanceSpec,
    detector_base: crate::options::SceneJobBase,
    scene: &Scene,
    grid: &TileGrid,
) -> Result<SceneBoxes, PipelineError> {
    match &spec.source {
        BoxSource::File(path) => {
            let default =
                match job.prompts.as_slice() {
                    [] => "object".to_string(),
                    [one] => one.clone(),
                    _ => return Err(crate::options::InvalidOption::new(
                        "prompts",
                        "takes one label with `boxes` (the label of boxes without a `label` field)",
                    )
                    .into()),
                };
            let (boxes, labels) = read_box_file(path, scene, grid, &default)?;
            Ok(SceneBoxes {
                boxes,
                labels,
                raw: None,
                detector_seconds: 0.0,
            })
        }
        BoxSource::Detector(path) => {
            let t = Instant::now();
            let mut dj = super::DetectJob {
                base: crate::options::SceneJobBase {
                    model: path.clone(),
                    ..detector_base
                },
                confidence: spec.confidence,
                prompts: job.prompts.clone(),
                text_threshold: None,
                iou: None,
                method: crate::stitch::boxes::MergeMethod::Nms,
                cut_ios: 0.6,
                class_aware: true,
                out: None,
                overwrite: false,
                feed: None,
            };
            let d = super::detect::detect_merged(&mut dj, &mut |_| Ok(()))?;
            if d.classes.len() > MAX_LABELS {
                return Err(PipelineError::Unsupported(format!(
                    "{}: {} classes, more than a class raster holds ({MAX_LABELS})",
                    path.display(),
                    d.classes.len()
                )));
            }
            let inv = grid.geotransform.invert().ok_or_else(|| {
                PipelineError::Internal("the working grid's geotransform is degenerate".into())
            })?;
            let boxes = d
                .merged
                .iter()
                .map(|m| {
                    let [x0, y0, x1, y1] = pixel_box(&inv, &m.corners);
                    PromptBox {
                        x0,
                        y0,
                        x1,
                        y1,
                        class: m.class,
                        score: m.score,
                        source: m.tile.clone(),
                    }
                })
                .collect();
            Ok(SceneBoxes {
                boxes,
                labels: d.classes,
                raw: Some(d.raw),
                detector_seconds: t.elapsed().as_secs_f64(),
            })
        }
    }
}

/// Run an instance segmentation (a [`SegmentJob`] with [`SegmentJob::instances`]).
///
/// # Errors
/// A refiner that is not a promptable segmenter, a bad detector, box file, scene or option;
/// inference failure; unwritable outputs (nothing partial is left).
pub(crate) fn run_instances(
    mut job: SegmentJob,
    spec: InstanceSpec,
) -> Result<super::SegmentReport, PipelineError> {
    let start = Instant::now();
    let mut model = super::phase(job.base.progress, "loading model", || {
        let runtime = Runtime::load(job.base.ort_lib.as_deref())?;
        PromptableSegmenter::load(runtime, &job.base.model, &job.base.session)
    })?;
    let load_seconds = start.elapsed().as_secs_f64();
    // The detector reads the scene its own way (its size, its tiling defaults).
    let detector_base = crate::options::SceneJobBase {
        grid: crate::tiling::GridRequest {
            tile_size: None,
            overlap: None,
            ..job.base.grid.clone()
        },
        // The refiner's report shows the boxes; the detector writes none of its own.
        report: false,
        ..job.base.clone()
    };
    let tiles = super::ModelTiles {
        size: model.input_size(),
        any_size: true,
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
    let size = grid.tile_size();
    crate::options::check_batch_bytes(job.base.batch_size, size)?;
    job.base.read.order = ReadOrder::RowMajor;
    job.base.read.deliver_skipped = true;
    let pending = PendingOutput::dir(&job.out, job.overwrite)?;
    let dir = pending.path();
    let SceneBoxes {
        boxes,
        labels,
        raw,
        detector_seconds,
    } = scene_boxes(&job, &spec, detector_base, &scene, &grid)?;
    let n_boxes = boxes.len();
    let prompts = Arc::new(BoxPrompts::new(&grid, boxes));
    let shared = prompts.clone();

    let mut names = vec!["background".to_string()];
    names.extend(labels.iter().cloned());
    let legend = Legend {
        colors: (0..names.len())
            .map(|i| {
                if i == 0 {
                    [0, 0, 0]
                } else {
                    class_color(i - 1)
                }
            })
            .collect(),
        names,
    };
    let classes = MosaicWriter::create(
        &dir.join("classes.tif"),
        &dir.join("probabilities.tif"),
        &MosaicSpec {
            source: scene.path(),
            width: grid.working_width,
            height: grid.working_height,
            geotransform: &grid.geotransform,
            crs_wkt: scene.crs_wkt(),
            legend: &legend,
            prob_bands: &[],
            polygons_skip: None,
            options: job.base.cog,
        },
    )?;
    let ids = CogWriter::<u32>::create(
        &dir.join("instances.tif"),
        &CogSpec {
            width: grid.working_width,
            height: grid.working_height,
            bands: 1,
            geotransform: &grid.geotransform,
            crs_wkt: scene.crs_wkt(),
            nodata: Some(0.0),
            descriptions: &["instance".to_string()],
            legend: None,
            metadata: &[("TESSERA_LABELS".to_string(), labels.join(","))],
            resampling: OverviewResampling::Nearest,
            options: job.base.cog,
        },
    )?;
    let sink = Stitching {
        stitcher: InstanceStitcher::new(&grid, prompts.clone()),
        rasters: Rasters { classes, ids },
    };
    let norm = model.normalizer();
    let feed = job.feed.take();
    let run = RunSpec {
        tiles: grid.len(),
        progress: job.base.progress,
        what: "refining",
        sink: "stitching",
        finishing: Some("assembling COGs"),
    };
    let stage = Refining {
        batch_size: job.base.batch_size.max(1),
        model: &mut model,
        prompts,
        tile_size: size,
        decoded: 0,
        embedded: 0,
    };
    let sweep_start = Instant::now();
    let swept = drive(&run, stage, sink, |consume| {
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
    let sweep_seconds = sweep_start.elapsed().as_secs_f64();
    let (stats, refiner_seconds) = (swept.stats, swept.model_seconds);
    let (decoded, embedded) = (swept.model.decoded, swept.model.embedded);
    let done = swept.done;
    let t = Instant::now();
    let ext = job.base.format.extension();
    let areas = Areas::new(scene.crs_wkt(), &dir.join(format!("instances.{ext}")))?;
    super::phase(
        job.base.progress,
        &format!("writing instances.{ext}"),
        || {
            write_instances(
                &dir.join(format!("instances.{ext}")),
                job.base.format,
                scene.crs_wkt(),
                &grid,
                (shared.boxes(), &labels),
                &done.instances,
                &areas,
            )
        },
    )?;
    let vector_seconds = t.elapsed().as_secs_f64();
    let (provider, fallback) = model.provider();
    let mut section = report_section(
        &job,
        provider,
        (&scene, &grid),
        (&legend, &labels),
        &done.instances,
        &areas,
        &dir.join("classes.tif"),
    );
    section.fact("boxes from", spec_source(&spec));
    section.fact("boxes", n_boxes);
    section.timing("detector", detector_seconds);
    section.timing("refiner sweep: read, embed, decode, stitch", sweep_seconds);
    section.timing("of which the refiner", refiner_seconds);
    section.timing("instance layer", vector_seconds);
    super::report::write_report(&job.base, &dir, &section)?;
    let outputs = super::output_names(&dir, &job.out)?;
    pending.commit()?;
    super::report::rebase_section(&mut section, &dir, &job.out);
    let seconds = start.elapsed().as_secs_f64();
    let n = done.instances.len();
    let boxes_from = match &spec.source {
        BoxSource::Detector(p) | BoxSource::File(p) => p.display().to_string(),
    };
    let mut run = super::SceneRunReport::new(&job.base, (provider, fallback), &stats, outputs);
    run.section = Some(section);
    Ok(super::SegmentReport {
        run,
        classes: legend.names.clone(),
        tile_size: size,
        overlap: grid.options.overlap,
        target_gsd: grid.options.target_gsd,
        tiles_read: stats.tiles_read,
        polygons: n,
        mosaic_size: (grid.working_width, grid.working_height),
        peak_rows: done.peak_rows,
        seconds,
        model_seconds: refiner_seconds,
        load_seconds,
        phase_seconds: super::segment::PhaseSeconds {
            sweep: sweep_seconds,
            cog: 0.0,
            polygonize: 0.0,
            vector: vector_seconds,
        },
        instances: Some(InstancesReport {
            boxes_from,
            boxes: n_boxes,
            raw_detections: raw,
            instances: n,
            empty_boxes: done.empty_boxes,
            masks_decoded: decoded,
            tiles_embedded: embedded,
            detector_seconds,
            refiner_seconds,
            seconds_per_instance: (n > 0).then(|| seconds / n as f64),
            area: areas.kind(),
        }),
    })
}
