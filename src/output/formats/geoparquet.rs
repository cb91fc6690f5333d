//! GeoParquet 1.1, written by tessera itself (Debian's GDAL has no Parquet driver): one
//! Parquet file with the geometry as ISO WKB in a `geometry` column, a `bbox` struct column
//! (`xmin`, `ymin`, `xmax`, `ymax`) declared as the geometry's bbox covering, so readers can
//! skip row groups by their statistics, and the attribute fields as typed columns (UTF-8
//! strings, 64-bit integers, doubles). The `geo` metadata in the footer gives the version,
//! the primary column, its encoding, the geometry types found, the CRS as PROJJSON (`null`
//! for pixel coordinates) and the layer's bbox. Features are written in row groups as they
//! arrive (memory stays bounded by one row group); the footer is written on finish and read
//! back before the file is committed. Snappy compression, as geopandas writes.

use std::fs::File;
use std::io::BufWriter;
use std::sync::Arc;

use gdal::spatial_ref::SpatialRef;
use gdal::vector::Geometry;
use parquet::basic::{Compression, LogicalType, Repetition, Type as PhysicalType};
use parquet::data_type::{ByteArray, ByteArrayType, DoubleType, Int64Type};
use parquet::file::metadata::{KeyValue, ParquetMetaDataReader};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::{ColumnPath, Type, TypePtr};
use serde_json::{json, Value};

use super::{Backend, VectorFormat};
use crate::output::vector::{FieldKind, FieldValue, GeometryKind, LayerSink, LayerSpec};
use crate::output::{OutputError, Result};

#[derive(Debug, Clone, Copy)]
pub struct GeoParquet;

impl VectorFormat for GeoParquet {
    fn name(&self) -> &'static str {
        "parquet"
    }
    fn driver(&self) -> &'static str {
        "Parquet"
    }
    fn extension(&self) -> &'static str {
        "parquet"
    }
    fn aliases(&self) -> &'static [&'static str] {
        &["geoparquet"]
    }
    fn media_types(&self) -> &'static [(&'static str, &'static str)] {
        &[("parquet", "application/vnd.apache.parquet")]
    }
    fn backend(&self) -> Backend {
        Backend::Native(create)
    }
}

/// The GeoParquet version written.
const VERSION: &str = "1.1.0";
const GEOMETRY: &str = "geometry";
const BBOX: &str = "bbox";
const BBOX_FIELDS: [&str; 4] = ["xmin", "ymin", "xmax", "ymax"];
/// A row group is written when it holds this many features...
const ROW_GROUP_ROWS: usize = 64 * 1024;
/// ... or this many bytes of geometry and strings, whichever comes first.
const ROW_GROUP_BYTES: usize = 64 << 20;

fn create(spec: &LayerSpec<'_>) -> Result<Box<dyn LayerSink>> {
    Ok(Box::new(ParquetLayer::create(spec)?))
}

/// One attribute column of the row group being gathered.
enum Column {
    String(Vec<ByteArray>),
    Integer(Vec<i64>),
    Real(Vec<f64>),
}

struct ParquetLayer {
    writer: Option<SerializedFileWriter<BufWriter<File>>>,
    path: std::path::PathBuf,
    target: String,
    /// The `geometry_types` of an empty layer: the declared one.
    declared: GeometryKind,
    crs: Value,
    wkb: Vec<ByteArray>,
    /// The covering: xmin, ymin, xmax, ymax of each feature.
    bbox: [Vec<f64>; 4],
    columns: Vec<Column>,
    buffered_bytes: usize,
    /// Features per row group ([`ROW_GROUP_ROWS`]; fewer in tests).
    row_group_rows: usize,
    /// The geometry types written (GeoParquet names: `Polygon`, `MultiPolygon Z`).
    types: std::collections::BTreeSet<String>,
    /// A geometry type GeoParquet 1.1 has no name for (measured coordinates) was written:
    /// `geometry_types` is then empty, which says "unknown".
    unnamed_types: bool,
    /// The layer's extent: xmin, ymin, xmax, ymax.
    extent: Option<[f64; 4]>,
}

