//! Windowed reads: a (possibly fractional) source window, resampled by GDAL to an output
//! size, for several bands at once, plus the validity of every output pixel.
//!
//! All reads go through `GDALDatasetRasterIOEx` with a floating-point window when the window
//! is fractional, so a tile at a target ground resolution maps onto the source exactly. Output
//! buffers are band-sequential (`[band][row][col]`, i.e. CHW) with caller-chosen strides, so a
//! read can land directly inside a larger padded tile or a batch.

use gdal::raster::GdalType;
use gdal_sys::{CPLErr, GDALRIOResampleAlg, GDALRWFlag, GDALRasterIOExtraArg};

use super::{check_budget, dtype_bytes, last_cpl_message, BandMapping, RasterError, Result, Scene};

/// Resampling algorithm used when the output size differs from the source window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resampling {
    Nearest,
    Bilinear,
    Cubic,
    CubicSpline,
    Lanczos,
    Average,
    Mode,
}

impl Resampling {
    fn gdal(self) -> GDALRIOResampleAlg::Type {
        match self {
            Resampling::Nearest => GDALRIOResampleAlg::GRIORA_NearestNeighbour,
            Resampling::Bilinear => GDALRIOResampleAlg::GRIORA_Bilinear,
            Resampling::Cubic => GDALRIOResampleAlg::GRIORA_Cubic,
            Resampling::CubicSpline => GDALRIOResampleAlg::GRIORA_CubicSpline,
            Resampling::Lanczos => GDALRIOResampleAlg::GRIORA_Lanczos,
            Resampling::Average => GDALRIOResampleAlg::GRIORA_Average,
            Resampling::Mode => GDALRIOResampleAlg::GRIORA_Mode,
        }
    }
}

impl crate::options::Choice for Resampling {
    const NAMES: &'static [(&'static str, Self)] = &[
        ("nearest", Resampling::Nearest),
        ("bilinear", Resampling::Bilinear),
        ("cubic", Resampling::Cubic),
        ("cubicspline", Resampling::CubicSpline),
        ("lanczos", Resampling::Lanczos),
        ("average", Resampling::Average),
        ("mode", Resampling::Mode),
    ];
}
crate::choice_from_str!(Resampling);

/// A source window (pixel coordinates, may be fractional, must lie inside the scene) and the
/// output size it is resampled to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WindowRequest {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
    pub out_w: usize,
    pub out_h: usize,
}

/// Where a read lands in the caller's buffer, in elements: element `(band, row, col)` of the
/// read goes to `offset + band * band_stride + row * line_stride + col`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    pub offset: usize,
    pub line_stride: usize,
    pub band_stride: usize,
}

/// Reads windows of mapped bands from one scene handle.
pub struct WindowReader<'a> {
    scene: &'a Scene,
    bands: Vec<i32>,
    resampling: Resampling,
    mask: MaskKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MaskKind {
    /// Every pixel is valid.
    AllValid,
    /// One mask for all bands (internal mask, alpha band): read the first band's mask.
    Shared,
    /// Per-band masks (nodata): a pixel is valid when any mapped band is valid there, as in
    /// rasterio's dataset mask.
    PerBand,
}

impl<'a> WindowReader<'a> {
    /// # Errors
    /// A band index outside the scene, or a block (what GDAL decodes at once) larger than the
    /// memory budget.
    pub fn new(scene: &'a Scene, mapping: &BandMapping, resampling: Resampling) -> Result<Self> {
        mapping.validate(scene.info())?;
        let infos: Vec<_> = mapping
            .bands()
            .iter()
            .map(|&b| &scene.info().bands[b - 1])
            .collect();
        check_blocks(scene, &infos)?;
        let mask = if infos.iter().all(|b| b.mask == "all_valid") {
            MaskKind::AllValid
        } else if infos
            .iter()
            .all(|b| b.mask == "alpha" || b.mask == "per_dataset")
        {
            MaskKind::Shared
        } else {
            MaskKind::PerBand
        };
        Ok(WindowReader {
            scene,
            bands: mapping.bands().iter().map(|&b| b as i32).collect(),
            resampling,
            mask,
        })
    }

    pub fn band_count(&self) -> usize {
        self.bands.len()
    }

    /// True when the scene says every pixel is valid (no nodata, mask or alpha).
    pub fn all_valid(&self) -> bool {
        self.mask == MaskKind::AllValid
    }

