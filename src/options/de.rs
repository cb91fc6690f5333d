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
