//! A single-layer vector writer over any [`VectorFormat`], written atomically.
//!
//! [`VectorLayerWriter`] owns what every format shares: the temporary name and its commit,
//! checking values against the fields, counting features, and the `.qml` style beside the
//! file. The encoding is the format's [`Backend`]: GDAL's driver ([`Backend::Gdal`], the
//! GDAL layer below), or a [`LayerSink`] of the format's own ([`Backend::Native`]).

use std::path::Path;

use gdal::spatial_ref::{AxisMappingStrategy, SpatialRef};
use gdal::vector::{
    Feature, Geometry, LayerAccess, LayerOptions, OGRFieldType, OGRwkbGeometryType,
};
use gdal::{Dataset, DriverManager};

use super::formats::{field_names, Backend, VectorFormat};
use super::style::{gpkg_style_sql, LayerStyle};
use super::{OutputError, PendingOutput, Result};
use crate::raster::gdal_reason;

/// The type of an attribute field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldKind {
    String,
    Integer,
    Real,
}

/// The geometry type of a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GeometryKind {
    Polygon,
    MultiPolygon,
}

/// One attribute field of a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldSpec {
    pub name: &'static str,
    pub kind: FieldKind,
}

/// One attribute value; its variant must match the field's kind.
#[derive(Clone, Debug, PartialEq)]
pub enum FieldValue {
    String(String),
    Integer(i64),
    Real(f64),
}

/// What a backend needs to create its layer.
#[derive(Clone, Copy, Debug)]
pub struct LayerSpec<'a> {
    pub format: &'static dyn VectorFormat,
    /// Where to write: the file under its temporary name.
    pub path: &'a Path,
    /// The final name, for messages.
    pub target: &'a Path,
    pub layer: &'a str,
    pub geometry: GeometryKind,
    /// The layer CRS as WKT; `None` for pixel coordinates.
    pub crs_wkt: Option<&'a str>,
    pub fields: &'a [FieldSpec],
    /// The field names as the format stores them ([`field_names`]), in field order.
    pub names: &'a [String],
}

impl LayerSpec<'_> {
    /// A write error naming the final file.
    pub fn err(&self, reason: impl Into<String>) -> OutputError {
        OutputError::Write {
            path: self.target.display().to_string(),
            reason: reason.into(),
        }
    }
}

/// One layer being encoded by a format's backend. [`VectorLayerWriter`] hands it features
/// whose values already match the fields (in number and kind, strings within the format's
/// limit) and asks it to finish once; it writes only under the temporary name (the final one
/// is for messages).
pub trait LayerSink: Send {
    /// Write one feature.
    ///
    /// # Errors
    /// The encoder or the file failing.
    fn add(&mut self, geometry: Geometry, values: &[FieldValue]) -> Result<()>;

    /// Store the QGIS style inside the file when the format can (GeoPackage's
    /// `layer_styles`); `false` has the writer put a `.qml` beside the file instead.
    ///
    /// # Errors
    /// The format failing to store it.
    fn embed_style(&mut self, _style: &LayerStyle) -> Result<bool> {
        Ok(false)
    }

    /// Flush and close the file, and make sure it holds all `count` features written (a
    /// full disk must not pass for a complete file).
    ///
    /// # Errors
    /// The encoder or the file failing, or a file that does not read back whole.
    fn finish(self: Box<Self>, count: usize) -> Result<()>;
}

/// Writes polygons with attributes into one layer of a new file, under a temporary name until
/// [`VectorLayerWriter::finish`].
pub struct VectorLayerWriter {
    pending: PendingOutput,
    sink: Option<Box<dyn LayerSink>>,
    format: &'static dyn VectorFormat,
    fields: Vec<FieldSpec>,
    count: usize,
    /// The default style QGIS loads ([`VectorLayerWriter::set_style`]).
    style: Option<LayerStyle>,
}

impl std::fmt::Debug for VectorLayerWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VectorLayerWriter")
            .field("target", &self.pending.target())
            .field("format", &self.format.name())
            .finish()
    }
}

