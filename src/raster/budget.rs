//! The memory budget: nothing read from a file's header (block sizes, band counts, raster
//! sizes) sizes an allocation before it is checked against it.
//!
//! The budget is `TESSERA_MEMORY_BUDGET` (bytes, or with a `K`, `M`, `G` or `T` suffix, powers
//! of 1024), 4 GiB by default. It bounds one decoded block (GDAL decodes whole blocks: a TIFF
//! whose single strip is the whole image is one block) and the tile buffers a read keeps in
//! flight.

use super::{RasterError, Result};

/// The environment variable that sets the budget.
pub const MEMORY_BUDGET_VAR: &str = "TESSERA_MEMORY_BUDGET";

const DEFAULT_BUDGET: u64 = 4 << 30;

/// The memory budget in bytes.
pub fn memory_budget() -> u64 {
    std::env::var(MEMORY_BUDGET_VAR)
        .ok()
        .and_then(|v| parse_bytes(&v))
        .unwrap_or(DEFAULT_BUDGET)
}

/// `123`, `512M`, `4G`, ... as bytes.
fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let (digits, shift) = match s.chars().last()?.to_ascii_uppercase() {
        'K' => (&s[..s.len() - 1], 10),
        'M' => (&s[..s.len() - 1], 20),
        'G' => (&s[..s.len() - 1], 30),
        'T' => (&s[..s.len() - 1], 40),
        _ => (s, 0),
    };
    let n: u64 = digits.trim().parse().ok()?;
    n.checked_mul(1u64 << shift).filter(|&b| b > 0)
}

/// Refuse `what` on `path` when it needs more than the budget.
///
/// # Errors
/// [`RasterError::OverBudget`] with both numbers.
pub(crate) fn check(path: &str, what: impl FnOnce() -> String, bytes: u128) -> Result<()> {
    let budget = memory_budget();
    if bytes > u128::from(budget) {
        return Err(RasterError::OverBudget {
            path: path.into(),
            what: what(),
            bytes,
            budget,
        });
    }
    Ok(())
}

/// Bytes of one sample of a tessera dtype name.
pub(crate) fn dtype_bytes(dtype: &str) -> u128 {
    match dtype {
        "uint8" => 1,
        "uint16" | "int16" => 2,
        "uint32" | "int32" | "float32" => 4,
        _ => 8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_parse_with_suffixes() {
        assert_eq!(parse_bytes("123"), Some(123));
        assert_eq!(parse_bytes("512M"), Some(512 << 20));
        assert_eq!(parse_bytes("4g"), Some(4 << 30));
        assert_eq!(parse_bytes("0"), None);
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(parse_bytes(""), None);
    }
}
