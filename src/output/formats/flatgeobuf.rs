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
    fn layer_options(&self) -> &'static [&'static str] {
        &["SPATIAL_INDEX=YES"]
    }
}
