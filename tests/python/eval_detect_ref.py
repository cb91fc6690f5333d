#!/usr/bin/env python3
"""Labels and detections as COCO JSON for tests/eval_detect.rs, written independently of
tessera (rasterio, geopandas), so that pycocotools (tests/python/coco_eval.py) can score the
same boxes in map coordinates.

    eval_detect_ref.py csv TIF CSV OUTDIR
        DeepForest CSV boxes (pixels): OUTDIR/labels.geojson (map polygons, field 'label'),
        OUTDIR/coco.json (pixel boxes on TIF), OUTDIR/gt.json (COCO ground truth in map
        coordinates, one image)
    eval_detect_ref.py layer LAYER FIELD TIF OUT
        a polygon layer put into TIF's CRS: OUT, COCO ground truth of the polygons' bounds
    eval_detect_ref.py to-crs LAYER EPSG OUT
        the layer reprojected (to test reprojection)
    eval_detect_ref.py results DETECTIONS GT MAP OUT
        a `tessera detect` layer as a COCO results list: its features' bounds and scores,
        labels renamed by MAP ("red=Tree,green=Tree") to GT's category ids, others dropped
"""
import csv
import json
import sys

import geopandas as gpd
import rasterio
from shapely.geometry import box


def gt_json(boxes, classes):
    """boxes: (class name, minx, miny, maxx, maxy)."""
    cats = [{"id": i + 1, "name": c} for i, c in enumerate(classes)]
    ids = {c: i + 1 for i, c in enumerate(classes)}
    anns = []
    for n, (c, x0, y0, x1, y1) in enumerate(boxes):
        w, h = x1 - x0, y1 - y0
        anns.append({"id": n + 1, "image_id": 1, "category_id": ids[c], "bbox": [x0, y0, w, h],
                     "area": w * h, "iscrowd": 0})
    return {"images": [{"id": 1, "file_name": "scene"}], "categories": cats, "annotations": anns}


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "csv":
        tif, csvf, out = args
        with rasterio.open(tif) as ds:
            t, crs, (w, h) = ds.transform, ds.crs, (ds.width, ds.height)
        rows = list(csv.DictReader(open(csvf)))
        pix = [(r["label"], *(float(r[k]) for k in ("xmin", "ymin", "xmax", "ymax"))) for r in rows]
        polys, labels, mapped = [], [], []
        for c, x0, y0, x1, y1 in pix:
            ring = [t * (x0, y0), t * (x1, y0), t * (x1, y1), t * (x0, y1)]
            xs, ys = [p[0] for p in ring], [p[1] for p in ring]
            polys.append(box(min(xs), min(ys), max(xs), max(ys)))
            labels.append(c)
            mapped.append((c, min(xs), min(ys), max(xs), max(ys)))
        gpd.GeoDataFrame({"label": labels}, geometry=polys, crs=crs).to_file(f"{out}/labels.geojson")
        classes = sorted(set(labels))
        coco = {
            "images": [{"id": 1, "file_name": tif.split("/")[-1], "width": w, "height": h}],
            "categories": [{"id": i + 1, "name": c} for i, c in enumerate(classes)],
            "annotations": [
                {"id": n + 1, "image_id": 1, "category_id": classes.index(c) + 1,
                 "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0}
                for n, (c, x0, y0, x1, y1) in enumerate(pix)
            ],
        }
        json.dump(coco, open(f"{out}/coco.json", "w"))
        json.dump(gt_json(mapped, classes), open(f"{out}/gt.json", "w"))
    elif cmd == "layer":
        layer, field, tif, out = args
        with rasterio.open(tif) as ds:
            crs = ds.crs
        df = gpd.read_file(layer).to_crs(crs)
        values = [str(v).strip() for v in df[field]]
        boxes = [(v, *g.bounds) for v, g in zip(values, df.geometry)]
        json.dump(gt_json(boxes, sorted(set(values))), open(out, "w"))
    elif cmd == "to-crs":
        layer, epsg, out = args
        gpd.read_file(layer).to_crs(epsg=int(epsg)).to_file(out)
    elif cmd == "results":
        dets, gt, mapping, out = args
        ids = {c["name"]: c["id"] for c in json.load(open(gt))["categories"]}
        rename = dict(p.split("=") for p in mapping.split(","))
        df = gpd.read_file(dets)
        res = []
        for label, score, g in zip(df["label"], df["score"], df.geometry):
            name = rename.get(label, label)
            if name not in ids:
                continue
            x0, y0, x1, y1 = g.bounds
            res.append({"image_id": 1, "category_id": ids[name], "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "score": float(score)})
        json.dump(res, open(out, "w"))
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
