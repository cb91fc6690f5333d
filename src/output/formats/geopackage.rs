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
    fn layer_options(&self) -> &'static [&'static str] {
        &["SPATIAL_INDEX=YES"]
    }
    fn transactional(&self) -> bool {
        true
    }
}
