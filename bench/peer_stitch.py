#!/usr/bin/env python3
"""Python peer of the stitch benchmark (bench/run.sh, section `stitch`): the same job as
`tessera segment ... --model seg-threshold` done the usual Python way, on one process:

  1. read the scene's red band in windows of whole block rows (rasterio) and threshold it,
     red > 127, into a uint8 class mask of the whole scene held in memory (N x N bytes),
  2. write the mask as a COG (rasterio, GDAL's COG driver: DEFLATE, nearest overviews,
     NUM_THREADS=ALL_CPUS, as tessera's classes.tif),
  3. polygonize it with rasterio.features.shapes(mask, mask=mask == 1, connectivity 4) into
     shapely polygons,
  4. write them to a GeoPackage with geopandas (pyogrio), with the fields tessera writes
     (class, label, area).

Prints one JSON object: seconds, per-phase seconds, polygons, total area, mask pixels and
peak RSS (getrusage of this process).

    python bench/peer_stitch.py SCENE --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scene")
    ap.add_argument("--out", required=True, help="output folder (replaced)")
    ap.add_argument("--strip-blocks", type=int, default=4, help="block rows per read window")
    a = ap.parse_args()

    t0 = time.perf_counter()
    import geopandas as gpd
    import rasterio
    import rasterio.features
    import shapely.geometry
    t_import = time.perf_counter() - t0

    if os.path.exists(a.out):
        shutil.rmtree(a.out)
    os.makedirs(a.out)
    phases = {"import": t_import}

    # 1. read + threshold, in windows of whole block rows
    t = time.perf_counter()
    with rasterio.open(a.scene) as src:
        h, w = src.height, src.width
        transform, crs = src.transform, src.crs
        step = src.block_shapes[0][0] * a.strip_blocks
        mask = np.empty((h, w), np.uint8)
        for r0 in range(0, h, step):
            r1 = min(h, r0 + step)
            red = src.read(1, window=((r0, r1), (0, w)))
            np.greater(red, 127, out=mask[r0:r1].view(bool))
    phases["read_threshold"] = time.perf_counter() - t

    # 2. COG
    t = time.perf_counter()
    profile = dict(driver="COG", width=w, height=h, count=1, dtype="uint8", crs=crs,
                   transform=transform, compress="DEFLATE", overview_resampling="nearest",
                   bigtiff="IF_SAFER", num_threads="ALL_CPUS")
    with rasterio.open(os.path.join(a.out, "classes.tif"), "w", **profile) as dst:
        dst.write(mask, 1)
    phases["cog"] = time.perf_counter() - t

    # 3. polygonize
    t = time.perf_counter()
    geoms = [shapely.geometry.shape(g) for g, _ in
             rasterio.features.shapes(mask, mask=mask == 1, connectivity=4, transform=transform)]
    phases["polygonize"] = time.perf_counter() - t

    # 4. GeoPackage
    t = time.perf_counter()
    areas = np.array([g.area for g in geoms])
    gdf = gpd.GeoDataFrame({"class": np.ones(len(geoms), np.int64), "label": ["object"] * len(geoms),
                            "area": areas}, geometry=geoms, crs=crs)
    gdf.to_file(os.path.join(a.out, "polygons.gpkg"), layer="polygons", driver="GPKG", engine="pyogrio")
    phases["gpkg"] = time.perf_counter() - t

    seconds = time.perf_counter() - t0
    print(json.dumps({
        "scene": a.scene,
        "size": [w, h],
        "seconds": seconds,
        "phases": phases,
        "polygons": len(geoms),
        "total_area": float(areas.sum()),
        "mask_pixels": int(np.count_nonzero(mask)),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }))


if __name__ == "__main__":
    main()
