//! What the STAC Item says about each output file, read from the file itself with GDAL/OGR.
//!
//! [`describe`] turns a scene's output files into [`Asset`]s:
//! - a title (`"landcover: class raster"`, `"landcover: class raster, QGIS style"`);
//! - sidecars (`.aux.xml`, `.qml`, world files, `.prj`, ...) as `metadata` assets titled after
//!   the file they accompany;
//! - rasters: `raster:bands` (data type, nodata, scale/offset, unit per band) and, for bands
//!   with category names or a colour table, `classification:classes` (value, name, title,
//!   colour) exactly as the file's legend; `proj:*` on the asset when its grid or CRS differs
//!   from the scene's (classify's tile-stride rasters, say);
//! - vectors: `proj:code`, `proj:wkt2` and `proj:bbox` (the scene footprint in the layer's CRS)
//!   when the layer CRS differs from the scene's (RFC 7946 GeoJSON is in EPSG:4326).
//!
//! Asset-level `proj:*` fields override the Item's (Projection extension v2.0.0), so an
//! asset on the scene grid carries none.

use std::path::Path;

use gdal::spatial_ref::{AxisMappingStrategy, CoordTransform, SpatialRef};
use gdal::vector::LayerAccess;
use gdal::{Dataset, DatasetOptions, GdalOpenFlags};
use serde_json::{json, Map, Value};

use super::stac::{asset_for, crs_code, export_wkt2, footprint_ring, sidecar_of, Asset};
use crate::raster::{gdal_reason, init_gdal, GeoTransform};

/// The scene an Item describes: its grid and CRS.
pub struct SceneGrid {
    pub width: usize,
    pub height: usize,
    pub geotransform: GeoTransform,
    pub srs: SpatialRef,
}

impl SceneGrid {
    /// The grid of `info`; `None` for scenes without a CRS.
    pub fn of(info: &crate::raster::SceneInfo) -> Option<SceneGrid> {
        init_gdal();
        let srs = SpatialRef::from_wkt(&info.crs.as_ref()?.wkt).ok()?;
        Some(SceneGrid {
            width: info.width,
            height: info.height,
            geotransform: info.geotransform,
            srs,
        })
    }
}

/// Raster files read for `raster:bands` and the grid.
const RASTER_EXTENSIONS: [&str; 2] = ["tif", "tiff"];
/// Vector files read for their layer CRS.
const VECTOR_EXTENSIONS: [&str; 4] = ["geojson", "gpkg", "fgb", "shp"];

/// The assets of the files `files` (paths relative to `dir`, also the asset keys), in order.
///
/// # Errors
/// A raster or vector output GDAL cannot open or whose CRS it cannot export, named by path.
pub fn describe(dir: &Path, files: &[String], scene: &SceneGrid) -> Result<Vec<Asset>, String> {
    init_gdal();
    files
        .iter()
        .map(|rel| {
            let mut asset = asset_for(rel.clone(), rel.clone());
            asset.title = Some(title(rel, files));
            let path = dir.join(rel);
            let ext = extension(rel);
            let named = |e: String| format!("{}: {e}", path.display());
            if sidecar_of(rel).is_none() {
                if RASTER_EXTENSIONS.contains(&ext.as_str()) {
                    asset.fields = raster_fields(&path, scene).map_err(named)?;
                } else if VECTOR_EXTENSIONS.contains(&ext.as_str()) {
                    asset.fields = vector_fields(&path, scene).map_err(named)?;
                }
            }
            Ok(asset)
        })
        .collect()
}

fn extension(rel: &str) -> String {
    Path::new(rel)
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default()
}

/// What a data file is, from its stem and extension.
fn what(rel: &str) -> String {
    let name = Path::new(rel)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| rel.to_string());
    let stem = Path::new(rel)
        .file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let raster = RASTER_EXTENSIONS.contains(&extension(rel).as_str());
    let known = match (stem.as_str(), raster) {
        ("classes", true) => "class raster",
        ("probabilities", true) => "class probabilities",
        ("instances", true) => "instance raster",
        ("instances", false) => "instance polygons",
        ("labels", false) => "class polygons",
        ("tiles", false) => "tiles",
        ("polygons", false) => "segment polygons",
        ("detections", false) => "detections",
        ("captions", false) => "captions",
        ("answers", false) => "answers",
        ("report", false) if extension(rel) == "html" => "report",
        _ => return name,
    };
    known.to_string()
}

