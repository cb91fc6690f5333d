//! ESRI Shapefile: field names of at most 10 characters and strings of at most 254 bytes (the
//! dBase limits); UTF-8 declared through a `.cpg` sidecar so QGIS reads names correctly.

use super::VectorFormat;

#[derive(Debug, Clone, Copy)]
pub struct Shapefile;

impl VectorFormat for Shapefile {
    fn name(&self) -> &'static str {
        "shp"
    }
    fn driver(&self) -> &'static str {
        "ESRI Shapefile"
    }
    fn extension(&self) -> &'static str {
        "shp"
    }
    fn aliases(&self) -> &'static [&'static str] {
        &["shapefile"]
    }
    fn media_types(&self) -> &'static [(&'static str, &'static str)] {
        &[
            ("shp", "application/vnd.shp"),
            ("shx", "application/vnd.shx"),
            ("dbf", "application/vnd.dbf"),
        ]
    }
    fn layer_options(&self) -> &'static [&'static str] {
        &["ENCODING=UTF-8", "SPATIAL_INDEX=YES"]
    }
    fn max_field_name(&self) -> Option<usize> {
        Some(10)
    }
    fn max_string_len(&self) -> Option<usize> {
        Some(254)
    }
}
