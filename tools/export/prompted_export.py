"""Text-prompted dense models (CLIPSeg, OWL-ViT) -> one-graph tessera packages.

Used by ``export.py clipseg`` and ``export.py owlvit`` (see tools/export/README.md).  A package::

    model.toml       manifest, family = "segmenter" (CLIPSeg) or "detector" (OWL-ViT)
    model.onnx       ONE graph: image batch + prompt batch -> dense outputs
    tokenizer.json   HF tokenizers file, padding + truncation to the context length preset
    reference/       (--tiny only) PyTorch parity fixtures

* clipseg (``CLIPSegForImageSegmentation``): pixel_values [N,3,S,S], input_ids [N,L],
  attention_mask [N,L] -> logits [N,S,S].  One row per (image, prompt) pair, as HF does it.
* owlvit (``OwlViTForObjectDetection``): pixel_values [B,3,S,S], input_ids [Q,L],
  attention_mask [Q,L] -> logits [B,P,Q], pred_boxes [B,P,4] (cx, cy, w, h in [0,1]).
  The Q queries are shared by every image of the batch (HF's input_ids would be [B*Q,L]).

Both tiny models use the real OpenAI CLIP BPE vocabulary (the ``clip`` subcommand's
tokenizer construction) and are checked against PyTorch with ONNX Runtime.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import transformers

import common as C
from common import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

#: ImageNet mean/std: what CIDAS/clipseg-rd64(-refined)'s ViTImageProcessor normalises with.
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

#: Defaults of --tiny (seed of torch.manual_seed, and the std the random weights are drawn with).
DEFAULT_SEEDS = {"clipseg": 0, "owlvit": 0}
DEFAULT_INIT_STD = {"clipseg": 0.02, "owlvit": 0.1}

REF_PROMPTS = {"clipseg": ["a building", "a road", "water"], "owlvit": ["a car", "a ship"]}
#: Threshold of the segmentation maps (manifest + reference statistics).
CLIPSEG_THRESHOLD = 0.4
#: OWL-ViT manifest defaults.
OWLVIT_CONFIDENCE = 0.1
OWLVIT_IOU = 0.3

CLIPSEG_CONTEXT = 77  # openai/clip-vit-base-patch32 tokenizer, as CIDAS/clipseg-* ship it
OWLVIT_CONTEXT = 16   # google/owlvit-*: CLIPTokenizer(pad_token="!", model_max_length=16)


# --------------------------------------------------------------------------------------
# Tiny models
# --------------------------------------------------------------------------------------


def _init_weights(model: torch.nn.Module, std: float) -> None:
    """Re-draw every Linear/Conv/Embedding weight from N(0, std) (biases from N(0, std) too)."""
    if std == 0.02:
        return  # keep HF's own init
    for m in model.modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Embedding)):
            torch.nn.init.normal_(m.weight, 0.0, std)
            if getattr(m, "bias", None) is not None:
                torch.nn.init.normal_(m.bias, 0.0, std)


def build_tiny_clipseg(seed: int, init_std: float):
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation

    torch.manual_seed(seed)
    text = dict(vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
                pad_token_id=49407, hidden_size=16, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, hidden_act="quick_gelu")
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                  image_size=64, patch_size=16, hidden_act="quick_gelu")
    cfg = CLIPSegConfig(text_config=text, vision_config=vision, projection_dim=32,
                        extract_layers=[0, 1, 2], reduce_dim=16, decoder_num_attention_heads=2,
                        decoder_intermediate_size=32, conditional_layer=0,
                        use_complex_transposed_convolution=True)
    cfg._attn_implementation = "eager"
    model = CLIPSegForImageSegmentation(cfg).eval()
    _init_weights(model, init_std)
    return model


def build_tiny_owlvit(seed: int, init_std: float):
    from transformers import OwlViTConfig, OwlViTForObjectDetection

    torch.manual_seed(seed)
    text = dict(vocab_size=49408, max_position_embeddings=OWLVIT_CONTEXT, bos_token_id=49406,
                eos_token_id=49407, pad_token_id=0, hidden_size=16, intermediate_size=64,
                num_hidden_layers=2, num_attention_heads=2, hidden_act="quick_gelu")
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=64, patch_size=16, hidden_act="quick_gelu")
    # the class head compares dense0(image) (width = text hidden) with the projected text: projection_dim
    # must equal the text hidden size (512 and 512 in the real checkpoints)
    cfg = OwlViTConfig(text_config=text, vision_config=vision, projection_dim=16)
    cfg._attn_implementation = "eager"
    model = OwlViTForObjectDetection(cfg).eval()
    _init_weights(model, init_std)
    return model


# --------------------------------------------------------------------------------------
# Graph wrappers
# --------------------------------------------------------------------------------------


class ClipSegGraph(torch.nn.Module):
    """pixel_values [N,3,S,S], input_ids/attention_mask [N,L] -> logits [N,S,S] (HF forward)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values, input_ids, attention_mask):
        # interpolate_pos_encoding=False: the eager HF default (True) uses the learned position
        # table unchanged when S matches; False keeps a bicubic Resize out of the traced graph.
        return self.model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask,
                          interpolate_pos_encoding=False, return_dict=True).logits


