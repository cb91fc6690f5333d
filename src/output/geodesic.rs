//! Areas in square metres on the ellipsoid, whatever the layer's CRS.
//!
//! A polygon's map-unit area is square degrees in EPSG:4326 and inflated by the scale factor
//! squared in Web Mercator (1.22x at 35 degrees of latitude, 4x at 60). `area_m2` is instead the
//! geodesic area of the polygon on the ellipsoid of the CRS's own geographic CRS (WGS 84 for
//! EPSG:4326, 3857 and UTM; GRS 80 for ETRS89 / LAEA...), computed with Karney's algorithm
//! (GeographicLib, "Algorithms for geodesics", J. Geodesy 2013), the one `pyproj.Geod` uses.
//!
//! The vertices are transformed to longitude and latitude; an edge is a straight line in the
//! layer's CRS but a geodesic on the ellipsoid, so edges longer than 1/64 of the polygon's
//! bounding-box diagonal are first split into pieces no longer than that. Raster-derived
//! polygons have pixel-sized edges and are not changed by it.

use gdal::spatial_ref::{AxisMappingStrategy, CoordTransform, SpatialRef};
use geo::{Coord, LineString, MultiPolygon, Polygon};
use geographiclib_rs::{Geodesic, PolygonArea, Winding};

/// Computes geodesic areas of polygons in one CRS.
pub struct GeodesicArea {
    /// Layer CRS -> its geographic CRS, in longitude, latitude order.
    to_lonlat: CoordTransform,
    ellipsoid: Geodesic,
}

impl std::fmt::Debug for GeodesicArea {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeodesicArea")
            .field("a", &self.ellipsoid.a)
            .field("f", &self.ellipsoid.f)
            .finish()
    }
}

/// Longest edge, as a fraction of the bounding-box diagonal, left unsplit.
const DENSIFY_FRACTION: f64 = 1.0 / 64.0;

impl GeodesicArea {
    /// For polygons in the CRS `wkt` (any WKT or `EPSG:n` that GDAL reads).
    ///
    /// # Errors
    /// The CRS cannot be read, has no ellipsoid, or cannot be transformed to its geographic
    /// CRS; the message says which.
    pub fn for_crs(wkt: &str) -> Result<GeodesicArea, String> {
        crate::raster::init_gdal();
        let mut srs = SpatialRef::from_definition(wkt).map_err(|e| format!("CRS: {e}"))?;
        srs.set_axis_mapping_strategy(AxisMappingStrategy::TraditionalGisOrder);
        let mut geog = srs
            .geog_cs()
            .map_err(|e| format!("CRS without a geographic CRS: {e}"))?;
        geog.set_axis_mapping_strategy(AxisMappingStrategy::TraditionalGisOrder);
        let a = geog
            .semi_major()
            .map_err(|e| format!("CRS ellipsoid: {e}"))?;
        let b = geog
            .semi_minor()
            .map_err(|e| format!("CRS ellipsoid: {e}"))?;
        if !(a.is_finite() && b.is_finite() && a > 0.0 && b > 0.0) {
            return Err(format!("CRS ellipsoid with axes {a} and {b}"));
        }
        let to_lonlat = CoordTransform::new(&srs, &geog)
            .map_err(|e| format!("CRS to longitude and latitude: {e}"))?;
        Ok(GeodesicArea {
            to_lonlat,
            ellipsoid: Geodesic::new(a, (a - b) / a),
        })
    }

    /// The area of `polygon` (layer CRS) in square metres: the exterior's less the holes'.
    ///
    /// # Errors
    /// A vertex that does not transform (outside the CRS's domain).
    pub fn polygon(&self, polygon: &Polygon<f64>) -> Result<f64, String> {
        let diag = bbox_diagonal(polygon.exterior());
        let max_edge = diag * DENSIFY_FRACTION;
        let mut area = self.ring(polygon.exterior(), max_edge)?;
        for hole in polygon.interiors() {
            area -= self.ring(hole, max_edge)?;
        }
        Ok(area.max(0.0))
    }

    /// The summed area of the parts of `polygons`, in square metres.
    ///
    /// # Errors
    /// As [`GeodesicArea::polygon`].
    pub fn multi_polygon(&self, polygons: &MultiPolygon<f64>) -> Result<f64, String> {
        polygons.iter().map(|p| self.polygon(p)).sum()
    }

