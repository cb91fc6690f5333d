"""Python peer for the models benchmark: what `tessera bench-model` measures, done with the
ONNX Runtime Python API.

The image graph named by a package's model.toml ([image] onnx / input, [preprocess] size) in
one `onnxruntime.InferenceSession` (CPUExecutionProvider), with the session settings tessera
uses (intra_op_num_threads = --threads; graph optimisation ORT_ENABLE_LAYOUT, which is the
`ort` crate's GraphOptimizationLevel::Level3 that tessera sets; --optimization all for ONNX
Runtime's own default, ORT_ENABLE_ALL); the same in-memory batch as tessera's (the xorshift32
sequence of src/jobs/bench_model.rs: [B,3,S,S] float32 in [-2, 2), row-major); --warmup
untimed runs, then --iterations timed runs of `session.run` on it.

Prints one JSON object: model, family, provider, input_size, batch_size, iterations, warmup,
seconds, images_per_second, ms_per_batch, threads, optimization, onnxruntime (version),
input_sum (sum of the batch, to compare inputs) and output_shape.
"""
import argparse
import json
import os
import time
import tomllib

import numpy as np
import onnxruntime as ort

LEVELS = {
    "layout": ort.GraphOptimizationLevel.ORT_ENABLE_LAYOUT,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def tessera_batch(b, size):
    """src/jobs/bench_model.rs `batch`: xorshift32 from 0x9e3779b9, each state -> f32,
    / (u32::MAX as f32 = 2^32), * 4 - 2, in float32, in row-major order."""
    n = b * 3 * size * size
    states = np.empty(n, np.uint32)
    s = 0x9E3779B9
    m = 0xFFFFFFFF
    for i in range(n):
        s ^= (s << 13) & m
        s ^= s >> 17
        s ^= (s << 5) & m
        states[i] = s
    x = states.astype(np.float32) / np.float32(4294967296.0) * np.float32(4.0) - np.float32(2.0)
    return x.reshape(b, 3, size, size)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="model package folder")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--optimization", choices=sorted(LEVELS), default="layout")
    a = p.parse_args()

    with open(os.path.join(a.model, "model.toml"), "rb") as f:
        m = tomllib.load(f)
    size = int(m["preprocess"]["size"])
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = a.threads
    opts.graph_optimization_level = LEVELS[a.optimization]
    sess = ort.InferenceSession(os.path.join(a.model, m["image"]["onnx"]), opts,
                                providers=["CPUExecutionProvider"])
    name = m["image"]["input"]
    b = max(a.batch_size, 1)
    x = tessera_batch(b, size)
    feeds = {name: x}
    out = None
    for _ in range(a.warmup):
        out = sess.run(None, feeds)
    iterations = max(a.iterations, 1)
    t = time.perf_counter()
    for _ in range(iterations):
        out = sess.run(None, feeds)
    seconds = time.perf_counter() - t
    print(json.dumps({
        "model": a.model,
        "family": m.get("family"),
        "provider": sess.get_providers()[0],
        "input_size": size,
        "batch_size": b,
        "iterations": iterations,
        "warmup": a.warmup,
        "seconds": seconds,
        "images_per_second": b * iterations / seconds,
        "ms_per_batch": seconds * 1000 / iterations,
        "threads": a.threads,
        "optimization": opts.graph_optimization_level.name,
        "onnxruntime": ort.__version__,
        "input_sum": float(x.astype(np.float64).sum()),
        "output_shape": list(out[0].shape),
    }, indent=2))


if __name__ == "__main__":
    main()
