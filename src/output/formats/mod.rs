//! Vector formats. Each format is one file with one [`VectorFormat`] implementation: it states
//! its driver, its layer options, and its limits (Shapefile's 10-character field names and
//! 254-character strings), and its [`Backend`]: GDAL does the encoding unless the format
//! brings a writer of its own.

mod flatgeobuf;
mod geojson;
mod geopackage;
mod geoparquet;
mod shapefile;

use std::path::Path;

use super::vector::{LayerSink, LayerSpec};

pub use flatgeobuf::FlatGeobuf;
pub use geojson::{GeoJson, GeoJsonNativeCrs};
pub use geopackage::GeoPackage;
pub use geoparquet::GeoParquet;
pub use shapefile::Shapefile;

/// How a format's files are encoded.
#[derive(Clone, Copy)]
pub enum Backend {
    /// By the GDAL/OGR driver [`VectorFormat::driver`], with [`VectorFormat::layer_options`].
    Gdal,
    /// By the format's own writer: creates the layer at [`LayerSpec::path`] (the temporary
    /// name) and returns its [`LayerSink`].
    Native(fn(&LayerSpec<'_>) -> super::Result<Box<dyn LayerSink>>),
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Gdal => "Gdal",
            Backend::Native(_) => "Native",
        })
    }
}

/// One vector output format.
pub trait VectorFormat: Sync + std::fmt::Debug {
    /// Short name used by `--format` and pipeline files.
    fn name(&self) -> &'static str;
    /// GDAL/OGR driver name (for a format with a writer of its own, the name GDAL's driver
    /// for it has, which `--format` also accepts).
    fn driver(&self) -> &'static str;
    /// File extension without the dot.
    fn extension(&self) -> &'static str;
    /// Other names `--format` accepts (`geopackage`).
    fn aliases(&self) -> &'static [&'static str] {
        &[]
    }
    /// Media types (STAC asset types) of the files the format writes, by extension: the main
    /// file first, then sidecars.
    fn media_types(&self) -> &'static [(&'static str, &'static str)];
    /// Layer creation options.
    fn layer_options(&self) -> &'static [&'static str] {
        &[]
    }
    /// Longest field name the format keeps, if limited.
    fn max_field_name(&self) -> Option<usize> {
        None
    }
    /// Longest string value the format keeps, if limited.
    fn max_string_len(&self) -> Option<usize> {
        None
    }
    /// The variant that keeps the layer's CRS, for a format that otherwise reprojects
    /// (GeoJSON's RFC 7946 mode); `None` for formats that always keep it.
    fn native_crs(&self) -> Option<&'static dyn VectorFormat> {
        None
    }
    /// Whether files are written in WGS 84 longitude, latitude whatever the layer CRS.
    fn writes_wgs84(&self) -> bool {
        false
    }
    /// Whether the whole layer should be written in one transaction (much faster in SQLite).
    fn transactional(&self) -> bool {
        false
    }
    /// Who encodes the files: GDAL (the default) or the format's own writer.
    fn backend(&self) -> Backend {
        Backend::Gdal
    }
}

/// Every supported format.
pub const ALL: [&dyn VectorFormat; 5] =
    [&GeoPackage, &Shapefile, &GeoJson, &FlatGeobuf, &GeoParquet];

/// The format named `name`: its name, extension, driver or an alias.
pub fn by_name(name: &str) -> Option<&'static dyn VectorFormat> {
    let n = name.to_ascii_lowercase();
    ALL.iter().copied().find(|f| {
        f.name() == n
            || f.extension() == n
            || f.driver().eq_ignore_ascii_case(&n)
            || f.aliases().contains(&n.as_str())
    })
}

/// The formats' names, for messages: "gpkg, shp, geojson, fgb".
pub fn names() -> String {
    ALL.iter().map(|f| f.name()).collect::<Vec<_>>().join(", ")
}

