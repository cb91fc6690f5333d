"""Open every output in a folder the way a GIS analyst's Python would, and report what was
found as JSON (the Rust tests assert on it): vectors with geopandas (pyogrio), rasters with
rasterio, COG validity with rio-cogeo. `geodesic_area_m2` is each feature's area on the
ellipsoid of its CRS as pyproj computes it (GeographicLib through PROJ), the reference for
tessera's `area_m2`."""
import json
import sys
from pathlib import Path

import geopandas
import rasterio
from rio_cogeo.cogeo import cog_validate

VECTORS = {".gpkg", ".shp", ".geojson", ".fgb"}


def geodesic_areas(df):
    """Each feature's geodesic area in m^2 (None without a CRS or for non-polygons)."""
    if df.crs is None or not len(df):
        return [None] * len(df)
    geod = df.crs.get_geod()
    lonlat = df.to_crs(df.crs.geodetic_crs)
    out = []
    for g in lonlat.geometry:
        if g is None or g.geom_type not in ("Polygon", "MultiPolygon"):
            out.append(None)
        else:
            out.append(abs(geod.geometry_area_perimeter(g)[0]))
    return out


def main(folder):
    report = {}
    for path in sorted(Path(folder).iterdir()):
        if path.suffix in VECTORS:
            df = geopandas.read_file(path)
            report[path.name] = {
                "kind": "vector",
                "epsg": df.crs.to_epsg() if df.crs else None,
                "bounds": [float(v) for v in df.total_bounds] if len(df) else None,
                "rows": int(len(df)),
                "columns": [c for c in df.columns if c != "geometry"],
                "geom_types": sorted(set(df.geom_type)),
                "valid": bool(df.geometry.is_valid.all()),
                "records": json.loads(df.drop(columns="geometry").to_json(orient="records")),
                "geodesic_area_m2": geodesic_areas(df),
            }
        elif path.suffix == ".tif":
            with rasterio.open(path) as src:
                valid, errors, warnings = cog_validate(str(path), quiet=True)
                report[path.name] = {
                    "kind": "raster",
                    "epsg": src.crs.to_epsg() if src.crs else None,
                    "bounds": list(src.bounds),
                    "size": [src.width, src.height],
                    "count": src.count,
                    "dtype": src.dtypes[0],
                    "nodata": None if src.nodata is None or src.nodata != src.nodata else src.nodata,
                    "nodata_is_nan": src.nodata is not None and src.nodata != src.nodata,
                    "descriptions": list(src.descriptions),
                    "colormap": len(src.colormap(1)) if src.count == 1 and src.dtypes[0] == "uint8" else 0,
                    "cog_valid": bool(valid),
                    "cog_errors": errors,
                    "data": src.read().tolist(),
                }
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
