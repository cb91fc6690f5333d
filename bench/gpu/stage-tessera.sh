#!/usr/bin/env bash
# Packs the release tessera binary for the GPU machine, which has no GDAL: the binary, every shared
# library it loads except the C/C++ runtime (glibc, libgcc_s, libstdc++: the machine's own are newer
# and compatible), PROJ's and GDAL's data files, and a wrapper `tessera` that points the loader and
# GDAL/PROJ at them. Run it from the project's root after `cargo build --release`.
#
# Writes xz-compressed parts into .gpu-tessera/p0 .. .gpu-tessera/pN (ignored by git through
# .git/info/exclude; 40 MiB each, so that a part plus the project's files stays under the 64 MiB a
# transfer may hold) and .gpu-tessera/pN/tessera-env.sh. On the GPU machine, copy each part's
# part.* into /tmp/tessera-stage/, then `source .gpu-tessera/pN/tessera-env.sh`: it unpacks once
# into /tmp/tessera-gpu and exports TESSERA=/tmp/tessera-gpu/tessera (the wrapper).
# See bench/gpu/README.md.
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
BIN=${1:-target/release/tessera}
[ -x "$BIN" ] || { echo "stage-tessera: $BIN missing (cargo build --release)" >&2; exit 1; }
grep -qxF '/.gpu-tessera/' .git/info/exclude 2>/dev/null || echo '/.gpu-tessera/' >> .git/info/exclude
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
t="$work/tessera-gpu"
mkdir -p "$t/bin" "$t/lib" "$t/share"
cp "$BIN" "$t/bin/tessera"
strip --strip-debug "$t/bin/tessera" 2>/dev/null || true
# every library the loader resolves (transitively: ldd lists them all), but the C/C++ runtime
ldd "$BIN" | awk '/=> \//{print $3}' | sort -u | while read -r lib; do
  case "$(basename "$lib")" in
    libc.so.*|libm.so.*|libdl.so.*|libpthread.so.*|librt.so.*|libresolv.so.*|libutil.so.*|\
    libanl.so.*|libnsl.so.*|ld-linux*|libgcc_s.so.*|libstdc++.so.*) ;;
    *) cp -L "$lib" "$t/lib/" ;;
  esac
done
proj=$(pkg-config --variable=datadir proj 2>/dev/null || true)
[ -f "${proj:-/nonexistent}/proj.db" ] || proj=/usr/share/proj
cp -r "$proj" "$t/share/proj"
gdal=$(gdal-config --datadir 2>/dev/null || echo /usr/share/gdal)
cp -r "$gdal" "$t/share/gdal"
# OpenAI's CLIP BPE vocabulary, for export.py clip --tiny there (classify_h100.sh): the machine has
# no network and no package that ships it.
bpe="${XDG_CACHE_HOME:-$HOME/.cache}/tessera-export/bpe_simple_vocab_16e6.txt.gz"
[ -f "$bpe" ] && cp "$bpe" "$t/share/" || echo "stage-tessera: no CLIP BPE vocabulary at $bpe (run export.py clip --tiny here once)" >&2
cat > "$t/tessera" <<'WRAP'
#!/bin/sh
# tessera with its own GDAL and friends (bench/gpu/stage-tessera.sh); ONNX Runtime comes from
# ORT_DYLIB_PATH / LD_LIBRARY_PATH (stage-ort-gpu.sh's ort-gpu-env.sh).
here=$(dirname "$(readlink -f "$0")")
export LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PROJ_DATA="$here/share/proj" PROJ_LIB="$here/share/proj" GDAL_DATA="$here/share/gdal"
exec "$here/bin/tessera" "$@"
WRAP
chmod +x "$t/tessera"
rm -rf .gpu-tessera && mkdir -p .gpu-tessera
tar -C "$work" -cf - tessera-gpu | xz -T0 -9 > "$work/tessera.tar.xz"
(cd "$work" && split -b 41943040 -d -a 1 tessera.tar.xz part.)
n=0
for p in "$work"/part.*; do mkdir -p ".gpu-tessera/p$n"; mv "$p" ".gpu-tessera/p$n/"; n=$((n+1)); done
last=".gpu-tessera/p$((n-1))"
cat > "$last/tessera-env.sh" <<'ENV'
# source on the GPU machine once every part.* is in /tmp/tessera-stage
if [ ! -x /tmp/tessera-gpu/tessera ]; then
  mkdir -p /tmp && cat /tmp/tessera-stage/part.* | xz -d | tar -x -C /tmp
fi
export TESSERA=/tmp/tessera-gpu/tessera
[ -f /tmp/tessera-gpu/share/bpe_simple_vocab_16e6.txt.gz ] && export TESSERA_CLIP_BPE=/tmp/tessera-gpu/share/bpe_simple_vocab_16e6.txt.gz
ENV
echo "staged $BIN ($(du -sh "$t" | cut -f1) unpacked) into $n part(s):"; du -sh .gpu-tessera/p*
