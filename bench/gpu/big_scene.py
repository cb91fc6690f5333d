#!/usr/bin/env python3
"""Writes a large 3-band uint8 scene with numpy alone (the GPU machine has neither GDAL's tools nor
rasterio), streamed strip by strip so memory stays small whatever the size: a baseline
little-endian TIFF (BigTIFF past 4 GiB), RGB chunky, uncompressed, one strip per tile row (TILE lines), pixel data
contiguous from a known offset. tessera reads it with --pixel-coords; the PyTorch peer memory-maps
the pixels directly (the offset and shape are in OUT.json).

Every tile is different: each tile row is a horizontally rolled, channel-permuted and brightened
copy of a base texture, so the classifier's answers vary from tile to tile.

    python bench/gpu/big_scene.py OUT.tif --tile 224 --tiles 300     # 67200 x 67200, 90,000 tiles (BigTIFF)
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from caption_scene import texture  # noqa: E402  (smooth coloured noise, numpy only)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--tile", type=int, default=224)
    ap.add_argument("--tiles", type=int, default=300, help="tiles per side (BigTIFF past 4 GiB)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--bigtiff", action="store_true", help="BigTIFF even below 4 GiB")
    a = ap.parse_args()
    t, n = a.tile, a.tiles
    w = h = t * n
    base_tiles = min(n, 16)
    base = texture(t * base_tiles, t * base_tiles, a.seed)  # [bh, bw, 3]
    bw = base.shape[1]
    rng = np.random.default_rng(a.seed + 1)

    # Header, then the IFD, then the strip tables, then the pixels. BigTIFF (8-byte offsets)
    # when the pixels pass 4 GiB.
    strip = t * w * 3
    big = a.bigtiff or 3 * w * h + 65536 >= 2**32
    tags = [  # (tag, type, values): SHORT 3, LONG 4, LONG8 16
        (256, 4, [w]), (257, 4, [h]), (258, 3, [8, 8, 8]), (259, 3, [1]), (262, 3, [2]),
        (273, 16 if big else 4, None), (277, 3, [3]), (278, 4, [t]), (279, 16 if big else 4, None),
        (284, 3, [1]), (339, 3, [1, 1, 1]),
    ]
    word = 8 if big else 4
    entry_size = 20 if big else 12
    ifd_off = 16 if big else 8
    ifd_size = word + len(tags) * entry_size + word if big else 2 + len(tags) * entry_size + 4
    extra = ifd_off + ifd_size              # out-of-line values follow the IFD
    layout = {}
    for tag, typ, vals in tags:
        count = n if vals is None else len(vals)
        nbytes = count * {3: 2, 4: 4, 16: 8}[typ]
        if nbytes > word:
            layout[tag] = extra
            extra += (nbytes + 7) // 8 * 8
    data_off = (extra + 15) // 16 * 16
    offsets = [data_off + i * strip for i in range(n)]
    counts = [strip] * n
    head = bytearray(data_off)
    if big:
        head[0:16] = b"II+\x00" + struct.pack("<HHQ", 8, 0, ifd_off)
        struct.pack_into("<Q", head, ifd_off, len(tags))
    else:
        head[0:8] = b"II*\x00" + struct.pack("<I", ifd_off)
        struct.pack_into("<H", head, ifd_off, len(tags))
    pos = ifd_off + (8 if big else 2)
    for tag, typ, vals in tags:
        vals = {273: offsets, 279: counts}.get(tag, vals)
        fmt = {3: "H", 4: "I", 16: "Q"}[typ]
        packed = struct.pack("<" + fmt * len(vals), *vals)
        if tag in layout:
            head[layout[tag]:layout[tag] + len(packed)] = packed
            inline = struct.pack("<Q" if big else "<I", layout[tag])
        else:
            inline = packed.ljust(word, b"\0")
        cnt = struct.pack("<Q" if big else "<I", len(vals))
        head[pos:pos + entry_size] = struct.pack("<HH", tag, typ) + cnt + inline
        pos += entry_size

    tmp = a.out.with_suffix(".partial")
    with open(tmp, "wb") as f:
        f.write(head)
        for r in range(n):
            rows = base[(r % base_tiles) * t:(r % base_tiles + 1) * t]
            shift = int(rng.integers(0, bw))
            perm = rng.permutation(3)
            gain = rng.uniform(0.7, 1.3)
            src = np.roll(rows, shift, axis=1)[:, :, perm]
            src = np.clip(src.astype(np.float32) * gain, 0, 255).astype(np.uint8)
            reps = -(-w // bw)
            line = np.tile(src, (1, reps, 1))[:, :w]
            f.write(np.ascontiguousarray(line).tobytes())
    tmp.rename(a.out)
    meta = {"width": w, "height": h, "tile": t, "tiles": n, "data_offset": data_off, "layout": "HWC uint8"}
    a.out.with_suffix(".json").write_text(json.dumps(meta))
    print(f"wrote {a.out}: {w} x {h}, {n * n} tiles of {t}", file=sys.stderr)


if __name__ == "__main__":
    main()
