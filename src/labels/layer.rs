//! Box labels from a vector layer over a scene: any format OGR reads (GeoPackage, Shapefile,
//! GeoJSON, FlatGeobuf...), polygons or multipolygons (boxes are polygons too), the class in a
//! named field. Each feature becomes the axis-aligned bounding box of its geometry in the
//! scene's CRS: the geometry is reprojected vertex by vertex first when the layer's CRS is not
//! the scene's. The first layer of the file is read.

use std::path::Path;

use gdal::spatial_ref::{AxisMappingStrategy, CoordTransform, SpatialRef};
use gdal::vector::{Geometry, LayerAccess, OGRwkbGeometryType};
use gdal::{Dataset, DatasetOptions, GdalOpenFlags};

use super::{LabelBox, LabelError};
use crate::raster::init_gdal;

fn gdal_reason(e: &gdal::errors::GdalError) -> String {
    crate::raster::gdal_reason(e)
}

/// Every point of a geometry (rings and parts included).
fn points(g: &Geometry, out: &mut Vec<(f64, f64)>) {
    let n = g.geometry_count();
    if n == 0 {
        let mut v = Vec::new();
        g.get_points(&mut v);
        out.extend(v.into_iter().map(|(x, y, _)| (x, y)));
    } else {
        for i in 0..n {
            points(&g.get_geometry(i), out);
        }
    }
}

/// Read the labels of `path`'s first layer, classes from `field`, boxes in the CRS of
/// `scene_wkt` (no reprojection when the scene or the layer has no CRS).
///
/// # Errors
/// A missing file, one OGR cannot open as vectors, no such field (the message lists the
/// fields), a feature without a class value, with a geometry that is not a polygon or
/// multipolygon, or that cannot be reprojected.
pub fn read_layer(
    path: &Path,
    field: &str,
    scene_wkt: Option<&str>,
) -> Result<Vec<LabelBox>, LabelError> {
    init_gdal();
    let shown = path.display().to_string();
    if !path.exists() {
        return Err(LabelError::NotFound { path: shown });
    }
    let unreadable = |reason: String| LabelError::Unreadable {
        path: shown.clone(),
        reason,
    };
    let ds = Dataset::open_ex(
        path,
        DatasetOptions {
            open_flags: GdalOpenFlags::GDAL_OF_VECTOR | GdalOpenFlags::GDAL_OF_READONLY,
            ..Default::default()
        },
    )
    .map_err(|e| unreadable(gdal_reason(&e)))?;
    if ds.layer_count() == 0 {
        return Err(unreadable("no vector layer".into()));
    }
    let mut layer = ds.layer(0).map_err(|e| unreadable(gdal_reason(&e)))?;
    let layer_name = layer.name();
    let names: Vec<String> = layer.defn().fields().map(|f| f.name()).collect();
    let Some(index) = names.iter().position(|n| n == field) else {
        return Err(LabelError::NoField {
            path: shown,
            field: field.to_string(),
            layer: layer_name,
            available: if names.is_empty() {
                "none".into()
            } else {
                names.join(", ")
            },
        });
    };
    let reproject = |reason: String| LabelError::Reproject {
        path: shown.clone(),
        reason,
    };
    let transform = match (layer.spatial_ref(), scene_wkt) {
        (Some(mut src), Some(wkt)) => {
            let mut dst = SpatialRef::from_wkt(wkt).map_err(|e| reproject(gdal_reason(&e)))?;
            if src == dst {
                None
            } else {
                src.set_axis_mapping_strategy(AxisMappingStrategy::TraditionalGisOrder);
                dst.set_axis_mapping_strategy(AxisMappingStrategy::TraditionalGisOrder);
                Some(CoordTransform::new(&src, &dst).map_err(|e| reproject(gdal_reason(&e)))?)
            }
        }
        _ => None,
    };
    let mut out = Vec::new();
    for (n, feature) in layer.features().enumerate() {
        let id = feature.fid().unwrap_or(n as u64);
        let bad = |reason: String| LabelError::Feature {
            path: shown.clone(),
            feature: id,
            reason,
        };
        let Some(geom) = feature.geometry() else {
            continue;
        };
        if geom.is_empty() {
            continue;
        }
        let kind = gdal::vector::geometry_type_flatten(geom.geometry_type());
        if kind != OGRwkbGeometryType::wkbPolygon && kind != OGRwkbGeometryType::wkbMultiPolygon {
            return Err(bad(format!(
                "a {} geometry; box labels are polygons",
                gdal::vector::geometry_type_to_name(kind)
            )));
        }
        let class = feature
            .field_as_string(index)
            .map_err(|e| bad(gdal_reason(&e)))?
            .filter(|c| !c.trim().is_empty())
            .ok_or_else(|| bad(format!("no value in field '{field}'")))?;
        let geom = match &transform {
            Some(ct) => geom.transform(ct).map_err(|e| reproject(gdal_reason(&e)))?,
            None => geom.clone(),
        };
        let mut pts = Vec::new();
        points(&geom, &mut pts);
        let Some(b) = LabelBox::around(class.trim(), pts) else {
            return Err(bad("a geometry with a non-finite coordinate".into()));
        };
        out.push(b);
    }
    Ok(out)
}
