#!/usr/bin/env bash
# CLIP ViT-B/32 zero-shot classification from a large GeoTIFF to answers on the GPU machine (#7):
# `tessera classify --device cuda` end to end, `tessera bench-model` (model only), and PyTorch fp16
# model-only on the same weights, in one run, with an agreement check. See bench/gpu/README.md for
# the staging and the one command that runs it there.
#
#   bash bench/gpu/classify_h100.sh
#
# Steps:
#   1. export once into $WORK: export.py clip --tiny --shape $SHAPE --seed $SEED --optimize --fp16
#      --uint8-input (random weights of the real architecture; fused attention, fp16 inside,
#      uint8 tiles in with the normalisation in the graph);
#   2. write a $TILES x $TILES-tile uint8 scene (bench/gpu/big_scene.py: numpy, streamed, plain
#      TIFF read with --pixel-coords; default 300 x 300 = 90,000 tiles of 224 px, 13.5 GB, BigTIFF) and read
#      it once so the page cache holds it, as it would a scene just downloaded;
#   3. tessera bench-model (model-only images/s, batches in host memory, same device and batch);
#   4. tessera classify end to end (reading, scaling, batching, inference, the class/probability
#      COGs and tile/label layers) with one template and 8 labels, --no-cache;
#   5. bench/gpu/peer_clip.py: PyTorch fp16 (SDPA) model-only images/s with the batch on the GPU,
#      and top-1 agreement with tessera's tiles.gpkg on the first $CHECK tiles;
#   6. a table (tiles/s end to end and in the streaming part, model-only, PyTorch, ratios, goals:
#      end to end >= 25,000 tiles/s and >= 1.0x PyTorch fp16 model-only), appended with the card
#      and the date to $NOTES and written to $OUT (only $OUT comes back from the device tool).
#
# Environment (defaults in brackets): SHAPE [vit-b32] (tiny: a quick check of the script), SEED [0],
#   DEVICE [cuda] (cpu runs everything on a machine without a GPU: PyTorch in fp32 then),
#   TILES [300] per side, BATCH [256], CHECK [8192], THREADS [nproc] reader threads,
#   THREAD_SWEEP [half of nproc] other reader-thread counts to time the streaming part with
#   (one more classify run each, outputs discarded; "" for none): does GDAL decoding keep up?
#   TESSERA [tessera-env.sh's, else target/release/tessera], PYTHON [python3],
#   WORK [/tmp/classify-gpu], NOTES [bench/gpu/NOTES.md].
set -euo pipefail
cd "$(dirname "$0")/../.."
SHAPE=${SHAPE:-vit-b32}
SEED=${SEED:-0}
DEVICE=${DEVICE:-cuda}
if [ "$DEVICE" = cpu ]; then DTYPE=${DTYPE:-fp32}; else DTYPE=${DTYPE:-fp16}; fi
TILES=${TILES:-300}
BATCH=${BATCH:-256}
CHECK=${CHECK:-8192}
THREADS=${THREADS:-$(nproc)}
THREAD_SWEEP=${THREAD_SWEEP-$(( $(nproc) / 2 ))}
PYTHON=${PYTHON:-python3}
TESSERA=${TESSERA:-target/release/tessera}
WORK=${WORK:-/tmp/classify-gpu}
NOTES=${NOTES:-bench/gpu/NOTES.md}
RES=${OUT:-$WORK/results}
LABELS="forest,water,farmland,urban area,bare soil,road,cloud,snow"
TEMPLATE="a satellite photo of {}."
mkdir -p "$WORK" "$RES"
export PYTHONUNBUFFERED=1
say() { printf 'classify-gpu: %s\n' "$*" >&2; }
t_start=$(date +%s)

if [ "$DEVICE" != cpu ]; then
  [ -n "${ORT_DYLIB_PATH:-}" ] || say "WARNING: ORT_DYLIB_PATH is not set (source .gpu/pN/ort-gpu-env.sh first)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$RES/gpu.txt" || true
  say "GPU: $(cat "$RES/gpu.txt" 2>/dev/null)"
