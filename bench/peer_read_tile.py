"""Python peer for the read + tile + scale benchmark: the same work as `tessera bench-read`
done the usual Python way, with rasterio windowed reads and numpy.

Tiles of SIZE x SIZE on a regular grid (stride SIZE, edge tiles padded with zeros), bands 1..3,
uint8 scaled to [0, 1] float32, packed into [BATCH, 3, SIZE, SIZE] CHW batches. With
--threads N, N threads each open their own dataset and read a share of the tiles (rasterio
releases the GIL while GDAL decodes).
"""
import argparse
import json
import resource
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import rasterio
from rasterio.windows import Window


def tiles_of(width, height, size):
    for y in range(0, height, size):
        for x in range(0, width, size):
            yield x, y


def read_tile(src, x, y, size, width, height):
    w, h = min(size, width - x), min(size, height - y)
    out = np.zeros((3, size, size), dtype=np.float32)
    data = src.read((1, 2, 3), window=Window(x, y, w, h))
    out[:, :h, :w] = data.astype(np.float32) * (1.0 / 255.0)
    return out


def run(path, size, batch, threads):
    with rasterio.open(path) as src:
        width, height = src.width, src.height
    positions = list(tiles_of(width, height, size))
    start = time.perf_counter()
    checksum = 0.0
    batches = 0

    def consume(stack):
        nonlocal checksum, batches
        checksum += float(np.asarray(stack, dtype=np.float64).sum())
        batches += 1

    if threads <= 1:
        with rasterio.open(path) as src:
            buf = np.zeros((batch, 3, size, size), dtype=np.float32)
            n = 0
            for x, y in positions:
                buf[n] = read_tile(src, x, y, size, width, height)
                n += 1
                if n == batch:
                    consume(buf)
                    n = 0
            if n:
                consume(buf[:n])
    else:
        # Contiguous vertical stripes per thread, so each thread's block reads stay local.
        cols = (width + size - 1) // size
        shares = [[(x, y) for (x, y) in positions if (x // size) * threads // cols == t] for t in range(threads)]

        def worker(share):
            out = []
            with rasterio.open(path) as src:
                for x, y in share:
                    out.append(read_tile(src, x, y, size, width, height))
                    if len(out) == batch:
                        yield_batch = np.stack(out)
                        out = []
                        yield yield_batch
                if out:
                    yield np.stack(out)

        def drain(share):
            return [b.sum(dtype=np.float64) for b in worker(share)]

        with ThreadPoolExecutor(threads) as pool:
            for sums in pool.map(drain, shares):
                checksum += float(sum(sums))
                batches += len(sums)
    seconds = time.perf_counter() - start
    return {
        "scene": path,
        "tiles": len(positions),
        "batches": batches,
        "threads": threads,
        "seconds": seconds,
        "tiles_per_second": len(positions) / seconds,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "checksum": checksum,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scene")
    ap.add_argument("--tile-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    print(json.dumps(run(a.scene, a.tile_size, a.batch_size, a.threads)))


if __name__ == "__main__":
    main()
