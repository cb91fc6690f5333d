#!/usr/bin/env python3
"""PyTorch peer of `tessera caption` for the prefix-decoder benchmark packages: Hugging Face
`generate` of Qwen2VLForConditionalGeneration (qwen2-vl), Idefics3ForConditionalGeneration
(smolvlm) or PaliGemmaForConditionalGeneration (paligemma) on the same tiles (cut from the
scene's .npy written by bench/caption_scene.py, row-major, no overlap).

Same weights: the model is built by the exporter's own `tiny_parts` (tools/export/
<family>_export.py, seeded; `export.py <cmd> --tiny --shape S` builds exactly this model before
exporting it), so no save_pretrained copy is needed; bench/report_caption.py compares the tokens
with tessera's tile by tile, which checks it.

Inputs as the exporters' parity references run HF, i.e. as each family's real processor makes
them, for tessera's default (empty) prompt: the ids and attention mask of the processor
(`parts.processor_ids`: Qwen2VLProcessor's chat template with the <|image_pad|> run,
Idefics3Processor's layout with <fake_token_around_image><global-img>, PaliGemmaProcessor's
<image> run + <bos> + "\\n" with its token_type_ids), left-padded; pixels (v / 255 - mean) / std
as tessera, then `parts.hf_inputs` (Qwen2-VL: the image processor's patches of those pixels,
image_grid_thw and mm_token_type_ids, so HF computes its own M-RoPE positions; SmolVLM:
pixel_values [B,1,3,S,S]; PaliGemma: token_type_ids 0 on image + prompt, so HF's prefix-LM mask).
The ids do not depend on the pixels and are built once, untimed; `hf_inputs` (the patchify) is
timed. Decoding: greedy or --num-beams, min_new_tokens = max_new_tokens, no n-gram blocking, no
forced BOS/EOS (as tessera's flags in bench/run.sh), early_stopping False. One untimed warm-up
batch of 2 tiles per batch size, then every batch of --images tiles timed. Prints one JSON object
(the format of bench/peer_caption.py).

    python bench/peer_caption_prefix.py --family qwen2-vl --shape mid --scene scene.npy --batch-sizes 16
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools" / "export"))

from peer_caption import preprocess, tiles_of  # noqa: E402  (bench/, same folder)

FAMILIES = ("qwen2-vl", "smolvlm", "paligemma")


def build(family: str, shape: str):
    if family == "qwen2-vl":
        import qwen2vl_export as X

        return X.tiny_parts("qwen2-vl", shape)[0]
    if family == "smolvlm":
        import smolvlm_export as X

        return X.tiny_parts(shape)[0]
    if family == "paligemma":
        import paligemma_export as X

        return X.tiny_parts(shape)[0]
    raise SystemExit(f"peer: unknown family {family!r} ({', '.join(FAMILIES)})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", required=True, choices=FAMILIES)
    ap.add_argument("--shape", default="tiny", choices=["tiny", "mid"])
    ap.add_argument("--scene", required=True, help="scene pixels .npy [H, W, 3] uint8")
    ap.add_argument("--batch-sizes", default="1,16")
    ap.add_argument("--images", type=int, default=0,
                    help="tiles timed per batch size (default: all; rounded down to whole batches, at least one)")
    ap.add_argument("--prompt", default="", help="the prompt (default: tessera caption's, empty)")
    ap.add_argument("--max-new-tokens", type=int, default=30)
    ap.add_argument("--num-beams", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's)")
    a = ap.parse_args()

    if a.threads:
        torch.set_num_threads(a.threads)
    torch.set_grad_enabled(False)
    t0 = time.perf_counter()
    parts = build(a.family, a.shape)
    load_seconds = time.perf_counter() - t0
    model, size = parts.model, parts.size
    tiles = tiles_of(np.load(a.scene), size)
    pixels_all = preprocess(tiles, parts.mean, parts.std)
    gen = dict(max_new_tokens=a.max_new_tokens, min_new_tokens=a.max_new_tokens, num_beams=a.num_beams,
               do_sample=False, early_stopping=False, length_penalty=1.0, repetition_penalty=1.0,
               no_repeat_ngram_size=0, forced_bos_token_id=None, forced_eos_token_id=None,
               bos_token_id=parts.bos, eos_token_id=parts.eos, pad_token_id=parts.pad)

    results = []
    for bs in [int(x) for x in a.batch_sizes.split(",")]:
        n = len(tiles) if a.images <= 0 else min(a.images, len(tiles))
        n = max(bs, n // bs * bs)
        if n > len(tiles):
            sys.exit(f"peer: batch size {bs} needs {bs} tiles, the scene has {len(tiles)}")
        ids_by_n = {}

        def run(px):
            k = len(px)
            if k not in ids_by_n:  # the processor's ids for k prompts (PaliGemma keeps its token_type_ids)
                ids_by_n[k] = parts.processor_ids([a.prompt] * k)
            ids, mask = ids_by_n[k]
            return [list(map(int, r)) for r in parts.hf_generate(ids, mask, px, **gen)]

        w = min(bs, 2)
        run(pixels_all[:w])  # warm-up (kernels, allocator) on 2 tiles, untimed
        if bs not in ids_by_n:
            ids_by_n[bs] = parts.processor_ids([a.prompt] * bs)
        tokens = []
        c0 = time.process_time()
        t = time.perf_counter()
        for i in range(0, n, bs):
            tokens += run(pixels_all[i:i + bs])
        sec = time.perf_counter() - t
        cpu = time.process_time() - c0
        new = sum(len(r) for r in tokens)
        r = {"batch_size": bs, "images": n, "seconds": sec, "cpu_seconds": cpu, "new_tokens": new,
             "captions_per_second": n / sec, "tokens_per_second": new / sec, "tokens": tokens}
        print(f"peer: {a.family} {a.shape} batch {bs} beams {a.num_beams}: {n} captions in {sec:.2f} s "
              f"({cpu:.2f} s CPU), {new / sec:.1f} tokens/s", file=sys.stderr)
        results.append(r)

    import transformers

    info = {"peer": "transformers generate", "family": a.family, "shape": a.shape,
            "transformers": transformers.__version__, "torch": torch.__version__, "device": "cpu",
            "device_name": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "dtype": "fp32", "attn_implementation": model.config._attn_implementation,
            "num_beams": a.num_beams, "max_new_tokens": a.max_new_tokens, "min_new_tokens": a.max_new_tokens,
            "image_size": size, "prompt": a.prompt, "load_seconds": load_seconds, "runs": results}
    json.dump(info, sys.stdout)
    print()


if __name__ == "__main__":
    main()
