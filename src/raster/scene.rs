//! Opening a raster and describing it: size, bands, data types, CRS, geotransform,
//! resolution, nodata and masks, overviews, footprint.

use std::path::Path;

use gdal::raster::GdalDataType;
use gdal::spatial_ref::{AxisMappingStrategy, CoordTransform, SpatialRef};
use gdal::{Dataset, DatasetOptions, GdalOpenFlags, Metadata};
use serde::Serialize;

use super::{gdal_reason, init_gdal, GeoTransform, RasterError, Result};

/// How to open a scene.
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    /// Accept rasters without georeferencing and work in pixel coordinates
    /// (geotransform `[0, 1, 0, 0, 0, 1]`, no CRS).
    pub pixel_coords: bool,
}

/// One band of a scene.
#[derive(Clone, Debug, Serialize)]
pub struct BandInfo {
    /// 1-based band index, as GDAL numbers bands.
    pub index: usize,
    pub dtype: String,
    pub nodata: Option<f64>,
    /// How validity is known: `all_valid`, `nodata`, `alpha`, `per_dataset` (a mask shared by
    /// all bands, e.g. an internal TIFF mask) or `per_band`.
    pub mask: String,
    pub color: String,
    pub description: String,
    pub block_size: (usize, usize),
    /// Overview sizes (width, height), largest first.
    pub overviews: Vec<(usize, usize)>,
}

/// The coordinate reference system of a scene.
#[derive(Clone, Debug, Serialize)]
pub struct CrsInfo {
    pub epsg: Option<i32>,
    pub name: Option<String>,
    pub geographic: bool,
    pub linear_units: Option<String>,
    pub wkt: String,
}

/// Where a scene lies: corners in its CRS and, when the CRS is known, in WGS 84 lon/lat.
#[derive(Clone, Debug, Serialize)]
pub struct Footprint {
    /// Top-left, top-right, bottom-right, bottom-left, top-left again, in the scene CRS.
    pub corners: Vec<(f64, f64)>,
    /// (min_x, min_y, max_x, max_y) in the scene CRS.
    pub bounds: (f64, f64, f64, f64),
    /// The same corners as (lon, lat) in EPSG:4326, when the CRS allows it.
    pub lonlat: Option<Vec<(f64, f64)>>,
}

/// Everything `tessera info` reports about a scene.
#[derive(Clone, Debug, Serialize)]
pub struct SceneInfo {
    pub path: String,
    pub driver: String,
    pub width: usize,
    pub height: usize,
    pub bands: Vec<BandInfo>,
    pub crs: Option<CrsInfo>,
    pub geotransform: GeoTransform,
    /// True when the scene had no georeferencing and `--pixel-coords` was given.
    pub pixel_coords: bool,
    /// Ground size of one pixel along columns and rows, in CRS units.
    pub resolution: (f64, f64),
    /// Resolution in metres, when the CRS unit allows it (projected in metres or feet, or
    /// geographic degrees converted at the scene centre).
    pub resolution_m: Option<(f64, f64)>,
    pub footprint: Footprint,
}

/// An opened scene: one GDAL dataset handle (owned by one thread) and its description.
pub struct Scene {
    dataset: Dataset,
    info: SceneInfo,
}

impl std::fmt::Debug for Scene {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scene")
            .field("path", &self.info.path)
            .finish()
    }
}

/// True for paths GDAL resolves itself (`/vsicurl/`, `/vsis3/`, `/vsizip/`, ...): those are
/// passed through untouched instead of being checked on the local file system.
pub(crate) fn is_virtual_path(path: &str) -> bool {
    path.starts_with("/vsi") || path.contains("://")
}

/// What `path` is when it is not a regular file (links followed): "a directory", "a FIFO",
/// "a socket", "a block device", "a character device". `None` for regular files and for paths
/// that cannot be examined (opening them reports why).
pub fn special_file_kind(path: &Path) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    let t = std::fs::metadata(path).ok()?.file_type();
    if t.is_file() {
        None
    } else if t.is_dir() {
        Some("a directory")
    } else if t.is_fifo() {
        Some("a FIFO")
    } else if t.is_socket() {
        Some("a socket")
    } else if t.is_block_device() {
        Some("a block device")
    } else if t.is_char_device() {
        Some("a character device")
    } else {
        Some("a special file")
    }
}

/// Whether the user opted in to raw VRT bands (`GDAL_VRT_ENABLE_RAWRASTERBAND=YES`).
fn raw_vrt_allowed() -> bool {
    std::env::var(super::RAW_VRT_VAR).is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_uppercase().as_str(),
            "YES" | "TRUE" | "ON" | "1"
        )
    })
}

/// Most bytes of a VRT file examined for raw bands (a VRT is XML text; larger ones are not
/// examined further, GDAL's own switch still applies on GDAL >= 3.7).
const VRT_SCAN_BYTES: u64 = 16 << 20;