impl ParquetLayer {
    fn create(spec: &LayerSpec<'_>) -> Result<ParquetLayer> {
        let perr = |e: parquet::errors::ParquetError| spec.err(parquet_reason(&e));
        for reserved in [GEOMETRY, BBOX] {
            if spec.names.iter().any(|n| n == reserved) {
                return Err(spec.err(format!(
                    "a field named '{reserved}' would clash with GeoParquet's {reserved} column"
                )));
            }
        }
        let crs = match spec.crs_wkt {
            Some(wkt) => {
                let projjson = SpatialRef::from_wkt(wkt)
                    .and_then(|s| s.to_projjson())
                    .map_err(|e| spec.err(format!("CRS as PROJJSON: {e}")))?;
                serde_json::from_str(&projjson)
                    .map_err(|e| spec.err(format!("CRS as PROJJSON: {e}")))?
            }
            None => Value::Null,
        };
        let required = |name: &str, ty: PhysicalType, logical: Option<LogicalType>| {
            Type::primitive_type_builder(name, ty)
                .with_repetition(Repetition::REQUIRED)
                .with_logical_type(logical)
                .build()
                .map(Arc::new)
        };
        let mut fields: Vec<TypePtr> =
            vec![required(GEOMETRY, PhysicalType::BYTE_ARRAY, None).map_err(perr)?];
        let corners = BBOX_FIELDS
            .iter()
            .map(|n| required(n, PhysicalType::DOUBLE, None))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(perr)?;
        fields.push(Arc::new(
            Type::group_type_builder(BBOX)
                .with_repetition(Repetition::REQUIRED)
                .with_fields(corners)
                .build()
                .map_err(perr)?,
        ));
        for (name, f) in spec.names.iter().zip(spec.fields) {
            let t = match f.kind {
                FieldKind::String => {
                    required(name, PhysicalType::BYTE_ARRAY, Some(LogicalType::String))
                }
                FieldKind::Integer => required(name, PhysicalType::INT64, None),
                FieldKind::Real => required(name, PhysicalType::DOUBLE, None),
            };
            fields.push(t.map_err(perr)?);
        }
        let schema = Type::group_type_builder("schema")
            .with_fields(fields)
            .build()
            .map_err(perr)?;
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_column_dictionary_enabled(ColumnPath::from(GEOMETRY), false)
            .build();
        let file = File::create(spec.path).map_err(|e| spec.err(e.to_string()))?;
        let writer =
            SerializedFileWriter::new(BufWriter::new(file), Arc::new(schema), Arc::new(props))
                .map_err(perr)?;
        Ok(ParquetLayer {
            writer: Some(writer),
            path: spec.path.to_path_buf(),
            target: spec.target.display().to_string(),
            declared: spec.geometry,
            crs,
            wkb: Vec::new(),
            bbox: Default::default(),
            columns: spec
                .fields
                .iter()
                .map(|f| match f.kind {
                    FieldKind::String => Column::String(Vec::new()),
                    FieldKind::Integer => Column::Integer(Vec::new()),
                    FieldKind::Real => Column::Real(Vec::new()),
                })
                .collect(),
            buffered_bytes: 0,
            row_group_rows: ROW_GROUP_ROWS,
            types: Default::default(),
            unnamed_types: false,
            extent: None,
        })
    }

    fn err(&self, reason: String) -> OutputError {
        OutputError::Write {
            path: self.target.clone(),
            reason,
        }
    }

    /// Write the gathered features as one row group.
    fn flush_row_group(&mut self) -> Result<()> {
        if self.wkb.is_empty() {
            return Ok(());
        }
        let target = self.target.clone();
        let perr = |e: parquet::errors::ParquetError| OutputError::Write {
            path: target.clone(),
            reason: parquet_reason(&e),
        };
        let writer = self.writer.as_mut().ok_or_else(|| OutputError::Write {
            path: target.clone(),
            reason: "already finished".into(),
        })?;
        let mut group = writer.next_row_group().map_err(perr)?;
        let mut index = 0usize;
        while let Some(mut col) = group.next_column().map_err(perr)? {
            match index {
                0 => col
                    .typed::<ByteArrayType>()
                    .write_batch(&self.wkb, None, None),
                1..=4 => col
                    .typed::<DoubleType>()
                    .write_batch(&self.bbox[index - 1], None, None),
                i => match &self.columns[i - 5] {
                    Column::String(v) => col.typed::<ByteArrayType>().write_batch(v, None, None),
                    Column::Integer(v) => col.typed::<Int64Type>().write_batch(v, None, None),
                    Column::Real(v) => col.typed::<DoubleType>().write_batch(v, None, None),
                },
            }
            .map_err(perr)?;
            col.close().map_err(perr)?;
            index += 1;
        }
        group.close().map_err(perr)?;
        self.wkb.clear();
        for v in &mut self.bbox {
            v.clear();
        }
        for c in &mut self.columns {
            match c {
                Column::String(v) => v.clear(),
                Column::Integer(v) => v.clear(),
                Column::Real(v) => v.clear(),
            }
        }
        self.buffered_bytes = 0;
        Ok(())
    }

