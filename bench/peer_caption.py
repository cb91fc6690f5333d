#!/usr/bin/env python3
"""PyTorch peer of `tessera caption`: Hugging Face `Blip2ForConditionalGeneration.generate` on the
same tiles (cut from the scene's .npy written by bench/caption_scene.py, row-major, no overlap) and
the same weights (the `--save-pretrained` folder written by tools/export/export.py blip2 --tiny).

Prompt = what Blip2Processor builds for plain captioning: num_query_tokens image tokens, then BOS.
Preprocessing = tessera's for uint8 scenes: (v / 255 - mean) / std. Decoding: greedy (or beam
search with --num-beams), min_new_tokens = max_new_tokens, so every caption has exactly that many
new tokens. For each batch size: one untimed warm-up batch (2 tiles), then every batch of --images tiles
timed (CUDA synchronised). Prints one JSON object (per batch size: captions/s, tokens/s, seconds,
and the token ids of each tile, to compare with tessera's captions.jsonl).

    python bench/peer_caption.py --hf DIR --scene scene.npy --batch-sizes 1,16 --device cpu
    python bench/peer_caption.py --hf DIR --scene scene.npy --batch-sizes 1,32 --device cuda --dtype fp16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch


def tiles_of(scene: np.ndarray, size: int) -> np.ndarray:
    """[N, size, size, 3] uint8, row-major (tile r<row>c<col> is index row * cols + col)."""
    rows, cols = scene.shape[0] // size, scene.shape[1] // size
    t = scene[: rows * size, : cols * size].reshape(rows, size, cols, size, 3).transpose(0, 2, 1, 3, 4)
    return np.ascontiguousarray(t.reshape(rows * cols, size, size, 3))


def preprocess(tiles: np.ndarray, mean, std) -> np.ndarray:
    x = tiles.astype(np.float32) / np.float32(255.0)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hf", required=True, help="save_pretrained folder (model + tokenizer + preprocessor_config.json)")
    ap.add_argument("--scene", required=True, help="scene pixels .npy [H, W, 3] uint8")
    ap.add_argument("--batch-sizes", default="1,16")
    ap.add_argument("--images", type=int, default=0,
                    help="tiles timed per batch size (default: all; rounded down to whole batches, at least one)")
    ap.add_argument("--max-new-tokens", type=int, default=30)
    ap.add_argument("--num-beams", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's)")
    ap.add_argument("--attn", default=None, help="attn_implementation (default: transformers' default, sdpa)")
    a = ap.parse_args()

    from transformers import AutoTokenizer, Blip2ForConditionalGeneration

    if a.threads:
        torch.set_num_threads(a.threads)
    torch.set_grad_enabled(False)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[a.dtype]
    dev = torch.device(a.device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)

    t0 = time.perf_counter()
    kw = {"attn_implementation": a.attn} if a.attn else {}
    model = Blip2ForConditionalGeneration.from_pretrained(a.hf, dtype=dtype, **kw).to(dev).eval()
    tok = AutoTokenizer.from_pretrained(a.hf)
    pre = json.load(open(os.path.join(a.hf, "preprocessor_config.json")))
    sync()
    load_seconds = time.perf_counter() - t0

    cfg = model.config
    size = cfg.vision_config.image_size
    P = cfg.num_query_tokens
    tc = cfg.text_config
    bos, eos, pad = tc.bos_token_id, tc.eos_token_id, tc.pad_token_id
    image_id = cfg.image_token_id if getattr(cfg, "image_token_id", None) is not None else cfg.image_token_index
    prompt = [image_id] * P + [bos]  # Blip2Processor, empty text: image tokens, then the tokenizer's BOS
    assert tok("", add_special_tokens=True)["input_ids"] == [bos], "tokenizer does not start with BOS"

    tiles = tiles_of(np.load(a.scene), size)
    pixels_all = preprocess(tiles, pre["image_mean"], pre["image_std"])
    gen = dict(max_new_tokens=a.max_new_tokens, min_new_tokens=a.max_new_tokens, num_beams=a.num_beams,
               do_sample=False, early_stopping=False, length_penalty=1.0, repetition_penalty=1.0,
               bos_token_id=bos, eos_token_id=eos, pad_token_id=pad)

    def run(px: np.ndarray) -> np.ndarray:
        b = px.shape[0]
        ids = torch.tensor([prompt] * b, dtype=torch.long, device=dev)
        mask = torch.ones_like(ids)
        pv = torch.from_numpy(px).to(dev, dtype)
        out = model.generate(pixel_values=pv, input_ids=ids, attention_mask=mask, **gen)
        return out[:, ids.shape[1]:].cpu().numpy()

    results = []
    for bs in [int(x) for x in a.batch_sizes.split(",")]:
        n = len(tiles) if a.images <= 0 else min(a.images, len(tiles))
        n = max(bs, n // bs * bs)
        if n > len(tiles):
            sys.exit(f"peer: batch size {bs} needs {bs} tiles, the scene has {len(tiles)}")
        run(pixels_all[:min(bs, 2)])  # warm-up (kernels, allocator) on 2 tiles, untimed
        sync()
        tokens = []
        c0 = time.process_time()
        t = time.perf_counter()
        for i in range(0, n, bs):
            tokens.append(run(pixels_all[i:i + bs]))
        sync()
        sec = time.perf_counter() - t
        cpu = time.process_time() - c0
        tokens = np.concatenate(tokens)
        new = int(tokens.size)
        r = {"batch_size": bs, "images": n, "seconds": sec, "cpu_seconds": cpu, "new_tokens": new,
             "captions_per_second": n / sec, "tokens_per_second": new / sec,
             "tokens": tokens.tolist()}
        print(f"peer: batch {bs}: {n} captions in {sec:.2f} s, {n / sec:.2f} captions/s, "
              f"{new / sec:.1f} tokens/s", file=sys.stderr)
        results.append(r)

    import transformers

    info = {"peer": "transformers generate", "transformers": transformers.__version__, "torch": torch.__version__,
            "device": str(dev), "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "dtype": a.dtype, "attn_implementation": model.config._attn_implementation,
            "num_beams": a.num_beams, "max_new_tokens": a.max_new_tokens, "min_new_tokens": a.max_new_tokens,
            "image_size": size, "image_tokens": P, "load_seconds": load_seconds, "runs": results}
    json.dump(info, sys.stdout)
    print()


if __name__ == "__main__":
    main()
