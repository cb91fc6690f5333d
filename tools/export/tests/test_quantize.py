#!/usr/bin/env python3
"""``quantize.py``: the committed quantised fixtures regenerate byte-identical from their fp32
packages, each graph holds the operators of its precision, and bad requests fail with one line.

    .venv-export/bin/python tools/export/tests/test_quantize.py

Cases:

* ``quantize.py siglip-tiny --out T`` and ``blip2-tiny --int4`` (and chinese-clip-tiny
  ``--calibrate sample_data/sentinel2_rgbn_10m.tif``, blip-tiny, clipseg-tiny, owlv2-tiny,
  sam2-tiny, qwen2-vl-tiny ``--int4``) give the graphs, model.toml and quantization.json of
  the committed sample_data/models/<fp32>-<suffix> variants byte for byte;
* ``--int8 static`` of a cross-attention decoder, a prompted segmenter, a detector and a
  promptable segmenter (graphs with more inputs than the tile) exits 0 with a QDQ image graph;
* int8-dynamic graphs hold DynamicQuantizeLinear + MatMulInteger, the static image graph
  QuantizeLinear / DequantizeLinear, the int4 decoder MatMulNBits and no float MatMul weight;
* a package whose graphs keep their weights in external data files (as exports over 2 GB do)
  converts with its data files rewritten, to the same tokens;
* exit status 1 and one stderr line naming the cause for: --int8 static without --calibrate,
  --int4 on a dual encoder or a segmenter, a YOLO-format oracle, a graph without weights
  (an oracle), an already quantised package,
  an existing --out, a scene that is not a raster; no output folder left behind.

Needs onnx + onnxruntime + tokenizers + rasterio (the exporter's venv, no torch); CI does not run
it. Exit status 0 when every check passes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parents[3]
MODELS = ROOT / "sample_data" / "models"
TOOL = ROOT / "tools" / "export" / "quantize.py"
FAILURES = []


def check(ok: bool, what: str) -> None:
    print(f"  [{'ok' if ok else 'FAIL'}] {what}")
    if not ok:
        FAILURES.append(what)


def quantize(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True, text=True)


def ops(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def float_weight_matmuls(path: Path) -> int:
    """MatMul / Gemm nodes with a float32 initializer as an input (a weight left unquantised)."""
    g = onnx.load(str(path)).graph
    floats = {i.name for i in g.initializer if i.data_type == onnx.TensorProto.FLOAT}
    return sum(1 for n in g.node if n.op_type in ("MatMul", "Gemm") and floats & set(n.input))


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="quant-test-") as tmp:
        t = Path(tmp)
        for fixture, src, flags in [
            ("siglip-tiny-int8", "siglip-tiny", []),
            ("chinese-clip-tiny-int8-static", "chinese-clip-tiny", ["--calibrate", ROOT / "sample_data/sentinel2_rgbn_10m.tif"]),
            ("blip2-tiny-int4", "blip2-tiny", ["--int4"]),
            ("blip-tiny-int8", "blip-tiny", []),
            ("clipseg-tiny-int8", "clipseg-tiny", []),
            ("owlv2-tiny-int8", "owlv2-tiny", []),
            ("sam2-tiny-int8", "sam2-tiny", []),
            ("qwen2-vl-tiny-int4", "qwen2-vl-tiny", ["--int4"]),
        ]:
            out = t / fixture
            r = quantize(MODELS / src, "--out", out, *flags)
            check(r.returncode == 0, f"{fixture}: quantize.py exits 0 {r.stderr[-300:] if r.returncode else ''}")
            if r.returncode:
                continue
            for f in sorted(p.name for p in (MODELS / fixture).iterdir()):
                check((out / f).read_bytes() == (MODELS / fixture / f).read_bytes(), f"{fixture}/{f} regenerates byte-identical")
        d = t / "siglip-tiny-int8"
        if d.is_dir():
            o = ops(d / "image_encoder.onnx")
            check({"DynamicQuantizeLinear", "MatMulInteger"} <= o, "int8-dynamic image graph: DynamicQuantizeLinear + MatMulInteger")
            for g in ("image_encoder.onnx", "text_encoder.onnx"):
                n = float_weight_matmuls(d / g)
                check(n == 0, f"int8-dynamic {g}: no MatMul/Gemm with a float weight ({n})")
        d = t / "chinese-clip-tiny-int8-static"
        if d.is_dir():
            o = ops(d / "image_encoder.onnx")
            check({"QuantizeLinear", "DequantizeLinear"} <= o, "int8-static image graph: QDQ nodes")
        d = t / "blip2-tiny-int4"
        if d.is_dir():
            o = ops(d / "decoder.onnx")
            check("MatMulNBits" in o, "int4 decoder: MatMulNBits")
            n = float_weight_matmuls(d / "decoder.onnx")
            check(n == 0, f"int4 decoder: no MatMul with a float weight ({n})")
            check(ops(d / "image_prefix.onnx") == ops(MODELS / "blip2-tiny/image_prefix.onnx"), "int4: vision graph untouched")

        scene = ROOT / "sample_data/sentinel2_rgbn_10m.tif"
        for src, graph in [("blip-tiny", "encoder.onnx"), ("clipseg-tiny", "model.onnx"),
                           ("owlv2-tiny", "model.onnx"), ("grounding-dino-tiny", "model.onnx"),
                           ("sam-tiny", "image_encoder.onnx")]:
            out = t / f"{src}-static"
            r = quantize(MODELS / src, "--out", out, "--calibrate", scene, "--calibration-tiles", "4")
            check(r.returncode == 0, f"{src} --int8 static exits 0 {r.stderr[-300:] if r.returncode else ''}")
            if r.returncode == 0:
                check({"QuantizeLinear", "DequantizeLinear"} <= ops(out / graph), f"{src}: QDQ {graph}")

        # a package whose graphs keep their weights in external data files (exports over 2 GB)
        ext = t / "blip2-ext"
        shutil.copytree(MODELS / "blip2-tiny", ext)
        for g in ("decoder.onnx", "image_prefix.onnx"):
            onnx.save_model(onnx.load(str(ext / g)), str(ext / g), save_as_external_data=True,
                            all_tensors_to_one_file=True, location=g + ".data", size_threshold=1024)
        r = quantize(ext, "--out", t / "blip2-ext-int4", "--int4")
        check(r.returncode == 0, "external-data package: --int4 exits 0")
        if r.returncode == 0:
            q = json.loads((t / "blip2-ext-int4" / "quantization.json").read_text())
            want = json.loads((MODELS / "blip2-tiny-int4" / "quantization.json").read_text())
            check(q["agreement"]["tokens"] == want["agreement"]["tokens"], "external-data package: the same int4 tokens")
            d4 = onnx.load(str(t / "blip2-ext-int4" / "decoder.onnx"), load_external_data=False)
            locs = {e.value for i in d4.graph.initializer for e in i.external_data if e.key == "location"}
            check(locs == {"decoder.onnx.data"}, f"int4 decoder keeps one external data file ({locs})")
            check(q["graphs"]["decoder.onnx"]["bytes"] < q["graphs"]["decoder.onnx"]["fp32_bytes"],
                  "external-data sizes counted (graph + data file)")

        not_raster = t / "scene.tif"
        not_raster.write_text("not a raster")
        for args, needle in [
            ([MODELS / "siglip-tiny", "--out", t / "a", "--int8", "static"], "needs --calibrate SCENE"),
            ([MODELS / "siglip-tiny", "--out", t / "b", "--int4"], "has none"),
            ([MODELS / "clipseg-tiny", "--out", t / "c", "--int4"], "a 'segmenter' package has none"),
            ([MODELS / "oracles/det-grid-v8", "--out", t / "f"], "int8 would change nothing"),
            ([MODELS / "oracles/seg-threshold", "--out", t / "g"], "int8 would change nothing"),
            ([MODELS / "siglip-tiny-int8", "--out", t / "d"], "precision is already 'int8-dynamic'"),
            ([MODELS / "siglip-tiny", "--out", t / "siglip-tiny-int8"], "already exists"),
            ([MODELS / "siglip-tiny", "--out", t / "e", "--calibrate", not_raster], str(not_raster)),
        ]:
            r = quantize(*args)
            lines = [line for line in r.stderr.splitlines() if line.strip()]
            check(r.returncode == 1 and len(lines) >= 1 and needle in lines[-1] and "Traceback" not in r.stderr,
                  f"refused with one line naming the cause ({needle}): {lines[-1] if lines else ''}")
            out = Path(args[2])
            if out.name != "siglip-tiny-int8":
                check(not out.exists() and not out.with_name(out.name + ".partial").exists(), f"{out.name}: nothing written")
    print("test_quantize: " + ("all checks passed" if not FAILURES else f"{len(FAILURES)} check(s) FAILED"))
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