/// Refuse a VRT (and the local VRTs it takes sources from, a few levels deep) with a raw band
/// (`VRTRawRasterBand`), which reads any local file (`/etc/passwd`) as pixels, unless the user
/// opted in, or with a source that is a FIFO, socket or device (GDAL would block on it). GDAL 3.6 has
/// no switch for them (`GDAL_VRT_ENABLE_RAWRASTERBAND` arrived in 3.7), so the XML is examined
/// before GDAL opens the file.
fn check_vrt(file: &Path, scene: &str, depth: usize) -> Result<()> {
    use std::io::Read;
    if depth > 8 {
        return Ok(());
    }
    match special_file_kind(file) {
        None => {}
        // A source that is a FIFO would block GDAL forever.
        Some(kind) if depth > 0 && kind != "a directory" => {
            return Err(RasterError::Invalid {
                path: scene.into(),
                reason: format!(
                    "the VRT's source {} is {kind}, not a regular file",
                    file.display()
                ),
            });
        }
        Some(_) => return Ok(()),
    }
    let Ok(mut f) = std::fs::File::open(file) else {
        return Ok(());
    };
    // GDAL's VRT driver recognises a VRT by `<VRTDataset` in the file's first bytes: other
    // files (every GeoTIFF) cost one small read.
    let mut head = Vec::new();
    if (&mut f).take(4096).read_to_end(&mut head).is_err()
        || !head.windows(11).any(|w| w == b"<VRTDataset")
    {
        return Ok(());
    }
    if f.take(VRT_SCAN_BYTES).read_to_end(&mut head).is_err() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&head);
    let body = text.trim_start_matches('\u{feff}').trim_start();
    let body = match body.strip_prefix("<?xml") {
        Some(rest) => rest.split_once("?>").map_or("", |(_, r)| r).trim_start(),
        None => body,
    };
    if !body.starts_with("<VRTDataset") {
        return Ok(());
    }
    if body.contains("VRTRawRasterBand") && !raw_vrt_allowed() {
        let via = if depth == 0 {
            String::new()
        } else {
            format!(" (in its source {})", file.display())
        };
        return Err(RasterError::Invalid {
            path: scene.into(),
            reason: format!(
                "a VRT with a raw band (VRTRawRasterBand){via}, which reads any local file as pixels, is refused; set {}=YES to allow raw VRT bands",
                super::RAW_VRT_VAR
            ),
        });
    }
    let base = file.parent().unwrap_or(Path::new("."));
    let mut rest = body;
    while let Some(at) = rest.find("<SourceFilename") {
        rest = &rest[at..];
        let Some(open_end) = rest.find('>') else {
            break;
        };
        let tag = &rest[..open_end];
        let Some(close) = rest.find("</SourceFilename>") else {
            break;
        };
        let name = rest[open_end + 1..close.max(open_end + 1)]
            .trim()
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'");
        rest = &rest[close..];
        if is_virtual_path(&name) {
            continue;
        }
        let relative = tag
            .to_ascii_lowercase()
            .replace(' ', "")
            .contains("relativetovrt=\"1\"");
        let source = if relative {
            base.join(&name)
        } else {
            Path::new(&name).to_path_buf()
        };
        check_vrt(&source, scene, depth + 1)?;
    }
    Ok(())
}

impl Scene {
    /// Open `path` read-only and validate it. Local paths must be regular files (or links to
    /// one); GDAL's virtual paths (`/vsi...`) and URLs are passed through.
    ///
    /// # Errors
    /// Missing file, a directory, FIFO, socket or device, not a raster (or a corrupt header), zero size, no georeferencing without
    /// `pixel_coords`, or a degenerate geotransform.
    pub fn open(path: &str, options: &OpenOptions) -> Result<Scene> {
        init_gdal();
        if !is_virtual_path(path) && !Path::new(path).exists() {
            return Err(RasterError::NotFound { path: path.into() });
        }
        if !is_virtual_path(path) {
            if let Some(kind) = special_file_kind(Path::new(path)) {
                // Refused before GDAL opens it: opening a FIFO blocks until a writer comes.
                return Err(RasterError::Open {
                    path: path.into(),
                    reason: format!("is {kind}, not a regular file"),
                });
            }
        }
        if !is_virtual_path(path) {
            check_vrt(Path::new(path), path, 0)?;
        }
        let dataset = Dataset::open_ex(
            path,
            DatasetOptions {
                open_flags: GdalOpenFlags::GDAL_OF_RASTER
                    | GdalOpenFlags::GDAL_OF_READONLY
                    | GdalOpenFlags::GDAL_OF_VERBOSE_ERROR,
                ..Default::default()
            },
        )
        .map_err(|e| {
            let mut reason = gdal_reason(&e);
            if reason.contains("VRTRawRasterBand") {
                reason.push_str(&format!(
                    "; raw VRT bands read arbitrary local files and are off: set {}=YES to allow them",
                    super::RAW_VRT_VAR
                ));
            }
            RasterError::Open {
                path: path.into(),
                reason,
            }
        })?;
        let info = describe(path, &dataset, options)?;
        Ok(Scene { dataset, info })
    }

