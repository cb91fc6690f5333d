"""SAM (``SamModel``) and SAM 2 (``Sam2Model``, the image predictor) -> ``promptable-segmenter``
tessera packages (``export.py sam``, ``export.py sam2``).

A package (tools/export/README.md, section "SAM")::

    model.toml           family = "promptable-segmenter"
    image_encoder.onnx   pixel_values [B,3,S,S] -> image_embeddings [B,C,h,w]     (once per tile)
    mask_decoder.onnx    image_embeddings [1,C,h,w], input_boxes [1,N,4], input_points [1,N,P,2],
                         input_labels [1,N,P] -> pred_masks [1,N,1,m,m], iou_scores [1,N,1]
    reference/           (--tiny, or --from with --reference) HF SamProcessor + SamModel outputs

The mask decoder is ``SamModel(image_embeddings=..., multimask_output=False)`` with boxes and
points in model-input pixels; ``P = 0`` is HF's boxes-only call.  ``--tiny`` builds a seeded
random ``SamModel`` of the real architecture (ViT image encoder with windowed and global
attention and relative positions, neck, prompt encoder, two-way transformer mask decoder) at a
small size; no download.  SAM 2 is the same layout with three encoder outputs (the two
high-resolution feature maps its mask decoder adds, then ``image_embeddings``), a square resize
and ``Sam2Processor.post_process_masks`` (one resize of the logits to the tile).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import transformers

import common as C

#: SamImageProcessor's normalisation (ImageNet).
SAM_MEAN = [0.485, 0.456, 0.406]
SAM_STD = [0.229, 0.224, 0.225]

#: --tiny defaults per command: the seed, and the std of the re-drawn weights (SAM: all of them;
#: SAM 2: the mask decoder's, the Hiera and the prompt encoder keep HF's init, as a full re-draw
#: gave masks that ignore the prompt).  Chosen so the reference masks cover 15-75 % of the tiles
#: and differ between prompts.
DEFAULT_SEED = {"sam": 0, "sam2": 1}
DEFAULT_INIT_STD = {"sam": 0.3, "sam2": 0.2}
REDRAWN = {"sam": ("",), "sam2": ("mask_decoder.",)}
#: --tiny input side S (SamProcessor longest_edge and pad_size) and patch size (S / 16 = 8x8 embedding).
TINY_SIZE = 128
TINY_PATCH = 16
#: Weights bigger than this go to an external-data file (ViT-H SAM is 2.5 GB).
EXTERNAL_DATA_BYTES = 1_500_000_000


#: The encoder outputs (= mask decoder inputs) of each kind, in order.
EMBEDDINGS = {"sam": ["image_embeddings"],
              "sam2": ["high_res_feats_0", "high_res_feats_1", "image_embeddings"]}


def image_embeddings(model, pixel_values) -> list:
    """The encoder outputs: SAM's one tensor, SAM 2's list of three."""
    e = model.get_image_embeddings(pixel_values)
    return list(e) if isinstance(e, (list, tuple)) else [e]


def decoder_embeddings(embs: list):
    """What ``image_embeddings=`` of the model's forward takes."""
    return embs[0] if len(embs) == 1 else list(embs)