class OwlViTGraph(torch.nn.Module):
    """pixel_values [B,3,S,S], input_ids/attention_mask [Q,L] -> logits [B,P,Q], pred_boxes [B,P,4].

    The same computation as ``OwlViTForObjectDetection.forward`` with the Q queries
    repeated for every image, but the text tower runs once per query instead of B times.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values, input_ids, attention_mask):
        m = self.model
        feature_map, _ = m.image_embedder(pixel_values=pixel_values)
        b, h, w, d = feature_map.shape
        image_feats = feature_map.reshape(b, h * w, d)
        text = m.owlvit.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        text = m.owlvit.text_projection(text)
        text = text / torch.linalg.norm(text, ord=2, dim=-1, keepdim=True)  # OwlViTModel's text_embeds
        q = text.shape[0]
        query_embeds = text.unsqueeze(0).expand(b, q, text.shape[-1])
        query_mask = (input_ids[:, 0] > 0).unsqueeze(0).expand(b, q)  # HF: first token 0 = padded query
        logits, _ = m.class_predictor(image_feats, query_embeds, query_mask)
        boxes = m.box_predictor(image_feats, feature_map)
        return logits, boxes


def hf_owlvit(model, pixel_values: torch.Tensor, ids: np.ndarray, mask: np.ndarray):
    """HF's own OwlViTForObjectDetection.forward, queries tiled per image as the processor does."""
    b = pixel_values.shape[0]
    out = model(input_ids=torch.from_numpy(np.tile(ids, (b, 1))), pixel_values=pixel_values,
                attention_mask=torch.from_numpy(np.tile(mask, (b, 1))), return_dict=True)
    return out


def hf_clipseg(model, pixel_values: torch.Tensor, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return model(input_ids=torch.from_numpy(ids), pixel_values=pixel_values,
                 attention_mask=torch.from_numpy(mask), return_dict=True).logits.numpy()


# --------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------


def make_tokenizer(kind: str, bpe_vocab: str | None):
    """The real-vocabulary CLIP tokenizer, set up as the HF processor of the family uses it."""
    bpe = C.find_bpe_vocab(bpe_vocab)
    if kind == "clipseg":
        tok = C.build_real_vocab_tokenizer(bpe, CLIPSEG_CONTEXT)
    else:
        tok = C.load_real_vocab_tokenizer(bpe, model_max_length=OWLVIT_CONTEXT, pad_token="!")
        if tok.pad_token_id != 0:
            raise RuntimeError(f"OWL-ViT pad token '!' has id {tok.pad_token_id}, expected 0")
    return tok


def tokenize(tok, texts: list[str], padding, max_length: int | None = None):
    enc = tok(texts, padding=padding, truncation=max_length is not None, max_length=max_length,
              return_tensors="np")
    return enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)


# --------------------------------------------------------------------------------------
# Verification (ONNX Runtime vs PyTorch)
# --------------------------------------------------------------------------------------


