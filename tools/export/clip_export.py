"""The ``clip`` family: CLIP checkpoints -> tessera model packages (``export.py clip``, ``scan-seeds``).

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
    # holds the tokenizer files and the image processor settings)
    python tools/export/export.py clip --from openai/clip-vit-base-patch32 \
        --out models/clip-vit-b32

    # a seeded, randomly initialised CLIP of the real architecture (test fixture)
    python tools/export/export.py clip --tiny --out sample_data/models/clip-tiny

    # a ViT-B/32-shaped random model, for benchmarks only (no reference/)
    python tools/export/export.py clip --tiny --shape vit-b32 --out /tmp/clip-b32

The tiny models use the real CLIP BPE vocabulary (``bpe_simple_vocab_16e6.txt.gz``
as shipped by OpenAI/open_clip), found by ``common.find_bpe_vocab``.

Everything that is exported is also checked: the ONNX graphs are run with ONNX
Runtime (when installed) on several batch sizes and compared with PyTorch.
"""

from __future__ import annotations

import shutil
import sys
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

import common as C
from common import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

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


def _batch_axes(*names: str) -> dict:
    """Axis 0 of every named input/output is the dynamic batch axis."""
    return {name: {0: "batch"} for name in names}


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


def verify_onnx_against_torch(out: Path, image_enc: ImageEncoder, text_enc: TextEncoder, tok,
                              size: int, context_length: int, tol: float) -> dict:
    """Run both graphs in ONNX Runtime on batches of 1 and 3 and compare with PyTorch."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        print("export: onnxruntime not installed, skipping ONNX/PyTorch parity check", file=sys.stderr)
        return {}
    img_sess = C.ort_session(out / "image_encoder.onnx")
    txt_sess = C.ort_session(out / "text_encoder.onnx")
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


def write_manifest(path: Path, *, name: str, trained: bool, source: str, size: int, mean, std,
                   context_length: int, pad_id: int, bos_id: int, eos_id: int, logit_scale: float,
                   has_attention_mask: bool = True) -> None:
    """Write model.toml (schema: tools/export/README.md)."""
    C.write_toml(path, [
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
        C.preprocess_section(size, mean, std),
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
    ])


# --------------------------------------------------------------------------------------
# Reference fixtures (tiny models)
# --------------------------------------------------------------------------------------


def _l2n(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def compute_reference(image_enc: ImageEncoder, text_enc: TextEncoder, tok, size: int, mean, std,
                      context_length: int, logit_scale: float) -> tuple[dict, np.ndarray, np.ndarray]:
    """Everything in reference.json, computed with PyTorch (float64 for the scoring maths)."""
    names, images_u8 = C.make_reference_images(size)
    pixels = C.preprocess_u8(images_u8, mean, std)
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
        **C.images_block(names, size, n),
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


def load_checkpoint(src: str):
    """(CLIPModel, tokenizer, size, mean, std) of a hub id or local save_pretrained folder."""
    pp = C.image_processor_config(src)  # first: SystemExit when the checkpoint has none
    model = CLIPModel.from_pretrained(src, attn_implementation="eager").eval()
    tok = C.clip_tokenizer_class().from_pretrained(src)
    image_size = model.config.vision_config.image_size
    size = C.square_size(pp, image_size)
    mean, std = pp["image_mean"], pp["image_std"]
    if size != image_size:
        raise ValueError(f"preprocessor crop size {size} != vision_config.image_size {image_size}")
    return model, tok, size, mean, std


# --------------------------------------------------------------------------------------
# The `clip` subcommand
# --------------------------------------------------------------------------------------


def export_clip(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tv = transformers.__version__

    if args.tiny:
        seed = DEFAULT_TINY_SEED if args.seed is None else args.seed
        clip = build_random_clip(args.shape, seed)
        context_length = clip.config.text_config.max_position_embeddings
        tok = C.build_real_vocab_tokenizer(C.find_bpe_vocab(args.bpe_vocab), context_length)
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
    C.export_onnx(image_enc, (dummy_px,), out / "image_encoder.onnx", ["pixel_values"], ["image_embeds"],
                  _batch_axes("pixel_values", "image_embeds"), args.opset)
    print(f"export: writing {out}/text_encoder.onnx (opset {args.opset})", file=sys.stderr)
    C.export_onnx(text_enc, (torch.from_numpy(dummy_ids), torch.from_numpy(dummy_mask)),
                  out / "text_encoder.onnx", ["input_ids", "attention_mask"], ["text_embeds"],
                  _batch_axes("input_ids", "attention_mask", "text_embeds"), args.opset)
    check_padding_invariance(text_enc, tok, context_length)
    if args.optimize:
        vc = clip.config.vision_config
        _optimize_image_encoder(out / "image_encoder.onnx", vc.num_attention_heads, vc.hidden_size)
    if args.fp16:
        C.to_fp16(out / "image_encoder.onnx")
        C.to_fp16(out / "text_encoder.onnx")

    # --- tokenizer + manifest -----------------------------------------------------------------
    C.save_tokenizer_json(tok, out / "tokenizer.json", context_length)
    write_manifest(
        out / "model.toml", name=name, trained=trained, source=source + (", fp16" if args.fp16 else ""),
        size=size, mean=mean, std=std, context_length=context_length, pad_id=tok.pad_token_id,
        bos_id=tok.bos_token_id, eos_id=tok.eos_token_id, logit_scale=logit_scale,
    )

    # --- parity checks and references ---------------------------------------------------------
    if not args.skip_verify:
        verify_onnx_against_torch(out, image_enc, text_enc, tok, size, context_length,
                                  tol=C.FP16_TOLERANCE if args.fp16 else args.tolerance)

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
        C.write_reference(out, ref, C.image_bins(images_u8, pixels))
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

    C.report_done(out)


def scan_seeds(args) -> None:
    """Helper for choosing DEFAULT_TINY_SEED: print separation of the reference images per seed."""
    context_length = 77
    tok = C.build_real_vocab_tokenizer(C.find_bpe_vocab(args.bpe_vocab), context_length)
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
# CLI (export.py maps "clip" and "scan-seeds" here)
# --------------------------------------------------------------------------------------


def add_parser(sub, command: str) -> None:
    """Add the ``clip`` or ``scan-seeds`` subcommand to ``sub`` (export.py's subparsers)."""
    if command == "scan-seeds":
        s = sub.add_parser("scan-seeds", help="print how well each --tiny seed separates the reference images")
        s.add_argument("--seeds", type=int, default=20, help="scan seeds 0..N-1 (default 20)")
        C.add_bpe_vocab_arg(s, help=f"path to {C.BPE_FILENAME}")
        s.set_defaults(func=scan_seeds)
        return
    assert command == "clip", command
    c = sub.add_parser(
        "clip",
        help="export a CLIP checkpoint (or a random tiny CLIP) as a model package",
        description="Export a CLIP model: image encoder = CLIPVisionModelWithProjection "
                    "(-> image_embeds), text encoder = CLIPTextModelWithProjection (-> text_embeds), "
                    "both with a dynamic batch axis.",
    )
    C.add_source_args(
        c,
        from_help="Hugging Face hub id (e.g. openai/clip-vit-base-patch32) or a local folder "
                  "written by save_pretrained, with tokenizer files and the image processor settings "
                  "(preprocessor_config.json, or transformers 5's processor_config.json)",
        tiny_help="build a seeded, randomly initialised CLIPModel of the real architecture "
                  "instead (test fixture / benchmark model, trained = false)",
    )
    C.add_out_arg(c, help="output package directory (created)")
    C.add_opset_arg(c, help=f"ONNX opset version (default {C.DEFAULT_OPSET})")
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
    C.add_name_arg(c, help="manifest 'name' (default: derived from the source)")
    C.add_bpe_vocab_arg(c, help=f"--tiny only: path to {C.BPE_FILENAME} (default: found or fetched automatically)")
    C.add_no_reference_arg(c, help="--tiny only: do not write reference/")
    C.add_skip_verify_arg(c, help="skip the ONNX Runtime vs PyTorch parity check")
    C.add_tolerance_arg(c, 1e-5, "max abs diff allowed between ONNX Runtime and PyTorch (default 1e-5)")
    c.set_defaults(func=export_clip)
