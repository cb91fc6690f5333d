//! STAC Item JSON for a processed scene.
//!
//! [`scene_item`] describes one scene and the files written for it as a STAC 1.1.0 Item with
//! the Projection extension v2.0.0: the footprint in WGS 84 lon/lat (`geometry`, `bbox`), the
//! scene grid in its own CRS (`proj:code`, `proj:wkt2`, `proj:shape`, `proj:transform`,
//! `proj:bbox`), the acquisition `datetime`, caller-supplied properties, one asset per output
//! file ([`asset_for`] picks media type and roles from the file name) and an optional
//! `derived_from` link to the source scene.
//!
//! Output is deterministic: objects are `serde_json` maps, which keep keys sorted, and every
//! array is built in a fixed order, so equal inputs give byte-identical JSON.
//!
//! The tests validate items with stac-validator against the schemas in `tests/stac-schemas/`
//! (`tests/python/validate_stac.py`).

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use gdal::spatial_ref::{AxisMappingStrategy, CoordTransform, SpatialRef};
use serde_json::{json, Map, Value};
use thiserror::Error;

use crate::raster::{gdal_reason, init_gdal, GeoTransform, SceneInfo};

/// The STAC version of the items written here.
pub const STAC_VERSION: &str = "1.1.0";

/// Schema URL of the Projection extension the items declare.
pub const PROJECTION_EXTENSION: &str =
    "https://stac-extensions.github.io/projection/v2.0.0/schema.json";

/// Points per footprint edge (the corner plus evenly spaced points before the next corner),
/// so that a footprint reprojected to lon/lat follows the curved image of a straight edge.
pub const POINTS_PER_EDGE: usize = 10;

/// Media type of the GeoTIFFs tessera writes (all are COGs).
pub const MEDIA_COG: &str = "image/tiff; application=geotiff; profile=cloud-optimized";

/// Decimal places kept for lon/lat in `geometry` and `bbox` (1e-9 degree is under 0.1 mm).
const LONLAT_DECIMALS: i32 = 9;

/// Properties [`scene_item`] sets itself; callers cannot override them.
const RESERVED_PROPERTIES: [&str; 6] = [
    "datetime",
    "proj:code",
    "proj:wkt2",
    "proj:shape",
    "proj:transform",
    "proj:bbox",
];

/// What can go wrong while building a STAC Item. Every variant names the item id.
#[derive(Clone, Debug, Error, PartialEq)]
#[non_exhaustive]
pub enum StacError {
    #[error("STAC item {id}: the scene has no CRS, so its footprint cannot be given in lon/lat")]
    NoCrs { id: String },
    #[error("STAC item {id}: CRS not understood: {reason}")]
    Crs { id: String, reason: String },
    #[error("STAC item {id}: footprint cannot be transformed to EPSG:4326: {reason}")]
    Transform { id: String, reason: String },
    #[error("STAC item {id}: the footprint crosses the antimeridian, which is not supported")]
    Antimeridian { id: String },
    #[error("STAC item {id}: datetime {value:?} is not an RFC 3339 UTC timestamp (YYYY-MM-DDTHH:MM:SS[.f]Z or +00:00)")]
    Datetime { id: String, value: String },
    #[error("STAC item {id}: {reason}")]
    Invalid { id: String, reason: String },
}

/// One file of an Item, as a STAC Asset.
#[derive(Clone, Debug, PartialEq)]
pub struct Asset {
    /// Key in the item's `assets` object (unique within the item).
    pub key: String,
    /// Location of the file, relative to the item JSON.
    pub href: String,
    pub media_type: &'static str,
    pub roles: Vec<&'static str>,
    pub title: Option<String>,
}

/// An asset for the file `href` (relative to the item), with media type and roles from its
/// extension (case-insensitive):
///
/// | extension | media type | roles |
/// | --- | --- | --- |
/// | `.tif`, `.tiff` | [`MEDIA_COG`] | data |
/// | `.gpkg` | `application/geopackage+sqlite3` | data |
/// | `.geojson` | `application/geo+json` | data |
/// | `.fgb` | `application/vnd.flatgeobuf` | data |
/// | `.shp`, `.shx`, `.dbf` | `application/vnd.shp`, `application/vnd.shx`, `application/vnd.dbf` (IANA) | data |
/// | `.prj`, `.cpg` (shapefile sidecars), `.txt` | `text/plain` | metadata |
/// | `.jsonl`, `.ndjson` | `application/x-ndjson` | data |
/// | `.csv` | `text/csv` | data |
/// | `.json` | `application/json` | metadata |
/// | `.qml` (QGIS style) | `application/xml` | metadata |
/// | `.parquet` | `application/vnd.apache.parquet` | data |
/// | `.png` / `.jpg`, `.jpeg` | `image/png` / `image/jpeg` | data |
/// | anything else | `application/octet-stream` | data |
pub fn asset_for(key: String, href: String) -> Asset {
    let ext = Path::new(&href)
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let (media_type, role) = media_type_and_role(&ext);
    Asset {
        key,
        href,
        media_type,
        roles: vec![role],
        title: None,
    }
}

