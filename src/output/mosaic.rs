//! Writing a mosaic that arrives row by row: rows go straight into streaming Cloud-Optimised
//! GeoTIFFs (compressed tiles and overviews made as the rows pass, so memory does not hold the
//! scene and nothing is recompressed at the end) and into a streaming polygonizer (so the
//! polygons are ready when the last row is).

use std::path::{Path, PathBuf};

use super::cog::{CogOptions, CogSpec, CogWriter, OverviewResampling};
use super::polygonize_stream::StreamPolygonizer;
use super::{Legend, OutputError, Result};
use crate::raster::GeoTransform;
use crate::stitch::mask::{RowSink, NODATA_CLASS};

/// What a mosaic is written as.
#[derive(Debug)]
pub struct MosaicSpec<'a> {
    /// The scene the mosaic is made from (named by errors about the scene's size).
    pub source: &'a str,
    pub width: usize,
    pub height: usize,
    pub geotransform: &'a GeoTransform,
    pub crs_wkt: Option<&'a str>,
    /// Class names and colours of the class raster.
    pub legend: &'a Legend,
    /// Names of the kept probability bands (none: no probability raster).
    pub prob_bands: &'a [String],
    /// Polygonize every class but these (nodata is never polygonized); `None`: no polygons.
    pub polygons_skip: Option<&'a [u8]>,
    /// The user's COG creation options (both rasters).
    pub options: CogOptions,
}

/// Streams class rows (and optionally probability rows) into `classes.tif` (8-bit, colour
/// table, nodata 255, nearest overviews) and `probabilities.tif` (float32, NaN nodata,
/// average overviews).
pub struct MosaicWriter {
    classes: CogWriter<u8>,
    classes_path: PathBuf,
    probs: Option<CogWriter<f32>>,
    bands: usize,
    polygonizer: Option<StreamPolygonizer>,
    polygons: Vec<(u8, geo::Polygon<f64>)>,
}

impl std::fmt::Debug for MosaicWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MosaicWriter")
            .field("classes", &self.classes_path)
            .finish()
    }
}

impl MosaicWriter {
    /// Start `classes_out` (and `probs_out` when `spec` keeps probability bands).
    ///
    /// # Errors
    /// Unwritable folder, or GDAL failing to encode the georeferencing.
    pub fn create(
        classes_out: &Path,
        probs_out: &Path,
        spec: &MosaicSpec<'_>,
    ) -> Result<MosaicWriter> {
        check_row_buffers(spec)?;
        let metadata = [("TESSERA_CLASSES".to_string(), spec.legend.names.join(","))];
        let classes = CogWriter::create(
            classes_out,
            &CogSpec {
                width: spec.width,
                height: spec.height,
                bands: 1,
                geotransform: spec.geotransform,
                crs_wkt: spec.crs_wkt,
                nodata: Some(f64::from(NODATA_CLASS)),
                descriptions: &["class".to_string()],
                legend: Some(spec.legend),
                metadata: &metadata,
                resampling: OverviewResampling::Nearest,
                options: spec.options,
            },
        )?;
        let probs = if spec.prob_bands.is_empty() {
            None
        } else {
            Some(CogWriter::create(
                probs_out,
                &CogSpec {
                    width: spec.width,
                    height: spec.height,
                    bands: spec.prob_bands.len(),
                    geotransform: spec.geotransform,
                    crs_wkt: spec.crs_wkt,
                    nodata: Some(f64::NAN),
                    descriptions: spec.prob_bands,
                    legend: None,
                    metadata: &[],
                    resampling: OverviewResampling::Average,
                    options: spec.options,
                },
            )?)
        };
        let polygonizer = spec.polygons_skip.map(|skip| {
            let mut skip = skip.to_vec();
            skip.push(NODATA_CLASS);
            StreamPolygonizer::new(spec.width, *spec.geotransform, &skip)
        });
        Ok(MosaicWriter {
            classes,
            classes_path: classes_out.to_path_buf(),
            probs,
            bands: spec.prob_bands.len(),
            polygonizer,
            polygons: Vec::new(),
        })
    }

