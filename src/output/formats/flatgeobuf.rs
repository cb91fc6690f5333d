//! FlatGeobuf: a streaming binary format with a packed R-tree spatial index.

use super::VectorFormat;

#[derive(Debug, Clone, Copy)]
pub struct FlatGeobuf;

impl VectorFormat for FlatGeobuf {
    fn name(&self) -> &'static str {
        "fgb"
    }
    fn driver(&self) -> &'static str {
        "FlatGeobuf"
    }
    fn extension(&self) -> &'static str {
        "fgb"
    }
    fn aliases(&self) -> &'static [&'static str] {
        &["flatgeobuf"]
    }
    fn media_types(&self) -> &'static [(&'static str, &'static str)] {
        &[("fgb", "application/vnd.flatgeobuf")]
    }
    fn layer_options(&self) -> &'static [&'static str] {
        &["SPATIAL_INDEX=YES"]
    }
}
