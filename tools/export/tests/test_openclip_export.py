#!/usr/bin/env python3
"""``export.py openclip``: checkpoints that do not fit ``--arch`` fail cleanly; the forms that do
fit load; the published prompt sets are what the authors published; tokenizer.json equals
open_clip's tokenizer.

    .venv-export/bin/python tools/export/tests/test_openclip_export.py

Cases (each a small random open_clip model, ViT-S-32 / ViT-S-16 / RN50-sized checks on the meta
device only, so nothing big is allocated):

* a ViT-S-32 state_dict exported with ``--arch ViT-B-32``: exit status 1, one stderr line naming
  the file, the arch, the shape cause and the arch it does fit (``is it ViT-S-32...``), and the
  output folder is not created;
* a state_dict with a tensor removed and one added: the line counts both;
* a file that is no checkpoint: one line naming it;
* a training-checkpoint dict (``{"epoch": .., "state_dict": {"module.<key>": ..}}``, the SkyCLIP
  form) and a ``.safetensors`` file of the tiny config export (``--skip-verify``) and the
  manifest records the arch;
* ``--templates remoteclip`` fails with one line (no published RemoteCLIP set was found);
* the GeoRSCLIP set: 105 templates, first/last/boundary entries as published in om-ai-lab/RS5M
  inference/classname_and_prompt/RSAID.py; the SkyCLIP set as in wangzhecheng/SkyScript
  prompt_templates.py;
* tokenizer.json (as tessera uses it: no padding, cut keeping eos last, pad 0) against
  ``open_clip.get_tokenizer("ViT-B-32")`` on texts with odd spacing, case, punctuation, curly
  quotes, HTML entities, full-width forms, ligatures, long text.

Needs torch + open_clip (the exporter's venv); CI does not run it. Exit status 0 when every
check passes.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]  # tools/export
EXPORT = HERE / "export.py"
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

import openclip_export as E  # noqa: E402

FAILURES: list[str] = []


def check(cond: bool, what: str) -> None:
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        FAILURES.append(what)


def export(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(EXPORT), "openclip", *args], capture_output=True, text=True,
                          timeout=900)


def one_line_failure(r: subprocess.CompletedProcess, needles: list[str], what: str) -> None:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    check(r.returncode != 0, f"{what}: non-zero exit ({r.returncode})")
    check(len(lines) == 1, f"{what}: one stderr line (got {len(lines)}: {lines[:3]})")
    text = lines[-1] if lines else ""
    for n in needles:
        check(n in text, f"{what}: message names {n!r} ({text})")
    check("Traceback" not in r.stderr, f"{what}: no traceback")


def random_state_dict(arch: str) -> dict:
    oc = E._quiet_open_clip()
    torch.manual_seed(0)
    return oc.create_model(arch, device="cpu").state_dict()


def main() -> None:
    oc = E._quiet_open_clip()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)

        # --- wrong --arch --------------------------------------------------------------------
        small = random_state_dict("ViT-S-32")
        ck = tmp / "vit-s-32.pt"
        torch.save(small, ck)
        out = tmp / "wrong-arch"
        r = export("--arch", "ViT-B-32", "--from", str(ck), "--out", str(out))
        one_line_failure(r, [str(ck), "--arch ViT-B-32", "other shapes", "is it ViT-S-32"], "wrong --arch")
        check(not out.exists(), "wrong --arch: nothing written")

        # --- missing and unexpected tensors ----------------------------------------------------
        broken = dict(small)
        broken.pop("visual.proj")
        broken["visual.extra"] = torch.zeros(1)
        ck2 = tmp / "broken.pt"
        torch.save(broken, ck2)
        out2 = tmp / "broken-out"
        r = export("--arch", "ViT-S-32", "--from", str(ck2), "--out", str(out2))
        one_line_failure(r, [str(ck2), "1 tensors missing (visual.proj)", "1 unexpected tensors (visual.extra)",
                             "fits no built-in"], "missing/unexpected tensors")
        check(not out2.exists(), "missing/unexpected tensors: nothing written")

        # --- not a checkpoint ----------------------------------------------------------------------
        junk = tmp / "junk.pt"
        junk.write_bytes(b"this is not a checkpoint")
        r = export("--arch", "ViT-B-32", "--from", str(junk), "--out", str(tmp / "junk-out"))
        one_line_failure(r, [str(junk), "not a readable tensor checkpoint"], "not a checkpoint")
        check(not (tmp / "junk-out").exists(), "not a checkpoint: nothing written")

        # --- RemoteCLIP has no verified template set -------------------------------------------
        r = export("--arch", "ViT-S-32", "--from", str(ck), "--templates", "remoteclip", "--out", str(tmp / "rc"))
        one_line_failure(r, ["--templates remoteclip", "could be verified"], "--templates remoteclip")

        # --- the fit check on other forms (meta device, no export) ---------------------------
        for arch in ("ViT-S-16", "RN50"):
            sd = {k: torch.empty(v.shape) for k, v in E._expected(oc, arch).state_dict().items()}
            fits = E.fit_problems(E._expected(oc, arch), E._comparable(oc, E._expected(oc, arch), sd))
            check(fits == ([], [], []), f"{arch}: its own tensors fit")
            wrong = E.fit_problems(E._expected(oc, "ViT-B-32"), sd)
            check(wrong != ([], [], []), f"{arch}: does not fit ViT-B-32")

        # --- checkpoint dict with module. prefixes, and safetensors, export --------------------
        tiny = random_state_dict(E.TINY_ARCH)
        ckd = tmp / "epoch_20.pt"
        torch.save({"epoch": 20, "name": "run", "state_dict": {f"module.{k}": v for k, v in tiny.items()}}, ckd)
        out3 = tmp / "from-dict"
        r = export("--arch", E.TINY_ARCH, "--from", str(ckd), "--out", str(out3), "--templates", "georsclip")
        check(r.returncode == 0, f"training-checkpoint dict exports ({r.stderr.strip().splitlines()[-1:]})")
        if r.returncode == 0:
            m = tomllib.loads((out3 / "model.toml").read_text())
            check(m["family"] == "openclip" and m["architecture"] == E.TINY_ARCH, "manifest family/architecture")
            check("attention_mask" not in m["text"], "manifest: no [text] attention_mask")
            check(m["prompts"]["templates"] == E.GEORSCLIP_TEMPLATES, "manifest: GeoRSCLIP templates")
            check(m["tokenizer"]["pad_token_id"] == 0, "manifest: pad 0")
        from safetensors.torch import save_file
        cks = tmp / "tiny.safetensors"
        save_file({k: v.contiguous() for k, v in tiny.items()}, str(cks))
        r = export("--arch", E.TINY_ARCH, "--from", str(cks), "--out", str(tmp / "from-st"), "--skip-verify")
        check(r.returncode == 0, f"safetensors exports ({r.stderr.strip().splitlines()[-1:]})")

        # --- tokenizer.json == open_clip's tokenizer ------------------------------------------
        tj = tmp / "tokenizer.json"
        E.build_tokenizer_json(tj, 77, None)
        tok = oc.get_tokenizer("ViT-B-32")
        texts = E.REF_TOKENIZER_TEXTS + [
            "A  Busy AIRPORT with many airplanes.", "Satellite view of Hohai University.",
            "\u201cquoted\u201d \u2018single\u2019 \u201ehigh\u201f", "&amp;lt;b&amp;gt; bold", "&nbsp;&apos;x&apos;",
            "\ufb03 \ufb04 \u0132sselmeer", "\uff21\uff22\uff23\u3000\uff44\uff45\uff46", "a\x07b\x7fc",
            "x" * 300, " ".join(["word"] * 100), "12345 67.89 1,000", "\u00c5ngstr\u00f6m \u00d1and\u00fa",
        ] + [t.format("residential buildings") for t in E.GEORSCLIP_TEMPLATES]
        want, _ = E.open_clip_tokenize(tok, texts)
        got = E.tessera_tokenize(tj, texts, 77)
        bad = [texts[i] for i in range(len(texts)) if (want[i] != got[i]).any()]
        check(not bad, f"tokenizer.json == open_clip tokenizer on {len(texts)} texts (differ: {bad[:3]})")

    # --- published prompt sets --------------------------------------------------------------
    g = E.GEORSCLIP_TEMPLATES
    check(len(g) == 105 and len(set(g)) == 105, f"GeoRSCLIP: 105 distinct templates ({len(g)})")
    check(g[0] == "a remote sensing image of many {}." and g[4] == "a remote sensing image of a hard to see {}."
          and g[5] == "a low resolution remote sensing image of the {}." and g[34] == "a remote sensing image of a cool {}."
          and g[35] == "an aerial image of many {}." and g[40] == "a low resolution aerial image of the {}."
          and g[70] == "a satellite image of many {}." and g[104] == "a satellite image of a cool {}.",
          "GeoRSCLIP: entries as published (RSAID.py)")
    check(E.SKYCLIP_TEMPLATES == ["a satellite photo of {}.", "a satellite image of {}"], "SkyCLIP set as published")

    if FAILURES:
        print(f"{len(FAILURES)} check(s) failed")
        sys.exit(1)
    print("all checks passed")


if __name__ == "__main__":
    main()
