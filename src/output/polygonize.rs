//! Polygons from a class raster: GDAL's polygonize on an in-memory copy, connected regions of
//! equal value (4-connected) become polygons in map coordinates, grouped by class.

use std::collections::BTreeMap;

use gdal::vector::{LayerAccess, LayerOptions, OGRFieldType, OGRwkbGeometryType};
use gdal::DriverManager;

use crate::raster::{gdal_reason, last_cpl_message, GeoTransform};

/// Polygons of every class value present in `data` (`height` rows of `width` values), skipping
/// `nodata`. Coordinates are map coordinates through `geotransform`.
///
/// # Errors
/// GDAL failing (a message).
pub fn polygonize_classes(
    data: &[u8],
    width: usize,
    height: usize,
    geotransform: &GeoTransform,
    nodata: Option<u8>,
) -> Result<BTreeMap<u8, Vec<geo::Polygon<f64>>>, String> {
    crate::raster::init_gdal();
    let e = |err: gdal::errors::GdalError| gdal_reason(&err);
    let mem = DriverManager::get_driver_by_name("MEM").map_err(e)?;
    let mut ds = mem
        .create_with_band_type::<u8, _>("", width, height, 1)
        .map_err(e)?;
    ds.set_geo_transform(&geotransform.0).map_err(e)?;
    let mut band = ds.rasterband(1).map_err(e)?;
    let mut buf = gdal::raster::Buffer::new((width, height), data.to_vec());
    band.write((0, 0), (width, height), &mut buf).map_err(e)?;
    if let Some(nd) = nodata {
        band.set_no_data_value(Some(f64::from(nd))).map_err(e)?;
    }
    let vdriver = DriverManager::get_driver_by_name("Memory")
        .or_else(|_| DriverManager::get_driver_by_name("MEM"))
        .map_err(e)?;
    let mut vds = vdriver.create_vector_only("").map_err(e)?;
    let layer = vds
        .create_layer(LayerOptions {
            name: "polygons",
            srs: None,
            ty: OGRwkbGeometryType::wkbPolygon,
            options: None,
        })
        .map_err(e)?;
    layer
        .create_defn_fields(&[("value", OGRFieldType::OFTInteger)])
        .map_err(e)?;
    // SAFETY: valid band, mask band and layer handles owned above; no options or progress.
    let rv = unsafe {
        let band_h = band.c_rasterband();
        let mask_h = if nodata.is_some() {
            gdal_sys::GDALGetMaskBand(band_h)
        } else {
            std::ptr::null_mut()
        };
        gdal_sys::GDALPolygonize(
            band_h,
            mask_h,
            layer.c_layer(),
            0,
            std::ptr::null_mut(),
            None,
            std::ptr::null_mut(),
        )
    };
    if rv != 0 {
        return Err(last_cpl_message());
    }
    let mut out: BTreeMap<u8, Vec<geo::Polygon<f64>>> = BTreeMap::new();
    let mut layer = vds.layer(0).map_err(e)?;
    for feature in layer.features() {
        let value = feature.field_as_integer(0).map_err(e)?.unwrap_or(-1);
        let Ok(class) = u8::try_from(value) else {
            continue;
        };
        if let Some(g) = feature.geometry() {
            match g.to_geo().map_err(e)? {
                geo::Geometry::Polygon(p) => out.entry(class).or_default().push(p),
                geo::Geometry::MultiPolygon(mp) => out.entry(class).or_default().extend(mp.0),
                _ => {}
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use geo::Area;

    #[test]
    fn regions_become_polygons_with_map_areas() {
        // 4x3 grid: class 1 is an L of 4 cells, class 2 two separate cells, 9 is nodata.
        #[rustfmt::skip]
        let data = [
            1, 1, 2, 9,
            1, 0, 0, 2,
            1, 0, 0, 0,
        ];
        let gt = GeoTransform([1000.0, 10.0, 0.0, 5000.0, 0.0, -10.0]);
        let polys = polygonize_classes(&data, 4, 3, &gt, Some(9)).expect("polygonize");
        assert_eq!(polys.keys().copied().collect::<Vec<_>>(), vec![0, 1, 2]);
        let area = |c: u8| polys[&c].iter().map(|p| p.unsigned_area()).sum::<f64>();
        assert_eq!(polys[&1].len(), 1);
        assert!((area(1) - 400.0).abs() < 1e-6);
        assert_eq!(polys[&2].len(), 2);
        assert!((area(2) - 200.0).abs() < 1e-6);
        assert!((area(0) - 500.0).abs() < 1e-6);
        // Map coordinates: the class-1 polygon spans x 1000..1020, y 4970..5000.
        let b = geo::BoundingRect::bounding_rect(&polys[&1][0]).expect("bbox");
        assert_eq!(
            (b.min().x, b.max().x, b.min().y, b.max().y),
            (1000.0, 1020.0, 4970.0, 5000.0)
        );
    }
}
