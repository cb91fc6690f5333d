"""Report of the classify benchmark (bench/run.sh, section `classify`): reads what tessera and
the Python peer wrote under RESULTS and writes RESULTS/classify.md and classify_summary.json.

Reads, from `tessera classify --json`: tiles_read, timings.total_seconds, timings.model_seconds
(required); peak_rss_bytes (top level or in timings; otherwise getrusage of the child process),
timings.load_seconds and timings.text_seconds (if present, end-to-end / model is also given
without these fixed costs), label_counts and the other timings.* (optional). Outputs are read
from RESULTS/classify_tessera/{classes,probabilities}.tif and RESULTS/classify_peer/...
"""
import argparse
import datetime
import json
import os
import platform

import numpy as np
import rasterio


def load_json(path):
    text = open(path).read()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        # tolerate stray lines around the summary: take the last line that parses
        for line in reversed(text.splitlines()):
            line = line.strip()
            if line.startswith("{"):
                try:
                    return json.loads(line)
                except json.JSONDecodeError:
                    pass
        raise SystemExit(f"{path}: no JSON summary found")


def opt_json(path):
    return json.load(open(path)) if os.path.exists(path) else {}


def read_outputs(folder):
    with rasterio.open(os.path.join(folder, "classes.tif")) as c:
        classes, nodata = c.read(1), c.nodata
        geo = (c.crs, c.transform, c.shape)
    with rasterio.open(os.path.join(folder, "probabilities.tif")) as p:
        probs = p.read().astype(np.float64)
        descr = list(p.descriptions)
    return classes, nodata, geo, probs, descr


def model_desc(pkg):
    try:
        import tomllib
        with open(os.path.join(pkg, "model.toml"), "rb") as f:
            m = tomllib.load(f)
        return f"{m.get('name', '?')}: {m.get('source', '')}"
    except (OSError, ValueError):
        return "manifest not readable"


