//! Georeferenced raster outputs, written as Cloud-Optimised GeoTIFFs: the data is assembled in
//! a GDAL in-memory dataset (with nodata, colour table, class names, band descriptions) and
//! copied by the COG driver to a file that appears under its final name only when complete.

use std::path::Path;

use gdal::raster::{ColorEntry, ColorTable, PaletteInterpretation, RasterCreationOptions};
use gdal::{Dataset, DriverManager, Metadata};

use super::{CogOptions, OutputError, PendingOutput, Result};
use crate::raster::{gdal_reason, GeoTransform, Sample};

/// A categorical band's legend: class names and RGB colours, by class value.
#[derive(Clone, Debug, Default)]
pub struct Legend {
    pub names: Vec<String>,
    pub colors: Vec<[u8; 3]>,
}

/// What to write.
#[derive(Debug)]
pub struct RasterSpec<'a, T> {
    pub width: usize,
    pub height: usize,
    /// Band-sequential samples, `bands * height * width`.
    pub data: &'a [T],
    pub bands: usize,
    pub geotransform: GeoTransform,
    pub crs_wkt: Option<&'a str>,
    pub nodata: Option<f64>,
    /// Band descriptions (one per band, or empty).
    pub descriptions: &'a [String],
    /// Colour table and category names for a single-band class raster.
    pub legend: Option<&'a Legend>,
    /// Dataset metadata items.
    pub metadata: &'a [(String, String)],
    /// The user's COG creation options.
    pub options: CogOptions,
}

fn werr(path: &Path, reason: String) -> OutputError {
    OutputError::Write {
        path: path.display().to_string(),
        reason,
    }
}

/// Build the in-memory dataset for `spec`.
fn in_memory<T: Sample>(spec: &RasterSpec<'_, T>, target: &Path) -> Result<Dataset> {
    let e = |err: gdal::errors::GdalError| werr(target, gdal_reason(&err));
    let mem = DriverManager::get_driver_by_name("MEM").map_err(e)?;
    let mut ds = mem
        .create_with_band_type::<T, _>("", spec.width, spec.height, spec.bands)
        .map_err(e)?;
    ds.set_geo_transform(&spec.geotransform.0).map_err(e)?;
    if let Some(wkt) = spec.crs_wkt {
        ds.set_projection(wkt).map_err(e)?;
    }
    for (k, v) in spec.metadata {
        ds.set_metadata_item(k, v, "").map_err(e)?;
    }
    let plane = spec.width * spec.height;
    if spec.data.len() != plane * spec.bands {
        return Err(werr(
            target,
            format!(
                "{} samples for {} bands of {}x{}",
                spec.data.len(),
                spec.bands,
                spec.width,
                spec.height
            ),
        ));
    }
    for b in 0..spec.bands {
        let mut band = ds.rasterband(b + 1).map_err(e)?;
        let mut buf = gdal::raster::Buffer::new(
            (spec.width, spec.height),
            spec.data[b * plane..(b + 1) * plane].to_vec(),
        );
        band.write((0, 0), (spec.width, spec.height), &mut buf)
            .map_err(e)?;
        if let Some(nd) = spec.nodata {
            band.set_no_data_value(Some(nd)).map_err(e)?;
        }
        if let Some(d) = spec.descriptions.get(b) {
            band.set_description(d).map_err(e)?;
        }
        if let Some(legend) = spec.legend {
            let mut ct = ColorTable::new(PaletteInterpretation::Rgba);
            for (i, c) in legend.colors.iter().enumerate() {
                ct.set_color_entry(
                    i as u16,
                    &ColorEntry::rgba(c[0].into(), c[1].into(), c[2].into(), 255),
                );
            }
            band.set_color_table(&ct);
            set_category_names(&band, &legend.names).map_err(|r| werr(target, r))?;
            for (k, v) in class_items(legend) {
                band.set_metadata_item(&k, &v, "").map_err(e)?;
            }
        }
    }
    Ok(ds)
}

/// A class raster's classes as band metadata items, kept inside the TIFF (GDAL_METADATA):
/// `CLASS_<value>` = name and `CLASS_<value>_COLOR` = `#rrggbb` for every class, and
/// `CLASS_COUNT`. The TIFF colour map itself has 256 entries whatever the classes
/// (3 x 2^BitsPerSample by the TIFF format), and GDAL 3.6 keeps category names only in the
/// `.aux.xml`: these items are what a copied file still says about its classes.
pub(crate) fn class_items(legend: &Legend) -> Vec<(String, String)> {
    let mut out = vec![("CLASS_COUNT".to_string(), legend.names.len().to_string())];
    for (i, name) in legend.names.iter().enumerate() {
        out.push((format!("CLASS_{i}"), name.clone()));
        if let Some(c) = legend.colors.get(i) {
            out.push((
                format!("CLASS_{i}_COLOR"),
                format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2]),
            ));
        }
    }
    out
}

fn set_category_names(
    band: &gdal::raster::RasterBand<'_>,
    names: &[String],
) -> std::result::Result<(), String> {
    let mut list = gdal::cpl::CslStringList::new();
    for n in names {
        list.add_string(n).map_err(|e| gdal_reason(&e))?;
    }
    // SAFETY: valid band handle; GDAL copies the list.
    let rv = unsafe { gdal_sys::GDALSetRasterCategoryNames(band.c_rasterband(), list.as_ptr()) };
    if rv != 0 {
        return Err(crate::raster::last_cpl_message());
    }
    Ok(())
}

