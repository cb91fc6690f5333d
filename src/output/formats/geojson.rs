//! GeoJSON. RFC 7946 wants WGS 84, but GDAL writes the layer CRS when it is another one, which
//! QGIS and geopandas read; coordinates keep full precision.

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
        &["COORDINATE_PRECISION=15", "WRITE_NAME=NO"]
    }
}
