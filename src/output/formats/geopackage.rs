//! OGC GeoPackage (SQLite): the default vector format; no limits on names or strings.

use super::VectorFormat;

#[derive(Debug, Clone, Copy)]
pub struct GeoPackage;

impl VectorFormat for GeoPackage {
    fn name(&self) -> &'static str {
        "gpkg"
    }
    fn driver(&self) -> &'static str {
        "GPKG"
    }
    fn extension(&self) -> &'static str {
        "gpkg"
    }
    fn aliases(&self) -> &'static [&'static str] {
        &["geopackage"]
    }
    fn media_types(&self) -> &'static [(&'static str, &'static str)] {
        &[("gpkg", "application/geopackage+sqlite3")]
    }
    fn layer_options(&self) -> &'static [&'static str] {
        &["SPATIAL_INDEX=YES"]
    }
    fn transactional(&self) -> bool {
        true
    }
}
