#!/usr/bin/env python3
"""Writes the caption benchmarks' scene with numpy alone (it also runs on the GPU machine, which
has neither GDAL's tools nor rasterio): a textured 3-band uint8 image of COLS x ROWS tiles of
TILE px, as an uncompressed baseline TIFF without georeferencing (tessera reads it with
--pixel-coords), plus the same pixels as a .npy file [H, W, 3] for the PyTorch peer, which cuts
the same tiles from it (row-major, no overlap: tessera's tile r<row>c<col>).

    python bench/caption_scene.py OUT.tif --tile 224 --cols 8 --rows 4   # -> OUT.tif, OUT.npy
"""

from __future__ import annotations

import argparse
import struct
from pathlib import Path

import numpy as np


def texture(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth coloured noise: a few octaves of bilinearly upsampled uniform noise, uint8 [h, w, 3]."""
    rng = np.random.default_rng(seed)
    out = np.zeros((h, w, 3), np.float64)
    for cell, weight in ((97, 0.5), (23, 0.3), (5, 0.2)):
        gh, gw = h // cell + 2, w // cell + 2
        g = rng.random((gh, gw, 3))
        y = np.arange(h) / cell
        x = np.arange(w) / cell
        y0, x0 = y.astype(int), x.astype(int)
        fy, fx = (y - y0)[:, None, None], (x - x0)[None, :, None]
        a = g[y0][:, x0]
        b = g[y0][:, x0 + 1]
        c = g[y0 + 1][:, x0]
        d = g[y0 + 1][:, x0 + 1]
        out += weight * ((a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy)
    return np.clip(out * 255.0, 0, 255).astype(np.uint8)


def write_tiff(path: Path, rgb: np.ndarray, rows_per_strip: int = 64) -> None:
    """Baseline little-endian TIFF: RGB, 8 bits, chunky, uncompressed, strips."""
    h, w, _ = rgb.shape
    data = np.ascontiguousarray(rgb, np.uint8).tobytes()
    line = w * 3
    strips = [(y, min(rows_per_strip, h - y)) for y in range(0, h, rows_per_strip)]
    n_tags = 11
    ifd_off = 8
    ifd_size = 2 + 12 * n_tags + 4
    bps_off = ifd_off + ifd_size                 # BitsPerSample: 3 x SHORT
    offs_off = bps_off + 6                       # StripOffsets: LONG each
    cnts_off = offs_off + 4 * len(strips)        # StripByteCounts: LONG each
    data_off = cnts_off + 4 * len(strips)
    offsets = [data_off + y * line for y, _ in strips]
    counts = [n * line for _, n in strips]

    def tag(code: int, typ: int, count: int, value: int) -> bytes:
        if typ == 3 and count == 1:
            return struct.pack("<HHIHH", code, typ, count, value, 0)
        return struct.pack("<HHII", code, typ, count, value)

    tags = [
        tag(256, 4, 1, w),                        # ImageWidth
        tag(257, 4, 1, h),                        # ImageLength
        tag(258, 3, 3, bps_off),                  # BitsPerSample 8,8,8
        tag(259, 3, 1, 1),                        # Compression: none
        tag(262, 3, 1, 2),                        # Photometric: RGB
        tag(273, 4, len(strips), offs_off) if len(strips) > 1 else tag(273, 4, 1, offsets[0]),
        tag(277, 3, 1, 3),                        # SamplesPerPixel
        tag(278, 4, 1, rows_per_strip),           # RowsPerStrip
        tag(279, 4, len(strips), cnts_off) if len(strips) > 1 else tag(279, 4, 1, counts[0]),
        tag(284, 3, 1, 1),                        # PlanarConfiguration: chunky
        tag(339, 3, 1, 1),                        # SampleFormat: unsigned
    ]
    assert len(tags) == n_tags
    with open(path, "wb") as f:
        f.write(b"II*\x00" + struct.pack("<I", ifd_off))
        f.write(struct.pack("<H", n_tags) + b"".join(tags) + struct.pack("<I", 0))
        f.write(struct.pack("<3H", 8, 8, 8))
        f.write(struct.pack(f"<{len(strips)}I", *offsets))
        f.write(struct.pack(f"<{len(strips)}I", *counts))
        assert f.tell() == data_off
        f.write(data)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="scene .tif (the .npy goes next to it)")
    ap.add_argument("--tile", type=int, required=True, help="tile size (the model's input size)")
    ap.add_argument("--cols", type=int, default=8)
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    rgb = texture(a.rows * a.tile, a.cols * a.tile, a.seed)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.out.with_name(a.out.name + ".partial")
    write_tiff(tmp, rgb)
    np.save(a.out.with_suffix(".npy"), rgb)
    tmp.replace(a.out)
    print(f"{a.out}: {rgb.shape[1]} x {rgb.shape[0]} px, {a.cols * a.rows} tiles of {a.tile}")


if __name__ == "__main__":
    main()
