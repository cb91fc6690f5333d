#!/usr/bin/env python3
"""Report of the `caption` benchmark section (bench/run.sh): reads bench/results/caption_*.json and
writes caption.md and caption_summary.json.

Rates are over model time (`model_seconds`: image prefix + prompt + decoding, the time inside
`generate`), as tessera reports them. tessera counts the caption of the whole scene (one extra
batch-1 caption, made first, so it also carries the first-run warm-up) in `captions_per_second`;
the "tiles only" columns take it out with the --scene-only run of the same model and decoding:
tiles / (model_seconds - scene-only model_seconds). The PyTorch peer times only tile batches after
one untimed warm-up batch, so the tiles-only rates are the ones to compare with it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
from pathlib import Path


def load(d: Path, name: str):
    p = d / f"caption_{name}.json"
    return json.loads(p.read_text()) if p.is_file() else None


def tiles_only(run: dict, scene: dict | None):
    if scene is None:
        return None
    sec = run["model_seconds"] - scene["model_seconds"]
    n = run["tiles_captioned"]
    tok = run["new_tokens"] - scene["new_tokens"]
    if sec <= 0:
        return None
    return {"captions_per_second": n / sec, "tokens_per_second": tok / sec, "model_seconds": sec,
            "captions": n, "new_tokens": tok}


def tokens_by_tile(d: Path, name: str) -> list[list[int]] | None:
    p = d / "caption_out" / name / "captions.jsonl"
    if not p.is_file():
        return None
    rows = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    rows.sort(key=lambda r: (r["row"], r["col"]))
    return [r["tokens"] for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("results", type=Path)
    ap.add_argument("--seconds", type=float, default=None, help="wall time of the whole section")
    ap.add_argument("--tiny", default="sample_data/models/blip2-tiny")
    ap.add_argument("--mid", default="bench/results/models/blip2-mid-random")
    a = ap.parse_args()
    d = a.results

    env = {}
    envp = d / "caption_env.json"
    if envp.is_file():
        for line in envp.read_text().splitlines():
            env.update(json.loads(line))

    rows = []  # (label, model, batch, beams, run json, scene-only json)
    spec = [("tiny", "tiny_b1", "tiny_scene"), ("tiny", "tiny_b16", "tiny_scene"),
            ("mid", "mid_b1", "mid_scene"), ("mid", "mid_b16", "mid_scene"),
            ("mid", "mid_b16_beam3", "mid_scene_beam3")]
    summary = {"date": str(datetime.date.today()), "cpus": os.cpu_count(), "machine": platform.machine(),
               "env": env, "section_seconds": a.seconds, "runs": {}, "peer": {}, "ratios": {}}
    for model, name, scene_name in spec:
        r = load(d, name)
        if r is None:
            continue
        t = tiles_only(r, load(d, scene_name))
        rows.append((model, name, r, t))
        summary["runs"][name] = {k: r[k] for k in ("provider", "params", "tiles_captioned", "new_tokens", "seconds",
                                                   "model_seconds", "captions_per_second", "tokens_per_second",
                                                   "peak_rss_bytes")}
        summary["runs"][name]["batch_size"] = int(name.split("_b")[1].split("_")[0])
        summary["runs"][name]["tiles_only"] = t

    peers = {}
    for name in ("mid_b1", "mid_b16", "mid_b16_beam3"):
        p = load(d, f"peer_{name}")
        if p is not None:
            peers[name] = p
            run = p["runs"][0]
            summary["peer"][name] = {k: v for k, v in run.items() if k != "tokens"}
            summary["peer"][name].update({k: p[k] for k in ("transformers", "torch", "dtype", "threads",
                                                            "attn_implementation", "num_beams")})

    def cell(x, f="{:.2f}"):
        return "-" if x is None else f.format(x)

    first = rows[0][2] if rows else {}
    lines = [
        f"# BLIP-2 caption benchmark ({summary['date']}, {summary['cpus']} CPUs, {summary['machine']}, CPU provider)",
        "",
        f"`tessera caption SCENE --model M --batch-size B --max-new-tokens 30 --min-new-tokens 30 --json` "
        f"on a generated 8 x 4-tile scene at each model's input size (32 tiles: 2 full batches of 16); every "
        f"caption is exactly 30 new tokens. Rates are over model time (`model_seconds`).",
        "",
        f"- tiny: `{a.tiny}` (committed random BLIP-2/OPT: hidden 32, 2 layers, vocab 519, 8 query tokens, 32 px)",
        f"- mid: `{a.mid}` (random BLIP-2 with an OPT-125m-shaped language model: hidden 768, 12 layers, "
        f"12 heads, ffn 3072, vocab 50272; a 2-layer 64-wide vision tower and Q-Former, 32 query tokens, 224 px; "
        f"`export.py blip2 --tiny --shape mid`)",
        "",
        "| model | batch | beams | captions (tiles + scene) | new tokens | seconds | model s | captions/s | tokens/s | tiles only: captions/s | tiles only: tokens/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model, name, r, t in rows:
        b = summary["runs"][name]["batch_size"]
        lines.append(
            f"| {model} | {b} | {r['params']['num_beams']} | {r['tiles_captioned']} + 1 | {r['new_tokens']} | "
            f"{r['seconds']:.2f} | {r['model_seconds']:.2f} | {r['captions_per_second']:.2f} | "
            f"{r['tokens_per_second']:.1f} | {cell(t and t['captions_per_second'])} | "
            f"{cell(t and t['tokens_per_second'], '{:.1f}')} |")
    lines += ["", "`seconds` is end to end (loading the package, reading, decoding, writing the outputs); "
              "\"tiles only\" removes the scene caption (one batch-1 caption, which also pays the first-run "
              "warm-up) using a `--scene-only` run of the same model and decoding."]

    if peers:
        p0 = next(iter(peers.values()))
        lines += ["", f"## PyTorch peer (same run, same weights and tiles)", "",
                  f"Hugging Face `Blip2ForConditionalGeneration.generate`, transformers {p0['transformers']}, "
                  f"torch {p0['torch']}, CPU, {p0['dtype']}, {p0['threads']} threads, attention "
                  f"`{p0['attn_implementation']}`, min_new_tokens = max_new_tokens = 30, one untimed warm-up "
                  f"batch (bench/peer_caption.py).", "",
                  "| model | batch | beams | captions | seconds | captions/s | tokens/s | tessera tiles-only / PyTorch (captions/s) | tokens equal to tessera's |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, p in peers.items():
            run = p["runs"][0]
            ours = summary["runs"].get(name, {}).get("tiles_only")
            ratio = ours["captions_per_second"] / run["captions_per_second"] if ours else None
            summary["ratios"][name] = ratio
            tt = tokens_by_tile(d, name)
            agree = "-"
            if tt is not None:
                n = len(run["tokens"])
                same = sum(1 for x, y in zip(tt[:n], run["tokens"]) if x == y)
                agree = f"{same}/{n} tiles"
                summary["peer"][name]["tiles_with_equal_tokens"] = same
            lines.append(f"| mid | {run['batch_size']} | {p['num_beams']} | {run['images']} | {run['seconds']:.2f} | "
                         f"{run['captions_per_second']:.2f} | {run['tokens_per_second']:.1f} | "
                         f"**{cell(ratio)}x** | {agree} |")
    if env:
        lb, la = env.get("loadavg_before"), env.get("loadavg_after")
        lines += ["", f"Load average before / after the section: {lb and round(lb[0], 2)} / {la and round(la[0], 2)} "
                  "(the machine is shared: other work running at the same time slows both sides)."]
    if a.seconds is not None:
        lines += [f"Section wall time (without the one-off export): {a.seconds:.0f} s."]
    text = "\n".join(lines) + "\n"
    (d / "caption.md").write_text(text)
    (d / "caption_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
