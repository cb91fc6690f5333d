//! The report's pictures: a true-colour quicklook of the scene and chips of its tiles
//! (decimated GDAL reads, which use the overviews where the file has them, so memory is bounded
//! by the picture, not the scene; averaged, or sampled from a file without overviews shrunk
//! more than 4 times; a 2-98 % percentile stretch per band; JPEG through GDAL), and class
//! rasters as PNGs in their legend's colours (sampled: classes are never mixed).

use std::path::Path;

use gdal::raster::{Buffer, RasterCreationOptions, ResampleAlg};
use gdal::{Dataset, DriverManager};

use crate::raster::{gdal_reason, GeoTransform, OpenOptions, Scene};

/// The stretch of one band: value `lo` is black, `hi` white.
pub(super) type Stretch = (f64, f64);

/// The quicklook: JPEG bytes, its size, how scene pixels map onto it, and the stretch (reused
/// for the chips, so they look like the map).
pub(super) struct Quicklook {
    pub jpeg: Vec<u8>,
    pub width: usize,
    pub height: usize,
    /// Map -> quicklook pixel.
    pub to_pixel: GeoTransform,
    pub stretch: Vec<Stretch>,
    scene_to_map: GeoTransform,
}

/// The scene, open, with the bands to show (three, a single band repeated).
pub(super) struct SceneSource {
    scene: Scene,
    bands: Vec<usize>,
}

impl SceneSource {
    pub fn open(path: &str, open: &OpenOptions, bands: &[usize]) -> Result<SceneSource, String> {
        let scene = Scene::open(path, open).map_err(|e| e.to_string())?;
        let n = scene.band_count();
        let mut bands: Vec<usize> = bands
            .iter()
            .copied()
            .filter(|&b| b >= 1 && b <= n)
            .collect();
        if bands.is_empty() {
            bands = (1..=n.min(3)).collect();
        }
        while bands.len() < 3 {
            bands.push(bands[bands.len() - 1]);
        }
        bands.truncate(3);
        Ok(SceneSource { scene, bands })
    }

    pub fn width(&self) -> usize {
        self.scene.width()
    }

    pub fn height(&self) -> usize {
        self.scene.height()
    }

    /// The bands shown as red, green, blue (1-based).
    pub fn bands(&self) -> &[usize] {
        &self.bands
    }

    /// The whole scene, at most `side` pixels on its longest side.
    pub fn quicklook(&self, side: usize) -> Result<Quicklook, String> {
        let (w, h) = (self.scene.width(), self.scene.height());
        let (qw, qh) = fit(w, h, side);
        let Rgb {
            bytes,
            valid,
            stretch,
        } = self.read_rgb((0, 0, w, h), (qw, qh), None)?;
        let jpeg = encode_jpeg(&bytes, &valid, qw, qh)?;
        let scene_to_map = self.scene.geotransform();
        // quicklook pixel = scene pixel * (qw / w, qh / h)
        let inv = scene_to_map
            .invert()
            .ok_or_else(|| "a degenerate geotransform".to_string())?;
        let (sx, sy) = (qw as f64 / w as f64, qh as f64 / h as f64);
        let g = inv.0;
        let to_pixel = GeoTransform([
            g[0] * sx,
            g[1] * sx,
            g[2] * sx,
            g[3] * sy,
            g[4] * sy,
            g[5] * sy,
        ]);
        Ok(Quicklook {
            jpeg,
            width: qw,
            height: qh,
            to_pixel,
            stretch,
            scene_to_map,
        })
    }