impl VectorLayerWriter {
    /// Create `path` with one layer `layer` of `geometry` in the CRS `crs_wkt` (none for
    /// pixel coordinates).
    ///
    /// # Errors
    /// The path exists (without `overwrite`), its directory is missing or unwritable, or the
    /// driver refuses the layer.
    pub fn create(
        path: &Path,
        format: &'static dyn VectorFormat,
        layer: &str,
        geometry: GeometryKind,
        crs_wkt: Option<&str>,
        fields: &[FieldSpec],
        overwrite: bool,
    ) -> Result<VectorLayerWriter> {
        crate::raster::init_gdal();
        let pending = PendingOutput::file(path, overwrite)?;
        let names: Vec<&str> = fields.iter().map(|f| f.name).collect();
        let stored = field_names(format, &names);
        let temp = pending.path();
        let spec = LayerSpec {
            format,
            path: &temp,
            target: path,
            layer,
            geometry,
            crs_wkt,
            fields,
            names: &stored,
        };
        let sink = match format.backend() {
            Backend::Gdal => Box::new(GdalLayer::create(&spec)?) as Box<dyn LayerSink>,
            Backend::Native(create) => create(&spec)?,
        };
        Ok(VectorLayerWriter {
            pending,
            sink: Some(sink),
            format,
            fields: fields.to_vec(),
            count: 0,
            style: None,
        })
    }

    fn err(&self, reason: String) -> OutputError {
        OutputError::Write {
            path: self.pending.target().display().to_string(),
            reason,
        }
    }

    /// Add one feature. `ring` is the outer ring in map coordinates (closed or not).
    ///
    /// # Errors
    /// A value whose kind does not match its field, or the driver failing to write.
    pub fn add_polygon(&mut self, ring: &[(f64, f64)], values: &[FieldValue]) -> Result<()> {
        let mut wkt = String::from("POLYGON ((");
        let mut pts: Vec<(f64, f64)> = ring.to_vec();
        if pts.first() != pts.last() {
            if let Some(&p) = pts.first() {
                pts.push(p);
            }
        }
        for (i, (x, y)) in pts.iter().enumerate() {
            if i > 0 {
                wkt.push(',');
            }
            wkt.push_str(&format!("{x:.17} {y:.17}"));
        }
        wkt.push_str("))");
        let geom = Geometry::from_wkt(&wkt).map_err(|e| self.err(ogr_reason(&e)))?;
        self.add(geom, values)
    }

    /// Add one feature with a multipolygon in map coordinates.
    ///
    /// # Errors
    /// As for [`VectorLayerWriter::add_polygon`].
    pub fn add_multipolygon(
        &mut self,
        geometry: &geo::MultiPolygon<f64>,
        values: &[FieldValue],
    ) -> Result<()> {
        use gdal::vector::ToGdal;
        let g = geometry.to_gdal().map_err(|e| self.err(ogr_reason(&e)))?;
        self.add(g, values)
    }

    /// Add one feature with a ready GDAL geometry.
    ///
    /// # Errors
    /// As for [`VectorLayerWriter::add_polygon`].
    pub fn add(&mut self, geometry: Geometry, values: &[FieldValue]) -> Result<()> {
        if values.len() != self.fields.len() {
            return Err(self.err(format!(
                "{} values given for {} fields",
                values.len(),
                self.fields.len()
            )));
        }
        for (value, spec) in values.iter().zip(&self.fields) {
            let fits = matches!(
                (value, spec.kind),
                (FieldValue::String(_), FieldKind::String)
                    | (FieldValue::Integer(_), FieldKind::Integer)
                    | (FieldValue::Real(_), FieldKind::Real)
            );
            if !fits {
                return Err(self.err(format!(
                    "value {value:?} does not fit field '{}' ({:?})",
                    spec.name, spec.kind
                )));
            }
        }
        let too_long = |v: &FieldValue| match (v, self.format.max_string_len()) {
            (FieldValue::String(s), Some(max)) => s.len() > max,
            _ => false,
        };
        let truncated: Vec<FieldValue>;
        let values = if values.iter().any(too_long) {
            let max = self.format.max_string_len().unwrap_or(usize::MAX);
            truncated = values
                .iter()
                .map(|v| match v {
                    FieldValue::String(s) => FieldValue::String(truncate_utf8(s, max).to_string()),
                    other => other.clone(),
                })
                .collect();
            &truncated
        } else {
            values
        };
        let path = self.pending.target().display().to_string();
        let sink = self.sink.as_mut().ok_or_else(|| OutputError::Write {
            path,
            reason: "already finished".into(),
        })?;
        sink.add(geometry, values)?;
        self.count += 1;
        Ok(())
    }