fn media_type_and_role(ext: &str) -> (&'static str, &'static str) {
    if let Some(media) = crate::output::formats::media_type(ext) {
        return (media, "data");
    }
    match ext {
        "tif" | "tiff" => (MEDIA_COG, "data"),
        "prj" | "cpg" | "txt" => ("text/plain", "metadata"),
        "jsonl" | "ndjson" => ("application/x-ndjson", "data"),
        "csv" => ("text/csv", "data"),
        "json" => ("application/json", "metadata"),
        "qml" => ("application/xml", "metadata"),
        // report.html: the page to look at the results with.
        "html" => ("text/html", "metadata"),
        "parquet" => ("application/vnd.apache.parquet", "data"),
        "png" => ("image/png", "data"),
        "jpg" | "jpeg" => ("image/jpeg", "data"),
        _ => ("application/octet-stream", "data"),
    }
}

/// Everything one Item is made from.
#[derive(Clone, Debug)]
pub struct ItemInput<'a> {
    /// Item id (non-empty).
    pub id: &'a str,
    /// Scene size in pixels.
    pub width: usize,
    pub height: usize,
    /// Pixel-corner to map transform of the scene (rotated and sheared ones included).
    pub geotransform: GeoTransform,
    /// The scene CRS as WKT; `None` (pixel-coordinate scenes) is an error.
    pub crs_wkt: Option<&'a str>,
    /// Acquisition time, RFC 3339 in UTC (`Z` or `+00:00`), as STAC requires.
    pub datetime: String,
    /// Further Item properties, e.g. `"tessera:pipeline"`. They may not set `datetime` or
    /// the `proj:` fields written here.
    pub properties: Map<String, Value>,
    /// Output files; keys must be unique.
    pub assets: Vec<Asset>,
    /// The source scene, linked with `rel: derived_from` when given.
    pub source_href: Option<String>,
}

impl<'a> ItemInput<'a> {
    /// An input for `info`'s grid and CRS, with no extra properties, assets or link yet.
    pub fn for_scene(id: &'a str, info: &'a SceneInfo, datetime: String) -> ItemInput<'a> {
        ItemInput {
            id,
            width: info.width,
            height: info.height,
            geotransform: info.geotransform,
            crs_wkt: info.crs.as_ref().map(|c| c.wkt.as_str()),
            datetime,
            properties: Map::new(),
            assets: Vec::new(),
            source_href: None,
        }
    }
}

/// The STAC Item (a GeoJSON Feature) for `input`.
///
/// # Errors
/// No CRS or one GDAL cannot read, a footprint that cannot be transformed to lon/lat or that
/// crosses the antimeridian, a datetime that is not RFC 3339 UTC, an empty id, a zero-size
/// grid or degenerate geotransform, duplicate or empty asset keys, empty hrefs, or extra
/// properties that collide with the ones written here.
pub fn scene_item(input: &ItemInput) -> Result<Value, StacError> {
    let id = input.id;
    let invalid = |reason: String| StacError::Invalid {
        id: id.to_string(),
        reason,
    };
    if id.trim().is_empty() {
        return Err(invalid("empty item id".into()));
    }
    if input.width == 0 || input.height == 0 {
        return Err(invalid(format!(
            "zero-size grid {}x{}",
            input.width, input.height
        )));
    }
    let gt = input.geotransform;
    if gt.0.iter().any(|v| !v.is_finite()) || gt.invert().is_none() {
        return Err(invalid(format!("degenerate geotransform {:?}", gt.0)));
    }
    if !is_rfc3339_utc(&input.datetime) {
        return Err(StacError::Datetime {
            id: id.into(),
            value: input.datetime.clone(),
        });
    }
    let wkt = input
        .crs_wkt
        .filter(|w| !w.trim().is_empty())
        .ok_or_else(|| StacError::NoCrs { id: id.into() })?;

    init_gdal();
    let crs_err = |reason: String| StacError::Crs {
        id: id.into(),
        reason,
    };
    let srs = SpatialRef::from_wkt(wkt).map_err(|e| crs_err(gdal_reason(&e)))?;
    let code = crs_code(wkt, &srs);
    let wkt2 = export_wkt2(&srs).map_err(crs_err)?;

    let (w, h) = (input.width as f64, input.height as f64);
    let ring = footprint_lonlat(id, &srs, &gt, w, h)?;
    let bbox = lonlat_bbox(&ring);
    let proj_bbox = gt.bounds(w, h);
    let g = gt.0;

    let mut properties = Map::new();
    for (key, value) in &input.properties {
        if RESERVED_PROPERTIES.contains(&key.as_str()) {
            return Err(invalid(format!(
                "property {key:?} is written by the item builder and cannot be overridden"
            )));
        }
        properties.insert(key.clone(), value.clone());
    }
    properties.insert("datetime".into(), json!(input.datetime));
    properties.insert("proj:code".into(), json!(code));
    properties.insert("proj:wkt2".into(), json!(wkt2));
    properties.insert("proj:shape".into(), json!([input.height, input.width]));
    properties.insert(
        "proj:transform".into(),
        json!([g[1], g[2], g[0], g[4], g[5], g[3]]),
    );
    properties.insert(
        "proj:bbox".into(),
        json!([proj_bbox.0, proj_bbox.1, proj_bbox.2, proj_bbox.3]),
    );

    let mut assets = Map::new();
    for asset in &input.assets {
        if asset.key.is_empty() {
            return Err(invalid(format!("asset {:?} has an empty key", asset.href)));
        }
        if asset.href.is_empty() {
            return Err(invalid(format!("asset {:?} has an empty href", asset.key)));
        }
        let mut a = Map::new();
        a.insert("href".into(), json!(asset.href));
        a.insert("type".into(), json!(asset.media_type));
        a.insert("roles".into(), json!(asset.roles));
        if let Some(title) = &asset.title {
            a.insert("title".into(), json!(title));
        }
        if assets.insert(asset.key.clone(), Value::Object(a)).is_some() {
            return Err(invalid(format!("duplicate asset key {:?}", asset.key)));
        }
    }

    let links: Vec<Value> = input
        .source_href
        .iter()
        .map(|href| json!({ "rel": "derived_from", "href": href }))
        .collect();

    let coordinates: Vec<[f64; 2]> = ring.iter().map(|&(lon, lat)| [lon, lat]).collect();
    Ok(json!({
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": [PROJECTION_EXTENSION],
        "id": id,
        "geometry": { "type": "Polygon", "coordinates": [coordinates] },
        "bbox": bbox,
        "properties": properties,
        "links": links,
        "assets": assets,
    }))
}

