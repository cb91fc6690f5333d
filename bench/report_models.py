"""Report of the models benchmark (bench/run.sh, section `models`): reads the runs of
`tessera bench-model` and bench/peer_models.py under --runs and writes RESULTS/models.md (the
table), RESULTS/models_summary.json and RESULTS/models.csv (one row per model and precision).

--rows NAME:ITERATIONS:PRECISION:PACKAGE ...; the runs are --runs/NAME_PRECISION_{tessera,peer}_rK.json
for K = 1..--rounds (a run that failed holds {"error": "..."}). Each side's images/s is its best
round (the machine is shared: the best round is the one least disturbed); every round is kept in
the JSON. ratio = tessera images/s / peer images/s.
"""
import argparse
import csv
import datetime
import json
import os
import platform
import tomllib

LABELS = {
    "clip-vit-b32": "CLIP ViT-B/32",
    "siglip-b16": "SigLIP B/16",
    "openclip-vit-b32": "OpenCLIP ViT-B/32",
}


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        return {"error": f"{path}: {e}"}


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def best(runs):
    ok = [r for r in runs if "images_per_second" in r]
    return max(ok, key=lambda r: r["images_per_second"]) if ok else None


def main():
    p = argparse.ArgumentParser()
    p.add_argument("results")
    p.add_argument("--runs", required=True)
    p.add_argument("--rows", nargs="+", required=True)
    p.add_argument("--rounds", type=int, required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--warmup", type=int, required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--seconds", type=int, default=None)
    p.add_argument("--nice", default="0", help="the niceness both sides ran at")
    a = p.parse_args()

    env = {}
    try:
        for line in open(os.path.join(a.runs, "env.json")):
            env.update(json.loads(line))
    except (OSError, ValueError):
        pass

    rows = []
    for spec in a.rows:
        name, iters, prec, pkg = spec.split(":", 3)
        with open(os.path.join(pkg, "model.toml"), "rb") as f:
            m = tomllib.load(f)
        runs = {side: [load(os.path.join(a.runs, f"{name}_{prec}_{side}_r{k}.json"))
                       for k in range(1, a.rounds + 1)] for side in ("tessera", "peer")}
        t, q = best(runs["tessera"]), best(runs["peer"])
        errors = {side: next((r["error"] for r in rs if "error" in r), None) for side, rs in runs.items()}
        rows.append({
            "model": name,
            "label": LABELS.get(name, name),
            "precision": prec,
            "package": pkg,
            "package_name": m.get("name"),
            "family": m.get("family"),
            "input_size": int(m["preprocess"]["size"]),
            "image_graph_bytes": os.path.getsize(os.path.join(pkg, m["image"]["onnx"])),
            "batch_size": a.batch,
            "warmup": a.warmup,
            "iterations": int(iters),
            "threads": a.threads,
            "tessera_images_per_second": t["images_per_second"] if t else None,
            "peer_images_per_second": q["images_per_second"] if q else None,
            "tessera_ms_per_batch": t["ms_per_batch"] if t else None,
            "peer_ms_per_batch": q["ms_per_batch"] if q else None,
            "ratio": t["images_per_second"] / q["images_per_second"] if t and q else None,
            "tessera_rounds": [r.get("images_per_second") for r in runs["tessera"]],
            "peer_rounds": [r.get("images_per_second") for r in runs["peer"]],
            "tessera_error": errors["tessera"] if not t else None,
            "peer_error": errors["peer"] if not q else None,
            "peer_optimization": q.get("optimization") if q else None,
            "onnxruntime": q.get("onnxruntime") if q else None,
        })

    # fp16 / fp32 of each side, per model
    by = {(r["model"], r["precision"]): r for r in rows}
    for r in rows:
        base = by.get((r["model"], "fp32"))
        for side in ("tessera", "peer"):
            v, b = r[f"{side}_images_per_second"], base and base[f"{side}_images_per_second"]
            r[f"{side}_vs_fp32"] = v / b if v and b else None

    now = datetime.datetime.now(datetime.timezone.utc)
    ort_version = next((r["onnxruntime"] for r in rows if r["onnxruntime"]), "?")
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)
    lines = [
        f"# Model-only benchmark ({now:%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs: {cpu_name()})",
        "",
        f"`tessera bench-model` (the package's image graph on one in-memory batch: no reading, no "
        f"preprocessing) vs ONNX Runtime {ort_version} from Python (bench/peer_models.py) on the same "
        f".onnx, same input batch, CPUExecutionProvider, {a.threads} intra-op threads, batch {a.batch}, "
        f"{a.warmup} warm-up batch(es), the iterations below; best of {a.rounds} rounds each "
        f"(order alternated). Random weights, real shapes, 224 px. fp16 = image graph in float16 "
        f"with float32 inputs/outputs (keep_io_types); on a CPU, ONNX Runtime casts around the "
        f"operators it has no float16 kernel for, so fp16 is expected to be slower here.",
        "",
        "| model | precision | batches | tessera images/s | onnxruntime (Python) images/s | ratio tessera/peer | tessera ms/batch | vs fp32 (tessera) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['precision']} | {r['iterations']} | "
            f"{fmt(r['tessera_images_per_second'], '.2f')} | {fmt(r['peer_images_per_second'], '.2f')} | "
            f"{fmt(r['ratio'], '.2f')} | {fmt(r['tessera_ms_per_batch'], '.0f')} | "
            f"{'' if r['precision'] == 'fp32' or r['tessera_vs_fp32'] is None else format(r['tessera_vs_fp32'], '.2f') + 'x'} |")
    lines.append("")
    for r in rows:
        for side in ("tessera", "peer"):
            if r[f"{side}_error"]:
                lines.append(f"- {r['label']} {r['precision']}, {side}: not timed ({r[f'{side}_error']})")
    lines += [
        f"- rounds (images/s, tessera | peer): " + "; ".join(
            f"{r['label']} {r['precision']}: {', '.join(fmt(v, '.2f') for v in r['tessera_rounds'])} | "
            f"{', '.join(fmt(v, '.2f') for v in r['peer_rounds'])}" for r in rows),
        f"- peer session: graph optimisation {next((r['peer_optimization'] for r in rows if r['peer_optimization']), '?')} "
        f"(tessera's level), intra_op_num_threads {a.threads}; both sides at niceness {a.nice}.",
        f"- load average before/after: {', '.join(f'{x:.1f}' for x in env.get('loadavg_before', []))} / "
        f"{', '.join(f'{x:.1f}' for x in env.get('loadavg_after', []))}"
        + (f"; section time {a.seconds} s." if a.seconds is not None else "."),
    ]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(a.results, "models.md"), "w") as f:
        f.write(text)
    summary = {"date": now.isoformat(timespec="seconds"), "cpus": os.cpu_count(), "cpu": cpu_name(),
               "machine": platform.machine(), "rounds": a.rounds, "nice": a.nice, "section_seconds": a.seconds,
               **env, "rows": rows}
    with open(os.path.join(a.results, "models_summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    cols = ["model", "precision", "family", "package_name", "input_size", "batch_size", "warmup",
            "iterations", "threads", "tessera_images_per_second", "peer_images_per_second", "ratio",
            "tessera_ms_per_batch", "peer_ms_per_batch", "tessera_vs_fp32", "peer_vs_fp32",
            "image_graph_bytes"]
    with open(os.path.join(a.results, "models.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in rows:
            w.writerow(["" if r[c] is None else r[c] for c in cols])
    print(text)


if __name__ == "__main__":
    main()
