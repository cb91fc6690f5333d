//! `tessera tiles`: lay a grid over a scene, compute each tile's valid fraction, and write the
//! grid as a vector layer and (optionally) every tile as a GeoTIFF chip.

use std::path::PathBuf;

use serde::Serialize;

use super::{Phase, PipelineError, Progress};
use crate::output::{
    ChipWriter, FieldKind, FieldSpec, FieldValue, GeometryKind, VectorFormat, VectorLayerWriter,
};
use crate::raster::{OpenOptions, Sample, Scene};
use crate::tiling::{stream_tiles, GridOptions, ReadOptions, StreamStats, TileData, TileGrid};

/// What `tessera tiles` does.
#[derive(Debug)]
pub struct TilesJob {
    pub scene: String,
    pub open: OpenOptions,
    pub grid: GridOptions,
    /// `bands` empty means every data band (alpha bands excluded).
    pub read: ReadOptions,
    /// Vector layer of the grid.
    pub out: Option<(PathBuf, &'static dyn VectorFormat)>,
    /// Directory of GeoTIFF chips.
    pub chips: Option<PathBuf>,
    pub overwrite: bool,
    pub progress: Progress,
}

/// What `tessera tiles` did.
#[derive(Debug, Serialize)]
pub struct TilesReport {
    pub scene: String,
    pub tile_size: usize,
    pub overlap: usize,
    pub scale: (f64, f64),
    pub working_size: (usize, usize),
    pub cols: usize,
    pub rows: usize,
    #[serde(flatten)]
    pub stats: StreamStats,
    pub padded: usize,
    pub outputs: Vec<String>,
}

/// The fields of the tile layer.
pub const TILE_FIELDS: [FieldSpec; 11] = [
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
        name: "x",
        kind: FieldKind::Integer,
    },
    FieldSpec {
        name: "y",
        kind: FieldKind::Integer,
    },
    FieldSpec {
        name: "src_x",
        kind: FieldKind::Real,
    },
    FieldSpec {
        name: "src_y",
        kind: FieldKind::Real,
    },
    FieldSpec {
        name: "src_w",
        kind: FieldKind::Real,
    },
    FieldSpec {
        name: "src_h",
        kind: FieldKind::Real,
    },
    FieldSpec {
        name: "valid_frac",
        kind: FieldKind::Real,
    },
    FieldSpec {
        name: "padded",
        kind: FieldKind::Integer,
    },
];

