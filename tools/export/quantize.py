#!/usr/bin/env python3
"""Quantised variants of a tessera model package (int8 dynamic, int8 static, int4 weight-only).

    python tools/export/quantize.py PACKAGE --out NEW [--int8 dynamic|static] [--calibrate SCENE]
    python tools/export/quantize.py PACKAGE --out NEW --int4
    python tools/export/export.py COMMAND ... --int8 [dynamic|static] [--calibrate SCENE] | --int4

No torch: onnx, onnxruntime (``onnxruntime.quantization``), numpy, tokenizers and, for
``--calibrate``, rasterio.  The new package is the old one with its graphs replaced:

* ``--int8 dynamic`` (the default): ``quantize_dynamic`` on every graph, MatMul and Gemm weights
  as int8 (per tensor), activations quantised at run time per batch (``int8-dynamic``);
* ``--int8 static`` (needs ``--calibrate SCENE``): the image graph (the one tessera feeds tiles:
  ``IMAGE_GRAPH``, its other inputs fed as tessera builds them)
  as a QDQ graph (``quantize_static``: int8 weights per channel, uint8 activations whose scales
  are calibrated (MinMax) on tiles read from SCENE and preprocessed as the manifest says); the
  other graphs, whose inputs are not tiles, get the dynamic int8 of ``--int8 dynamic``
  (``int8-static``);
* ``--int4``: ONNX Runtime's 4-bit weight-only ``MatMulNBits`` (``MatMulNBitsQuantizer``, block
  size 32, symmetric, accuracy level 4: int8 activations inside the kernel) on the
  language-model graphs of a captioning package (the decoder step graph, and the cross
  keys/values graph of a cross-attention decoder; the token-embedding Gather stays float32)
  (``int4``).

The manifest gets ``precision = "..."`` (read by tessera: ``models check`` prints it) and
``quantization.json`` records, per graph, its precision, the method and both sizes, and the
agreement of the variant with the fp32 package, measured here with ONNX Runtime at batch 1 on
the package's reference images (``reference/images_u8.bin``, else eight seeded smooth-noise images) plus the calibration tiles:

* dual encoders (clip, openclip, siglip, flava, chinese-clip): max abs diff of the image and
  text embeddings, of the label scores (the package's softmax / sigmoid over the reference
  labels and templates), top-1 agreement (also over the images whose fp32 top-2 margin is above
  0.01) and the per-image scores of both (what the Rust tests compare tessera with);
* image-text decoders: first-step logits max abs diff, first-token and whole-caption agreement
  of greedy decoding (the manifest's generation settings, the empty prompt), the fp32 top-2
  logit margin of each first token (how near a tie it was) and the tokens of both;
* cross-attention decoders and the image-text decoders with a prefix mask, M-RoPE positions or
  a Q-Former prompt: the same tokens measures, with their own runners (``CrossDecoder``,
  ``PrefixDecoder``);
* segmenters: pixel agreement of the class maps, class IoU, probabilities max abs diff;
* detectors: boxes matched by class and IoU >= 0.5 (at the manifest's confidence and at the
  fp32 median score);
* promptable segmenters: mask IoU and IoU scores of six box prompts per tile.

tools/export/README.md, "Quantised variants", lists every family's runner.  A graph without
weights (nothing to quantise) and ``--int4`` without a language-model graph are refused with one
line.  The package is written under NEW.partial and renamed at the end; the
fp32 package's ``reference/`` (PyTorch outputs the variant does not reproduce) is not copied.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import sys
import tomllib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

DUAL_ENCODERS = ("clip", "openclip", "siglip", "flava", "chinese-clip")
DECODERS = ("image-text-decoder",)
#: Families with a language-model graph (--int4) and their sections of it.
LANGUAGE_MODEL_GRAPHS = {"image-text-decoder": ("decoder",), "cross-attention-decoder": ("cross", "decoder")}
FAMILIES = DUAL_ENCODERS + DECODERS + ("cross-attention-decoder", "segmenter", "detector", "promptable-segmenter")
#: The graph tessera feeds tiles, per family (--int8 static calibrates it).
IMAGE_GRAPH = {"cross-attention-decoder": "encoder", "segmenter": "model", "detector": "model",
               "promptable-segmenter": "image_encoder"}
PRECISIONS = ("int8-dynamic", "int8-static", "int4")
#: Labels and templates of the agreement check when the package has no reference/.
DEFAULT_LABELS = ["forest", "river", "city", "desert", "farmland"]
DEFAULT_TEMPLATES = ["a satellite photo of {}.", "an aerial image of {}."]
MARGIN = 0.01
INT4_BLOCK = 32


def say(msg: str) -> None:
    print(f"quantize: {msg}", file=sys.stderr)


class QuantizeError(SystemExit):
    """One clear line on stderr, exit status 1."""

    def __init__(self, msg: str):
        super().__init__(f"quantize: {msg}")


# --------------------------------------------------------------------------------------
# Arguments, shared with export.py (common.add_quantize_args)
# --------------------------------------------------------------------------------------


def add_args(p: argparse.ArgumentParser, *, exporter: bool) -> None:
    """``--int8 [dynamic|static]``, ``--int4``, ``--calibrate SCENE``, ``--calibration-tiles N``."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--int8", nargs="?", const="dynamic", choices=("dynamic", "static"), default=None,
                   help="int8 variant: 'dynamic' (MatMul/Gemm weights int8, activations at run time; "
                        "the default when the flag has no value) or 'static' (QDQ image graph "
                        "calibrated on --calibrate SCENE)"
                        + (" (the package is exported in fp32, then converted)" if exporter else ""))
    g.add_argument("--int4", action="store_true",
                   help="4-bit weight-only MatMulNBits in the language-model graphs (captioning "
                        "packages)")
    p.add_argument("--calibrate", metavar="SCENE", default=None,
                   help="GDAL-readable scene whose tiles calibrate --int8 static (alone it implies "
                        "--int8 static); its tiles are also added to the agreement check")
    p.add_argument("--calibration-tiles", type=int, default=32, metavar="N",
                   help="tiles read from --calibrate SCENE, spread over the scene (default 32)")


def precision_of(args) -> str | None:
    """The precision the flags ask for, or None (fp32); a bad combination is an error."""
    int8 = getattr(args, "int8", None)
    scene = getattr(args, "calibrate", None)
    if getattr(args, "int4", False):
        if scene:
            raise QuantizeError("--calibrate calibrates --int8 static; --int4 is weight-only")
        return "int4"
    if int8 is None and scene:
        int8 = "static"
    if int8 == "static" and not scene:
        raise QuantizeError("--int8 static needs --calibrate SCENE (the tiles that set the activation scales)")
    if getattr(args, "calibration_tiles", 1) < 1:
        raise QuantizeError("--calibration-tiles must be at least 1")
    return None if int8 is None else f"int8-{int8}"


# --------------------------------------------------------------------------------------
# Package reading
# --------------------------------------------------------------------------------------


class Package:
    def __init__(self, root: Path, *, variant: bool = False):
        self.root = root
        mpath = root / "model.toml"
        try:
            self.text = mpath.read_text()
            self.m = tomllib.loads(self.text)
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise QuantizeError(f"{mpath}: {e}") from None
        self.family = self.m.get("family")
        if not variant and self.m.get("precision", "fp32") != "fp32":
            raise QuantizeError(f"{mpath}: precision is already {self.m['precision']!r}; quantise the fp32 package")
        if self.family not in FAMILIES:
            raise QuantizeError(
                f"{mpath}: family {self.family!r}: quantize.py knows {', '.join(FAMILIES)}")
        fmt = str(self.m.get("detection", {}).get("format", "")).strip().lower()
        if self.family == "detector" and fmt not in OPEN_VOCAB_BOXES + GRID_BOXES:
            raise QuantizeError(f"{mpath}: detection format {fmt!r}: the agreement check decodes "
                                f"{', '.join(OPEN_VOCAB_BOXES + GRID_BOXES)}")
        for sec, g in self.graphs().items():
            if not (root / g).is_file():
                raise QuantizeError(f"{mpath}: [{sec}] onnx = {g!r}: no such file")

    def graphs(self) -> dict[str, str]:
        """section -> ONNX file, for the sections that name one."""
        return {k: v["onnx"] for k, v in self.m.items() if isinstance(v, dict) and "onnx" in v}

    def session(self, name: str):
        import onnxruntime as ort

        o = ort.SessionOptions()
        o.log_severity_level = 3
        return ort.InferenceSession(str(self.root / name), o, providers=["CPUExecutionProvider"])

    @property
    def size(self) -> int:
        return int(self.m["preprocess"]["size"])

    def reference(self) -> dict | None:
        p = self.root / "reference" / "reference.json"
        return json.loads(p.read_text()) if p.is_file() else None


