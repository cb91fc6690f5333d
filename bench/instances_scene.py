#!/usr/bin/env python3
"""A generated scene for the instances bench: red discs on a green ground, one every
`--spacing` pixels (radius 12..24, jittered by a seeded RNG), EPSG:32633 at 0.5 m, DEFLATE
256^2 tiles, and a GeoPackage of their bounding boxes (grown by 3 px) with label "disc".

    bench/instances_scene.py OUT.tif --width W --height H [--spacing 64]
writes OUT.tif, OUT.boxes.gpkg and OUT.json ({"instances": n, "pixels": painted pixels}).
"""
import argparse
import json
import os

import geopandas as gpd
import numpy as np
import rasterio
from rasterio.transform import from_origin
from shapely.geometry import box

p = argparse.ArgumentParser()
p.add_argument("out")
p.add_argument("--width", type=int, required=True)
p.add_argument("--height", type=int, required=True)
p.add_argument("--spacing", type=int, default=64)
a = p.parse_args()
W, H, S = a.width, a.height, a.spacing
rng = np.random.default_rng(17)
ox, oy, gsd = 500000.0, 4600000.0, 0.5
discs = []
for cy in range(S // 2, H - S // 2 + 1, S):
    for cx in range(S // 2, W - S // 2 + 1, S):
        r = float(rng.uniform(12, 24))
        discs.append((cx + float(rng.uniform(-4, 4)), cy + float(rng.uniform(-4, 4)), r))
profile = dict(driver="GTiff", width=W, height=H, count=3, dtype="uint8", crs="EPSG:32633",
               transform=from_origin(ox, oy, gsd, gsd), tiled=True, blockxsize=256,
               blockysize=256, compress="deflate")
painted = 0
tmp = a.out + ".partial.tif"
with rasterio.open(tmp, "w", **profile) as dst:
    # Strips of 256 rows: the scene is never held whole.
    for y0 in range(0, H, 256):
        h = min(256, H - y0)
        red = np.full((h, W), 30, np.uint8)
        ys = np.arange(y0, y0 + h)[:, None] + 0.5
        for cx, cy, r in discs:
            if cy + r < y0 or cy - r > y0 + h:
                continue
            x0, x1 = max(0, int(cx - r) - 1), min(W, int(cx + r) + 2)
            xs = np.arange(x0, x1)[None, :] + 0.5
            red[:, x0:x1][(xs - cx) ** 2 + (ys - cy) ** 2 < r * r] = 220
        painted += int((red == 220).sum())
        green = np.where(red == 220, 40, 120).astype(np.uint8)
        blue = np.full((h, W), 60, np.uint8)
        dst.write(np.stack([red, green, blue]), window=rasterio.windows.Window(0, y0, W, h))
os.replace(tmp, a.out)
geoms = [box(ox + (cx - r - 3) * gsd, oy - (cy + r + 3) * gsd, ox + (cx + r + 3) * gsd,
             oy - (cy - r - 3) * gsd) for cx, cy, r in discs]
boxes = a.out[:-4] + ".boxes.gpkg"
gpd.GeoDataFrame({"label": ["disc"] * len(geoms)}, geometry=geoms, crs="EPSG:32633").to_file(boxes)
json.dump({"instances": len(discs), "pixels": painted}, open(a.out[:-4] + ".json", "w"))
