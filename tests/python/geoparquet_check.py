"""Check tessera's GeoParquet outputs against the GeoPackage outputs of the same run.

Usage: geoparquet_check.py GPKG_DIR PARQUET_DIR

Every `*.gpkg` under GPKG_DIR must have a `.parquet` at the same relative path under
PARQUET_DIR (and no `.parquet` may be without its GeoPackage). Each pair must hold the same
features: the same attributes with the same types (geopandas.read_file through GDAL for the
GeoPackage, geopandas.read_parquet through pyarrow for the GeoParquet), geometries equal with
shapely's equals_exact to 1e-9, the same CRS (pyproj). Each GeoParquet file must also be
GeoParquet 1.1 as the specification says: the `geo` metadata keys and values (version,
primary column, WKB, geometry types, PROJJSON CRS, bbox, bbox covering) checked here against
what geopandas/shapely/pyproj read, the Parquet column types read by pyarrow, and the whole
file checked by geoparquet-validator (the 1.1.0 JSON Schema and PROJJSON schema it vendors,
and the specification's rules on the data).

Prints a JSON summary per file (rows, geometry types, EPSG) for the Rust test to assert on;
any disagreement is an AssertionError naming the file (non-zero exit).
"""
import json
import sys
from pathlib import Path

import geopandas
import geoparquet_validator
import pyarrow
import pyarrow.parquet as pq
import pyogrio
import shapely
from pyproj import CRS

BBOX_FIELDS = ["xmin", "ymin", "xmax", "ymax"]


def check_pair(gpkg, parquet):
    name = str(parquet)
    # The data layer; a styled GeoPackage also holds the `layer_styles` table.
    layer = pyogrio.list_layers(gpkg)[0][0]
    ref = geopandas.read_file(gpkg, layer=layer)
    got = geopandas.read_parquet(parquet)
    info = pyogrio.read_info(gpkg, layer=layer)

    # --- the file's own metadata, by the GeoParquet 1.1 specification ---
    meta = pq.read_metadata(parquet)
    assert b"geo" in meta.metadata, f"{name}: no 'geo' metadata"
    geo = json.loads(meta.metadata[b"geo"])
    assert geo["version"] == "1.1.0", f"{name}: version {geo['version']}"
    assert geo["primary_column"] == "geometry", name
    assert list(geo["columns"]) == ["geometry"], name
    col = geo["columns"]["geometry"]
    assert col["encoding"] == "WKB", name
    if len(ref):
        want_types = sorted(set(ref.geom_type))
    else:
        want_types = [info["geometry_type"]]
    assert col["geometry_types"] == want_types, f"{name}: {col['geometry_types']} vs {want_types}"
    assert col["covering"] == {"bbox": {f: ["bbox", f] for f in BBOX_FIELDS}}, name
    # A GeoPackage without a CRS says "Undefined geographic SRS"; GeoParquet says null.
    ref_crs = ref.crs
    if ref_crs is not None and ref_crs.name.startswith("Undefined"):
        ref_crs = None
    if ref_crs is None:
        assert "crs" in col and col["crs"] is None, f"{name}: crs {col.get('crs')}"
        assert got.crs is None, name
    else:
        assert isinstance(col["crs"], dict), f"{name}: crs must be PROJJSON"
        assert CRS.from_json_dict(col["crs"]) == ref_crs, name
        assert got.crs == ref_crs, f"{name}: {got.crs} vs {ref_crs}"
    if len(ref):
        assert col["bbox"] == [float(v) for v in ref.total_bounds], f"{name}: bbox {col['bbox']}"
    else:
        assert "bbox" not in col, name

    # --- the Parquet schema as pyarrow reads it ---
    schema = pq.read_schema(parquet)
    assert schema.field("geometry").type == pyarrow.binary(), name
    bbox_type = schema.field("bbox").type
    assert pyarrow.types.is_struct(bbox_type), f"{name}: bbox {bbox_type}"
    assert [(f.name, f.type) for f in bbox_type] == [(f, pyarrow.float64()) for f in BBOX_FIELDS], (
        f"{name}: bbox {bbox_type}"
    )
    for field, ogr_type in zip(info["fields"], info["dtypes"]):
        want = {"object": pyarrow.string(), "int64": pyarrow.int64(), "int32": pyarrow.int64(),
                "float64": pyarrow.float64()}[str(ogr_type)]
        assert schema.field(field).type == want, f"{name}: {field} {schema.field(field).type}"
    assert [f for f in schema.names if f not in ("geometry", "bbox")] == list(info["fields"]), (
        f"{name}: columns {schema.names} vs {list(info['fields'])}"
    )

    # --- the features ---
    assert len(got) == len(ref), f"{name}: {len(got)} rows vs {len(ref)}"
    attrs = [c for c in ref.columns if c != "geometry"]
    # Two runs may write features in different orders (tiles arrive from parallel readers):
    # compare them sorted by their attributes, then geometry.
    def in_order(df):
        key = [tuple(row) + (g.wkb,) for row, g in zip(df[attrs].itertuples(index=False), df.geometry)]
        order = sorted(range(len(df)), key=lambda i: key[i])
        return df.iloc[order].reset_index(drop=True), order

    ref, _ = in_order(ref)
    got, order = in_order(got)
    for c in attrs:
        a, b = ref[c].tolist(), got[c].tolist()
        assert a == b, f"{name}: column {c} differs: {a[:5]} vs {b[:5]}"
    for i, (a, b) in enumerate(zip(ref.geometry, got.geometry)):
        assert shapely.equals_exact(a, b, tolerance=1e-9), f"{name}: feature {i}: {a} vs {b}"
    # The covering holds each geometry's bounds.
    boxes = pq.read_table(parquet, columns=["bbox"]).column("bbox").to_pylist()
    boxes = [boxes[i] for i in order]
    for i, (box, g) in enumerate(zip(boxes, ref.geometry)):
        assert [box[f] for f in BBOX_FIELDS] == list(g.bounds), f"{name}: bbox of feature {i}"

    # --- the independent validator (GeoParquet 1.1.0 schema and rules) ---
    report = geoparquet_validator.check(str(parquet))
    assert report["version"] == "1.1.0", f"{name}: {report['version']}"
    failed = geoparquet_validator.failed(report)
    assert not failed, f"{name}: geoparquet-validator failed {failed}: {report['outcomes']}"
    outcome = {o["id"]: o["status"] for o in report["outcomes"]}
    assert outcome["/conf/core/geo-metadata"] == "pass", f"{name}: {outcome}"

    return {
        "rows": int(len(got)),
        "geometry_types": col["geometry_types"],
        "epsg": got.crs.to_epsg() if got.crs is not None else None,
        "columns": attrs,
        "row_groups": meta.num_row_groups,
    }


def main(gpkg_dir, parquet_dir):
    gpkg_dir, parquet_dir = Path(gpkg_dir), Path(parquet_dir)
    report = {}
    for gpkg in sorted(gpkg_dir.rglob("*.gpkg")):
        rel = gpkg.relative_to(gpkg_dir).with_suffix(".parquet")
        parquet = parquet_dir / rel
        assert parquet.is_file(), f"{parquet}: missing (beside {gpkg})"
        report[str(rel)] = check_pair(gpkg, parquet)
    extra = {str(p.relative_to(parquet_dir)) for p in parquet_dir.rglob("*.parquet")} - set(report)
    assert not extra, f"GeoParquet files without a GeoPackage: {sorted(extra)}"
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