    pub fn info(&self) -> &SceneInfo {
        &self.info
    }

    pub fn path(&self) -> &str {
        &self.info.path
    }

    pub fn dataset(&self) -> &Dataset {
        &self.dataset
    }

    pub fn width(&self) -> usize {
        self.info.width
    }

    pub fn height(&self) -> usize {
        self.info.height
    }

    pub fn band_count(&self) -> usize {
        self.info.bands.len()
    }

    pub fn geotransform(&self) -> GeoTransform {
        self.info.geotransform
    }

    /// The CRS as WKT, or `None` for pixel-coordinate scenes.
    pub fn crs_wkt(&self) -> Option<&str> {
        self.info.crs.as_ref().map(|c| c.wkt.as_str())
    }
}

/// GDAL's own name of a band's data type (`CInt16`, `CFloat32`: the gdal crate calls every
/// complex type `Unknown`), marked when complex.
fn gdal_type_name(band: &gdal::raster::RasterBand) -> String {
    // SAFETY: the band handle is valid while `band` lives; GDAL returns a static string.
    let (name, complex) = unsafe {
        let t = gdal_sys::GDALGetRasterDataType(band.c_rasterband());
        let p = gdal_sys::GDALGetDataTypeName(t);
        let name = if p.is_null() {
            "unknown".to_string()
        } else {
            std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
        };
        (name, gdal_sys::GDALDataTypeIsComplex(t) != 0)
    };
    if complex {
        format!("{name} (complex; convert it to real bands first, e.g. amplitude)")
    } else {
        name
    }
}

fn dtype_name(t: GdalDataType) -> &'static str {
    match t {
        GdalDataType::UInt8 => "uint8",
        GdalDataType::UInt16 => "uint16",
        GdalDataType::Int16 => "int16",
        GdalDataType::UInt32 => "uint32",
        GdalDataType::Int32 => "int32",
        GdalDataType::UInt64 => "uint64",
        GdalDataType::Int64 => "int64",
        GdalDataType::Float32 => "float32",
        GdalDataType::Float64 => "float64",
        _ => "unsupported",
    }
}

fn describe(path: &str, ds: &Dataset, options: &OpenOptions) -> Result<SceneInfo> {
    let (width, height) = ds.raster_size();
    let count = ds.raster_count();
    if width == 0 || height == 0 || count == 0 {
        return Err(RasterError::Empty {
            path: path.into(),
            width,
            height,
            bands: count,
        });
    }
    let mut bands = Vec::with_capacity(count);
    for index in 1..=count {
        let band = ds.rasterband(index).map_err(|e| RasterError::Open {
            path: path.into(),
            reason: gdal_reason(&e),
        })?;
        let dtype = band.band_type();
        let name = dtype_name(dtype);
        if name == "unsupported" {
            return Err(RasterError::UnsupportedType {
                path: path.into(),
                band: index,
                dtype: gdal_type_name(&band),
            });
        }
        let flags = band.mask_flags().map_err(|e| RasterError::Open {
            path: path.into(),
            reason: gdal_reason(&e),
        })?;
        let mask = if flags.is_all_valid() {
            "all_valid"
        } else if flags.is_alpha() {
            "alpha"
        } else if flags.is_nodata() {
            "nodata"
        } else if flags.is_per_dataset() {
            "per_dataset"
        } else {
            "per_band"
        };
        let mut overviews = Vec::new();
        for i in 0..band.overview_count().unwrap_or(0).max(0) as usize {
            if let Ok(ov) = band.overview(i) {
                overviews.push(ov.size());
            }
        }
        bands.push(BandInfo {
            index,
            dtype: name.into(),
            nodata: band.no_data_value(),
            mask: mask.into(),
            color: band.color_interpretation().name(),
            description: band.description().unwrap_or_default(),
            block_size: band.block_size(),
            overviews,
        });
    }

    let gt = ds.geo_transform().ok().map(GeoTransform);
    let wkt = ds.projection();
    let georeferenced = gt.is_some() && !wkt.trim().is_empty();
    let (geotransform, crs, pixel_coords) = if georeferenced {
        let gt = gt.unwrap_or(GeoTransform::PIXEL);
        (gt, crs_info(&wkt), false)
    } else if options.pixel_coords {
        (GeoTransform::PIXEL, None, true)
    } else {
        return Err(RasterError::NoGeoreference { path: path.into() });
    };
    if geotransform.invert().is_none() {
        return Err(RasterError::DegenerateTransform {
            path: path.into(),
            gt: geotransform.0,
        });
    }

    let resolution = geotransform.pixel_size();
    let corners = geotransform.footprint(width as f64, height as f64);
    let lonlat = crs.as_ref().and_then(|c| to_lonlat(&c.wkt, &corners));
    let resolution_m = crs
        .as_ref()
        .and_then(|c| resolution_in_metres(c, &wkt, resolution, lonlat.as_deref()));
    Ok(SceneInfo {
        path: path.into(),
        driver: ds.driver().short_name(),
        width,
        height,
        bands,
        crs,
        geotransform,
        pixel_coords,
        resolution,
        resolution_m,
        footprint: Footprint {
            corners: corners.to_vec(),
            bounds: geotransform.bounds(width as f64, height as f64),
            lonlat,
        },
    })
}

