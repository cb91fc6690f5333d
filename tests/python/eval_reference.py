#!/usr/bin/env python3
"""Reference metrics for tests/eval.rs, computed by the implementations the field trusts on
the predictions tessera eval wrote (or on its rasters), printed as JSON.

  classify PRED.jsonl CLASSES_JSON   scikit-learn: accuracy, top-5, macro and per-class
                                     precision/recall/F1, confusion matrix
  segment LABELS CLASSES.tif K       scikit-learn on pixels: IoU per class, mIoU, macro F1,
                                     accuracy (LABELS: a label raster, nodata left out)
  caption PRED.jsonl                 pycocoevalcap Bleu(4) and Cider() on the tokens tessera
                                     scored (pre-tokenised: no Java needed)
  ptb SENTENCES_JSON                 pycocoevalcap's PTBTokenizer (Java) on sentences
"""
import json
import sys

import numpy as np


def rows(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def classify(pred, classes_json):
    from sklearn.metrics import (accuracy_score, confusion_matrix,
                                 precision_recall_fscore_support, top_k_accuracy_score)
    classes = json.loads(classes_json)
    k = len(classes)
    rs = [r for r in rows(pred) if r["truth"] is not None]
    y = np.array([classes.index(r["truth"]) for r in rs])
    scores = np.array([r["scores"] for r in rs], dtype=np.float64)
    p = scores.argmax(axis=1)
    labels = list(range(k))
    prec, rec, f1, sup = precision_recall_fscore_support(y, p, labels=labels, zero_division=0)
    mp, mr, mf, _ = precision_recall_fscore_support(
        y, p, labels=labels, average="macro", zero_division=0)
    out = {
        "top1": accuracy_score(y, p),
        # Two classes: scikit-learn takes the positive class's score alone.
        "top5": top_k_accuracy_score(y, scores[:, 1] if k == 2 else scores, k=min(5, k),
                                     labels=labels),
        "precision": mp, "recall": mr, "f1": mf,
        "per_class": {c: {"precision": prec[i], "recall": rec[i], "f1": f1[i],
                          "support": int(sup[i])} for i, c in enumerate(classes)},
        "confusion": confusion_matrix(y, p, labels=labels).tolist(),
    }
    print(json.dumps(out))


def segment(labels, classes_tif, k):
    import rasterio
    k = int(k)
    with rasterio.open(labels) as d:
        t = d.read(1).astype(np.int64)
        if d.nodata is not None:
            t[t == int(d.nodata)] = -1
    with rasterio.open(classes_tif) as d:
        p = d.read(1).astype(np.int64)
    pixel_metrics(t, p, k)


def segment_poly(labels, field, classes_tif, names_json):
    """Polygons (reprojected with pyproj when their CRS differs) burnt with rasterio (pixel
    centres inside) on the class mosaic's grid."""
    import geopandas
    import rasterio
    from rasterio import features
    names = json.loads(names_json)
    with rasterio.open(classes_tif) as d:
        p = d.read(1).astype(np.int64)
        shape, transform, crs = d.shape, d.transform, d.crs
    gdf = geopandas.read_file(labels)
    if gdf.crs is not None and crs is not None and gdf.crs != crs:
        gdf = gdf.to_crs(crs)
    shapes = [(g, names.index(v)) for g, v in zip(gdf.geometry, gdf[field])]
    t = features.rasterize(shapes, out_shape=shape, transform=transform, fill=-1, dtype="int32")
    pixel_metrics(t.astype(np.int64), p, len(names))


def pixel_metrics(t, p, k):
    from sklearn.metrics import accuracy_score, f1_score, jaccard_score
    keep = (t >= 0) & (t < k)
    y, q = t[keep], p[keep]
    present = sorted(set(np.unique(y)) | (set(np.unique(q)) - {255}))
    iou = jaccard_score(y, q, labels=present, average=None, zero_division=0)
    out = {
        "miou": jaccard_score(y, q, labels=present, average="macro", zero_division=0),
        "iou": {int(c): v for c, v in zip(present, iou)},
        "f1": f1_score(y, q, labels=present, average="macro", zero_division=0),
        "pixel_accuracy": accuracy_score(y, q),
        "pixels": int(keep.sum()),
    }
    print(json.dumps(out))


def caption(pred):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    rs = rows(pred)
    gts = {r["unit"]: r["references"] for r in rs}
    res = {r["unit"]: [r["tokens"]] for r in rs}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    print(json.dumps({"bleu4": bleu[3], "cider": float(cider)}))


def ptb(sentences_json):
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    sentences = json.loads(sentences_json)
    out = PTBTokenizer().tokenize({i: [{"caption": s}] for i, s in enumerate(sentences)})
    print(json.dumps([out[i][0] for i in range(len(sentences))]))


if __name__ == "__main__":
    {"classify": classify, "segment": segment, "segment-poly": segment_poly, "caption": caption, "ptb": ptb}[sys.argv[1]](*sys.argv[2:])
