#!/usr/bin/env python3
"""Check a CLIPSeg ("segmenter") or OWL-ViT ("detector") package against its PyTorch reference/.

Needs only numpy, onnxruntime and tokenizers (no torch)::

    python tools/export/verify_prompted.py sample_data/models/clipseg-tiny
    python tools/export/verify_prompted.py sample_data/models/owlvit-tiny

Runs the graph at batch 1 and at the full batch, with different numbers of prompts, and
compares with the PyTorch numbers (max |diff| / max(1, max |ref|) < 1e-4).  Exit status 1
on any failure.
"""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from tokenizers import Tokenizer

TOL = 1e-4
failures: list[str] = []


def check(ok: bool, what: str) -> None:
    print(f"  [{'ok' if ok else 'FAIL'}] {what}")
    if not ok:
        failures.append(what)


def rel(ref, got) -> float:
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    return float(np.abs(ref - got).max() / max(1.0, float(np.abs(ref).max())))


def main(pkg: Path) -> int:
    man = tomllib.loads((pkg / "model.toml").read_text())
    fam = man["family"]
    print(f"{pkg}: family {fam}, name {man['name']}")
    for sec, keys in (("model", ["onnx", "input", "output"]), ("prompted", ["input_ids", "attention_mask"]),
                      ("preprocess", ["size", "mean", "std", "channel_order", "value_range"]),
                      ("tokenizer", ["file", "context_length", "pad_token_id", "bos_token_id", "eos_token_id"])):
        check(all(k in man.get(sec, {}) for k in keys), f"manifest [{sec}] keys")
    tail = ("segmentation", ["format", "classes", "threshold"]) if fam == "segmenter" else \
        ("detection", ["format", "classes", "confidence", "iou"])
    check(all(k in man.get(tail[0], {}) for k in tail[1]), f"manifest [{tail[0]}] keys")

    mp = pkg / man["model"]["onnx"]
    model = onnx.load(str(mp), load_external_data=False)
    ext = any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    check(not ext, "no external data")
    ins = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    outs = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output}
    print(f"  inputs {ins}\n  outputs {outs}")
    names = [man["model"]["input"], man["prompted"]["input_ids"], man["prompted"]["attention_mask"]]
    check(sorted(ins) == sorted(names), "graph input names")
    out_names = [man["model"]["output"]] + ([man["prompted"]["boxes"]] if fam == "detector" else [])
    check(sorted(outs) == sorted(out_names), "graph output names")
    check(all(isinstance(v[0], str) for v in ins.values()), "dynamic leading axis on every input")

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(mp), opts, providers=["CPUExecutionProvider"])

    rdir = pkg / "reference"
    ref = json.loads((rdir / "reference.json").read_text())
    tk = man["tokenizer"]
    tok = Tokenizer.from_file(str(pkg / tk["file"]))
    texts = ref["prompts"] if fam == "segmenter" else ref["queries"]
    enc = tok.encode_batch(texts)
    ids = np.array([e.ids for e in enc], np.int64)
    mask = np.array([e.attention_mask for e in enc], np.int64)
    check(ids.shape[1] == tk["context_length"], f"tokenizer.json pads to context_length {tk['context_length']}")
    check(ids.tolist() == ref["token_ids"] and mask.tolist() == ref["attention_mask"], "prompt token ids/masks")
    for case in ref["tokenizer_cases"]:
        e = tok.encode(case["text"])
        check(e.ids == case["token_ids"] and e.attention_mask == case["attention_mask"],
              f"tokenizer case {case['text'][:30]!r}")

    pp = man["preprocess"]
    n = ref["images_u8"]["shape"][0]
    s = pp["size"]
    u8 = np.fromfile(rdir / "images_u8.bin", np.uint8).reshape(n, s, s, 3)
    px_ref = np.fromfile(rdir / "pixels_f32.bin", "<f4").reshape(n, 3, s, s)
    px = (u8.astype(np.float32) / np.float32(pp["value_range"]) - np.asarray(pp["mean"], np.float32)) \
        / np.asarray(pp["std"], np.float32)
    px = np.ascontiguousarray(px.transpose(0, 3, 1, 2))
    check(float(np.abs(px - px_ref).max()) <= 1e-6, "preprocessing of images_u8 == pixels_f32")

    feeds = lambda p, i, m: {names[0]: p, names[1]: i, names[2]: m}  # noqa: E731
    if fam == "segmenter":
        p = len(texts)
        logits = np.fromfile(rdir / "logits_f32.bin", "<f4").reshape(n * p, s, s)
        probs = np.fromfile(rdir / "probs_f32.bin", "<f4").reshape(n * p, s, s)
        rows_px = np.repeat(px_ref, p, axis=0)
        full = sess.run(None, feeds(rows_px, np.tile(ids, (n, 1)), np.tile(mask, (n, 1))))[0]
        check(full.shape == logits.shape, f"logits shape {full.shape}")
        e = rel(logits, full)
        check(e < TOL, f"all {n}x{p} pairs: rel err {e:.2e}")
        sig = 1.0 / (1.0 + np.exp(-full.astype(np.float64)))
        e = float(np.abs(sig - probs).max())
        check(e < TOL, f"sigmoid probs: abs err {e:.2e}")
        one = sess.run(None, feeds(px_ref[1:2], ids[2:3], mask[2:3]))[0]
        e = rel(logits[1 * p + 2: 1 * p + 3], one)
        check(e < TOL, f"batch 1 (image 1, prompt 2): rel err {e:.2e}")
        two = sess.run(None, feeds(np.repeat(px_ref[3:4], 2, 0), ids[:2], mask[:2]))[0]
        e = rel(logits[3 * p: 3 * p + 2], two)
        check(e < TOL, f"image 3 with 2 prompts: rel err {e:.2e}")
        il, ml = np.array(ref["token_ids_longest"], np.int64), np.array(ref["attention_mask_longest"], np.int64)
        lon = sess.run(None, feeds(rows_px, np.tile(il, (n, 1)), np.tile(ml, (n, 1))))[0]
        e = rel(logits, lon)
        check(e < TOL, f"padding to the longest (L={il.shape[1]}): rel err {e:.2e}")
        thr = man["segmentation"]["threshold"]
        frac = (sig > thr).reshape(n * p, -1).mean(1)
        check(np.allclose(frac, ref["fraction_above_threshold"], atol=2e-3), f"fraction above {thr}")
    else:
        logits = np.array(ref["logits"])
        boxes = np.array(ref["pred_boxes"])
        q = len(texts)
        for b_idx, q_idx, what in ((list(range(n)), list(range(q)), f"B={n}, Q={q}"),
                                   ([2], list(range(q)), "B=1, Q=%d" % q),
                                   (list(range(n)), [1], f"B={n}, Q=1"),
                                   ([3, 0], [1, 0], "B=2, queries reversed")):
            lg, bx = sess.run(None, feeds(px_ref[b_idx], ids[q_idx], mask[q_idx]))
            e1 = rel(logits[b_idx][:, :, q_idx], lg)
            e2 = rel(boxes[b_idx], bx)
            check(e1 < TOL and e2 < TOL, f"{what}: logits rel err {e1:.2e}, boxes {e2:.2e}")
        lg, bx = sess.run(None, feeds(px_ref, ids, mask))
        for case in ref["post_process"]["cases"]:
            t = case["threshold"]
            for i, det in enumerate(case["detections"]):
                sc = 1.0 / (1.0 + np.exp(-lg[i].astype(np.float64).max(-1)))
                lab = lg[i].argmax(-1)
                cx, cy, w, h = (bx[i].astype(np.float64)[:, k] for k in range(4))
                H, W = ref["post_process"]["target_sizes"][i]
                xyxy = np.stack([(cx - w / 2) * W, (cy - h / 2) * H, (cx + w / 2) * W, (cy + h / 2) * H], -1)
                keep = sc > t
                ok = (int(keep.sum()) == len(det["scores"]) and lab[keep].tolist() == det["labels"]
                      and (keep.sum() == 0 or (np.abs(xyxy[keep] - np.array(det["boxes"])).max() < 1e-3
                                               and np.abs(sc[keep] - np.array(det["scores"])).max() < 1e-4)))
                check(ok, f"post-process threshold {t}, image {i}: {len(det['scores'])} detections")
    print(f"{pkg}: {'FAILED: ' + str(len(failures)) if failures else 'all checks passed'}")
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    sys.exit(main(Path(sys.argv[1])))