/// `"AUTHORITY:CODE"` of the CRS (e.g. `"EPSG:32633"`): the root authority of the WKT, else
/// the EPSG code GDAL identifies for it, else `None` (written as `null`).
fn crs_code(wkt: &str, srs: &SpatialRef) -> Option<String> {
    if let Ok(code) = srs.authority() {
        return Some(code);
    }
    let mut guess = SpatialRef::from_wkt(wkt).ok()?;
    guess.auto_identify_epsg().ok()?;
    guess.authority().ok()
}

/// The CRS as single-line WKT2 (2019).
fn export_wkt2(srs: &SpatialRef) -> Result<String, String> {
    let mut options = gdal::cpl::CslStringList::new();
    options
        .set_name_value("FORMAT", "WKT2_2019")
        .and_then(|()| options.set_name_value("MULTILINE", "NO"))
        .map_err(|e| gdal_reason(&e))?;
    let mut out: *mut std::ffi::c_char = std::ptr::null_mut();
    // SAFETY: `srs` is a live OGRSpatialReferenceH and `options` a NULL-terminated list that
    // outlives the call; on return `out` is NULL or a NUL-terminated string that we own,
    // copy at once and release with VSIFree.
    let (rv, text) = unsafe {
        let rv = gdal_sys::OSRExportToWktEx(
            srs.to_c_hsrs(),
            &mut out,
            options.as_ptr().cast::<*const std::ffi::c_char>(),
        );
        let text = if out.is_null() {
            None
        } else {
            Some(std::ffi::CStr::from_ptr(out).to_string_lossy().into_owned())
        };
        gdal_sys::VSIFree(out.cast::<std::ffi::c_void>());
        (rv, text)
    };
    match text {
        Some(t) if rv == gdal_sys::OGRErr::OGRERR_NONE && !t.is_empty() => Ok(t),
        _ => Err(format!(
            "cannot export it as WKT2 ({})",
            crate::raster::last_cpl_message()
        )),
    }
}

/// The closed, densified footprint ring in the scene CRS: [`POINTS_PER_EDGE`] points per edge
/// clockwise in pixel space from the top-left corner, then the first point again.
fn footprint_ring(gt: &GeoTransform, w: f64, h: f64) -> Vec<(f64, f64)> {
    let corners = [(0.0, 0.0), (w, 0.0), (w, h), (0.0, h)];
    let mut ring = Vec::with_capacity(4 * POINTS_PER_EDGE + 1);
    for i in 0..4 {
        let (c0, r0) = corners[i];
        let (c1, r1) = corners[(i + 1) % 4];
        for k in 0..POINTS_PER_EDGE {
            let t = k as f64 / POINTS_PER_EDGE as f64;
            ring.push(gt.apply(c0 + t * (c1 - c0), r0 + t * (r1 - r0)));
        }
    }
    ring.push(ring[0]);
    ring
}

