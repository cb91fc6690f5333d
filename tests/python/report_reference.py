"""Reference class areas for a tessera label layer, computed independently of tessera: the
layer read with geopandas, reprojected to its CRS's geographic CRS with pyproj, and each
polygon's geodesic area on that CRS's ellipsoid from pyproj.Geod (Karney's algorithm).

    python report_reference.py LAYER.gpkg
prints {"areas": {label: m2, ...}} (areas of the features summed per `label`)."""
import json
import sys

import geopandas as gpd

layer = gpd.read_file(sys.argv[1])
geod = layer.crs.get_geod()
layer = layer.to_crs(layer.crs.geodetic_crs)
areas = {}
for label, geom in zip(layer["label"], layer.geometry):
    area, _ = geod.geometry_area_perimeter(geom)
    areas[label] = areas.get(label, 0.0) + abs(area)
print(json.dumps({"areas": areas}))
