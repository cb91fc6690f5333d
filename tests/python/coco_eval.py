#!/usr/bin/env python3
"""Reference detection metrics with pycocotools (COCOeval, iouType 'bbox') for the Rust tests.

    coco_eval.py GT.json RESULTS.json [--max-dets N] [--confidence C]

GT.json is a COCO dataset (images, annotations with ids from 1, categories); RESULTS.json a
COCO results list. Prints one JSON object: map_50, map_75, map_50_95 (area 'all', maxDets N,
as COCOeval.summarize averages them: entries > -1), per category id: ap_50, ap_75, ap_50_95,
max_recall and the 101-point interpolated precision at IoU 0.5, and true/false positives and
false negatives at IoU 0.5 for detections scoring >= C, read from COCOeval.evalImgs (its own
matching), with precision, recall and F1 from them (0 where a denominator is 0).
"""
import argparse
import contextlib
import io
import json
import sys

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


def ratio(a, b):
    return float(a) / float(b) if b else 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gt")
    ap.add_argument("results")
    ap.add_argument("--max-dets", type=int, default=100)
    ap.add_argument("--confidence", type=float, default=0.5)
    args = ap.parse_args()

    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):
        gt = COCO(args.gt)
        with open(args.results) as f:
            results = json.load(f)
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.params.maxDets = [1, 10, args.max_dets]
        ev.evaluate()
        ev.accumulate()
        if args.max_dets == 100:
            ev.summarize()

    # precision[T, R, K, A, M]; area index 0 is 'all', M index 2 our max_dets.
    prec = ev.eval["precision"][:, :, :, 0, 2]
    rec = ev.eval["recall"][:, :, 0, 2]

    def mean_valid(s):
        s = s[s > -1]
        return None if s.size == 0 else float(np.mean(s))

    out = {
        "map_50": mean_valid(prec[0]),
        "map_75": mean_valid(prec[5]),
        "map_50_95": mean_valid(prec),
        "classes": {},
    }
    if args.max_dets == 100:
        # Our averaging is summarize's: check it on the stats it printed.
        for key, idx in (("map_50_95", 0), ("map_50", 1), ("map_75", 2)):
            want = out[key] if out[key] is not None else -1.0
            assert abs(ev.stats[idx] - want) < 1e-15, (key, ev.stats[idx], want)

    counts = {}
    for e in ev.evalImgs:
        if e is None or e["aRng"] != [0, 1e10]:
            continue
        k = e["category_id"]
        scores = np.asarray(e["dtScores"])
        keep = scores >= args.confidence
        matched = e["dtMatches"][0] > 0
        ignored = e["dtIgnore"][0].astype(bool)
        tp = int(np.sum(keep & matched & ~ignored))
        fp = int(np.sum(keep & ~matched & ~ignored))
        n_gt = int(np.sum(np.asarray(e["gtIgnore"]) == 0))
        c = counts.setdefault(k, [0, 0, 0])
        c[0] += tp
        c[1] += fp
        c[2] += n_gt - tp

    tot = [0, 0, 0]
    for ki, k in enumerate(ev.params.catIds):
        p = prec[:, :, ki]
        c = counts.get(k, [0, 0, 0])
        tot = [a + b for a, b in zip(tot, c)]
        valid = bool(np.all(p > -1))
        out["classes"][str(k)] = {
            "ap_50": float(np.mean(p[0])) if valid else None,
            "ap_75": float(np.mean(p[5])) if valid else None,
            "ap_50_95": float(np.mean(p)) if valid else None,
            "max_recall": float(rec[0, ki]) if valid else None,
            "pr_curve": [float(v) for v in p[0]] if valid else [],
            "tp": c[0],
            "fp": c[1],
            "fn": c[2],
        }
    tp, fp, fn = tot
    precision = ratio(tp, tp + fp)
    recall = ratio(tp, tp + fn)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    out.update({"tp": tp, "fp": fp, "fn": fn, "precision": precision, "recall": recall, "f1": f1})
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