/// The footprint as a closed lon/lat ring, counter-clockwise (RFC 7946), rounded to
/// [`LONLAT_DECIMALS`].
fn footprint_lonlat(
    id: &str,
    srs: &SpatialRef,
    gt: &GeoTransform,
    w: f64,
    h: f64,
) -> Result<Vec<(f64, f64)>, StacError> {
    let transform_err = |reason: String| StacError::Transform {
        id: id.into(),
        reason,
    };
    let mut src = srs.clone();
    src.set_axis_mapping_strategy(AxisMappingStrategy::TraditionalGisOrder);
    let mut dst = SpatialRef::from_epsg(4326).map_err(|e| transform_err(gdal_reason(&e)))?;
    dst.set_axis_mapping_strategy(AxisMappingStrategy::TraditionalGisOrder);
    let ct = CoordTransform::new(&src, &dst).map_err(|e| transform_err(gdal_reason(&e)))?;

    let ring = footprint_ring(gt, w, h);
    let mut xs: Vec<f64> = ring.iter().map(|p| p.0).collect();
    let mut ys: Vec<f64> = ring.iter().map(|p| p.1).collect();
    ct.transform_coords(&mut xs, &mut ys, &mut [])
        .map_err(|e| transform_err(gdal_reason(&e)))?;
    if let Some(bad) = xs
        .iter()
        .zip(&ys)
        .find(|(x, y)| !x.is_finite() || !y.is_finite())
    {
        return Err(transform_err(format!("non-finite result {bad:?}")));
    }
    if xs.windows(2).any(|p| (p[1] - p[0]).abs() > 180.0) {
        return Err(StacError::Antimeridian { id: id.into() });
    }
    let scale = 10f64.powi(LONLAT_DECIMALS);
    let round = |v: f64| (v * scale).round() / scale;
    let mut out: Vec<(f64, f64)> = xs
        .into_iter()
        .zip(ys)
        .map(|(x, y)| (round(x), round(y)))
        .collect();
    if signed_area(&out) < 0.0 {
        out.reverse();
    }
    Ok(out)
}

/// Shoelace area of a closed ring: positive when counter-clockwise (x east, y north).
fn signed_area(ring: &[(f64, f64)]) -> f64 {
    ring.windows(2)
        .map(|p| p[0].0 * p[1].1 - p[1].0 * p[0].1)
        .sum::<f64>()
        / 2.0
}

/// `[min_lon, min_lat, max_lon, max_lat]` of a ring.
fn lonlat_bbox(ring: &[(f64, f64)]) -> [f64; 4] {
    ring.iter().fold(
        [
            f64::INFINITY,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NEG_INFINITY,
        ],
        |b, &(x, y)| [b[0].min(x), b[1].min(y), b[2].max(x), b[3].max(y)],
    )
}

