"""Python peer for the classify benchmark: the same job as `tessera classify` done the usual
Python way, with rasterio windowed reads, numpy, ONNX Runtime and HF `tokenizers`.

CLIP zero-shot classification of every tile of a scene:

- the model package's `model.toml` gives the encoders, the tokenizer, the input size S,
  mean/std/value_range and logit_scale;
- label embeddings: every template filled with every label (label-major), tokenized with the
  package's tokenizer.json (padded/truncated to context_length with pad_token_id, EOS kept last
  when truncating), through the text encoder; label embed = l2norm(mean over templates of
  l2norm(text embed));
- tiles of S x S on a regular grid (stride S, no overlap) over bands 1, 2, 3, read with rasterio
  windowed reads; each value v -> (v / value_range - mean[c]) / std[c] in float32; edge tiles
  are padded with 0 in normalised space (the mean colour);
- batches through the image encoder (CPUExecutionProvider, default threads), one after the
  other with the reads (read a batch, run it, read the next: no overlap);
- probabilities = softmax(logit_scale * cos(image embed, label embed)) over labels;
- `classes.tif` (uint8 class index per tile, nodata 255) and `probabilities.tif` (float32, one
  band per label) with one pixel per tile: the scene CRS, origin = the scene origin, pixel size
  = S * the scene pixel size.

Prints one JSON summary on stdout: tiles, total_seconds (everything from loading the model to
the written outputs), model_seconds (time inside the image encoder's session.run calls only),
tiles_per_second, peak_rss_bytes, the other phase timings and the label counts.
"""
import argparse
import json
import os
import resource
import time
import tomllib

import numpy as np
import onnxruntime as ort
import rasterio
from affine import Affine
from rasterio.enums import MaskFlags
from rasterio.windows import Window
from tokenizers import Tokenizer