/// The title of `rel`: `"STAGE: what"` for a file in a stage folder, with the sidecar's kind
/// appended for sidecars (`"landcover: class raster, QGIS style"`).
fn title(rel: &str, files: &[String]) -> String {
    let stage = Path::new(rel)
        .parent()
        .map(|p| p.display().to_string())
        .filter(|p| !p.is_empty());
    let body = match sidecar_of(rel) {
        Some((ext, _, kind)) => {
            let base = &rel[..rel.len() - ext.len() - 1];
            // The file it accompanies: `classes.tif` of `classes.tif.aux.xml`, or a data file
            // with the same stem (`labels.geojson` of `labels.qml`).
            let main = files
                .iter()
                .find(|f| f.as_str() == base)
                .or_else(|| {
                    files.iter().find(|f| {
                        sidecar_of(f).is_none()
                            && Path::new(f.as_str()).with_extension("") == Path::new(base)
                    })
                })
                .map(|f| what(f))
                .unwrap_or_else(|| what(base));
            format!("{main}, {kind}")
        }
        None => match extension(rel).as_str() {
            // The other two mandatory files of a Shapefile: data, named after the .shp.
            "shx" => format!("{}, shapefile index", what(rel)),
            "dbf" => format!("{}, shapefile attributes", what(rel)),
            _ => what(rel),
        },
    };
    match stage {
        Some(s) => format!("{s}: {body}"),
        None => body,
    }
}

fn open(path: &Path, flags: GdalOpenFlags) -> Result<Dataset, String> {
    Dataset::open_ex(
        path,
        DatasetOptions {
            open_flags: flags | GdalOpenFlags::GDAL_OF_READONLY,
            ..DatasetOptions::default()
        },
    )
    .map_err(|e| format!("cannot open: {}", gdal_reason(&e)))
}

/// `raster:bands`, classification and differing `proj:*` of a raster.
fn raster_fields(path: &Path, scene: &SceneGrid) -> Result<Map<String, Value>, String> {
    let ds = open(path, GdalOpenFlags::GDAL_OF_RASTER)?;
    let mut fields = Map::new();
    let mut bands = Vec::new();
    for i in 1..=ds.raster_count() {
        let band = ds
            .rasterband(i)
            .map_err(|e| format!("band {i}: {}", gdal_reason(&e)))?;
        let mut b = Map::new();
        b.insert(
            "data_type".into(),
            json!(stac_data_type(&band.band_type().name())),
        );
        if let Some(nd) = band.no_data_value() {
            b.insert("nodata".into(), number(nd));
        }
        if let Some(scale) = band.scale().filter(|s| *s != 1.0) {
            b.insert("scale".into(), number(scale));
        }
        if let Some(offset) = band.offset().filter(|o| *o != 0.0) {
            b.insert("offset".into(), number(offset));
        }
        let unit = band.unit();
        if !unit.is_empty() {
            b.insert("unit".into(), json!(unit));
        }
        let classes = classes_of(&band);
        if !classes.is_empty() {
            b.insert("classification:classes".into(), Value::Array(classes));
        }
        bands.push(Value::Object(b));
    }
    if !bands.is_empty() {
        fields.insert("raster:bands".into(), Value::Array(bands));
    }

    let (w, h) = ds.raster_size();
    let gt = GeoTransform(ds.geo_transform().map_err(|e| gdal_reason(&e))?);
    let srs = ds.spatial_ref().ok();
    let same_crs = srs.as_ref().is_some_and(|s| *s == scene.srs);
    let same_grid = (w, h) == (scene.width, scene.height)
        && gt
            .0
            .iter()
            .zip(scene.geotransform.0.iter())
            .all(|(a, b)| (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0));
    if !same_crs {
        if let Some(srs) = &srs {
            crs_fields(srs, &mut fields)?;
        }
    }
    if !same_crs || !same_grid {
        let g = gt.0;
        let b = gt.bounds(w as f64, h as f64);
        fields.insert("proj:shape".into(), json!([h, w]));
        fields.insert(
            "proj:transform".into(),
            json!([g[1], g[2], g[0], g[4], g[5], g[3]]),
        );
        fields.insert("proj:bbox".into(), json!([b.0, b.1, b.2, b.3]));
    }
    Ok(fields)
}

/// `proj:code` and `proj:wkt2` of `srs`.
fn crs_fields(srs: &SpatialRef, fields: &mut Map<String, Value>) -> Result<(), String> {
    let wkt = srs.to_wkt().map_err(|e| gdal_reason(&e))?;
    fields.insert("proj:code".into(), json!(crs_code(&wkt, srs)));
    fields.insert("proj:wkt2".into(), json!(export_wkt2(srs)?));
    Ok(())
}