fn crs_info(wkt: &str) -> Option<CrsInfo> {
    let mut srs = SpatialRef::from_wkt(wkt).ok()?;
    let mut epsg = srs.auth_code().ok();
    if epsg.is_none() && srs.auto_identify_epsg().is_ok() {
        epsg = srs.auth_code().ok();
    }
    Some(CrsInfo {
        epsg,
        name: srs.name(),
        geographic: srs.is_geographic(),
        linear_units: srs.linear_units_name(),
        wkt: wkt.to_string(),
    })
}

fn to_lonlat(wkt: &str, corners: &[(f64, f64); 5]) -> Option<Vec<(f64, f64)>> {
    let mut src = SpatialRef::from_wkt(wkt).ok()?;
    src.set_axis_mapping_strategy(AxisMappingStrategy::TraditionalGisOrder);
    let mut dst = SpatialRef::from_epsg(4326).ok()?;
    dst.set_axis_mapping_strategy(AxisMappingStrategy::TraditionalGisOrder);
    let ct = CoordTransform::new(&src, &dst).ok()?;
    let mut xs: Vec<f64> = corners.iter().map(|c| c.0).collect();
    let mut ys: Vec<f64> = corners.iter().map(|c| c.1).collect();
    let mut zs = vec![0.0; xs.len()];
    ct.transform_coords(&mut xs, &mut ys, &mut zs).ok()?;
    Some(xs.into_iter().zip(ys).collect())
}

/// Metres per pixel: linear units for projected CRSs, degrees converted at the scene centre
/// (WGS 84 ellipsoid, local radii of curvature) for geographic ones.
fn resolution_in_metres(
    crs: &CrsInfo,
    wkt: &str,
    res: (f64, f64),
    lonlat: Option<&[(f64, f64)]>,
) -> Option<(f64, f64)> {
    let srs = SpatialRef::from_wkt(wkt).ok()?;
    if crs.geographic {
        let ll = lonlat?;
        let lat = ll[..4].iter().map(|p| p.1).sum::<f64>() / 4.0;
        let (m_per_deg_lon, m_per_deg_lat) = metres_per_degree(lat);
        // Rows advance in latitude, columns in longitude for a north-up geographic grid.
        Some((res.0 * m_per_deg_lon, res.1 * m_per_deg_lat))
    } else if srs.is_projected() {
        let unit = srs.linear_units();
        (unit > 0.0).then_some((res.0 * unit, res.1 * unit))
    } else {
        None
    }
}

/// Length of one degree of longitude and of latitude at `lat_deg` on the WGS 84 ellipsoid.
pub(crate) fn metres_per_degree(lat_deg: f64) -> (f64, f64) {
    let a = 6_378_137.0_f64;
    let e2 = 6.694_379_990_14e-3_f64;
    let phi = lat_deg.to_radians();
    let s = 1.0 - e2 * phi.sin().powi(2);
    let n = a / s.sqrt(); // prime vertical radius
    let m = a * (1.0 - e2) / s.powf(1.5); // meridional radius
    let rad = std::f64::consts::PI / 180.0;
    (n * phi.cos() * rad, m * rad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metres_per_degree_matches_known_values() {
        let (lon0, lat0) = metres_per_degree(0.0);
        assert!((lon0 - 111_319.49).abs() < 0.1, "{lon0}");
        assert!((lat0 - 110_574.3).abs() < 0.5, "{lat0}");
        let (lon60, _) = metres_per_degree(60.0);
        assert!((lon60 - 55_799.98).abs() < 1.0, "{lon60}");
    }

    #[test]
    fn virtual_paths_are_recognised() {
        assert!(is_virtual_path("/vsicurl/https://example.com/a.tif"));
        assert!(is_virtual_path("/vsizip/a.zip/b.tif"));
        assert!(!is_virtual_path("data/a.tif"));
    }
}
