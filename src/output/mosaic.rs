//! Writing a mosaic that arrives row by row: rows go straight into a striped GeoTIFF on disk
//! (so memory does not hold the scene), which is then copied to a Cloud-Optimised GeoTIFF with
//! overviews and polygonized.

use std::path::{Path, PathBuf};

use gdal::raster::RasterCreationOptions;
use gdal::{Dataset, DriverManager, Metadata};
use gdal_sys::{CPLErr, GDALRWFlag};

use super::{Legend, OutputError, Result};
use crate::raster::{gdal_reason, last_cpl_message, GeoTransform};
use crate::stitch::mask::{RowSink, NODATA_CLASS};

fn werr(path: &Path, reason: String) -> OutputError {
    OutputError::Write {
        path: path.display().to_string(),
        reason,
    }
}

/// Streams class rows (and optionally probability rows) into intermediate GeoTIFFs.
pub struct MosaicWriter {
    classes: Dataset,
    classes_path: PathBuf,
    probs: Option<(Dataset, PathBuf)>,
    width: usize,
    bands: usize,
}

impl std::fmt::Debug for MosaicWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MosaicWriter")
            .field("classes", &self.classes_path)
            .finish()
    }
}

impl MosaicWriter {
    /// Create the intermediates in `dir` for a `width x height` mosaic; `prob_bands` > 0 also
    /// keeps that many probability bands.
    ///
    /// # Errors
    /// GDAL failing to create the files.
    pub fn create(
        dir: &Path,
        width: usize,
        height: usize,
        gt: &GeoTransform,
        crs: Option<&str>,
        prob_bands: usize,
    ) -> Result<MosaicWriter> {
        crate::raster::init_gdal();
        let driver =
            DriverManager::get_driver_by_name("GTiff").map_err(|e| werr(dir, gdal_reason(&e)))?;
        let opts: RasterCreationOptions = "COMPRESS=DEFLATE BIGTIFF=IF_SAFER"
            .parse()
            .map_err(|e: gdal::errors::GdalError| werr(dir, gdal_reason(&e)))?;
        let classes_path = dir.join(".classes.stream.tif");
        let mut classes = driver
            .create_with_band_type_with_options::<u8, _>(&classes_path, width, height, 1, &opts)
            .map_err(|e| werr(&classes_path, gdal_reason(&e)))?;
        classes
            .set_geo_transform(&gt.0)
            .map_err(|e| werr(&classes_path, gdal_reason(&e)))?;
        if let Some(wkt) = crs {
            classes
                .set_projection(wkt)
                .map_err(|e| werr(&classes_path, gdal_reason(&e)))?;
        }
        classes
            .rasterband(1)
            .and_then(|mut b| b.set_no_data_value(Some(f64::from(NODATA_CLASS))))
            .map_err(|e| werr(&classes_path, gdal_reason(&e)))?;
        let probs = if prob_bands > 0 {
            let p = dir.join(".probabilities.stream.tif");
            let mut ds = driver
                .create_with_band_type_with_options::<f32, _>(&p, width, height, prob_bands, &opts)
                .map_err(|e| werr(&p, gdal_reason(&e)))?;
            ds.set_geo_transform(&gt.0)
                .map_err(|e| werr(&p, gdal_reason(&e)))?;
            if let Some(wkt) = crs {
                ds.set_projection(wkt)
                    .map_err(|e| werr(&p, gdal_reason(&e)))?;
            }
            for b in 1..=prob_bands {
                ds.rasterband(b)
                    .and_then(|mut band| band.set_no_data_value(Some(f64::NAN)))
                    .map_err(|e| werr(&p, gdal_reason(&e)))?;
            }
            Some((ds, p))
        } else {
            None
        };
        Ok(MosaicWriter {
            classes,
            classes_path,
            probs,
            width,
            bands: prob_bands,
        })
    }

