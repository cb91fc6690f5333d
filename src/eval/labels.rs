//! Label layers over a scene: polygons with a class field (GPKG, Shapefile, GeoJSON, any OGR
//! format), put into the scene's CRS; each tile's class (the class whose polygons cover most
//! of it), or the polygons burnt into a raster grid (segmentation).

use std::path::Path;

use gdal::spatial_ref::{AxisMappingStrategy, SpatialRef};
use gdal::vector::{Geometry, LayerAccess};
use gdal::Dataset;

use super::EvalError;
use crate::raster::gdal_reason;

/// The polygons of a label layer and the class value of each.
pub struct LabelLayer {
    pub path: std::path::PathBuf,
    pub geometries: Vec<Geometry>,
    /// The class field's value of each polygon, as text.
    pub values: Vec<String>,
    /// Distinct values, sorted.
    pub classes: Vec<String>,
}

/// `srs` with x = easting/longitude, as tessera's geotransforms are.
fn traditional(mut srs: SpatialRef) -> SpatialRef {
    srs.set_axis_mapping_strategy(AxisMappingStrategy::TraditionalGisOrder);
    srs
}

/// Whether `path` opens as a vector layer (else it may be a label raster).
pub fn is_vector(path: &Path) -> bool {
    crate::raster::init_gdal();
    gdal::Dataset::open_ex(
        path,
        gdal::DatasetOptions {
            open_flags: gdal::GdalOpenFlags::GDAL_OF_VECTOR,
            ..Default::default()
        },
    )
    .is_ok_and(|ds| ds.layer_count() > 0)
}

/// Read the polygons of `path`'s first layer with their `field` values, in the CRS of
/// `scene_wkt` (when both have one).
///
/// # Errors
/// A file that is not a vector layer, a field it lacks (the error lists those it has), a
/// feature without geometry or value, or no features.
pub fn read(path: &Path, field: &str, scene_wkt: Option<&str>) -> Result<LabelLayer, EvalError> {
    crate::raster::init_gdal();
    if !path.exists() {
        return Err(EvalError::data(path, "no such label file"));
    }
    let ds = Dataset::open_ex(
        path,
        gdal::DatasetOptions {
            open_flags: gdal::GdalOpenFlags::GDAL_OF_VECTOR,
            ..Default::default()
        },
    )
    .map_err(|e| EvalError::data(path, format!("not a vector layer: {}", gdal_reason(&e))))?;
    let mut layer = ds
        .layer(0)
        .map_err(|e| EvalError::data(path, format!("no layer: {}", gdal_reason(&e))))?;
    let names: Vec<String> = layer.defn().fields().map(|f| f.name()).collect();
    let Some(idx) = names.iter().position(|n| n == field) else {
        return Err(EvalError::data(
            path,
            format!(
                "has no field '{field}' (--label-field; its fields: {})",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            ),
        ));
    };
    let target = match scene_wkt {
        Some(wkt) if !wkt.is_empty() => SpatialRef::from_wkt(wkt).ok().map(traditional),
        _ => None,
    };
    let source = layer.spatial_ref().map(traditional);
    let transform = match (&source, &target) {
        (Some(s), Some(t)) if s != t => Some(t),
        _ => None,
    };
    let mut geometries = Vec::new();
    let mut values = Vec::new();
    for (n, feature) in layer.features().enumerate() {
        let fid = feature.fid().unwrap_or(n as u64);
        let value = feature
            .field_as_string(idx)
            .ok()
            .flatten()
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty());
        let Some(value) = value else {
            return Err(EvalError::data(
                path,
                format!("feature {fid} has no '{field}' value"),
            ));
        };
        let Some(geom) = feature.geometry() else {
            continue;
        };
        let geom = match transform {
            Some(t) => geom.transform_to(t).map_err(|e| {
                EvalError::data(
                    path,
                    format!(
                        "feature {fid}: cannot reproject to the scene's CRS: {}",
                        gdal_reason(&e)
                    ),
                )
            })?,
            None => geom.clone(),
        };
        geometries.push(geom);
        values.push(value);
    }
    if geometries.is_empty() {
        return Err(EvalError::data(path, "has no labelled polygons"));
    }
    let mut classes = values.clone();
    classes.sort();
    classes.dedup();
    Ok(LabelLayer {
        path: path.to_path_buf(),
        geometries,
        values,
        classes,
    })
}

