//! Tile chips: one GeoTIFF per tile, in the source data type, with the tile's own geotransform
//! and the scene CRS, written into a directory that appears only when every chip is done.

use std::path::Path;

use gdal::raster::RasterCreationOptions;
use gdal::DriverManager;
use gdal_sys::{CPLErr, GDALRWFlag};

use super::{OutputError, PendingOutput, Result};
use crate::raster::{gdal_reason, last_cpl_message, GeoTransform, Sample};

/// Writes chips into a pending directory.
#[derive(Debug)]
pub struct ChipWriter {
    pending: PendingOutput,
    crs_wkt: Option<String>,
    nodata: Option<f64>,
    count: usize,
}

impl ChipWriter {
    /// Start writing chips into `dir`.
    ///
    /// # Errors
    /// `dir` exists (without `overwrite`) or its parent is missing or unwritable.
    pub fn create(
        dir: &Path,
        crs_wkt: Option<&str>,
        nodata: Option<f64>,
        overwrite: bool,
    ) -> Result<ChipWriter> {
        crate::raster::init_gdal();
        Ok(ChipWriter {
            pending: PendingOutput::dir(dir, overwrite)?,
            crs_wkt: crs_wkt.map(str::to_string),
            nodata,
            count: 0,
        })
    }

    fn err(&self, reason: String) -> OutputError {
        OutputError::Write {
            path: self.pending.target().display().to_string(),
            reason,
        }
    }

    /// Write one chip `<id>.tif`: `pixels` is band-sequential, `bands * size * size` samples;
    /// `valid` marks pixels inside the scene and valid. Where the source has a nodata value,
    /// invalid pixels hold it; otherwise the chip gets an internal mask.
    ///
    /// # Errors
    /// GDAL failing to create or write the file.
    pub fn write<T: Sample>(
        &mut self,
        id: &str,
        pixels: &[T],
        valid: &[u8],
        bands: usize,
        size: usize,
        geotransform: &GeoTransform,
    ) -> Result<()> {
        let path = self.pending.path().join(format!("{id}.tif"));
        let driver =
            DriverManager::get_driver_by_name("GTiff").map_err(|e| self.err(gdal_reason(&e)))?;
        let options: RasterCreationOptions = "COMPRESS=DEFLATE"
            .parse()
            .map_err(|e| self.err(gdal_reason(&e)))?;
        let mut ds = driver
            .create_with_band_type_with_options::<T, _>(&path, size, size, bands, &options)
            .map_err(|e| self.err(gdal_reason(&e)))?;
        ds.set_geo_transform(&geotransform.0)
            .map_err(|e| self.err(gdal_reason(&e)))?;
        if let Some(wkt) = &self.crs_wkt {
            ds.set_projection(wkt)
                .map_err(|e| self.err(gdal_reason(&e)))?;
        }
        let any_invalid = valid.contains(&0);
        let mut owned;
        let data: &[T] = match self.nodata {
            Some(nd) => {
                for b in 1..=bands {
                    let mut band = ds.rasterband(b).map_err(|e| self.err(gdal_reason(&e)))?;
                    band.set_no_data_value(Some(nd))
                        .map_err(|e| self.err(gdal_reason(&e)))?;
                }
                if any_invalid {
                    owned = pixels.to_vec();
                    let fill = T::from_f64(nd);
                    for band in owned.chunks_mut(size * size) {
                        for (v, &ok) in band.iter_mut().zip(valid) {
                            if ok == 0 {
                                *v = fill;
                            }
                        }
                    }
                    &owned
                } else {
                    pixels
                }
            }
            None => pixels,
        };
        let ss = std::mem::size_of::<T>() as i32;
        // SAFETY: `data` holds bands*size*size samples laid out band-sequentially, matching the
        // spacings given; the dataset was created with that many bands of type T.
        let rv = unsafe {
            gdal_sys::GDALDatasetRasterIO(
                ds.c_dataset(),
                GDALRWFlag::GF_Write,
                0,
                0,
                size as i32,
                size as i32,
                data.as_ptr() as *mut std::ffi::c_void,
                size as i32,
                size as i32,
                T::gdal_ordinal(),
                bands as i32,
                std::ptr::null_mut(),
                ss,
                ss * size as i32,
                ss * (size * size) as i32,
            )
        };
        if rv != CPLErr::CE_None {
            return Err(self.err(last_cpl_message()));
        }
        if self.nodata.is_none() && any_invalid {
            let mut band = ds.rasterband(1).map_err(|e| self.err(gdal_reason(&e)))?;
            band.create_mask_band(true)
                .map_err(|e| self.err(gdal_reason(&e)))?;
            let mask: Vec<u8> = valid
                .iter()
                .map(|&v| if v != 0 { 255 } else { 0 })
                .collect();
            let mut mask_band = band
                .open_mask_band()
                .map_err(|e| self.err(gdal_reason(&e)))?;
            let mut buf = gdal::raster::Buffer::new((size, size), mask);
            mask_band
                .write((0, 0), (size, size), &mut buf)
                .map_err(|e| self.err(gdal_reason(&e)))?;
        }
        // GTiff reports a failed flush on close (a full disk, a file size limit) only as a CPL
        // error, with close itself succeeding: check both, so a truncated chip is an error.
        // SAFETY: resets this thread's CPL error state.
        unsafe { gdal_sys::CPLErrorReset() };
        ds.close().map_err(|e| self.err(gdal_reason(&e)))?;
        // SAFETY: reads this thread's CPL error state.
        if unsafe { gdal_sys::CPLGetLastErrorType() } >= CPLErr::CE_Failure {
            return Err(self.err(last_cpl_message()));
        }
        self.count += 1;
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Move the finished directory into place.
    ///
    /// # Errors
    /// The rename failing.
    pub fn finish(self) -> Result<()> {
        self.pending.commit()
    }
}
