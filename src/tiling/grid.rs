//! The tile grid: positions, source windows and geotransforms of every tile.

use serde::Serialize;

use super::TilingError;
use crate::raster::{GeoTransform, SceneInfo, WindowRequest};

/// What to do where the last tile of a row or column would run past the scene edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EdgeMode {
    /// Keep the regular stride; the part past the edge is padding (nodata, invalid).
    Pad,
    /// Shift the last tile inward so it ends at the edge (overlaps its neighbour more).
    /// A scene smaller than one tile still gets one padded tile.
    Shift,
}

impl crate::options::Choice for EdgeMode {
    const NAMES: &'static [(&'static str, Self)] =
        &[("pad", EdgeMode::Pad), ("shift", EdgeMode::Shift)];
}
crate::choice_from_str!(EdgeMode);

/// How to lay tiles on a scene.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GridOptions {
    /// Tile width and height in working-grid pixels.
    pub tile_size: usize,
    /// Pixels shared by neighbouring tiles; stride = tile_size - overlap.
    pub overlap: usize,
    /// Target ground resolution in metres per pixel; `None` keeps the native resolution.
    pub target_gsd: Option<f64>,
    pub edge: EdgeMode,
}

/// The grid a model command asks for: `None` where the model decides (its input size, the
/// overlap and resolution its manifest recommends).
#[derive(Clone, Debug, PartialEq)]
pub struct GridRequest {
    pub tile_size: Option<usize>,
    pub overlap: Option<usize>,
    pub target_gsd: Option<f64>,
    pub edge: EdgeMode,
}

impl GridRequest {
    /// The grid for a model whose input is `model_size` pixels, with its recommended overlap
    /// and resolution where the request leaves them open.
    pub fn resolve(
        &self,
        model_size: usize,
        overlap: Option<usize>,
        target_gsd: Option<f64>,
    ) -> GridOptions {
        let tile_size = self.tile_size.unwrap_or(model_size);
        GridOptions {
            tile_size,
            overlap: self
                .overlap
                .unwrap_or_else(|| overlap.unwrap_or(0).min(tile_size.saturating_sub(1))),
            target_gsd: self.target_gsd.or(target_gsd),
            edge: self.edge,
        }
    }
}

/// One tile of a grid.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Tile {
    /// Row-major position in the grid (`row * cols + col`).
    pub index: usize,
    pub row: usize,
    pub col: usize,
    /// Deterministic id: the same scene and options always give the same ids.
    pub id: String,
    /// Offset of the tile's top-left pixel in the working grid.
    pub x: usize,
    pub y: usize,
    /// Tile width and height (the tile size).
    pub size: usize,
    /// Columns and rows of the tile that lie inside the scene; the rest is padding.
    pub inside_w: usize,
    pub inside_h: usize,
    /// Geotransform of the tile's pixel grid in the scene CRS.
    pub geotransform: GeoTransform,
}

impl Tile {
    /// True when part of the tile lies outside the scene.
    pub fn padded(&self) -> bool {
        self.inside_w < self.size || self.inside_h < self.size
    }
}

/// The grid of tiles over one scene.
#[derive(Clone, Debug, Serialize)]
pub struct TileGrid {
    pub options: GridOptions,
    /// Source pixels per working-grid pixel along columns and rows (1.0 at native resolution).
    pub scale: (f64, f64),
    /// Size of the working grid (the scene at the target resolution).
    pub working_width: usize,
    pub working_height: usize,
    /// Offsets of tile columns and rows in the working grid.
    pub col_offsets: Vec<usize>,
    pub row_offsets: Vec<usize>,
    /// Geotransform of the working grid.
    pub geotransform: GeoTransform,
}

