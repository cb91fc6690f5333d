#!/usr/bin/env python3
"""``--from`` a transformers 5 ``save_pretrained`` folder: the image processor settings are read.

    .venv-export/bin/python tools/export/tests/test_processor_config.py

transformers 5 writes a processor's image settings into ``processor_config.json``, nested under
``"image_processor"``, and no ``preprocessor_config.json``.  This test builds tiny random models
with transformers, saves model + processor with ``save_pretrained`` (and reports which files that
wrote), exports them with ``export.py ... --from`` and checks that ``[preprocess]`` in the
manifest holds the processor's mean, std and size (non-OpenAI values, so a silent fallback to
OpenAI's would fail). It also checks that a folder with neither file fails with one line naming
the folder.

Cases: ``clip`` from a ``CLIPProcessor`` folder, ``blip2`` from a ``Blip2Processor`` folder (the
model from ``export.py blip2 --tiny --save-pretrained``, its processor files replaced by what
``Blip2Processor.save_pretrained`` writes), and ``clip`` from a folder without either file.

Needs the exporter's requirements (torch, transformers, ...) **plus pillow**: transformers 5's image
processors need PIL (or torchvision) to be constructed, although the exporter itself never loads
them. Pillow may live outside the venv (``PYTHONPATH=DIR`` with ``pip install --target DIR
pillow``). Because of torch, CI does not run this test; run it by hand after changing how the
exporters read checkpoints. It needs the CLIP BPE vocabulary as ``export.py clip --tiny`` does.
Exit status 0 when every check passes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]  # tools/export
EXPORT = HERE / "export.py"
sys.path.insert(0, str(HERE))

MEAN = [0.5, 0.5, 0.5]        # SigLIP-style normalisation: not OpenAI's
STD = [0.5, 0.5, 0.5]
BLIP_MEAN = [0.485, 0.456, 0.406]
BLIP_STD = [0.229, 0.224, 0.225]

failures = 0


def check(ok: bool, what: str) -> None:
    global failures
    print(f"{'ok  ' if ok else 'FAIL'} {what}")
    failures += 0 if ok else 1


def export(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(EXPORT), *args], capture_output=True, text=True)


def manifest_preprocess(out: Path) -> dict:
    return tomllib.loads((out / "model.toml").read_text())["preprocess"]


def saved_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def clip_case(tmp: Path) -> Path:
    import torch
    from transformers import CLIPImageProcessor, CLIPModel, CLIPProcessor

    import clip_export
    import common

    torch.manual_seed(0)
    cfg = clip_export.tiny_clip_config("tiny")
    model = CLIPModel(cfg).eval()
    size = cfg.vision_config.image_size
    tok = common.build_real_vocab_tokenizer(common.find_bpe_vocab(None), cfg.text_config.max_position_embeddings)
    ip = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                            image_mean=MEAN, image_std=STD)
    src = tmp / "clip-sp"
    model.save_pretrained(src)
    CLIPProcessor(image_processor=ip, tokenizer=tok).save_pretrained(src)
    files = saved_files(src)
    print(f"     clip: save_pretrained wrote {files}")
    check("preprocessor_config.json" not in files and "processor_config.json" in files,
          "clip: transformers wrote processor_config.json and no preprocessor_config.json")
    nested = json.loads((src / "processor_config.json").read_text()).get("image_processor", {})
    check(nested.get("image_mean") == MEAN, "clip: processor_config.json nests image_mean under image_processor")

    out = tmp / "clip-pkg"
    r = export("clip", "--from", str(src), "--out", str(out))
    check(r.returncode == 0, f"clip: export --from exits 0 (rc {r.returncode})")
    if r.returncode != 0:
        print(r.stderr[-3000:])
        return src
    check("OpenAI" not in r.stderr, "clip: no fallback to OpenAI's mean/std")
    pre = manifest_preprocess(out)
    print(f"     clip: manifest [preprocess] {pre}")
    check(pre["mean"] == [float(x) for x in ip.image_mean], f"clip: mean {pre['mean']} == processor {ip.image_mean}")
    check(pre["std"] == [float(x) for x in ip.image_std], f"clip: std {pre['std']} == processor {ip.image_std}")
    check(pre["size"] == ip.crop_size["height"], f"clip: size {pre['size']} == processor crop {ip.crop_size}")
    return src


def blip2_case(tmp: Path) -> None:
    from transformers import AutoTokenizer, BlipImageProcessor, Blip2Processor

    src = tmp / "blip2-sp"
    r = export("blip2", "--tiny", "--out", str(tmp / "blip2-tiny"), "--no-reference", "--skip-verify",
               "--save-pretrained", str(src))
    check(r.returncode == 0, f"blip2: --tiny --save-pretrained exits 0 (rc {r.returncode})")
    if r.returncode != 0:
        print(r.stderr[-3000:])
        return
    size = json.loads((src / "config.json").read_text())["vision_config"]["image_size"]
    tokens = json.loads((src / "config.json").read_text())["num_query_tokens"]
    for stale in ("preprocessor_config.json", "processor_config.json"):
        (src / stale).unlink()
    tok = AutoTokenizer.from_pretrained(src)
    ip = BlipImageProcessor(size={"height": size, "width": size}, image_mean=BLIP_MEAN, image_std=BLIP_STD)
    Blip2Processor(image_processor=ip, tokenizer=tok, num_query_tokens=tokens).save_pretrained(src)
    files = saved_files(src)
    print(f"     blip2: Blip2Processor.save_pretrained -> folder {files}")
    check("preprocessor_config.json" not in files, "blip2: no preprocessor_config.json")

    out = tmp / "blip2-pkg"
    r = export("blip2", "--from", str(src), "--out", str(out))
    check(r.returncode == 0, f"blip2: export --from exits 0 (rc {r.returncode})")
    if r.returncode != 0:
        print(r.stderr[-3000:])
        return
    pre = manifest_preprocess(out)
    print(f"     blip2: manifest [preprocess] {pre}")
    check(pre["mean"] == [float(x) for x in ip.image_mean], f"blip2: mean {pre['mean']} == processor {ip.image_mean}")
    check(pre["std"] == [float(x) for x in ip.image_std], f"blip2: std {pre['std']} == processor {ip.image_std}")
    check(pre["size"] == ip.size["height"], f"blip2: size {pre['size']} == processor {ip.size}")


def neither_case(tmp: Path, clip_src: Path) -> None:
    src = tmp / "clip-no-processor"
    shutil.copytree(clip_src, src)
    for name in ("processor_config.json", "preprocessor_config.json"):
        (src / name).unlink(missing_ok=True)
    print(f"     neither: folder {saved_files(src)}")
    r = export("clip", "--from", str(src), "--out", str(tmp / "clip-no-processor-pkg"))
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    print(f"     neither: rc {r.returncode}, last stderr line: {last}")
    check(r.returncode == 1, "neither: export --from exits 1")
    check("Traceback" not in r.stderr, "neither: no traceback")
    check(str(src) in last and "image processor settings" in last,
          "neither: the last line names the folder and what is missing")
    check(sum(str(src) in ln for ln in lines) == 1, "neither: one line about it")
    check(not (tmp / "clip-no-processor-pkg" / "model.toml").exists(), "neither: no manifest written")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="tessera-pp-test-") as t:
        tmp = Path(t)
        clip_src = clip_case(tmp)
        blip2_case(tmp)
        neither_case(tmp, clip_src)
    print(f"test_processor_config: {'all checks passed' if not failures else f'{failures} check(s) FAILED'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
