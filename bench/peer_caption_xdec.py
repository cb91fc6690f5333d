#!/usr/bin/env python3
"""PyTorch peer of `tessera caption` for the cross-attention-decoder benchmark packages: Hugging
Face `generate` of BlipForConditionalGeneration (blip), Blip2ForConditionalGeneration with a
Flan-T5 (blip2-t5) or Florence2ForConditionalGeneration (florence2) on the same tiles (cut from
the scene's .npy written by bench/caption_scene.py, row-major, no overlap).

Same weights: the model is built by the exporter's own `tiny_parts` (tools/export/
<family>_export.py, seeded; `export.py <cmd> --tiny --shape S` builds exactly this model before
exporting it), so no save_pretrained copy is needed; bench/report_caption.py compares the tokens
with tessera's tile by tile, which checks it. Prompts and pixels as the exporter's parity
references run HF: no prompt (blip, blip2-t5), the task <CAPTION> through Florence2Processor
(florence2), pixels (v / 255 - mean) / std as tessera. Decoding: greedy or --num-beams,
min_new_tokens = max_new_tokens, no n-gram blocking, no forced BOS/EOS (as tessera's flags in
bench/run.sh), early_stopping False. One untimed warm-up batch of 2 tiles per batch size, then every batch
of --images tiles timed. Prints one JSON object (the format of bench/peer_caption.py).

    python bench/peer_caption_xdec.py --family blip --shape mid --scene scene.npy --batch-sizes 16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools" / "export"))

from peer_caption import preprocess, tiles_of  # noqa: E402  (bench/, same folder)


def build(family: str, shape: str, scratch: Path):
    """(parts, run(tiles_u8, pixels, **kw) -> list of new-token lists)."""
    if family == "blip":
        import blip_export as X

        parts = X.tiny_parts("blip", shape)[0]
        return parts, lambda u8, px, **kw: parts.hf_generate(px, [""] * len(px), **kw)
    if family == "blip2-t5":
        import t5_export as X

        parts = X.tiny_parts("blip2", shape)[0]
        return parts, lambda u8, px, **kw: parts.hf_generate(px, [""] * len(px), **kw)
    if family == "florence2":
        import florence2_export as X

        parts = X.tiny_parts(scratch, shape)[0]
        return parts, lambda u8, px, **kw: parts.hf_generate(u8, px, ["<CAPTION>"] * len(px), **kw)
    raise SystemExit(f"peer: unknown family {family!r} (blip, blip2-t5, florence2)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", required=True, choices=["blip", "blip2-t5", "florence2"])
    ap.add_argument("--shape", default="tiny", choices=["tiny", "mid"])
    ap.add_argument("--scene", required=True, help="scene pixels .npy [H, W, 3] uint8")
    ap.add_argument("--batch-sizes", default="1,16")
    ap.add_argument("--images", type=int, default=0,
                    help="tiles timed per batch size (default: all; rounded down to whole batches, at least one)")
    ap.add_argument("--max-new-tokens", type=int, default=30)
    ap.add_argument("--num-beams", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's)")
    ap.add_argument("--attn", default="sdpa",
                    help="attn_implementation the model runs with (default sdpa, what from_pretrained gives; "
                         "the exporter builds it eager for its parity checks)")
    a = ap.parse_args()

    if a.threads:
        torch.set_num_threads(a.threads)
    torch.set_grad_enabled(False)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="peer-caption-") as tmp:
        parts, run = build(a.family, a.shape, Path(tmp))
        load_seconds = time.perf_counter() - t0
        model = parts.model
        if a.attn != model.config._attn_implementation:
            try:
                model.set_attn_implementation(a.attn)
            except (ValueError, ImportError) as e:  # a model without it keeps its own (reported)
                print(f"peer: {a.family}: attn_implementation {a.attn!r} not supported ({e}); "
                      f"runs {model.config._attn_implementation!r}", file=sys.stderr)
        size = parts.size
        tiles = tiles_of(np.load(a.scene), size)
        pixels_all = preprocess(tiles, parts.mean, parts.std)
        gen = dict(max_new_tokens=a.max_new_tokens, min_new_tokens=a.max_new_tokens, num_beams=a.num_beams,
                   do_sample=False, early_stopping=False, length_penalty=1.0, repetition_penalty=1.0,
                   no_repeat_ngram_size=0, forced_bos_token_id=None, forced_eos_token_id=None)
        if a.family == "florence2":
            # The package's [generation] carries Florence-2's generation_config (n-gram blocking,
            # forced BOS/EOS, early stopping) and tessera applies it; so must the peer.
            gc = model.generation_config
            for k in ("no_repeat_ngram_size", "early_stopping", "forced_bos_token_id", "forced_eos_token_id"):
                gen[k] = getattr(gc, k)
            print(f"peer: florence2 generation_config: { {k: gen[k] for k in ('no_repeat_ngram_size', 'early_stopping', 'forced_bos_token_id', 'forced_eos_token_id')} }",
                  file=sys.stderr)

        results = []
        for bs in [int(x) for x in a.batch_sizes.split(",")]:
            n = len(tiles) if a.images <= 0 else min(a.images, len(tiles))
            n = max(bs, n // bs * bs)
            if n > len(tiles):
                sys.exit(f"peer: batch size {bs} needs {bs} tiles, the scene has {len(tiles)}")
            w = min(bs, 2)
            run(tiles[:w], pixels_all[:w], **gen)  # warm-up (kernels, allocator) on 2 tiles, untimed
            tokens = []
            c0 = time.process_time()
            t = time.perf_counter()
            for i in range(0, n, bs):
                tokens += run(tiles[i:i + bs], pixels_all[i:i + bs], **gen)
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
            "image_size": size, "load_seconds": load_seconds, "runs": results}
    json.dump(info, sys.stdout)
    print()


if __name__ == "__main__":
    main()