def preprocess(pkg: Package, u8_hwc: np.ndarray) -> np.ndarray:
    """[N,S,S,3] uint8 RGB -> what the image graph takes ([N,3,S,S], as tessera feeds it)."""
    pp = pkg.m["preprocess"]
    x = u8_hwc
    if pp.get("channel_order", "rgb") == "bgr":
        x = x[..., ::-1]
    if pkg.m.get("image", {}).get("input_type", "float32") == "uint8":
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    x = (x.astype(np.float32) / np.float32(pp.get("value_range", 255.0)) - np.asarray(pp["mean"], np.float32)) \
        / np.asarray(pp["std"], np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2).astype(np.float32))


def reference_images(pkg: Package) -> tuple[list[str], np.ndarray]:
    """The package's reference images (uint8 HWC), else deterministic noise images."""
    S = pkg.size
    p = pkg.root / "reference" / "images_u8.bin"
    ref = pkg.reference()
    if p.is_file() and ref is not None:
        u8 = np.fromfile(p, np.uint8).reshape(-1, S, S, 3)
        names = [i["name"] if isinstance(i, dict) else str(i) for i in ref.get("images", [])]
        return (names if len(names) == len(u8) else [f"reference_{i}" for i in range(len(u8))]), u8
    tiles = [t for t in (ref or {}).get("tiles", []) if t.get("height") == S and t.get("width") == S
             and isinstance(t.get("image"), dict)]
    if tiles:  # a promptable segmenter's reference tiles of the model's size
        u8 = np.stack([np.fromfile(pkg.root / "reference" / t["image"]["file"], np.uint8).reshape(S, S, 3)
                       for t in tiles])
        return [t["name"] for t in tiles], u8
    # no reference/ (a benchmark or real export): deterministic smooth-noise images
    rng = np.random.default_rng(2024)
    imgs = []
    for _ in range(8):
        coarse = rng.uniform(0, 255, (4, 4, 3))
        up = np.kron(coarse, np.ones((S // 4 + 1, S // 4 + 1, 1)))[:S, :S]
        imgs.append(np.clip(up + rng.normal(0, 12, (S, S, 3)), 0, 255))
    return [f"noise_{i}" for i in range(8)], np.rint(np.stack(imgs)).astype(np.uint8)


def scene_tiles(path: str, size: int, n: int) -> tuple[list[str], np.ndarray]:
    """Up to ``n`` S x S tiles of the first three bands, spread evenly over the scene's tile grid.
    uint8 scenes as they are; other types stretched per band (2-98 percentiles of the tiles read)
    to 0..255, as ``tessera classify --scale percentile`` would."""
    try:
        import rasterio
        from rasterio.windows import Window
    except ImportError:
        raise QuantizeError("--calibrate needs rasterio (pip install -r tools/export/requirements.txt)") from None
    try:
        ds = rasterio.open(path)
    except rasterio.errors.RasterioIOError as e:
        raise QuantizeError(f"{path}: {e}") from None
    with ds:
        if ds.count < 3:
            raise QuantizeError(f"{path}: {ds.count} band(s); calibration reads 3 (RGB)")
        cols, rows = ds.width // size, ds.height // size
        if cols * rows == 0:
            raise QuantizeError(f"{path}: {ds.width} x {ds.height} is smaller than one {size} x {size} tile")
        cells = [(r, c) for r in range(rows) for c in range(cols)]
        pick = np.unique(np.linspace(0, len(cells) - 1, min(n, len(cells))).round().astype(int))
        tiles, names = [], []
        for i in pick:
            r, c = cells[i]
            a = ds.read([1, 2, 3], window=Window(c * size, r * size, size, size))
            tiles.append(a.transpose(1, 2, 0))
            names.append(f"tile_r{r}_c{c}")
        dtype = ds.dtypes[0]
    t = np.stack(tiles)
    if dtype != "uint8":
        t = t.astype(np.float64)
        lo, hi = np.percentile(t, 2, axis=(0, 1, 2)), np.percentile(t, 98, axis=(0, 1, 2))
        t = np.clip(np.rint((t - lo) / np.maximum(hi - lo, 1e-12) * 255), 0, 255)
    return names, t.astype(np.uint8)


# --------------------------------------------------------------------------------------
# Quantisation of one graph
# --------------------------------------------------------------------------------------


def external_files(path: Path) -> set[str]:
    """The external data files a graph's initializers live in (the exporters write
    ``NAME.onnx.data`` for graphs over 2 GB)."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    out = set()
    for t in m.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            out |= {e.value for e in t.external_data if e.key == "location"}
    return out


def quantize_dynamic(src: Path, dst: Path, tables: bool = False) -> str:
    """``tables``: also the Gather of constant tables (the token embeddings of a one-graph
    text-prompted segmenter or detector, most of its bytes), stored as int8 and dequantised."""
    from onnxruntime.quantization import QuantType, quantize_dynamic as qd

    ops = ["MatMul", "Gemm"] + (["Gather"] if tables else [])
    qd(str(src), str(dst), op_types_to_quantize=ops, weight_type=QuantType.QInt8,
       per_channel=False, extra_options={"MatMulConstBOnly": True},
       use_external_data_format=bool(external_files(src)))
    return "onnxruntime quantize_dynamic: MatMul/Gemm with constant weights, int8 weights per tensor, " \
           "uint8 activations quantised at run time" + ("; Gather tables (token embeddings) int8" if tables else "")


class _Reader:
    def __init__(self, feeds: list[dict]):
        self.items = iter(feeds)

    def get_next(self):
        return next(self.items, None)


def quantize_static(src: Path, dst: Path, feeds: list[dict]) -> str:
    import tempfile

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static as qs
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        qs(str(pre), str(dst), _Reader(feeds), quant_format=QuantFormat.QDQ,
           use_external_data_format=bool(external_files(src)),
           op_types_to_quantize=["MatMul", "Gemm", "Conv"], per_channel=True,
           activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
           calibrate_method=CalibrationMethod.MinMax,
           extra_options={"MatMulConstBOnly": True})
    return f"onnxruntime quantize_static: QDQ MatMul/Gemm/Conv, int8 weights per channel, uint8 " \
           f"activations, MinMax calibration on {len(feeds)} tiles"


def quantize_int4(src: Path, dst: Path) -> str:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    model = onnx.load(str(src))
    cfg = DefaultWeightOnlyQuantConfig(block_size=INT4_BLOCK, is_symmetric=True, accuracy_level=4)
    q = MatMulNBitsQuantizer(model, algo_config=cfg)
    q.process()
    if external_files(src):  # the fp32 graph kept its weights outside (over 2 GB): so does this one
        onnx.save_model(q.model.model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=dst.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(q.model.model, str(dst))
    return f"onnxruntime MatMulNBitsQuantizer: MatMul weights 4-bit (block {INT4_BLOCK}, symmetric), " \
           "accuracy level 4 (int8 activations in the kernel)"


def plan(pkg: Package, precision: str) -> dict[str, str]:
    """section -> the precision its graph gets (fp32 = copied unchanged)."""
    out = {}
    lm = LANGUAGE_MODEL_GRAPHS.get(pkg.family, ())
    image = IMAGE_GRAPH.get(pkg.family, "image")
    for sec in pkg.graphs():
        if precision == "int4":
            out[sec] = "int4" if sec in lm else "fp32"
        elif precision == "int8-static":
            out[sec] = "int8-static" if sec == image else "int8-dynamic"
        else:
            out[sec] = "int8-dynamic"
    if precision == "int4" and "int4" not in out.values():
        raise QuantizeError(f"{pkg.root / 'model.toml'}: --int4 quantises the language-model graph of a "
                            f"captioning package; a {pkg.family!r} package has none")
    ops = ("MatMul", "Gemm", "Conv") if precision == "int8-static" else ("MatMul", "Gemm")
    if precision.startswith("int8") and not any(weighted_ops(pkg.root / g, ops) for g in pkg.graphs().values()):
        raise QuantizeError(f"{pkg.root / 'model.toml'}: no graph has a MatMul, Gemm or Conv with constant "
                            "weights: int8 would change nothing (a hand-built or elementwise graph)")
    return out


def weighted_ops(path: Path, ops=("MatMul", "Gemm", "Conv")) -> int:
    """Nodes of ``ops`` whose weight (input 1) is an initializer (what int8 quantises)."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    init = {t.name for t in m.graph.initializer}
    return sum(1 for n in m.graph.node if n.op_type in ops and len(n.input) > 1
               and n.input[1] in init)


def calibration_feeds(pkg: Package, pixels: np.ndarray) -> list[dict]:
    """What tessera feeds the image graph for each calibration tile (batch 1): the tile, and the
    graph's other inputs as tessera builds them (the reference prompts of a prompted segmenter
    or detector, the empty prompt's tokens of an encoder or Q-Former that takes the prompt)."""
    fam, m = pkg.family, pkg.m
    if fam in ("segmenter", "detector"):
        md = m["model"]
        if "prompted" not in m:
            b = fixed_batch(pkg.session(md["onnx"]))
            return [{md["input"]: np.concatenate([p[None], np.zeros((b - 1, *p.shape), np.float32)])}
                    for p in pixels]
        pr = m["prompted"]
        if m.get("detection", {}).get("format") == "grounding-dino":
            ids = grounding_tokens(pkg, package_prompts(pkg))[0]
            mask = np.ones_like(ids)
        else:
            ids, mask = prompt_tokens(pkg, package_prompts(pkg))
        rows = len(ids) if fam == "segmenter" else 1  # CLIPSeg: one row per (tile, prompt)
        feeds = []
        for p in pixels:
            f = {md["input"]: np.repeat(p[None], rows, axis=0), pr["input_ids"]: ids}
            if pr.get("attention_mask"):
                f[pr["attention_mask"]] = mask
            feeds.append(f)
        return feeds
    if fam == "promptable-segmenter":
        return [{m["image_encoder"]["input"]: p[None]} for p in pixels]
    if fam == "cross-attention-decoder":
        c = CrossDecoder(pkg)
        out = []
        for p in pixels:
            e = m["encoder"]
            f = {e["pixel_values"]: p[None]}
            if e.get("input_ids"):
                ids = c.prompt_ids("")
                f[e["input_ids"]] = np.asarray([ids], np.int64)
                if e.get("attention_mask"):
                    f[e["attention_mask"]] = np.ones((1, len(ids)), np.int64)
            if e.get("qformer_input_ids"):
                q = c.qtok.encode(c.text(""), add_special_tokens=True).ids
                f[e["qformer_input_ids"]] = np.asarray([q], np.int64)
                if e.get("qformer_attention_mask"):
                    f[e["qformer_attention_mask"]] = np.ones((1, len(q)), np.int64)
            out.append(f)
        return out
    i = m["image"]
    out = []
    for p in pixels:
        f = {i["input"]: p[None]}
        if i.get("qformer_input_ids"):
            from tokenizers import Tokenizer

            q = Tokenizer.from_file(str(pkg.root / m["qformer_tokenizer"]["file"])).encode("", add_special_tokens=True).ids
            f[i["qformer_input_ids"]] = np.asarray([q], np.int64)
            f[i["qformer_attention_mask"]] = np.ones((1, len(q)), np.int64)
        out.append(f)
    return out


# --------------------------------------------------------------------------------------
# Agreement with the fp32 package
# --------------------------------------------------------------------------------------


def _max_abs(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


def _l2n(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


class DualEncoder:
    """Image/text embeddings and label scores, as tessera computes them (batch 1 per image)."""

    def __init__(self, pkg: Package):
        self.pkg, self.m = pkg, pkg.m
        self.img = pkg.session(self.m["image"]["onnx"])
        self.txt = pkg.session(self.m["text"]["onnx"])

    def image_embeds(self, pixels):
        i = self.m["image"]
        return np.concatenate([self.img.run([i["output"]], {i["input"]: p[None]})[0] for p in pixels])

    def text_embeds(self, ids, mask):
        """In batches of 64 prompts, as tessera runs them: a dynamic int8 graph quantises each
        batch with that batch's range, so the batches must be the same to compare."""
        t = self.m["text"]
        out = []
        for s in range(0, len(ids), 64):
            feeds = {t["input_ids"]: ids[s:s + 64]}
            if t.get("attention_mask"):
                feeds[t["attention_mask"]] = mask[s:s + 64]
            out.append(self.txt.run([t["output"]], feeds)[0])
        return np.concatenate(out)

    def scores(self, img, txt, n_labels, n_templates):
        lab = _l2n(_l2n(txt).reshape(n_labels, n_templates, -1).mean(axis=1))
        cos = _l2n(img) @ lab.T
        s = self.m["scores"]
        z = np.float64(s["logit_scale"]) * cos + np.float64(s.get("logit_bias", 0.0))
        if self.pkg.family == "siglip":
            return 1.0 / (1.0 + np.exp(-z))
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)


def text_inputs(pkg: Package):
    """Labels, templates and token ids: reference.json's (what HF's tokenizer gave), else the
    default labels tokenized with tokenizer.json (CLIP-style padding to context_length)."""
    ref = pkg.reference()
    if ref is not None and "token_ids" in ref:
        ids = np.asarray(ref["token_ids"], np.int64)
        mask = np.asarray(ref.get("attention_mask") or np.ones_like(ids), np.int64)
        return ref["labels"], ref["templates"], ids, mask
    from tokenizers import Tokenizer
    from verify_package import tokenize

    t = pkg.m["tokenizer"]
    templates = pkg.m.get("prompts", {}).get("templates", DEFAULT_TEMPLATES)
    texts = [tp.format(lb) for lb in DEFAULT_LABELS for tp in templates]
    ids, mask = tokenize(Tokenizer.from_file(str(pkg.root / t["file"])), texts, t["context_length"], t["pad_token_id"])
    return DEFAULT_LABELS, templates, ids, mask


def agree_dual(fp32: Package, quant: Package, names, pixels) -> dict:
    labels, templates, ids, mask = text_inputs(fp32)
    a, b = DualEncoder(fp32), DualEncoder(quant)
    ia, ib = a.image_embeds(pixels), b.image_embeds(pixels)
    ta, tb = a.text_embeds(ids, mask), b.text_embeds(ids, mask)
    sa = a.scores(ia, ta, len(labels), len(templates))
    sb = b.scores(ib, tb, len(labels), len(templates))
    top_a, top_b = sa.argmax(1), sb.argmax(1)
    srt = np.sort(sa, axis=1)
    margin = srt[:, -1] - srt[:, -2]
    clear = margin > MARGIN
    return {
        "images": names,
        "labels": labels,
        "templates": templates,
        "image_embeds_max_abs_diff": _max_abs(ia, ib),
        "image_embeds_max_rel_diff": float(np.abs(ia - ib).max() / np.abs(ia).max()),
        "text_embeds_max_abs_diff": _max_abs(ta, tb),
        "scores_max_abs_diff": _max_abs(sa, sb),
        "top1_agreement": float((top_a == top_b).mean()),
        "top1_margin_threshold": MARGIN,
        "tiles_above_margin": int(clear.sum()),
        "top1_agreement_above_margin": float((top_a == top_b)[clear].mean()) if clear.any() else None,
        "fp32_scores": sa.tolist(),
        "scores": sb.tolist(),
    }


def agree_decoder(fp32: Package, quant: Package, names, pixels) -> dict:
    import verify_decoder as V

    a, b = V.Package(fp32.root), V.Package(quant.root)
    gen = dict(max_new_tokens=20, num_beams=1, repetition_penalty=1.0, min_new_tokens=0, no_repeat_ngram_size=0)
    gen.update({k: v for k, v in fp32.m.get("generation", {}).items() if k in gen})
    gen["num_beams"] = 1
    toks_a, toks_b, dl, margins = [], [], 0.0, []
    for p in pixels:
        ids, mask = a.left_pad([a.prompt_ids("")])
        oa, fa = V.greedy(a, a.prompt_embeds(ids, p[None]), ids, mask, gen)
        ob, fb = V.greedy(b, b.prompt_embeds(ids, p[None]), ids, mask, gen)
        toks_a.append(V.trim(oa[0], a.eos))
        toks_b.append(V.trim(ob[0], b.eos))
        dl = max(dl, _max_abs(fa, fb))
        top = np.sort(fa[0].astype(np.float64))
        margins.append(float(top[-1] - top[-2]))
    first = [x[:1] == y[:1] for x, y in zip(toks_a, toks_b)]
    same = [x == y for x, y in zip(toks_a, toks_b)]
    return {
        "images": names,
        "prompt": "",
        "generation": gen,
        "first_step_logits_max_abs_diff": dl,
        "fp32_first_step_top2_margins": margins,
        "first_token_agreement": float(np.mean(first)),
        "caption_agreement": float(np.mean(same)),
        "fp32_tokens": toks_a,
        "tokens": toks_b,
    }


# --------------------------------------------------------------------------------------
# Runners of the other families, as tessera runs them (batch 1 per tile: a dynamic int8
# graph quantises each batch's activations with that batch's range)
# --------------------------------------------------------------------------------------


def _sigmoid32(x):
    """``1 / (1 + exp(-x))`` in float32, as tessera computes it: large logits saturate to 1.0
    and tie (the first prompt then wins, as in the stitcher), which float64 would not."""
    with np.errstate(over="ignore"):
        return (np.float32(1) / (np.float32(1) + np.exp(-np.asarray(x, np.float32)))).astype(np.float32)


def upsample(a: np.ndarray, oh: int, ow: int) -> np.ndarray:
    """Bilinear resize of ``[..., h, w]`` with half-pixel centres (PyTorch ``align_corners=False``,
    tessera's ``segmentation::upsample``), in float32; a copy when the size already matches."""
    h, w = a.shape[-2:]
    if (h, w) == (oh, ow):
        return a.astype(np.float32).copy()

    def axis(n_in, n_out):
        src = np.maximum((np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * np.float32(n_in / n_out)
                         - np.float32(0.5), 0)
        i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
        return i0, np.minimum(i0 + 1, n_in - 1), (src - i0).astype(np.float32)

    y0, y1, fy = axis(h, oh)
    x0, x1, fx = axis(w, ow)
    a = a.astype(np.float32)
    top = a[..., y0, :][..., x0] * (1 - fx) + a[..., y0, :][..., x1] * fx
    bot = a[..., y1, :][..., x0] * (1 - fx) + a[..., y1, :][..., x1] * fx
    return (top * (1 - fy[:, None]) + bot * fy[:, None]).astype(np.float32)


def prompt_tokens(pkg: Package, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """tessera's ``tokenize_prompts``: special tokens, cut to context_length keeping the end token
    last, padded with the pad id."""
    from tokenizers import Tokenizer

    t = pkg.m["tokenizer"]
    tok = Tokenizer.from_file(str(pkg.root / t["file"]))
    tok.no_padding()  # tessera pads itself (a tokenizer.json may pad to max_length)
    tok.no_truncation()
    L = int(t["context_length"])
    ids = np.full((len(prompts), L), int(t["pad_token_id"]), np.int64)
    mask = np.zeros((len(prompts), L), np.int64)
    for r, p in enumerate(prompts):
        e = tok.encode(p, add_special_tokens=True).ids
        n = min(len(e), L)
        ids[r, :n], mask[r, :n] = e[:n], 1
        if len(e) > L:
            ids[r, L - 1] = int(t["eos_token_id"])
    return ids, mask


def package_prompts(pkg: Package) -> list[str]:
    """The prompts of the agreement check of a prompted segmenter / detector: the reference's."""
    ref = pkg.reference() or {}
    if "prompts" in ref:
        return list(ref["prompts"])
    sets = ref.get("prompt_sets")
    if sets:
        return list(sets[0]["prompts"])
    if "queries" in ref:
        return list(ref["queries"])
    return ["a building", "a road", "water"]


class Segmenter:
    """tessera's ``SegmentationModel::predict`` + the stitcher's decision on one tile."""

    def __init__(self, pkg: Package, prompts: list[str] | None):
        self.pkg, self.m = pkg, pkg.m
        self.g = pkg.session(self.m["model"]["onnx"])
        self.fmt = self.m["segmentation"]["format"]
        self.threshold = float(self.m["segmentation"].get("threshold", 0.5))
        self.prompts = prompts
        if self.fmt == "clipseg":
            self.ids, self.mask = prompt_tokens(pkg, prompts)

    def probs(self, px: np.ndarray) -> np.ndarray:
        """[3,S,S] normalised -> [C,S,S] class probabilities (clipseg: channel 0 stays 0)."""
        md = self.m["model"]
        S = px.shape[-1]
        if self.fmt == "clipseg":
            n = len(self.prompts)
            feeds = {md["input"]: np.repeat(px[None], n, axis=0), self.m["prompted"]["input_ids"]: self.ids}
            if self.m["prompted"].get("attention_mask"):
                feeds[self.m["prompted"]["attention_mask"]] = self.mask
            raw = self.g.run([md["output"]], feeds)[0]
            raw = raw.reshape(n, raw.shape[-2], raw.shape[-1])
            p = _sigmoid32(upsample(raw, S, S))
            return np.concatenate([np.zeros((1, S, S), np.float32), p])
        x = np.zeros((fixed_batch(self.g), *px.shape), np.float32)  # a fixed batch is padded
        x[0] = px
        raw = self.g.run([md["output"]], {md["input"]: x})[0][0]
        raw = upsample(raw, S, S)
        if self.fmt == "logits":
            z = raw.astype(np.float64) - raw.max(axis=0, keepdims=True)
            e = np.exp(z)
            return (e / e.sum(axis=0, keepdims=True)).astype(np.float32)
        if self.fmt == "probability":
            return np.concatenate([1 - raw, raw]).astype(np.float32)
        return raw.astype(np.float32)

    def classes(self, probs: np.ndarray) -> np.ndarray:
        if self.fmt == "clipseg":
            best = probs[1:].argmax(axis=0)
            return np.where(probs[1:].max(axis=0) >= self.threshold, best + 1, 0)
        if self.fmt == "probability":
            return (probs[1] >= self.threshold).astype(int)
        return probs.argmax(axis=0)


def agree_segmenter(fp32: Package, quant: Package, names, pixels) -> dict:
    prompts = package_prompts(fp32) if fp32.m["segmentation"]["format"] == "clipseg" else None
    a, b = Segmenter(fp32, prompts), Segmenter(quant, prompts)
    n_cls = (len(prompts) + 1) if prompts else None
    same, inter, union, dp, fa, fb = [], None, None, 0.0, [], []
    for px in pixels:
        pa, pb = a.probs(px), b.probs(px)
        ca, cb = a.classes(pa), b.classes(pb)
        n_cls = n_cls or pa.shape[0]
        if inter is None:
            inter, union = np.zeros(n_cls), np.zeros(n_cls)
        for k in range(n_cls):
            inter[k] += np.sum((ca == k) & (cb == k))
            union[k] += np.sum((ca == k) | (cb == k))
        same.append(float((ca == cb).mean()))
        dp = max(dp, _max_abs(pa, pb))
        fa.append([float((ca == k).mean()) for k in range(n_cls)])
        fb.append([float((cb == k).mean()) for k in range(n_cls)])
    iou = [float(i / u) if u else None for i, u in zip(inter, union)]
    present = [v for v in iou if v is not None]
    return {
        "images": names,
        "prompts": prompts,
        "threshold": a.threshold,
        "probabilities_max_abs_diff": dp,
        "pixel_agreement": float(np.mean(same)),
        "pixel_agreement_per_image": same,
        "class_iou": iou,
        "mean_class_iou": float(np.mean(present)) if present else None,
        "fp32_class_fractions": fa,
        "class_fractions": fb,
    }


OPEN_VOCAB_BOXES = ("owlv2", "owlvit", "grounding-dino")
GRID_BOXES = ("yolov8", "yolo11", "yolov11", "yolov5", "yolov7", "yolox", "yolox-decoded")


class Detector:
    """tessera's ``DetectorModel::detect`` of an OWL-ViT / OWLv2 package on one tile: per patch
    the best query's sigmoid score, kept above the confidence, boxes in input pixels (clipped)."""

    def __init__(self, pkg: Package, prompts: list[str] | None):
        self.pkg, self.m = pkg, pkg.m
        self.g = pkg.session(self.m["model"]["onnx"])
        self.confidence = float(self.m["detection"]["confidence"])
        self.format = str(self.m["detection"]["format"]).strip().lower()
        self.grounded = self.format == "grounding-dino"
        if self.format in GRID_BOXES:
            self.batch = fixed_batch(self.g)
        elif self.grounded:
            self.ids, self.token_query = grounding_tokens(pkg, prompts)
            self.mask = np.ones_like(self.ids)
        else:
            self.ids, self.mask = prompt_tokens(pkg, prompts)

    def detect_grounded(self, px: np.ndarray) -> list[dict]:
        """``detect_grounded``: per query, score = max over the text positions of the float32
        sigmoid, kept above the confidence; class = the prompt of the most probable token."""
        md, pr = self.m["model"], self.m["prompted"]
        feeds = {md["input"]: px[None], pr["input_ids"]: self.ids}
        if pr.get("attention_mask"):
            feeds[pr["attention_mask"]] = self.mask
        logits, boxes = self.g.run([md["output"], pr["boxes"]], feeds)
        S = np.float32(px.shape[-1])
        out = []
        for q in range(logits.shape[1]):
            probs = _sigmoid32(logits[0, q])
            score = float(probs.max())
            if not score > self.confidence:
                continue
            cls, best = 0, -np.inf
            for k, query in enumerate(self.token_query):
                if query is not None and probs[k] > best:
                    cls, best = query, probs[k]
            cx, cy, w, h = boxes[0, q]
            x0, y0 = np.clip((cx - w / 2) * S, 0, S), np.clip((cy - h / 2) * S, 0, S)
            x1, y1 = np.clip((cx + w / 2) * S, 0, S), np.clip((cy + h / 2) * S, 0, S)
            if x1 > x0 and y1 > y0:
                out.append({"class": int(cls), "score": score, "box": [float(x0), float(y0), float(x1), float(y1)]})
        return sorted(out, key=lambda d: -d["score"])

    def detect_grid(self, px: np.ndarray) -> list[dict]:
        """``detection::decode`` of a YOLO-style output: each candidate's best class, score (times
        the objectness for v5 / YOLOX) at or above the confidence, YOLOX grid cells decoded,
        boxes clipped; best first, equal scores in output order. A graph of fixed batch size gets
        the tile padded with zero tiles, as tessera pads its last chunk."""
        md, det = self.m["model"], self.m["detection"]
        x = np.zeros((self.batch, *px.shape), np.float32)
        x[0] = px
        out = self.g.run([md["output"]], {md["input"]: x})[0][0]
        C, S = len(det["classes"]), px.shape[-1]
        W = H = np.float32(S)
        found = []

        def push(i, cls, score, cx, cy, w, h):
            if not all(np.isfinite(v) for v in (cx, cy, w, h)):
                return
            x0, y0 = np.clip(cx - w / 2, 0, W), np.clip(cy - h / 2, 0, H)
            x1, y1 = np.clip(cx + w / 2, 0, W), np.clip(cy + h / 2, 0, H)
            if x1 > x0 and y1 > y0:
                found.append((i, {"class": int(cls), "score": float(score),
                                  "box": [float(x0), float(y0), float(x1), float(y1)]}))

        if self.format in ("yolov8", "yolo11", "yolov11"):
            for i in range(out.shape[1]):
                col = out[:, i]
                k = int(np.argmax(col[4:4 + C]))
                if col[4 + k] >= self.confidence:
                    push(i, k, col[4 + k], *col[:4])
        else:
            cells = None
            if self.format == "yolox" and not det.get("decoded", False):
                cells = [(gx, gy, st) for st in det.get("strides") or [8, 16, 32]
                         for gy in range(-(-S // st)) for gx in range(-(-S // st))]
            for i, row in enumerate(out):
                k = int(np.argmax(row[5:5 + C]))
                score = np.float32(row[4] * row[5 + k])
                if not score >= self.confidence:
                    continue
                if cells:
                    gx, gy, st = cells[i]
                    cx, cy = (row[0] + gx) * st, (row[1] + gy) * st
                    w, h = np.exp(row[2]) * st, np.exp(row[3]) * st
                else:
                    cx, cy, w, h = row[:4]
                push(i, k, score, np.float32(cx), np.float32(cy), np.float32(w), np.float32(h))
        found.sort(key=lambda t: (-t[1]["score"], t[0]))
        return [b for _, b in found[:10_000]]

    def detect(self, px: np.ndarray) -> list[dict]:
        if self.format in GRID_BOXES:
            return self.detect_grid(px)
        if self.grounded:
            return self.detect_grounded(px)
        md, pr = self.m["model"], self.m["prompted"]
        feeds = {md["input"]: px[None], pr["input_ids"]: self.ids}
        if pr.get("attention_mask"):
            feeds[pr["attention_mask"]] = self.mask
        logits, boxes = self.g.run([md["output"], pr["boxes"]], feeds)
        S = np.float32(px.shape[-1])
        out = []
        for n in range(logits.shape[1]):
            k = int(logits[0, n].argmax())
            score = float(np.float32(1.0) / (np.float32(1.0) + np.exp(-logits[0, n, k])))
            if not score > self.confidence:
                continue
            cx, cy, w, h = boxes[0, n]
            x0, y0 = np.clip((cx - w / 2) * S, 0, S), np.clip((cy - h / 2) * S, 0, S)
            x1, y1 = np.clip((cx + w / 2) * S, 0, S), np.clip((cy + h / 2) * S, 0, S)
            if x1 > x0 and y1 > y0:
                out.append({"class": k, "score": score, "box": [float(x0), float(y0), float(x1), float(y1)]})
        return sorted(out, key=lambda d: -d["score"])


def grounding_tokens(pkg: Package, prompts: list[str]):
    """``grounding_text`` + ``set_queries`` of a Grounding DINO package: the prompts lower-cased,
    joined by ". " with a final "."; the ids [1, T] and each token's prompt (None for special
    tokens and the separators)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(pkg.root / pkg.m["tokenizer"]["file"]))
    tok.no_padding()
    tok.no_truncation()
    text, spans = "", []
    for i, p in enumerate(prompts):
        if i:
            text += ". "
        p = p.strip().lower()
        spans.append((len(text.encode()), len(text.encode()) + len(p.encode())))
        text += p
    text += "."
    enc = tok.encode(text, add_special_tokens=True)
    query = []
    for (a, b), special in zip(enc.offsets, enc.special_tokens_mask):
        hit = [i for i, (s0, s1) in enumerate(spans) if a >= s0 and b <= s1] if not special and b > a else []
        query.append(hit[0] if hit else None)
    return np.asarray([enc.ids], np.int64), query


def box_iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    u = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / u if u > 0 else 0.0


def match_boxes(fa: list[dict], fb: list[dict], thr: float = 0.5) -> list[float]:
    """Greedy matching in fp32 score order: each fp32 box takes the unmatched variant box of the
    same class with the highest IoU >= thr; returns the matched IoUs."""
    used, ious = set(), []
    for d in fa:
        best, j = thr, None
        for i, e in enumerate(fb):
            if i in used or e["class"] != d["class"]:
                continue
            v = box_iou(d["box"], e["box"])
            if v >= best:
                best, j = v, i
        if j is not None:
            used.add(j)
            ious.append(best)
    return ious


def fixed_batch(session) -> int:
    """The image input's batch size when the graph fixes it (tessera pads to it), else 1."""
    d = session.get_inputs()[0].shape[0]
    return d if isinstance(d, int) and d > 1 else 1


def agree_detector(fp32: Package, quant: Package, names, pixels) -> dict:
    prompts = package_prompts(fp32) if "prompted" in fp32.m else None
    a, b = Detector(fp32, prompts), Detector(quant, prompts)
    boxes_a, boxes_b, matched, na, nb, top_same, top_iou = [], [], [], 0, 0, [], []
    for px in pixels:
        da, db = a.detect(px), b.detect(px)
        boxes_a.append(da)
        boxes_b.append(db)
        ious = match_boxes(da, db)
        matched += ious
        na, nb = na + len(da), nb + len(db)
        if da and db:
            top_same.append(da[0]["class"] == db[0]["class"])
            top_iou.append(box_iou(da[0]["box"], db[0]["box"]))
    # Random weights put every patch above a low confidence: the agreement is also measured at
    # the fp32 median score, where half of the fp32 boxes are kept and near-threshold ones flip.
    scores = [d["score"] for im in boxes_a for d in im]
    median = float(np.median(scores)) if scores else a.confidence
    keep = lambda im: [d for d in im if d["score"] > median]  # noqa: E731
    ma = sum(len(match_boxes(keep(x), keep(y))) for x, y in zip(boxes_a, boxes_b))
    ka, kb = sum(len(keep(x)) for x in boxes_a), sum(len(keep(y)) for y in boxes_b)
    return {
        "images": names,
        "prompts": prompts,
        "at_fp32_median_score": {"confidence": median, "fp32_boxes": ka, "boxes": kb, "matched_boxes": ma,
                                 "box_agreement": 2 * ma / (ka + kb) if ka + kb else 1.0},
        "confidence": a.confidence,
        "match_iou": 0.5,
        "fp32_boxes": na,
        "boxes": nb,
        "matched_boxes": len(matched),
        "box_agreement": 2 * len(matched) / (na + nb) if na + nb else 1.0,
        "mean_matched_iou": float(np.mean(matched)) if matched else None,
        "top1_class_agreement": float(np.mean(top_same)) if top_same else None,
        "top1_box_iou_mean": float(np.mean(top_iou)) if top_iou else None,
        "fp32_detections": boxes_a,
        "detections": boxes_b,
    }


class Promptable:
    """tessera's ``PromptableSegmenter::embed`` + ``masks`` on a tile of the model's size, box
    prompts only (one decoder run for all of a tile's boxes)."""

    def __init__(self, pkg: Package):
        self.pkg, self.m = pkg, pkg.m
        self.enc = pkg.session(self.m["image_encoder"]["onnx"])
        self.dec = pkg.session(self.m["mask_decoder"]["onnx"])
        self.threshold = float(self.m["promptable"].get("mask_threshold", 0.0))

    def masks(self, px: np.ndarray, boxes: np.ndarray):
        e, d = self.m["image_encoder"], self.m["mask_decoder"]
        outs = self.enc.run(e["outputs"], {e["input"]: px[None]})
        n = len(boxes)
        feeds = dict(zip(e["outputs"], outs))
        feeds.update({d["boxes"]: boxes[None].astype(np.float32),
                      d["points"]: np.zeros((1, n, 0, 2), np.float32),
                      d["labels"]: np.zeros((1, n, 0), np.int64)})
        low, scores = self.dec.run([d["masks"], d["scores"]], feeds)
        S = px.shape[-1]
        up = upsample(low[0, :, 0], S, S)
        return up > self.threshold, scores.reshape(n, -1)[:, 0]


def sam_boxes(S: int) -> np.ndarray:
    """The box prompts of the agreement check, in tile pixels: the whole tile, its centre, and a
    box in each quadrant."""
    h = S / 2
    q = S / 4
    return np.asarray([[0, 0, S, S], [q, q, S - q, S - q], [2, 2, h - 2, h - 2], [h + 2, 2, S - 2, h - 2],
                       [2, h + 2, h - 2, S - 2], [h + 2, h + 2, S - 2, S - 2]], np.float32)


def agree_promptable(fp32: Package, quant: Package, names, pixels) -> dict:
    a, b = Promptable(fp32), Promptable(quant)
    boxes = sam_boxes(fp32.size)
    ious, ds, sa, sb, fa, fb = [], 0.0, [], [], [], []
    for px in pixels:
        ma, pa = a.masks(px, boxes)
        mb, pb = b.masks(px, boxes)
        for x, y in zip(ma, mb):
            u = np.sum(x | y)
            ious.append(float(np.sum(x & y) / u) if u else 1.0)
        ds = max(ds, _max_abs(pa, pb))
        sa.append(pa.tolist())
        sb.append(pb.tolist())
        fa.append([float(x.mean()) for x in ma])
        fb.append([float(x.mean()) for x in mb])
    return {
        "images": names,
        "boxes": boxes.tolist(),
        "mask_iou_mean": float(np.mean(ious)),
        "mask_iou_min": float(np.min(ious)),
        "mask_iou": ious,
        "iou_scores_max_abs_diff": ds,
        "fp32_iou_scores": sa,
        "iou_scores": sb,
        "fp32_mask_fractions": fa,
        "mask_fractions": fb,
    }


class CrossDecoder:
    """tessera's ``CrossDecoderModel`` on one tile: the encoder (with the prompt's tokens when it
    takes them, the Q-Former's when it has one), the cross keys/values, then greedy steps of the
    decoder over its self-attention past (``generation::generate``, one row)."""

    def __init__(self, pkg: Package):
        from tokenizers import Tokenizer

        self.pkg, self.m = pkg, pkg.m
        self.enc = pkg.session(self.m["encoder"]["onnx"])
        self.cross = pkg.session(self.m["cross"]["onnx"])
        self.dec = pkg.session(self.m["decoder"]["onnx"])
        self.tok = Tokenizer.from_file(str(pkg.root / self.m["tokenizer"]["file"]))
        q = self.m.get("qformer_tokenizer")
        self.qtok = Tokenizer.from_file(str(pkg.root / q["file"])) if q else None
        self.start = self.m.get("prompt", {})
        t = self.m["tokenizer"]
        self.eos, self.pad = int(t["eos_token_id"]), int(t["pad_token_id"])

    def text(self, prompt: str) -> str:
        """``task_prompt``: with ``[tasks]``, the empty prompt is the default task, a task token
        its prompt text."""
        tasks = self.m.get("tasks")
        if not tasks:
            return prompt
        if not prompt and tasks.get("default"):
            prompt = tasks["default"]
        return tasks.get("prompts", {}).get(prompt, prompt)

    def prompt_ids(self, prompt: str) -> list[int]:
        text = self.text(prompt)
        in_encoder = "input_ids" in self.m["encoder"]
        if in_encoder and not text and self.start.get("empty_prompt_ids") is not None:
            return list(self.start["empty_prompt_ids"])
        tmpl = self.start.get("template")
        t = tmpl.replace("{prompt}", text) if tmpl else text
        ids = self.tok.encode(t, add_special_tokens=self.start.get("add_special_tokens", True)).ids
        ids = ids[: max(0, len(ids) - int(self.start.get("trim_end", 0)))]
        if not in_encoder and self.start.get("start_token_id") is not None:
            ids[0] = int(self.start["start_token_id"])
        return ids

    def start_ids(self, prompt: str) -> list[int]:
        if "input_ids" in self.m["encoder"]:
            return [int(self.start["start_token_id"])]
        return self.prompt_ids(prompt)

    def image_flags(self, ids: list[int]) -> list[int]:
        image = self.start.get("image_token_id")
        if image is None:
            return [1] * len(ids)
        out, count, eod = [], -1, False
        for t in ids:
            if t == image:
                count, eod = count + 1, False
            out.append(int(not eod and count == 0))
            if t == self.eos:
                eod = True
        return out

    def encode(self, px: np.ndarray, prompt: str):
        e = self.m["encoder"]
        feeds = {e["pixel_values"]: px[None]}
        if e.get("input_ids"):
            ids = self.prompt_ids(prompt)
            feeds[e["input_ids"]] = np.asarray([ids], np.int64)
            if e.get("attention_mask"):
                feeds[e["attention_mask"]] = np.ones((1, len(ids)), np.int64)
        if e.get("qformer_input_ids"):
            q = self.qtok.encode(self.text(prompt), add_special_tokens=True).ids
            feeds[e["qformer_input_ids"]] = np.asarray([q], np.int64)
            if e.get("qformer_attention_mask"):
                feeds[e["qformer_attention_mask"]] = np.ones((1, len(q)), np.int64)
        names = [e["memory"]] + ([e["memory_mask"]] if e.get("memory_mask") else [])
        out = self.enc.run(names, feeds)
        memory = out[0]
        mmask = out[1].astype(np.int64) if len(out) > 1 else np.ones(memory.shape[:2], np.int64)
        c = self.m["cross"]
        layers = int(self.m["decoder"].get("cross_layers") or self.m["decoder"]["layers"])
        kv_names = [c[k].format(i=i) for i in range(layers) for k in ("key", "value")]
        kv = self.cross.run(kv_names, {c["memory"]: memory})
        return mmask, kv

    def step(self, ids, mask, pos, mmask, image, kv, past):
        d = self.m["decoder"]
        layers = int(d.get("cross_layers") or d["layers"])
        feeds = {d["input_ids"]: ids, d["attention_mask"]: mask}
        if d.get("position_ids"):
            feeds[d["position_ids"]] = pos
        if d.get("memory_mask"):
            feeds[d["memory_mask"]] = mmask
        if d.get("image_attention"):
            feeds[d["image_attention"]] = image
        names = [d[k].format(i=i) for i in range(layers) for k in ("cross_key", "cross_value")]
        feeds.update(zip(names, kv))
        pn = [d[k].format(i=i) for i in range(d["layers"]) for k in ("past_key", "past_value")]
        feeds.update(zip(pn, past))
        on = [d[k].format(i=i) for i in range(d["layers"]) for k in ("present_key", "present_value")]
        out = self.dec.run([d["logits"]] + on, feeds)
        return out[0][:, -1, :].astype(np.float32), out[1:]

    def greedy(self, px: np.ndarray, prompt: str, gen: dict):
        import verify_decoder as V

        d = self.m["decoder"]
        mmask, kv = self.encode(px, prompt)
        start = self.start_ids(prompt)
        flags = self.image_flags(start)
        ids = np.asarray([start], np.int64)
        mask = np.ones_like(ids)
        pos = np.arange(len(start), dtype=np.int64)[None]
        past = [np.zeros((1, d["heads"], 0, d["head_dim"]), np.float32)
                for _ in range(2 * d["layers"])]
        logits, past = self.step(ids, mask, pos, mmask, np.asarray([flags], np.int64), kv, past)
        first, seq, out, last = logits.copy(), list(start), [], len(start) - 1
        for _ in range(gen["max_new_tokens"]):
            sc = V.process(logits, [seq], [0], gen, len(start), self.eos)
            nxt = next_token(sc[0], gen, len(start), len(out))
            seq.append(nxt)
            out.append(nxt)
            if nxt == self.eos:
                break
            mask = np.concatenate([mask, np.ones((1, 1), np.int64)], 1)
            last += 1
            logits, past = self.step(np.asarray([[nxt]], np.int64), mask, np.asarray([[last]], np.int64), mmask,
                                     np.asarray([[flags[-1]]], np.int64), kv, past)
        return out, first


def generation_settings(pkg: Package) -> dict:
    gen = dict(max_new_tokens=20, num_beams=1, repetition_penalty=1.0, min_new_tokens=0, no_repeat_ngram_size=0,
               forced_bos_token_id=None, forced_eos_token_id=None)
    gen.update({k: v for k, v in pkg.m.get("generation", {}).items() if k in gen})
    gen["num_beams"] = 1
    return gen


def next_token(scores: np.ndarray, gen: dict, start_len: int, generated: int) -> int:
    """Greedy choice after the processors (``generation::logits::process``): the forced first
    token of a one-token start (encoder-decoders), the forced last token at max_new_tokens."""
    if gen.get("forced_bos_token_id") is not None and start_len + generated == 1:
        return int(gen["forced_bos_token_id"])
    if gen.get("forced_eos_token_id") is not None and generated + 1 == gen["max_new_tokens"]:
        return int(gen["forced_eos_token_id"])
    return int(scores.argmax())


def tokens_agreement(names, prompt, gen, toks_a, toks_b, firsts_a, firsts_b) -> dict:
    margins, dl = [], 0.0
    for fa, fb in zip(firsts_a, firsts_b):
        dl = max(dl, _max_abs(fa, fb))
        top = np.sort(fa[0].astype(np.float64))
        margins.append(float(top[-1] - top[-2]))
    return {
        "images": names,
        "prompt": prompt,
        "generation": gen,
        "first_step_logits_max_abs_diff": dl,
        "fp32_first_step_top2_margins": margins,
        "first_token_agreement": float(np.mean([x[:1] == y[:1] for x, y in zip(toks_a, toks_b)])),
        "caption_agreement": float(np.mean([x == y for x, y in zip(toks_a, toks_b)])),
        "fp32_tokens": toks_a,
        "tokens": toks_b,
    }


def agree_cross_decoder(fp32: Package, quant: Package, names, pixels) -> dict:
    a, b = CrossDecoder(fp32), CrossDecoder(quant)
    gen = generation_settings(fp32)
    ta, tb, fa, fb = [], [], [], []
    for px in pixels:
        oa, la = a.greedy(px, "", gen)
        ob, lb = b.greedy(px, "", gen)
        ta.append(oa), tb.append(ob), fa.append(la), fb.append(lb)
    return tokens_agreement(names, "", gen, ta, tb, fa, fb)


def mrope_positions(ids: list[int], image_id: int, grid) -> np.ndarray:
    """``decoder::mrope_position_ids`` (HF ``get_rope_index``) of one unpadded row: [3, T]."""
    gt, gh, gw = grid
    n_img = gt * gh * gw
    pos = np.zeros((3, len(ids)), np.int64)
    cur, k = 0, 0
    while k < len(ids):
        if ids[k] == image_id:
            j = k
            for ti in range(gt):
                for hi in range(gh):
                    for wi in range(gw):
                        pos[:, j] = (cur + ti, cur + hi, cur + wi)
                        j += 1
            k += n_img
            cur += max(gh, gw)
        else:
            pos[:, k] = cur
            cur, k = cur + 1, k + 1
    return pos


class PrefixDecoder:
    """tessera's ``DecoderModel`` on one tile, with what verify_decoder.py's runner lacks:
    ``[prompt] image_ids_first`` and the Q-Former prompt of the image graph (InstructBLIP),
    ``[decoder] prefix_mask`` (PaliGemma's prefix-LM) and M-RoPE positions (Qwen2-VL)."""

    def __init__(self, pkg: Package):
        import verify_decoder as V
        from tokenizers import Tokenizer

        self.v = V.Package(pkg.root)
        self.m = pkg.m
        q = self.m.get("qformer_tokenizer")
        self.qtok = Tokenizer.from_file(str(pkg.root / q["file"])) if q else None

    def prompt_ids(self, prompt: str) -> list[int]:
        p, i = self.m["prompt"], self.m["image"]
        if not p.get("image_ids_first"):
            return self.v.prompt_ids(prompt)
        text = p["template"].replace("{image}", "").replace("{prompt}", prompt)
        return [p["image_token_id"]] * i["tokens"] + self.v.tok.encode(text, add_special_tokens=p["add_bos"]).ids

    def embeds(self, ids: list[int], px: np.ndarray, prompt: str) -> np.ndarray:
        i = self.m["image"]
        feeds = {i["input"]: px[None]}
        if i.get("qformer_input_ids"):
            q = self.qtok.encode(prompt, add_special_tokens=True).ids
            feeds[i["qformer_input_ids"]] = np.asarray([q], np.int64)
            feeds[i["qformer_attention_mask"]] = np.ones((1, len(q)), np.int64)
        pre = self.v.prefix.run([i["output"]], feeds)[0]
        a = np.asarray([ids], np.int64)
        emb = self.v.embed.run([self.m["embed"]["output"]], {self.m["embed"]["input"]: a})[0].copy()
        emb[0, np.nonzero(a[0] == self.m["prompt"]["image_token_id"])[0]] = pre[0]
        return emb

    def step(self, embeds, mask, pos, past, prompt_len):
        d = self.m["decoder"]
        feed = {d["inputs_embeds"]: embeds, d["attention_mask"]: mask, d["position_ids"]: pos}
        if d.get("prefix_mask"):
            pm = mask.copy()
            pm[:, prompt_len:] = 0
            feed[d["prefix_mask"]] = pm
        feed.update(zip(self.v.past_names, past))
        out = self.v.dec.run([d["logits"]] + self.v.present_names, feed)
        return out[0][:, -1, :].astype(np.float32), out[1:]

    def greedy(self, px: np.ndarray, prompt: str, gen: dict):
        import verify_decoder as V

        d = self.m["decoder"]
        ids = self.prompt_ids(prompt)
        P = len(ids)
        mrope = d.get("positions") == "mrope"
        if mrope:
            grid = d.get("mrope_grid") or [1, 1, self.m["image"]["tokens"]]
            pos = mrope_positions(ids, self.m["prompt"]["image_token_id"], grid)[:, None, :]
            last = pos[:, 0, -1].copy()
        else:
            pos = np.arange(P, dtype=np.int64)[None]
            last = np.asarray([P - 1])
        mask = np.ones((1, P), np.int64)
        logits, past = self.step(self.embeds(ids, px, prompt), mask, pos, self.v.empty_past(1), P)
        first, seq, out = logits.copy(), list(ids), []
        for _ in range(gen["max_new_tokens"]):
            sc = V.process(logits, [seq], [0], gen, P, self.v.eos)
            nxt = next_token(sc[0], gen, P, len(out))
            seq.append(nxt)
            out.append(nxt)
            if nxt == self.v.eos:
                break
            mask = np.concatenate([mask, np.ones((1, 1), np.int64)], 1)
            last = last + 1
            pos = last.reshape(3, 1, 1) if mrope else last.reshape(1, 1)
            logits, past = self.step(self.v.embed_one(np.asarray([nxt])), mask, pos.astype(np.int64), past, P)
        return out, first


def agree_prefix_decoder(fp32: Package, quant: Package, names, pixels) -> dict:
    a, b = PrefixDecoder(fp32), PrefixDecoder(quant)
    gen = generation_settings(fp32)
    ta, tb, fa, fb = [], [], [], []
    for px in pixels:
        oa, la = a.greedy(px, "", gen)
        ob, lb = b.greedy(px, "", gen)
        ta.append(oa), tb.append(ob), fa.append(la), fb.append(lb)
    return tokens_agreement(names, "", gen, ta, tb, fa, fb)


# --------------------------------------------------------------------------------------
# The conversion
# --------------------------------------------------------------------------------------


def agreement_function(pkg: Package):
    """The family's agreement check (CONTRIBUTING "A model family", item 7)."""
    if pkg.family in DUAL_ENCODERS:
        return agree_dual
    if pkg.family == "image-text-decoder":
        odd = ({"prefix_mask", "positions", "mrope_grid"} & set(pkg.m.get("decoder", {}))) \
            | ({"qformer_input_ids"} & set(pkg.m.get("image", {}))) | ({"image_ids_first"} & set(pkg.m.get("prompt", {})))
        return agree_prefix_decoder if odd else agree_decoder
    return {"cross-attention-decoder": agree_cross_decoder, "segmenter": agree_segmenter,
            "detector": agree_detector, "promptable-segmenter": agree_promptable}[pkg.family]


def insert_precision(text: str, precision: str) -> str:
    """``precision = "..."`` after the manifest's top-level keys (before its first section)."""
    lines = text.splitlines()
    at = next((i for i, line in enumerate(lines) if line.startswith("[")), len(lines))
    while at > 0 and not lines[at - 1].strip():
        at -= 1
    lines.insert(at, f'precision = "{precision}"                   # quantization.json: per graph, agreement with fp32'
                 if precision != "fp16" else f'precision = "{precision}"')
    return "\n".join(lines) + "\n"


def mark_fp16(pkg: Path) -> None:
    """``export.py ... --fp16``: record the precision of the float16 graphs it wrote."""
    p = pkg / "model.toml"
    text = p.read_text()
    if "precision" not in tomllib.loads(text):
        p.write_text(insert_precision(text, "fp16"))


def manifest_with_precision(text: str, precision: str, note: str) -> str:
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^name\s*=", line):
            lines[i] = "name = " + json.dumps(f"{tomllib.loads(line)['name']}-{precision}")
        if re.match(r"^source\s*=", line):
            src = tomllib.loads(line)["source"]
            lines[i] = "source = " + json.dumps(f"{src}; {note}", ensure_ascii=False)
    return insert_precision("\n".join(lines), precision)


def convert(src: Path, out: Path, precision: str, *, scene: str | None = None, tiles: int = 32,
            overwrite_src: bool = False) -> dict:
    """Write the ``precision`` variant of the package ``src`` to ``out`` (atomically)."""
    import onnx
    import onnxruntime

    # onnxruntime.quantization logs every node (INFO) and advises pre-processing on the root logger
    logging.getLogger().setLevel(logging.ERROR)
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.ERROR)

    if precision not in PRECISIONS:
        raise QuantizeError(f"unknown precision {precision!r} ({', '.join(PRECISIONS)})")
    pkg = Package(src)
    if out.exists() and not overwrite_src:
        raise QuantizeError(f"{out}: already exists")
    names, u8 = reference_images(pkg)
    calib = None
    if scene is not None:
        tnames, tu8 = scene_tiles(scene, pkg.size, tiles)
        calib = {"scene": Path(scene).name, "tiles": len(tnames), "tile_size": pkg.size}
        names, u8 = names + tnames, np.concatenate([u8, tu8])
        say(f"{len(tnames)} tiles of {scene} ({pkg.size} px)")
    pixels = preprocess(pkg, u8)

    graphs = pkg.graphs()
    targets = plan(pkg, precision)
    part = out.with_name(out.name + ".partial")
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    try:
        skip = {"reference", "quantization.json", "model.toml", *graphs.values()}
        for g in graphs.values():  # a graph's external data is rewritten with it
            skip |= external_files(src / g)
        for f in src.iterdir():
            if f.name in skip:
                continue
            (shutil.copytree if f.is_dir() else shutil.copy2)(f, part / f.name)
        record = {}
        for sec, g in graphs.items():
            want, dst = targets[sec], part / g
            dst.parent.mkdir(parents=True, exist_ok=True)
            say(f"[{sec}] {g}: {want}")
            if want == "fp32":
                shutil.copy2(src / g, dst)
                for x in external_files(src / g):
                    shutil.copy2(src / x, part / x)
                method = "unchanged (float32)"
            elif want == "int8-dynamic":
                method = quantize_dynamic(src / g, dst, tables="prompted" in pkg.m and sec == "model")
            elif want == "int8-static":
                if calib is None:
                    raise QuantizeError("--int8 static needs --calibrate SCENE")
                method = quantize_static(src / g, dst, calibration_feeds(pkg, pixels[len(pixels) - calib["tiles"]:]))
            else:
                method = quantize_int4(src / g, dst)
            onnx.checker.check_model(str(dst))
            nbytes = lambda root, g: (root / g).stat().st_size + sum(  # noqa: E731
                (root / x).stat().st_size for x in external_files(root / g))
            record[g] = {"section": sec, "precision": want, "method": method,
                         "fp32_bytes": nbytes(src, g), "bytes": nbytes(part, g)}
        note = f"{precision} by tools/export/quantize.py (onnxruntime {onnxruntime.__version__})"
        (part / "model.toml").write_text(manifest_with_precision(pkg.text, precision, note))

        quant = Package(part, variant=True)
        agreement = agreement_function(pkg)(pkg, quant, names, pixels)
        total = lambda d: sum(p.stat().st_size for p in d.rglob("*") if p.is_file() and p.name != "reference")  # noqa: E731
        q = {
            "precision": precision,
            "fp32_package": pkg.m["name"],
            "tool": "tools/export/quantize.py",
            "onnxruntime": onnxruntime.__version__,
            "graphs": record,
            "calibration": calib,
            "fp32_package_bytes": sum(p.stat().st_size for p in src.rglob("*") if p.is_file() and "reference" not in p.parts),
            "agreement": agreement,
        }
        q["package_bytes"] = total(part) + len(json.dumps(q, indent=1))
        (part / "quantization.json").write_text(json.dumps(q, indent=1) + "\n")
        report(q)
    except BaseException:
        shutil.rmtree(part, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    part.rename(out)
    return q


def report(q: dict) -> None:
    a = q["agreement"]
    say(f"{q['precision']}: {q['fp32_package_bytes'] / 1e6:.2f} MB -> {q['package_bytes'] / 1e6:.2f} MB")
    if "top1_agreement" in a:
        above = a["top1_agreement_above_margin"]
        say(f"agreement with fp32 on {len(a['images'])} images: image embeds max abs diff "
            f"{a['image_embeds_max_abs_diff']:.3g}, text embeds {a['text_embeds_max_abs_diff']:.3g}, "
            f"scores {a['scores_max_abs_diff']:.3g}; top-1 {a['top1_agreement']:.1%}"
            + (f", {above:.1%} of the {a['tiles_above_margin']} with an fp32 top-2 margin > {MARGIN}"
               if above is not None else ""))
    elif "pixel_agreement" in a:
        say(f"agreement with fp32 on {len(a['images'])} images: pixel classes {a['pixel_agreement']:.2%}, mean "
            f"class IoU {a['mean_class_iou']:.3f}, probabilities max abs diff {a['probabilities_max_abs_diff']:.3g}")
    elif "box_agreement" in a:
        mi = a["mean_matched_iou"]
        say(f"agreement with fp32 on {len(a['images'])} images: {a['matched_boxes']} of {a['fp32_boxes']} fp32 / "
            f"{a['boxes']} variant boxes matched (IoU >= {a['match_iou']}, same class): box agreement "
            f"{a['box_agreement']:.1%}" + (f", mean IoU {mi:.3f}" if mi is not None else "")
            + f"; at the fp32 median score {a['at_fp32_median_score']['confidence']:.3g}: "
            f"{a['at_fp32_median_score']['box_agreement']:.1%}")
    elif "mask_iou_mean" in a:
        say(f"agreement with fp32 on {len(a['images'])} images x {len(a['boxes'])} box prompts: mask IoU mean "
            f"{a['mask_iou_mean']:.3f}, min {a['mask_iou_min']:.3f}; IoU scores max abs diff "
            f"{a['iou_scores_max_abs_diff']:.3g}")
    else:
        say(f"agreement with fp32 on {len(a['images'])} images (greedy, empty prompt): first-step logits "
            f"max abs diff {a['first_step_logits_max_abs_diff']:.3g}, first token "
            f"{a['first_token_agreement']:.1%}, whole caption {a['caption_agreement']:.1%} (fp32 top-2 logit "
            f"margins of the first token: median {np.median(a['fp32_first_step_top2_margins']):.3g})")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="See tools/export/README.md, 'Quantised variants'.")
    p.add_argument("package", type=Path, help="the fp32 package folder (with model.toml)")
    p.add_argument("--out", type=Path, required=True, help="the new package folder (must not exist)")
    add_args(p, exporter=False)
    args = p.parse_args(argv)
    precision = precision_of(args) or "int8-dynamic"
    if args.out.resolve() == args.package.resolve():
        raise QuantizeError("--out must differ from PACKAGE")
    convert(args.package, args.out, precision, scene=args.calibrate, tiles=args.calibration_tiles)
    say(f"done, {args.out}")


if __name__ == "__main__":
    main()