    /// Write the COGs (every row must have arrived); returns the polygons (class, polygon in
    /// map coordinates), if asked for.
    ///
    /// # Errors
    /// Missing rows or an I/O failure.
    pub fn finish(mut self) -> Result<Vec<(u8, geo::Polygon<f64>)>> {
        self.classes.finish()?;
        if let Some(p) = self.probs {
            p.finish()?;
        }
        if let Some(poly) = self.polygonizer {
            self.polygons.extend(poly.finish());
        }
        Ok(self.polygons)
    }
}

/// Refuse mosaics whose streaming buffers do not fit the memory budget: every COG level keeps
/// one row of tiles (BLOCKSIZE rows, the whole level's width) for each band, and the stitcher and
/// polygonizer keep rows of the full width too, so memory grows with the width a header
/// claims. Checked before anything is allocated.
fn check_row_buffers(spec: &MosaicSpec<'_>) -> Result<()> {
    let bytes_per_pixel = 1 + 4 * spec.prob_bands.len() as u128;
    let (mut w, mut h) = (spec.width as u128, spec.height as u128);
    let block = spec.options.block() as u128;
    let mut total = w * block.min(h) * bytes_per_pixel;
    while w > block || h > block {
        w = (w / 2).max(1);
        h = (h / 2).max(1);
        total += w * block.min(h) * bytes_per_pixel;
    }
    // Stitcher rows (scores and weights) of one block height, at least.
    total += spec.width as u128 * block * (4 + 4 * (spec.legend.names.len() as u128).max(1));
    let budget = crate::raster::memory_budget();
    if total > u128::from(budget) {
        return Err(OutputError::OverBudget {
            path: spec.source.to_string(),
            what: format!(
                "a mosaic {} pixels wide (row buffers of every overview level)",
                spec.width
            ),
            bytes: total,
            budget,
        });
    }
    Ok(())
}

impl RowSink for MosaicWriter {
    type Error = OutputError;

    fn write_rows(
        &mut self,
        _y0: usize,
        _rows: usize,
        classes: &[u8],
        probs: &[f32],
    ) -> Result<()> {
        self.classes.write_rows(classes)?;
        if let Some(poly) = &mut self.polygonizer {
            poly.push_rows(classes);
            self.polygons.extend(poly.take_finished());
        }
        if let Some(p) = &mut self.probs {
            // Keep the probability of each kept band (band 1 = the first class kept): the
            // last `bands` classes, contiguous in the band-sequential block.
            let plane = classes.len(); // rows * width
            let total = probs.len() / plane.max(1);
            let skip = total.saturating_sub(self.bands);
            p.write_rows(&probs[skip * plane..(skip + self.bands) * plane])?;
        }
        Ok(())
    }
}

/// GDAL's polygonize, the reference the streaming polygonizer is measured against (an ignored
/// benchmark test); not part of the library.
#[cfg(test)]
pub(crate) mod gdal_reference {
    use std::path::Path;

    use gdal::{Dataset, DriverManager};
    use gdal_sys::CPLErr;

    use crate::output::{OutputError, Result};
    use crate::raster::{gdal_reason, last_cpl_message};
    use crate::stitch::mask::NODATA_CLASS;

    fn werr(path: &Path, reason: String) -> OutputError {
        OutputError::Write {
            path: path.display().to_string(),
            reason,
        }
    }

    /// GDAL's polygonize of a class raster file (the reference the streaming polygonizer is
    /// measured against): polygonize the class raster at `path` (nodata excluded) into `(class, geometry)` pairs,
    /// skipping `skip` classes; polygons are simplified by `tolerance` map units (topology
    /// preserved) and dropped below `min_area` square map units.
    ///
    /// # Errors
    /// GDAL failing.
    pub(crate) fn polygonize_raster(
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
}