fi
"$TESSERA" doctor > "$RES/doctor.txt" 2>&1 || say "tessera doctor reports a problem (see doctor.txt); going on"

# --- 1. the model ------------------------------------------------------------------------------------
M="$WORK/clip-$SHAPE-s$SEED-u8-fp16-opt"
if [ ! -f "$M/model.toml" ]; then
  say "exporting the $SHAPE-shaped random CLIP (optimized, fp16, uint8 input) into $M"
  rm -rf "$M.partial"
  t=$(date +%s)
  $PYTHON tools/export/export.py clip --tiny --shape "$SHAPE" --seed "$SEED" --optimize --fp16 --uint8-input \
    --no-reference --skip-verify --out "$M.partial" 2>&1 | grep -v -E 'Warning|^  ' >&2
  echo "$(( $(date +%s) - t ))" > "$M.partial/.export_seconds"
  mv "$M.partial" "$M"
fi
SIZE=$(sed -n 's/^size *= *\([0-9]*\).*/\1/p' "$M/model.toml" | head -1)

# --- 2. the scene ------------------------------------------------------------------------------------
S="$WORK/scene_${SIZE}_${TILES}.tif"
[ -f "$S" ] || $PYTHON bench/gpu/big_scene.py "$S" --tile "$SIZE" --tiles "$TILES" >&2
cat "$S" > /dev/null

# --- 3. model only -----------------------------------------------------------------------------------
say "tessera bench-model (batch $BATCH, $DEVICE)"
"$TESSERA" bench-model "$M" --device "$DEVICE" --batch-size "$BATCH" --iterations 40 --warmup 5 > "$RES/bench_model.json"

# --- 4. end to end -----------------------------------------------------------------------------------
say "tessera classify end to end ($((TILES * TILES)) tiles, batch $BATCH, $THREADS readers, $DEVICE)"
rm -rf "$WORK/out"
"$TESSERA" classify "$S" --pixel-coords --model "$M" --device "$DEVICE" --batch-size "$BATCH" --threads "$THREADS" \
  --labels "$LABELS" --template "$TEMPLATE" --no-cache --json --quiet --out "$WORK/out" > "$RES/classify.json"

# --- 4b. reader threads: the streaming part with fewer readers (GDAL decoding keeping up?) ---------
for t in $THREAD_SWEEP; do
  [ "$t" = "$THREADS" ] && continue
  say "tessera classify with $t reader threads"
  rm -rf "$WORK/out_t$t"
  "$TESSERA" classify "$S" --pixel-coords --model "$M" --device "$DEVICE" --batch-size "$BATCH" --threads "$t" \
    --labels "$LABELS" --template "$TEMPLATE" --no-cache --json --quiet --out "$WORK/out_t$t" > "$RES/classify_t$t.json"
  rm -rf "$WORK/out_t$t"
done

# --- 5. PyTorch --------------------------------------------------------------------------------------
say "PyTorch $DTYPE model-only and agreement ($CHECK tiles)"
$PYTHON bench/gpu/peer_clip.py --package "$M" --shape "$SHAPE" --seed "$SEED" --scene "$S" --labels "$LABELS" \
  --template "$TEMPLATE" --tiles-gpkg "$WORK/out/tiles.gpkg" --batch "$BATCH" --check "$CHECK" \
  --device "$DEVICE" --dtype "$DTYPE" > "$RES/peer.json"

