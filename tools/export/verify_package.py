#!/usr/bin/env python3
"""Self-check a tessera CLIP model package against its PyTorch reference fixtures.

Usage::

    python tools/export/verify_package.py sample_data/models/clip-tiny

Loads the package the way the tessera CLI does -- ``model.toml``, the two ONNX
graphs (ONNX Runtime, CPU) and ``tokenizer.json`` (HF ``tokenizers``) -- with no
torch or transformers involved, and checks it against ``reference/reference.json``
(written by ``export.py clip --tiny`` from PyTorch):

* manifest has every key of the schema, ONNX inputs/outputs are named as it says,
  the graphs are self-contained (no external data files) and have a dynamic batch;
* tokenizer.json reproduces the reference token ids / attention masks exactly
  (prompts and the extra ``tokenizer_cases``);
* preprocessing ``images_u8.bin`` with the manifest's mean/std gives ``pixels_f32.bin``;
* image/text embeddings (batch N and batch 1) have relative error < 1e-4;
* label embeddings (prompt ensemble) and softmax probabilities: abs error < 1e-4.

A package without ``reference/`` (a real exported checkpoint) gets only the
structural checks plus a tokenizer/encoder smoke run.  Exit status 1 on failure.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

REQUIRED_KEYS = {
    None: ["family", "name", "trained", "source"],
    "image": ["onnx", "input", "output"],
    "text": ["onnx", "input_ids", "output"],  # attention_mask is optional
    "preprocess": ["size", "mean", "std", "channel_order", "value_range"],
    "tokenizer": ["file", "context_length", "pad_token_id", "bos_token_id", "eos_token_id"],
    "scores": ["logit_scale"],
}

EMBED_REL_TOL = 1e-4
PROB_ABS_TOL = 1e-4


class Checker:
    """Collects pass/fail lines."""

    def __init__(self) -> None:
        self.failures = 0

    def check(self, ok: bool, what: str) -> None:
        print(f"  [{'ok' if ok else 'FAIL'}] {what}")
        if not ok:
            self.failures += 1


def l2n(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    """max over rows of ||got - ref|| / ||ref||."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return float((np.linalg.norm(got - ref, axis=-1) / np.linalg.norm(ref, axis=-1)).max())


