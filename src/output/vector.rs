//! A single-layer vector writer over any [`VectorFormat`], written atomically.

use std::path::Path;

use gdal::spatial_ref::{AxisMappingStrategy, SpatialRef};
use gdal::vector::{
    Feature, Geometry, LayerAccess, LayerOptions, OGRFieldType, OGRwkbGeometryType,
};
use gdal::{Dataset, DriverManager};

use super::formats::{field_names, VectorFormat};
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

/// Writes polygons with attributes into one layer of a new file, under a temporary name until
/// [`VectorLayerWriter::finish`].
pub struct VectorLayerWriter {
    pending: PendingOutput,
    dataset: Option<Dataset>,
    format: &'static dyn VectorFormat,
    fields: Vec<FieldSpec>,
    in_transaction: bool,
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
        let err = |reason: String| OutputError::Write {
            path: path.display().to_string(),
            reason,
        };
        let pending = PendingOutput::file(path, overwrite)?;
        let driver =
            DriverManager::get_driver_by_name(format.driver()).map_err(|e| err(ogr_reason(&e)))?;
        let mut dataset = driver
            .create_vector_only(pending.path())
            .map_err(|e| err(ogr_reason(&e)))?;
        let srs = match crs_wkt {
            Some(wkt) => {
                let mut srs = SpatialRef::from_wkt(wkt).map_err(|e| err(ogr_reason(&e)))?;
                srs.set_axis_mapping_strategy(AxisMappingStrategy::TraditionalGisOrder);
                Some(srs)
            }
            None => None,
        };
        let names: Vec<&str> = fields.iter().map(|f| f.name).collect();
        let stored = field_names(format, &names);
        {
            let lyr = dataset
                .create_layer(LayerOptions {
                    name: layer,
                    srs: srs.as_ref(),
                    ty: match geometry {
                        GeometryKind::Polygon => OGRwkbGeometryType::wkbPolygon,
                        GeometryKind::MultiPolygon => OGRwkbGeometryType::wkbMultiPolygon,
                    },
                    options: Some(format.layer_options()),
                })
                .map_err(|e| err(ogr_reason(&e)))?;
            let defs: Vec<(&str, OGRFieldType::Type)> = stored
                .iter()
                .zip(fields)
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
        Ok(VectorLayerWriter {
            pending,
            dataset: Some(dataset),
            format,
            fields: fields.to_vec(),
            in_transaction,
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
        let max_str = self.format.max_string_len();
        let path = self.pending.target().display().to_string();
        let dataset = self.dataset.as_ref().ok_or_else(|| OutputError::Write {
            path: path.clone(),
            reason: "already finished".into(),
        })?;
        let werr = |reason: String| OutputError::Write {
            path: path.clone(),
            reason,
        };
        let layer = dataset.layer(0).map_err(|e| werr(ogr_reason(&e)))?;
        let mut feature = Feature::new(layer.defn()).map_err(|e| werr(ogr_reason(&e)))?;
        feature
            .set_geometry(geometry)
            .map_err(|e| werr(ogr_reason(&e)))?;
        for (i, (value, spec)) in values.iter().zip(&self.fields).enumerate() {
            let r = match (value, spec.kind) {
                (FieldValue::String(s), FieldKind::String) => match max_str {
                    Some(max) if s.len() > max => {
                        feature.set_field_string(i, truncate_utf8(s, max))
                    }
                    _ => feature.set_field_string(i, s),
                },
                (FieldValue::Integer(v), FieldKind::Integer) => feature.set_field_integer64(i, *v),
                (FieldValue::Real(v), FieldKind::Real) => feature.set_field_double(i, *v),
                _ => {
                    return Err(werr(format!(
                        "value {value:?} does not fit field '{}' ({:?})",
                        spec.name, spec.kind
                    )))
                }
            };
            r.map_err(|e| werr(ogr_reason(&e)))?;
        }
        feature.create(&layer).map_err(|e| werr(ogr_reason(&e)))?;
        self.count += 1;
        Ok(())
    }

    /// Give the layer a default style that QGIS loads with it: in the GeoPackage's
    /// `layer_styles` table, or a `.qml` beside the other formats' files.
    pub fn set_style(&mut self, style: LayerStyle) {
        self.style = Some(style);
    }

    /// Store the style: in `layer_styles` for a GeoPackage (inside the layer's transaction),
    /// else as `<stem>.qml` beside the temporary file, which commits with it.
    fn write_style(&self, dataset: &Dataset) -> Result<()> {
        let Some(style) = &self.style else {
            return Ok(());
        };
        let qml = style.qml();
        if self.format.driver() == "GPKG" {
            let layer = dataset.layer(0).map_err(|e| self.err(ogr_reason(&e)))?;
            let geometry_column = layer
                .defn()
                .geom_fields()
                .next()
                .map_or_else(|| "geom".to_string(), |f| f.name());
            for sql in gpkg_style_sql(&layer.name(), &geometry_column, &qml) {
                dataset
                    .execute_sql(sql, None, gdal::vector::sql::Dialect::DEFAULT)
                    .map_err(|e| self.err(format!("layer style: {}", ogr_reason(&e))))?;
            }
            return Ok(());
        }
        let path = self.pending.path().with_extension("qml");
        std::fs::write(&path, qml).map_err(|e| self.err(format!("layer style: {e}")))
    }

    /// Features written so far.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The closed file holds every feature added (cheap for GeoPackage, FlatGeobuf and
    /// Shapefile, whose headers count them; GeoJSON is parsed).
    fn check_written(&self) -> Result<()> {
        let path = self.pending.path();
        let found = gdal::Dataset::open_ex(
            &path,
            gdal::DatasetOptions {
                open_flags: gdal::GdalOpenFlags::GDAL_OF_VECTOR,
                ..Default::default()
            },
        )
        .ok()
        .and_then(|ds| ds.layer(0).ok().map(|l| l.feature_count()));
        if found != Some(self.count as u64) {
            return Err(self.err(format!(
                "the written file is incomplete ({} of {} features readable back); is the disk full?",
                found.map_or("none".to_string(), |n| n.to_string()),
                self.count
            )));
        }
        Ok(())
    }

    /// Close the file and move it into place.
    ///
    /// # Errors
    /// The driver failing to flush, or the rename failing.
    pub fn finish(mut self) -> Result<()> {
        if let Some(dataset) = self.dataset.take() {
            self.write_style(&dataset)?;
            if self.in_transaction {
                // SAFETY: valid handle; the transaction was started on it.
                let rv = unsafe { gdal_sys::GDALDatasetCommitTransaction(dataset.c_dataset()) };
                if rv != 0 {
                    return Err(self.err(crate::raster::last_cpl_message()));
                }
            }
            // Drivers that write on close (FlatGeobuf, GeoJSON) report a failed write (a full
            // disk) only as a CPL error, with close itself succeeding: check both.
            // SAFETY: resets this thread's CPL error state.
            unsafe { gdal_sys::CPLErrorReset() };
            dataset.close().map_err(|e| self.err(ogr_reason(&e)))?;
            // SAFETY: reads this thread's CPL error state.
            let failed = unsafe { gdal_sys::CPLGetLastErrorType() } >= gdal_sys::CPLErr::CE_Failure;
            if failed {
                return Err(self.err(space_words(crate::raster::last_cpl_message())));
            }
            // Some drivers (GeoJSON) lose a failed buffered write without any error: read
            // the feature count back, so that a truncated file is never committed.
            self.check_written()?;
        }
        let Self { pending, .. } = self;
        pending.commit()
    }
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