def mib(b):
    return f"{b / 2**20:.0f}" if b else "n/a"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--scene", default="")
    ap.add_argument("--model", default="")
    a = ap.parse_args()
    d = a.results
    t = load_json(os.path.join(d, "classify_tessera.json"))
    p = load_json(os.path.join(d, "classify_peer.json"))
    tproc = opt_json(os.path.join(d, "classify_tessera_process.json"))
    pproc = opt_json(os.path.join(d, "classify_peer_process.json"))
    env = opt_json(os.path.join(d, "classify_env.json"))

    timings = t.get("timings", {})
    t_tiles = t["tiles_read"] if "tiles_read" in t else t["tiles"]
    t_total = timings["total_seconds"]
    t_model = timings["model_seconds"]
    p_tiles, p_total, p_model = p["tiles_read"], p["total_seconds"], p["model_seconds"]
    own_rss = t.get("peak_rss_bytes") or timings.get("peak_rss_bytes")
    t_rss = own_rss or tproc.get("peak_rss_bytes")
    t_rss_src = "tessera's JSON" if own_rss else "getrusage of the child process"
    p_rss = p.get("peak_rss_bytes") or pproc.get("peak_rss_bytes")

    tc, tnod, tgeo, tp, tdescr = read_outputs(os.path.join(d, "classify_tessera"))
    pc, pnod, pgeo, pp, pdescr = read_outputs(os.path.join(d, "classify_peer"))
    labels = p["labels"]
    problems = []
    if tc.shape != pc.shape:
        problems.append(f"classes.tif shapes differ: tessera {tc.shape}, peer {pc.shape}")
    if tp.shape != pp.shape:
        problems.append(f"probabilities.tif shapes differ: tessera {tp.shape}, peer {pp.shape}")
    if tgeo[0] != pgeo[0]:
        problems.append(f"CRS differs: tessera {tgeo[0]}, peer {pgeo[0]}")
    if not tgeo[1].almost_equals(pgeo[1], precision=1e-6):
        problems.append(f"geotransform differs: tessera {tuple(tgeo[1])[:6]}, peer {tuple(pgeo[1])[:6]}")
    if tnod != 255:
        problems.append(f"tessera classes.tif nodata is {tnod}, expected 255")
    if any(tdescr) and list(tdescr) != labels:
        problems.append(f"tessera probabilities band descriptions {tdescr} != labels {labels}")
    if t_tiles != p_tiles:
        problems.append(f"tiles read differ: tessera {t_tiles}, peer {p_tiles}")

    agree = n_both = n_diff = None
    max_prob_diff = None
    diff_margins = []
    if tc.shape == pc.shape:
        both = (tc != 255) & (pc != 255)
        n_both = int(both.sum())
        if (tc == 255).sum() != (pc == 255).sum() or ((tc == 255) != (pc == 255)).any():
            problems.append(f"nodata tiles differ: tessera {int((tc == 255).sum())}, peer {int((pc == 255).sum())}")
        same = (tc == pc) & both
        agree = float(same.sum()) / n_both if n_both else None
        n_diff = n_both - int(same.sum())
        if tp.shape == pp.shape and n_both:
            diff = np.abs(tp - pp)[:, both]
            max_prob_diff = float(np.nanmax(diff)) if np.isfinite(diff).any() else float("nan")
            if np.isnan(diff).any():
                problems.append("probabilities.tif has NaN on tiles both runs classified")
            # how close were the disagreeing tiles (peer's top-1 minus top-2 probability)
            srt = np.sort(pp[:, both & ~same], axis=0)
            diff_margins = (srt[-1] - srt[-2]).tolist() if srt.shape[1] else []

    speed = p_total / t_total
    ratio = t_total / t_model
    summary = {
        "date": str(datetime.date.today()),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "loadavg_before": env.get("loadavg_before"),
        "scene": a.scene,
        "model": a.model,
        "labels": labels,
        "templates": p["templates"],
        "batch_size": p["batch_size"],
        "tessera": {
            "tiles": t_tiles, "end_to_end_seconds": t_total, "model_seconds": t_model,
            "tiles_per_second": t_tiles / t_total, "model_tiles_per_second": t_tiles / t_model,
            "end_to_end_over_model": ratio, "peak_rss_bytes": t_rss, "peak_rss_source": t_rss_src,
            "process_wall_seconds": tproc.get("wall_seconds"), "timings": timings,
            "label_counts": t.get("label_counts"),
        },
        "peer": {
            "tiles": p_tiles, "end_to_end_seconds": p_total, "model_seconds": p_model,
            "tiles_per_second": p_tiles / p_total, "model_tiles_per_second": p_tiles / p_model,
            "end_to_end_over_model": p_total / p_model, "peak_rss_bytes": p_rss,
            "process_wall_seconds": pproc.get("wall_seconds"), "label_counts": p.get("label_counts"),
        },
        "speed_tessera_over_peer": speed,
        "agreement": {
            "tiles_compared": n_both, "same_class_fraction": agree, "different_class_tiles": n_diff,
            "peer_top2_margin_of_different_tiles": diff_margins[:20],
            "max_abs_probability_difference": max_prob_diff,
        },
        "problems": problems,
        "goals": {
            "end_to_end_over_model_max": 1.05, "end_to_end_over_model_met": ratio <= 1.05,
            "speed_min": 1.3, "speed_met": speed >= 1.3,
        },
    }
    rows, cols = tc.shape
    load = env.get("loadavg_before")
    lines = [
        f"# CLIP classify benchmark ({summary['date']}, {summary['cpus']} CPUs, {summary['machine']})",
        "",
        f"`{a.scene}` ({rows} x {cols} tiles of {p['tile_size']} px, 3-band uint8 DEFLATE GeoTIFF), "
        f"model `{a.model}` ({model_desc(a.model)}, CPUExecutionProvider), "
        f"{len(labels)} labels x {len(p['templates'])} templates, batch {p['batch_size']}."
        + (f" Load average before: {load[0]:.2f}." if load else ""),
        "",
        "| run | tiles | end-to-end s | model s | tiles/s | model-only tiles/s | end-to-end / model | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|",
        f"| tessera classify | {t_tiles} | {t_total:.2f} | {t_model:.2f} | {t_tiles / t_total:.1f} | "
        f"{t_tiles / t_model:.1f} | {ratio:.3f} | {mib(t_rss)} |",
        f"| Python peer (rasterio + onnxruntime {p.get('onnxruntime', '')}) | {p_tiles} | {p_total:.2f} | {p_model:.2f} | "
        f"{p_tiles / p_total:.1f} | {p_tiles / p_model:.1f} | {p_total / p_model:.3f} | {mib(p_rss)} |",
        "",
        f"- end-to-end / model-only, tessera: **{ratio:.3f}** (goal <= 1.05: {'met' if ratio <= 1.05 else 'NOT met'})",
        f"- speed: tessera / peer (end-to-end) = **{speed:.2f}x** (goal >= 1.3x: {'met' if speed >= 1.3 else 'NOT met'})",
    ]
    fixed = [k for k in ("load_seconds", "text_seconds") if isinstance(timings.get(k), (int, float))]
    if fixed:
        steady = (t_total - sum(timings[k] for k in fixed)) / t_model
        summary["tessera"]["end_to_end_over_model_without_fixed"] = steady
        lines.append(f"- the same without the fixed costs ({' + '.join(fixed)}): {steady:.3f}")
    if agree is not None:
        lines.append(f"- agreement: same class on **{agree * 100:.2f}%** of {n_both} tiles ({n_diff} differ)"
                     + (f"; max |probability difference| = **{max_prob_diff:.2e}**" if max_prob_diff is not None else ""))
        if diff_margins:
            lines.append(f"- the differing tiles had a peer top-1/top-2 margin of at most {max(diff_margins):.2e}")
    lines.append(f"- peak RSS: tessera from {t_rss_src}; peer from getrusage in the peer")
    if timings:
        lines.append("- tessera timings: " + ", ".join(
            f"{k} {v:.2f}" if isinstance(v, (int, float)) else f"{k} {v}" for k, v in timings.items()))
    lines.append("- peer timings: " + ", ".join(
        f"{k} {p[k]:.2f}" for k in ("load_seconds", "text_seconds", "read_seconds", "model_seconds", "write_seconds")))
    if tproc.get("wall_seconds") and pproc.get("wall_seconds"):
        lines.append(f"- process wall time (with start-up): tessera {tproc['wall_seconds']:.2f} s, "
                     f"peer {pproc['wall_seconds']:.2f} s")
    for pr in problems:
        lines.append(f"- PROBLEM: {pr}")
    json.dump(summary, open(os.path.join(d, "classify_summary.json"), "w"), indent=2)
    text = "\n".join(lines) + "\n"
    open(os.path.join(d, "classify.md"), "w").write(text)
    print(text)


if __name__ == "__main__":
    main()