impl LabelLayer {
    /// The class (index into `classes`) whose polygons cover most of `tile` (ties: the first
    /// class), or `None` when no polygon covers any of it.
    pub fn class_of(&self, tile: &Geometry, classes: &[String]) -> Option<usize> {
        let env = tile.envelope();
        let mut area = vec![0.0_f64; classes.len()];
        for (g, v) in self.geometries.iter().zip(&self.values) {
            let e = g.envelope();
            if e.MaxX <= env.MinX || e.MinX >= env.MaxX || e.MaxY <= env.MinY || e.MinY >= env.MaxY
            {
                continue;
            }
            let Some(c) = classes.iter().position(|n| n == v) else {
                continue;
            };
            if let Some(inter) = g.intersection(tile) {
                area[c] += inter.area();
            }
        }
        let (best, a) =
            area.iter().enumerate().fold(
                (0, 0.0),
                |(bi, ba), (i, &a)| if a > ba { (i, a) } else { (bi, ba) },
            );
        (a > 0.0).then_some(best)
    }

    /// Burn the polygons into a `width x height` grid with geotransform `gt` (pixel centres
    /// inside a polygon take its value `burn(value)`; 0 elsewhere). Later polygons win.
    ///
    /// # Errors
    /// GDAL cannot rasterize.
    pub fn rasterize(
        &self,
        gt: [f64; 6],
        width: usize,
        height: usize,
        burn: &dyn Fn(&str) -> Option<f64>,
    ) -> Result<Vec<i32>, EvalError> {
        let err = |e: gdal::errors::GdalError| EvalError::data(&self.path, gdal_reason(&e));
        let mem = gdal::DriverManager::get_driver_by_name("MEM").map_err(err)?;
        let mut ds = mem
            .create_with_band_type::<i32, _>("", width, height, 1)
            .map_err(err)?;
        ds.set_geo_transform(&gt).map_err(err)?;
        let mut geoms = Vec::new();
        let mut values = Vec::new();
        for (g, v) in self.geometries.iter().zip(&self.values) {
            if let Some(b) = burn(v) {
                geoms.push(g.clone());
                values.push(b);
            }
        }
        if !geoms.is_empty() {
            gdal::raster::rasterize(&mut ds, &[1], &geoms, &values, None).map_err(err)?;
        }
        let band = ds.rasterband(1).map_err(err)?;
        let buf = band
            .read_as::<i32>((0, 0), (width, height), (width, height), None)
            .map_err(err)?;
        Ok(buf.data().to_vec())
    }
}

/// A raster read whole: its bands (row-major), size, geotransform, CRS and band-1 nodata.
pub struct Grid<T> {
    pub width: usize,
    pub height: usize,
    pub bands: Vec<Vec<T>>,
    pub geotransform: [f64; 6],
    pub wkt: String,
    pub nodata: Option<f64>,
}

/// Read every band of `path`.
///
/// # Errors
/// Not a raster GDAL reads.
pub fn read_raster<T: Copy + gdal::raster::GdalType>(path: &Path) -> Result<Grid<T>, EvalError> {
    crate::raster::init_gdal();
    if !path.exists() {
        return Err(EvalError::data(path, "no such file"));
    }
    let err = |e: gdal::errors::GdalError| EvalError::data(path, gdal_reason(&e));
    let ds = Dataset::open(path)
        .map_err(|e| EvalError::data(path, format!("not a raster: {}", gdal_reason(&e))))?;
    let (width, height) = ds.raster_size();
    let mut bands = Vec::new();
    let mut nodata = None;
    for b in 1..=ds.raster_count() {
        let band = ds.rasterband(b).map_err(err)?;
        if b == 1 {
            nodata = band.no_data_value();
        }
        let buf = band
            .read_as::<T>((0, 0), (width, height), (width, height), None)
            .map_err(err)?;
        bands.push(buf.data().to_vec());
    }
    Ok(Grid {
        width,
        height,
        bands,
        geotransform: ds.geo_transform().unwrap_or([0.0, 1.0, 0.0, 0.0, 0.0, 1.0]),
        wkt: ds.projection(),
        nodata,
    })
}

/// The first file of `dir` named `stem.<anything>` (a vector output of a job).
pub fn output_named(dir: &Path, stem: &str) -> Option<std::path::PathBuf> {
    let mut found: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_stem().and_then(|s| s.to_str()) == Some(stem)
                && p.extension().is_some_and(|e| e != "csv")
        })
        .collect();
    found.sort();
    found.into_iter().next()
}
