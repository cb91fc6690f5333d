//! The affine map from pixel/line coordinates to map coordinates (GDAL's geotransform).
//!
//! `x = gt[0] + col * gt[1] + row * gt[2]` and `y = gt[3] + col * gt[4] + row * gt[5]`, where
//! `(col, row)` is a pixel *corner* (the centre of the top-left pixel is `(0.5, 0.5)`).
//! Rotated and sheared transforms are handled exactly: every derived transform (a tile, a
//! resampled grid) is obtained by composing affine maps, never by assuming north-up.

use serde::Serialize;

/// A GDAL geotransform: six coefficients of the pixel-to-map affine map.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct GeoTransform(pub [f64; 6]);

impl GeoTransform {
    /// The transform GDAL assumes for rasters with no georeferencing: map = pixel coordinates,
    /// rows increase downwards.
    pub const PIXEL: GeoTransform = GeoTransform([0.0, 1.0, 0.0, 0.0, 0.0, 1.0]);

    /// Map coordinates of the pixel-corner coordinates `(col, row)`.
    pub fn apply(&self, col: f64, row: f64) -> (f64, f64) {
        let g = &self.0;
        (
            g[0] + col * g[1] + row * g[2],
            g[3] + col * g[4] + row * g[5],
        )
    }

    /// The inverse map (map -> pixel), or `None` when the transform is degenerate.
    pub fn invert(&self) -> Option<GeoTransform> {
        let g = &self.0;
        let det = g[1] * g[5] - g[2] * g[4];
        if det == 0.0 || !det.is_finite() {
            return None;
        }
        let inv_det = 1.0 / det;
        let a = g[5] * inv_det;
        let b = -g[2] * inv_det;
        let d = -g[4] * inv_det;
        let e = g[1] * inv_det;
        Some(GeoTransform([
            -(a * g[0] + b * g[3]),
            a,
            b,
            -(d * g[0] + e * g[3]),
            d,
            e,
        ]))
    }

    /// True when the transform has neither rotation nor shear terms.
    pub fn is_north_up(&self) -> bool {
        self.0[2] == 0.0 && self.0[4] == 0.0
    }

    /// Ground length of one pixel step along columns and along rows, in map units.
    /// For north-up rasters this is `(|gt[1]|, |gt[5]|)`.
    pub fn pixel_size(&self) -> (f64, f64) {
        let g = &self.0;
        (g[1].hypot(g[4]), g[2].hypot(g[5]))
    }

    /// The transform of a derived grid whose pixel `(0, 0)` corner sits at source pixel
    /// corner `(col_off, row_off)` and whose pixels are `scale_x` by `scale_y` source pixels.
    ///
    /// Used for tiles (offset, scale 1) and for resampled grids (`scale = target / native`).
    pub fn sub_grid(&self, col_off: f64, row_off: f64, scale_x: f64, scale_y: f64) -> GeoTransform {
        let g = &self.0;
        let (x0, y0) = self.apply(col_off, row_off);
        GeoTransform([
            x0,
            g[1] * scale_x,
            g[2] * scale_y,
            y0,
            g[4] * scale_x,
            g[5] * scale_y,
        ])
    }

    /// The four corners of a `width` x `height` grid, clockwise from the top-left, closed
    /// (the first corner repeated at the end).
    pub fn footprint(&self, width: f64, height: f64) -> [(f64, f64); 5] {
        let tl = self.apply(0.0, 0.0);
        [
            tl,
            self.apply(width, 0.0),
            self.apply(width, height),
            self.apply(0.0, height),
            tl,
        ]
    }

    /// Axis-aligned bounds `(min_x, min_y, max_x, max_y)` of a `width` x `height` grid.
    pub fn bounds(&self, width: f64, height: f64) -> (f64, f64, f64, f64) {
        let corners = self.footprint(width, height);
        let mut b = (
            f64::INFINITY,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NEG_INFINITY,
        );
        for (x, y) in &corners[..4] {
            b.0 = b.0.min(*x);
            b.1 = b.1.min(*y);
            b.2 = b.2.max(*x);
            b.3 = b.3.max(*y);
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * (1.0 + a.abs().max(b.abs()))
    }

    #[test]
    fn apply_north_up() {
        let gt = GeoTransform([500_000.0, 10.0, 0.0, 4_600_000.0, 0.0, -10.0]);
        assert_eq!(gt.apply(0.0, 0.0), (500_000.0, 4_600_000.0));
        assert_eq!(gt.apply(3.0, 2.0), (500_030.0, 4_599_980.0));
        assert!(gt.is_north_up());
        assert_eq!(gt.pixel_size(), (10.0, 10.0));
    }

    #[test]
    fn inverse_round_trips_rotated() {
        let gt = GeoTransform([1000.0, 0.8, 0.6, 2000.0, 0.6, -0.8]);
        let inv = gt.invert().expect("invertible");
        for &(c, r) in &[(0.0, 0.0), (10.5, 3.25), (-4.0, 700.0)] {
            let (x, y) = gt.apply(c, r);
            let (c2, r2) = inv.apply(x, y);
            assert!(close(c, c2) && close(r, r2), "({c},{r}) -> ({c2},{r2})");
        }
        assert!(!gt.is_north_up());
        let (sx, sy) = gt.pixel_size();
        assert!(close(sx, 1.0) && close(sy, 1.0));
    }

    #[test]
    fn degenerate_has_no_inverse() {
        assert!(GeoTransform([0.0, 1.0, 2.0, 0.0, 2.0, 4.0])
            .invert()
            .is_none());
    }

    #[test]
    fn sub_grid_matches_composition() {
        // A tile at source pixel (256, 512) at half resolution (scale 2) of a sheared grid:
        // tile pixel (i, j) must land where source pixel (256 + 2i, 512 + 2j) lands.
        let gt = GeoTransform([10.0, 2.0, 0.5, 20.0, -0.25, -2.0]);
        let tile = gt.sub_grid(256.0, 512.0, 2.0, 2.0);
        for &(i, j) in &[(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (223.5, 17.25)] {
            let a = tile.apply(i, j);
            let b = gt.apply(256.0 + 2.0 * i, 512.0 + 2.0 * j);
            assert!(close(a.0, b.0) && close(a.1, b.1));
        }
    }

    #[test]
    fn bounds_of_north_up_grid() {
        let gt = GeoTransform([100.0, 1.0, 0.0, 50.0, 0.0, -1.0]);
        assert_eq!(gt.bounds(10.0, 5.0), (100.0, 45.0, 110.0, 50.0));
    }
}