# --- 6. report ---------------------------------------------------------------------------------------
$PYTHON - "$RES" "$SHAPE" "$DEVICE" "$BATCH" "$THREADS" "$(( $(date +%s) - t_start ))" "$NOTES" "$M" <<'PY'
import datetime, json, os, sys
res, shape, device, batch, threads, secs, notes, model = sys.argv[1:]
bm = json.load(open(f"{res}/bench_model.json"))
cl = json.load(open(f"{res}/classify.json"))
pe = json.load(open(f"{res}/peer.json"))
gpu = open(f"{res}/gpu.txt").read().strip() if os.path.exists(f"{res}/gpu.txt") else device
tm = cl["timings"]
tiles = cl["tiles_read"]
e2e = tiles / tm["total_seconds"]
stream_s = tm["total_seconds"] - tm["load_seconds"] - tm["text_seconds"] - tm["write_seconds"]
stream = tiles / stream_s if stream_s > 0 else float("nan")
model_only = bm.get("images_per_second") or bm.get("images_per_second_mean") or float("nan")
torch_ips = pe["model_only_images_per_second"]
agree = pe["top1_agreement"]
lines = [
    f"## CLIP {shape} classify, {datetime.date.today()}, {gpu}",
    "",
    f"tessera {cl.get('provider')} (fallback: {cl.get('fallback')}; similarity head on {cl.get('similarity_provider')}, pinned input {cl.get('pinned_input')}), package {os.path.basename(model)} "
    f"(random weights; fused attention, fp16, uint8 input), batch {batch}, {threads} reader threads, "
    f"{tiles} tiles of {cl['tile_size']} px; PyTorch {pe['torch']} {pe['dtype']} (SDPA) on {pe['device']}.",
    "",
    "| what | tiles/s |",
    "|---|---:|",
    f"| tessera classify, end to end (load, text, read, infer, write: {tm['total_seconds']:.2f} s) | {e2e:,.0f} |",
    f"| tessera classify, streaming part (read + infer, {stream_s:.2f} s; model {tm['model_seconds']:.2f} s, waiting for tiles {tm['wait_seconds']:.2f} s) | {stream:,.0f} |",
    f"| tessera bench-model (model only, batch in host memory) | {model_only:,.0f} |",
    f"| PyTorch {pe['dtype']} model only (batch on the GPU) | {torch_ips:,.0f} |",
    "",
    f"- end to end / PyTorch model-only: **{e2e / torch_ips:.2f}x** (goal >= 1.0x); streaming part: {stream / torch_ips:.2f}x",
    f"- end to end: **{e2e:,.0f} tiles/s** (goal >= 25,000); end to end / tessera model-only: {e2e / model_only:.2f}",
    f"- agreement on {pe['checked_tiles']} tiles: top-1 labels equal on **{100 * agree:.2f}%** (goal >= 99%), "
    f"top-1 probability max |diff| {pe['top1_score_max_abs_diff']:.2e} (mean {pe['top1_score_mean_abs_diff']:.2e})",
    f"- write {tm['write_seconds']:.2f} s, load {tm['load_seconds']:.2f} s, text {tm['text_seconds']:.2f} s; peak RSS {(cl['peak_rss_bytes'] or 0) / 2**20:.0f} MiB; script {secs} s",
]
# Reader threads: the streaming part's rate and how long the model waited for tiles.
import glob
sweep = []
for f in sorted(glob.glob(f"{res}/classify_t*.json")):
    c = json.load(open(f))
    t = c["timings"]
    s = t["total_seconds"] - t["load_seconds"] - t["text_seconds"] - t["write_seconds"]
    sweep.append((int(f.rsplit("_t", 1)[1][:-5]), c["tiles_read"] / s if s > 0 else float("nan"), t["wait_seconds"]))
if sweep:
    sweep.append((int(threads), stream, tm["wait_seconds"]))
    cells = ", ".join(f"{n} readers {r:,.0f} tiles/s (model waited {w:.2f} s)" for n, r, w in sorted(sweep))
    lines.append(f"- reader threads, streaming part: {cells}")
lines.append("")
text = "\n".join(lines)
print(text)
open(f"{res}/classify_gpu.md", "w").write(text)
with open(notes, "a") as f:
    f.write("\n" + text)
PY