/// Run the job.
///
/// # Errors
/// Bad scene or options, a read failure, or an output that cannot be written. Nothing is left
/// under an output name unless the whole job succeeded.
pub fn run_tiles(mut job: TilesJob) -> Result<TilesReport, PipelineError> {
    let scene = Scene::open(&job.scene, &job.open)?;
    super::log_scene(&scene);
    if job.read.bands.is_empty() {
        job.read.bands = crate::raster::BandMapping::all_data_bands(scene.info());
    }
    job.read.bands.validate(scene.info())?;
    let grid = TileGrid::new(scene.info(), job.grid.clone())?;
    job.read.read_pixels = job.chips.is_some();
    if job.chips.is_some() {
        // Padding holds the source's nodata value when it has one.
        if let Some(nd) = scene.info().bands[job.read.bands.bands()[0] - 1].nodata {
            job.read.fill = nd;
        }
    }
    let mut layer = match &job.out {
        Some((path, format)) => Some(VectorLayerWriter::create(
            path,
            *format,
            "tiles",
            GeometryKind::Polygon,
            scene.crs_wkt(),
            &TILE_FIELDS,
            job.overwrite,
        )?),
        None => None,
    };
    let nodata = scene.info().bands[job.read.bands.bands()[0] - 1].nodata;
    let mut chips = match &job.chips {
        Some(dir) => Some(ChipWriter::create(
            dir,
            scene.crs_wkt(),
            nodata,
            job.overwrite,
        )?),
        None => None,
    };
    let dtype = scene.info().bands[job.read.bands.bands()[0] - 1]
        .dtype
        .clone();
    let bar = Phase::bar(job.progress, "reading", grid.len(), "tiles");
    let mut padded = 0usize;
    let bands = job.read.bands.len();

    let mut on_tile = |t: TileData<f64>| -> Result<(), PipelineError> {
        bar.inc(1);
        if t.tile.padded() {
            padded += 1;
        }
        if let Some(layer) = layer.as_mut() {
            let w = grid.source_window(&t.tile);
            let ring = t
                .tile
                .geotransform
                .footprint(t.tile.size as f64, t.tile.size as f64);
            layer.add_polygon(
                &ring,
                &[
                    FieldValue::String(t.tile.id.clone()),
                    FieldValue::Integer(t.tile.row as i64),
                    FieldValue::Integer(t.tile.col as i64),
                    FieldValue::Integer(t.tile.x as i64),
                    FieldValue::Integer(t.tile.y as i64),
                    FieldValue::Real(w.x),
                    FieldValue::Real(w.y),
                    FieldValue::Real(w.w),
                    FieldValue::Real(w.h),
                    FieldValue::Real(t.valid_fraction),
                    FieldValue::Integer(i64::from(t.tile.padded())),
                ],
            )?;
        }
        if let Some(chips) = chips.as_mut() {
            write_chip(chips, &dtype, &t, bands)?;
        }
        Ok(())
    };
    let stats =
        stream_tiles::<f64, PipelineError, _, _>(&scene, &grid, &job.read, |_| {}, &mut on_tile)?;
    bar.finish();
    tracing::info!(
        total = stats.tiles_total,
        read = stats.tiles_read,
        skipped = stats.tiles_skipped,
        "tiles read"
    );

    let mut outputs = Vec::new();
    if let Some(layer) = layer {
        outputs.push(
            job.out
                .as_ref()
                .map(|o| o.0.display().to_string())
                .unwrap_or_default(),
        );
        layer.finish()?;
    }
    if let Some(chips) = chips {
        outputs.push(
            job.chips
                .as_ref()
                .map(|c| c.display().to_string())
                .unwrap_or_default(),
        );
        chips.finish()?;
    }
    super::log_outputs(&outputs);
    Ok(TilesReport {
        scene: job.scene,
        tile_size: grid.options.tile_size,
        overlap: grid.options.overlap,
        scale: grid.scale,
        working_size: (grid.working_width, grid.working_height),
        cols: grid.cols(),
        rows: grid.rows(),
        stats,
        padded,
        outputs,
    })
}

/// Write a chip in the source data type (tiles are read as f64, which holds every supported
/// type's values exactly except 64-bit integers beyond 2^53).
fn write_chip(
    chips: &mut ChipWriter,
    dtype: &str,
    t: &TileData<f64>,
    bands: usize,
) -> Result<(), PipelineError> {
    fn convert<T: Sample>(v: &[f64]) -> Vec<T> {
        v.iter().map(|&x| T::from_f64(x)).collect()
    }
    let (id, valid, size, gt) = (&t.tile.id, &t.valid, t.tile.size, &t.tile.geotransform);
    let p = &t.pixels;
    match dtype {
        "uint8" => chips.write(id, &convert::<u8>(p), valid, bands, size, gt)?,
        "uint16" => chips.write(id, &convert::<u16>(p), valid, bands, size, gt)?,
        "int16" => chips.write(id, &convert::<i16>(p), valid, bands, size, gt)?,
        "uint32" => chips.write(id, &convert::<u32>(p), valid, bands, size, gt)?,
        "int32" => chips.write(id, &convert::<i32>(p), valid, bands, size, gt)?,
        "float32" => chips.write(id, &convert::<f32>(p), valid, bands, size, gt)?,
        _ => chips.write(id, p, valid, bands, size, gt)?,
    }
    Ok(())
}