    fn read_err(&self, req: &WindowRequest, reason: String) -> RasterError {
        RasterError::Read {
            path: self.scene.path().into(),
            x: req.x,
            y: req.y,
            w: req.w,
            h: req.h,
            reason,
        }
    }

    fn check(&self, req: &WindowRequest, buf_len: usize, place: &Placement) -> Result<()> {
        let (sw, sh) = (self.scene.width() as f64, self.scene.height() as f64);
        let eps = 1e-6;
        if req.x < -eps
            || req.y < -eps
            || req.x + req.w > sw + eps
            || req.y + req.h > sh + eps
            || req.w <= 0.0
            || req.h <= 0.0
            || req.out_w == 0
            || req.out_h == 0
        {
            return Err(self.read_err(req, "window outside the raster".into()));
        }
        let last = place.offset
            + (self.bands.len().max(1) - 1) * place.band_stride
            + (req.out_h - 1) * place.line_stride
            + req.out_w;
        if last > buf_len || place.line_stride < req.out_w {
            return Err(self.read_err(req, "output buffer too small for the window".into()));
        }
        Ok(())
    }

    fn extra_arg(
        &self,
        req: &WindowRequest,
        alg: GDALRIOResampleAlg::Type,
    ) -> GDALRasterIOExtraArg {
        // SAFETY: GDALRasterIOExtraArg is a plain C struct; all-zero is its documented
        // default except nVersion, which we set. Unknown newer fields stay zero.
        let mut arg: GDALRasterIOExtraArg = unsafe { std::mem::zeroed() };
        arg.nVersion = 1;
        arg.eResampleAlg = alg;
        if !is_integral(req) {
            arg.bFloatingPointWindowValidity = 1;
            arg.dfXOff = req.x;
            arg.dfYOff = req.y;
            arg.dfXSize = req.w;
            arg.dfYSize = req.h;
        }
        arg
    }

    /// Read the mapped bands of `req` into `out` at `place`, converting to `T`.
    ///
    /// # Errors
    /// The window is outside the raster, the buffer is too small, or GDAL fails to decode
    /// (truncated or corrupt file).
    pub fn read_into<T: GdalType + Copy>(
        &self,
        req: &WindowRequest,
        out: &mut [T],
        place: &Placement,
    ) -> Result<()> {
        self.check(req, out.len(), place)?;
        let size = std::mem::size_of::<T>() as i64;
        let mut arg = self.extra_arg(req, self.resampling.gdal());
        let (x, y, w, h) = int_window(req, self.scene);
        let mut bands = self.bands.clone();
        // SAFETY: `check` proved every element the call writes lies inside `out`; the band map
        // has `bands.len()` entries; the dataset handle is owned by this thread.
        let rv = unsafe {
            gdal_sys::GDALDatasetRasterIOEx(
                self.scene.dataset().c_dataset(),
                GDALRWFlag::GF_Read,
                x,
                y,
                w,
                h,
                out.as_mut_ptr().add(place.offset).cast(),
                req.out_w as i32,
                req.out_h as i32,
                T::gdal_ordinal(),
                bands.len() as i32,
                bands.as_mut_ptr(),
                size,
                size * place.line_stride as i64,
                size * place.band_stride as i64,
                &mut arg,
            )
        };
        if rv != CPLErr::CE_None {
            return Err(self.read_err(req, last_cpl_message()));
        }
        Ok(())
    }

    /// Write the validity (1 valid, 0 not) of every output pixel of `req` into `valid` at
    /// `place` (`band_stride` is ignored). Masks are resampled with nearest neighbour.
    ///
    /// # Errors
    /// As for [`WindowReader::read_into`].
    pub fn read_valid(
        &self,
        req: &WindowRequest,
        valid: &mut [u8],
        place: &Placement,
    ) -> Result<()> {
        let one_band = Placement {
            band_stride: 0,
            ..*place
        };
        self.check(req, valid.len(), &one_band)?;
        let fill_rows = |valid: &mut [u8], v: u8| {
            for r in 0..req.out_h {
                let s = place.offset + r * place.line_stride;
                valid[s..s + req.out_w].fill(v);
            }
        };
        match self.mask {
            MaskKind::AllValid => {
                fill_rows(valid, 1);
                Ok(())
            }
            MaskKind::Shared => {
                self.read_mask(self.bands[0], req, valid, &one_band)?;
                binarize(valid, req, place);
                Ok(())
            }
            MaskKind::PerBand => {
                fill_rows(valid, 0);
                let mut tmp = vec![0u8; req.out_w * req.out_h];
                let dense = Placement {
                    offset: 0,
                    line_stride: req.out_w,
                    band_stride: 0,
                };
                for &band in &self.bands {
                    self.read_mask(band, req, &mut tmp, &dense)?;
                    for r in 0..req.out_h {
                        let s = place.offset + r * place.line_stride;
                        let dst = &mut valid[s..s + req.out_w];
                        for (d, m) in dst.iter_mut().zip(&tmp[r * req.out_w..(r + 1) * req.out_w]) {
                            *d |= u8::from(*m != 0);
                        }
                    }
                }
                Ok(())
            }
        }
    }

