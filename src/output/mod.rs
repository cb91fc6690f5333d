//! Output writers: vector layers (GeoPackage, Shapefile, GeoJSON, FlatGeobuf, GeoParquet),
//! GeoTIFF chips, and the write-to-a-temporary-name-then-rename discipline every writer
//! follows, so a failed or interrupted run never leaves a partial output under the final name.

mod atomic;
mod chips;
pub mod codec;
pub mod cog;
pub mod formats;
pub mod geodesic;
mod mosaic;
mod polygonize;
pub mod polygonize_stream;
mod raster;
pub mod report;
pub mod style;
mod vector;

pub use atomic::{refuse_input, PendingOutput};
pub use chips::ChipWriter;
pub use cog::{CogOptions, CogSpec, CogWriter, Compression, OverviewResampling, Predictor};
pub use formats::VectorFormat;
pub use geodesic::{GeodesicArea, LayerArea};
pub use mosaic::{MosaicSpec, MosaicWriter};
pub use polygonize::polygonize_classes;
pub use polygonize_stream::StreamPolygonizer;
pub use raster::{class_color, write_cog, Legend, RasterSpec};
pub use style::{raster_qml, LayerStyle, Symbol};
pub use vector::{
    FieldKind, FieldSpec, FieldValue, GeometryKind, LayerSink, LayerSpec, VectorLayerWriter,
};

use thiserror::Error;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum OutputError {
    #[error("{path}: already exists (pass --overwrite to replace it)")]
    Exists { path: String },
    #[error("{path}: cannot write: {reason}")]
    Write { path: String, reason: String },
    #[error("{path}: unknown vector format '{format}' (use {})", formats::names())]
    UnknownFormat { path: String, format: String },
    /// `--out x.shp --format gpkg`: the file would be a GeoPackage named `.shp`.
    #[error("{path}: the extension '.{ext}' {problem}")]
    Extension {
        path: String,
        ext: String,
        problem: String,
    },
    /// The output is the input scene, or a folder holding it that would be replaced.
    #[error("{path}: would replace the input scene {input}; write elsewhere")]
    ReplacesInput { path: String, input: String },
    #[error("{path}: {what} would need {bytes} bytes, more than the memory budget of {budget} bytes (refused before writing; set TESSERA_MEMORY_BUDGET=BYTES, with an optional K/M/G suffix, to allow it)")]
    OverBudget {
        path: String,
        what: String,
        bytes: u128,
        budget: u64,
    },
}

pub type Result<T, E = OutputError> = std::result::Result<T, E>;
