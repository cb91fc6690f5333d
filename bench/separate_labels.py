#!/usr/bin/env python3
"""A bench copy of a random CLIP package whose label embeddings are well separated on a scene.

    python bench/separate_labels.py PACKAGE --scene SCENE --labels a,b,c --template T [...] --out NEW

Why: the benchmark's CLIP packages have random weights, so every tile's label scores are nearly
uniform (no tile of the classify bench scene has an fp32 top-2 margin above 0.01) and the top-1
agreement of a quantised variant cannot be measured.  This copy changes one weight matrix, the
text tower's final projection (the last MatMul with a constant weight of the text graph), by the
least-norm change that puts each label's prompt embeddings on a chosen direction: the mean
direction of the scene's tile embeddings turned, by the same angle for every label, towards one
prototype tile's own direction (prototypes picked farthest-first among the tiles; the angle
such that the logits move by about --spread over one standard deviation of the tiles).  Tiles then differ in their top-1 label and most have a large
margin, as a trained model's would; the image graph is untouched, so the speed of the package
(and of its quantised variants, made from this copy) is that of the original shape.  Not a
trained model: its labels still mean nothing.

Needs numpy, onnx, onnxruntime, tokenizers, rasterio (the export venv); no torch.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tomllib
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tools" / "export"))

import quantize as Q  # noqa: E402
from verify_package import tokenize  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("package", type=Path)
    ap.add_argument("--scene", required=True)
    ap.add_argument("--labels", required=True)
    ap.add_argument("--template", action="append", required=True)
    ap.add_argument("--tiles", type=int, default=64, help="scene tiles the directions come from")
    ap.add_argument("--spread", type=float, default=3.0, help="logit change over one standard deviation")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    from tokenizers import Tokenizer

    pkg = Q.Package(a.package)
    m = pkg.m
    labels = [s.strip() for s in a.labels.split(",") if s.strip()]
    names, u8 = Q.scene_tiles(a.scene, pkg.size, a.tiles)
    enc = Q.DualEncoder(pkg)
    img = enc.image_embeds(Q.preprocess(pkg, u8)).astype(np.float64)
    e = img / np.linalg.norm(img, axis=1, keepdims=True)
    mean = e.mean(axis=0)
    c = e - mean
    u = c / np.linalg.norm(c, axis=1, keepdims=True)
    if len(labels) > len(u):
        raise SystemExit(f"separate_labels: {len(labels)} labels need at least as many tiles ({len(u)})")
    # prototypes: farthest-point picks among the tiles' centred directions, one per label
    pick = [int(np.argmax(np.linalg.norm(c, axis=1)))]
    while len(pick) < len(labels):
        pick.append(int(np.argmin(np.max(u @ u[pick].T, axis=1))))
    protos = u[pick]
    scale = float(m["scores"]["logit_scale"])
    mdir = mean / np.linalg.norm(mean)
    protos = protos - np.outer(protos @ mdir, mdir)
    protos /= np.linalg.norm(protos, axis=1, keepdims=True)
    sd = float(np.std(e @ protos.T))
    sin = min(0.99, a.spread / (scale * sd))
    # every label the same angle from the mean direction: equal baselines, tiles decide
    dirs = np.sqrt(1 - sin * sin) * mdir + sin * protos

    # the text graph's projection: pooled [n, H] @ W [H, D]
    tpath = pkg.root / m["text"]["onnx"]
    graph = onnx.load(str(tpath))
    init = {t.name: t for t in graph.graph.initializer}
    proj = [n for n in graph.graph.node if n.op_type == "MatMul" and n.input[1] in init][-1]
    t = m["tokenizer"]
    texts = [tp.format(lb) for lb in labels for tp in a.template]
    ids, mask = tokenize(Tokenizer.from_file(str(pkg.root / t["file"])), texts, t["context_length"], t["pad_token_id"])
    probe = onnx.load(str(tpath))
    probe.graph.output.append(onnx.helper.make_tensor_value_info(proj.input[0], onnx.TensorProto.FLOAT, None))
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.log_severity_level = 3
    s = ort.InferenceSession(probe.SerializeToString(), o, providers=["CPUExecutionProvider"])
    feeds = {m["text"]["input_ids"]: ids}
    if m["text"].get("attention_mask"):
        feeds[m["text"]["attention_mask"]] = mask
    emb, pooled = s.run([m["text"]["output"], proj.input[0]], feeds)
    P = pooled.reshape(len(texts), -1).astype(np.float64)
    W = numpy_helper.to_array(init[proj.input[1]]).astype(np.float64)
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    T = np.repeat(dirs, len(a.template), axis=0) * norms
    dW = P.T @ np.linalg.solve(P @ P.T + 1e-9 * np.eye(len(P)), T - P @ W)
    init[proj.input[1]].CopyFrom(numpy_helper.from_array((W + dW).astype(np.float32), proj.input[1]))

    part = a.out.with_name(a.out.name + ".partial")
    shutil.rmtree(part, ignore_errors=True)
    shutil.copytree(pkg.root, part, ignore=shutil.ignore_patterns("reference", m["text"]["onnx"]))
    onnx.save_model(graph, str(part / m["text"]["onnx"]))
    text = (part / "model.toml").read_text()
    name = tomllib.loads(text)["name"]
    text = text.replace(f'name = "{name}"', f'name = "{name}-separated"', 1)
    (part / "model.toml").write_text(text)

    # what tessera will see: scores of the tiles with the new text graph
    new = Q.DualEncoder(Q.Package(part))
    sc = new.scores(img, new.text_embeds(ids, mask), len(labels), len(a.template))
    srt = np.sort(sc, axis=1)
    margin = srt[:, -1] - srt[:, -2]
    shutil.rmtree(a.out, ignore_errors=True)
    part.rename(a.out)
    top = np.bincount(sc.argmax(1), minlength=len(labels))
    print(f"separate_labels: {a.out}: on {len(sc)} tiles of {a.scene}: top-1 per label {top.tolist()}, "
          f"fp32 top-2 margin median {np.median(margin):.3f}, {int((margin > Q.MARGIN).sum())} above {Q.MARGIN}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