impl TileGrid {
    /// Lay a grid over `info`.
    ///
    /// # Errors
    /// Zero tile size, overlap not smaller than the tile size, a target resolution without a
    /// metric CRS, one so coarse that the scene is less than one pixel, or a grid of more than
    /// [`max_tiles`] tiles (checked before any offset is laid out).
    pub fn new(info: &SceneInfo, options: GridOptions) -> Result<TileGrid, TilingError> {
        let err = |reason: String| TilingError::Options {
            path: info.path.clone(),
            reason,
        };
        if options.tile_size == 0 {
            return Err(err("tile size must be at least 1 pixel".into()));
        }
        if options.overlap >= options.tile_size {
            return Err(err(format!(
                "overlap {} must be smaller than the tile size {}",
                options.overlap, options.tile_size
            )));
        }
        let scale = match options.target_gsd {
            None => (1.0, 1.0),
            Some(gsd) => {
                if !(gsd.is_finite() && gsd > 0.0) {
                    return Err(err(format!(
                        "target resolution {gsd} m is not a positive number"
                    )));
                }
                let Some((rx, ry)) = info.resolution_m else {
                    return Err(err(
                        "--target-gsd needs a CRS whose resolution is known in metres".into(),
                    ));
                };
                (gsd / rx, gsd / ry)
            }
        };
        // Working pixels that lie wholly inside the scene; a sliver of less than one working
        // pixel at the right/bottom edge is dropped.
        let working_width = (info.width as f64 / scale.0 + 1e-9).floor() as usize;
        let working_height = (info.height as f64 / scale.1 + 1e-9).floor() as usize;
        if working_width == 0 || working_height == 0 {
            return Err(err(format!(
                "the scene ({}x{} pixels) is smaller than one pixel at the target resolution",
                info.width, info.height
            )));
        }
        let stride = options.tile_size - options.overlap;
        // Count before laying out: a header (or a fine --target-gsd) must not make tessera
        // allocate and walk billions of tiles.
        let count = |extent: usize| -> u128 {
            if extent <= options.tile_size {
                1
            } else {
                ((extent - options.tile_size).div_ceil(stride) + 1) as u128
            }
        };
        let (cols, rows) = (count(working_width), count(working_height));
        let limit = max_tiles();
        if cols * rows > u128::from(limit) {
            return Err(err(format!(
                "the grid would have {} tiles ({cols} x {rows} of {} px over {working_width}x{working_height} working pixels), more than the limit of {limit}; use a larger --tile-size or a coarser --target-gsd, or set {MAX_TILES_VAR} to raise the limit",
                cols * rows,
                options.tile_size
            )));
        }
        let col_offsets = axis_offsets(working_width, options.tile_size, stride, options.edge);
        let row_offsets = axis_offsets(working_height, options.tile_size, stride, options.edge);
        let geotransform = info.geotransform.sub_grid(0.0, 0.0, scale.0, scale.1);
        Ok(TileGrid {
            options,
            scale,
            working_width,
            working_height,
            col_offsets,
            row_offsets,
            geotransform,
        })
    }

    pub fn cols(&self) -> usize {
        self.col_offsets.len()
    }

    pub fn rows(&self) -> usize {
        self.row_offsets.len()
    }

    pub fn len(&self) -> usize {
        self.cols() * self.rows()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn tile_size(&self) -> usize {
        self.options.tile_size
    }

    /// The tile at grid position (`row`, `col`).
    pub fn tile(&self, row: usize, col: usize) -> Tile {
        let size = self.options.tile_size;
        let (x, y) = (self.col_offsets[col], self.row_offsets[row]);
        Tile {
            index: row * self.cols() + col,
            row,
            col,
            id: format!("r{row:04}c{col:04}"),
            x,
            y,
            size,
            inside_w: size.min(self.working_width - x),
            inside_h: size.min(self.working_height - y),
            geotransform: self.geotransform.sub_grid(x as f64, y as f64, 1.0, 1.0),
        }
    }

    /// Every tile, row by row.
    pub fn tiles(&self) -> impl Iterator<Item = Tile> + '_ {
        (0..self.rows()).flat_map(move |r| (0..self.cols()).map(move |c| self.tile(r, c)))
    }

    /// The source window holding the inside part of `tile`, resampled to its inside size.
    pub fn source_window(&self, tile: &Tile) -> WindowRequest {
        let (sx, sy) = self.scale;
        WindowRequest {
            x: tile.x as f64 * sx,
            y: tile.y as f64 * sy,
            w: tile.inside_w as f64 * sx,
            h: tile.inside_h as f64 * sy,
            out_w: tile.inside_w,
            out_h: tile.inside_h,
        }
    }
}

/// The environment variable that raises (or lowers) the tile limit of one grid.
pub const MAX_TILES_VAR: &str = "TESSERA_MAX_TILES";

