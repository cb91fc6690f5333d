//! Band mapping: which source bands (1-based) feed which model channels.

use std::fmt;
use std::str::FromStr;

use super::{RasterError, Result, SceneInfo};

/// An ordered list of 1-based source band indexes, e.g. `4,3,2` for a false-colour RGB.
/// A band may repeat (`1,1,1` feeds a grey scene to an RGB model).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BandMapping(Vec<usize>);

impl BandMapping {
    /// An explicit mapping. Indexes are 1-based, as in GDAL.
    pub fn new(bands: Vec<usize>) -> BandMapping {
        BandMapping(bands)
    }

    /// Every band of the scene except alpha bands.
    pub fn all_data_bands(info: &SceneInfo) -> BandMapping {
        let bands: Vec<usize> = info
            .bands
            .iter()
            .filter(|b| b.color != "Alpha")
            .map(|b| b.index)
            .collect();
        if bands.is_empty() {
            BandMapping(vec![1])
        } else {
            BandMapping(bands)
        }
    }

    /// The default feed for a model with `channels` input channels: the first `channels`
    /// data bands, or the first band repeated when the scene has fewer.
    pub fn for_channels(info: &SceneInfo, channels: usize) -> BandMapping {
        let data = Self::all_data_bands(info).0;
        if data.len() >= channels {
            BandMapping(data[..channels].to_vec())
        } else {
            BandMapping(vec![data[0]; channels])
        }
    }

    pub fn bands(&self) -> &[usize] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Check every index exists in the scene.
    ///
    /// # Errors
    /// [`RasterError::NoSuchBand`] naming the first missing band.
    pub fn validate(&self, info: &SceneInfo) -> Result<()> {
        let count = info.bands.len();
        for &band in &self.0 {
            if band == 0 || band > count {
                return Err(RasterError::NoSuchBand {
                    path: info.path.clone(),
                    band,
                    count,
                });
            }
        }
        Ok(())
    }
}

impl FromStr for BandMapping {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let mut bands = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            let band: usize = part
                .parse()
                .map_err(|_| format!("band index '{part}' is not a positive whole number"))?;
            if band == 0 {
                return Err("band indexes start at 1".into());
            }
            bands.push(band);
        }
        if bands.is_empty() {
            return Err("no bands given".into());
        }
        Ok(BandMapping(bands))
    }
}

impl fmt::Display for BandMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|b| b.to_string()).collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_band_lists() {
        assert_eq!(
            "4,3,2".parse::<BandMapping>(),
            Ok(BandMapping(vec![4, 3, 2]))
        );
        assert_eq!(
            " 1 , 1 ".parse::<BandMapping>(),
            Ok(BandMapping(vec![1, 1]))
        );
        assert!("0,1".parse::<BandMapping>().is_err());
        assert!("a".parse::<BandMapping>().is_err());
        assert!("".parse::<BandMapping>().is_err());
        assert_eq!(BandMapping(vec![4, 3, 2]).to_string(), "4,3,2");
    }
}
