#!/usr/bin/env python3
"""Report of the `quant` bench section (bench/run.sh quant): int8 / int4 variants vs fp32.

    python bench/report_quant.py RESULTS --runs DIR --rounds N --clip PKG --clip-int8 PKG
        --blip PKG --blip-int4 PKG --scene SCENE --seconds S

Reads DIR/classify_{fp32,int8}_rN.json (+ their probabilities.tif) and
DIR/caption_{fp32,int4}_rN.json (+ captions.jsonl); writes RESULTS/quant.md and
RESULTS/quant_summary.json.  Speeds: the best round of each variant.  Agreement: top-1 of
classes.tif per tile over the tiles whose fp32 top-2 probability margin is above 0.01 (and over
all tiles); the first new token of every tile caption (and the whole 30 tokens).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
from pathlib import Path

import numpy as np
import rasterio

MARGIN = 0.01


def load(p: Path) -> dict:
    return json.loads(p.read_text())


def size(pkg: Path) -> int:
    return sum(f.stat().st_size for f in pkg.rglob("*") if f.is_file() and "reference" not in f.parts)


def probs(out: Path) -> np.ndarray:
    with rasterio.open(out / "probabilities.tif") as ds:
        return ds.read().reshape(ds.count, -1).T.astype(np.float64)  # [tiles, labels]


def tokens(out: Path) -> dict:
    rows = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines() if line.strip()]
    return {(r["row"], r["col"]): r["tokens"] for r in rows}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("results", type=Path)
    ap.add_argument("--runs", type=Path, required=True)
    ap.add_argument("--rounds", type=int, required=True)
    for k in ("clip", "clip-int8", "blip", "blip-int4"):
        ap.add_argument(f"--{k}", type=Path, required=True)
    ap.add_argument("--scene", required=True)
    ap.add_argument("--seconds", type=int, required=True)
    a = ap.parse_args()
    d, R = a.runs, range(1, a.rounds + 1)

    cls = {p: [load(d / f"classify_{p}_r{r}.json") for r in R] for p in ("fp32", "int8")}
    best_c = {p: max(v, key=lambda j: j["tiles_per_second"]) for p, v in cls.items()}

    pf, pq = probs(d / "classify_fp32_r1"), probs(d / "classify_int8_r1")
    srt = np.sort(pf, axis=1)
    clear = srt[:, -1] - srt[:, -2] > MARGIN
    same = pf.argmax(1) == pq.argmax(1)
    captions = {}
    for b in ("b16", "b1"):
        runs = {p: [load(d / f"caption_{b}_{p}_r{r}.json") for r in R] for p in ("fp32", "int4")}
        best = {p: max(v, key=lambda j: j["tokens_per_second"]) for p, v in runs.items()}
        tf, tq = tokens(d / f"caption_{b}_fp32_r1"), tokens(d / f"caption_{b}_int4_r1")
        keys = sorted(tf)
        captions[b] = {
            "batch": 16 if b == "b16" else 1, "tiles": len(keys),
            "fp32_tokens_per_second": best["fp32"]["tokens_per_second"],
            "int4_tokens_per_second": best["int4"]["tokens_per_second"],
            "speed_ratio": best["int4"]["tokens_per_second"] / best["fp32"]["tokens_per_second"],
            "first_token_agreement": float(np.mean([tf[k][:1] == tq[k][:1] for k in keys])),
            "caption_agreement": float(np.mean([tf[k] == tq[k] for k in keys])),
        }
    srt_margin = srt[:, -1] - srt[:, -2]
    env = [json.loads(line) for line in (d / "env.json").read_text().splitlines()]
    qc, qb = load(a.clip_int8 / "quantization.json"), load(a.blip_int4 / "quantization.json")

    s = {
        "classify": {
            "scene": a.scene, "tiles": int(len(pf)),
            "fp32_tiles_per_second": best_c["fp32"]["tiles_per_second"],
            "int8_tiles_per_second": best_c["int8"]["tiles_per_second"],
            "fp32_model_seconds": best_c["fp32"]["timings"]["model_seconds"],
            "int8_model_seconds": best_c["int8"]["timings"]["model_seconds"],
            "speed_ratio": best_c["int8"]["tiles_per_second"] / best_c["fp32"]["tiles_per_second"],
            "model_time_ratio": best_c["fp32"]["timings"]["model_seconds"] / best_c["int8"]["timings"]["model_seconds"],
            "tiles_above_margin": int(clear.sum()),
            "top1_agreement_above_margin": float(same[clear].mean()) if clear.any() else None,
            "top1_agreement_all": float(same.mean()),
            "scores_max_abs_diff": float(np.abs(pf - pq).max()),
            "fp32_top2_margin_median": float(np.median(srt_margin)),
            "fp32_top2_margin_max": float(srt_margin.max()),
        },
        "caption": captions,
        "sizes": {"clip_fp32": size(a.clip), "clip_int8": size(a.clip_int8),
                  "blip2_fp32": size(a.blip), "blip2_int4": size(a.blip_int4),
                  "decoder_fp32": qb["graphs"]["decoder.onnx"]["fp32_bytes"],
                  "decoder_int4": qb["graphs"]["decoder.onnx"]["bytes"]},
        "export_agreement": {"clip_int8": {k: v for k, v in qc["agreement"].items() if "scores" not in k or k.endswith("diff")},
                             "blip2_int4": {k: v for k, v in qb["agreement"].items() if "tokens" not in k}},
        "rounds": a.rounds, "env": env, "seconds": a.seconds,
    }
    c, z = s["classify"], s["sizes"]
    ok = lambda x, goal: "n/a" if x is None else ("met" if x >= goal else "**not met**")  # noqa: E731
    pct = lambda x: "n/a" if x is None else f"{x:.1%}"  # noqa: E731
    load_s = " / ".join(f"{v[0]:.1f}" for e in env for v in e.values())
    sep = ", labels separated" if "separated" in Path(a.clip).name else ""
    lines = [
        f"# Quantised variants vs fp32 ({datetime.datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} CPUs, "
        f"{platform.machine()}, 1-min load before / after {load_s})",
        "",
        f"Same run, CPU, `tessera` end to end, best of {a.rounds} rounds per variant (order alternated).",
        "",
    ]
    if "separated" in Path(a.clip).name:
        lines += [
            "The CLIP pair is the ViT-B/32-shaped random package with its text projection changed by "
            "`bench/separate_labels.py` (least-norm) so that the 5 labels' embeddings separate this scene's "
            "tiles: random weights alone leave every tile's scores near uniform (no fp32 top-2 margin > 0.01) "
            "and top-1 agreement unmeasurable. The image graph, and so the speed, is the original one; the "
            "labels still mean nothing.",
            "",
        ]
    lines += [
        "| model | variant | size MB | speed | agreement with fp32 |",
        "|---|---|---:|---:|---|",
        f"| CLIP ViT-B/32 (random{sep}) | fp32 | {z['clip_fp32'] / 1e6:.0f} | {c['fp32_tiles_per_second']:.2f} tiles/s | - |",
        f"| CLIP ViT-B/32 (random{sep}) | int8-dynamic | {z['clip_int8'] / 1e6:.0f} | {c['int8_tiles_per_second']:.2f} tiles/s "
        f"| top-1 {pct(c['top1_agreement_above_margin'])} of the {c['tiles_above_margin']} tiles with an fp32 top-2 margin > {MARGIN}, "
        f"{c['top1_agreement_all']:.1%} of all {c['tiles']}; scores max abs diff {c['scores_max_abs_diff']:.3g} |",
    ]
    for b, t in captions.items():
        lines += [
            f"| BLIP-2/OPT mid (random), batch {t['batch']} | fp32 | {z['blip2_fp32'] / 1e6:.0f} | {t['fp32_tokens_per_second']:.1f} tokens/s | - |",
            f"| BLIP-2/OPT mid (random), batch {t['batch']} | int4 (decoder) | {z['blip2_int4'] / 1e6:.0f} | {t['int4_tokens_per_second']:.1f} tokens/s "
            f"| first token {t['first_token_agreement']:.1%} of {t['tiles']} tiles, all 30 tokens {t['caption_agreement']:.1%} |",
        ]
    lines += [
        "",
        f"- classify {a.scene} ({c['tiles']} tiles), batch 32: int8 / fp32 tiles/s = **{c['speed_ratio']:.2f}x** "
        f"(goal >= 2x: {ok(c['speed_ratio'], 2)}); image-encoder time ratio {c['model_time_ratio']:.2f}x",
        f"- top-1 agreement over tiles with fp32 top-2 margin > {MARGIN}: **{pct(c['top1_agreement_above_margin'])}** "
        f"of {c['tiles_above_margin']} (goal >= 97%: {ok(c['top1_agreement_above_margin'], 0.97)}); fp32 top-2 margins: "
        f"median {c['fp32_top2_margin_median']:.3g}, max {c['fp32_top2_margin_max']:.3g}",
    ]
    for b, t in captions.items():
        lines.append(f"- caption batch {t['batch']}, greedy, 30 new tokens per caption: int4 / fp32 tokens/s = "
                     f"**{t['speed_ratio']:.2f}x** (goal >= 2x: {ok(t['speed_ratio'], 2)}); first-token agreement "
                     f"**{t['first_token_agreement']:.1%}**")
    lines += [f"- decoder graph {z['decoder_fp32'] / 1e6:.0f} MB -> {z['decoder_int4'] / 1e6:.0f} MB",
              f"- Section time {a.seconds} s."]
    text = "\n".join(lines) + "\n"
    (a.results / "quant.md").write_text(text)
    (a.results / "quant_summary.json").write_text(json.dumps(s, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