    /// The `geo` file metadata (GeoParquet 1.1).
    fn geo_metadata(&self) -> Value {
        let types: Vec<String> = if self.unnamed_types {
            Vec::new()
        } else if self.types.is_empty() {
            vec![match self.declared {
                GeometryKind::Polygon => "Polygon".to_string(),
                GeometryKind::MultiPolygon => "MultiPolygon".to_string(),
            }]
        } else {
            self.types.iter().cloned().collect()
        };
        let covering: serde_json::Map<String, Value> = BBOX_FIELDS
            .iter()
            .map(|f| (f.to_string(), json!([BBOX, f])))
            .collect();
        let mut column = json!({
            "encoding": "WKB",
            "geometry_types": types,
            "crs": self.crs,
            "covering": { "bbox": covering },
        });
        if let (Some(extent), Some(obj)) = (self.extent, column.as_object_mut()) {
            obj.insert("bbox".into(), json!(extent));
        }
        json!({
            "version": VERSION,
            "primary_column": GEOMETRY,
            "columns": { GEOMETRY: column },
        })
    }
}

impl LayerSink for ParquetLayer {
    fn add(&mut self, geometry: Geometry, values: &[FieldValue]) -> Result<()> {
        let wkb = geometry
            .iso_wkb()
            .map_err(|e| self.err(format!("geometry as WKB: {e}")))?;
        match wkb_type_name(&wkb) {
            Some(name) => {
                self.types.insert(name);
            }
            None => self.unnamed_types = true,
        }
        let env = geometry.envelope();
        let corners = if geometry.is_empty() {
            [f64::NAN; 4]
        } else {
            [env.MinX, env.MinY, env.MaxX, env.MaxY]
        };
        if !geometry.is_empty() {
            self.extent = Some(match self.extent {
                None => corners,
                Some(e) => [
                    e[0].min(corners[0]),
                    e[1].min(corners[1]),
                    e[2].max(corners[2]),
                    e[3].max(corners[3]),
                ],
            });
        }
        for (v, c) in self.bbox.iter_mut().zip(corners) {
            v.push(c);
        }
        self.buffered_bytes += wkb.len() + 32;
        self.wkb.push(ByteArray::from(wkb));
        for (column, value) in self.columns.iter_mut().zip(values) {
            match (column, value) {
                (Column::String(v), FieldValue::String(s)) => {
                    self.buffered_bytes += s.len();
                    v.push(ByteArray::from(s.as_bytes()));
                }
                (Column::Integer(v), FieldValue::Integer(i)) => v.push(*i),
                (Column::Real(v), FieldValue::Real(r)) => v.push(*r),
                // The writer checked every value against its field.
                (_, value) => return Err(self.err(format!("value {value:?} fits no column"))),
            }
            self.buffered_bytes += 8;
        }
        if self.wkb.len() >= self.row_group_rows || self.buffered_bytes >= ROW_GROUP_BYTES {
            self.flush_row_group()?;
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>, count: usize) -> Result<()> {
        self.flush_row_group()?;
        let geo = self.geo_metadata().to_string();
        let Some(mut writer) = self.writer.take() else {
            return Err(self.err("already finished".into()));
        };
        let perr = |e: parquet::errors::ParquetError| self.err(parquet_reason(&e));
        writer.append_key_value_metadata(KeyValue::new("geo".to_string(), geo));
        let file = writer
            .into_inner()
            .map_err(perr)?
            .into_inner()
            .map_err(|e| self.err(e.error().to_string()))?;
        drop(file);
        // Read the footer back: a file cut short (a full disk) has none, or too few rows.
        let found = File::open(&self.path)
            .ok()
            .and_then(|f| ParquetMetaDataReader::new().parse_and_finish(&f).ok())
            .map(|m| m.file_metadata().num_rows());
        if found != Some(count as i64) {
            return Err(self.err(format!(
                "the written file is incomplete ({} of {count} features readable back); is the disk full?",
                found.map_or("none".to_string(), |n| n.to_string()),
            )));
        }
        Ok(())
    }
}

/// A Parquet error in words: its I/O cause (`File too large (os error 27)`) without the
/// crate's `External:` prefix.
fn parquet_reason(e: &parquet::errors::ParquetError) -> String {
    use parquet::errors::ParquetError;
    match e {
        ParquetError::External(inner) => inner.to_string(),
        other => other.to_string(),
    }
}

/// The GeoParquet 1.1 name of an ISO WKB geometry's type (`Polygon`, `MultiPolygon Z`);
/// `None` for types it has no name for (with M coordinates) or no type.
fn wkb_type_name(wkb: &[u8]) -> Option<String> {
    let code: [u8; 4] = wkb.get(1..5)?.try_into().ok()?;
    let code = match wkb.first()? {
        0 => u32::from_be_bytes(code),
        _ => u32::from_le_bytes(code),
    };
    let base = match code % 1000 {
        1 => "Point",
        2 => "LineString",
        3 => "Polygon",
        4 => "MultiPoint",
        5 => "MultiLineString",
        6 => "MultiPolygon",
        7 => "GeometryCollection",
        _ => return None,
    };
    let suffix = match code / 1000 {
        0 => "",
        1 => " Z",
        _ => return None,
    };
    Some(format!("{base}{suffix}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wkb_type_names() {
        // Byte order, then the ISO type code (little- and big-endian).
        assert_eq!(wkb_type_name(&[1, 3, 0, 0, 0]).as_deref(), Some("Polygon"));
        assert_eq!(
            wkb_type_name(&[0, 0, 0, 0x03, 0xeb]).as_deref(),
            Some("Polygon Z")
        );
        // MultiPolygon ZM (3006): no GeoParquet 1.1 name.
        assert_eq!(wkb_type_name(&[0, 0, 0, 0x0b, 0xbe]), None);
        assert_eq!(
            wkb_type_name(&[1, 0xee, 0x03, 0, 0]).as_deref(),
            Some("MultiPolygon Z")
        );
        assert_eq!(wkb_type_name(&[1, 3]), None);
        assert_eq!(wkb_type_name(&[1, 99, 0, 0, 0]), None);
    }

    /// Features reach the file in row groups as they arrive, not all at the end.
    #[test]
    fn row_groups_are_written_as_features_arrive() {
        use crate::output::vector::FieldSpec;
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.parquet");
        let fields = [FieldSpec {
            name: "label",
            kind: FieldKind::String,
        }];
        let names = ["label".to_string()];
        let spec = LayerSpec {
            format: &GeoParquet,
            path: &path,
            target: &path,
            layer: "t",
            geometry: GeometryKind::Polygon,
            crs_wkt: None,
            fields: &fields,
            names: &names,
        };
        let mut layer = ParquetLayer::create(&spec).expect("create");
        layer.row_group_rows = 4;
        let written = |l: &ParquetLayer| l.writer.as_ref().map_or(0, |w| w.bytes_written());
        // Only the magic bytes before the first row group.
        assert_eq!(written(&layer), 4);
        for i in 0..10 {
            let g =
                Geometry::from_wkt(&format!("POLYGON (({i} 0, {i} 1, 0 1, {i} 0))")).expect("wkt");
            layer
                .add(g, &[FieldValue::String(format!("f{i}"))])
                .expect("add");
            if i == 3 {
                // The first row group was encoded and sent with its fourth feature; nothing
                // stays gathered in memory.
                assert!(written(&layer) > 4);
                assert!(layer.wkb.is_empty() && layer.bbox[0].is_empty());
            }
        }
        Box::new(layer).finish(10).expect("finish");
        let reader =
            SerializedFileReader::new(std::fs::File::open(&path).expect("open")).expect("parquet");
        let groups: Vec<i64> = reader
            .metadata()
            .row_groups()
            .iter()
            .map(|g| g.num_rows())
            .collect();
        assert_eq!(groups, [4, 4, 2]);
    }

    /// A wrong count (features lost on the way) is refused at finish.
    #[test]
    fn a_file_missing_features_is_not_accepted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.parquet");
        let spec = LayerSpec {
            format: &GeoParquet,
            path: &path,
            target: &path,
            layer: "t",
            geometry: GeometryKind::Polygon,
            crs_wkt: None,
            fields: &[],
            names: &[],
        };
        let layer = ParquetLayer::create(&spec).expect("create");
        let e = Box::new(layer)
            .finish(3)
            .expect_err("3 features were not written");
        assert!(e.to_string().contains("incomplete"), "{e}");
    }
}
