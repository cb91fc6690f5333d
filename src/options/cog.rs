//! `--co KEY=VALUE` (pipeline files: `co = ["KEY=VALUE", ...]` in `[output]`): the COG
//! creation options GDAL users pass to `gdal_translate -of COG`, checked against GDAL's own
//! list (the COG driver's `DMD_CREATIONOPTIONLIST`) and against what tessera's writers make.

use crate::output::{CogOptions, Compression, OverviewResampling, Predictor};

use super::InvalidOption;

/// The creation options tessera takes, in GDAL's spelling.
pub const COG_KEYS: [&str; 5] = [
    "COMPRESS",
    "LEVEL",
    "PREDICTOR",
    "BLOCKSIZE",
    "OVERVIEW_RESAMPLING",
];

/// GDAL's overview resampling names (`gdaladdo -r`, `OVERVIEW_RESAMPLING`); tessera makes the
/// first two.
const GDAL_RESAMPLINGS: [&str; 11] = [
    "NEAREST",
    "AVERAGE",
    "BILINEAR",
    "CUBIC",
    "CUBICSPLINE",
    "LANCZOS",
    "MODE",
    "RMS",
    "GAUSS",
    "AVERAGE_MAGPHASE",
    "NONE",
];

/// The largest tile edge: a strip of tiles of every overview level is held in memory.
pub const MAX_BLOCKSIZE: usize = 4096;

/// One `<Option>` of GDAL's creation option list.
#[derive(Debug, Default)]
struct GdalOption {
    name: String,
    min: Option<i64>,
    /// `<Value>` texts and their `alias` attributes, upper case.
    values: Vec<String>,
}

/// The COG driver's creation options, from GDAL itself, read once (GDAL 3.6 builds the list
/// on first request, which is not safe from two threads at once).
fn gdal_cog_options() -> Result<&'static [GdalOption], String> {
    static LIST: std::sync::OnceLock<Result<Vec<GdalOption>, String>> = std::sync::OnceLock::new();
    LIST.get_or_init(read_gdal_cog_options)
        .as_deref()
        .map_err(Clone::clone)
}

fn read_gdal_cog_options() -> Result<Vec<GdalOption>, String> {
    crate::raster::init_gdal();
    let driver = gdal::DriverManager::get_driver_by_name("COG")
        .map_err(|e| format!("GDAL has no COG driver: {e}"))?;
    let xml = gdal::Metadata::metadata_item(&driver, "DMD_CREATIONOPTIONLIST", "")
        .ok_or("GDAL's COG driver lists no creation options")?;
    let doc = roxmltree::Document::parse(&xml)
        .map_err(|e| format!("GDAL's COG creation option list does not parse: {e}"))?;
    Ok(doc
        .descendants()
        .filter(|n| n.has_tag_name("Option"))
        .map(|n| GdalOption {
            name: n.attribute("name").unwrap_or_default().to_ascii_uppercase(),
            min: n.attribute("min").and_then(|m| m.trim().parse().ok()),
            values: n
                .children()
                .filter(|v| v.has_tag_name("Value"))
                .flat_map(|v| {
                    let text = v.text().unwrap_or_default().trim().to_ascii_uppercase();
                    std::iter::once(text)
                        .chain(v.attribute("alias").map(|a| a.trim().to_ascii_uppercase()))
                })
                .collect(),
        })
        .collect())
}

