#!/usr/bin/env python3
"""Quantised variants of a tessera model package (int8 dynamic, int8 static, int4 weight-only).

    python tools/export/quantize.py PACKAGE --out NEW [--int8 dynamic|static] [--calibrate SCENE]
    python tools/export/quantize.py PACKAGE --out NEW --int4
    python tools/export/export.py COMMAND ... --int8 [dynamic|static] [--calibrate SCENE] | --int4

No torch: onnx, onnxruntime (``onnxruntime.quantization``), numpy, tokenizers and, for
``--calibrate``, rasterio.  The new package is the old one with its graphs replaced:

* ``--int8 dynamic`` (the default): ``quantize_dynamic`` on every graph, MatMul and Gemm weights
  as int8 (per tensor), activations quantised at run time per batch (``int8-dynamic``);
* ``--int8 static`` (needs ``--calibrate SCENE``): the image graph (the one tessera feeds tiles)
  as a QDQ graph (``quantize_static``: int8 weights per channel, uint8 activations whose scales
  are calibrated (MinMax) on tiles read from SCENE and preprocessed as the manifest says); the
  other graphs, whose inputs are not tiles, get the dynamic int8 of ``--int8 dynamic``
  (``int8-static``);
* ``--int4``: ONNX Runtime's 4-bit weight-only ``MatMulNBits`` (``MatMulNBitsQuantizer``, block
  size 32, symmetric, accuracy level 4: int8 activations inside the kernel) on the
  language-model graphs of a captioning package (the decoder step graph; the token-embedding
  Gather stays float32) (``int4``).

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
  logit margin of each first token (how near a tie it was) and the tokens of both.

Other families (cross-attention decoders, segmenters, detectors) are refused: their agreement
check is not written yet.  The package is written under NEW.partial and renamed at the end; the
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
        if self.family not in DUAL_ENCODERS + DECODERS:
            raise QuantizeError(
                f"{mpath}: family {self.family!r}: quantised variants are made of the dual encoders "
                f"({', '.join(DUAL_ENCODERS)}) and image-text-decoder packages only (the agreement "
                "check of the other families is not written yet)")
        if self.family in DECODERS:
            odd = sorted(({"prefix_mask", "positions", "mrope_grid"} & set(self.m.get("decoder", {})))
                         | ({"qformer_input_ids"} & set(self.m.get("image", {}))))
            if odd:
                raise QuantizeError(
                    f"{mpath}: an image-text-decoder with {', '.join(odd)} (PaliGemma's prefix mask, "
                    "Qwen2-VL's M-RoPE positions, InstructBLIP's Q-Former prompt): the agreement "
                    "check (verify_decoder.py's runner) does not feed those yet")
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
    if pkg.m["image"].get("input_type", "float32") == "uint8":
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


def quantize_dynamic(src: Path, dst: Path) -> str:
    from onnxruntime.quantization import QuantType, quantize_dynamic as qd

    qd(str(src), str(dst), op_types_to_quantize=["MatMul", "Gemm"], weight_type=QuantType.QInt8,
       per_channel=False, extra_options={"MatMulConstBOnly": True},
       use_external_data_format=bool(external_files(src)))
    return "onnxruntime quantize_dynamic: MatMul/Gemm with constant weights, int8 weights per tensor, " \
           "uint8 activations quantised at run time"


class _Reader:
    def __init__(self, name: str, batches: np.ndarray):
        self.items = iter([{name: b[None]} for b in batches])

    def get_next(self):
        return next(self.items, None)


def quantize_static(src: Path, dst: Path, input_name: str, pixels: np.ndarray) -> str:
    import tempfile

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static as qs
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        qs(str(pre), str(dst), _Reader(input_name, pixels), quant_format=QuantFormat.QDQ,
           use_external_data_format=bool(external_files(src)),
           op_types_to_quantize=["MatMul", "Gemm", "Conv"], per_channel=True,
           activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
           calibrate_method=CalibrationMethod.MinMax,
           extra_options={"MatMulConstBOnly": True})
    return f"onnxruntime quantize_static: QDQ MatMul/Gemm/Conv, int8 weights per channel, uint8 " \
           f"activations, MinMax calibration on {len(pixels)} tiles"


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
    for sec in pkg.graphs():
        if precision == "int4":
            out[sec] = "int4" if (pkg.family in DECODERS and sec == "decoder") else "fp32"
        elif precision == "int8-static":
            out[sec] = "int8-static" if sec == "image" else "int8-dynamic"
        else:
            out[sec] = "int8-dynamic"
    if precision == "int4" and "int4" not in out.values():
        raise QuantizeError(f"{pkg.root / 'model.toml'}: --int4 quantises the language-model graph of a "
                            f"captioning package; a {pkg.family!r} package has none")
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
# The conversion
# --------------------------------------------------------------------------------------


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
                method = quantize_dynamic(src / g, dst)
            elif want == "int8-static":
                if calib is None:
                    raise QuantizeError("--int8 static needs --calibrate SCENE")
                method = quantize_static(src / g, dst, pkg.m["image"]["input"], pixels[len(pixels) - calib["tiles"]:])
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
        agreement = (agree_dual if pkg.family in DUAL_ENCODERS else agree_decoder)(pkg, quant, names, pixels)
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