    /// Close the intermediates and write the final COGs: `classes_out` (with the legend and
    /// overviews) and `probs_out` when probabilities were kept. While the COGs are written,
    /// `alongside` runs on another thread with the finished class raster's intermediate path
    /// (polygonizing it: both only read it). Returns that path, still present (the caller
    /// removes it), and what `alongside` returned.
    ///
    /// # Errors
    /// GDAL failing.
    pub fn finish<T: Send>(
        self,
        classes_out: &Path,
        probs_out: Option<&Path>,
        legend: &Legend,
        band_names: &[String],
        alongside: impl FnOnce(&Path) -> T + Send,
    ) -> Result<(PathBuf, T)> {
        let MosaicWriter {
            classes,
            classes_path,
            probs,
            ..
        } = self;
        classes
            .close()
            .map_err(|e| werr(&classes_path, gdal_reason(&e)))?;
        let mut src = Dataset::open_ex(
            &classes_path,
            gdal::DatasetOptions {
                open_flags: gdal::GdalOpenFlags::GDAL_OF_UPDATE
                    | gdal::GdalOpenFlags::GDAL_OF_RASTER,
                ..Default::default()
            },
        )
        .map_err(|e| werr(&classes_path, gdal_reason(&e)))?;
        {
            let mut band = src
                .rasterband(1)
                .map_err(|e| werr(&classes_path, gdal_reason(&e)))?;
            let mut ct = gdal::raster::ColorTable::new(gdal::raster::PaletteInterpretation::Rgba);
            for (i, c) in legend.colors.iter().enumerate() {
                ct.set_color_entry(
                    i as u16,
                    &gdal::raster::ColorEntry::rgba(c[0].into(), c[1].into(), c[2].into(), 255),
                );
            }
            band.set_color_table(&ct);
            band.set_description("class")
                .map_err(|e| werr(&classes_path, gdal_reason(&e)))?;
        }
        src.set_metadata_item("TESSERA_CLASSES", &legend.names.join(","), "")
            .map_err(|e| werr(&classes_path, gdal_reason(&e)))?;
        // Closed, so the other thread reads a complete file.
        drop(src);
        let src = Dataset::open(&classes_path).map_err(|e| werr(&classes_path, gdal_reason(&e)))?;
        let stream = classes_path.as_path();
        let (written, other) = std::thread::scope(|s| {
            let other = s.spawn(|| alongside(stream));
            let written = (|| -> Result<()> {
                cog_copy(&src, classes_out, "NEAREST")?;
                if let (Some((ds, path)), Some(out)) = (probs, probs_out) {
                    for (i, name) in band_names.iter().enumerate() {
                        ds.rasterband(i + 1)
                            .and_then(|mut b| b.set_description(name))
                            .map_err(|e| werr(&path, gdal_reason(&e)))?;
                    }
                    cog_copy(&ds, out, "AVERAGE")?;
                    drop(ds);
                    let _ = std::fs::remove_file(&path);
                }
                Ok(())
            })();
            (written, other.join())
        });
        drop(src);
        written?;
        let other =
            other.map_err(|_| werr(&classes_path, "the polygonizing thread panicked".into()))?;
        Ok((classes_path, other))
    }
}

fn cog_copy(src: &Dataset, out: &Path, resampling: &str) -> Result<()> {
    let cog = DriverManager::get_driver_by_name("COG").map_err(|e| werr(out, gdal_reason(&e)))?;
    let opts: RasterCreationOptions = format!("COMPRESS=DEFLATE OVERVIEWS=AUTO RESAMPLING={resampling} BIGTIFF=IF_SAFER NUM_THREADS=ALL_CPUS")
        .parse()
        .map_err(|e: gdal::errors::GdalError| werr(out, gdal_reason(&e)))?;
    let ds = src
        .create_copy(&cog, out, &opts)
        .map_err(|e| werr(out, gdal_reason(&e)))?;
    ds.close().map_err(|e| werr(out, gdal_reason(&e)))
}

fn write_block<T: gdal::raster::GdalType>(
    ds: &Dataset,
    path: &Path,
    band: usize,
    y0: usize,
    rows: usize,
    width: usize,
    data: &[T],
) -> Result<()> {
    // SAFETY: `data` holds `rows * width` samples of T; the band exists.
    let rv = unsafe {
        let b = gdal_sys::GDALGetRasterBand(ds.c_dataset(), band as i32);
        gdal_sys::GDALRasterIO(
            b,
            GDALRWFlag::GF_Write,
            0,
            y0 as i32,
            width as i32,
            rows as i32,
            data.as_ptr() as *mut std::ffi::c_void,
            width as i32,
            rows as i32,
            T::gdal_ordinal(),
            0,
            0,
        )
    };
    if rv != CPLErr::CE_None {
        return Err(werr(path, last_cpl_message()));
    }
    Ok(())
}