def verify_clipseg(path: Path, model, tok, size: int, tol: float) -> dict:
    sess = C.ort_session(path)
    gen = torch.Generator().manual_seed(4321)
    texts = ["a building", "a long straight road next to a river", "water", "trees"]
    worst = {}
    for n, padding in ((1, "max_length"), (3, "max_length"), (4, True), (2, True)):
        px = torch.randn(n, 3, size, size, generator=gen)
        ids, mask = tokenize(tok, texts[:n], padding, CLIPSEG_CONTEXT if padding == "max_length" else None)
        ref = hf_clipseg(model, px, ids, mask)
        got = sess.run(None, {"pixel_values": px.numpy(), "input_ids": ids, "attention_mask": mask})[0]
        if got.shape != ref.shape:
            raise RuntimeError(f"clipseg ONNX shape {got.shape} != PyTorch {ref.shape}")
        worst[f"n{n}_L{ids.shape[1]}"] = C.rel_diff(got, ref)
    print(f"export: clipseg ONNX vs PyTorch (max diff / max(1,|ref|)): {worst}", file=sys.stderr)
    bad = {k: v for k, v in worst.items() if not v < tol}
    if bad:
        raise RuntimeError(f"clipseg ONNX Runtime differs from PyTorch: {bad} (tolerance {tol})")
    return worst


def verify_owlvit(path: Path, model, tok, size: int, tol: float) -> dict:
    sess = C.ort_session(path)
    gen = torch.Generator().manual_seed(4321)
    texts = ["a car", "a ship in a harbour", "an airplane", "a large white storage tank"]
    worst = {}
    for b, q in ((1, 1), (1, 3), (3, 2), (2, 4)):
        px = torch.randn(b, 3, size, size, generator=gen)
        ids, mask = tokenize(tok, texts[:q], "max_length", None)
        out = hf_owlvit(model, px, ids, mask)
        got_l, got_b = sess.run(None, {"pixel_values": px.numpy(), "input_ids": ids, "attention_mask": mask})
        ref_l, ref_b = out.logits.numpy(), out.pred_boxes.numpy()
        if got_l.shape != ref_l.shape or got_b.shape != ref_b.shape:
            raise RuntimeError(f"owlvit ONNX shapes {got_l.shape},{got_b.shape} != {ref_l.shape},{ref_b.shape}")
        worst[f"b{b}_q{q}"] = max(C.rel_diff(got_l, ref_l), C.rel_diff(got_b, ref_b))
    print(f"export: owlvit ONNX vs HF PyTorch (max diff / max(1,|ref|)): {worst}", file=sys.stderr)
    bad = {k: v for k, v in worst.items() if not v < tol}
    if bad:
        raise RuntimeError(f"owlvit ONNX Runtime differs from PyTorch: {bad} (tolerance {tol})")
    return worst


# --------------------------------------------------------------------------------------
# Manifests
# --------------------------------------------------------------------------------------


def _common_sections(size, mean, std, context_length, pad_id, bos_id, eos_id, ctx_comment):
    return [
        C.preprocess_section(size, mean, std),
        ("tokenizer", [
            ("file", "tokenizer.json", ""),
            ("context_length", int(context_length), ctx_comment),
            ("pad_token_id", int(pad_id), ""),
            ("bos_token_id", int(bos_id), ""),
            ("eos_token_id", int(eos_id), ""),
        ]),
    ]


def write_clipseg_manifest(path: Path, *, name, trained, source, size, mean, std, tok) -> None:
    C.write_toml(path, [
        (None, [("family", "segmenter", ""), ("name", name, ""), ("trained", trained, ""), ("source", source, "")]),
        ("model", [
            ("onnx", "model.onnx", ""),
            ("input", "pixel_values", "float32 [N,3,S,S], normalised; one row per (image, prompt)"),
            ("output", "logits", "float32 [N,S,S]"),
        ]),
        ("prompted", [
            ("input_ids", "input_ids", "int64 [N,L]"),
            ("attention_mask", "attention_mask", "int64 [N,L]"),
        ]),
        *_common_sections(size, mean, std, CLIPSEG_CONTEXT, tok.pad_token_id, tok.bos_token_id,
                          tok.eos_token_id, "pad/truncate to this length (any L <= 77 gives the same logits)"),
        ("segmentation", [
            ("format", "clipseg", "logits [N, H, W], one map per (image, prompt); sigmoid gives P(prompt)"),
            ("classes", [], "the prompts are the classes"),
            ("threshold", CLIPSEG_THRESHOLD, "on sigmoid(logits)"),
        ]),
    ])