/// `proj:*` of a vector file whose (first) layer's CRS differs from the scene's: its code,
/// WKT2 and the scene footprint's bounds in that CRS (the area the layer covers, empty or not).
fn vector_fields(path: &Path, scene: &SceneGrid) -> Result<Map<String, Value>, String> {
    let mut fields = Map::new();
    let sniffed = if extension(&path.display().to_string()) == "geojson" {
        geojson_crs(path)?
    } else {
        None
    };
    let srs = match sniffed {
        Some(srs) => srs,
        None => {
            let ds = open(path, GdalOpenFlags::GDAL_OF_VECTOR)?;
            let Some(srs) = ds.layer(0).ok().and_then(|l| l.spatial_ref()) else {
                return Ok(fields);
            };
            srs
        }
    };
    if srs == scene.srs {
        return Ok(fields);
    }
    crs_fields(&srs, &mut fields)?;
    let mut from = scene.srs.clone();
    from.set_axis_mapping_strategy(AxisMappingStrategy::TraditionalGisOrder);
    let mut to = srs.clone();
    to.set_axis_mapping_strategy(AxisMappingStrategy::TraditionalGisOrder);
    let ct = CoordTransform::new(&from, &to).map_err(|e| gdal_reason(&e))?;
    let ring = footprint_ring(&scene.geotransform, scene.width as f64, scene.height as f64);
    let mut xs: Vec<f64> = ring.iter().map(|p| p.0).collect();
    let mut ys: Vec<f64> = ring.iter().map(|p| p.1).collect();
    ct.transform_coords(&mut xs, &mut ys, &mut [])
        .map_err(|e| format!("scene footprint to the layer CRS: {}", gdal_reason(&e)))?;
    let fold = |v: &[f64], f: fn(f64, f64) -> f64, init: f64| v.iter().copied().fold(init, f);
    fields.insert(
        "proj:bbox".into(),
        json!([
            fold(&xs, f64::min, f64::INFINITY),
            fold(&ys, f64::min, f64::INFINITY),
            fold(&xs, f64::max, f64::NEG_INFINITY),
            fold(&ys, f64::max, f64::NEG_INFINITY)
        ]),
    );
    Ok(fields)
}

/// The CRS of a GeoJSON file from its head, without parsing the whole file (OGR reads all of
/// it to open it): no `crs` member before `"features"` is WGS 84 lon/lat (RFC 7946, and the
/// 2008 format's default), a named `crs` member is that CRS. `None` when the head does not
/// say (the caller opens the file with OGR then).
fn geojson_crs(path: &Path) -> Result<Option<SpatialRef>, String> {
    use std::io::Read;
    let mut head = Vec::with_capacity(1 << 16);
    std::fs::File::open(path)
        .and_then(|f| f.take(1 << 16).read_to_end(&mut head))
        .map_err(|e| format!("cannot read: {e}"))?;
    let head = String::from_utf8_lossy(&head);
    let Some(features) = head.find("\"features\"") else {
        return Ok(None);
    };
    let top = &head[..features];
    let Some(crs) = top.find("\"crs\"") else {
        let mut wgs84 = SpatialRef::from_epsg(4326).map_err(|e| gdal_reason(&e))?;
        wgs84.set_axis_mapping_strategy(AxisMappingStrategy::TraditionalGisOrder);
        return Ok(Some(wgs84));
    };
    let rest = &top[crs..];
    // The first `"name": "..."` member (not the `"type": "name"` value before it).
    let name = rest
        .match_indices("\"name\"")
        .find_map(|(i, _)| rest[i + 6..].trim_start().strip_prefix(':'))
        .and_then(|r| r.trim_start().strip_prefix('"'))
        .and_then(|r| r.split_once('"'))
        .map(|(name, _)| name);
    Ok(name.and_then(|n| SpatialRef::from_definition(n).ok()))
}

/// The Raster extension's name of a GDAL data type.
fn stac_data_type(gdal: &str) -> &'static str {
    match gdal {
        "Byte" => "uint8",
        "Int8" => "int8",
        "UInt16" => "uint16",
        "Int16" => "int16",
        "UInt32" => "uint32",
        "Int32" => "int32",
        "UInt64" => "uint64",
        "Int64" => "int64",
        "Float16" => "float16",
        "Float32" => "float32",
        "Float64" => "float64",
        "CInt16" => "cint16",
        "CInt32" => "cint32",
        "CFloat32" => "cfloat32",
        "CFloat64" => "cfloat64",
        _ => "other",
    }
}