    /// Give the layer a default style that QGIS loads with it: in the GeoPackage's
    /// `layer_styles` table, or a `.qml` beside the other formats' files.
    pub fn set_style(&mut self, style: LayerStyle) {
        self.style = Some(style);
    }

    /// Store the style: inside the file where the backend can (GeoPackage, inside the layer's
    /// transaction), else as `<stem>.qml` beside the temporary file, which commits with it.
    fn write_style(&mut self) -> Result<()> {
        let Some(style) = &self.style else {
            return Ok(());
        };
        if let Some(sink) = self.sink.as_mut() {
            if sink.embed_style(style)? {
                return Ok(());
            }
        }
        let path = self.pending.path().with_extension("qml");
        std::fs::write(&path, style.qml()).map_err(|e| self.err(format!("layer style: {e}")))
    }

    /// Features written so far.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Close the file and move it into place.
    ///
    /// # Errors
    /// The driver failing to flush, or the rename failing.
    pub fn finish(mut self) -> Result<()> {
        self.write_style()?;
        if let Some(sink) = self.sink.take() {
            sink.finish(self.count)?;
        }
        let Self { pending, .. } = self;
        pending.commit()
    }
}

/// The GDAL backend ([`Backend::Gdal`]): one layer of a dataset created by the format's
/// driver, with its layer options, written in one transaction where the format asks for it.
struct GdalLayer {
    dataset: Dataset,
    format: &'static dyn VectorFormat,
    path: std::path::PathBuf,
    target: std::path::PathBuf,
    in_transaction: bool,
}

impl GdalLayer {
    fn create(spec: &LayerSpec<'_>) -> Result<GdalLayer> {
        let format = spec.format;
        let err = |reason: String| spec.err(reason);
        let driver =
            DriverManager::get_driver_by_name(format.driver()).map_err(|e| err(ogr_reason(&e)))?;
        let mut dataset = driver
            .create_vector_only(spec.path)
            .map_err(|e| err(ogr_reason(&e)))?;
        let srs = match spec.crs_wkt {
            Some(wkt) => {
                let mut srs = SpatialRef::from_wkt(wkt).map_err(|e| err(ogr_reason(&e)))?;
                srs.set_axis_mapping_strategy(AxisMappingStrategy::TraditionalGisOrder);
                Some(srs)
            }
            None => None,
        };
        {
            let lyr = dataset
                .create_layer(LayerOptions {
                    name: spec.layer,
                    srs: srs.as_ref(),
                    ty: match spec.geometry {
                        GeometryKind::Polygon => OGRwkbGeometryType::wkbPolygon,
                        GeometryKind::MultiPolygon => OGRwkbGeometryType::wkbMultiPolygon,
                    },
                    options: Some(format.layer_options()),
                })
                .map_err(|e| err(ogr_reason(&e)))?;
            let defs: Vec<(&str, OGRFieldType::Type)> = spec
                .names
                .iter()
                .zip(spec.fields)
                .map(|(name, f)| {
                    let t = match f.kind {
                        FieldKind::String => OGRFieldType::OFTString,
                        FieldKind::Integer => OGRFieldType::OFTInteger64,
                        FieldKind::Real => OGRFieldType::OFTReal,
                    };
                    (name.as_str(), t)
                })
                .collect();
            lyr.create_defn_fields(&defs)
                .map_err(|e| err(ogr_reason(&e)))?;
        }
        let in_transaction = format.transactional()
            // SAFETY: the dataset handle is valid and owned here.
            && unsafe { gdal_sys::GDALDatasetStartTransaction(dataset.c_dataset(), 0) } == 0;
        Ok(GdalLayer {
            dataset,
            format,
            path: spec.path.to_path_buf(),
            target: spec.target.to_path_buf(),
            in_transaction,
        })
    }