def write_owlvit_manifest(path: Path, *, name, trained, source, size, mean, std, tok) -> None:
    C.write_toml(path, [
        (None, [("family", "detector", ""), ("name", name, ""), ("trained", trained, ""), ("source", source, "")]),
        ("model", [
            ("onnx", "model.onnx", ""),
            ("input", "pixel_values", "float32 [B,3,S,S], normalised"),
            ("output", "logits", "float32 [B,P,Q], raw; sigmoid gives the score"),
        ]),
        ("prompted", [
            ("input_ids", "input_ids", "int64 [Q,L], queries shared by the image batch"),
            ("attention_mask", "attention_mask", "int64 [Q,L]"),
            ("boxes", "pred_boxes", "float32 [B,P,4], cx cy w h in [0,1]"),
        ]),
        *_common_sections(size, mean, std, OWLVIT_CONTEXT, tok.pad_token_id, tok.bos_token_id,
                          tok.eos_token_id, "HF OwlViTProcessor: padding=max_length to 16"),
        ("detection", [
            ("format", "owlvit", ""),
            ("classes", [], "the queries are the classes"),
            ("confidence", OWLVIT_CONFIDENCE, "on sigmoid(logits)"),
            ("iou", OWLVIT_IOU, "NMS IoU"),
        ]),
    ])


# --------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------


def clipseg_reference(model, tok, size, mean, std) -> tuple[dict, dict[str, np.ndarray]]:
    names, images_u8 = C.make_reference_images(size)
    pixels = C.preprocess_u8(images_u8, mean, std)
    prompts = REF_PROMPTS["clipseg"]
    n, p = len(names), len(prompts)
    ids77, mask77 = tokenize(tok, prompts, "max_length", CLIPSEG_CONTEXT)
    ids_l, mask_l = tokenize(tok, prompts, True)  # processor(..., padding=True): pad to the longest
    rows_ids = np.tile(ids77, (n, 1))
    rows_mask = np.tile(mask77, (n, 1))
    rows_px = np.repeat(pixels, p, axis=0)
    logits = hf_clipseg(model, torch.from_numpy(rows_px), rows_ids, rows_mask)
    logits_l = hf_clipseg(model, torch.from_numpy(rows_px), np.tile(ids_l, (n, 1)), np.tile(mask_l, (n, 1)))
    probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    above = (probs > CLIPSEG_THRESHOLD).reshape(n * p, -1).mean(axis=1)
    # how different the prompts' maps are, per image: min over prompt pairs of max |dprob|
    pm = probs.reshape(n, p, -1)
    pair_diff = min(float(np.abs(pm[:, a] - pm[:, c]).max()) for a in range(p) for c in range(a + 1, p))
    cases = ["a satellite image of a forest", "  Flooded   RIVER delta, 2023!  ", ""]
    c_ids, c_mask = tokenize(tok, cases, "max_length", CLIPSEG_CONTEXT)
    ref = {
        "description": "PyTorch (HF CLIPSegForImageSegmentation) parity fixtures (tools/export/prompted_export.py).",
        "prompts": prompts,
        "context_length": CLIPSEG_CONTEXT,
        "token_ids": ids77.tolist(),
        "attention_mask": mask77.tolist(),
        "token_rule": "HF tokenizer(prompts, padding='max_length', truncation=True, max_length=77); "
                      "pad id 49407 (<|endoftext|>) after EOS, mask 0 there",
        "token_ids_longest": ids_l.tolist(),
        "attention_mask_longest": mask_l.tolist(),
        "token_rule_longest": "CLIPSegProcessor(text=prompts, padding=True): pads to the longest prompt; "
                              "gives the same logits (max abs diff in 'checks')",
        "tokenizer_cases": [{"text": s, "token_ids": i.tolist(), "attention_mask": m.tolist()}
                            for s, i, m in zip(cases, c_ids, c_mask)],
        **C.images_block(names, size, n),
        "mean": [float(x) for x in mean], "std": [float(x) for x in std],
        "pairs": "row r = image r // P, prompt r % P (image-major: for each image, for each prompt); "
                 "pixel_values rows = each image repeated P times, input_ids rows = the prompts tiled N times",
        "num_images": n, "num_prompts": p,
        "logits": {"file": "logits_f32.bin", "shape": [n * p, size, size], "dtype": "float32",
                   "byte_order": "little-endian", "layout": "[N*P, S, S] row-major, rows as in 'pairs'"},
        "probs": {"file": "probs_f32.bin", "shape": [n * p, size, size], "dtype": "float32",
                  "byte_order": "little-endian", "formula": "sigmoid(logits), computed in float64"},
        "logits_corner": [[float(x) for x in logits[r, :2, :2].ravel()] for r in range(n * p)],
        "threshold": CLIPSEG_THRESHOLD,
        "fraction_above_threshold": [float(x) for x in above],
        "prob_min": float(probs.min()), "prob_max": float(probs.max()),
        "min_pairwise_prompt_map_diff": pair_diff,
        "checks": {"longest_vs_max_length_logits_max_abs_diff": float(np.abs(logits - logits_l).max())},
    }
    bins = {**C.image_bins(images_u8, pixels),
            "logits_f32.bin": logits.astype("<f4").tobytes(), "probs_f32.bin": probs.astype("<f4").tobytes()}
    return ref, bins