    /// A chip of the map-coordinate `bounds`, at most `side` pixels a side, stretched as the
    /// quicklook. `None` when the bounds miss the scene.
    pub fn chip(
        &self,
        ql: &Quicklook,
        bounds: (f64, f64, f64, f64),
        side: usize,
    ) -> Result<Option<Vec<u8>>, String> {
        let inv = ql
            .scene_to_map
            .invert()
            .ok_or_else(|| "a degenerate geotransform".to_string())?;
        let corners = [
            inv.apply(bounds.0, bounds.1),
            inv.apply(bounds.2, bounds.3),
            inv.apply(bounds.0, bounds.3),
            inv.apply(bounds.2, bounds.1),
        ];
        let (w, h) = (self.scene.width() as f64, self.scene.height() as f64);
        let min = |f: fn(&(f64, f64)) -> f64| corners.iter().map(f).fold(f64::INFINITY, f64::min);
        let max =
            |f: fn(&(f64, f64)) -> f64| corners.iter().map(f).fold(f64::NEG_INFINITY, f64::max);
        // The whole tile (edge tiles reach past the scene), then the part inside the scene.
        let (fx0, fy0) = (min(|c| c.0).floor(), min(|c| c.1).floor());
        let (fx1, fy1) = (max(|c| c.0).ceil(), max(|c| c.1).ceil());
        let (x0, y0) = (fx0.max(0.0), fy0.max(0.0));
        let (x1, y1) = (fx1.min(w), fy1.min(h));
        if x1 <= x0 || y1 <= y0 {
            return Ok(None);
        }
        let (fw, fh) = ((fx1 - fx0) as usize, (fy1 - fy0) as usize);
        let (ow, oh) = fit(fw, fh, side);
        let scale = ow as f64 / fw as f64;
        // The inside part at the chip's scale, placed where it lies in the tile; the part
        // past the scene's edge stays blank, so every chip has its tile's shape.
        let (cw, ch) = ((x1 - x0) as usize, (y1 - y0) as usize);
        let (iw, ih) = (
            ((cw as f64 * scale).round() as usize).clamp(1, ow),
            ((ch as f64 * scale).round() as usize).clamp(1, oh),
        );
        let ox = (((x0 - fx0) * scale).round() as usize).min(ow - iw);
        let oy = (((y0 - fy0) * scale).round() as usize).min(oh - ih);
        let window = (x0 as usize, y0 as usize, cw, ch);
        let inside = self.read_rgb(window, (iw, ih), Some(&ql.stretch))?;
        let mut bytes = vec![0u8; ow * oh * 3];
        let mut valid = vec![false; ow * oh];
        for row in 0..ih {
            for col in 0..iw {
                let (from, to) = (row * iw + col, (oy + row) * ow + ox + col);
                valid[to] = inside.valid[from];
                bytes[to * 3..to * 3 + 3].copy_from_slice(&inside.bytes[from * 3..from * 3 + 3]);
            }
        }
        encode_jpeg(&bytes, &valid, ow, oh).map(Some)
    }

    /// RGB bytes and validity of a window, read at `size`; stretched by `stretch`, or by the
    /// window's own 2-98 % percentiles.
    fn read_rgb(
        &self,
        (x, y, w, h): (usize, usize, usize, usize),
        size: (usize, usize),
        stretch: Option<&[Stretch]>,
    ) -> Result<Rgb, String> {
        let ds = self.scene.dataset();
        let n = size.0 * size.1;
        let mut valid = vec![true; n];
        let mut planes = Vec::with_capacity(3);
        for &b in &self.bands {
            let band = ds.rasterband(b).map_err(|e| gdal_reason(&e))?;
            // Averaging reads every pixel under the picture: fine through overviews or for a
            // small reduction; a file without overviews shrunk many times is sampled instead
            // (GDAL then reads only the rows and blocks it samples).
            let shrink = (w / size.0.max(1)).max(h / size.1.max(1));
            let resampling = if band.overview_count().unwrap_or(0) > 0 || shrink <= 4 {
                ResampleAlg::Average
            } else {
                ResampleAlg::NearestNeighbour
            };
            let values = band
                .read_as::<f64>((x as isize, y as isize), (w, h), size, Some(resampling))
                .map_err(|e| gdal_reason(&e))?
                .into_shape_and_vec()
                .1;
            let nodata = band.no_data_value();
            let mask = band
                .open_mask_band()
                .and_then(|m| {
                    m.read_as::<u8>(
                        (x as isize, y as isize),
                        (w, h),
                        size,
                        Some(ResampleAlg::NearestNeighbour),
                    )
                })
                .map(|m| m.into_shape_and_vec().1)
                .ok();
            for (i, v) in values.iter().enumerate() {
                let masked = mask.as_ref().is_some_and(|m| m[i] == 0);
                if masked || !v.is_finite() || nodata.is_some_and(|nd| *v == nd) {
                    valid[i] = false;
                }
            }
            planes.push(values);
        }
        let stretch: Vec<Stretch> = match stretch {
            Some(s) => s.to_vec(),
            None => planes.iter().map(|p| percentiles(p, &valid)).collect(),
        };
        let mut rgb = vec![0u8; n * 3];
        for (c, (plane, (lo, hi))) in planes.iter().zip(&stretch).enumerate() {
            let span = (hi - lo).max(f64::EPSILON);
            for (i, v) in plane.iter().enumerate() {
                rgb[i * 3 + c] = (((v - lo) / span).clamp(0.0, 1.0) * 255.0).round() as u8;
            }
        }
        Ok(Rgb {
            bytes: rgb,
            valid,
            stretch,
        })
    }
}

/// Stretched RGB samples (interleaved), which of them are valid, and the stretch used.
struct Rgb {
    bytes: Vec<u8>,
    valid: Vec<bool>,
    stretch: Vec<Stretch>,
}

/// `(w, h)` scaled to at most `side` on the longest side (never up), at least 1 pixel.
pub(super) fn fit(w: usize, h: usize, side: usize) -> (usize, usize) {
    let long = w.max(h).max(1);
    if long <= side {
        return (w.max(1), h.max(1));
    }
    let s = side as f64 / long as f64;
    (
        ((w as f64 * s).round() as usize).max(1),
        ((h as f64 * s).round() as usize).max(1),
    )
}

