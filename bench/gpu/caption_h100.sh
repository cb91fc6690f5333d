#!/usr/bin/env bash
# BLIP-2 (OPT-2.7b shape, random weights) captioning on the GPU machine: `tessera caption --device
# cuda` against Hugging Face fp16 `generate` on the same weights and tiles, in one run. See
# bench/gpu/README.md for the staging and the one command that runs it there.
#
#   bash bench/gpu/caption_h100.sh
#
# Steps: export the model once into $WORK (export.py blip2 --tiny --shape $SHAPE --fp16, plus the
# same weights as a save_pretrained folder for the peer), write two scenes (4 x 4 tiles for batch 1,
# 8 x 8 for batch 32: 2 full batches), run tessera at batch 1 and 32 (+ --scene-only runs that
# measure the scene caption tessera adds, to give tile-only rates), run the peer at batch 1 and 32,
# then print a table and append it, with the card and the date, to bench/gpu/NOTES.md (and write
# it to $OUT when the device tool runs it, since only $OUT comes back).
#
# Environment (defaults in brackets):
#   SHAPE [opt-2.7b]   export.py --shape (tiny / mid: quick checks of the script itself)
#   DEVICE [cuda]      tessera --device and the peer's torch device; `cpu` runs the whole script on
#                      a machine without a GPU (peer in fp32 there)
#   DTYPE [fp16 on cuda, fp32 on cpu]   the peer's dtype; the ONNX export is --fp16 unless EXPORT_FP16=0
#   TESSERA [tessera-env.sh's, else target/release/tessera]   PYTHON [python3]
#   WORK [/tmp/caption-gpu]   export and scenes (reused while the machine stays up)
#   TOKENS [30]  BIG_BATCH [32]  B1_COLS/B1_ROWS [4/4]  BIG_COLS/BIG_ROWS [8/8]
#   VERIFY [0]         1: let the exporter check ONNX Runtime (CPU) against PyTorch (minutes at 2.7b)
#   NOTES [bench/gpu/NOTES.md]   where the table is appended
set -euo pipefail
cd "$(dirname "$0")/../.."
SHAPE=${SHAPE:-opt-2.7b}
DEVICE=${DEVICE:-cuda}
if [ "$DEVICE" = cpu ]; then DTYPE=${DTYPE:-fp32}; else DTYPE=${DTYPE:-fp16}; fi
PYTHON=${PYTHON:-python3}
TESSERA=${TESSERA:-target/release/tessera}
WORK=${WORK:-/tmp/caption-gpu}
TOKENS=${TOKENS:-30}
BIG_BATCH=${BIG_BATCH:-32}
B1_COLS=${B1_COLS:-4} B1_ROWS=${B1_ROWS:-4} BIG_COLS=${BIG_COLS:-8} BIG_ROWS=${BIG_ROWS:-8}
EXPORT_FP16=${EXPORT_FP16:-1}
VERIFY=${VERIFY:-0}
RES=${OUT:-$WORK/results}   # $OUT: the device tool's folder that comes back
mkdir -p "$WORK" "$RES"
export PYTHONUNBUFFERED=1
say() { printf 'caption-gpu: %s\n' "$*" >&2; }
t_start=$(date +%s)

# --- the machine -------------------------------------------------------------------------------------
if [ "$DEVICE" != cpu ]; then
  [ -n "${ORT_DYLIB_PATH:-}" ] || say "WARNING: ORT_DYLIB_PATH is not set (source .gpu/pN/ort-gpu-env.sh first)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$RES/gpu.txt" || true
  say "GPU: $(cat "$RES/gpu.txt" 2>/dev/null)"
fi
"$TESSERA" doctor > "$RES/doctor.txt" 2>&1 || say "tessera doctor reports a problem (see doctor.txt); going on"
$PYTHON -c 'import torch, transformers, onnx, onnxruntime; print("python", __import__("sys").version.split()[0], "torch", torch.__version__, "transformers", transformers.__version__, "onnx", onnx.__version__, "onnxruntime", onnxruntime.__version__)' | tee "$RES/versions.txt" >&2