def _hf_post_process(out, threshold: float, target_sizes):
    """HF OwlViTImageProcessor.post_process_object_detection (it does not use `self`).

    The processor module imports torchvision (and its PIL twin needs PIL); without them, the
    function and its helper ``_scale_boxes`` are taken verbatim from the installed source file.
    """
    try:
        from transformers.models.owlvit.image_processing_owlvit import OwlViTImageProcessor

        fn = OwlViTImageProcessor.post_process_object_detection
    except ImportError:
        import ast
        import importlib.util

        from transformers.image_transforms import center_to_corners_format

        spec = importlib.util.find_spec("transformers.models.owlvit.image_processing_owlvit")
        tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
        keep = []
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name == "_scale_boxes":
                keep.append(node)
            if isinstance(node, ast.ClassDef) and node.name == "OwlViTImageProcessor":
                keep += [f for f in node.body
                         if isinstance(f, ast.FunctionDef) and f.name == "post_process_object_detection"]
        if len(keep) != 2:
            raise RuntimeError("could not find post_process_object_detection in transformers' OWL-ViT source")
        for f in keep:
            f.decorator_list = []
            f.returns = None
            for a in f.args.args:
                a.annotation = None
        ns = {"torch": torch, "center_to_corners_format": center_to_corners_format}
        exec(compile(ast.Module(body=keep, type_ignores=[]), spec.origin, "exec"), ns)  # noqa: S102
        fn = ns["post_process_object_detection"]
    return fn(None, out, threshold=threshold, target_sizes=target_sizes)