    fn err(&self, reason: String) -> OutputError {
        OutputError::Write {
            path: self.target.display().to_string(),
            reason,
        }
    }
}

impl LayerSink for GdalLayer {
    fn add(&mut self, geometry: Geometry, values: &[FieldValue]) -> Result<()> {
        let target = self.target.display().to_string();
        let werr = |reason: String| OutputError::Write {
            path: target.clone(),
            reason,
        };
        let layer = self.dataset.layer(0).map_err(|e| werr(ogr_reason(&e)))?;
        let mut feature = Feature::new(layer.defn()).map_err(|e| werr(ogr_reason(&e)))?;
        feature
            .set_geometry(geometry)
            .map_err(|e| werr(ogr_reason(&e)))?;
        for (i, value) in values.iter().enumerate() {
            let r = match value {
                FieldValue::String(s) => feature.set_field_string(i, s),
                FieldValue::Integer(v) => feature.set_field_integer64(i, *v),
                FieldValue::Real(v) => feature.set_field_double(i, *v),
            };
            r.map_err(|e| werr(ogr_reason(&e)))?;
        }
        feature.create(&layer).map_err(|e| werr(ogr_reason(&e)))?;
        Ok(())
    }

    fn embed_style(&mut self, style: &LayerStyle) -> Result<bool> {
        if self.format.driver() != "GPKG" {
            return Ok(false);
        }
        let qml = style.qml();
        let layer = self
            .dataset
            .layer(0)
            .map_err(|e| self.err(ogr_reason(&e)))?;
        let geometry_column = layer
            .defn()
            .geom_fields()
            .next()
            .map_or_else(|| "geom".to_string(), |f| f.name());
        for sql in gpkg_style_sql(&layer.name(), &geometry_column, &qml) {
            self.dataset
                .execute_sql(sql, None, gdal::vector::sql::Dialect::DEFAULT)
                .map_err(|e| self.err(format!("layer style: {}", ogr_reason(&e))))?;
        }
        Ok(true)
    }

    fn finish(self: Box<Self>, count: usize) -> Result<()> {
        if self.in_transaction {
            // SAFETY: valid handle; the transaction was started on it.
            let rv = unsafe { gdal_sys::GDALDatasetCommitTransaction(self.dataset.c_dataset()) };
            if rv != 0 {
                return Err(self.err(crate::raster::last_cpl_message()));
            }
        }
        let GdalLayer {
            dataset,
            path,
            target,
            ..
        } = *self;
        let err = |reason: String| OutputError::Write {
            path: target.display().to_string(),
            reason,
        };
        // Drivers that write on close (FlatGeobuf, GeoJSON) report a failed write (a full
        // disk) only as a CPL error, with close itself succeeding: check both.
        // SAFETY: resets this thread's CPL error state.
        unsafe { gdal_sys::CPLErrorReset() };
        dataset.close().map_err(|e| err(ogr_reason(&e)))?;
        // SAFETY: reads this thread's CPL error state.
        let failed = unsafe { gdal_sys::CPLGetLastErrorType() } >= gdal_sys::CPLErr::CE_Failure;
        if failed {
            return Err(err(space_words(crate::raster::last_cpl_message())));
        }
        // Some drivers (GeoJSON) lose a failed buffered write without any error: read the
        // feature count back, so that a truncated file is never committed.
        check_written(&path, count).map_err(err)
    }
}

/// The closed file `path` holds all `count` features (cheap for GeoPackage, FlatGeobuf and
/// Shapefile, whose headers count them; GeoJSON is parsed).
fn check_written(path: &Path, count: usize) -> std::result::Result<(), String> {
    let found = gdal::Dataset::open_ex(
        path,
        gdal::DatasetOptions {
            open_flags: gdal::GdalOpenFlags::GDAL_OF_VECTOR,
            ..Default::default()
        },
    )
    .ok()
    .and_then(|ds| ds.layer(0).ok().map(|l| l.feature_count()));
    if found != Some(count as u64) {
        return Err(format!(
            "the written file is incomplete ({} of {} features readable back); is the disk full?",
            found.map_or("none".to_string(), |n| n.to_string()),
            count
        ));
    }
    Ok(())
}