/// Default most tiles of one grid (10 million).
pub const DEFAULT_MAX_TILES: u64 = 10_000_000;

/// The most tiles one grid may have: `TESSERA_MAX_TILES`, else [`DEFAULT_MAX_TILES`].
pub fn max_tiles() -> u64 {
    std::env::var(MAX_TILES_VAR)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(DEFAULT_MAX_TILES)
}

/// Tile offsets along one axis of `extent` pixels.
fn axis_offsets(extent: usize, size: usize, stride: usize, edge: EdgeMode) -> Vec<usize> {
    if extent <= size {
        return vec![0];
    }
    let n = (extent - size).div_ceil(stride) + 1;
    let mut offsets: Vec<usize> = (0..n).map(|k| k * stride).collect();
    if edge == EdgeMode::Shift {
        if let Some(last) = offsets.last_mut() {
            *last = extent - size;
        }
    }
    offsets
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_request_leaves_open_what_the_model_decides() {
        let open = GridRequest {
            tile_size: None,
            overlap: None,
            target_gsd: None,
            edge: EdgeMode::Pad,
        };
        let g = open.resolve(224, Some(32), Some(0.5));
        assert_eq!((g.tile_size, g.overlap, g.target_gsd), (224, 32, Some(0.5)));
        // The model's overlap never reaches the tile size.
        assert_eq!(open.resolve(16, Some(32), None).overlap, 15);
        let given = GridRequest {
            tile_size: Some(256),
            overlap: Some(0),
            target_gsd: Some(1.0),
            edge: EdgeMode::Shift,
        };
        let g = given.resolve(224, Some(32), Some(0.5));
        assert_eq!(
            (g.tile_size, g.overlap, g.target_gsd, g.edge),
            (256, 0, Some(1.0), EdgeMode::Shift)
        );
    }

    use super::*;

    #[test]
    fn offsets_pad_and_shift() {
        // 10 pixels, tiles of 4, no overlap: 0,4,8 (the last is padded by 2).
        assert_eq!(axis_offsets(10, 4, 4, EdgeMode::Pad), vec![0, 4, 8]);
        assert_eq!(axis_offsets(10, 4, 4, EdgeMode::Shift), vec![0, 4, 6]);
        // Exact fit: no padding either way.
        assert_eq!(axis_offsets(12, 4, 4, EdgeMode::Pad), vec![0, 4, 8]);
        assert_eq!(axis_offsets(12, 4, 4, EdgeMode::Shift), vec![0, 4, 8]);
        // Overlap 1 (stride 3): 0,3,6 covers 0..10 exactly.
        assert_eq!(axis_offsets(10, 4, 3, EdgeMode::Pad), vec![0, 3, 6]);
        assert_eq!(axis_offsets(11, 4, 3, EdgeMode::Pad), vec![0, 3, 6, 9]);
        assert_eq!(axis_offsets(11, 4, 3, EdgeMode::Shift), vec![0, 3, 6, 7]);
        // Smaller than one tile: one (padded) tile.
        assert_eq!(axis_offsets(3, 4, 4, EdgeMode::Pad), vec![0]);
        assert_eq!(axis_offsets(3, 4, 4, EdgeMode::Shift), vec![0]);
        assert_eq!(axis_offsets(4, 4, 2, EdgeMode::Pad), vec![0]);
    }

    #[test]
    fn offsets_cover_every_pixel_with_bounded_tiles() {
        for extent in 1..60 {
            for size in 1..12 {
                for overlap in 0..size {
                    for edge in [EdgeMode::Pad, EdgeMode::Shift] {
                        let offs = axis_offsets(extent, size, size - overlap, edge);
                        let mut covered = vec![false; extent];
                        for &o in &offs {
                            assert!(o < extent);
                            for c in covered.iter_mut().skip(o).take(size) {
                                *c = true;
                            }
                        }
                        assert!(
                            covered.iter().all(|&c| c),
                            "{extent} {size} {overlap} {edge:?}"
                        );
                        // No tile is wholly redundant: each starts after the previous one.
                        assert!(offs.windows(2).all(|w| w[0] < w[1]));
                        if edge == EdgeMode::Shift && extent >= size {
                            assert_eq!(offs.last().copied(), Some(extent - size));
                        }
                    }
                }
            }
        }
    }
}