def l2n(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class Clip:
    """A CLIP model package: manifest, both encoders, tokenizer."""

    def __init__(self, pkg):
        self.pkg = pkg
        with open(os.path.join(pkg, "model.toml"), "rb") as f:
            m = tomllib.load(f)
        if m.get("family") != "clip":
            raise SystemExit(f"{pkg}: model family {m.get('family')!r} is not 'clip'")
        self.manifest = m
        pre = m["preprocess"]
        self.size = int(pre["size"])
        self.mean = np.asarray(pre["mean"], np.float32).reshape(3, 1, 1)
        self.std = np.asarray(pre["std"], np.float32).reshape(3, 1, 1)
        self.value_range = np.float32(pre.get("value_range", 255.0))
        if pre.get("channel_order", "rgb") != "rgb":
            raise SystemExit(f"{pkg}: channel_order {pre['channel_order']!r} is not supported (rgb only)")
        self.logit_scale = float(m["scores"]["logit_scale"])
        t = m["tokenizer"]
        self.context_length = int(t["context_length"])
        self.pad_id = int(t["pad_token_id"])
        self.eos_id = int(t["eos_token_id"])
        self.tokenizer = Tokenizer.from_file(os.path.join(pkg, t["file"]))
        # Pad and truncate ourselves (the file may or may not do it): same result either way.
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        prov = ["CPUExecutionProvider"]
        self.image = ort.InferenceSession(os.path.join(pkg, m["image"]["onnx"]), opts, providers=prov)
        self.text = ort.InferenceSession(os.path.join(pkg, m["text"]["onnx"]), opts, providers=prov)

    def tokenize(self, texts):
        L = self.context_length
        ids = np.full((len(texts), L), self.pad_id, np.int64)
        mask = np.zeros((len(texts), L), np.int64)
        for i, enc in enumerate(self.tokenizer.encode_batch(texts)):
            row = list(enc.ids)
            if len(row) > L:  # keep EOS last, like HF truncation
                row = row[: L - 1] + [self.eos_id]
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        return ids, mask

    def text_embeds(self, texts):
        ids, mask = self.tokenize(texts)
        t = self.manifest["text"]
        feeds = {t["input_ids"]: ids}
        if "attention_mask" in t:
            feeds[t["attention_mask"]] = mask
        return self.text.run([t["output"]], feeds)[0]

    def label_embeds(self, labels, templates):
        prompts = [tpl.replace("{}", lab) for lab in labels for tpl in templates]
        e = l2n(self.text_embeds(prompts).astype(np.float64))
        e = e.reshape(len(labels), len(templates), -1).mean(axis=1)
        return l2n(e)

    def normalise(self, u8_chw):
        """uint8 [3,h,w] -> float32 [3,h,w]: (v / value_range - mean) / std, in float32."""
        return (u8_chw.astype(np.float32) / self.value_range - self.mean) / self.std

    def image_embeds(self, pixels):
        i = self.manifest["image"]
        return self.image.run([i["output"]], {i["input"]: pixels})[0]

    def probs(self, image_embeds, label_embeds):
        cos = l2n(image_embeds.astype(np.float64)) @ label_embeds.T
        return softmax(self.logit_scale * cos)


def run(scene, pkg, labels, templates, batch_size, out):
    t0 = time.perf_counter()
    clip = Clip(pkg)
    t_load = time.perf_counter()
    lab = clip.label_embeds(labels, templates)
    t_text = time.perf_counter()

    S = clip.size
    src = rasterio.open(scene)
    if src.count < 3:
        raise SystemExit(f"{scene}: {src.count} band(s), 3 needed")
    W, H = src.width, src.height
    cols, rows = (W + S - 1) // S, (H + S - 1) // S
    positions = [(r, c) for r in range(rows) for c in range(cols)]
    masked = any(flag != [MaskFlags.all_valid] for flag in src.mask_flag_enums[:3])

    classes = np.full((rows, cols), 255, np.uint8)
    probs = np.full((len(labels), rows, cols), np.nan, np.float32)
    buf = np.zeros((batch_size, 3, S, S), np.float32)
    model_seconds = read_seconds = 0.0
    tiles_read = skipped = batches = 0

    def flush(n, where):
        nonlocal model_seconds, batches
        t = time.perf_counter()
        emb = clip.image_embeds(buf[:n])
        model_seconds += time.perf_counter() - t
        p = clip.probs(emb, lab)
        for k, (r, c) in enumerate(where):
            classes[r, c] = int(np.argmax(p[k]))
            probs[:, r, c] = p[k]
        batches += 1

    n, where = 0, []
    for r, c in positions:
        t = time.perf_counter()
        x, y = c * S, r * S
        w, h = min(S, W - x), min(S, H - y)
        win = Window(x, y, w, h)
        if masked and not src.read_masks((1, 2, 3), window=win).any():
            skipped += 1  # no valid pixel: left as nodata, like tessera's tile grid
            read_seconds += time.perf_counter() - t
            continue
        data = src.read((1, 2, 3), window=win)
        tile = buf[n]
        tile[...] = 0.0  # padding = 0 after normalisation (the mean colour)
        tile[:, :h, :w] = clip.normalise(data)
        tiles_read += 1
        read_seconds += time.perf_counter() - t
        where.append((r, c))
        n += 1
        if n == batch_size:
            flush(n, where)
            n, where = 0, []
    if n:
        flush(n, where)
    t_infer = time.perf_counter()

    os.makedirs(out, exist_ok=True)
    transform = src.transform * Affine.scale(S)
    profile = dict(driver="GTiff", width=cols, height=rows, crs=src.crs, transform=transform,
                   compress="deflate")
    classes_path = os.path.join(out, "classes.tif")
    probs_path = os.path.join(out, "probabilities.tif")
    with rasterio.open(classes_path, "w", count=1, dtype="uint8", nodata=255, **profile) as dst:
        dst.write(classes, 1)
    with rasterio.open(probs_path, "w", count=len(labels), dtype="float32", nodata=float("nan"),
                       **profile) as dst:
        dst.write(probs)
        for i, name in enumerate(labels, 1):
            dst.set_band_description(i, name)
    src.close()
    t_end = time.perf_counter()

    total = t_end - t0
    counts = {name: int((classes == i).sum()) for i, name in enumerate(labels)}
    return {
        "scene": scene,
        "model": pkg,
        "tile_size": S,
        "grid": [rows, cols],
        "tiles": len(positions),
        "tiles_read": tiles_read,
        "tiles_skipped": skipped,
        "batch_size": batch_size,
        "batches": batches,
        "labels": labels,
        "templates": templates,
        "total_seconds": total,
        "model_seconds": model_seconds,
        "load_seconds": t_load - t0,
        "text_seconds": t_text - t_load,
        "read_seconds": read_seconds,
        "infer_loop_seconds": t_infer - t_text,
        "write_seconds": t_end - t_infer,
        "tiles_per_second": tiles_read / total if total > 0 else None,
        "model_tiles_per_second": tiles_read / model_seconds if model_seconds > 0 else None,
        "model_share": model_seconds / total if total > 0 else None,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "label_counts": counts,
        "outputs": [classes_path, probs_path],
        "onnxruntime": ort.__version__,
        "rasterio": rasterio.__version__,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scene")
    ap.add_argument("--model", required=True, help="model package folder (with model.toml)")
    ap.add_argument("--labels", required=True, help="comma-separated labels")
    ap.add_argument("--template", action="append", default=None,
                    help="prompt template with {} for the label (repeatable; default 'a satellite photo of {}.')")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--out", required=True, help="output folder for classes.tif and probabilities.tif")
    a = ap.parse_args()
    labels = [s.strip() for s in a.labels.split(",") if s.strip()]
    templates = a.template or ["a satellite photo of {}."]
    if not labels:
        raise SystemExit("--labels: no label given")
    if a.batch_size < 1:
        raise SystemExit("--batch-size must be >= 1")
    for tpl in templates:
        if "{}" not in tpl:
            raise SystemExit(f"--template {tpl!r} has no {{}}")
    print(json.dumps(run(a.scene, a.model, labels, templates, a.batch_size, a.out)))


if __name__ == "__main__":
    main()
