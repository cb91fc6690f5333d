#!/usr/bin/env python3
"""Report of the `caption` benchmark section (bench/run.sh): reads bench/results/caption_*.json and
writes caption.md and caption_summary.json.

For every model key (family:shape, --keys) and decoding configuration (batch 1 / 16, greedy /
3 beams): tessera's tiles-only rate and the PyTorch peer's (Hugging Face `generate`, same weights
and tiles, run right after tessera's run of the same configuration), their ratio, and how many
tiles got the same tokens on both sides.

tessera's rates are over model time (`model_seconds`: image encoder + prompt + decoding), and
tessera also captions the whole scene (one extra batch-1 caption, made first, so it also carries
the first-run warm-up); "tiles only" takes it out with the --scene-only run of the same model and
decoding: tokens / (model_seconds - scene-only model_seconds). The peer times only tile batches
after one untimed warm-up batch. The machine may be shared: the 1-minute load average at the start
of every run is in caption_load.jsonl and in the table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
from pathlib import Path

LABELS = {
    "blip2-opt:tiny": ("BLIP-2 / OPT", "tiny (committed fixture: hidden 32, 2 layers, vocab 519, 32 px)"),
    "blip2-opt:mid": ("BLIP-2 / OPT", "mid (OPT-125m LM: hidden 768, 12 layers, vocab 50272; small 224 px vision, 32 query tokens)"),
    "blip2-opt:mid-opt": ("BLIP-2 / OPT", "mid, decoder graph through bench/optimize_decoder.py (last-position LM head, ORT optimizer)"),
    "blip2-opt:mid-in-place": ("BLIP-2 / OPT", "mid, decoder exported with --kv-cache in-place (GroupQueryAttention, one preallocated buffer per cache)"),
    "blip:tiny": ("BLIP", "tiny (committed fixture: text hidden 32, 2 layers, 32 px)"),
    "blip:mid": ("BLIP", "mid (BLIP-base text decoder: hidden 768, 12 layers, vocab 30524; small 224 px ViT, 50 memory tokens)"),
    "blip2-t5:tiny": ("BLIP-2 / Flan-T5", "tiny (committed fixture: d_model 32, 2 + 2 layers, 32 px)"),
    "blip2-t5:mid": ("BLIP-2 / Flan-T5", "mid (Flan-T5-base LM: d_model 768, 12 + 12 layers, vocab 32128; small 224 px vision, 32 query tokens)"),
    "florence2:tiny": ("Florence-2", "tiny (committed fixture: BART d_model 32, 2 + 2 layers, 64 px)"),
    "florence2:mid": ("Florence-2", "mid (Florence-2-base BART: d_model 768, 6 + 6 layers, vocab 51289; tiny DaViT at 224 px, 50 image tokens)"),
    "qwen2-vl:tiny": ("Qwen2-VL", "tiny (committed fixture: hidden 64, 2 layers, M-RoPE, 32 px, 16 image tokens)"),
    "qwen2-vl:mid": ("Qwen2-VL", "mid (Qwen2-0.5B's decoder layout: hidden 896, 14 heads / 2 kv heads, ffn 4864, 8 of its 24 layers, M-RoPE; tiny vocab 652; small vision tower at 224 px / patch 14 / merge 2, 64 image tokens)"),
    "smolvlm:tiny": ("SmolVLM", "tiny (committed fixture: Llama hidden 64, 2 layers, 32 px, 16 image tokens)"),
    "smolvlm:mid": ("SmolVLM", "mid (SmolLM2-135M's language model: hidden 576, 30 layers, 9 heads / 3 kv heads, ffn 1536; tiny vocab 400; small SigLIP at 512 px / patch 16, pixel shuffle 4, 64 image tokens)"),
    "paligemma:tiny": ("PaliGemma", "tiny (committed fixture: Gemma hidden 64, 2 layers, prefix-LM, 32 px, 16 image tokens)"),
    "paligemma:mid": ("PaliGemma", "mid (Gemma of Gemma-2b's layout: hidden 1024, 4 heads of 256 / 1 kv head, ffn 4096, 8 layers, prefix-LM; tiny vocab 1453; small SigLIP at 224 px / patch 28, 64 image tokens)"),
}
CONFIGS = [("b1", 1, 1), ("b1_beam3", 1, 3), ("b16", 16, 1), ("b16_beam3", 16, 3)]


def load(d: Path, name: str):
    p = d / f"caption_{name}.json"
    try:
        return json.loads(p.read_text()) if p.is_file() else None
    except json.JSONDecodeError:  # a run still writing it, or one that failed
        return None


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
    ap.add_argument("--rounds", type=int, default=1, help="rounds per configuration (bench/run.sh "
                    "CAPTION_ROUNDS): round r > 1's files end in .rR; each side's best round is reported")
    ap.add_argument("--keys", default=" ".join(LABELS), help="model keys, as bench/run.sh CAPTION_KEYS "
                    "(default: every key; those without results are left out)")
    a = ap.parse_args()
    d = a.results

    env = {}
    envp = d / "caption_env.json"
    if envp.is_file():
        for line in envp.read_text().splitlines():
            env.update(json.loads(line))
    loads = {}
    lp = d / "caption_load.jsonl"
    if lp.is_file():
        for line in lp.read_text().splitlines():
            loads.update(json.loads(line))

    summary = {"date": str(datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
               "cpus": os.cpu_count(), "machine": platform.machine(), "env": env, "load_at_start": loads,
               "section_seconds": a.seconds, "rounds": a.rounds, "rows": []}
    keys = [k for k in a.keys.split() if any(d.glob(f"caption_{k.replace(':', '_')}_*.json"))]
    lines = [
        f"# Caption benchmark ({summary['date']}, {summary['cpus']} CPUs, {summary['machine']}, CPU provider)",
        "",
        f"`tessera caption SCENE --model M --batch-size B [--num-beams 3] --max-new-tokens 30 --min-new-tokens 30` "
        f"on a generated scene of tiles at each model's input size; every caption is exactly 30 new tokens. "
        f"tessera: tiles-only tokens/s over model time (the scene caption removed with a --scene-only run). "
        f"PyTorch: Hugging Face `generate` (fp32, CPU, same weights and tiles, min_new_tokens = max_new_tokens = 30, "
        f"one untimed warm-up batch), run right after tessera's run of the same configuration. "
        f"{a.rounds} round(s) per configuration, the order of the two sides alternating by round; each side's "
        f"best round is reported. ratio = tessera tokens/s / PyTorch tokens/s (best rounds); same-round ratios = "
        f"the lowest and highest ratio of one round's pair of runs; equal tokens counts every tessera round "
        f"against every peer round; CPU-time ratio = PyTorch CPU seconds per token / tessera's "
        f"(tessera: the tile run's process CPU time minus the scene-only run's; both sides' thread pools spin, "
        f"so this counts some waiting as work on both sides). load = 1-minute load average at the start of "
        f"tessera's / the peer's run (2 vCPUs; above 2 the machine was shared with other work).",
        "",
        "Models:",
        "",
    ]
    for k in keys:
        fam, desc = LABELS.get(k, (k, ""))
        lines.append(f"- {fam} {desc} (`{k}`)")
    lines += ["", "| model | shape | batch | beams | tessera tokens/s | PyTorch tokens/s | ratio | same-round ratios | CPU-time ratio | equal tokens | load (tessera / peer) |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    peer_info = None
    for k in keys:
        name = k.replace(":", "_")
        fam = LABELS.get(k, (k,))[0]
        shape = k.split(":", 1)[1]
        peer_name = "blip2-opt_mid" if k == "blip2-opt:mid-opt" else name
        for cfg, batch, beams in CONFIGS:
            scene_name = f"{name}_scene" + ("_beam3" if beams == 3 else "")
            ours, theirs = [], []  # per round: (tokens/s, round suffix, ...)
            for rnd in range(1, a.rounds + 1):
                sfx = "" if rnd == 1 else f".r{rnd}"
                r = load(d, f"{name}_{cfg}{sfx}")
                t = tiles_only(r, load(d, scene_name + sfx)) if r else None
                if t:
                    ours.append((t["tokens_per_second"], sfx, r, t))
                p = load(d, f"peer_{peer_name}_{cfg}{sfx}")
                if p:
                    peer_info = peer_info or p
                    theirs.append((p["runs"][0]["tokens_per_second"], sfx, p["runs"][0]))
            if not ours:
                continue
            _, sfx, r, t = max(ours, key=lambda x: x[0])
            psfx, prun = (max(theirs, key=lambda x: x[0])[1:]) if theirs else (None, None)
            ratio = (t["tokens_per_second"] / prun["tokens_per_second"]) if prun else None
            # the same-round ratios: how far one pair of runs can be from the best-of-rounds one
            by_round = {x[1]: x[0] for x in theirs}
            round_ratios = [tok / by_round[rs] for tok, rs, _, _ in ours if rs in by_round]
            # CPU time (robust to a shared machine): tessera's process CPU seconds of the tile run
            # minus those of the scene-only run (loading and the scene caption cancel out), per
            # new token, against the peer's process CPU seconds of its timed batches per new token
            # (each side's best round).
            cpu_ratio = None
            pr = load(d, f"{name}_{cfg}{sfx}_process")
            ps = load(d, f"{scene_name}{sfx}_process")
            if prun and pr and ps and prun.get("cpu_seconds"):
                cpu = pr["cpu_seconds"] - ps["cpu_seconds"]
                if cpu > 0:
                    cpu_ratio = (prun["cpu_seconds"] / prun["new_tokens"]) / (cpu / t["new_tokens"])
            # tokens of every tessera round against every peer round (they must all agree)
            agree = None
            if prun is not None:
                n = len(prun["tokens"])
                equal = total = 0
                for _, rs, _, _ in ours:
                    tt = tokens_by_tile(d, f"{name}_{cfg}{rs}")
                    if tt is None:
                        continue
                    for _, _, pp in theirs:
                        equal += sum(1 for x, y in zip(tt[:n], pp["tokens"]) if x == y)
                        total += n
                agree = (equal, total) if total else None
            row = {"key": k, "config": cfg, "batch": batch, "beams": beams, "rounds": len(ours),
                   "peer_rounds": len(theirs),
                   "tessera": {"tiles_only": t, "model_seconds": r["model_seconds"], "seconds": r["seconds"],
                               "tiles": r["tiles_captioned"], "provider": r.get("provider"),
                               "tokens_per_second_by_round": [x[0] for x in ours]},
                   "peer": ({**{kk: v for kk, v in prun.items() if kk != "tokens"},
                             "tokens_per_second_by_round": [x[0] for x in theirs]} if prun else None),
                   "ratio": ratio, "same_round_ratios": round_ratios, "cpu_time_ratio": cpu_ratio,
                   "equal_tokens": agree,
                   "load": [loads.get(f"{name}_{cfg}{sfx}"), loads.get(f"peer_{peer_name}_{cfg}{psfx or ''}")]}
            summary["rows"].append(row)
            lt, lpeer = row["load"]
            fmt = lambda x, f="{:.1f}": "-" if x is None else f.format(x)  # noqa: E731
            spread = (f"{min(round_ratios):.2f}-{max(round_ratios):.2f}x" if len(round_ratios) > 1 else "-")
            lines.append(
                f"| {fam} | {shape} | {batch} | {beams} | {fmt(t['tokens_per_second'])} | "
                f"{fmt(prun and prun['tokens_per_second'])} | **{fmt(ratio, '{:.2f}')}x** | {spread} | "
                f"{fmt(cpu_ratio, '{:.2f}')}x | "
                f"{'-' if agree is None else f'{agree[0]}/{agree[1]} tiles'} | {fmt(lt)} / {fmt(lpeer)} |")
    if peer_info:
        lines += ["", f"PyTorch peer: transformers {peer_info['transformers']}, torch {peer_info['torch']}, "
                      f"{peer_info['threads']} threads, fp32, attention `{peer_info['attn_implementation']}`."]
    lb, la = env.get("loadavg_before"), env.get("loadavg_after")
    if lb or la:
        lines += [f"Load average before / after the section: {lb and round(lb[0], 2)} / {la and round(la[0], 2)}."]
    if a.seconds is not None:
        lines += [f"Section wall time (without one-off exports): {a.seconds:.0f} s."]
    text = "\n".join(lines) + "\n"
    (d / "caption.md").write_text(text)
    (d / "caption_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