/// A JSON number (integral values as integers), or `"nan"`, `"inf"`, `"-inf"` as the Raster
/// extension writes them.
fn number(v: f64) -> Value {
    if v.is_nan() {
        json!("nan")
    } else if v.is_infinite() {
        json!(if v > 0.0 { "inf" } else { "-inf" })
    } else if v.fract() == 0.0 && v.abs() < 9.0e15 {
        json!(v as i64)
    } else {
        json!(v)
    }
}

/// The band's legend as `classification:classes`: one class per non-empty category name
/// (value = its index), with the colour table's colour; a band with a colour table but no
/// names gets one class per colour-table entry when the table has fewer than 256 entries
/// (a table of exactly its classes), named `class-N`.
fn classes_of(band: &gdal::raster::RasterBand) -> Vec<Value> {
    let names = category_names(band);
    let table = band.color_table();
    let colour = |i: usize| {
        table
            .as_ref()
            .and_then(|t| (i < t.entry_count()).then(|| t.entry_as_rgb(i)).flatten())
            .map(|c| {
                format!(
                    "{:02X}{:02X}{:02X}",
                    c.r.clamp(0, 255),
                    c.g.clamp(0, 255),
                    c.b.clamp(0, 255)
                )
            })
    };
    let values: Vec<(usize, String)> = if names.iter().any(|n| !n.is_empty()) {
        names
            .into_iter()
            .enumerate()
            .filter(|(_, n)| !n.is_empty())
            .collect()
    } else {
        match &table {
            Some(t) if t.entry_count() < 256 => (0..t.entry_count())
                .map(|i| (i, format!("class-{i}")))
                .collect(),
            _ => Vec::new(),
        }
    };
    let nodata = band.no_data_value();
    values
        .into_iter()
        .map(|(i, title)| {
            let mut c = Map::new();
            c.insert("value".into(), json!(i));
            c.insert("name".into(), json!(class_name(&title, i)));
            c.insert("title".into(), json!(title));
            if let Some(hex) = colour(i) {
                c.insert("color_hint".into(), json!(hex));
            }
            if nodata == Some(i as f64) {
                c.insert("nodata".into(), json!(true));
            }
            Value::Object(c)
        })
        .collect()
}

/// A class name as the Classification extension requires (`^[0-9A-Za-z-_]+$`): the title
/// with every other character as '_', or `class-N` when nothing is left.
fn class_name(title: &str, value: usize) -> String {
    let name: String = title
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() {
        format!("class-{value}")
    } else {
        name
    }
}

