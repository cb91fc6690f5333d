#!/usr/bin/env python3
"""The PyTorch side of bench/gpu/classify_h100.sh: the same random CLIP (rebuilt from its shape and
seed by tools/export/clip_export.py's own builder, so the weights are identical to the ONNX package
exported on the same machine) in fp16 on the GPU.

1. Model-only throughput: image encoder, batches already on the GPU (uint8 tiles normalised on
   the GPU, fp16), SDPA attention, CUDA-synchronised timing after warm-up: images/s.
2. Agreement: the first --check tiles of the scene (row-major, tessera's tile grid: no overlap),
   label embeddings from the package's tokenizer.json and one template, probabilities as tessera
   computes them (normalised embeddings, exp(logit_scale) x cosine, softmax), compared with the
   top-1 label and score of every tile in tessera's tiles.gpkg (read with sqlite3).

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools" / "export"))
import clip_export as ex  # noqa: E402  (the exporter's model builder and encoders)

try:
    import tomllib
except ImportError:  # pragma: no cover
    tomllib = None


def tokenize(tokenizer_json: Path, texts, context_length: int, pad_id: int):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    ids = np.full((len(texts), context_length), pad_id, np.int64)
    mask = np.zeros((len(texts), context_length), np.int64)
    for i, t in enumerate(texts):
        e = tok.encode(t).ids[:context_length]
        ids[i, : len(e)] = e
        mask[i, : len(e)] = 1
    return ids, mask


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--package", type=Path, required=True)
    ap.add_argument("--shape", required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--scene", type=Path, required=True, help="big_scene.py TIFF (its .json next to it)")
    ap.add_argument("--labels", required=True)
    ap.add_argument("--template", required=True)
    ap.add_argument("--tiles-gpkg", type=Path, required=True)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--iterations", type=int, default=50)
    ap.add_argument("--check", type=int, default=8192, help="tiles compared with tessera")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="fp16")
    a = ap.parse_args()
    dev = torch.device(a.device)
    dtype = torch.float16 if a.dtype == "fp16" else torch.float32
    m = tomllib.loads((a.package / "model.toml").read_text())
    pre, tk = m["preprocess"], m["tokenizer"]
    size = pre["size"]

    clip = ex.build_random_clip(a.shape, a.seed)
    vision, text = ex.split_encoders(clip)
    for mod in (vision, text):
        try:  # PyTorch's fused attention for the timed model (weights do not change)
            mod.set_attn_implementation("sdpa")
        except Exception:  # noqa: BLE001 - older transformers: keep eager
            pass
    image_enc = ex.ImageEncoder(vision).to(dev, dtype).eval()
    text_enc = ex.TextEncoder(text).to(dev, dtype).eval()
    mean = torch.tensor(pre["mean"], device=dev, dtype=dtype).view(1, 3, 1, 1)
    std = torch.tensor(pre["std"], device=dev, dtype=dtype).view(1, 3, 1, 1)

    def encode(u8: torch.Tensor) -> torch.Tensor:
        x = (u8.to(dtype) / 255.0 - mean) / std
        return image_enc(x)

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    # --- 1. model-only ------------------------------------------------------------------------------
    g = torch.Generator(device="cpu").manual_seed(0)
    batch = torch.randint(0, 256, (a.batch, 3, size, size), generator=g, dtype=torch.uint8).to(dev)
    with torch.inference_mode():
        for _ in range(3):
            encode(batch)
        sync()
        t = time.perf_counter()
        for _ in range(a.iterations):
            encode(batch)
        sync()
        dt = time.perf_counter() - t
    model_only = a.batch * a.iterations / dt

    # --- 2. agreement with tessera ------------------------------------------------------------------
    meta = json.loads(a.scene.with_suffix(".json").read_text())
    px = np.memmap(a.scene, np.uint8, "r", offset=meta["data_offset"], shape=(meta["height"], meta["width"], 3))
    cols = meta["width"] // size
    labels = [s.strip() for s in a.labels.split(",")]
    ids, mask = tokenize(a.package / tk["file"], [a.template.format(l) for l in labels],
                         tk["context_length"], tk["pad_token_id"])
    with torch.inference_mode():
        te = text_enc(torch.from_numpy(ids).to(dev), torch.from_numpy(mask).to(dev)).float()
        te = te / te.norm(dim=-1, keepdim=True)
        scale = float(m["scores"]["logit_scale"])
        n = min(a.check, cols * (meta["height"] // size))
        probs = []
        for start in range(0, n, a.batch):
            idx = range(start, min(n, start + a.batch))
            tiles = np.stack([
                px[(i // cols) * size:(i // cols + 1) * size, (i % cols) * size:(i % cols + 1) * size]
                for i in idx
            ]).transpose(0, 3, 1, 2)
            ie = encode(torch.from_numpy(np.ascontiguousarray(tiles)).to(dev)).float()
            ie = ie / ie.norm(dim=-1, keepdim=True)
            probs.append(torch.softmax(scale * ie @ te.T, dim=-1).cpu().numpy())
        probs = np.concatenate(probs)
    db = sqlite3.connect(str(a.tiles_gpkg))
    rows = {(r, c): (lab, sc) for r, c, lab, sc in db.execute("SELECT row, col, label, score FROM tiles")}
    same, diffs, missing = 0, [], 0
    for i in range(n):
        got = rows.get((i // cols, i % cols))
        if got is None:
            missing += 1
            continue
        best = int(probs[i].argmax())
        same += labels[best] == got[0]
        diffs.append(abs(float(probs[i, best]) - float(got[1])))
    print(json.dumps({
        "device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__, "dtype": a.dtype, "batch": a.batch,
        "model_only_images_per_second": model_only,
        "checked_tiles": n - missing, "missing_in_tessera": missing,
        "top1_agreement": same / max(1, n - missing),
        "top1_score_max_abs_diff": max(diffs) if diffs else None,
        "top1_score_mean_abs_diff": float(np.mean(diffs)) if diffs else None,
    }))


if __name__ == "__main__":
    main()
