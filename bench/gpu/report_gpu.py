#!/usr/bin/env python3
"""Table of bench/gpu/caption_h100.sh: tessera vs the same-run PyTorch peer vs the reference of
../shared/device/README.md (HF fp16 generate, BLIP-2 OPT-2.7b shape, 30 new tokens: 2.2 captions/s
at batch 1, 74 at batch 32; goal >= 2x at batch 32). Prints it, writes caption_gpu.md and
caption_gpu.json into the results folder, and appends it to NOTES.md (--notes)."""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

REFERENCE = {1: 2.2, 32: 74.0}  # HF fp16 generate, H100 80GB HBM3, captions/s (../shared/device/README.md)
GOAL = 2.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("results", type=Path)
    ap.add_argument("--shape", default="opt-2.7b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--big-batch", type=int, default=32)
    ap.add_argument("--export-seconds", type=float, default=0)
    ap.add_argument("--seconds", type=float, default=0)
    ap.add_argument("--notes", type=Path, default=None)
    ap.add_argument("--tokens", type=int, default=30)
    a = ap.parse_args()
    d = a.results
    load = lambda n: json.loads((d / n).read_text())  # noqa: E731
    scene = load("tessera_scene.json")
    gpu = (d / "gpu.txt").read_text().strip() if (d / "gpu.txt").is_file() else a.device
    versions = (d / "versions.txt").read_text().strip() if (d / "versions.txt").is_file() else ""
    rows, out = [], {"date": str(datetime.date.today()), "gpu": gpu, "shape": a.shape, "versions": versions,
                     "scene_only": scene, "batches": {}}
    for b in (1, a.big_batch):
        t = load(f"tessera_b{b}.json")
        p = load(f"peer_b{b}.json")
        pr = p["runs"][0]
        sec = t["model_seconds"] - scene["model_seconds"]
        tiles_cps = t["tiles_captioned"] / sec if sec > 0 else float("nan")
        tiles_tps = (t["new_tokens"] - scene["new_tokens"]) / sec if sec > 0 else float("nan")
        agree = None
        cap = d / f"tessera_b{b}_captions.jsonl"
        if cap.is_file():
            tt = sorted((json.loads(x) for x in cap.read_text().splitlines() if x.strip()),
                        key=lambda r: (r["row"], r["col"]))
            n = len(pr["tokens"])
            same = sum(1 for x, y in zip(tt[:n], pr["tokens"]) if x["tokens"] == y)
            first = sum(1 for x, y in zip(tt[:n], pr["tokens"]) if x["tokens"][:1] == y[:1])
            agree = {"tiles": n, "all_tokens_equal": same, "first_token_equal": first}
        # the reference only means something for its own setting
        ref = REFERENCE.get(b) if (a.shape == "opt-2.7b" and a.device != "cpu" and a.tokens == 30) else None
        r = {"batch": b, "provider": t["provider"], "tiles": t["tiles_captioned"], "new_tokens": t["new_tokens"],
             "seconds": t["seconds"], "model_seconds": t["model_seconds"],
             "captions_per_second": t["captions_per_second"], "tokens_per_second": t["tokens_per_second"],
             "tiles_only_captions_per_second": tiles_cps, "tiles_only_tokens_per_second": tiles_tps,
             "peak_rss_bytes": t.get("peak_rss_bytes"),
             "peer": {k: v for k, v in pr.items() if k != "tokens"} | {"dtype": p["dtype"],
                                                                          "attn": p["attn_implementation"],
                                                                          "transformers": p["transformers"],
                                                                          "torch": p["torch"]},
             "ratio_vs_peer": tiles_cps / pr["captions_per_second"],
             "reference_captions_per_second": ref,
             "ratio_vs_reference": tiles_cps / ref if ref else None,
             "tokens_agree": agree}
        out["batches"][str(b)] = r
        rows.append(r)

    f = lambda x, s="{:.2f}": "-" if x is None else s.format(x)  # noqa: E731
    p0 = rows[0]["peer"]
    lines = [
        f"## {out['date']}, {gpu}: BLIP-2 {a.shape} (random weights), {rows[0]['provider']}",
        "",
        f"`tessera caption --device {a.device} --batch-size B --max-new-tokens {a.tokens} --min-new-tokens {a.tokens}` (ONNX from "
        f"`export.py blip2 --tiny --shape {a.shape}`, "
        f"float32 I/O) vs Hugging Face `generate` ({p0['dtype']}, attention `{p0['attn']}`, transformers "
        f"{p0['transformers']}, torch {p0['torch']}) on the same weights and tiles, {a.tokens} new tokens each. "
        f"Rates over model time; tessera's tiles-only rate leaves out its scene caption (measured by a "
        f"--scene-only run: {scene['model_seconds']:.2f} s).",
        "",
        "| batch | tiles | tessera captions/s (tiles only) | tessera tokens/s | tessera model s / end-to-end s | PyTorch captions/s | PyTorch tokens/s | tessera / PyTorch | reference HF captions/s | tessera / reference | tokens equal (first token) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        pe, ag = r["peer"], r["tokens_agree"]
        lines.append(
            f"| {r['batch']} | {r['tiles']} | {r['tiles_only_captions_per_second']:.2f} | "
            f"{r['tiles_only_tokens_per_second']:.0f} | {r['model_seconds']:.2f} / {r['seconds']:.2f} | "
            f"{pe['captions_per_second']:.2f} | {pe['tokens_per_second']:.0f} | **{r['ratio_vs_peer']:.2f}x** | "
            f"{f(r['reference_captions_per_second'], '{:.1f}')} | {f(r['ratio_vs_reference'], '{:.2f}x')} | "
            + (f"{ag['all_tokens_equal']}/{ag['tiles']} ({ag['first_token_equal']}/{ag['tiles']})" if ag else "-")
            + " |")
    big = out["batches"][str(a.big_batch)]
    goal_ref = big["ratio_vs_reference"]
    lines += ["",
              f"Goal (>= {GOAL:.0f}x the reference at batch 32): "
              + ("n/a" if goal_ref is None else f"{goal_ref:.2f}x -> {'met' if goal_ref >= GOAL else 'NOT met'}")
              + f"; against this run's PyTorch: {big['ratio_vs_peer']:.2f}x.",
              f"Export {a.export_seconds:.0f} s (once per machine), whole script {a.seconds:.0f} s. {versions}",
              ""]
    text = "\n".join(lines)
    print(text)
    (d / "caption_gpu.md").write_text(text + "\n")
    (d / "caption_gpu.json").write_text(json.dumps(out, indent=1) + "\n")
    if a.notes is not None:
        new = not a.notes.is_file()
        with open(a.notes, "a") as fh:
            if new:
                fh.write("# GPU benchmark notes\n\nEntries appended by bench/gpu/caption_h100.sh "
                         "(bench/gpu/README.md), newest last.\n\n")
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