/// A GDAL/OGR error in words: OGR's numeric codes (`OGR method ... returned error: '6'`)
/// named, with GDAL's last message, which says what failed (a full disk).
pub(crate) fn ogr_reason(err: &gdal::errors::GdalError) -> String {
    use gdal::errors::GdalError;
    match err {
        GdalError::OgrError { err, method_name } => {
            let what = match *err {
                1 => "not enough data",
                2 => "not enough memory",
                3 => "unsupported geometry type",
                4 => "unsupported operation",
                5 => "corrupt data",
                6 => "failure",
                7 => "unsupported spatial reference",
                8 => "invalid handle",
                9 => "no such feature",
                _ => "error",
            };
            let detail = crate::raster::last_cpl_message();
            space_words(format!("{method_name} failed ({what}): {detail}"))
        }
        other => space_words(gdal_reason(other)),
    }
}

/// GDAL's and SQLite's ways of saying the disk is full, said plainly first.
fn space_words(reason: String) -> String {
    let lower = reason.to_ascii_lowercase();
    if lower.contains("disk is full")
        || lower.contains("no space left")
        || lower.contains("not enough space")
    {
        // GeoPackage's message holds the whole SQL statement: keep its start.
        let short = truncate_utf8(&reason, 120);
        let more = if short.len() < reason.len() {
            "..."
        } else {
            ""
        };
        format!("no space left on device ({short}{more})")
    } else {
        reason
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncate_utf8(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_disks_are_said_plainly() {
        let long = format!(
            "sqlite3_exec({}) failed: database or disk is full",
            "x".repeat(500)
        );
        let said = space_words(long);
        assert!(
            said.starts_with("no space left on device (sqlite3_exec("),
            "{said}"
        );
        assert!(said.len() < 200, "{said}");
        assert_eq!(
            space_words("No space left on device".into()),
            "no space left on device (No space left on device)"
        );
        assert_eq!(space_words("corrupt".into()), "corrupt");
    }

    /// An empty layer still says what it would hold: geometry type and CRS (GeoJSON has no
    /// geometry type member; RFC 7946 GeoJSON is WGS 84 by definition, and GDAL reads it so).
    #[test]
    fn empty_layers_keep_geometry_type_and_crs() {
        use crate::output::formats;
        let dir = tempfile::tempdir().expect("tempdir");
        let utm = SpatialRef::from_epsg(32633)
            .expect("srs")
            .to_wkt()
            .expect("wkt");
        let cases: [(&'static dyn VectorFormat, Option<u32>, bool); 5] = [
            (&formats::GeoPackage, Some(32633), true),
            (&formats::Shapefile, Some(32633), true),
            (&formats::FlatGeobuf, Some(32633), true),
            (&formats::GeoJsonNativeCrs, Some(32633), false),
            (&formats::GeoJson, Some(4326), false),
        ];
        for (i, (format, epsg, typed)) in cases.into_iter().enumerate() {
            let path = dir.path().join(format!("empty{i}.{}", format.extension()));
            let fields = [FieldSpec {
                name: "label",
                kind: FieldKind::String,
            }];
            VectorLayerWriter::create(
                &path,
                format,
                "empty",
                GeometryKind::Polygon,
                Some(&utm),
                &fields,
                false,
            )
            .expect("create")
            .finish()
            .expect("finish");
            let ds = Dataset::open(&path).expect("open");
            let layer = ds.layer(0).expect("layer");
            assert_eq!(layer.feature_count(), 0);
            let srs = layer.spatial_ref().expect("a CRS");
            let code = srs.auth_code().ok().map(|c| c as u32);
            assert_eq!(code, epsg, "{}", format.name());
            if typed {
                let ty = layer
                    .defn()
                    .geom_fields()
                    .next()
                    .expect("geometry")
                    .field_type();
                assert_eq!(ty, OGRwkbGeometryType::wkbPolygon, "{}", format.name());
            }
        }
    }

    #[test]
    fn truncation_respects_characters() {
        assert_eq!(truncate_utf8("abcdef", 3), "abc");
        assert_eq!(truncate_utf8("ééé", 3), "é");
        assert_eq!(truncate_utf8("ab", 10), "ab");
    }
}