/// The media type of a file a vector format writes, by its extension.
pub fn media_type(ext: &str) -> Option<&'static str> {
    ALL.iter()
        .flat_map(|f| f.media_types().iter())
        .find(|(e, _)| *e == ext)
        .map(|(_, m)| *m)
}

/// The format implied by a path's extension.
pub fn for_path(path: &Path) -> Option<&'static dyn VectorFormat> {
    let ext = path.extension()?.to_str()?;
    by_name(ext)
}

/// The format of the vector file `path`: `format` (a `--format` name) when given, whose
/// extension `path` must then have (or none); else the one its extension names, GeoPackage
/// when it has none.
///
/// # Errors
/// An unknown format name, an extension that disagrees with `format`, or (without `format`)
/// an extension that names no format.
pub fn for_output(
    path: &Path,
    format: Option<&str>,
) -> Result<&'static dyn VectorFormat, super::OutputError> {
    let ext = path.extension().map(|e| e.to_string_lossy().into_owned());
    let err = |ext: &str, problem: String| super::OutputError::Extension {
        path: path.display().to_string(),
        ext: ext.to_string(),
        problem,
    };
    match format {
        Some(name) => {
            let f = by_name(name).ok_or_else(|| super::OutputError::UnknownFormat {
                path: path.display().to_string(),
                format: name.to_string(),
            })?;
            match &ext {
                Some(e) if for_path(path).map(|g| g.name()) != Some(f.name()) => Err(err(
                    e,
                    format!(
                        "disagrees with --format {name} (use .{} or change --format)",
                        f.extension()
                    ),
                )),
                _ => Ok(f),
            }
        }
        None => match &ext {
            None => Ok(&GeoPackage),
            Some(e) => for_path(path).ok_or_else(|| {
                err(
                    e,
                    format!(
                        "names no vector format (use .{} or --format {})",
                        ALL.iter()
                            .map(|f| f.extension())
                            .collect::<Vec<_>>()
                            .join(", ."),
                        names()
                    ),
                )
            }),
        },
    }
}

/// Field names as the format will store them: truncated where the format limits them, and
/// made unique (`top3_label` and `top3_labels` must not collide after truncation).
pub fn field_names(format: &dyn VectorFormat, names: &[&str]) -> Vec<String> {
    let Some(max) = format.max_field_name() else {
        return names.iter().map(|n| n.to_string()).collect();
    };
    let mut out: Vec<String> = Vec::with_capacity(names.len());
    for name in names {
        let mut candidate: String = name.chars().take(max).collect();
        let mut k = 1;
        while out.iter().any(|o| o.eq_ignore_ascii_case(&candidate)) {
            let suffix = format!("_{k}");
            candidate = name.chars().take(max - suffix.len()).collect::<String>() + &suffix;
            k += 1;
        }
        out.push(candidate);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_by_name_and_extension() {
        assert_eq!(by_name("gpkg").map(|f| f.driver()), Some("GPKG"));
        assert_eq!(
            by_name("Shapefile").map(|f| f.driver()),
            Some("ESRI Shapefile")
        );
        assert_eq!(by_name("fgb").map(|f| f.driver()), Some("FlatGeobuf"));
        assert_eq!(by_name("json").map(|f| f.driver()), Some("GeoJSON"));
        assert!(by_name("kml").is_none());
        assert_eq!(
            for_path(Path::new("a/b.geojson")).map(|f| f.name()),
            Some("geojson")
        );
        assert!(for_path(Path::new("noext")).is_none());
    }

    #[test]
    fn shapefile_names_are_truncated_and_unique() {
        let names = field_names(
            &Shapefile,
            &["tile_id", "valid_fraction", "valid_fractions", "a"],
        );
        assert_eq!(names, ["tile_id", "valid_frac", "valid_fr_1", "a"]);
        assert!(names.iter().all(|n| n.len() <= 10));
        let long = field_names(&GeoPackage, &["valid_fraction"]);
        assert_eq!(long, ["valid_fraction"]);
    }
}
