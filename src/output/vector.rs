//! A single-layer vector writer over any [`VectorFormat`], written atomically.

use std::path::Path;

use gdal::spatial_ref::{AxisMappingStrategy, SpatialRef};
use gdal::vector::{
    Feature, Geometry, LayerAccess, LayerOptions, OGRFieldType, OGRwkbGeometryType,
};
use gdal::{Dataset, DriverManager};

use super::formats::{field_names, VectorFormat};
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
            DriverManager::get_driver_by_name(format.driver()).map_err(|e| err(gdal_reason(&e)))?;
        let mut dataset = driver
            .create_vector_only(pending.path())
            .map_err(|e| err(gdal_reason(&e)))?;
        let srs = match crs_wkt {
            Some(wkt) => {
                let mut srs = SpatialRef::from_wkt(wkt).map_err(|e| err(gdal_reason(&e)))?;
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
                .map_err(|e| err(gdal_reason(&e)))?;
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
                .map_err(|e| err(gdal_reason(&e)))?;
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
        let geom = Geometry::from_wkt(&wkt).map_err(|e| self.err(gdal_reason(&e)))?;
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
        let g = geometry.to_gdal().map_err(|e| self.err(gdal_reason(&e)))?;
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
        let layer = dataset.layer(0).map_err(|e| werr(gdal_reason(&e)))?;
        let mut feature = Feature::new(layer.defn()).map_err(|e| werr(gdal_reason(&e)))?;
        feature
            .set_geometry(geometry)
            .map_err(|e| werr(gdal_reason(&e)))?;
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
            r.map_err(|e| werr(gdal_reason(&e)))?;
        }
        feature.create(&layer).map_err(|e| werr(gdal_reason(&e)))?;
        self.count += 1;
        Ok(())
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
        if let Some(dataset) = self.dataset.take() {
            if self.in_transaction {
                // SAFETY: valid handle; the transaction was started on it.
                let rv = unsafe { gdal_sys::GDALDatasetCommitTransaction(dataset.c_dataset()) };
                if rv != 0 {
                    return Err(self.err(crate::raster::last_cpl_message()));
                }
            }
            dataset.close().map_err(|e| self.err(gdal_reason(&e)))?;
        }
        let Self { pending, .. } = self;
        pending.commit()
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
    fn truncation_respects_characters() {
        assert_eq!(truncate_utf8("abcdef", 3), "abc");
        assert_eq!(truncate_utf8("ééé", 3), "é");
        assert_eq!(truncate_utf8("ab", 10), "ab");
    }
}
