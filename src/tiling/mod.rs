//! Tiling: cutting a scene into georeferenced tiles ([`TileGrid`]) and reading them in
//! parallel into a bounded stream ([`stream_tiles`]).
//!
//! Tiles are laid out on a *working grid*: the scene resampled to the target ground resolution
//! (or the scene itself). Tile size and overlap are in working-grid pixels. Every tile carries
//! its working-grid offset, the source window it reads, and its own geotransform in the scene
//! CRS, derived exactly from the scene's (rotated and sheared transforms included).

mod grid;
mod pool;
mod stream;

pub use grid::{
    max_tiles, EdgeMode, GridOptions, GridRequest, Tile, TileGrid, DEFAULT_MAX_TILES, MAX_TILES_VAR,
};
pub use pool::PooledBuf;
pub use stream::{stream_tiles, ReadOptions, ReadOrder, StreamStats, TileData};

use thiserror::Error;

use crate::raster::RasterError;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TilingError {
    #[error(transparent)]
    Raster(#[from] RasterError),
    #[error("{path}: {reason}")]
    Options { path: String, reason: String },
    #[error("could not start reader threads: {0}")]
    Threads(String),
}