    /// The area of a GDAL polygon or multipolygon in square metres (other geometries: 0).
    ///
    /// # Errors
    /// A geometry GDAL cannot convert, or as [`GeodesicArea::polygon`].
    pub fn gdal(&self, geometry: &gdal::vector::Geometry) -> Result<f64, String> {
        match geometry.to_geo().map_err(|e| format!("geometry: {e}"))? {
            geo::Geometry::Polygon(p) => self.polygon(&p),
            geo::Geometry::MultiPolygon(m) => self.multi_polygon(&m),
            _ => Ok(0.0),
        }
    }

    /// The unsigned geodesic area enclosed by one ring.
    fn ring(&self, ring: &LineString<f64>, max_edge: f64) -> Result<f64, String> {
        let pts = densify(ring, max_edge);
        if pts.len() < 3 {
            return Ok(0.0);
        }
        let mut xs: Vec<f64> = pts.iter().map(|c| c.x).collect();
        let mut ys: Vec<f64> = pts.iter().map(|c| c.y).collect();
        let mut zs = vec![0.0; pts.len()];
        self.to_lonlat
            .transform_coords(&mut xs, &mut ys, &mut zs)
            .map_err(|e| format!("vertex outside the CRS's domain: {e}"))?;
        let mut area = PolygonArea::new(&self.ellipsoid, Winding::CounterClockwise);
        for (lon, lat) in xs.iter().zip(&ys) {
            area.add_point(*lat, *lon);
        }
        // Signed: a clockwise ring gives minus the area it encloses (unsigned would give the
        // rest of the ellipsoid).
        let (_, a, _) = area.compute(true);
        Ok(a.abs())
    }
}

/// How a layer's `area_m2` is measured: on the ellipsoid when the layer has a CRS; planar, in
/// the squared units of the geotransform, for a scene without one (pixel units, usually).
#[derive(Debug)]
pub enum LayerArea {
    Geodesic(Box<GeodesicArea>),
    Planar,
}

impl LayerArea {
    /// For a layer in the CRS `crs_wkt` (`None`: no CRS).
    ///
    /// # Errors
    /// As [`GeodesicArea::for_crs`].
    pub fn for_layer(crs_wkt: Option<&str>) -> Result<LayerArea, String> {
        match crs_wkt {
            Some(wkt) => GeodesicArea::for_crs(wkt).map(|g| LayerArea::Geodesic(Box::new(g))),
            None => Ok(LayerArea::Planar),
        }
    }

    /// The area of a GDAL polygon or multipolygon.
    ///
    /// # Errors
    /// As [`GeodesicArea::gdal`].
    pub fn gdal(&self, geometry: &gdal::vector::Geometry) -> Result<f64, String> {
        match self {
            LayerArea::Geodesic(g) => g.gdal(geometry),
            LayerArea::Planar => Ok(geometry.area()),
        }
    }

    /// The summed area of the parts of `polygons`.
    ///
    /// # Errors
    /// As [`GeodesicArea::polygon`].
    pub fn multi_polygon(&self, polygons: &MultiPolygon<f64>) -> Result<f64, String> {
        use geo::Area;
        match self {
            LayerArea::Geodesic(g) => g.multi_polygon(polygons),
            LayerArea::Planar => Ok(polygons.unsigned_area()),
        }
    }
}

/// The vertices of a ring without its closing repeat, with edges longer than `max_edge` split
/// into equal pieces no longer than it.
fn densify(ring: &LineString<f64>, max_edge: f64) -> Vec<Coord<f64>> {
    let mut coords: Vec<Coord<f64>> = ring.0.clone();
    if coords.len() > 1 && coords.first() == coords.last() {
        coords.pop();
    }
    if !(max_edge > 0.0 && max_edge.is_finite()) || coords.len() < 2 {
        return coords;
    }
    let mut out = Vec::with_capacity(coords.len());
    for (i, &a) in coords.iter().enumerate() {
        let b = coords[(i + 1) % coords.len()];
        out.push(a);
        let len = (b.x - a.x).hypot(b.y - a.y);
        if len > max_edge {
            // At most 64 pieces per edge by the choice of `max_edge`, plus rounding.
            let n = (len / max_edge).ceil().min(1024.0) as usize;
            for k in 1..n {
                let t = k as f64 / n as f64;
                out.push(Coord {
                    x: a.x + (b.x - a.x) * t,
                    y: a.y + (b.y - a.y) * t,
                });
            }
        }
    }
    out
}

