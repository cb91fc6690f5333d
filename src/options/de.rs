//! Reading option values from pipeline files with the parsers the command line uses.

use std::str::FromStr;

use serde::{Deserialize, Deserializer};

use crate::raster::BandMapping;

/// An optional value written as a string and parsed with its `FromStr` (the command line's
/// parser), so that both places accept and reject the same spellings.
pub(super) fn from_str<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err = String>,
{
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) => s.parse().map(Some).map_err(serde::de::Error::custom),
    }
}

/// Bands as a list of 1-based band numbers (`bands = [4, 3, 2]`).
pub(super) fn bands<'de, D>(d: D) -> Result<Option<BandMapping>, D::Error>
where
    D: Deserializer<'de>,
{
    match Option::<Vec<usize>>::deserialize(d)? {
        None => Ok(None),
        Some(b) if b.is_empty() || b.contains(&0) => Err(serde::de::Error::custom(
            "bands are 1-based source band numbers",
        )),
        Some(b) => Ok(Some(BandMapping::new(b))),
    }
}

/// A model package's square input size (`[preprocess] size`): positive (checked by the
/// families) and at most [`super::MAX_TILE_SIZE`], so that no buffer sized from it can
/// overflow or exhaust memory.
pub(crate) fn input_size<'de, D>(d: D) -> Result<usize, D::Error>
where
    D: Deserializer<'de>,
{
    let size = u64::deserialize(d)?;
    match usize::try_from(size) {
        Ok(s) if s <= super::MAX_TILE_SIZE => Ok(s),
        _ => Err(serde::de::Error::custom(format!(
            "input size {size} is larger than the limit of {} pixels",
            super::MAX_TILE_SIZE
        ))),
    }
}