/// Write `spec` as a COG at `path` (DEFLATE, internal tiling, overviews when large enough).
///
/// # Errors
/// The target exists without `overwrite`, its directory is missing, or GDAL fails.
pub fn write_cog<T: Sample>(path: &Path, spec: &RasterSpec<'_, T>, overwrite: bool) -> Result<()> {
    crate::raster::init_gdal();
    let pending = PendingOutput::file(path, overwrite)?;
    let ds = in_memory(spec, path)?;
    let cog = DriverManager::get_driver_by_name("COG").map_err(|e| werr(path, gdal_reason(&e)))?;
    let options: RasterCreationOptions =
        gdal_cog_options::<T>(&spec.options, spec.legend.is_some())
            .parse()
            .map_err(|e: gdal::errors::GdalError| werr(path, gdal_reason(&e)))?;
    let out = ds
        .create_copy(&cog, pending.path(), &options)
        .map_err(|e| werr(path, gdal_reason(&e)))?;
    out.close().map_err(|e| werr(path, gdal_reason(&e)))?;
    pending.commit()
}

/// GDAL COG creation options for `options`: what the user gave, else DEFLATE, the predictor
/// for continuous values (none for class rasters) and 256-pixel tiles (these rasters are at
/// tile stride, small). `FLOATING_POINT` on integers becomes `STANDARD`, as in the streaming
/// writer (libtiff refuses the floating-point predictor there).
fn gdal_cog_options<T: Sample>(options: &CogOptions, classes: bool) -> String {
    let float = T::gdal_ordinal() == gdal_sys::GDALDataType::GDT_Float32
        || T::gdal_ordinal() == gdal_sys::GDALDataType::GDT_Float64;
    let compression = options.compression.unwrap_or(super::Compression::Deflate);
    let mut out = vec![format!("COMPRESS={}", compression.name())];
    if let Some(level) = options.level {
        out.push(format!("LEVEL={level}"));
    }
    if compression.takes_predictor() {
        let predictor = options.predictor.unwrap_or(if classes {
            super::Predictor::No
        } else {
            super::Predictor::Yes
        });
        out.push(format!("PREDICTOR={}", predictor.tiff_code(float)));
    }
    out.push(format!("BLOCKSIZE={}", options.block.unwrap_or(256)));
    if let Some(r) = options.overview_resampling {
        out.push(format!(
            "OVERVIEW_RESAMPLING={}",
            match r {
                super::OverviewResampling::Nearest => "NEAREST",
                super::OverviewResampling::Average => "AVERAGE",
            }
        ));
    }
    out.join(" ")
}

/// A distinct colour for class `i` of `n` (golden-angle hues, fixed lightness).
pub fn class_color(i: usize) -> [u8; 3] {
    let h = (i as f64 * 137.507_764) % 360.0;
    let (s, l) = (0.65, 0.5);
    let c = (1.0 - (2.0 * l - 1.0f64).abs()) * s;
    let x = c * (1.0 - ((h / 60.0) % 2.0 - 1.0).abs());
    let m = l - c / 2.0;
    let (r, g, b) = match (h / 60.0) as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let to = |v: f64| ((v + m) * 255.0).round().clamp(0.0, 255.0) as u8;
    [to(r), to(g), to(b)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_colors_differ() {
        let colors: Vec<_> = (0..12).map(class_color).collect();
        for i in 0..colors.len() {
            for j in i + 1..colors.len() {
                assert_ne!(colors[i], colors[j]);
            }
        }
    }

    #[test]
    fn cog_round_trip_with_legend() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("classes.tif");
        let data: Vec<u8> = vec![0, 1, 1, 255, 0, 2];
        let legend = Legend {
            names: vec!["a".into(), "b".into(), "c".into()],
            colors: (0..3).map(class_color).collect(),
        };
        let gt = GeoTransform([100.0, 10.0, 0.0, 200.0, 0.0, -10.0]);
        let wkt = gdal::spatial_ref::SpatialRef::from_epsg(32633)
            .expect("srs")
            .to_wkt()
            .expect("wkt");
        write_cog(
            &path,
            &RasterSpec {
                width: 3,
                height: 2,
                data: &data,
                bands: 1,
                geotransform: gt,
                crs_wkt: Some(&wkt),
                nodata: Some(255.0),
                descriptions: &["class".to_string()],
                legend: Some(&legend),
                metadata: &[("LABELS".into(), "a,b,c".into())],
                options: CogOptions::default(),
            },
            false,
        )
        .expect("write");
        let ds = Dataset::open(&path).expect("open");
        assert_eq!(ds.geo_transform().expect("gt"), gt.0);
        assert_eq!(ds.metadata_item("LABELS", "").as_deref(), Some("a,b,c"));
        assert_eq!(
            ds.metadata_item("LAYOUT", "IMAGE_STRUCTURE").as_deref(),
            Some("COG")
        );
        let band = ds.rasterband(1).expect("band");
        assert_eq!(band.no_data_value(), Some(255.0));
        assert!(band.color_table().is_some());
        let got = band
            .read_as::<u8>((0, 0), (3, 2), (3, 2), None)
            .expect("read");
        assert_eq!(got.data(), &data[..]);
        // The COG and, at most, its .aux.xml with the category names; no temporary files.
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.iter().all(|n| n.starts_with("classes.tif")),
            "{names:?}"
        );
    }
}
