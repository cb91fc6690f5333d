#!/usr/bin/env python3
"""Where the decoder's time goes: replays what `tessera caption` runs for one greedy batch of an
image-text-decoder package (BLIP-2 / LLaVA: decoder.onnx with inputs_embeds, attention_mask,
position_ids and a past/present key-value cache) in ONNX Runtime from Python, with ONNX Runtime's
profiler on, and prints the time per operator type (share of the decoder's kernel time), split
into the start step (the prompt) and the new-token steps, plus the wall time of each phase.

Same session settings as tessera (graph optimisation ORT_ENABLE_ALL, --threads intra-op
threads). The inputs are random embeddings (the time does not depend on the values).

    python bench/profile_decoder.py bench/results/models/blip2-mid-random --batch 16 --prompt 33 --steps 29
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
import tomllib

import numpy as np
import onnxruntime as ort


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("package")
    ap.add_argument("--decoder", default=None, help="decoder graph (default: the manifest's)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--prompt", type=int, default=33, help="prompt length (image tokens + BOS + text)")
    ap.add_argument("--steps", type=int, default=29, help="new-token steps after the start step")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--json", default=None, help="write the summary here too")
    a = ap.parse_args()

    m = tomllib.load(open(os.path.join(a.package, "model.toml"), "rb"))
    d = m["decoder"]
    path = a.decoder or os.path.join(a.package, d["onnx"])
    L, H, Dh, hid = d["layers"], d["kv_heads"], d["head_dim"], d["hidden"]
    prof_dir = tempfile.mkdtemp(prefix="tessera-prof-")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = a.threads
    so.enable_profiling = True
    so.profile_file_prefix = os.path.join(prof_dir, "decoder")
    t = time.perf_counter()
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    load = time.perf_counter() - t
    names = {i.name for i in s.get_inputs()}
    rng = np.random.default_rng(0)
    B, T = a.batch, a.prompt

    def feed(emb, mask, pos, past):
        f = {d["inputs_embeds"]: emb, d["attention_mask"]: mask}
        if d.get("position_ids") and d["position_ids"] in names:
            f[d["position_ids"]] = pos
        for i in range(L):
            f[d["past_key"].replace("{i}", str(i))] = past[2 * i]
            f[d["past_value"].replace("{i}", str(i))] = past[2 * i + 1]
        return f

    outs = [d["logits"]] + [d[k].replace("{i}", str(i)) for i in range(L) for k in ("present_key", "present_value")]
    empty = [np.zeros((B, H, 0, Dh), np.float32)] * (2 * L)
    emb = rng.standard_normal((B, T, hid), dtype=np.float32) * 0.02
    mask = np.ones((B, T), np.int64)
    pos = np.tile(np.arange(T, dtype=np.int64), (B, 1))
    t = time.perf_counter()
    r = s.run(outs, feed(emb, mask, pos, empty))
    start_wall = time.perf_counter() - t
    logits_shape = list(r[0].shape)
    past = r[1:]
    step_walls = []
    for k in range(a.steps):
        mask = np.ones((B, T + k + 1), np.int64)
        pos = np.full((B, 1), T + k, np.int64)
        e = rng.standard_normal((B, 1, hid), dtype=np.float32) * 0.02
        t = time.perf_counter()
        r = s.run(outs, feed(e, mask, pos, past))
        step_walls.append(time.perf_counter() - t)
        past = r[1:]
    prof = s.end_profiling()
    events = json.load(open(prof))

    # Node events carry args.op_name; "model_run" events delimit runs (first = start step).
    runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    bounds = [(e["ts"], e["ts"] + e["dur"]) for e in runs]
    per = {"start": collections.Counter(), "steps": collections.Counter()}
    nodes = {"start": collections.Counter(), "steps": collections.Counter()}
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        op = e.get("args", {}).get("op_name", "?")
        phase = "start" if bounds and bounds[0][0] <= e["ts"] <= bounds[0][1] else "steps"
        per[phase][op] += e["dur"]
        nodes[phase][f"{op} {e['name'][:-len('_kernel_time')]}"] += e["dur"]
    run_us = {"start": bounds[0][1] - bounds[0][0] if bounds else 0,
              "steps": sum(b - a_ for a_, b in bounds[1:])}
    summary = {"decoder": path, "batch": B, "prompt": T, "steps": a.steps, "threads": a.threads,
               "session_load_seconds": load, "logits_shape_start": logits_shape,
               "start_wall_seconds": start_wall, "steps_wall_seconds": sum(step_walls),
               "step_wall_seconds_mean": float(np.mean(step_walls)), "phases": {}}
    for phase, c in per.items():
        tot = sum(c.values())
        summary["phases"][phase] = {
            "run_seconds": run_us[phase] / 1e6, "kernel_seconds": tot / 1e6,
            "ops": [{"op": op, "seconds": us / 1e6, "share": us / tot} for op, us in c.most_common()],
            "top_nodes": [{"node": n, "seconds": us / 1e6, "share": us / tot} for n, us in nodes[phase].most_common(8)]}
    print(f"{path}: batch {B}, prompt {T}, {a.steps} steps, {a.threads} threads; start logits {logits_shape}")
    print(f"  start step {start_wall:.3f} s wall; steps {sum(step_walls):.3f} s wall ({np.mean(step_walls) * 1e3:.1f} ms/step)")
    for phase, p in summary["phases"].items():
        print(f"  {phase}: run {p['run_seconds']:.3f} s, kernels {p['kernel_seconds']:.3f} s")
        for o in p["ops"][:10]:
            print(f"    {o['op']:<28} {o['seconds']:8.3f} s  {100 * o['share']:5.1f}%")
        for o in p["top_nodes"][:4]:
            print(f"    node {o['node']:<60} {o['seconds']:8.3f} s  {100 * o['share']:5.1f}%")
    if a.json:
        json.dump(summary, open(a.json, "w"), indent=1)
    os.remove(prof)


if __name__ == "__main__":
    sys.exit(main())