/// The 2nd and 98th percentiles of the valid values (nearest rank); (0, 1) without any.
fn percentiles(values: &[f64], valid: &[bool]) -> Stretch {
    let mut v: Vec<f64> = values
        .iter()
        .zip(valid)
        .filter(|(_, &ok)| ok)
        .map(|(v, _)| *v)
        .collect();
    if v.is_empty() {
        return (0.0, 1.0);
    }
    v.sort_by(f64::total_cmp);
    let at = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    let (lo, hi) = (at(0.02), at(0.98));
    if hi > lo {
        (lo, hi)
    } else {
        (lo, lo + 1.0)
    }
}

/// RGB bytes as a JPEG (invalid pixels light grey), through GDAL's JPEG driver in memory.
fn encode_jpeg(rgb: &[u8], valid: &[bool], w: usize, h: usize) -> Result<Vec<u8>, String> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let e = |err: gdal::errors::GdalError| gdal_reason(&err);
    let mem = DriverManager::get_driver_by_name("MEM").map_err(e)?;
    let ds = mem.create_with_band_type::<u8, _>("", w, h, 3).map_err(e)?;
    for c in 0..3 {
        let plane: Vec<u8> = (0..w * h)
            .map(|i| if valid[i] { rgb[i * 3 + c] } else { 230 })
            .collect();
        let mut band = ds.rasterband(c + 1).map_err(e)?;
        band.write((0, 0), (w, h), &mut Buffer::new((w, h), plane))
            .map_err(e)?;
    }
    let jpeg = DriverManager::get_driver_by_name("JPEG").map_err(e)?;
    let name = format!(
        "/vsimem/tessera-report-{}-{}.jpg",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    );
    let options: RasterCreationOptions = "QUALITY=85".parse().map_err(e)?;
    let out = ds.create_copy(&jpeg, &name, &options).map_err(e)?;
    out.close().map_err(e)?;
    let bytes = gdal::vsi::get_vsi_mem_file_bytes_owned(&name).map_err(e);
    let _ = gdal::vsi::unlink_mem_file(format!("{name}.aux.xml"));
    bytes
}

/// A class raster as a picture, with where it lies.
pub(super) struct ClassPicture {
    pub png: Vec<u8>,
    /// The raster's geotransform and size in pixels (not the picture's).
    pub geotransform: GeoTransform,
    pub size: (usize, usize),
}

/// A class raster drawn in its legend's colours, decimated to at most `side` pixels a side
/// (nearest: class values are never mixed). `hidden` classes and nodata are transparent.
pub(super) fn class_png(
    raster: &Path,
    colors: &[[u8; 3]],
    hidden: &[u8],
    side: usize,
) -> Result<ClassPicture, String> {
    let e = |err: gdal::errors::GdalError| gdal_reason(&err);
    let ds = Dataset::open(raster).map_err(e)?;
    let (w, h) = ds.raster_size();
    let gt = GeoTransform(ds.geo_transform().unwrap_or(GeoTransform::PIXEL.0));
    let band = ds.rasterband(1).map_err(e)?;
    let nodata = band.no_data_value();
    let (ow, oh) = fit(w, h, side);
    let values = band
        .read_as::<f64>(
            (0, 0),
            (w, h),
            (ow, oh),
            Some(ResampleAlg::NearestNeighbour),
        )
        .map_err(e)?
        .into_shape_and_vec()
        .1;
    let mut rgba = vec![0u8; ow * oh * 4];
    for (i, v) in values.iter().enumerate() {
        if nodata.is_some_and(|nd| *v == nd) || !v.is_finite() || *v < 0.0 {
            continue;
        }
        let class = *v as usize;
        if class <= 255 && hidden.contains(&(class as u8)) {
            continue;
        }
        if let Some(c) = colors.get(class) {
            rgba[i * 4..i * 4 + 3].copy_from_slice(c);
            rgba[i * 4 + 3] = 255;
        }
    }
    Ok(ClassPicture {
        png: encode_png(&rgba, ow, oh)?,
        geotransform: gt,
        size: (w, h),
    })
}

/// RGBA bytes as a PNG.
fn encode_png(rgba: &[u8], w: usize, h: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w as u32, h as u32);
        enc.set_color(png::ColorType::Rgba);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(png::Compression::High);
        let mut writer = enc.write_header().map_err(|e| e.to_string())?;
        writer.write_image_data(rgba).map_err(|e| e.to_string())?;
        writer.finish().map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// Standard base64 (RFC 4648, with padding), for `data:` URIs.
pub(super) fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        s.push(A[(n >> 18) as usize & 63] as char);
        s.push(A[(n >> 12) as usize & 63] as char);
        s.push(if chunk.len() > 1 {
            A[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        s.push(if chunk.len() > 2 {
            A[n as usize & 63] as char
        } else {
            '='
        });
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        // RFC 4648 section 10.
        for (input, out) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), out);
        }
    }

    #[test]
    fn pictures_shrink_to_the_side_and_never_grow() {
        assert_eq!(fit(4000, 2000, 1024), (1024, 512));
        assert_eq!(fit(300, 200, 1024), (300, 200));
        assert_eq!(fit(5000, 3, 1024), (1024, 1));
    }
}
