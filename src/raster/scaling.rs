//! Per-band scaling of raw sample values to a model's input range `[0, 1]`.
//!
//! A [`ScalingSpec`] is what the user asked for (`auto`, `minmax`, `percentile:2,98`,
//! `range:0,3000`, `none`); [`Scaling`] is the resolved, per-band linear map. Statistics come
//! from GDAL's approximate statistics and histograms, which read overviews when the file has
//! them, so resolving a spec costs a small fraction of a full read.

use std::str::FromStr;

use gdal::raster::GdalDataType;
use serde::Serialize;

use super::{
    gdal_reason, BandMapping, Placement, RasterError, Resampling, Result, Scene, WindowReader,
    WindowRequest,
};

/// What the user asked for.
#[derive(Clone, Debug, PartialEq)]
pub enum ScalingSpec {
    /// `range:0,255` for 8-bit bands, `percentile:2,98` for anything else.
    Auto,
    /// Raw values, unscaled.
    None,
    /// Each band's own minimum and maximum (approximate statistics).
    MinMax,
    /// Each band's `lo`-th and `hi`-th percentiles (of a decimated view, nodata excluded).
    Percentile(f64, f64),
    /// A fixed range for every band, e.g. `range:0,3000` for Sentinel-2 reflectance.
    Range(f64, f64),
    /// One fixed range per mapped band: `range:0,3000;0,3000;0,4000`.
    Ranges(Vec<(f64, f64)>),
}

impl FromStr for ScalingSpec {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let s = s.trim();
        let (kind, args) = match s.split_once(':') {
            Some((k, a)) => (k, Some(a)),
            None => (s, None),
        };
        let pair = |a: &str| -> std::result::Result<(f64, f64), String> {
            let mut it = a.split(',').map(|v| v.trim().parse::<f64>());
            match (it.next(), it.next(), it.next()) {
                (Some(Ok(lo)), Some(Ok(hi)), None) if lo.is_finite() && hi.is_finite() => {
                    Ok((lo, hi))
                }
                _ => Err(format!("'{a}' is not a pair of numbers LO,HI")),
            }
        };
        match (kind, args) {
            ("auto", None) => Ok(ScalingSpec::Auto),
            ("none", None) => Ok(ScalingSpec::None),
            ("minmax", None) => Ok(ScalingSpec::MinMax),
            ("percentile", Some(a)) => {
                let (lo, hi) = pair(a)?;
                if !(0.0..=100.0).contains(&lo) || !(0.0..=100.0).contains(&hi) || lo >= hi {
                    return Err(format!("percentiles must satisfy 0 <= LO < HI <= 100, got {a}"));
                }
                Ok(ScalingSpec::Percentile(lo, hi))
            }
            ("range", Some(a)) => {
                let ranges = a.split(';').map(pair).collect::<std::result::Result<Vec<_>, _>>()?;
                if let Some((lo, hi)) = ranges.iter().find(|(lo, hi)| lo >= hi) {
                    return Err(format!("range {lo},{hi} is empty: LO must be below HI"));
                }
                match ranges.as_slice() {
                    [(lo, hi)] => Ok(ScalingSpec::Range(*lo, *hi)),
                    _ => Ok(ScalingSpec::Ranges(ranges)),
                }
            }
            _ => Err(format!(
                "unknown scaling '{s}': use auto, none, minmax, percentile:LO,HI or range:LO,HI[;LO,HI...]"
            )),
        }
    }
}

/// The linear map of one band: `(v - lo) / (hi - lo)`, clamped to `[0, 1]`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct BandScale {
    pub band: usize,
    pub lo: f64,
    pub hi: f64,
}

/// Resolved scaling for every mapped band (`None` leaves values raw).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Scaling {
    pub bands: Option<Vec<BandScale>>,
}

impl Scaling {
    /// Leave values as read.
    pub fn identity() -> Scaling {
        Scaling { bands: None }
    }

    /// Resolve `spec` for the mapped bands of `scene`.
    ///
    /// # Errors
    /// A per-band range list whose length differs from the band mapping, or GDAL failing to
    /// compute statistics.
    pub fn resolve(spec: &ScalingSpec, scene: &Scene, mapping: &BandMapping) -> Result<Scaling> {
        let path = scene.path();
        let mut out = Vec::with_capacity(mapping.len());
        for (i, &band) in mapping.bands().iter().enumerate() {
            let (lo, hi) = match spec {
                ScalingSpec::None => return Ok(Scaling::identity()),
                ScalingSpec::Range(lo, hi) => (*lo, *hi),
                ScalingSpec::Ranges(r) => {
                    if r.len() != mapping.len() {
                        return Err(RasterError::Invalid {
                            path: path.into(),
                            reason: format!(
                                "{} scaling ranges given for {} mapped bands",
                                r.len(),
                                mapping.len()
                            ),
                        });
                    }
                    r[i]
                }
                ScalingSpec::MinMax => min_max(scene, band)?,
                ScalingSpec::Percentile(p_lo, p_hi) => percentiles(scene, band, *p_lo, *p_hi)?,
                ScalingSpec::Auto => {
                    if band_type(scene, band)? == GdalDataType::UInt8 {
                        (0.0, 255.0)
                    } else {
                        percentiles(scene, band, 2.0, 98.0)?
                    }
                }
            };
            out.push(BandScale { band, lo, hi });
        }
        Ok(Scaling { bands: Some(out) })
    }