def owlvit_reference(model, tok, size, mean, std, threshold: float | None) -> tuple[dict, dict[str, np.ndarray]]:
    names, images_u8 = C.make_reference_images(size)
    pixels = C.preprocess_u8(images_u8, mean, std)
    queries = REF_PROMPTS["owlvit"]
    n = len(names)
    ids, mask = tokenize(tok, queries, "max_length", None)  # what OwlViTProcessor does
    out = hf_owlvit(model, torch.from_numpy(pixels), ids, mask)
    logits, boxes = out.logits.numpy(), out.pred_boxes.numpy()
    scores = 1.0 / (1.0 + np.exp(-logits.astype(np.float64).max(axis=-1)))  # [B,P]
    if threshold is None:
        # The random model's scores cluster per image, so one threshold cannot keep a handful
        # of boxes on every image: one case per image, at that image's 5th best score (floored
        # to 3 decimals), each case post-processing the whole batch.
        per_image_5th = np.sort(scores, axis=1)[:, -5]
        thresholds = sorted({float(np.floor(x * 1000) / 1000) for x in per_image_5th})
    else:
        thresholds = [float(threshold)]
    target_sizes = [(size, size)] * n
    pp_cases = []
    for t in thresholds:
        dets = _hf_post_process(out, t, target_sizes)
        pp_cases.append({"threshold": t,
                         "detections": [{"boxes": d["boxes"].double().tolist(), "scores": d["scores"].double().tolist(),
                                         "labels": d["labels"].tolist()} for d in dets]})
    cases = ["a satellite image of a forest", "  Flooded   RIVER delta, 2023!  ", ""]
    c_ids, c_mask = tokenize(tok, cases, "max_length", None)
    ref = {
        "description": "PyTorch (HF OwlViTForObjectDetection) parity fixtures (tools/export/prompted_export.py).",
        "queries": queries,
        "context_length": OWLVIT_CONTEXT,
        "token_ids": ids.tolist(),
        "attention_mask": mask.tolist(),
        "token_rule": "OwlViTProcessor: tokenizer(queries, padding='max_length') with model_max_length 16, "
                      "pad token '!' (id 0) after EOS, mask 0 there; no truncation by the processor",
        "tokenizer_cases": [{"text": s, "token_ids": i.tolist(), "attention_mask": m.tolist()}
                            for s, i, m in zip(cases, c_ids, c_mask)],
        **C.images_block(names, size, n),
        "mean": [float(x) for x in mean], "std": [float(x) for x in std],
        "num_boxes_per_image": int(logits.shape[1]),
        "box_order": "patch order, row-major over the (S/patch) x (S/patch) grid",
        "logits": logits.astype(np.float64).tolist(),
        "logits_shape": list(logits.shape),
        "pred_boxes": boxes.astype(np.float64).tolist(),
        "pred_boxes_shape": list(boxes.shape),
        "pred_boxes_format": "cx, cy, w, h, normalised to [0,1] of the input image",
        "post_process": {
            "function": "OwlViTImageProcessor.post_process_object_detection (transformers "
                        f"{transformers.__version__})",
            "target_sizes": [list(t) for t in target_sizes],
            "rule": "per box: label = argmax over queries of logits, score = sigmoid(max logit); keep "
                    "score > threshold; box = (cx-w/2, cy-h/2, cx+w/2, cy+h/2) * (W, H, W, H); no NMS, "
                    "box order kept",
            "cases": pp_cases,
        },
    }
    bins = C.image_bins(images_u8, pixels)
    return ref, bins


# --------------------------------------------------------------------------------------
# Subcommands
# --------------------------------------------------------------------------------------