    fn read_mask(
        &self,
        band: i32,
        req: &WindowRequest,
        out: &mut [u8],
        place: &Placement,
    ) -> Result<()> {
        let ds = self.scene.dataset();
        let mut arg = self.extra_arg(req, GDALRIOResampleAlg::GRIORA_NearestNeighbour);
        let (x, y, w, h) = int_window(req, self.scene);
        // SAFETY: band index validated at construction; `check` bounded the writes; GDAL owns
        // the returned mask band, which lives as long as the dataset.
        let rv = unsafe {
            let band_h = gdal_sys::GDALGetRasterBand(ds.c_dataset(), band);
            let mask_h = gdal_sys::GDALGetMaskBand(band_h);
            if mask_h.is_null() {
                return Err(self.read_err(req, last_cpl_message()));
            }
            gdal_sys::GDALRasterIOEx(
                mask_h,
                GDALRWFlag::GF_Read,
                x,
                y,
                w,
                h,
                out.as_mut_ptr().add(place.offset).cast(),
                req.out_w as i32,
                req.out_h as i32,
                u8::gdal_ordinal(),
                1,
                place.line_stride as i64,
                &mut arg,
            )
        };
        if rv != CPLErr::CE_None {
            return Err(self.read_err(req, last_cpl_message()));
        }
        Ok(())
    }
}

/// Refuse scenes whose blocks do not fit the memory budget, before GDAL decodes one: GDAL
/// reads a whole block (a strip of the whole image is one block) whatever the window, and a
/// pixel-interleaved file decodes every band's part of a block together.
fn check_blocks(scene: &Scene, infos: &[&super::BandInfo]) -> Result<()> {
    use gdal::Metadata;
    let interleaved = scene
        .dataset()
        .metadata_item("INTERLEAVE", "IMAGE_STRUCTURE")
        .is_some_and(|v| v.eq_ignore_ascii_case("PIXEL"));
    let bands = scene.band_count() as u128;
    for info in infos {
        let (bw, bh) = info.block_size;
        let one = bw as u128 * bh as u128 * dtype_bytes(&info.dtype);
        let bytes = if interleaved { one * bands } else { one };
        check_budget(
            scene.path(),
            || {
                format!(
                    "band {}'s blocks of {bw}x{bh} pixels{}",
                    info.index,
                    if interleaved && bands > 1 {
                        format!(" (x {bands} interleaved bands)")
                    } else {
                        String::new()
                    }
                )
            },
            bytes,
        )?;
    }
    Ok(())
}

fn binarize(valid: &mut [u8], req: &WindowRequest, place: &Placement) {
    for r in 0..req.out_h {
        let s = place.offset + r * place.line_stride;
        for v in &mut valid[s..s + req.out_w] {
            *v = u8::from(*v != 0);
        }
    }
}

fn is_integral(req: &WindowRequest) -> bool {
    [req.x, req.y, req.w, req.h]
        .iter()
        .all(|v| v.fract() == 0.0)
}

/// The integer window GDAL also wants alongside a floating-point one: the smallest whole
/// pixel window containing it, clipped to the raster.
fn int_window(req: &WindowRequest, scene: &Scene) -> (i32, i32, i32, i32) {
    let x0 = req.x.floor().max(0.0);
    let y0 = req.y.floor().max(0.0);
    let x1 = (req.x + req.w).ceil().min(scene.width() as f64);
    let y1 = (req.y + req.h).ceil().min(scene.height() as f64);
    (
        x0 as i32,
        y0 as i32,
        ((x1 - x0) as i32).max(1),
        ((y1 - y0) as i32).max(1),
    )
}