def tokenize(tok: Tokenizer, texts: list[str], ctx: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Encode with tokenizer.json; pad/truncate to ctx ourselves if the file does not."""
    ids = np.full((len(texts), ctx), pad_id, np.int64)
    mask = np.zeros((len(texts), ctx), np.int64)
    for i, enc in enumerate(tok.encode_batch(texts)):
        row = enc.ids
        if len(row) > ctx:  # keep EOS as the last token, like HF truncation
            row = row[: ctx - 1] + [row[-1]]
        m = enc.attention_mask[: len(row)]
        ids[i, : len(row)] = row
        mask[i, : len(row)] = m
    return ids, mask


def session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def verify(pkg: Path) -> int:
    c = Checker()
    print(f"package {pkg}  (onnxruntime {ort.__version__})")
    m = tomllib.loads((pkg / "model.toml").read_text())

    # ---- manifest + graphs ------------------------------------------------------------------
    print("manifest / graphs:")
    missing = [f"{sec + '.' if sec else ''}{k}" for sec, keys in REQUIRED_KEYS.items()
               for k in keys if k not in (m.get(sec, {}) if sec else m)]
    c.check(not missing, f"model.toml has all keys{'' if not missing else ', missing ' + str(missing)}")
    c.check(m["family"] == "clip", f"family = {m['family']!r}")
    extra = [p.name for p in pkg.glob("*.data")] + [p.name for p in pkg.glob("*.onnx_data")]
    c.check(not extra, f"no external-data files next to the ONNX graphs {extra or ''}")
    img_sess = session(pkg / m["image"]["onnx"])
    txt_sess = session(pkg / m["text"]["onnx"])
    img_in = {i.name: i for i in img_sess.get_inputs()}
    txt_in = {i.name: i for i in txt_sess.get_inputs()}
    S = m["preprocess"]["size"]
    ctx = m["tokenizer"]["context_length"]
    c.check(list(img_in) == [m["image"]["input"]], f"image inputs {list(img_in)}")
    c.check(img_sess.get_outputs()[0].name == m["image"]["output"], "image output name")
    shape = img_in[m["image"]["input"]].shape
    c.check(isinstance(shape[0], str) and shape[1:] == [3, S, S], f"pixel_values shape {shape}")
    want_txt = [m["text"]["input_ids"]] + ([m["text"]["attention_mask"]] if "attention_mask" in m["text"] else [])
    c.check(sorted(txt_in) == sorted(want_txt), f"text inputs {list(txt_in)}")
    c.check(txt_sess.get_outputs()[0].name == m["text"]["output"], "text output name")
    tshape = txt_in[m["text"]["input_ids"]].shape
    c.check(isinstance(tshape[0], str) and tshape[1] == ctx, f"input_ids shape {tshape}")

    tok = Tokenizer.from_file(str(pkg / m["tokenizer"]["file"]))
    pad_id = m["tokenizer"]["pad_token_id"]

    def run_text(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        feed = {m["text"]["input_ids"]: ids}
        if "attention_mask" in m["text"]:
            feed[m["text"]["attention_mask"]] = mask
        return txt_sess.run(None, feed)[0]

    def run_image(px: np.ndarray) -> np.ndarray:
        return img_sess.run(None, {m["image"]["input"]: px})[0]

    ref_path = pkg / "reference" / "reference.json"
    if not ref_path.is_file():
        print("no reference/ folder: smoke run only")
        ids, mask = tokenize(tok, ["a satellite photo of a forest."], ctx, pad_id)
        c.check(ids[0, 0] == m["tokenizer"]["bos_token_id"], "tokenizer starts with BOS")
        t = run_text(ids, mask)
        i = run_image(np.zeros((2, 3, S, S), np.float32))
        c.check(t.shape[1] == i.shape[1] and np.isfinite(t).all() and np.isfinite(i).all(),
                f"embeddings finite, dims text {t.shape} image {i.shape}")
        return c.failures

    ref = json.loads(ref_path.read_text())
    # reference.json may loosen the tolerances (fp16 exports); never tighter than ours.
    tol = ref.get("tolerance", {})
    embed_tol = max(EMBED_REL_TOL, float(tol.get("embeds_rel", 0.0)))
    prob_tol = max(PROB_ABS_TOL, float(tol.get("probs_abs", 0.0)))
    print(f"tolerances: embeddings rel {embed_tol:g}, probs abs {prob_tol:g} "
          f"(onnx_precision {ref.get('onnx_precision', 'fp32')})")

    # ---- tokenizer --------------------------------------------------------------------------
    print("tokenizer:")
    ids, mask = tokenize(tok, ref["prompts"], ctx, pad_id)
    c.check(ids.tolist() == ref["token_ids"], f"{len(ref['prompts'])} prompt token_ids equal")
    c.check(mask.tolist() == ref["attention_mask"], "prompt attention_mask equal")
    cases = ref.get("tokenizer_cases", [])
    cids, cmask = tokenize(tok, [x["text"] for x in cases], ctx, pad_id)
    ok = all(cids[i].tolist() == x["token_ids"] and cmask[i].tolist() == x["attention_mask"]
             for i, x in enumerate(cases))
    c.check(ok, f"{len(cases)} extra tokenizer cases equal (case folding, punctuation, truncation)")
    c.check(tok.encode("a satellite image of a forest").ids[:8] == [49406, 320, 10316, 2867, 539, 320, 4167, 49407],
            "'a satellite image of a forest' -> [49406, 320, 10316, 2867, 539, 320, 4167, 49407]")

    # ---- preprocessing ----------------------------------------------------------------------
    print("preprocessing:")
    iu = ref["images_u8"]
    pf = ref["pixels_f32"]
    u8 = np.fromfile(pkg / "reference" / iu["file"], np.uint8).reshape(iu["shape"])
    px_ref = np.fromfile(pkg / "reference" / pf["file"], "<f4").reshape(pf["shape"])
    pp = m["preprocess"]
    px = (u8.astype(np.float32) / np.float32(pp["value_range"]) - np.asarray(pp["mean"], np.float32)) \
        / np.asarray(pp["std"], np.float32)
    px = np.ascontiguousarray(px.transpose(0, 3, 1, 2))
    d = float(np.abs(px - px_ref).max())
    c.check(d < 1e-6, f"images_u8 -> pixels_f32 with manifest mean/std: max abs diff {d:.3g}")

    # ---- embeddings -------------------------------------------------------------------------
    print("embeddings:")
    img = run_image(px_ref)
    img1 = np.concatenate([run_image(px_ref[i : i + 1]) for i in range(len(px_ref))])
    e = rel_err(img, ref["image_embeds"])
    e1 = rel_err(img1, ref["image_embeds"])
    c.check(max(e, e1) < embed_tol, f"image_embeds rel err {e:.3g} (batch {len(px_ref)}), {e1:.3g} (batch 1); "
            f"max abs {np.abs(img - np.asarray(ref['image_embeds'])).max():.3g}")
    txt = run_text(ids, mask)
    txt1 = np.concatenate([run_text(ids[i : i + 1], mask[i : i + 1]) for i in range(3)])
    e = rel_err(txt, ref["text_embeds"])
    e1 = rel_err(txt1, np.asarray(ref["text_embeds"])[:3])
    c.check(max(e, e1) < embed_tol, f"text_embeds rel err {e:.3g} (batch {len(ids)}), {e1:.3g} (batch 1); "
            f"max abs {np.abs(txt - np.asarray(ref['text_embeds'])).max():.3g}")

    # ---- scores -----------------------------------------------------------------------------
    print("scores:")
    L, T = len(ref["labels"]), len(ref["templates"])
    lab = l2n(l2n(txt.astype(np.float64)).reshape(L, T, -1).mean(axis=1))
    d = float(np.abs(lab - np.asarray(ref["label_embeds"])).max())
    c.check(d < prob_tol, f"label_embeds max abs diff {d:.3g}")
    scale = m["scores"]["logit_scale"]
    c.check(abs(scale - ref["logit_scale"]) < 1e-6 * scale, f"logit_scale {scale}")
    probs = softmax(scale * (l2n(img.astype(np.float64)) @ lab.T))
    d = float(np.abs(probs - np.asarray(ref["probs"])).max())
    c.check(d < prob_tol, f"probs max abs diff {d:.3g}")
    top1 = [ref["labels"][i] for i in probs.argmax(axis=1)]
    c.check(top1 == ref["top1"], f"top-1 per image {top1}")
    srt = np.sort(probs, axis=1)
    print(f"  info: distinct top-1 {len(set(top1))}, min top1-top2 margin {float((srt[:, -1] - srt[:, -2]).min()):.3f}")
    return c.failures


def main() -> None:
    ap = argparse.ArgumentParser(description="Check a tessera model package against its reference/ fixtures "
                                             "with ONNX Runtime + tokenizers (no torch).")
    ap.add_argument("package", type=Path, help="package directory (holding model.toml)")
    args = ap.parse_args()
    failures = verify(args.package)
    print("OK" if failures == 0 else f"{failures} check(s) FAILED")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