class ImageEncoder(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return tuple(image_embeddings(self.model, pixel_values))


class MaskDecoder(torch.nn.Module):
    """Prompt encoder + mask decoder on one image's embedding, multimask_output=False."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, *args):
        *embs, input_boxes, input_points, input_labels = args
        out = self.model(image_embeddings=decoder_embeddings(embs), input_boxes=input_boxes,
                         input_points=input_points, input_labels=input_labels, multimask_output=False)
        return out.pred_masks, out.iou_scores


def build_tiny(kind: str, seed: int, init_std: float):
    """A small random SamModel (2 ViT layers, one windowed, one global, 32 wide) or Sam2Model
    (a 4-stage Hiera of 5 blocks, one global, 16..128 wide, FPN 32), S=128."""
    torch.manual_seed(seed)
    if kind == "sam2":
        hiera = transformers.Sam2HieraDetConfig(
            hidden_size=16, image_size=[TINY_SIZE, TINY_SIZE], blocks_per_stage=[1, 2, 1, 1],
            embed_dim_per_stage=[16, 32, 64, 128], num_attention_heads_per_stage=[1, 1, 2, 2],
            window_size_per_stage=[4, 4, 4, 2], global_attention_blocks=[2],
            window_positional_embedding_background_size=[2, 2])
        s0 = TINY_SIZE // 4
        cfg = transformers.Sam2Config(
            vision_config=dict(backbone_config=hiera, backbone_channel_list=[128, 64, 32, 16],
                               backbone_feature_sizes=[[s0, s0], [s0 // 2, s0 // 2], [s0 // 4, s0 // 4]],
                               fpn_hidden_size=32),
            prompt_encoder_config=dict(hidden_size=32, image_size=TINY_SIZE, patch_size=TINY_PATCH,
                                       mask_input_channels=4),
            mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_hidden_layers=2, num_attention_heads=2,
                                     iou_head_hidden_dim=32),
        )
        return _redraw(transformers.Sam2Model(cfg).eval(), seed, init_std, REDRAWN["sam2"])
    cfg = transformers.SamConfig(
        vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=TINY_SIZE,
                           patch_size=TINY_PATCH, window_size=4, global_attn_indexes=[1], output_channels=32,
                           num_pos_feats=16, mlp_dim=64, initializer_range=0.02),
        prompt_encoder_config=dict(hidden_size=32, image_size=TINY_SIZE, patch_size=TINY_PATCH,
                                   mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_hidden_layers=2, num_attention_heads=2,
                                 iou_head_hidden_dim=32),
    )
    return _redraw(transformers.SamModel(cfg).eval(), seed, init_std, REDRAWN["sam"])


def _redraw(model, seed: int, init_std: float, prefixes: tuple[str, ...]):
    """Re-draw the weights whose names start with one of ``prefixes`` from N(0, init_std)."""
    # Re-draw the weights: HF's init leaves near-zero mask logits (every mask a coin toss at
    # threshold 0), which would test nothing.  LayerNorms keep weight 1, bias 0.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name or name.endswith("norm.weight") or name.endswith("norm.bias"):
                continue
            if not name.startswith(prefixes):
                continue
            p.copy_(torch.randn(p.shape, generator=g) * init_std)
    return model


def make_processor(kind: str, size: int, mean, std):
    if kind == "sam2":
        ip = transformers.Sam2ImageProcessor(size={"height": size, "width": size},
                                             mask_size={"height": size // 4, "width": size // 4},
                                             image_mean=mean, image_std=std)
        return transformers.Sam2Processor(image_processor=ip)
    ip = transformers.SamImageProcessor(size={"longest_edge": size}, pad_size={"height": size, "width": size},
                                        mask_size={"longest_edge": size // 4},
                                        mask_pad_size={"height": size // 4, "width": size // 4},
                                        image_mean=mean, image_std=std)
    return transformers.SamProcessor(image_processor=ip)


def export_graphs(kind: str, model, out: Path, size: int, opset: int) -> None:
    enc_path, dec_path = out / "image_encoder.onnx", out / "mask_decoder.onnx"
    px = torch.zeros(1, 3, size, size)
    print(f"export: writing {enc_path} (opset {opset})", file=sys.stderr)
    names = EMBEDDINGS[kind]
    C.export_onnx(ImageEncoder(model).eval(), (px,), enc_path, ["pixel_values"], names,
                  {"pixel_values": {0: "batch"}, **{n: {0: "batch"} for n in names}}, opset,
                  external_data_bytes=EXTERNAL_DATA_BYTES)
    embs = image_embeddings(model, px)
    boxes = torch.tensor([[[10.0, 20.0, 60.0, 90.0], [30.0, 30.0, 100.0, 120.0]]]) * (size / 128)
    pts = torch.tensor([[[[40.0, 50.0]], [[60.0, 70.0]]]]) * (size / 128)
    labels = torch.ones(1, 2, 1, dtype=torch.long)
    print(f"export: writing {dec_path} (opset {opset})", file=sys.stderr)
    C.export_onnx(MaskDecoder(model).eval(), (*embs, boxes, pts, labels), dec_path,
                  names + ["input_boxes", "input_points", "input_labels"], ["pred_masks", "iou_scores"],
                  {"input_boxes": {1: "boxes"}, "input_points": {1: "boxes", 2: "points"},
                   "input_labels": {1: "boxes", 2: "points"}, "pred_masks": {1: "boxes"},
                   "iou_scores": {1: "boxes"}}, opset)


def write_manifest(path: Path, *, kind, name, trained, source, size, mean, std) -> None:
    resize = ("square", "Sam2Processor: resized to S x S") if kind == "sam2" else \
        ("longest", "SamProcessor: longest side to S, zero pad")
    C.write_toml(path, [
        (None, [("family", "promptable-segmenter", ""), ("architecture", kind, "informative"),
                ("name", name, ""), ("trained", trained, "" if trained else "false: random weights, masks mean nothing"),
                ("source", source, "")]),
        C.preprocess_section(size, mean, std),
        ("image_encoder", [("onnx", "image_encoder.onnx", ""), ("input", "pixel_values", "float32 [B,3,S,S]"),
                           ("outputs", EMBEDDINGS[kind], "float32 [B,C,h,w] each; mask_decoder inputs of these names")]),
        ("mask_decoder", [("onnx", "mask_decoder.onnx", ""),
                          ("boxes", "input_boxes", "float32 [1,N,4] x0,y0,x1,y1 model-input pixels"),
                          ("points", "input_points", "float32 [1,N,P,2], P may be 0"),
                          ("labels", "input_labels", "int64 [1,N,P] 1 fg, 0 bg"),
                          ("masks", "pred_masks", "float32 [1,N,1,m,m] logits"),
                          ("scores", "iou_scores", "float32 [1,N,1]")]),
        ("promptable", [("resize", resize[0], resize[1]),
                        ("mask_threshold", 0.0, "post_process_masks threshold")]),
    ])


# --------------------------------------------------------------------------------------
# References: HF SamProcessor + SamModel + post_process_masks
# --------------------------------------------------------------------------------------


def reference_tiles(size: int) -> list[tuple[str, np.ndarray]]:
    """Tiles (HWC uint8) at the model size, smaller (upscaled), bigger (antialiased downscale)
    and not square (padded)."""
    names, at_size = C.make_reference_images(size)
    _, big = C.make_reference_images(size * 3 // 2, seed=7)
    _, small = C.make_reference_images(size * 3 // 4, seed=11)
    return [
        (names[0], at_size[0]),
        (names[2], at_size[2]),
        (f"{names[1]}_small", small[1]),
        (f"{names[3]}_big", big[3]),
        (f"{names[2]}_wide", at_size[2][: size * 5 // 8, : size * 7 // 8]),
    ]


def prompts_for(h: int, w: int, k: int) -> list[dict]:
    """Boxes (and points) in tile pixels; the same proportions on every tile, shifted per tile."""
    f = lambda a, b, c, d: [round(a * w, 2), round(b * h, 2), round(c * w, 2), round(d * h, 2)]  # noqa: E731
    s = 0.03 * k
    prompts = [
        {"box": f(0.1 + s, 0.15, 0.55 + s, 0.6), "points": []},
        {"box": f(0.4, 0.3 + s, 0.95, 0.9), "points": []},
        {"box": f(0.05, 0.5, 0.45, 0.97 - s), "points": []},
        {"box": f(0.2, 0.2, 0.8, 0.8), "points": [{"xy": [round(0.5 * w, 2), round(0.45 * h, 2)], "label": 1}]},
        {"box": f(0.3 + s, 0.1, 0.9, 0.7), "points": [{"xy": [round(0.6 * w, 2), round(0.4 * h, 2)], "label": 1},
                                                      {"xy": [round(0.35 * w, 2), round(0.6 * h, 2)], "label": 0}]},
    ]
    return prompts


def hf_masks(model, proc, tile_u8: np.ndarray, prompts: list[dict]):
    """Masks and scores as HF gives them, one HF call per group of prompts with the same number of
    points (each exactly as HF runs it: no padding points).  The tile goes to the processor as
    float32 0..255 (tessera's tiles are floats: a uint8 tensor would round the resized pixels)."""
    img = torch.from_numpy(tile_u8.astype(np.float32)).permute(2, 0, 1)
    masks, scores, low = [None] * len(prompts), [None] * len(prompts), [None] * len(prompts)
    pixel_values = None
    for p in sorted({len(q["points"]) for q in prompts}):
        idx = [i for i, q in enumerate(prompts) if len(q["points"]) == p]
        kw = {"input_boxes": [[prompts[i]["box"] for i in idx]]}
        if p:
            kw["input_points"] = [[[pt["xy"] for pt in prompts[i]["points"]] for i in idx]]
            kw["input_labels"] = [[[pt["label"] for pt in prompts[i]["points"]] for i in idx]]
        inputs = proc(images=img, return_tensors="pt", **kw)
        pixel_values = inputs["pixel_values"]
        out = model(pixel_values=inputs["pixel_values"], input_boxes=inputs["input_boxes"],
                    input_points=inputs.get("input_points"), input_labels=inputs.get("input_labels"),
                    multimask_output=False)
        if "reshaped_input_sizes" in inputs:
            post = proc.post_process_masks(out.pred_masks, inputs["original_sizes"],
                                           inputs["reshaped_input_sizes"])[0]
            reshaped = [int(v) for v in inputs["reshaped_input_sizes"][0]]
        else:  # SAM 2: no padding, one resize to the original size
            post = proc.post_process_masks(out.pred_masks, inputs["original_sizes"])[0]
            reshaped = [int(v) for v in pixel_values.shape[-2:]]
        for j, i in enumerate(idx):
            masks[i] = post[j, 0].numpy().astype(np.uint8)
            scores[i] = float(out.iou_scores[0, j, 0])
            low[i] = out.pred_masks[0, j, 0].numpy()
    return pixel_values, reshaped, masks, scores, low


def build_reference(kind: str, model, proc, size: int, mean, std) -> tuple[dict, dict[str, bytes]]:
    tiles, bins = [], {}
    for k, (name, tile) in enumerate(reference_tiles(size)):
        h, w = tile.shape[:2]
        prompts = prompts_for(h, w, k)
        pixel_values, reshaped, masks, scores, low = hf_masks(model, proc, tile, prompts)
        emb = image_embeddings(model, pixel_values)[-1][0].numpy()
        bins[f"tile{k}_u8.bin"] = np.ascontiguousarray(tile).tobytes()
        bins[f"tile{k}_masks.bin"] = np.stack(masks).tobytes()
        bins[f"tile{k}_embedding.bin"] = emb.astype("<f4").tobytes()
        fractions = [round(float(m.mean()), 4) for m in masks]
        print(f"export: tile {k} {name} {h}x{w} -> {reshaped}: mask fractions {fractions}, "
              f"scores {[round(s, 4) for s in scores]}", file=sys.stderr)
        tiles.append({
            "name": name, "height": h, "width": w, "resized": reshaped,
            "image": {"file": f"tile{k}_u8.bin", "shape": [h, w, 3], "dtype": "uint8", "layout": "HWC, RGB"},
            "embedding": {"file": f"tile{k}_embedding.bin", "shape": list(emb.shape), "dtype": "float32",
                          "meaning": "the last encoder output (image_embeddings) of this tile"},
            "prompts": prompts,
            "masks": {"file": f"tile{k}_masks.bin", "shape": [len(prompts), h, w], "dtype": "uint8",
                      "meaning": "post_process_masks(pred_masks, original_sizes, reshaped_input_sizes) (> 0)"},
            "iou_scores": scores,
            "mask_fraction": fractions,
        })
    ref = {
        "transformers": transformers.__version__, "torch": torch.__version__,
        "size": size, "mean": list(mean), "std": list(std),
        "kind": kind,
        "how": f"{type(proc).__name__}(images=float32 tile 0..255 CHW, input_boxes, input_points, input_labels) -> "
               f"{type(model).__name__}(..., multimask_output=False) -> processor.post_process_masks; "
               "one call per point count",
        "tiles": tiles,
    }
    return ref, bins


def verify(kind: str, out: Path, model, size: int, tol: float) -> dict:
    """ONNX Runtime against PyTorch on random pixels (batch 2) and boxes with 0, 1 and 3 points."""
    enc, dec = C.ort_session(out / "image_encoder.onnx"), C.ort_session(out / "mask_decoder.onnx")
    g = torch.Generator().manual_seed(5)
    px = torch.randn(2, 3, size, size, generator=g)
    names = EMBEDDINGS[kind]
    refs = image_embeddings(model, px)
    got = enc.run(names, {"pixel_values": px.numpy()})
    checks = {n: C.rel_diff(g, r.numpy()) for n, g, r in zip(names, got, refs)}
    embs = [r[:1] for r in refs]
    for n, p in [(3, 0), (2, 1), (4, 3)]:
        xy = torch.rand(1, n, 2, generator=g) * size * 0.5
        boxes = torch.cat([xy, xy + torch.rand(1, n, 2, generator=g) * size * 0.5], -1)
        pts = torch.rand(1, n, p, 2, generator=g) * size
        labels = (torch.rand(1, n, p, generator=g) > 0.3).long()
        r = model(image_embeddings=decoder_embeddings(embs), input_boxes=boxes, input_points=pts if p else None,
                  input_labels=labels if p else None, multimask_output=False)
        m, s = dec.run(None, {**{n: e.numpy() for n, e in zip(names, embs)}, "input_boxes": boxes.numpy(),
                              "input_points": pts.numpy(), "input_labels": labels.numpy()})
        checks[f"pred_masks_n{n}_p{p}"] = C.rel_diff(m, r.pred_masks.numpy())
        checks[f"iou_scores_n{n}_p{p}"] = C.rel_diff(s, r.iou_scores.numpy())
    worst = max(checks.values())
    print(f"export: ONNX Runtime vs PyTorch: max rel diff {worst:.2e}", file=sys.stderr)
    if worst > tol:
        raise SystemExit(f"export: {out}: ONNX Runtime differs from PyTorch by {worst:.2e} (> {tol}): {checks}")
    return checks


def from_pretrained(kind: str, src: str):
    cfg = C.image_processor_config(src)
    mean, std = cfg.get("image_mean", SAM_MEAN), cfg.get("image_std", SAM_STD)
    if kind == "sam2":
        model = transformers.Sam2Model.from_pretrained(src).eval()
        sz = cfg.get("size") or {"height": 1024, "width": 1024}
        if sz.get("height") != sz.get("width"):
            raise SystemExit(f"export: {src}: size {sz} is not square")
        size = int(sz["height"])
        model_size = model.config.prompt_encoder_config.image_size
    else:
        model = transformers.SamModel.from_pretrained(src).eval()
        size = int((cfg.get("size") or {}).get("longest_edge", 1024))
        pad = cfg.get("pad_size") or {"height": size, "width": size}
        if pad.get("height") != size or pad.get("width") != size:
            raise SystemExit(f"export: {src}: pad_size {pad} is not the longest_edge {size} square")
        model_size = model.config.vision_config.image_size
    if model_size != size:
        raise SystemExit(f"export: {src}: image processor size {size} != the model's image_size {model_size}")
    return model, size, mean, std


def export_sam(args) -> None:
    kind = args.command
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.tiny:
        seed = DEFAULT_SEED[kind] if args.seed is None else args.seed
        init_std = DEFAULT_INIT_STD[kind] if args.init_std is None else args.init_std
        model, size, mean, std = build_tiny(kind, seed, init_std), TINY_SIZE, SAM_MEAN, SAM_STD
        name = args.name or f"{kind}-tiny-random"
        source = (f"random init, seed {seed}, init std {init_std}, transformers {transformers.__version__}, "
                  f"torch {torch.__version__}")
        trained = False
        if args.save_pretrained:
            # A checkpoint folder of the tiny model, to exercise --from (tools/export/README.md).
            model.save_pretrained(args.save_pretrained)
            make_processor(kind, size, mean, std).save_pretrained(args.save_pretrained)
    else:
        model, size, mean, std = from_pretrained(kind, args.source)
        name = args.name or Path(args.source.rstrip("/")).name
        source, trained = args.source, True
    export_graphs(kind, model, out, size, args.opset)
    write_manifest(out / "model.toml", kind=kind, name=name, trained=trained, source=source,
                   size=size, mean=mean, std=std)
    checks = {} if args.skip_verify else verify(kind, out, model, size, args.tolerance)
    if args.tiny and not args.no_reference:
        ref, bins = build_reference(kind, model, make_processor(kind, size, mean, std), size, mean, std)
        ref["seed"], ref["init_std"] = seed, init_std
        ref["export_checks_onnx_vs_torch"] = checks
        ref["tolerance"] = {"masks_iou": 0.99, "iou_scores_abs": 1e-4}
        C.write_reference(out, ref, bins)
    C.report_done(out)


_MODELS = {"sam": "SAM (SamModel)", "sam2": "SAM 2 (Sam2Model, image predictor)"}


def add_parser(sub, command: str) -> None:
    """Add the ``sam`` or ``sam2`` subcommand to ``sub`` (export.py's subparsers)."""
    what = _MODELS[command]
    c = sub.add_parser(command, help=f"export {what} as a 'promptable-segmenter' package",
                       description=f"Export {what}: image_encoder.onnx (once per tile) and "
                                   "mask_decoder.onnx (prompt encoder + mask decoder, boxes and points), "
                                   "model.toml (see tools/export/README.md, section SAM).")
    C.add_source_args(c, from_help="a local folder written by the model's and processor's save_pretrained "
                                    "(or a hub id)",
                      tiny_help="seeded random model of the real architecture, S=128, with reference/")
    C.add_out_arg(c)
    C.add_opset_arg(c)
    c.add_argument("--seed", type=int, default=None, help=f"--tiny: seed (default {DEFAULT_SEED[command]})")
    c.add_argument("--init-std", type=float, default=None,
                   help=f"--tiny: std of the re-drawn weights (default {DEFAULT_INIT_STD[command]})")
    c.add_argument("--save-pretrained", default=None, metavar="DIR",
                   help="--tiny: also write the random model and its SamProcessor with save_pretrained "
                        "(a checkpoint folder for --from)")
    C.add_name_arg(c)
    C.add_no_reference_arg(c, help="--tiny: do not write reference/")
    C.add_skip_verify_arg(c)
    C.add_tolerance_arg(c, 1e-4, "max diff / max(1, max|ref|) allowed between ONNX Runtime and PyTorch (default 1e-4)")
    c.set_defaults(func=export_sam)