/// Parse and check `--co` items (`KEY=VALUE`, keys and values in any case).
///
/// # Errors
/// The first bad item, under the key `co`: not `KEY=VALUE`, a key given twice, a key that is
/// not a COG creation option of GDAL's or one tessera does not take, a value outside GDAL's
/// list or outside what tessera's writers make, a level outside the compression's range.
pub fn parse_cog_options(items: &[String]) -> Result<CogOptions, InvalidOption> {
    let bad = |item: &str, why: String| InvalidOption::new("co", format!("{item}: {why}"));
    let mut opts = CogOptions::default();
    if items.is_empty() {
        return Ok(opts);
    }
    let gdal = gdal_cog_options().map_err(|e| InvalidOption::new("co", e))?;
    let mut seen: Vec<String> = Vec::new();
    let mut level: Option<(&str, i32)> = None;
    let mut predictor_item: Option<&str> = None;
    for item in items {
        let Some((key, value)) = item.split_once('=') else {
            return Err(bad(item, "expected KEY=VALUE (e.g. COMPRESS=ZSTD)".into()));
        };
        let (key, value) = (key.trim().to_ascii_uppercase(), value.trim());
        if seen.contains(&key) {
            return Err(bad(item, format!("{key} is given twice")));
        }
        seen.push(key.clone());
        let Some(spec) = gdal.iter().find(|o| o.name == key) else {
            return Err(bad(
                item,
                format!(
                    "{key} is not a creation option of GDAL's COG driver (tessera takes {})",
                    COG_KEYS.join(", ")
                ),
            ));
        };
        if !COG_KEYS.contains(&key.as_str()) {
            return Err(bad(
                item,
                format!(
                    "{key} is a GDAL COG option tessera does not take (it takes {})",
                    COG_KEYS.join(", ")
                ),
            ));
        }
        let upper = value.to_ascii_uppercase();
        if !spec.values.is_empty() && !spec.values.contains(&upper) {
            return Err(bad(
                item,
                format!(
                    "'{value}' is not one of GDAL's {key} values ({})",
                    spec.values.join(", ")
                ),
            ));
        }
        match key.as_str() {
            "COMPRESS" => {
                let Some(c) = Compression::from_name(&upper) else {
                    let why = if matches!(upper.as_str(), "JPEG" | "WEBP" | "JXL") {
                        "is lossy: it would change class values and model outputs"
                    } else {
                        "is not written by tessera's COG writers"
                    };
                    return Err(bad(
                        item,
                        format!(
                            "{upper} {why} (tessera writes the lossless {})",
                            supported_compressions(gdal)
                        ),
                    ));
                };
                if !c.available() {
                    return Err(bad(item, format!("this GDAL has no {upper} compressor")));
                }
                opts.compression = Some(c);
            }
            "LEVEL" => {
                let n = parse_int(value).ok_or_else(|| bad(item, "must be an integer".into()))?;
                level = Some((item, n as i32));
            }
            "PREDICTOR" => {
                opts.predictor = Predictor::from_name(&upper);
                if opts.predictor.is_none() {
                    return Err(bad(item, format!("'{value}' is not a predictor")));
                }
                predictor_item = Some(item);
            }
            "BLOCKSIZE" => {
                let n = parse_int(value).ok_or_else(|| bad(item, "must be an integer".into()))?;
                let min = spec.min.unwrap_or(16);
                if n < min || n > MAX_BLOCKSIZE as i64 || n % 16 != 0 {
                    return Err(bad(
                        item,
                        format!(
                            "must be a multiple of 16 (TIFF tiles) from {min} (GDAL's minimum) to {MAX_BLOCKSIZE}, got {n}"
                        ),
                    ));
                }
                opts.block = Some(n as usize);
            }
            "OVERVIEW_RESAMPLING" => {
                opts.overview_resampling = Some(match upper.as_str() {
                    "NEAREST" => OverviewResampling::Nearest,
                    "AVERAGE" => OverviewResampling::Average,
                    other if GDAL_RESAMPLINGS.contains(&other) => {
                        return Err(bad(
                            item,
                            format!("tessera's streaming COG writer makes NEAREST and AVERAGE overviews, not {other}"),
                        ))
                    }
                    _ => {
                        return Err(bad(
                            item,
                            format!(
                                "'{value}' is not a GDAL overview resampling ({})",
                                GDAL_RESAMPLINGS.join(", ")
                            ),
                        ))
                    }
                });
            }
            _ => {}
        }
    }
    let compression = opts.compression.unwrap_or(Compression::Deflate);
    if let Some((item, n)) = level {
        let Some((lo, hi, _)) = compression.levels() else {
            return Err(bad(
                item,
                format!(
                    "LEVEL applies to DEFLATE, ZSTD and LZMA, not COMPRESS={}",
                    compression.name()
                ),
            ));
        };
        if !(lo..=hi).contains(&n) {
            return Err(bad(
                item,
                format!(
                    "{} levels go from {lo} to {hi}, got {n}",
                    compression.name()
                ),
            ));
        }
        opts.level = Some(n);
    }
    if let Some(item) = predictor_item {
        if !compression.takes_predictor() && opts.predictor != Some(Predictor::No) {
            return Err(bad(
                item,
                "a predictor needs a compression (COMPRESS=NONE)".into(),
            ));
        }
    }
    Ok(opts)
}