/// True for `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+00:00)` with plausible field values (the
/// RFC 3339 `date-time` form STAC requires, restricted to UTC as the STAC schema does).
pub fn is_rfc3339_utc(s: &str) -> bool {
    let b = s.as_bytes();
    let rest = if let Some(r) = s.strip_suffix('Z').or_else(|| s.strip_suffix('z')) {
        r
    } else if let Some(r) = s.strip_suffix("+00:00") {
        r
    } else {
        return false;
    };
    if rest.len() < 19 || !b.is_ascii() {
        return false;
    }
    let rb = rest.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<u32> {
        let part = rest.get(range)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    let seps_ok = rb[4] == b'-'
        && rb[7] == b'-'
        && (rb[10] == b'T' || rb[10] == b't')
        && rb[13] == b':'
        && rb[16] == b':';
    let frac_ok = match &rest[19..] {
        "" => true,
        f => f.len() > 1 && f.starts_with('.') && f[1..].bytes().all(|c| c.is_ascii_digit()),
    };
    let (Some(_year), Some(month), Some(day), Some(hour), Some(min), Some(sec)) = (
        digits(0..4),
        digits(5..7),
        digits(8..10),
        digits(11..13),
        digits(14..16),
        digits(17..19),
    ) else {
        return false;
    };
    seps_ok
        && frac_ok
        && (1..=12).contains(&month)
        && (1..=31).contains(&day)
        && hour <= 23
        && min <= 59
        && sec <= 60
}

/// `time` as an RFC 3339 UTC timestamp with whole seconds, e.g. `2024-05-01T10:20:30Z`
/// (for `created`/`updated` properties). Times before 1970 give the epoch.
pub fn rfc3339_utc(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Proleptic Gregorian (year, month, day) of a day count since 1970-01-01 (H. Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utm33n_wkt() -> String {
        SpatialRef::from_epsg(32633).unwrap().to_wkt().unwrap()
    }

    fn input<'a>(wkt: Option<&'a str>, gt: [f64; 6], w: usize, h: usize) -> ItemInput<'a> {
        ItemInput {
            id: "scene-1",
            width: w,
            height: h,
            geotransform: GeoTransform(gt),
            crs_wkt: wkt,
            datetime: "2024-06-01T10:20:30Z".into(),
            properties: Map::new(),
            assets: vec![asset_for("classes".into(), "classes.tif".into())],
            source_href: Some("../scenes/scene-1.tif".into()),
        }
    }

    fn ring_of(item: &Value) -> Vec<(f64, f64)> {
        item["geometry"]["coordinates"][0]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_f64().unwrap(), p[1].as_f64().unwrap()))
            .collect()
    }

    /// WGS 84 / UTM forward projection (lon/lat in degrees -> easting, northing), by the
    /// Krüger n-series to third order (Karney 2011, eq. 7-11): independent of GDAL/PROJ and
    /// sub-millimetre within a few degrees of the central meridian.
    fn utm_forward(lon: f64, lat: f64, lon0: f64) -> (f64, f64) {
        let a = 6_378_137.0_f64;
        let f: f64 = 1.0 / 298.257_223_563;
        let k0 = 0.9996;
        let n = f / (2.0 - f);
        let e = 2.0 * n.sqrt() / (1.0 + n);
        let big_a = a / (1.0 + n) * (1.0 + n * n / 4.0 + n.powi(4) / 64.0);
        let alpha = [
            n / 2.0 - 2.0 * n * n / 3.0 + 5.0 * n.powi(3) / 16.0,
            13.0 * n * n / 48.0 - 3.0 * n.powi(3) / 5.0,
            61.0 * n.powi(3) / 240.0,
        ];
        let phi = lat.to_radians();
        let dl = (lon - lon0).to_radians();
        let t = (phi.sin().atanh() - e * (e * phi.sin()).atanh()).sinh();
        let xi = t.atan2(dl.cos());
        let eta = (dl.sin() / (1.0 + t * t).sqrt()).atanh();
        let (mut x, mut y) = (eta, xi);
        for (j, al) in alpha.iter().enumerate() {
            let k = 2.0 * (j as f64 + 1.0);
            x += al * (k * xi).cos() * (k * eta).sinh();
            y += al * (k * xi).sin() * (k * eta).cosh();
        }
        (500_000.0 + k0 * big_a * x, k0 * big_a * y)
    }

    #[test]
    fn utm_footprint_lands_at_the_right_lonlat() {
        let wkt = utm33n_wkt();
        let gt = [499_980.0, 10.0, 0.0, 5_000_040.0, 0.0, -10.0];
        let item = scene_item(&input(Some(&wkt), gt, 1000, 800)).unwrap();
        let ring = ring_of(&item);
        assert_eq!(ring.len(), 4 * POINTS_PER_EDGE + 1);
        assert_eq!(ring.first(), ring.last());
        // Counter-clockwise as RFC 7946 asks.
        assert!(signed_area(&ring) > 0.0);

        // Reference corners from `gdaltransform -s_srs EPSG:32633 -t_srs OGC:CRS84` (GDAL
        // 3.6.2), matching pyproj 3.7.2 to 1e-10 degrees:
        //   499980 5000040 -> 14.9997455603619 45.1538372504278   (top-left)
        //   509980 4992040 -> 15.1268056221367 45.081752929679    (bottom-right)
        let near =
            |p: &(f64, f64), q: (f64, f64)| (p.0 - q.0).abs() < 2e-9 && (p.1 - q.1).abs() < 2e-9;
        assert!(ring
            .iter()
            .any(|p| near(p, (14.999_745_560_361_9, 45.153_837_250_427_8))));
        assert!(ring
            .iter()
            .any(|p| near(p, (15.126_805_622_136_7, 45.081_752_929_679))));

        // Every vertex, projected back with an independent UTM formula, lies on the scene
        // edge it came from (to 1 cm).
        let expected = footprint_ring(&GeoTransform(gt), 1000.0, 800.0);
        for (lon, lat) in &ring {
            let (e, n) = utm_forward(*lon, *lat, 15.0);
            let d = expected
                .iter()
                .map(|(x, y)| (x - e).hypot(y - n))
                .fold(f64::INFINITY, f64::min);
            assert!(
                d < 0.01,
                "({lon}, {lat}) -> ({e}, {n}) is {d} m off the footprint"
            );
        }

        let bbox: Vec<f64> = serde_json::from_value(item["bbox"].clone()).unwrap();
        let min_lon = ring.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
        let max_lat = ring.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
        assert_eq!(bbox.len(), 4);
        assert_eq!((bbox[0], bbox[3]), (min_lon, max_lat));
        // Densification matters: a line of constant northing is curved in lon/lat, so the
        // vertex half-way along the top edge lies about 2 m north of the straight chord
        // between the top corners.
        let find = |x: f64, y: f64| {
            *ring
                .iter()
                .find(|(lon, lat)| {
                    let (e, n) = utm_forward(*lon, *lat, 15.0);
                    (e - x).hypot(n - y) < 0.01
                })
                .unwrap()
        };
        let (tl, mid, tr) = (
            find(499_980.0, 5_000_040.0),
            find(504_980.0, 5_000_040.0),
            find(509_980.0, 5_000_040.0),
        );
        let chord_lat = tl.1 + (tr.1 - tl.1) * (mid.0 - tl.0) / (tr.0 - tl.0);
        assert!(mid.1 - chord_lat > 1e-5, "{tl:?} {mid:?} {tr:?}");

        let props = &item["properties"];
        assert_eq!(props["proj:code"], json!("EPSG:32633"));
        assert_eq!(props["proj:shape"], json!([800, 1000]));
        assert_eq!(
            props["proj:transform"],
            json!([10.0, 0.0, 499_980.0, 0.0, -10.0, 5_000_040.0])
        );
        assert_eq!(
            props["proj:bbox"],
            json!([499_980.0, 4_992_040.0, 509_980.0, 5_000_040.0])
        );
        let wkt2 = props["proj:wkt2"].as_str().unwrap();
        assert!(
            wkt2.starts_with("PROJCRS[\"WGS 84 / UTM zone 33N\""),
            "{wkt2}"
        );
        assert!(!wkt2.contains('\n'));
        assert_eq!(props["datetime"], json!("2024-06-01T10:20:30Z"));
        assert_eq!(item["stac_version"], json!("1.1.0"));
        assert_eq!(item["stac_extensions"], json!([PROJECTION_EXTENSION]));
        assert_eq!(
            item["links"],
            json!([{ "rel": "derived_from", "href": "../scenes/scene-1.tif" }])
        );
        assert_eq!(
            item["assets"]["classes"],
            json!({ "href": "classes.tif", "type": MEDIA_COG, "roles": ["data"] })
        );
    }

    #[test]
    fn central_meridian_point_matches_meridian_arc() {
        // A 1x1 km scene whose top-left corner is on the central meridian: its longitude is
        // exactly 15 degrees and its latitude solves k0 * M(lat) = northing, with M the
        // WGS 84 meridian arc (Helmert series), solved here by bisection.
        let wkt = utm33n_wkt();
        let gt = [500_000.0, 10.0, 0.0, 5_000_000.0, 0.0, -10.0];
        let item = scene_item(&input(Some(&wkt), gt, 100, 100)).unwrap();
        let a = 6_378_137.0_f64;
        let f: f64 = 1.0 / 298.257_223_563;
        let n = f / (2.0 - f);
        let arc = |phi: f64| {
            a / (1.0 + n)
                * ((1.0 + n * n / 4.0 + n.powi(4) / 64.0) * phi
                    - 1.5 * (n - n.powi(3) / 8.0) * (2.0 * phi).sin()
                    + 15.0 / 16.0 * (n * n - n.powi(4) / 4.0) * (4.0 * phi).sin()
                    - 35.0 / 48.0 * n.powi(3) * (6.0 * phi).sin()
                    + 315.0 / 512.0 * n.powi(4) * (8.0 * phi).sin())
        };
        let (mut lo, mut hi) = (0.0_f64, 1.5_f64);
        for _ in 0..200 {
            let mid = (lo + hi) / 2.0;
            if 0.9996 * arc(mid) < 5_000_000.0 {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let lat = lo.to_degrees();
        // gdaltransform gives 15, 45.153477183356 for this point.
        assert!((lat - 45.153_477_183_356).abs() < 1e-9, "{lat}");
        let ring = ring_of(&item);
        assert!(
            ring.iter()
                .any(|p| (p.0 - 15.0).abs() < 2e-9 && (p.1 - lat).abs() < 2e-9),
            "{ring:?}"
        );
    }

    #[test]
    fn rotated_transform_footprint_and_proj_fields() {
        // 10 m pixels rotated by 30 degrees: columns run east-north-east, rows south-south-east.
        let wkt = utm33n_wkt();
        let (s, c) = 30f64.to_radians().sin_cos();
        let gt = [
            500_000.0,
            10.0 * c,
            10.0 * s,
            5_000_000.0,
            10.0 * s,
            -10.0 * c,
        ];
        let (w, h) = (300usize, 200usize);
        let item = scene_item(&input(Some(&wkt), gt, w, h)).unwrap();
        let g = GeoTransform(gt);

        let props = &item["properties"];
        assert_eq!(props["proj:shape"], json!([h, w]));
        assert_eq!(
            props["proj:transform"],
            json!([gt[1], gt[2], gt[0], gt[4], gt[5], gt[3]])
        );
        let b = g.bounds(w as f64, h as f64);
        assert_eq!(props["proj:bbox"], json!([b.0, b.1, b.2, b.3]));
        // The rotated grid's bounds are those of its four corners, not of a north-up box.
        let br = g.apply(w as f64, h as f64);
        assert!((b.2 - g.apply(w as f64, 0.0).0.max(br.0)).abs() < 1e-6);

        let ring = ring_of(&item);
        assert!(signed_area(&ring) > 0.0);
        let expected = footprint_ring(&g, w as f64, h as f64);
        for (lon, lat) in &ring {
            let (e, n) = utm_forward(*lon, *lat, 15.0);
            let d = expected
                .iter()
                .map(|(x, y)| (x - e).hypot(y - n))
                .fold(f64::INFINITY, f64::min);
            assert!(
                d < 0.01,
                "({lon}, {lat}) is {d} m off the rotated footprint"
            );
        }
        // All four rotated corners are in the ring.
        for corner in [
            (0.0, 0.0),
            (w as f64, 0.0),
            (w as f64, h as f64),
            (0.0, h as f64),
        ] {
            let (x, y) = g.apply(corner.0, corner.1);
            assert!(ring.iter().any(|(lon, lat)| {
                let (e, n) = utm_forward(*lon, *lat, 15.0);
                (e - x).hypot(n - y) < 0.01
            }));
        }
    }

    #[test]
    fn geographic_scene_keeps_lon_first() {
        let wkt = SpatialRef::from_epsg(4326).unwrap().to_wkt().unwrap();
        let gt = [10.0, 0.001, 0.0, 50.0, 0.0, -0.001];
        let item = scene_item(&input(Some(&wkt), gt, 1000, 500)).unwrap();
        assert_eq!(item["bbox"], json!([10.0, 49.5, 11.0, 50.0]));
        assert_eq!(item["properties"]["proj:code"], json!("EPSG:4326"));
    }

    #[test]
    fn crs_without_authority_has_null_code() {
        let wkt = SpatialRef::from_proj4(
            "+proj=tmerc +lat_0=0 +lon_0=13.3 +k=1 +x_0=0 +y_0=0 +ellps=GRS80 +units=m +no_defs",
        )
        .unwrap()
        .to_wkt()
        .unwrap();
        let gt = [0.0, 1.0, 0.0, 5_000_000.0, 0.0, -1.0];
        let item = scene_item(&input(Some(&wkt), gt, 10, 10)).unwrap();
        assert_eq!(item["properties"]["proj:code"], Value::Null);
        assert!(item["properties"]["proj:wkt2"]
            .as_str()
            .unwrap()
            .contains("Transverse Mercator"));
    }

    #[test]
    fn no_crs_is_an_error() {
        let gt = [0.0, 1.0, 0.0, 0.0, 0.0, 1.0];
        let err = scene_item(&input(None, gt, 10, 10)).unwrap_err();
        assert_eq!(
            err,
            StacError::NoCrs {
                id: "scene-1".into()
            }
        );
        assert!(err.to_string().contains("no CRS"));
        let err = scene_item(&input(Some("  "), gt, 10, 10)).unwrap_err();
        assert!(matches!(err, StacError::NoCrs { .. }));
        let err = scene_item(&input(Some("NOT A CRS"), gt, 10, 10)).unwrap_err();
        assert!(matches!(err, StacError::Crs { .. }), "{err:?}");
    }

    #[test]
    fn antimeridian_crossing_is_refused() {
        let wkt = SpatialRef::from_epsg(4326).unwrap().to_wkt().unwrap();
        // A geographic grid is kept as is; a UTM zone 60N scene east of 180 degrees wraps.
        let utm60 = SpatialRef::from_epsg(32660).unwrap().to_wkt().unwrap();
        let gt = [600_000.0, 100.0, 0.0, 7_000_000.0, 0.0, -100.0];
        let err = scene_item(&input(Some(&utm60), gt, 1000, 100)).unwrap_err();
        assert!(matches!(err, StacError::Antimeridian { .. }), "{err:?}");
        let ok = [179.0, 0.01, 0.0, 10.0, 0.0, -0.01];
        assert!(scene_item(&input(Some(&wkt), ok, 50, 50)).is_ok());
    }

    #[test]
    fn bad_inputs_are_refused() {
        let wkt = utm33n_wkt();
        let gt = [500_000.0, 10.0, 0.0, 5_000_000.0, 0.0, -10.0];
        let mut inp = input(Some(&wkt), gt, 10, 10);
        inp.datetime = "2024-06-01 10:20:30".into();
        assert!(matches!(
            scene_item(&inp).unwrap_err(),
            StacError::Datetime { .. }
        ));
        let mut inp = input(Some(&wkt), gt, 10, 10);
        inp.properties.insert("proj:code".into(), json!("EPSG:1"));
        assert!(matches!(
            scene_item(&inp).unwrap_err(),
            StacError::Invalid { .. }
        ));
        let mut inp = input(Some(&wkt), gt, 10, 10);
        inp.assets
            .push(asset_for("classes".into(), "other.tif".into()));
        let err = scene_item(&inp).unwrap_err();
        assert!(err.to_string().contains("duplicate asset key"), "{err}");
        let flat = [500_000.0, 10.0, 0.0, 5_000_000.0, 0.0, 0.0];
        let err = scene_item(&input(Some(&wkt), flat, 10, 10)).unwrap_err();
        assert!(err.to_string().contains("degenerate geotransform"), "{err}");
        let mut inp = input(Some(&wkt), gt, 0, 10);
        inp.id = "x";
        assert!(matches!(
            scene_item(&inp).unwrap_err(),
            StacError::Invalid { .. }
        ));
    }

    #[test]
    fn extra_properties_and_titles_are_kept_and_output_is_deterministic() {
        let wkt = utm33n_wkt();
        let gt = [500_000.0, 10.0, 0.0, 5_000_000.0, 0.0, -10.0];
        let mut inp = input(Some(&wkt), gt, 64, 32);
        inp.properties
            .insert("tessera:pipeline".into(), json!("segment"));
        inp.properties
            .insert("created".into(), json!("2024-06-02T00:00:00Z"));
        let mut a = asset_for("polygons".into(), "polygons.gpkg".into());
        a.title = Some("Segments".into());
        inp.assets.push(a);
        inp.source_href = None;
        let one = serde_json::to_string(&scene_item(&inp).unwrap()).unwrap();
        let two = serde_json::to_string(&scene_item(&inp.clone()).unwrap()).unwrap();
        assert_eq!(one, two);
        let item: Value = serde_json::from_str(&one).unwrap();
        assert_eq!(item["properties"]["tessera:pipeline"], json!("segment"));
        assert_eq!(item["assets"]["polygons"]["title"], json!("Segments"));
        assert_eq!(item["links"], json!([]));
    }

    #[test]
    fn media_types_from_file_names() {
        let cases = [
            ("a.tif", MEDIA_COG, "data"),
            ("b/c.TIFF", MEDIA_COG, "data"),
            ("p.gpkg", "application/geopackage+sqlite3", "data"),
            ("p.geojson", "application/geo+json", "data"),
            ("p.fgb", "application/vnd.flatgeobuf", "data"),
            ("p.shp", "application/vnd.shp", "data"),
            ("p.shx", "application/vnd.shx", "data"),
            ("p.dbf", "application/vnd.dbf", "data"),
            ("p.prj", "text/plain", "metadata"),
            ("p.cpg", "text/plain", "metadata"),
            ("captions.jsonl", "application/x-ndjson", "data"),
            ("captions.csv", "text/csv", "data"),
            ("run.json", "application/json", "metadata"),
            ("t.parquet", "application/vnd.apache.parquet", "data"),
            ("q.png", "image/png", "data"),
            ("q.jpeg", "image/jpeg", "data"),
            ("noext", "application/octet-stream", "data"),
        ];
        for (href, media, role) in cases {
            let a = asset_for("k".into(), href.into());
            assert_eq!(
                (a.media_type, a.roles.as_slice()),
                (media, &[role][..]),
                "{href}"
            );
            assert_eq!(a.href, href);
            assert_eq!(a.title, None);
        }
    }

    #[test]
    fn rfc3339_checks_and_formatting() {
        for ok in [
            "2024-06-01T10:20:30Z",
            "2024-06-01T10:20:30.123456Z",
            "2024-06-01T10:20:30+00:00",
            "2016-12-31T23:59:60Z",
        ] {
            assert!(is_rfc3339_utc(ok), "{ok}");
        }
        for bad in [
            "2024-06-01",
            "2024-06-01T10:20:30",
            "2024-06-01T10:20:30+02:00",
            "2024-13-01T10:20:30Z",
            "2024-06-01T24:00:00Z",
            "2024-06-01T10:20:30.Z",
            "2024/06/01T10:20:30Z",
            "２０２４-06-01T10:20:30Z",
        ] {
            assert!(!is_rfc3339_utc(bad), "{bad}");
        }
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_717_237_230);
        assert_eq!(rfc3339_utc(t), "2024-06-01T10:20:30Z");
        assert_eq!(rfc3339_utc(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        // 2000-02-29 (leap day of a century leap year).
        let t = UNIX_EPOCH + std::time::Duration::from_secs(951_782_400);
        assert_eq!(rfc3339_utc(t), "2000-02-29T00:00:00Z");
        assert!(is_rfc3339_utc(&rfc3339_utc(SystemTime::now())));
    }
}
