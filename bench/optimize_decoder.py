#!/usr/bin/env python3
"""Make a decoder graph's steps cheaper, for the benchmark packages (bench/run.sh caption):

1. last-position logits (graphs exported before 2026-12-03; the exporters now do it): the LM
   head (the MatMul, or MatMul + Add, that produces the logits output) runs on the last
   position only (a Slice of its input, axis 1, [-1:]), so the output is [B, 1, V] instead
   of [B, T, V]. tessera reads only the last position of the logits, so
   the tokens cannot change; the start step (the whole prompt) no longer multiplies T rows by
   the vocabulary-sized head, the way Hugging Face `generate` asks for logits_to_keep = 1.
2. --fuse MODEL_TYPE (optional): ONNX Runtime's transformer optimizer
   (`onnxruntime.transformers.optimizer.optimize_model`, e.g. gpt2, bart) on the result, with
   the fusions it finds printed.

The package is copied (every other file hard-linked) to --out with the new graph under the
manifest's decoder name; the copy is a normal package. Works in place of an in-export option
because tessera's step code and the manifests are unchanged by it.

    python bench/optimize_decoder.py PACKAGE --out PACKAGE-opt [--graph decoder.onnx] [--fuse gpt2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tomllib

import numpy as np
import onnx
from onnx import helper, numpy_helper


def last_position_logits(model: onnx.ModelProto, logits: str) -> str | None:
    """Slices the LM head's input to the last position; returns the head's name, or None where
    its input is a Slice already (packages exported since 2026-12-03: logits [B, 1, V])."""
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    n = producer.get(logits)
    # logits <- [Add(bias)] <- MatMul(hidden, W)
    while n is not None and n.op_type == "Add":
        n = producer.get(n.input[0])
    if n is None or n.op_type != "MatMul":
        raise SystemExit(f"optimize_decoder: the logits output '{logits}' is not made by a MatMul (found {n and n.op_type})")
    hidden = n.input[0]
    if hidden in producer and producer[hidden].op_type == "Slice":
        return None
    sliced = hidden + "/last_position"
    inits = [numpy_helper.from_array(np.array([v], np.int64), f"{sliced}/{k}")
             for k, v in (("starts", -1), ("ends", np.iinfo(np.int64).max), ("axes", 1))]
    g.initializer.extend(inits)
    sl = helper.make_node("Slice", [hidden, *(i.name for i in inits)], [sliced], name=sliced)
    idx = list(g.node).index(n)
    g.node.insert(idx, sl)
    n.input[0] = sliced
    for o in g.output:
        if o.name == logits and o.type.tensor_type.shape.dim:
            d = o.type.tensor_type.shape.dim[1]
            d.Clear()
            d.dim_value = 1
    return n.name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("package")
    ap.add_argument("--out", required=True)
    ap.add_argument("--graph", default=None, help="graph file in the package (default: [decoder] onnx)")
    ap.add_argument("--logits", default=None, help="logits output name (default: [decoder] logits)")
    ap.add_argument("--fuse", default=None, help="also run onnxruntime.transformers.optimizer with this model_type")
    a = ap.parse_args()

    m = tomllib.load(open(os.path.join(a.package, "model.toml"), "rb"))
    d = m.get("decoder", {})
    graph = a.graph or d["onnx"]
    logits = a.logits or d["logits"]
    tmp = a.out + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for f in os.listdir(a.package):
        src = os.path.join(a.package, f)
        if f != graph and os.path.isfile(src):
            os.link(src, os.path.join(tmp, f))
        elif f != graph and os.path.isdir(src):
            shutil.copytree(src, os.path.join(tmp, f))
    model = onnx.load(os.path.join(a.package, graph))
    head = last_position_logits(model, logits)
    if head is None:
        print(f"optimize_decoder: {graph}: the logits are the last position's already", file=sys.stderr)
    else:
        print(f"optimize_decoder: {graph}: {head} runs on the last position only", file=sys.stderr)
    dst = os.path.join(tmp, graph)
    if a.fuse:
        from onnxruntime.transformers import optimizer

        # prefix decoders' manifests give kv_heads, the cross decoders' heads (and head_dim)
        heads = d.get("kv_heads") or d.get("heads")
        hidden = d.get("hidden") or (heads and d.get("head_dim") and heads * d["head_dim"])
        opt = optimizer.optimize_model(model, model_type=a.fuse, num_heads=heads or 0,
                                       hidden_size=hidden or 0, opt_level=0)
        print(f"optimize_decoder: fusions ({a.fuse}): {opt.get_fused_operator_statistics()}", file=sys.stderr)
        model = opt.model
    big = model.ByteSize() > 2**31 - 2**20
    onnx.save(model, dst, save_as_external_data=big, location=graph + ".data" if big else None)
    shutil.rmtree(a.out, ignore_errors=True)
    os.rename(tmp, a.out)
    print(f"optimize_decoder: wrote {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
