#!/usr/bin/env python3
"""Runs `tessera segment ... --out DIR ...` and traces it from outside (bench/run.sh, section
`stitch`): wall time, peak RSS (getrusage of the child), and when each output file appeared in
tessera's pending folder (the `.tessera-tmp-*` folders beside DIR, renamed to DIR at the end) and
when it last changed, sampled every 20 ms along with the process's resident memory. From these the report
splits the run into phases: read + model + stitch (until the final classes.tif appears), COG
(until classes.tif stops growing), polygonize (until polygons.* appears) and vector write
(until the process exits), with the peak resident memory seen in each.

    python bench/stitch_trace.py TRACE.json STDOUT_FILE OUT_DIR -- cmd args...
"""

from __future__ import annotations

import glob
import json
import os
import resource
import subprocess
import sys
import time


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def main() -> None:
    trace_out, stdout_path, out_dir = sys.argv[1:4]
    assert sys.argv[4] == "--", "usage: stitch_trace.py TRACE.json STDOUT OUT_DIR -- cmd..."
    cmd = sys.argv[5:]
    parent = os.path.dirname(os.path.abspath(out_dir)) or "."
    files: dict[str, dict] = {}
    samples = []
    t0 = time.perf_counter()
    with open(stdout_path, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f)
        while proc.poll() is None:
            now = time.perf_counter() - t0
            rss = rss_bytes(proc.pid)
            samples.append((round(now, 3), rss))
            for d in glob.glob(os.path.join(parent, ".tessera-tmp-*")):
                try:
                    names = os.listdir(d)
                except OSError:
                    continue
                for n in names:
                    try:
                        st = os.stat(os.path.join(d, n))
                    except OSError:
                        continue
                    e = files.setdefault(n, {"first_seen": now, "size": -1, "last_change": now})
                    if st.st_size != e["size"]:
                        e["size"], e["last_change"] = st.st_size, now
            time.sleep(0.02)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"bench: command failed with status {proc.returncode}: {' '.join(cmd)}")
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    json.dump({"wall_seconds": wall, "peak_rss_bytes": ru.ru_maxrss * 1024,
               "cpu_seconds": ru.ru_utime + ru.ru_stime, "files": files,
               "rss_samples": samples}, open(trace_out, "w"))


if __name__ == "__main__":
    main()
