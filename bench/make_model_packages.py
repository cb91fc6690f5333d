#!/usr/bin/env python3
"""Random, real-shape model packages for the `models` benchmark group (bench/run.sh models).

    .venv-export/bin/python bench/make_model_packages.py siglip-b16 --out DIR
    .venv-export/bin/python bench/make_model_packages.py openclip-vit-b32 --out DIR
    .venv-export/bin/python bench/make_model_packages.py fp16 --from PKG --out DIR

Benchmark packages only: random weights (seeded), no reference/, never committed. What
`tessera bench-model` times is the image graph, so that is the part built at the real size:

- ``siglip-b16``: ``SiglipVisionModel`` of SigLIP ViT-B/16 shape (224 px, patch 16, width 768,
  12 layers, 12 heads, MLP 3072, attention-pooling head) -> image_embeds [B,768] (the
  pooler output, as ``SiglipModel.get_image_features``). The text graph is a one-layer
  ``SiglipTextModel`` (width 64, ``projection_size`` 768, no attention mask, as SigLIP is
  trained) on the CLIP BPE vocabulary of sample_data/models/clip-tiny (BPE suits the siglip
  family); manifest family "siglip" with logit_scale 10, logit_bias -10 (SigLIP's init).
- ``openclip-vit-b32``: ``open_clip.create_model("ViT-B-32")`` with random init (no
  pretrained weights, nothing downloaded): image graph = ``encode_image`` -> [B,512], text
  graph = ``encode_text`` (the real 12-layer text tower, input ids only) -> [B,512]; the
  tokenizer is clip-tiny's tokenizer.json (open_clip's tokenizer: the same CLIP BPE, padded
  with 0); family "openclip", logit_scale exp(log(1/0.07)).
- ``fp16``: a copy of a package whose image graph is converted to float16 with float32
  inputs/outputs (``common.to_fp16``: onnxruntime.transformers.float16, keep_io_types=True); the
  text graph is linked unchanged (bench-model does not run it). On a CPU, ONNX Runtime inserts
  casts around the operators it has no float16 kernel for, so fp16 is expected to be slower
  there: the benchmark measures how much.

Every graph is checked against PyTorch with ONNX Runtime on a batch of 2 (fp32: max relative
difference 1e-4; fp16 image graph against the fp32 graph: 5e-2) before the package is
written; the folder is built under DIR.partial and renamed at the end.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tomllib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools" / "export"))
import common as C  # noqa: E402  (tools/export/common.py)

TOKENIZER = ROOT / "sample_data" / "models" / "clip-tiny" / "tokenizer.json"
CONTEXT = 77  # clip-tiny's tokenizer.json pads/truncates to 77
BOS, EOS = 49406, 49407
SEED = 0


def say(msg: str) -> None:
    print(f"make_model_packages: {msg}", file=sys.stderr)


def manifest(path: Path, *, family: str, name: str, architecture: str, source: str, size: int,
             mean, std, dim: int, pad_id: int, scores: list) -> None:
    C.write_toml(path, [
        (None, [
            ("family", family, ""),
            ("name", name, ""),
            ("architecture", architecture, ""),
            ("trained", False, ""),
            ("source", source, ""),
        ]),
        ("image", [
            ("onnx", "image_encoder.onnx", ""),
            ("input", "pixel_values", "float32 [B,3,S,S], already normalised"),
            ("output", "image_embeds", f"float32 [B,{dim}], not L2-normalised"),
        ]),
        ("text", [
            ("onnx", "text_encoder.onnx", ""),
            ("input_ids", "input_ids", "int64 [B,L]; the graph takes no attention mask"),
            ("output", "text_embeds", f"float32 [B,{dim}], not L2-normalised"),
        ]),
        C.preprocess_section(size, mean, std),
        ("tokenizer", [
            ("file", "tokenizer.json", "CLIP BPE (sample_data/models/clip-tiny)"),
            ("context_length", CONTEXT, "pad/truncate to this length"),
            ("pad_token_id", pad_id, ""),
            ("bos_token_id", BOS, ""),
            ("eos_token_id", EOS, ""),
        ]),
        ("scores", scores),
    ])


def token_batch(pad_id: int) -> np.ndarray:
    """Two tokenised prompts, padded to CONTEXT (for the parity check of the text graph)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(TOKENIZER))
    tok.no_padding()
    tok.no_truncation()
    rows = []
    for text in ["a satellite photo of a forest.", "an aerial image of a river delta."]:
        ids = tok.encode(text).ids[:CONTEXT]
        rows.append(ids + [pad_id] * (CONTEXT - len(ids)))
    return np.asarray(rows, np.int64)


