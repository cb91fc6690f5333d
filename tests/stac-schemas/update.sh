#!/usr/bin/env bash
# Re-extracts the JSON schemas in this folder from the two PyPI wheels that ship them
# (pinned by version and hash), and rewrites schema-map.json. Needs only PyPI.
# Usage: bash tests/stac-schemas/update.sh   (from anywhere; python3 with pip required)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/req.txt" <<REQ
pystac-core==1.15.2 --hash=sha256:96e4acf5eb08ba8be543729b59c3072103bffa7b90283c7497cb25fbff70e6cf
eopf==2.8.1 --hash=sha256:f4450ba7fd2cb8f52bfca8aada6e992751c036d059d94ee0f7422637d9ae0307
REQ
python3 -m pip download --quiet --no-deps --only-binary=:all: --require-hashes \
  -r "$tmp/req.txt" -d "$tmp"
python3 - "$tmp" "$HERE" <<'PY'
import glob, json, os, sys, zipfile

tmp, here = sys.argv[1:]

def wheel(prefix):
    return zipfile.ZipFile(glob.glob(os.path.join(tmp, prefix + "-*.whl"))[0])

core = "stac-spec/v1.1.0/item-spec/json-schema"
files = {}  # local path (relative to here) -> (wheel, member)
pystac = wheel("pystac_core")
for name in ["item", "common", "basics", "bands", "datetime", "data-values",
             "instrument", "licensing", "provider"]:
    files[f"{core}/{name}.json"] = (
        pystac, f"pystac/validation/jsonschemas/stac-spec/v1.1.0/{name}.json")
for name in ["Feature", "Geometry"]:
    files[f"geojson/{name}.json"] = (
        pystac, f"pystac/validation/jsonschemas/geojson/{name}.json")
eopf = wheel("eopf")
extensions = {"projection": "v2.0.0", "raster": "v1.1.0", "classification": "v2.0.0"}
for name, version in extensions.items():
    files[f"{name}/{version}/schema.json"] = (
        eopf, f"eopf/product/stac_extensions/extensions/{name}_{version}.json")
# The Apache-2.0 licence text the schemas are distributed under (the eopf wheel's; the
# pystac-core wheel ships none, its metadata names Apache-2.0 too).
files["LICENSE"] = (eopf, "eopf-2.8.1.dist-info/licenses/LICENSE")

for rel, (z, member) in files.items():
    dst = os.path.join(here, rel)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    with z.open(member) as src, open(dst, "wb") as out:
        out.write(src.read())

# URL -> local file. stac-validator resolves every schema (and every $ref inside one)
# through this map, so nothing is fetched.
base = "https://schemas.stacspec.org/v1.1.0/item-spec/json-schema"
schema_map = {f"{base}/{os.path.basename(rel)}": rel for rel in files if rel.startswith(core)}
schema_map["https://geojson.org/schema/Feature.json"] = "geojson/Feature.json"
schema_map["https://geojson.org/schema/Geometry.json"] = "geojson/Geometry.json"
for name, version in extensions.items():
    schema_map[f"https://stac-extensions.github.io/{name}/{version}/schema.json"] = (
        f"{name}/{version}/schema.json")
with open(os.path.join(here, "schema-map.json"), "w") as f:
    json.dump({"schemas": dict(sorted(schema_map.items()))}, f, indent=2)
    f.write("\n")

# The sha256 of every file taken from the wheels, checked by `sha256sum -c SHA256SUMS`.
import hashlib
with open(os.path.join(here, "SHA256SUMS"), "w") as f:
    for rel in sorted(files):
        with open(os.path.join(here, rel), "rb") as src:
            f.write(f"{hashlib.sha256(src.read()).hexdigest()}  {rel}\n")
print(f"wrote {len(files)} schemas and schema-map.json to {here}")
PY