def export_prompted(args) -> None:
    kind = args.command
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tv = transformers.__version__
    if not args.tiny:
        raise SystemExit(f"{kind}: only --tiny is implemented (no hub access here); see tools/export/README.md")
    seed = DEFAULT_SEEDS[kind] if args.seed is None else args.seed
    init_std = DEFAULT_INIT_STD[kind] if args.init_std is None else args.init_std
    tok = make_tokenizer(kind, args.bpe_vocab)
    size = 64
    if kind == "clipseg":
        model = build_tiny_clipseg(seed, init_std)
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        model = build_tiny_owlvit(seed, init_std)
        mean, std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    name = args.name or f"{kind}-tiny-random"
    source = (f"random init, seed {seed}, init std {init_std}, transformers {tv}, torch {torch.__version__}")

    onnx_path = out / "model.onnx"
    px = torch.zeros(2, 3, size, size)
    print(f"export: writing {onnx_path} (opset {args.opset})", file=sys.stderr)
    if kind == "clipseg":
        ids, mask = tokenize(tok, ["a photo", "an aerial image of a river"], "max_length", CLIPSEG_CONTEXT)
        axes = {"pixel_values": {0: "n"}, "input_ids": {0: "n", 1: "seq"},
                "attention_mask": {0: "n", 1: "seq"}, "logits": {0: "n"}}
        C.export_onnx(ClipSegGraph(model).eval(), (px, torch.from_numpy(ids), torch.from_numpy(mask)), onnx_path,
                ["pixel_values", "input_ids", "attention_mask"], ["logits"], axes, args.opset)
    else:
        ids, mask = tokenize(tok, ["a photo", "an aerial image of a river", "a car"], "max_length", None)
        axes = {"pixel_values": {0: "batch"}, "input_ids": {0: "queries"}, "attention_mask": {0: "queries"},
                "logits": {0: "batch", 2: "queries"}, "pred_boxes": {0: "batch"}}
        C.export_onnx(OwlViTGraph(model).eval(), (px, torch.from_numpy(ids), torch.from_numpy(mask)), onnx_path,
                ["pixel_values", "input_ids", "attention_mask"], ["logits", "pred_boxes"], axes, args.opset)

    ctx = CLIPSEG_CONTEXT if kind == "clipseg" else OWLVIT_CONTEXT
    C.save_tokenizer_json(tok, out / "tokenizer.json", ctx)
    writer = write_clipseg_manifest if kind == "clipseg" else write_owlvit_manifest
    writer(out / "model.toml", name=name, trained=False, source=source, size=size, mean=mean, std=std, tok=tok)

    checks = {}
    if not args.skip_verify:
        verify = verify_clipseg if kind == "clipseg" else verify_owlvit
        checks = verify(onnx_path, model, tok, size, args.tolerance)

    if not args.no_reference:
        if kind == "clipseg":
            ref, bins = clipseg_reference(model, tok, size, mean, std)
            print(f"export: clipseg fraction above {CLIPSEG_THRESHOLD}: "
                  f"{[round(x, 3) for x in ref['fraction_above_threshold']]}, prob range "
                  f"[{ref['prob_min']:.3f}, {ref['prob_max']:.3f}], min prompt-pair diff "
                  f"{ref['min_pairwise_prompt_map_diff']:.3f}", file=sys.stderr)
        else:
            ref, bins = owlvit_reference(model, tok, size, mean, std, args.threshold)
            for case in ref["post_process"]["cases"]:
                print(f"export: owlvit post-process threshold {case['threshold']}: detections per image "
                      f"{[len(d['scores']) for d in case['detections']]}", file=sys.stderr)
        ref["seed"] = seed
        ref["init_std"] = init_std
        ref["onnx_precision"] = "fp32"
        ref["tolerance"] = {"rel": 1e-4, "rule": "max|onnx - ref| / max(1, max|ref|)"}
        ref["export_checks_onnx_vs_torch"] = checks
        C.write_reference(out, ref, bins)

    C.report_done(out)


#: command -> description
_COMMANDS = {"clipseg": "CLIPSeg (CLIPSegForImageSegmentation) as a 'segmenter' package",
             "owlvit": "OWL-ViT (OwlViTForObjectDetection) as a 'detector' package"}


def add_parser(sub, command: str) -> None:
    """Add the ``clipseg`` or ``owlvit`` subcommand to ``sub`` (export.py's subparsers)."""
    kind, desc = command, _COMMANDS[command]
    c = sub.add_parser(kind, help=f"export {desc}",
                       description=f"Export {desc}: one model.onnx taking images + text prompts, "
                                   "tokenizer.json, model.toml (see tools/export/README.md).")
    C.add_source_args(c, from_help="not implemented yet", tiny_help="seeded random model of the real architecture")
    C.add_out_arg(c)
    C.add_opset_arg(c)
    c.add_argument("--seed", type=int, default=None, help=f"--tiny: seed (default {DEFAULT_SEEDS[kind]})")
    c.add_argument("--init-std", type=float, default=None,
                   help=f"--tiny: std of the random weights (default {DEFAULT_INIT_STD[kind]}; 0.02 = HF init)")
    C.add_bpe_vocab_arg(c, help="path to bpe_simple_vocab_16e6.txt.gz")
    if kind == "owlvit":
        c.add_argument("--threshold", type=float, default=None,
                       help="post-process threshold of the reference (default: chosen to keep ~5 boxes/image)")
    C.add_name_arg(c)
    C.add_no_reference_arg(c)
    C.add_skip_verify_arg(c)
    C.add_tolerance_arg(c, 1e-4,
                        "max diff / max(1, max|ref|) allowed between ONNX Runtime and PyTorch (default 1e-4)")
    c.set_defaults(func=export_prompted)