def ort_session(path: Path):
    """A quiet CPU session at tessera's optimisation level (ORT_ENABLE_LAYOUT, the `ort` crate's
    Level3). Not common.ort_session: at ORT_ENABLE_ALL, ONNX Runtime 1.31.1 crashes (SIGSEGV, in
    its NchwcTransformer) loading the fp16 OpenCLIP image graph."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_LAYOUT
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def check(path: Path, feeds: dict, want: np.ndarray, tol: float, what: str) -> float:
    got = ort_session(path).run(None, feeds)[0]
    if got.shape != want.shape:
        raise SystemExit(f"{path}: output shape {got.shape}, PyTorch gives {want.shape}")
    d = C.rel_diff(got, want)
    say(f"{what}: ONNX Runtime vs reference, max relative difference {d:.2e} (limit {tol:g})")
    if not d <= tol:
        raise SystemExit(f"{path}: {what} differs from the reference by {d:.2e} (> {tol:g})")
    return d


def export_pair(out: Path, image_module, text_module, size: int, pad_id: int, opset: int) -> None:
    """Both graphs (dynamic batch axis), each checked against its PyTorch module."""
    import torch

    g = torch.Generator().manual_seed(1)
    px = torch.randn(2, 3, size, size, generator=g)
    ids = torch.from_numpy(token_batch(pad_id))
    say(f"writing {out}/image_encoder.onnx")
    C.export_onnx(image_module, (px,), out / "image_encoder.onnx", ["pixel_values"], ["image_embeds"],
                  {"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}}, opset)
    say(f"writing {out}/text_encoder.onnx")
    C.export_onnx(text_module, (ids,), out / "text_encoder.onnx", ["input_ids"], ["text_embeds"],
                  {"input_ids": {0: "batch"}, "text_embeds": {0: "batch"}}, opset)
    with torch.no_grad():
        want_img = image_module(px).numpy()
        want_txt = text_module(ids).numpy()
    check(out / "image_encoder.onnx", {"pixel_values": px.numpy()}, want_img, 1e-4, "image graph")
    check(out / "text_encoder.onnx", {"input_ids": ids.numpy()}, want_txt, 1e-4, "text graph")
    shutil.copyfile(TOKENIZER, out / "tokenizer.json")


# --- SigLIP B/16 ---------------------------------------------------------------------------------


def build_siglip(out: Path, opset: int) -> None:
    import torch
    import transformers
    from transformers import SiglipTextConfig, SiglipTextModel, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(SEED)
    vcfg = SiglipVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                              num_attention_heads=12, image_size=224, patch_size=16)
    tcfg = SiglipTextConfig(vocab_size=49408, hidden_size=64, intermediate_size=256, num_hidden_layers=1,
                            num_attention_heads=2, max_position_embeddings=CONTEXT, projection_size=768,
                            pad_token_id=EOS, bos_token_id=BOS, eos_token_id=EOS)
    for cfg in (vcfg, tcfg):
        cfg._attn_implementation = "eager"
    vision, text = SiglipVisionModel(vcfg).eval(), SiglipTextModel(tcfg).eval()

    class Image(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = vision

        def forward(self, pixel_values):
            return self.m(pixel_values=pixel_values).pooler_output

    class Text(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = text

        def forward(self, input_ids):
            return self.m(input_ids=input_ids).pooler_output

    export_pair(out, Image().eval(), Text().eval(), 224, EOS, opset)
    manifest(out / "model.toml", family="siglip", name="siglip-b16-random", architecture="siglip",
             source=f"benchmark only: random init, seed {SEED}, SiglipVisionModel ViT-B/16 shape "
                    f"(224 px, patch 16, width 768, 12 layers), text tower 1 layer width 64; "
                    f"transformers {transformers.__version__}, torch {torch.__version__}",
             size=224, mean=[0.5] * 3, std=[0.5] * 3, dim=768, pad_id=EOS,
             scores=[("logit_scale", 10.0, "SigLIP's init: exp(log 10)"),
                     ("logit_bias", -10.0, "SigLIP's init")])


# --- OpenCLIP ViT-B/32 ----------------------------------------------------------------------------


def build_openclip(out: Path, opset: int) -> None:
    import open_clip
    import torch

    torch.manual_seed(SEED)
    model = open_clip.create_model("ViT-B-32", pretrained=None).eval()
    # nn.MultiheadAttention's inference fast path (aten::_native_multi_head_attention) has no
    # ONNX export: trace the plain attention ops.
    torch.backends.mha.set_fastpath_enabled(False)

    class Image(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, pixel_values):
            return self.m.encode_image(pixel_values)

    class Text(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, input_ids):
            return self.m.encode_text(input_ids)

    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else int(size)
    dim = int(model.text_projection.shape[1])
    export_pair(out, Image().eval(), Text().eval(), size, 0, opset)
    manifest(out / "model.toml", family="openclip", name="openclip-vit-b32-random", architecture="ViT-B-32",
             source=f"benchmark only: random init, seed {SEED}, open_clip.create_model('ViT-B-32'); "
                    f"open_clip {open_clip.__version__}, torch {torch.__version__}",
             size=size, mean=C.OPENAI_CLIP_MEAN, std=C.OPENAI_CLIP_STD, dim=dim, pad_id=0,
             scores=[("logit_scale", float(model.logit_scale.detach().exp()), "exp(logit_scale) of the model")])


# --- fp16 copy --------------------------------------------------------------------------------------


def build_fp16(src: Path, out: Path) -> None:
    with open(src / "model.toml", "rb") as f:
        m = tomllib.load(f)
    image = m["image"]["onnx"]
    for name in os.listdir(src):
        p = src / name
        if not p.is_file() or name in (image, "model.toml"):
            continue
        try:
            os.link(p, out / name)  # the text graph and tokenizer, unchanged (no copy of ~250 MB)
        except OSError:
            shutil.copyfile(p, out / name)
    shutil.copyfile(src / image, out / image)
    say(f"converting {out / image} to float16 (float32 inputs/outputs)")
    C.to_fp16(out / image)
    size = int(m["preprocess"]["size"])
    px = np.random.default_rng(1).standard_normal((2, 3, size, size)).astype(np.float32)
    feeds = {m["image"]["input"]: px}
    want = ort_session(src / image).run(None, feeds)[0]
    check(out / image, feeds, want, 5e-2, "fp16 image graph vs the fp32 graph")
    text = (src / "model.toml").read_text()
    old_name = f'name = "{m["name"]}"'
    if old_name not in text:
        raise SystemExit(f"{src / 'model.toml'}: cannot find {old_name}")
    text = text.replace(old_name, f'name = "{m["name"]}-fp16"', 1)
    text = text.replace(f'source = "{m["source"]}"',
                        f'source = "{m["source"]}; image graph float16 (keep_io_types)"', 1)
    (out / "model.toml").write_text(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["siglip-b16", "openclip-vit-b32", "fp16"])
    p.add_argument("--out", required=True, type=Path, help="package folder to write (replaced)")
    p.add_argument("--from", dest="src", type=Path, help="fp16: the float32 package to convert")
    p.add_argument("--opset", type=int, default=C.DEFAULT_OPSET)
    a = p.parse_args()
    if a.what == "fp16" and a.src is None:
        p.error("fp16 needs --from PKG")
    partial = a.out.with_name(a.out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    if a.what == "fp16":
        build_fp16(a.src, partial)
    else:
        import torch

        torch.set_grad_enabled(False)
        (build_siglip if a.what == "siglip-b16" else build_openclip)(partial, a.opset)
    shutil.rmtree(a.out, ignore_errors=True)
    partial.rename(a.out)
    C.report_done(a.out)


if __name__ == "__main__":
    main()
