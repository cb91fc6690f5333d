#!/usr/bin/env python3
"""Give a CLIP package's image encoder a uint8 input with the normalisation inside the graph.

    python tools/export/uint8_prefix.py PACKAGE_DIR --out NEW_PACKAGE_DIR

The new image encoder takes the raw 8-bit pixels `uint8 [B, 3, S, S]` (RGB, 0..255) under the
same input name and starts with a small prefix, `Cast -> Mul -> Add`, computing
`(v / 255 - mean) / std` per channel (as `v * (1 / (255 std)) - mean / std`), then a Cast to
float16 for fp16 graphs. tessera then sends tiles as bytes: 4x less data to copy (and, on a
GPU, across the bus), and no normalisation pass on the host. The manifest gets
`input_type = "uint8"` in [image]; everything else (text encoder, tokenizer, scores) is copied.
The same package runs on CPU, CUDA and TensorRT.

Needs only `onnx` and `numpy` (no torch), so the test suite can use it.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

try:  # Python 3.11+
    import tomllib
except ImportError:  # pragma: no cover
    tomllib = None


def add_uint8_prefix(src: Path, dst: Path, input_name: str, mean, std, value_range: float = 255.0) -> None:
    """Rewrite `src` into `dst` with a uint8 `input_name` and the normalisation as a prefix."""
    if value_range != 255.0:
        raise SystemExit(f"{src}: value_range {value_range}: a uint8 input needs value_range = 255")
    model = onnx.load(str(src))
    graph = model.graph
    inputs = [i for i in graph.input if i.name == input_name]
    if not inputs:
        names = ", ".join(i.name for i in graph.input)
        raise SystemExit(f"{src}: no graph input named {input_name!r} (inputs: {names})")
    old = inputs[0]
    elem = old.type.tensor_type.elem_type
    if elem == TensorProto.UINT8:
        raise SystemExit(f"{src}: {input_name!r} already takes uint8")
    if elem not in (TensorProto.FLOAT, TensorProto.FLOAT16):
        raise SystemExit(f"{src}: {input_name!r} is not a float input")
    dims = [d.dim_param if d.dim_param else d.dim_value for d in old.type.tensor_type.shape.dim]
    inner = input_name + "__normalised"
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name == input_name:
                node.input[k] = inner
    for out in graph.output:
        if out.name == input_name:
            raise SystemExit(f"{src}: {input_name!r} is also a graph output")

    mean = np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1)
    scale = (1.0 / (255.0 * std)).astype(np.float32)
    bias = (-mean / std).astype(np.float32)
    p = input_name + "__"
    graph.initializer.extend([
        numpy_helper.from_array(scale, p + "scale"),
        numpy_helper.from_array(bias, p + "bias"),
    ])
    last = inner if elem == TensorProto.FLOAT else p + "f32"
    prefix = [
        helper.make_node("Cast", [input_name], [p + "cast"], to=TensorProto.FLOAT, name=p + "Cast"),
        helper.make_node("Mul", [p + "cast", p + "scale"], [p + "scaled"], name=p + "Mul"),
        helper.make_node("Add", [p + "scaled", p + "bias"], [last], name=p + "Add"),
    ]
    if elem == TensorProto.FLOAT16:
        prefix.append(helper.make_node("Cast", [last], [inner], to=TensorProto.FLOAT16, name=p + "Cast16"))
    nodes = _topological(prefix + list(graph.node), graph)
    del graph.node[:]
    graph.node.extend(nodes)
    new_input = helper.make_tensor_value_info(input_name, TensorProto.UINT8, dims)
    position = list(graph.input).index(old)
    graph.input.remove(old)
    graph.input.insert(position, new_input)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))


def _topological(nodes, graph):
    """`nodes` ordered so every input is produced before it is used (some converters, e.g.
    float16's keep_io_types, append their input Casts at the end)."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    ordered, pending = [], list(nodes)
    while pending:
        rest = []
        for n in pending:
            if all(i in available for i in n.input):
                ordered.append(n)
                available.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            # Inputs produced nowhere (e.g. subgraph captures): keep the remaining order.
            ordered.extend(rest)
            break
        pending = rest
    return ordered


def convert_package(src: Path, out: Path) -> None:
    """Copy the CLIP package `src` to `out` with a uint8 image encoder."""
    manifest = (src / "model.toml").read_text()
    if tomllib is None:
        raise SystemExit("Python 3.11+ is needed (tomllib)")
    m = tomllib.loads(manifest)
    if m.get("family") != "clip":
        raise SystemExit(f"{src}: family {m.get('family')!r}: only clip packages can be converted")
    if m["image"].get("input_type", "float32") == "uint8":
        raise SystemExit(f"{src}: the image encoder already takes uint8")
    pre = m["preprocess"]
    if pre.get("channel_order", "rgb") != "rgb":
        raise SystemExit(f"{src}: channel_order {pre['channel_order']!r}: only rgb packages")
    if out.exists():
        raise SystemExit(f"{out}: already exists")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("reference"))
    image = m["image"]["onnx"]
    add_uint8_prefix(src / image, tmp / image, m["image"]["input"], pre["mean"], pre["std"],
                     float(pre.get("value_range", 255.0)))
    text = mark_manifest_uint8(manifest, f"{src}/model.toml")
    text = re.sub(r'(?m)^name = "([^"]*)"', lambda mm: f'name = "{mm.group(1)}-uint8"', text, count=1)
    (tmp / "model.toml").write_text(text)
    tmp.rename(out)


def mark_manifest_uint8(text: str, where: str) -> str:
    """The manifest text with `input_type = "uint8"` added to [image] (comments and layout kept)."""
    text, n = re.subn(r"(?m)^(\[image\]\s*\n)",
                      "\\1input_type = \"uint8\"                          "
                      "# raw 0..255 RGB bytes; normalisation is in the graph\n",
                      text, count=1)
    if n != 1:
        raise SystemExit(f"{where}: no [image] section line")
    return re.sub(r'(?m)^(input = "[^"]*")[ \t]*#.*$', lambda mm: mm.group(1).ljust(48)
                  + "# uint8 [B,3,S,S], raw RGB 0..255", text, count=1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("package", type=Path, help="CLIP package folder (model.toml)")
    ap.add_argument("--out", type=Path, required=True, help="new package folder (must not exist)")
    a = ap.parse_args(argv)
    convert_package(a.package, a.out)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