impl RowSink for MosaicWriter {
    type Error = OutputError;

    fn write_rows(&mut self, y0: usize, rows: usize, classes: &[u8], probs: &[f32]) -> Result<()> {
        write_block(
            &self.classes,
            &self.classes_path,
            1,
            y0,
            rows,
            self.width,
            classes,
        )?;
        if let Some((ds, path)) = &self.probs {
            let plane = rows * self.width;
            // Keep the probability of each kept band (band 1 = the first class kept).
            let total = probs.len() / plane.max(1);
            let skip = total.saturating_sub(self.bands);
            for b in 0..self.bands {
                let c = skip + b;
                write_block(
                    ds,
                    path,
                    b + 1,
                    y0,
                    rows,
                    self.width,
                    &probs[c * plane..(c + 1) * plane],
                )?;
            }
        }
        Ok(())
    }
}

/// Polygonize the class raster at `path` (nodata excluded) into `(class, geometry)` pairs,
/// skipping `skip` classes; polygons are simplified by `tolerance` map units (topology
/// preserved) and dropped below `min_area` square map units.
///
/// # Errors
/// GDAL failing.
pub fn polygonize_raster(
    path: &Path,
    skip: &[u8],
    tolerance: f64,
    min_area: f64,
) -> Result<Vec<(u8, gdal::vector::Geometry)>> {
    use gdal::vector::{LayerAccess, LayerOptions, OGRFieldType, OGRwkbGeometryType};
    let src = Dataset::open(path).map_err(|e| werr(path, gdal_reason(&e)))?;
    let band = src.rasterband(1).map_err(|e| werr(path, gdal_reason(&e)))?;
    let driver = DriverManager::get_driver_by_name("Memory")
        .or_else(|_| DriverManager::get_driver_by_name("MEM"))
        .map_err(|e| werr(path, gdal_reason(&e)))?;
    let mut vds = driver
        .create_vector_only("")
        .map_err(|e| werr(path, gdal_reason(&e)))?;
    let layer = vds
        .create_layer(LayerOptions {
            name: "p",
            srs: None,
            ty: OGRwkbGeometryType::wkbPolygon,
            options: None,
        })
        .map_err(|e| werr(path, gdal_reason(&e)))?;
    layer
        .create_defn_fields(&[("class", OGRFieldType::OFTInteger)])
        .map_err(|e| werr(path, gdal_reason(&e)))?;
    // When class 0 (background) is not wanted, the class band is its own mask (0 = ignore):
    // GDAL then never traces the background, which is most of a typical mask. Nodata (255)
    // regions are traced and dropped below.
    let skip_background = skip.contains(&0);
    // SAFETY: valid band, its mask band and the layer, all owned above.
    let rv = unsafe {
        let b = band.c_rasterband();
        let mask = if skip_background {
            b
        } else {
            gdal_sys::GDALGetMaskBand(b)
        };
        gdal_sys::GDALPolygonize(
            b,
            mask,
            layer.c_layer(),
            0,
            std::ptr::null_mut(),
            None,
            std::ptr::null_mut(),
        )
    };
    if rv != CPLErr::CE_None {
        return Err(werr(path, last_cpl_message()));
    }
    let mut layer = vds.layer(0).map_err(|e| werr(path, gdal_reason(&e)))?;
    let mut out = Vec::new();
    for f in layer.features() {
        let class = f
            .field_as_integer(0)
            .map_err(|e| werr(path, gdal_reason(&e)))?
            .unwrap_or(-1);
        let Ok(class) = u8::try_from(class) else {
            continue;
        };
        if skip.contains(&class) || class == NODATA_CLASS {
            continue;
        }
        let Some(g) = f.geometry() else { continue };
        let g = if tolerance > 0.0 {
            g.simplify_preserve_topology(tolerance)
                .map_err(|e| werr(path, gdal_reason(&e)))?
        } else {
            g.clone()
        };
        if g.area() < min_area || g.is_empty() {
            continue;
        }
        out.push((class, g));
    }
    Ok(out)
}
