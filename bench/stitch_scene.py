#!/usr/bin/env python3
"""Writes the stitch benchmark's scene (bench/run.sh, section `stitch`): an N x N 3-band uint8
GeoTIFF (DEFLATE, 256 x 256 tiles, EPSG:32633, 0.5 m pixels) whose red band holds a single-class
mask: rectangles, ellipses and rings (annuli, so that some polygons have holes) of varied sizes
(log-uniform 4..256 px), about one per 40000 px^2 (10000 at 20000^2, 625 at 5000^2; some overlap
and merge). Red is 220..235 inside and 30..45 outside (a small periodic texture), green and blue
carry a periodic texture, so `red > 127` (and red/255 > 0.5) is exactly the painted mask.

Written in strips of 256 rows, so memory stays ~N x 256 x 3 bytes whatever N. A sidecar
OUT.json records the shapes' count and the number of mask pixels (the ground truth).

    python bench/stitch_scene.py OUT.tif --size 20000 [--seed 7]
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import rasterio
from rasterio.transform import from_origin

STRIP = 256


def shapes(n: int, seed: int) -> np.ndarray:
    """[k, 5] int64: x0, y0, w, h, kind (0 rect, 1 ellipse, 2 ring)."""
    rng = np.random.default_rng(seed)
    k = max(1, round(n * n / 40000))
    w = np.exp(rng.uniform(np.log(4), np.log(256), k)).astype(np.int64)
    h = np.clip((w * np.exp(rng.uniform(-0.7, 0.7, k))).astype(np.int64), 3, 320)
    x0 = rng.integers(0, n, k) - w // 2
    y0 = rng.integers(0, n, k) - h // 2
    kind = rng.choice(3, k, p=[0.5, 0.35, 0.15])
    kind[(kind == 2) & ((w < 24) | (h < 24))] = 1  # rings need room for a hole
    return np.stack([x0, y0, w, h, kind], axis=1)


def paint(mask: np.ndarray, r0: int, sh: np.ndarray) -> None:
    """Paints the shapes that cross rows r0 .. r0 + mask.shape[0] into mask (bool [rows, n])."""
    rows, n = mask.shape
    r1 = r0 + rows
    hit = sh[(sh[:, 1] < r1) & (sh[:, 1] + sh[:, 3] > r0) & (sh[:, 0] < n) & (sh[:, 0] + sh[:, 2] > 0)]
    for x0, y0, w, h, kind in hit:
        ya, yb = max(y0, r0), min(y0 + h, r1)
        xa, xb = max(x0, 0), min(x0 + w, n)
        if kind == 0:
            mask[ya - r0:yb - r0, xa:xb] = True
            continue
        # ellipse inscribed in the w x h box, tested at pixel centres
        cy, cx = y0 + h / 2.0, x0 + w / 2.0
        yy = ((np.arange(ya, yb) + 0.5 - cy) / (h / 2.0))[:, None]
        xx = ((np.arange(xa, xb) + 0.5 - cx) / (w / 2.0))[None, :]
        d = yy * yy + xx * xx
        inside = d <= 1.0
        if kind == 2:
            inside &= d >= 0.36  # hole: the inner 60 % ellipse
        mask[ya - r0:yb - r0, xa:xb] |= inside


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    n = a.size
    sh = shapes(n, a.seed)
    tmp = a.out + ".partial.tif"
    profile = dict(driver="GTiff", width=n, height=n, count=3, dtype="uint8", crs="EPSG:32633",
                   transform=from_origin(500000.0, 5500000.0, 0.5, 0.5), tiled=True,
                   blockxsize=256, blockysize=256, compress="DEFLATE", bigtiff="IF_SAFER",
                   num_threads="ALL_CPUS", photometric="RGB")
    xs = np.arange(n)
    tex_x = ((xs // 7) % 16).astype(np.uint8)
    ones = 0
    with rasterio.open(tmp, "w", **profile) as dst:
        for r0 in range(0, n, STRIP):
            rows = min(STRIP, n - r0)
            mask = np.zeros((rows, n), bool)
            paint(mask, r0, sh)
            ones += int(mask.sum())
            ys = np.arange(r0, r0 + rows)
            tex = (tex_x[None, :] + ((ys // 5) % 16).astype(np.uint8)[:, None]) // 2  # 0..15
            rgb = np.empty((3, rows, n), np.uint8)
            rgb[0] = np.where(mask, 220, 30).astype(np.uint8) + tex
            rgb[1] = np.where(mask, 90, 130).astype(np.uint8) + tex
            rgb[2] = 60 + 2 * tex
            dst.write(rgb, window=((r0, r0 + rows), (0, n)))
    os.replace(tmp, a.out)
    with open(os.path.splitext(a.out)[0] + ".json", "w") as f:
        json.dump({"size": n, "seed": a.seed, "shapes": int(len(sh)), "mask_pixels": ones,
                   "pixel_area_m2": 0.25, "mask_area_m2": ones * 0.25}, f)


if __name__ == "__main__":
    main()
