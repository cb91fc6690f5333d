#!/usr/bin/env python3
"""``export.py openflamingo --from``: an OpenFlamingo checkpoint folder gives the same package as
the model it was saved from, for each language model the step graph restates; bad folders fail
with one line.

    .venv-export/bin/python tools/export/tests/test_openflamingo_export.py

Cases:

* for the tiny MPT, GPT-NeoX and LLaMA Flamingos (``--tiny --lm ...``): ``--save-checkpoint``
  writes the folder (MPT and GPT-NeoX in the published form: trained parameters only in
  checkpoint.pt, the LM in lm/model.safetensors with its base vocabulary, the ViT in
  vision/open_clip_model.safetensors; LLaMA as one whole state dict), ``--from`` exports it:
  encoder.onnx, cross_kv.onnx and decoder.onnx the same graphs as the ``--tiny`` export's (up to
  the tracer's internal tensor names) with exactly the same weights, tokenizer.json
  byte-identical, model.toml equal but for name and source; and the ``--tiny`` graphs equal to
  the committed fixtures under sample_data/models (whose tokens tests/idefics_parity.rs checks
  against the PyTorch references), weights within 1e-6 (the last bit of the random weights
  depends on the machine's thread count);
* a checkpoint without ``perceiver.latents``: exit status 1, a line naming the folder and the
  missing tensor, no output folder; a checkpoint with a tensor the model does not have: a line
  naming checkpoint.pt and the key; no lm/config.json: a line naming it;
* ``--tiny --fp16``: exported and verified against PyTorch at the float16 tolerance, the manifest
  says ``precision = "fp16"``, float16 weights in the graphs, no reference.json.

Needs torch, transformers, open_clip and open_flamingo (the exporter's venv); CI does not run it
(about 4 minutes on 2 cores). Exit status 0 when every check passes.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parents[1]  # tools/export
EXPORT = HERE / "export.py"
FIXTURES = HERE.parents[1] / "sample_data" / "models"
GRAPHS = ("encoder.onnx", "cross_kv.onnx", "decoder.onnx")
CASES = [("mpt", "trained", "openflamingo-mpt-tiny"), ("gpt-neox", "trained", "openflamingo-gpt-neox-tiny"),
         ("llama", "full", "openflamingo-tiny")]
FAILURES: list[str] = []


def export(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(EXPORT), "openflamingo", *args, "--no-reference", "--skip-verify"]
    return subprocess.run(cmd, cwd=HERE, capture_output=True, text=True)


def check(ok: bool, what: str) -> None:
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        FAILURES.append(what)


def canonical(path: Path):
    """The graph with its internal tensor and node names replaced by their order of first
    appearance (the tracer numbers them from a process-wide counter), and its initializers'
    values in that order."""
    import onnx
    from onnx import numpy_helper

    g = onnx.load(str(path)).graph
    keep = {v.name for v in [*g.input, *g.output]}
    names: dict[str, str] = {}

    def rename(n: str) -> str:
        if n in keep or not n:
            return n
        return names.setdefault(n, f"t{len(names)}")

    values = []
    for t in g.initializer:
        values.append(numpy_helper.to_array(t))
        t.name = rename(t.name)
        t.ClearField("raw_data")
        t.ClearField("float_data")
    for i, node in enumerate(g.node):
        node.name = f"n{i}"
        node.input[:] = [rename(n) for n in node.input]
        node.output[:] = [rename(n) for n in node.output]
    return g.SerializeToString(deterministic=True), values


def same_graph(a: Path, b: Path, atol: float = 0.0) -> bool:
    """The same graph up to internal names, initializers equal (within ``atol``: the tiny models'
    random weights move in the last bit with the machine's thread count)."""
    import numpy as np

    (ga, va), (gb, vb) = canonical(a), canonical(b)
    return ga == gb and len(va) == len(vb) and all(
        x.shape == y.shape and np.allclose(x, y, rtol=0, atol=atol) for x, y in zip(va, vb))


def manifest(pkg: Path) -> dict:
    m = tomllib.loads((pkg / "model.toml").read_text())
    return {k: v for k, v in m.items() if k not in ("name", "source")}


def fails_with(res: subprocess.CompletedProcess, out: Path, needles: list[str], what: str) -> None:
    lines = [line for line in res.stderr.splitlines() if line.startswith("export.py openflamingo:")]
    check(res.returncode == 1 and len(lines) == 1 and all(n in lines[0] for n in needles) and not out.exists(),
          f"{what}: exit 1, one line with {needles}, no output ({res.returncode}, {lines})")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="flamingo-test-") as tmp:
        t = Path(tmp)
        for lm, form, fixture in CASES:
            tiny, ckpt, back = t / f"{lm}-tiny", t / f"{lm}-ckpt", t / f"{lm}-from"
            res = export("--tiny", "--lm", lm, "--out", str(tiny), "--save-checkpoint", str(ckpt),
                         "--checkpoint-form", form)
            check(res.returncode == 0, f"{lm}: --tiny --save-checkpoint ({res.stderr[-400:]})")
            res = export("--from", str(ckpt), "--out", str(back))
            check(res.returncode == 0, f"{lm}: --from the {form} folder ({res.stderr[-400:]})")
            if res.returncode != 0:
                continue
            check((tiny / "tokenizer.json").read_bytes() == (back / "tokenizer.json").read_bytes(),
                  f"{lm}: --from tokenizer.json == --tiny tokenizer.json")
            for name in GRAPHS:
                check(same_graph(tiny / name, back / name), f"{lm}: --from {name} == --tiny {name} (weights exact)")
                check(same_graph(tiny / name, FIXTURES / fixture / name, 1e-6),
                      f"{lm}: --tiny {name} == committed {fixture}/{name} (weights within 1e-6)")
            check(manifest(tiny) == manifest(back), f"{lm}: model.toml equal but for name and source")
            check(manifest(tiny) == manifest(FIXTURES / fixture), f"{lm}: model.toml as committed in {fixture}")
            positions = "position_ids" in manifest(back)["decoder"]
            check(positions == (lm != "mpt"), f"{lm}: decoder position_ids {'given' if positions else 'absent'}")

        base = t / "mpt-ckpt"
        bad = t / "bad"
        shutil.copytree(base, bad)
        sd = torch.load(base / "checkpoint.pt", weights_only=True)
        torch.save({k: v for k, v in sd.items() if k != "perceiver.latents"}, bad / "checkpoint.pt")
        fails_with(export("--from", str(bad), "--out", str(t / "o1")), t / "o1",
                   [str(bad), "no weights for perceiver.latents"], "checkpoint without perceiver.latents")
        torch.save({**sd, "perceiver.extra": torch.zeros(2)}, bad / "checkpoint.pt")
        fails_with(export("--from", str(bad), "--out", str(t / "o2")), t / "o2",
                   ["checkpoint.pt", "perceiver.extra", "do not fit"], "checkpoint with an unknown tensor")
        (bad / "lm" / "config.json").unlink()
        fails_with(export("--from", str(bad), "--out", str(t / "o3")), t / "o3",
                   ["lm/config.json", "missing"], "no lm/config.json")

        # --fp16: verified against PyTorch (no --skip-verify), precision recorded, float16 weights
        fp16 = t / "fp16"
        res = subprocess.run([sys.executable, str(EXPORT), "openflamingo", "--tiny", "--fp16", "--out", str(fp16)],
                             cwd=HERE, capture_output=True, text=True)
        check(res.returncode == 0 and "ONNX Runtime vs PyTorch" in res.stderr,
              f"--tiny --fp16 exports and verifies (exit {res.returncode}: {res.stderr.strip().splitlines()[-1:]})")
        if res.returncode == 0:
            check(manifest(fp16).get("precision") == "fp16", "--fp16: model.toml precision = \"fp16\"")
            check(not (fp16 / "reference.json").exists(), "--fp16: no reference.json")
            import onnx
            dec = onnx.load(str(fp16 / "decoder.onnx"))
            check(any(i.data_type == onnx.TensorProto.FLOAT16 for i in dec.graph.initializer),
                  "--fp16: decoder.onnx holds float16 weights")
    if FAILURES:
        print(f"{len(FAILURES)} check(s) failed", file=sys.stderr)
        sys.exit(1)
    print("all openflamingo --from checks passed")


if __name__ == "__main__":
    main()
