#!/usr/bin/env python3
"""Report of the stitch benchmark (bench/run.sh, section `stitch`): reads what tessera and the
Python peer wrote under RESULTS and writes RESULTS/stitch.md and RESULTS/stitch_summary.json.

Per size N (--sizes): RESULTS/stitch_tessera_N.json (`tessera segment --json`: seconds,
model_seconds, peak_rows, peak_rss_bytes, polygons), stitch_tessera_N_process.json (from
bench/stitch_trace.py: wall time, getrusage peak RSS, when each output appeared -> phases),
stitch_peer_N.json (bench/peer_stitch.py) and stitch_peer_N_process.json, the outputs under
RESULTS/stitch_out/{tessera,peer}_N/ and the painted mask's ground truth DATA/stitch_scene_N.json.

Agreement: both polygon layers are read back (count, sum of polygon areas) and the two class
COGs are compared pixel by pixel (in strips), against each other and the painted mask count.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform

import numpy as np


def load(path):
    return json.load(open(path)) if os.path.exists(path) else None


def mib(b):
    return f"{b / 2**20:.0f}" if b else "n/a"


def layer_stats(path):
    import pyogrio
    df = pyogrio.read_dataframe(path)
    geo_area = float(df.geometry.area.sum())
    cls = sorted(set(int(c) for c in df["class"])) if "class" in df else []
    return {"polygons": int(len(df)), "area": geo_area, "classes": cls,
            "holes": int(sum(len(g.interiors) for g in df.geometry))}


def compare_cogs(a, b):
    """Pixel comparison of two single-band class rasters, in strips: ones in each, mismatches."""
    import rasterio
    with rasterio.open(a) as ra, rasterio.open(b) as rb:
        if (ra.width, ra.height) != (rb.width, rb.height):
            return {"same_shape": False}
        out = {"same_shape": True, "same_transform": ra.transform.almost_equals(rb.transform),
               "same_crs": ra.crs == rb.crs, "ones_a": 0, "ones_b": 0, "mismatches": 0,
               "overviews_a": len(ra.overviews(1)), "overviews_b": len(rb.overviews(1)),
               "other_values_a": 0}
        step = 2048
        for r0 in range(0, ra.height, step):
            win = ((r0, min(ra.height, r0 + step)), (0, ra.width))
            x, y = ra.read(1, window=win), rb.read(1, window=win)
            out["ones_a"] += int(np.count_nonzero(x == 1))
            out["ones_b"] += int(np.count_nonzero(y == 1))
            out["other_values_a"] += int(np.count_nonzero(x > 1))
            out["mismatches"] += int(np.count_nonzero((x == 1) != (y == 1)))
    # Overviews, level by level (tessera makes its own; they should equal GDAL's COG driver's).
    out["overview_mismatches"] = []
    if out["overviews_a"] == out["overviews_b"]:
        for level in range(out["overviews_a"]):
            with rasterio.open(a, overview_level=level) as ra, rasterio.open(b, overview_level=level) as rb:
                if (ra.width, ra.height) != (rb.width, rb.height):
                    out["overview_mismatches"].append(None)
                    continue
                diff = 0
                for r0 in range(0, ra.height, step):
                    win = ((r0, min(ra.height, r0 + step)), (0, ra.width))
                    diff += int(np.count_nonzero(ra.read(1, window=win) != rb.read(1, window=win)))
                out["overview_mismatches"].append(diff)
    return out


def symmetric_difference_area(a, b):
    """Area covered by exactly one of the two polygon layers (0: the same region)."""
    import pyogrio
    import shapely
    ga = shapely.union_all(pyogrio.read_dataframe(a).geometry.values)
    gb = shapely.union_all(pyogrio.read_dataframe(b).geometry.values)
    return float(shapely.symmetric_difference(ga, gb).area)


def tessera_phases(trace, report=None):
    """Phases of a tessera run: from its own report (`phase_seconds`) when it has them, with
    the peak RSS sampled by stitch_trace.py in each; else from the output files' appearance
    times (older tessera)."""
    if not trace:
        return None
    samples = trace.get("rss_samples", [])
    ps = (report or {}).get("phase_seconds")
    if ps:
        # Process start to the report's clock start is ~ a few ms: phases are laid end to end.
        keys = [("read_model_stitch", ps["sweep"]), ("cog", ps["cog"]),
                ("polygonize", ps["polygonize"]), ("vector_write_commit", ps["vector"])]
        out, t0 = {}, 0.0
        for k, sec in keys:
            v = [r for t, r in samples if t0 <= t < t0 + sec]
            out[k] = {"seconds": sec, "peak_rss_sampled_bytes": max(v) if v else None}
            t0 += sec
        return out
    f, wall = trace.get("files", {}), trace["wall_seconds"]
    ovr = f.get("classes.tif.ovr.tmp", {}).get("first_seen")
    cog = f.get("classes.tif", {})
    poly = next((v["first_seen"] for k, v in f.items() if "polygons." in k), None)
    stitch_end = ovr if ovr is not None else cog.get("first_seen")
    if stitch_end is None or not cog:
        return None
    if poly is None:  # the vector file lived < 20 ms before the commit: polygonize ends ~ at exit
        poly = wall
    cog_end = cog["last_change"]

    def peak(t0, t1):
        v = [r for t, r in samples if t0 <= t < t1]
        return max(v) if v else None

    spans = {"read_model_stitch": (0.0, stitch_end), "cog": (stitch_end, cog_end),
             "polygonize": (cog_end, poly), "vector_write_commit": (poly, wall)}
    return {k: {"seconds": b - a, "peak_rss_sampled_bytes": peak(a, b)} for k, (a, b) in spans.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--data", required=True)
    ap.add_argument("--sizes", required=True, help="space-separated sizes, e.g. '5000 20000'")
    ap.add_argument("--model", default="")
    ap.add_argument("--seconds", type=float, default=None, help="wall time of the whole section")
    a = ap.parse_args()
    d = a.results
    sizes = sorted(int(s) for s in a.sizes.split())
    env = load(os.path.join(d, "stitch_env.json")) or {}
    runs = {}
    for n in sizes:
        t = load(os.path.join(d, f"stitch_tessera_{n}.json"))
        tp = load(os.path.join(d, f"stitch_tessera_{n}_process.json"))
        p = load(os.path.join(d, f"stitch_peer_{n}.json"))
        pp = load(os.path.join(d, f"stitch_peer_{n}_process.json"))
        truth = load(os.path.join(a.data, f"stitch_scene_{n}.json"))
        r = {"size": n, "truth": truth, "tessera": t, "tessera_process": tp and {k: v for k, v in tp.items() if k != "rss_samples"},
             "tessera_phases": tessera_phases(tp, t), "peer": p, "peer_process": pp}
        tdir = os.path.join(d, "stitch_out", f"tessera_{n}")
        pdir = os.path.join(d, "stitch_out", f"peer_{n}")
        if t:
            r["tessera_layer"] = layer_stats(os.path.join(tdir, "polygons.gpkg"))
        if p:
            r["peer_layer"] = layer_stats(os.path.join(pdir, "polygons.gpkg"))
        if t and p:
            r["pixels"] = compare_cogs(os.path.join(tdir, "classes.tif"), os.path.join(pdir, "classes.tif"))
            r["polygons_symmetric_difference_m2"] = symmetric_difference_area(
                os.path.join(tdir, "polygons.gpkg"), os.path.join(pdir, "polygons.gpkg"))
        runs[n] = r

    big, small = sizes[-1], sizes[0]
    rb, rs = runs[big], runs[small]
    summary = {"date": str(datetime.date.today()), "cpus": os.cpu_count(), "machine": platform.machine(),
               "env": env, "section_seconds": a.seconds, "model": a.model, "runs": runs}

    lines = [f"# Stitch + COG + polygonize benchmark ({datetime.date.today()}, {os.cpu_count()} CPUs, {platform.machine()})", ""]
    lines += [
        "Generated 3-band uint8 scenes (DEFLATE, 256 x 256 tiles, EPSG:32633, 0.5 m) whose red band is a",
        "single-class mask (rectangles, ellipses, rings; bench/stitch_scene.py). tessera: `tessera segment",
        f"--model {a.model or 'seg-threshold'} --tile-size 512 --overlap 64 --scale range:0,255` (class 1 where",
        "red/255 > 0.5) -> classes.tif (COG, DEFLATE, overviews) + polygons.gpkg: the stitched rows are",
        "compressed into COG tiles and overview levels and polygonized (run-based, streaming) as they become",
        "final, on a thread beside the model; the COG is then assembled from the compressed tiles. Peer (bench/peer_stitch.py,",
        "one process): rasterio windowed read of red, `red > 127` into an in-memory mask, COG driver (DEFLATE,",
        "nearest overviews, ALL_CPUS), `rasterio.features.shapes(mask, mask=mask == 1)` -> shapely ->",
        "geopandas/pyogrio GeoPackage. Wall seconds and peak RSS are the process's (getrusage of the child).",
        "",
        "| run | size | seconds | polygons | polygon area (m^2) | peak RSS MiB |",
        "|---|---|---|---|---|---|",
    ]
    for n in sizes:
        r = runs[n]
        if r["tessera"]:
            t, tp, tl = r["tessera"], r["tessera_process"] or {}, r["tessera_layer"]
            lines.append(f"| tessera segment | {n}^2 | {tp.get('wall_seconds', t['seconds']):.1f} | {tl['polygons']} | "
                         f"{tl['area']:.2f} | {mib(tp.get('peak_rss_bytes') or t.get('peak_rss_bytes'))} |")
        if r["peer"]:
            p, pp, pl = r["peer"], r["peer_process"] or {}, r["peer_layer"]
            lines.append(f"| rasterio + shapes + shapely | {n}^2 | {pp.get('wall_seconds', p['seconds']):.1f} | {pl['polygons']} | "
                         f"{pl['area']:.2f} | {mib(pp.get('peak_rss_bytes') or p['peak_rss_bytes'])} |")
    lines.append("")

    # phases
    lines += ["Phases (seconds; tessera's from its report's `phase_seconds`: the sweep includes COG tiles and",
              "streaming polygonizing, COG is the assembly, polygonize what was left after the last row; peak RSS",
              "per phase is the VmRSS sampled every 20 ms by bench/stitch_trace.py):", "",
              "| run | size | read + model + stitch | COG | polygonize | vector write | model (of the first) |",
              "|---|---|---|---|---|---|---|"]
    for n in sizes:
        r = runs[n]
        ph = r["tessera_phases"]
        if ph:
            cell = lambda k: f"{ph[k]['seconds']:.1f} ({mib(ph[k]['peak_rss_sampled_bytes'])} MiB)"
            lines.append(f"| tessera | {n}^2 | {cell('read_model_stitch')} | {cell('cog')} | {cell('polygonize')} | "
                         f"{cell('vector_write_commit')} | {r['tessera']['model_seconds']:.1f} |")
        if r["peer"]:
            q = r["peer"]["phases"]
            lines.append(f"| peer | {n}^2 | {q['read_threshold']:.1f} (read + threshold) | {q['cog']:.1f} | "
                         f"{q['polygonize']:.1f} | {q['gpkg']:.1f} | - (import {q['import']:.1f}) |")
    lines.append("")

    # goals
    res = []
    if rb["tessera"] and rb["peer"]:
        tw = (rb["tessera_process"] or {}).get("wall_seconds", rb["tessera"]["seconds"])
        pw = (rb["peer_process"] or {}).get("wall_seconds", rb["peer"]["seconds"])
        speed = pw / tw
        summary["speed_ratio_peer_over_tessera"] = speed
        res.append(f"- speed at {big}^2: peer seconds / tessera seconds = **{speed:.2f}x** (goal >= 2x: "
                   f"{'met' if speed >= 2 else 'NOT met'}; {tw:.1f} s vs {pw:.1f} s)")
    if rb["tessera"] and rs["tessera"] and big != small:
        rss = lambda r: (r["tessera_process"] or {}).get("peak_rss_bytes") or r["tessera"]["peak_rss_bytes"]
        ratio = rss(rb) / rss(rs)
        summary["tessera_rss_ratio"] = ratio
        wr, ar = big / small, (big / small) ** 2
        grow = (rss(rb) - rss(rs)) / (big - small)
        summary["tessera_rss_bytes_per_width_px"] = grow
        verdict = "grows with width, not area" if ratio <= wr * 1.1 else "grows faster than width"
        res.append(f"- memory: tessera peak RSS {big}^2 / {small}^2 = **{ratio:.2f}** "
                   f"({mib(rss(rb))} vs {mib(rss(rs))} MiB; width ratio {wr:.3g}, area ratio {ar:.3g}: {verdict}; "
                   f"+{grow / 1024:.1f} KiB per pixel of width); peak_rows {rb['tessera']['peak_rows']} at {big}^2, "
                   f"{rs['tessera']['peak_rows']} at {small}^2")
    if rb["peer"] and rs["peer"] and big != small:
        pr = lambda r: (r["peer_process"] or {}).get("peak_rss_bytes") or r["peer"]["peak_rss_bytes"]
        res.append(f"- the peer's peak RSS {big}^2 / {small}^2 = {pr(rb) / pr(rs):.2f} ({mib(pr(rb))} vs {mib(pr(rs))} MiB: it holds the whole mask)")
    agree_all = True
    for n in sizes:
        r = runs[n]
        truth_area = (r["truth"] or {}).get("mask_area_m2")
        bits = []
        if r["tessera"]:
            tl = r["tessera_layer"]
            ok_t = truth_area is None or abs(tl["area"] - truth_area) <= 1e-6 * truth_area
            bits.append(f"tessera {tl['polygons']} polygons ({tl['holes']} holes), area {tl['area']:.2f}"
                        f"{' = painted' if ok_t and truth_area else ' != painted ' + str(truth_area) if truth_area else ''}")
            agree_all &= ok_t and tl["polygons"] == r["tessera"]["polygons"]
        if r["peer"]:
            pl = r["peer_layer"]
            bits.append(f"peer {pl['polygons']} polygons ({pl['holes']} holes), area {pl['area']:.2f}")
        if r["tessera"] and r["peer"]:
            same = r["tessera_layer"]["polygons"] == r["peer_layer"]["polygons"] and \
                abs(r["tessera_layer"]["area"] - r["peer_layer"]["area"]) <= 1e-6 * max(1.0, r["peer_layer"]["area"])
            px = r["pixels"]
            bits.append(f"class rasters: {px.get('mismatches', 'n/a')} differing pixels of {n * n} "
                        f"(ones {px.get('ones_a')} vs {px.get('ones_b')}, painted {(r['truth'] or {}).get('mask_pixels')})")
            ovr = px.get("overview_mismatches") or []
            bits.append(f"overviews: {px.get('overviews_a')} vs {px.get('overviews_b')} levels, differing pixels per level {ovr}")
            sd = r.get("polygons_symmetric_difference_m2")
            bits.append(f"polygon layers' symmetric difference {sd:.3f} m^2")
            same &= px.get("mismatches") == 0 and sd == 0.0
            agree_all &= same
            bits.insert(0, "**agree**" if same else "**DISAGREE**")
        res.append(f"- {n}^2: " + "; ".join(bits))
    summary["agree"] = agree_all
    if a.seconds is not None:
        res.append(f"- the whole section took {a.seconds:.0f} s (load average before: {env.get('loadavg_before')})")
    lines += res
    text = "\n".join(lines) + "\n"
    open(os.path.join(d, "stitch.md"), "w").write(text)
    json.dump(summary, open(os.path.join(d, "stitch_summary.json"), "w"), indent=1, default=str)
    print(text)


if __name__ == "__main__":
    main()