# --- the model, exported once ------------------------------------------------------------------------
M="$WORK/model-$SHAPE" HF="$WORK/hf-$SHAPE"
if [ ! -f "$M/model.toml" ] || [ ! -f "$HF/config.json" ]; then
  say "exporting the $SHAPE-shaped random BLIP-2 (fp16 ONNX: $EXPORT_FP16) into $M"
  rm -rf "$M.partial" "$HF.partial"
  args=(blip2 --tiny --shape "$SHAPE" --out "$M.partial" --save-pretrained "$HF.partial" --no-reference)
  [ "$EXPORT_FP16" = 1 ] && args+=(--fp16)
  [ "$VERIFY" = 1 ] || args+=(--skip-verify)
  t=$(date +%s)
  $PYTHON tools/export/export.py "${args[@]}" 2>&1 | grep -v -E 'Warning|^  ' >&2
  echo "$(( $(date +%s) - t ))" > "$WORK/export_seconds-$SHAPE"
  rm -rf "$M" "$HF"
  mv "$HF.partial" "$HF"
  mv "$M.partial" "$M"
fi
du -sh "$M"/* "$HF" >&2
SIZE=$(sed -n 's/^size *= *\([0-9]*\).*/\1/p' "$M/model.toml" | head -1)

# --- scenes ------------------------------------------------------------------------------------------
S1="$WORK/scene_${SIZE}_${B1_COLS}x${B1_ROWS}.tif" SB="$WORK/scene_${SIZE}_${BIG_COLS}x${BIG_ROWS}.tif"
[ -f "$S1" ] || $PYTHON bench/caption_scene.py "$S1" --tile "$SIZE" --cols "$B1_COLS" --rows "$B1_ROWS" >&2
[ -f "$SB" ] || $PYTHON bench/caption_scene.py "$SB" --tile "$SIZE" --cols "$BIG_COLS" --rows "$BIG_ROWS" >&2

# --- tessera -----------------------------------------------------------------------------------------
run_tessera() {  # NAME SCENE BATCH [args...]
  local name=$1 scene=$2 batch=$3; shift 3
  say "tessera caption: $name (batch $batch, $DEVICE)"
  rm -rf "$WORK/out_$name"
  "$TESSERA" caption "$scene" --pixel-coords --model "$M" --device "$DEVICE" --batch-size "$batch" \
    --max-new-tokens "$TOKENS" --min-new-tokens "$TOKENS" --json --quiet --out "$WORK/out_$name" "$@" \
    > "$RES/tessera_$name.json"
  cp "$WORK/out_$name/captions.jsonl" "$RES/tessera_${name}_captions.jsonl" 2>/dev/null || true
}
run_tessera scene "$S1" 1 --scene-only
run_tessera b1 "$S1" 1
run_tessera "b$BIG_BATCH" "$SB" "$BIG_BATCH"

# --- the PyTorch peer --------------------------------------------------------------------------------
say "peer: transformers generate, $DTYPE, $DEVICE, batch 1"
$PYTHON bench/peer_caption.py --hf "$HF" --scene "${S1%.tif}.npy" --batch-sizes 1 --device "$DEVICE" \
  --dtype "$DTYPE" --max-new-tokens "$TOKENS" > "$RES/peer_b1.json"
say "peer: batch $BIG_BATCH"
$PYTHON bench/peer_caption.py --hf "$HF" --scene "${SB%.tif}.npy" --batch-sizes "$BIG_BATCH" --device "$DEVICE" \
  --dtype "$DTYPE" --max-new-tokens "$TOKENS" > "$RES/peer_b$BIG_BATCH.json"

# --- report ------------------------------------------------------------------------------------------
$PYTHON bench/gpu/report_gpu.py "$RES" --shape "$SHAPE" --device "$DEVICE" --big-batch "$BIG_BATCH" --tokens "$TOKENS" \
  --export-seconds "$(cat "$WORK/export_seconds-$SHAPE" 2>/dev/null || echo 0)" \
  --seconds "$(( $(date +%s) - t_start ))" --notes "${NOTES:-bench/gpu/NOTES.md}"