fn parse_int(s: &str) -> Option<i64> {
    s.trim().parse().ok()
}

/// The compressions of GDAL's list that tessera writes.
fn supported_compressions(gdal: &[GdalOption]) -> String {
    let listed = gdal
        .iter()
        .find(|o| o.name == "COMPRESS")
        .map(|o| o.values.clone())
        .unwrap_or_default();
    Compression::ALL
        .iter()
        .filter(|(c, n)| listed.iter().any(|v| v == n) && c.available())
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(items: &[&str]) -> Result<CogOptions, InvalidOption> {
        parse_cog_options(&items.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn gdal_spellings_parse() {
        let o = parse(&[
            "compress=zstd",
            "LEVEL=15",
            "PREDICTOR=2",
            "BLOCKSIZE=256",
            "OVERVIEW_RESAMPLING=average",
        ])
        .expect("valid");
        assert_eq!(o.compression, Some(Compression::Zstd));
        assert_eq!(o.level, Some(15));
        assert_eq!(o.predictor, Some(Predictor::Standard));
        assert_eq!(o.block, Some(256));
        assert_eq!(o.overview_resampling, Some(OverviewResampling::Average));
        assert_eq!(parse(&[]).expect("none"), CogOptions::default());
    }

    #[test]
    fn bad_items_name_the_option() {
        for (item, says) in [
            ("COMPRESS", "expected KEY=VALUE"),
            ("FOO=1", "FOO is not a creation option of GDAL's COG driver"),
            (
                "QUALITY=80",
                "QUALITY is a GDAL COG option tessera does not take",
            ),
            (
                "COMPRESS=SNAPPY",
                "'SNAPPY' is not one of GDAL's COMPRESS values",
            ),
            ("COMPRESS=JPEG", "JPEG is lossy"),
            (
                "COMPRESS=LERC",
                "LERC is not written by tessera's COG writers",
            ),
            ("LEVEL=x", "must be an integer"),
            ("LEVEL=13", "DEFLATE levels go from 1 to 12, got 13"),
            (
                "PREDICTOR=MAYBE",
                "'MAYBE' is not one of GDAL's PREDICTOR values",
            ),
            ("BLOCKSIZE=100", "must be a multiple of 16"),
            ("BLOCKSIZE=64", "from 128 (GDAL's minimum)"),
            (
                "OVERVIEW_RESAMPLING=CUBIC",
                "makes NEAREST and AVERAGE overviews, not CUBIC",
            ),
            (
                "OVERVIEW_RESAMPLING=FANCY",
                "is not a GDAL overview resampling",
            ),
        ] {
            let e = parse(&[item]).expect_err(item);
            assert_eq!(e.key, "co");
            let text = e.render(super::super::KeyStyle::Flag);
            assert!(text.starts_with(&format!("--co {item}: ")), "{text}");
            assert!(text.contains(says), "{item}: {text}");
        }
        let e = parse(&["COMPRESS=LZW", "LEVEL=3"]).expect_err("lzw level");
        assert!(e.message.contains("not COMPRESS=LZW"), "{e}");
        let e = parse(&["COMPRESS=NONE", "PREDICTOR=YES"]).expect_err("none predictor");
        assert!(e.message.contains("needs a compression"), "{e}");
        let e = parse(&["COMPRESS=ZSTD", "compress=lzw"]).expect_err("twice");
        assert!(e.message.contains("COMPRESS is given twice"), "{e}");
    }
}
