#!/usr/bin/env python3
"""ONNX Runtime's 4-bit MatMul (MatMulNBits) against the fp32 MatMul it replaces, one operator
at a time, at the shapes of the mid-size BLIP-2/OPT language model (hidden 768: the MLP's
768 x 3072 and the LM head's 768 x 50272) and at the row counts tessera's decoder gives it
(1: batch 1, 16: batch 16 greedy, 48: batch 16 with 3 beams, 528: the start step of batch 16 with
a 33-token prompt).

Each weight is quantised with the recipe of `tools/export/quantize.py --int4`
(`MatMulNBitsQuantizer`, symmetric) at block sizes 32, 64 and 128 and accuracy levels 0 (fp32
arithmetic on dequantised weights) and 4 (int8 activations in the kernel, the recipe's). Same
session settings on both sides (CPU, --threads intra-op threads). Prints one line per shape and
row count: milliseconds per call (best of 3 rounds) and the speed-up over fp32; --json FILE
writes the same numbers.

    python bench/matmul_nbits.py [--threads 2] [--json bench/results/matmul_nbits.json]

It explains the caption rate of an int4 package at batch 16 (bench/run.sh quant): the language
model's time is these products.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

SHAPES = ((768, 3072), (768, 50272))
ROWS = (1, 16, 48, 528)
BLOCKS = (32, 64, 128)
LEVELS = (0, 4)


def matmul(k: int, n: int, rng: np.random.Generator) -> onnx.ModelProto:
    w = (rng.standard_normal((k, n)) * 0.02).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "matmul", [x], [y],
                          [numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9  # what ONNX Runtime 1.31 reads
    return m


def int4(m: onnx.ModelProto, block: int, level: int) -> onnx.ModelProto:
    c = onnx.ModelProto()
    c.CopyFrom(m)
    q = MatMulNBitsQuantizer(c, algo_config=DefaultWeightOnlyQuantConfig(
        block_size=block, is_symmetric=True, accuracy_level=level))
    q.process()
    return q.model.model


def session(m: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])


def ms_per_call(s: ort.InferenceSession, x: np.ndarray, calls: int) -> float:
    s.run(None, {"x": x})
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(calls):
            s.run(None, {"x": x})
        best = min(best, (time.perf_counter() - t) / calls)
    return best * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    rows_out = []
    for k, n in SHAPES:
        m = matmul(k, n, rng)
        variants = {"fp32": session(m, a.threads)}
        for b in BLOCKS:
            for lv in LEVELS:
                variants[f"block {b} level {lv}"] = session(int4(m, b, lv), a.threads)
        for rows in ROWS:
            x = rng.standard_normal((rows, k)).astype(np.float32)
            # ~0.2 s of fp32 work per round whatever the shape
            calls = max(2, int(2e8 / (rows * k * n) * 20))
            t = {name: ms_per_call(s, x, calls) for name, s in variants.items()}
            rows_out.append({"k": k, "n": n, "rows": rows, "ms": t})
            print(f"{k} x {n}, {rows:3d} rows: " + ", ".join(
                f"{name} {v:.3f} ms ({t['fp32'] / v:.2f}x)" for name, v in t.items()), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"onnxruntime": ort.__version__, "threads": a.threads, "runs": rows_out}, f, indent=1)


if __name__ == "__main__":
    main()