/// The band's category names (GDALGetRasterCategoryNames), empty when it has none.
fn category_names(band: &gdal::raster::RasterBand) -> Vec<String> {
    let mut names = Vec::new();
    // SAFETY: `band` is a live GDALRasterBandH; the returned list is NULL or a
    // NULL-terminated array of NUL-terminated strings owned by the band, which outlives this
    // loop and is only read.
    unsafe {
        let list = gdal_sys::GDALGetRasterCategoryNames(band.c_rasterband());
        if list.is_null() {
            return names;
        }
        let mut i = 0;
        loop {
            let p = *list.add(i);
            if p.is_null() {
                break;
            }
            names.push(std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned());
            i += 1;
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_name_the_stage_and_what_a_file_is() {
        let files: Vec<String> = [
            "landcover/classes.tif",
            "landcover/classes.tif.aux.xml",
            "landcover/classes.qml",
            "landcover/labels.geojson",
            "landcover/labels.qml",
            "masks/polygons.shp",
            "masks/polygons.prj",
            "masks/polygons.dbf",
            "masks/polygons.qix",
            "other.bin",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let t = |rel: &str| title(rel, &files);
        assert_eq!(t("landcover/classes.tif"), "landcover: class raster");
        assert_eq!(
            t("landcover/classes.tif.aux.xml"),
            "landcover: class raster, GDAL metadata"
        );
        assert_eq!(
            t("landcover/classes.qml"),
            "landcover: class raster, QGIS style"
        );
        assert_eq!(
            t("landcover/labels.qml"),
            "landcover: class polygons, QGIS style"
        );
        assert_eq!(
            t("masks/polygons.prj"),
            "masks: segment polygons, projection"
        );
        assert_eq!(
            t("masks/polygons.dbf"),
            "masks: segment polygons, shapefile attributes"
        );
        assert_eq!(
            t("masks/polygons.qix"),
            "masks: segment polygons, spatial index"
        );
        assert_eq!(t("other.bin"), "other.bin");
        assert_eq!(t("report.html"), "report");
    }

    fn utm18() -> SceneGrid {
        SceneGrid {
            width: 100,
            height: 50,
            geotransform: GeoTransform([441_730.0, 10.0, 0.0, 4_173_460.0, 0.0, -10.0]),
            srs: SpatialRef::from_epsg(32618).expect("EPSG:32618"),
        }
    }

    #[test]
    fn geojson_crs_from_the_head_agrees_with_ogr() {
        init_gdal();
        let dir = tempfile::tempdir().expect("tmp");
        let feature = r#"{"type":"Feature","properties":{"crs":"x"},"geometry":{"type":"Point","coordinates":[1,2]}}"#;
        for (name, crs) in [
            ("rfc7946.geojson", ""),
            (
                "native.geojson",
                r#""crs": { "type": "name", "properties": { "name": "urn:ogc:def:crs:EPSG::32618" } },"#,
            ),
        ] {
            let p = dir.path().join(name);
            let text = format!(
                "{{\"type\":\"FeatureCollection\",\"name\":\"l\",{crs}\"features\":[{feature}]}}"
            );
            std::fs::write(&p, text).expect("write");
            let sniffed = geojson_crs(&p).expect("read").expect("a CRS");
            let ds = open(&p, GdalOpenFlags::GDAL_OF_VECTOR).expect("open");
            let ogr = ds.layer(0).expect("layer").spatial_ref().expect("srs");
            assert!(sniffed == ogr, "{name}");
            let f = vector_fields(&p, &utm18()).expect("fields");
            if crs.is_empty() {
                assert_eq!(f["proj:code"], json!("EPSG:4326"));
                assert!(f["proj:wkt2"]
                    .as_str()
                    .is_some_and(|w| w.starts_with("GEOGCRS")));
            } else {
                assert!(f.is_empty(), "the scene's CRS: nothing to override: {f:?}");
            }
        }
    }

    #[test]
    fn a_raster_in_another_crs_and_grid_carries_its_own() {
        init_gdal();
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("other.tif");
        let driver = gdal::DriverManager::get_driver_by_name("GTiff").expect("GTiff");
        {
            let mut ds = driver
                .create_with_band_type::<u16, _>(&p, 30, 20, 2)
                .expect("create");
            ds.set_geo_transform(&[-8_420_000.0, 30.0, 0.0, 4_540_000.0, 0.0, -30.0])
                .expect("gt");
            ds.set_spatial_ref(&SpatialRef::from_epsg(3857).expect("3857"))
                .expect("srs");
            let mut band = ds.rasterband(2).expect("band");
            band.set_no_data_value(Some(0.0)).expect("nodata");
            band.set_scale(0.0001).expect("scale");
        }
        let f = raster_fields(&p, &utm18()).expect("fields");
        assert_eq!(f["proj:code"], json!("EPSG:3857"));
        assert!(f["proj:wkt2"]
            .as_str()
            .is_some_and(|w| w.contains("Pseudo-Mercator")));
        assert_eq!(f["proj:shape"], json!([20, 30]));
        assert_eq!(
            f["proj:transform"],
            json!([30.0, 0.0, -8_420_000.0, 0.0, -30.0, 4_540_000.0])
        );
        assert_eq!(
            f["proj:bbox"],
            json!([-8_420_000.0, 4_539_400.0, -8_419_100.0, 4_540_000.0])
        );
        assert_eq!(
            f["raster:bands"],
            // GeoTIFF keeps one nodata value for all bands (GDAL applies it to both).
            json!([{ "data_type": "uint16", "nodata": 0 }, { "data_type": "uint16", "nodata": 0, "scale": 0.0001 }])
        );
    }

    #[test]
    fn names_types_and_numbers_follow_the_extensions() {
        assert_eq!(class_name("built-up area", 3), "built-up_area");
        assert_eq!(class_name("  ", 3), "class-3");
        assert_eq!(stac_data_type("Byte"), "uint8");
        assert_eq!(stac_data_type("Float32"), "float32");
        assert_eq!(stac_data_type("Unknown"), "other");
        assert_eq!(number(255.0), json!(255));
        assert_eq!(number(0.5), json!(0.5));
        assert_eq!(number(f64::NAN), json!("nan"));
        assert_eq!(number(f64::NEG_INFINITY), json!("-inf"));
    }
}