fn bbox_diagonal(ring: &LineString<f64>) -> f64 {
    let (mut x0, mut y0, mut x1, mut y1) = (f64::MAX, f64::MAX, f64::MIN, f64::MIN);
    for c in &ring.0 {
        x0 = x0.min(c.x);
        y0 = y0.min(c.y);
        x1 = x1.max(c.x);
        y1 = y1.max(c.y);
    }
    if x1 < x0 {
        return 0.0;
    }
    (x1 - x0).hypot(y1 - y0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use geo::polygon;

    /// Surface of the WGS 84 ellipsoid, m^2 (GeographicLib's `Planimeter` on the whole
    /// ellipsoid; NGA TR8350.2 gives 5.10065622e14).
    const WGS84_SURFACE: f64 = 510_065_621_724_088.5;

    #[test]
    fn an_octant_of_the_ellipsoid() {
        // Equator from 0 to 90 E, meridians to the pole: geodesics, exactly 1/8 of the surface.
        let areas = GeodesicArea::for_crs("EPSG:4326").expect("crs");
        let octant = polygon![(x: 0.0, y: 0.0), (x: 90.0, y: 0.0), (x: 0.0, y: 90.0)];
        // No densification: the edges are geodesics already.
        let a = areas.ring(octant.exterior(), 0.0).expect("area");
        assert!((a - WGS84_SURFACE / 8.0).abs() < 1.0, "{a}");
        // Winding does not matter.
        let reversed = polygon![(x: 0.0, y: 90.0), (x: 90.0, y: 0.0), (x: 0.0, y: 0.0)];
        let b = areas.ring(reversed.exterior(), 0.0).expect("area");
        assert!((a - b).abs() / a < 1e-12, "{a} vs {b}");
    }

    #[test]
    fn web_mercator_squares_are_not_inflated() {
        // A 1 km square in EPSG:3857 at 60 N covers about 0.25 km^2 on the ground (scale 2).
        let areas = GeodesicArea::for_crs("EPSG:3857").expect("crs");
        let y = 8_399_737.889_818_357; // 60 N in Web Mercator metres
        let sq = polygon![(x: 0.0, y: y), (x: 1000.0, y: y), (x: 1000.0, y: y + 1000.0), (x: 0.0, y: y + 1000.0)];
        let a = areas.polygon(&sq).expect("area");
        // cos^2(60 deg) = 0.25, with the ellipsoid's small correction.
        assert!((a / 1.0e6 - 0.25).abs() < 0.003, "{a}");
    }

    #[test]
    fn holes_are_subtracted_and_utm_is_nearly_planar() {
        // UTM zone 33N near the central meridian: scale 0.9996, area ~ planar / 0.9996^2.
        let areas = GeodesicArea::for_crs("EPSG:32633").expect("crs");
        let p = Polygon::new(
            LineString::from(vec![
                (500_000.0, 5_000_000.0),
                (500_100.0, 5_000_000.0),
                (500_100.0, 5_000_100.0),
                (500_000.0, 5_000_100.0),
            ]),
            vec![LineString::from(vec![
                (500_010.0, 5_000_010.0),
                (500_020.0, 5_000_010.0),
                (500_020.0, 5_000_020.0),
                (500_010.0, 5_000_020.0),
            ])],
        );
        let a = areas.polygon(&p).expect("area");
        let planar = 100.0 * 100.0 - 10.0 * 10.0;
        let expected = planar / (0.9996_f64 * 0.9996);
        assert!((a - expected).abs() / expected < 1e-5, "{a} vs {expected}");
    }

    #[test]
    fn long_edges_are_split_short_ones_kept() {
        let ring = LineString::from(vec![(0.0, 0.0), (10.0, 0.0), (10.0, 1.0), (0.0, 0.0)]);
        let d = densify(&ring, 2.5);
        // 10 -> 4 pieces, 1 -> kept, sqrt(101) -> 5 pieces: 4 + 1 + 5 vertices.
        assert_eq!(d.len(), 10);
        assert_eq!(d[1], Coord { x: 2.5, y: 0.0 });
        assert_eq!(densify(&ring, 0.0).len(), 3);
    }

    #[test]
    fn bad_crs_is_an_error() {
        assert!(GeodesicArea::for_crs("not a crs").is_err());
    }
}