    /// Whether every band maps 0..255 to 0..1 (8-bit data under `auto`): bytes read as they are
    /// are then exactly the scaled values times 255.
    pub fn is_byte_range(&self) -> bool {
        self.bands
            .as_ref()
            .is_some_and(|b| b.iter().all(|s| s.lo == 0.0 && s.hi == 255.0))
    }

    /// Scale channel `channel` (position in the band mapping) of `values` in place.
    pub fn apply(&self, channel: usize, values: &mut [f32]) {
        let Some(bands) = &self.bands else { return };
        let BandScale { lo, hi, .. } = bands[channel];
        let span = hi - lo;
        if span <= 0.0 {
            values.iter_mut().for_each(|v| *v = 0.0);
            return;
        }
        let (lo, inv) = (lo as f32, (1.0 / span) as f32);
        for v in values.iter_mut() {
            *v = ((*v - lo) * inv).clamp(0.0, 1.0);
        }
    }
}

fn band_type(scene: &Scene, band: usize) -> Result<GdalDataType> {
    let b = scene
        .dataset()
        .rasterband(band)
        .map_err(|e| stats_err(scene, band, &e))?;
    Ok(b.band_type())
}

fn stats_err(scene: &Scene, band: usize, e: &gdal::errors::GdalError) -> RasterError {
    RasterError::Statistics {
        path: scene.path().into(),
        band,
        reason: gdal_reason(e),
    }
}

fn min_max(scene: &Scene, band: usize) -> Result<(f64, f64)> {
    let b = scene
        .dataset()
        .rasterband(band)
        .map_err(|e| stats_err(scene, band, &e))?;
    let mm = b
        .compute_raster_min_max(true)
        .map_err(|e| stats_err(scene, band, &e))?;
    Ok((mm.min, mm.max))
}

/// Longest side of the decimated view statistics are computed from.
const STATS_VIEW: usize = 1024;

/// Percentiles of the valid pixels of a decimated view of the band (at most
/// [`STATS_VIEW`] pixels on a side, nearest neighbour, so overviews are used where present).
/// Computed here rather than with GDAL's histogram, which would leave an `.aux.xml` file next
/// to the user's scene.
fn percentiles(scene: &Scene, band: usize, p_lo: f64, p_hi: f64) -> Result<(f64, f64)> {
    let (w, h) = (scene.width(), scene.height());
    let k = (w.max(h) as f64 / STATS_VIEW as f64).max(1.0);
    let (out_w, out_h) = (
        ((w as f64 / k).round() as usize).max(1),
        ((h as f64 / k).round() as usize).max(1),
    );
    let reader = WindowReader::new(scene, &BandMapping::new(vec![band]), Resampling::Nearest)?;
    let req = WindowRequest {
        x: 0.0,
        y: 0.0,
        w: w as f64,
        h: h as f64,
        out_w,
        out_h,
    };
    let place = Placement {
        offset: 0,
        line_stride: out_w,
        band_stride: out_w * out_h,
    };
    let mut values = vec![0f64; out_w * out_h];
    reader.read_into(&req, &mut values, &place)?;
    let mut valid = vec![0u8; out_w * out_h];
    reader.read_valid(&req, &mut valid, &place)?;
    let mut kept: Vec<f64> = values
        .into_iter()
        .zip(valid)
        .filter(|(v, ok)| *ok != 0 && v.is_finite())
        .map(|(v, _)| v)
        .collect();
    if kept.is_empty() {
        return Err(RasterError::Statistics {
            path: scene.path().into(),
            band,
            reason: "no valid pixels".into(),
        });
    }
    kept.sort_by(f64::total_cmp);
    Ok((percentile(&kept, p_lo), percentile(&kept, p_hi)))
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        assert_eq!("auto".parse(), Ok(ScalingSpec::Auto));
        assert_eq!("none".parse(), Ok(ScalingSpec::None));
        assert_eq!("minmax".parse(), Ok(ScalingSpec::MinMax));
        assert_eq!(
            "percentile:2,98".parse(),
            Ok(ScalingSpec::Percentile(2.0, 98.0))
        );
        assert_eq!("range:0,3000".parse(), Ok(ScalingSpec::Range(0.0, 3000.0)));
        assert_eq!(
            "range:0,1;0,2".parse(),
            Ok(ScalingSpec::Ranges(vec![(0.0, 1.0), (0.0, 2.0)]))
        );
        assert!("range:3,1".parse::<ScalingSpec>().is_err());
        assert!("percentile:2".parse::<ScalingSpec>().is_err());
        assert!("percentile:50,20".parse::<ScalingSpec>().is_err());
        assert!("stretch".parse::<ScalingSpec>().is_err());
    }

    #[test]
    fn applies_linear_map_with_clamping() {
        let s = Scaling {
            bands: Some(vec![BandScale {
                band: 1,
                lo: 100.0,
                hi: 300.0,
            }]),
        };
        let mut v = [0.0, 100.0, 200.0, 300.0, 1000.0];
        s.apply(0, &mut v);
        assert_eq!(v, [0.0, 0.0, 0.5, 1.0, 1.0]);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 2.0), 2.0);
        assert_eq!(percentile(&v, 98.0), 98.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[5.0], 50.0), 5.0);
    }

    #[test]
    fn identity_leaves_values() {
        let mut v = [3.0, -2.0];
        Scaling::identity().apply(0, &mut v);
        assert_eq!(v, [3.0, -2.0]);
    }
}
