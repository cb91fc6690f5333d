#!/usr/bin/env bash
# CUDA checks of every model path on the GPU machine: each command runs on --device cpu and
# --device cuda and the answers must agree; TensorRT (absent there) must fail clearly or fall
# back when allowed. Prints a table and writes it to $OUT/check_cuda.md. Staging: README.md.
set -u
T=${TESSERA:-target/release/tessera}
OUT=${OUT:-/tmp/check-cuda}
mkdir -p "$OUT"
S=sample_data/sentinel2_rgbn_10m.tif
M=sample_data/models
R="$OUT/check_cuda.md"
: > "$R"
say() { echo "$*" | tee -a "$R"; }
say "# CUDA checks, $(date -u +%F) on $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"
$T doctor > "$OUT/doctor.txt" 2>&1; grep -E "ONNX Runtime|providers" "$OUT/doctor.txt" | tee -a "$R"
run() {  # name device args...
  local name=$1 dev=$2; shift 2
  local t0=$(date +%s%N)
  if $T "$@" --device "$dev" --json --quiet --overwrite --out "$OUT/${name}_$dev" > "$OUT/${name}_$dev.json" 2> "$OUT/${name}_$dev.err"; then
    printf '%s %s ok %sms\n' "$name" "$dev" "$(( ($(date +%s%N) - t0) / 1000000 ))" >> "$OUT/runs.txt"
  else
    printf '%s %s FAILED: %s\n' "$name" "$dev" "$(tail -1 "$OUT/${name}_$dev.err")" >> "$OUT/runs.txt"
  fi
}
for dev in cpu cuda; do
  run classify "$dev" classify "$S" --model $M/clip-tiny --labels "forest,water,city,farmland" --bands 1,2,3 --no-cache
  run blip2_greedy "$dev" caption "$S" --model $M/blip2-tiny --bands 1,2,3 --target-gsd 40 --max-new-tokens 12 --batch-size 8
  run blip2_beam "$dev" caption "$S" --model $M/blip2-tiny --bands 1,2,3 --target-gsd 40 --max-new-tokens 12 --num-beams 3 --batch-size 8
  run llava_greedy "$dev" caption "$S" --model $M/llava-tiny --bands 1,2,3 --target-gsd 40 --max-new-tokens 12 --batch-size 8
  run clipseg "$dev" segment "$S" --model $M/clipseg-tiny --prompts "a building,water" --bands 1,2,3 --target-gsd 40 --overlap 16
  run seg_oracle "$dev" segment "$S" --model $M/oracles/seg-threshold --bands 1,2,3 --scale percentile:2,98 --tile-size 128 --overlap 32
  run det_oracle "$dev" detect "$S" --model $M/oracles/det-grid-v8 --bands 1,2,3 --scale percentile:2,98 --overlap 64 --confidence 0.3
  run owlvit "$dev" detect "$S" --model $M/owlvit-tiny --prompts "a car,a ship" --bands 1,2,3 --target-gsd 40 --confidence 0.4
done
cat "$OUT/runs.txt" | tee -a "$R"
# TensorRT is not installed on that machine: an error naming the provider, or the fallback.
$T classify "$S" --model $M/clip-tiny --labels a,b --device tensorrt --no-cache --quiet > /dev/null 2> "$OUT/trt.err"
say "tensorrt without fallback: exit $? : $(tail -1 "$OUT/trt.err")"
$T classify "$S" --model $M/clip-tiny --labels a,b --device tensorrt --allow-fallback --no-cache --json --quiet > "$OUT/trt_fallback.json" 2>&1
say "tensorrt with fallback: provider $(python3 -c "import json;print(json.load(open('$OUT/trt_fallback.json'))['provider'])" 2>/dev/null)"
python3 - "$OUT" <<'PY' | tee -a "$R"
import json, os, sys
out = sys.argv[1]
def load(n, d):
    try:
        return json.load(open(os.path.join(out, f"{n}_{d}.json")))
    except Exception as e:
        return {"error": str(e)}
def tokens(n, d):
    p = os.path.join(out, f"{n}_{d}", "captions.jsonl")
    try:
        return [json.loads(l)["tokens"] for l in open(p)]
    except Exception:
        return None
print("| check | cpu | cuda | provider (cuda) | agree |")
print("|---|---|---|---|---|")
for n, key in [("classify", "label_counts"), ("blip2_greedy", None), ("blip2_beam", None), ("llava_greedy", None),
               ("clipseg", "polygons"), ("seg_oracle", "polygons"), ("det_oracle", "detections"), ("owlvit", "detections")]:
    a, b = load(n, "cpu"), load(n, "cuda")
    if key is None:
        ta, tb = tokens(n, "cpu"), tokens(n, "cuda")
        same = ta is not None and ta == tb
        va, vb = (len(ta) if ta else "-"), (f"{sum(x == y for x, y in zip(ta or [], tb or []))}/{len(tb) if tb else 0} same" )
    else:
        va, vb = a.get(key, a.get("error")), b.get(key, b.get("error"))
        same = va == vb
    print(f"| {n} | {va} | {vb} | {b.get('provider', '-')} | {'yes' if same else 'NO'} |")
PY
