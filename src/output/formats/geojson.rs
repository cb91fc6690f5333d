//! GeoJSON, RFC 7946 by default: coordinates in WGS 84 longitude, latitude (GDAL reprojects
//! from the layer CRS while writing), exterior rings counter-clockwise, a `bbox` per feature
//! and for the collection, 10 decimals (about 0.01 mm). [`GeoJsonNativeCrs`]
//! (`--geojson-native-crs`) keeps the scene CRS instead, written as the older GeoJSON 2008
//! `crs` member that QGIS, GDAL and geopandas read, with full precision.

use super::VectorFormat;

#[derive(Debug, Clone, Copy)]
pub struct GeoJson;

impl VectorFormat for GeoJson {
    fn name(&self) -> &'static str {
        "geojson"
    }
    fn driver(&self) -> &'static str {
        "GeoJSON"
    }
    fn extension(&self) -> &'static str {
        "geojson"
    }
    fn aliases(&self) -> &'static [&'static str] {
        &["json"]
    }
    fn media_types(&self) -> &'static [(&'static str, &'static str)] {
        &[("geojson", "application/geo+json")]
    }
    fn layer_options(&self) -> &'static [&'static str] {
        &["RFC7946=YES", "COORDINATE_PRECISION=10", "WRITE_NAME=NO"]
    }
    fn native_crs(&self) -> Option<&'static dyn VectorFormat> {
        Some(&GeoJsonNativeCrs)
    }
    fn writes_wgs84(&self) -> bool {
        true
    }
}

/// GeoJSON in the layer's own CRS (not RFC 7946).
#[derive(Debug, Clone, Copy)]
pub struct GeoJsonNativeCrs;

impl VectorFormat for GeoJsonNativeCrs {
    fn name(&self) -> &'static str {
        "geojson"
    }
    fn driver(&self) -> &'static str {
        "GeoJSON"
    }
    fn extension(&self) -> &'static str {
        "geojson"
    }
    fn media_types(&self) -> &'static [(&'static str, &'static str)] {
        &[("geojson", "application/geo+json")]
    }
    fn layer_options(&self) -> &'static [&'static str] {
        &["COORDINATE_PRECISION=15", "WRITE_NAME=NO"]
    }
}
