"""Open-vocabulary detectors (Grounding DINO, OWLv2) -> one-graph tessera ``detector`` packages.

Used by ``export.py grounding-dino`` and ``export.py owlv2`` (see tools/export/README.md).  A
package::

    model.toml       manifest, family = "detector", [detection] format "grounding-dino" / "owlv2"
    model.onnx       ONE graph: image batch + text -> logits, pred_boxes
    tokenizer.json   HF tokenizers file
    reference/       (--tiny only) PyTorch parity fixtures, after HF's own post-processing

* grounding-dino (``GroundingDinoForObjectDetection``): pixel_values [B,3,S,S], input_ids [B,L],
  attention_mask [B,L] -> logits [B,Q,T] (one logit per query and text position, T =
  max_text_len, -inf past the text), pred_boxes [B,Q,4] (cx, cy, w, h in [0,1]).  The prompts
  are ONE text, "ship. storage tank." (lower-cased, as ``GroundingDinoProcessor`` merges a
  list of labels), repeated for every image; ``token_type_ids`` are zeros and ``pixel_mask``
  ones inside the graph (what the processor gives a batch of equal-size images).
* owlv2 (``Owlv2ForObjectDetection``): pixel_values [B,3,S,S], input_ids [Q,L],
  attention_mask [Q,L] -> logits [B,P,Q], pred_boxes [B,P,4], as the OWL-ViT package (the Q
  queries shared by the batch).  ``Owlv2ImageProcessor`` pads an image to a square (bottom and
  right, value 0 before normalisation) before resizing, and post-processing scales boxes by
  the padded side: the reference has a non-square case made by HF's processor.

Tiny models: the real HF architectures with small configs built locally (Grounding DINO: a
small Swin backbone and a BERT text tower with a WordPiece vocabulary laid out as
bert-base-uncased's, so [CLS], [SEP], "." and "?" keep the ids 101, 102, 1012 and 1029 the
model hard-codes; OWLv2: the real CLIP BPE cut to its first merges).  Weights are redrawn
from N(0, init_std) so that scores and boxes are far from ties.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import torch
import transformers

import common as C
from common import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

DEFAULT_SEEDS = {"grounding-dino": 0, "owlv2": 0}
DEFAULT_INIT_STD = {"grounding-dino": 0.1, "owlv2": 0.1}
SIZES = {"grounding-dino": 128, "owlv2": 64}

#: Prompt sets of the references (a list of labels each, as users give --prompts).
REF_PROMPTS = {
    "grounding-dino": [["ship", "storage tank"], ["A Car", " building ", "oil tank", "harbour crane"]],
    "owlv2": [["a ship", "a storage tank"], ["a car", "a building", "a tank"]],
}
#: Manifest defaults (HF's post-processing defaults).
GDINO_BOX_THRESHOLD = 0.25
GDINO_TEXT_THRESHOLD = 0.25
GDINO_MAX_TEXT_LEN = 256
OWLV2_CONFIDENCE = 0.1
IOU = 0.3
OWLV2_CONTEXT = 16    # google/owlv2-*: CLIPTokenizer, model_max_length 16, pad token "!"
OWLV2_MERGES = 3000   # the first merges of the OpenAI CLIP BPE (tiny vocabulary)

#: Words the tiny BERT vocabulary holds whole (everything else goes to characters).
GDINO_WORDS = ["ship", "storage", "tank", "car", "building", "oil", "harbour", "crane", "a", "the",
               "of", "and", "road", "river", "plane", "truck", "solar", "panel", "##s", "##ing"]


# --------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------


def gdino_vocab() -> dict[str, int]:
    """A BERT-uncased WordPiece vocabulary with bert-base-uncased's layout of the first 1067
    ids: [PAD] 0, [unused0..98] 1-99, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103, [unusedN]
    up to 998, then the printable ASCII characters but upper-case letters from 999 ("." =
    1012, "?" = 1029); then "##" pieces and a few whole words."""
    toks = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    toks += [f"[unused{i}]" for i in range(99, 99 + 999 - len(toks))]
    assert len(toks) == 999
    chars = [chr(c) for c in range(33, 127) if not chr(c).isupper()]
    toks += chars
    toks += ["##" + ch for ch in chars if ch.isalnum()]
    toks += [w for w in GDINO_WORDS if w not in toks]
    vocab = {t: i for i, t in enumerate(toks)}
    assert vocab["."] == 1012 and vocab["?"] == 1029 and vocab["[CLS]"] == 101 and vocab["[SEP]"] == 102
    return vocab


def gdino_tokenizer():
    try:
        from transformers import BertTokenizerFast as Tok
    except ImportError:  # pragma: no cover - depends on the transformers release
        from transformers import BertTokenizer as Tok
    return Tok(vocab=gdino_vocab(), do_lower_case=True, model_max_length=GDINO_MAX_TEXT_LEN)


def owlv2_tokenizer():
    """HF CLIPTokenizer over the OpenAI CLIP BPE cut to its first OWLV2_MERGES merges (vocab:
    256 byte chars, the same with </w>, the merges, <|startoftext|>, <|endoftext|>)."""
    import gzip
    import json
    import tempfile

    bpe = C.find_bpe_vocab(None)
    lines = gzip.open(bpe).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 1 + OWLV2_MERGES]]
    vocab = list(C.bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False),
                                             encoding="utf-8")
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
                                              encoding="utf-8")
        tok = C.clip_tokenizer_class().from_pretrained(tmp, model_max_length=OWLV2_CONTEXT, pad_token="!")
    if tok.pad_token_id != 0:
        raise RuntimeError(f"OWLv2 pad token '!' has id {tok.pad_token_id}, expected 0")
    return tok


def merge_labels(labels: list[str]) -> str:
    """GroundingDinoProcessor._merge_candidate_labels_text: ["A cat", "a dog"] -> "a cat. a dog."."""
    return ". ".join(t.strip().lower() for t in labels) + "."


# --------------------------------------------------------------------------------------
# Tiny models
# --------------------------------------------------------------------------------------


def _init_weights(model: torch.nn.Module, std: float) -> None:
    """Re-draw every Linear/Conv/Embedding weight and bias from N(0, std)."""
    for m in model.modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Embedding)):
            torch.nn.init.normal_(m.weight, 0.0, std)
            if getattr(m, "bias", None) is not None:
                torch.nn.init.normal_(m.bias, 0.0, std)


def build_tiny_gdino(seed: int, init_std: float, vocab_size: int):
    from transformers import BertConfig, GroundingDinoConfig, GroundingDinoForObjectDetection, SwinConfig

    torch.manual_seed(seed)
    size = SIZES["grounding-dino"]
    backbone = SwinConfig(image_size=size, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
                          window_size=4, out_features=["stage2", "stage3", "stage4"])
    text = BertConfig(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=GDINO_MAX_TEXT_LEN)
    # decoder_layers >= 2: HF ties bbox_embed.1.. to bbox_embed.0 and needs one to tie.
    cfg = GroundingDinoConfig(backbone_config=backbone, text_config=text, num_queries=20, encoder_layers=1,
                              decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_attention_heads=2,
                              decoder_attention_heads=2, d_model=32, max_text_len=GDINO_MAX_TEXT_LEN)
    model = GroundingDinoForObjectDetection(cfg).eval()
    _init_weights(model, init_std)
    return model


def build_tiny_owlv2(seed: int, init_std: float, tok):
    from transformers import Owlv2Config, Owlv2ForObjectDetection

    torch.manual_seed(seed)
    text = dict(vocab_size=len(tok), max_position_embeddings=OWLV2_CONTEXT, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id, pad_token_id=0, hidden_size=16, intermediate_size=64,
                num_hidden_layers=2, num_attention_heads=2, hidden_act="quick_gelu")
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=SIZES["owlv2"], patch_size=16, hidden_act="quick_gelu")
    cfg = Owlv2Config(text_config=text, vision_config=vision, projection_dim=16)
    cfg._attn_implementation = "eager"
    model = Owlv2ForObjectDetection(cfg).eval()
    _init_weights(model, init_std)
    return model


# --------------------------------------------------------------------------------------
# Graph wrappers
# --------------------------------------------------------------------------------------


def _onnx_text_masks(input_ids, special_tokens):
    """``generate_masks_with_special_tokens_and_transfer_map`` of transformers' Grounding DINO
    without ``isin``/``cummax``/``cummin`` (no ONNX symbolic): the running max/min become a
    max/min over a triangular mask.  Integer results, checked equal to HF's by the exporter."""
    b, n = input_ids.shape
    special = (input_ids.unsqueeze(-1) == special_tokens.view(1, 1, -1)).any(-1)
    idx = torch.arange(n, device=input_ids.device)
    tri = idx.view(1, n) <= idx.view(n, 1)  # [i, j]: j <= i
    prev = torch.where(special, idx.unsqueeze(0), torch.full_like(input_ids, -1))
    prev = torch.where(tri.unsqueeze(0), prev.unsqueeze(1), torch.full_like(prev, -1).unsqueeze(1)).amax(-1)
    prev = torch.cat([prev.new_full((b, 1), -1), prev[:, :-1]], dim=1)
    nxt = torch.where(special, idx.unsqueeze(0), torch.full_like(input_ids, n))
    nxt = torch.where(tri.t().unsqueeze(0), nxt.unsqueeze(1), torch.full_like(nxt, n).unsqueeze(1)).amin(-1)
    valid = (nxt != 0) & (nxt != n - 1) & (nxt != n)
    att = (nxt.unsqueeze(2) == nxt.unsqueeze(1)) & valid.unsqueeze(1)
    att = (idx.view(n, 1) == idx.view(1, n)).unsqueeze(0) | att
    pos = idx.unsqueeze(0) - prev - 1
    pos = torch.where(valid, pos, torch.zeros_like(pos)).clamp(min=0).long()
    return att, pos


def _check_text_masks(model, tok) -> None:
    from transformers.models.grounding_dino import modeling_grounding_dino as mg

    special = model.model.special_tokens
    gen = torch.Generator().manual_seed(7)
    cases = [torch.tensor(tok([merge_labels(p) for p in REF_PROMPTS["grounding-dino"]][k:k + 1])["input_ids"])
             for k in range(2)]
    cases += [torch.randint(0, 1100, (3, 24), generator=gen), torch.tensor([[101, 1012, 1012, 2000, 102]]),
              torch.tensor([[101, 1029, 1050, 1012, 102, 0, 0]])]
    for ids in cases:
        a, p = mg.generate_masks_with_special_tokens_and_transfer_map(ids, special)
        a2, p2 = _onnx_text_masks(ids, special)
        if not (torch.equal(a, a2) and torch.equal(p, p2)):
            raise RuntimeError(f"the ONNX text masks differ from HF's on {ids.tolist()}")


class GroundingDinoGraph(torch.nn.Module):
    """pixel_values [B,3,S,S], input_ids/attention_mask [B,L] -> logits [B,Q,T], pred_boxes [B,Q,4]:
    ``GroundingDinoForObjectDetection.forward`` with token_type_ids 0 and pixel_mask 1."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values, input_ids, attention_mask):
        b, _, h, w = pixel_values.shape
        out = self.model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask,
                         token_type_ids=torch.zeros_like(input_ids),
                         pixel_mask=torch.ones(b, h, w, dtype=torch.long), return_dict=True)
        return out.logits, out.pred_boxes


class Owlv2Graph(torch.nn.Module):
    """pixel_values [B,3,S,S], input_ids/attention_mask [Q,L] -> logits [B,P,Q], pred_boxes [B,P,4]:
    ``Owlv2ForObjectDetection.forward`` with the Q queries repeated for every image (the text
    tower runs once per query instead of B times)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values, input_ids, attention_mask):
        m = self.model
        feature_map, _ = m.image_embedder(pixel_values=pixel_values)
        b, h, w, d = feature_map.shape
        image_feats = feature_map.reshape(b, h * w, d)
        text = m.owlv2.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        text = m.owlv2.text_projection(text)
        text = text / torch.linalg.norm(text, ord=2, dim=-1, keepdim=True)
        q = text.shape[0]
        query_embeds = text.unsqueeze(0).expand(b, q, text.shape[-1])
        query_mask = (input_ids[:, 0] > 0).unsqueeze(0).expand(b, q)
        logits, _ = m.class_predictor(image_feats, query_embeds, query_mask)
        boxes = m.box_predictor(image_feats, feature_map)
        return logits, boxes


def hf_gdino(model, pixel_values: torch.Tensor, ids: np.ndarray, mask: np.ndarray):
    b = pixel_values.shape[0]
    i = torch.from_numpy(np.tile(ids, (b, 1)))
    return model(pixel_values=pixel_values, input_ids=i, attention_mask=torch.from_numpy(np.tile(mask, (b, 1))),
                 token_type_ids=torch.zeros_like(i), return_dict=True)


def hf_owlv2(model, pixel_values: torch.Tensor, ids: np.ndarray, mask: np.ndarray):
    b = pixel_values.shape[0]
    return model(input_ids=torch.from_numpy(np.tile(ids, (b, 1))), pixel_values=pixel_values,
                 attention_mask=torch.from_numpy(np.tile(mask, (b, 1))), return_dict=True)


def tokenize(kind: str, tok, prompts: list[str]):
    """What each HF processor feeds the model: one merged text (Grounding DINO), or the
    queries padded to max_length 16 (OWLv2)."""
    if kind == "grounding-dino":
        enc = tok([merge_labels(prompts)], return_tensors="np")
    else:
        enc = tok(prompts, padding="max_length", return_tensors="np")
    return enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)


def _run_hf(kind, model, px, ids, mask):
    out = (hf_gdino if kind == "grounding-dino" else hf_owlv2)(model, px, ids, mask)
    return out, out.logits.numpy(), out.pred_boxes.numpy()


def verify(kind: str, path: Path, model, tok, size: int, tol: float) -> dict:
    sess = C.ort_session(path)
    gen = torch.Generator().manual_seed(4321)
    sets = [["a car"], ["ship", "storage tank", "harbour crane"], ["building", "a long road", "oil tank", "river"]]
    worst = {}
    for b, prompts in ((1, sets[0]), (3, sets[1]), (2, sets[2])):
        px = torch.randn(b, 3, size, size, generator=gen)
        ids, mask = tokenize(kind, tok, prompts)
        _, ref_l, ref_b = _run_hf(kind, model, px, ids, mask)
        feed_ids, feed_mask = (np.tile(ids, (b, 1)), np.tile(mask, (b, 1))) if kind == "grounding-dino" else (ids, mask)
        got_l, got_b = sess.run(None, {"pixel_values": px.numpy(), "input_ids": feed_ids, "attention_mask": feed_mask})
        if got_l.shape != ref_l.shape or got_b.shape != ref_b.shape:
            raise RuntimeError(f"{kind} ONNX shapes {got_l.shape},{got_b.shape} != {ref_l.shape},{ref_b.shape}")
        fin = np.isfinite(ref_l)
        if not np.array_equal(fin, np.isfinite(got_l)):
            raise RuntimeError(f"{kind}: ONNX and PyTorch logits are infinite at different places")
        worst[f"b{b}_L{ids.shape[1]}"] = max(C.rel_diff(got_l[fin], ref_l[fin]), C.rel_diff(got_b, ref_b))
    print(f"export: {kind} ONNX vs HF PyTorch (max diff / max(1,|ref|)): {worst}", file=sys.stderr)
    bad = {k: v for k, v in worst.items() if not v < tol}
    if bad:
        raise RuntimeError(f"{kind} ONNX Runtime differs from PyTorch: {bad} (tolerance {tol})")
    return worst


# --------------------------------------------------------------------------------------
# Manifests
# --------------------------------------------------------------------------------------


def write_manifest(path: Path, kind: str, *, name, trained, source, size, mean, std, tok,
                   max_text_len: int = GDINO_MAX_TEXT_LEN) -> None:
    if kind == "grounding-dino":
        prompted = [
            ("input_ids", "input_ids", "int64 [B,L]: the merged prompt text 'a. b.', one row per image"),
            ("attention_mask", "attention_mask", "int64 [B,L]"),
            ("boxes", "pred_boxes", "float32 [B,Q,4], cx cy w h in [0,1]"),
        ]
        tokenizer = [("file", "tokenizer.json", "BERT uncased WordPiece, [CLS] text [SEP], no padding"),
                     ("context_length", int(max_text_len), "max_text_len: the most tokens the text may have"),
                     ("pad_token_id", int(tok.pad_token_id), ""),
                     ("bos_token_id", int(tok.cls_token_id), "[CLS]"),
                     ("eos_token_id", int(tok.sep_token_id), "[SEP]")]
        detection = [
            ("format", "grounding-dino", "logits [B,Q,T] per text position; sigmoid, max over T = score"),
            ("classes", [], "the prompts are the classes"),
            ("confidence", GDINO_BOX_THRESHOLD, "box threshold, on max sigmoid(logits)"),
            ("text_threshold", GDINO_TEXT_THRESHOLD, "tokens above it make the phrase"),
            ("iou", IOU, "NMS IoU (tile merge)"),
        ]
        output = "float32 [B,Q,T] raw, -inf past the text; sigmoid gives token probabilities"
    else:
        prompted = [
            ("input_ids", "input_ids", "int64 [Q,L], queries shared by the image batch"),
            ("attention_mask", "attention_mask", "int64 [Q,L]"),
            ("boxes", "pred_boxes", "float32 [B,P,4], cx cy w h in [0,1] of the padded square"),
        ]
        tokenizer = [("file", "tokenizer.json", ""),
                     ("context_length", OWLV2_CONTEXT, "HF Owlv2Processor: padding=max_length to 16"),
                     ("pad_token_id", int(tok.pad_token_id), ""),
                     ("bos_token_id", int(tok.bos_token_id), ""),
                     ("eos_token_id", int(tok.eos_token_id), "")]
        detection = [
            ("format", "owlv2", "Owlv2ImageProcessor pads to a square with black (0) before resizing"),
            ("classes", [], "the queries are the classes"),
            ("confidence", OWLV2_CONFIDENCE, "on sigmoid(logits)"),
            ("iou", IOU, "NMS IoU"),
        ]
        output = "float32 [B,P,Q], raw; sigmoid gives the score"
    C.write_toml(path, [
        (None, [("family", "detector", ""), ("name", name, ""), ("trained", trained, ""), ("source", source, "")]),
        ("model", [("onnx", "model.onnx", ""), ("input", "pixel_values", "float32 [B,3,S,S], normalised"),
                   ("output", "logits", output)]),
        ("prompted", prompted),
        C.preprocess_section(size, mean, std),
        ("tokenizer", tokenizer),
        ("detection", detection),
    ])


# --------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------


def _thresholds(scores: np.ndarray) -> list[float]:
    """Per image, its 5th best score floored to 3 decimals (the random model's scores cluster
    per image, so one threshold cannot keep a handful of boxes on every image)."""
    k = min(5, scores.shape[1])
    return sorted({float(np.floor(x * 1000) / 1000) for x in np.sort(scores, axis=1)[:, -k]})


def _matched_prompt(prob_row: np.ndarray, token_prompt: list[int]) -> int:
    """tessera's label of a Grounding DINO box: the prompt holding the most probable token
    among the tokens of the prompts (not [CLS], [SEP], '.'); the first prompt among equals."""
    best, label = -1.0, -1
    for i, p in enumerate(token_prompt):
        if p >= 0 and prob_row[i] > best:
            best, label = float(prob_row[i]), p
    return label


def _token_prompts(tok, prompts: list[str]) -> list[int]:
    """For each token of the merged text, the index of the prompt it belongs to, or -1."""
    text = merge_labels(prompts)
    spans, at = [], 0
    for p in prompts:
        s = p.strip().lower()
        start = text.index(s, at)
        spans.append((start, start + len(s)))
        at = start + len(s)
    enc = tok(text, return_offsets_mapping=True)
    out = []
    for (a, b), tid in zip(enc["offset_mapping"], enc["input_ids"]):
        hit = [k for k, (s, e) in enumerate(spans) if b > a and a >= s and b <= e]
        out.append(hit[0] if hit else -1)
    return out


def gdino_reference(out_dir: Path, model, tok, size, mean, std, text_thresholds) -> tuple[dict, dict]:
    from tokenizers import Tokenizer
    from transformers import GroundingDinoImageProcessor, GroundingDinoProcessor

    processor = GroundingDinoProcessor(image_processor=GroundingDinoImageProcessor(), tokenizer=tok)
    names, images_u8 = C.make_reference_images(size)
    pixels = C.preprocess_u8(images_u8, mean, std)
    n = len(names)
    rust_tok = Tokenizer.from_file(str(out_dir / "tokenizer.json"))
    sets = []
    for prompts in REF_PROMPTS["grounding-dino"]:
        ids, mask = tokenize("grounding-dino", tok, prompts)
        proc_ids = processor(text=prompts, return_tensors="np")["input_ids"]
        if not np.array_equal(proc_ids, ids):
            raise RuntimeError("GroundingDinoProcessor tokenises the prompt list differently")
        if rust_tok.encode(merge_labels(prompts)).ids != ids[0].tolist():
            raise RuntimeError("tokenizer.json differs from the HF tokenizer")
        out, logits, boxes = _run_hf("grounding-dino", model, torch.from_numpy(pixels), ids, mask)
        probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
        scores = probs.max(axis=-1)
        token_prompt = _token_prompts(tok, prompts)
        cases = []
        for t in _thresholds(scores):
            for tt in text_thresholds:
                dets = processor.post_process_grounded_object_detection(
                    out, input_ids=torch.from_numpy(np.tile(ids, (n, 1))), threshold=t, text_threshold=tt,
                    target_sizes=[(size, size)] * n)
                per_image = []
                for i, d in enumerate(dets):
                    keep = np.nonzero(scores[i] > t)[0]
                    post = probs[i][keep]
                    phrases = list(d["text_labels"])
                    # the phrase from tokenizer.json (as the Rust side decodes) == HF's
                    for row, ph in zip(post, phrases):
                        pos = [k for k in range(1, post.shape[-1] - 1) if row[k] > tt]
                        if rust_tok.decode([int(ids[0][k]) for k in pos], skip_special_tokens=False) != ph:
                            raise RuntimeError(f"tokenizer.json decodes {pos} differently from HF: {ph!r}")
                    per_image.append({
                        "boxes": d["boxes"].double().tolist(), "scores": d["scores"].double().tolist(),
                        "phrases": phrases,
                        "labels": [_matched_prompt(row, token_prompt) for row in post],
                    })
                cases.append({"box_threshold": t, "text_threshold": tt, "detections": per_image})
        sets.append({"prompts": prompts, "text": merge_labels(prompts), "input_ids": ids[0].tolist(),
                     "token_prompt": token_prompt, "cases": cases,
                     "logits_shape": list(logits.shape),
                     "pred_boxes": boxes.astype(np.float64).tolist()})
    ref = {
        "description": "PyTorch (HF GroundingDinoForObjectDetection) parity fixtures (tools/export/open_vocab_export.py).",
        **C.images_block(names, size, n),
        "mean": [float(x) for x in mean], "std": [float(x) for x in std],
        "prompt_sets": sets,
        "post_process": {
            "function": "GroundingDinoProcessor.post_process_grounded_object_detection (transformers "
                        f"{transformers.__version__}), target_sizes (S, S)",
            "rule": "probs = sigmoid(logits) [Q,T]; score = max over T; keep score > box_threshold; box = "
                    "(cx-w/2, cy-h/2, cx+w/2, cy+h/2) * S, not clipped; phrase = decode(input_ids at the "
                    "positions 1..T-2 with prob > text_threshold), special tokens kept",
            "labels": "tessera's label, not HF's: the prompt whose tokens hold the most probable token "
                      "(token_prompt maps each token to its prompt, -1 for [CLS], '.', [SEP])",
        },
    }
    return ref, C.image_bins(images_u8, pixels)


def owlv2_reference(model, tok, size, mean, std) -> tuple[dict, dict]:
    from transformers import Owlv2ImageProcessor, Owlv2Processor

    proc = Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": size, "width": size},
                                                              image_mean=mean, image_std=std),
                          tokenizer=tok)
    names, images_u8 = C.make_reference_images(size)
    pixels = C.preprocess_u8(images_u8, mean, std)
    n = len(names)
    # HF's processor on the S x S images gives the same pixels (no padding, an identity resize).
    hf_px = proc.image_processor(images=list(images_u8), return_tensors="np")["pixel_values"]
    px_diff = float(np.abs(hf_px - pixels).max())
    if px_diff > 1e-5:
        raise RuntimeError(f"Owlv2ImageProcessor gives other pixels for S x S images (max diff {px_diff})")
    # A tile cut by the scene edge: the top CUT rows of image 0, padded to a square by HF.
    cut = 40
    crop = images_u8[0, :cut]
    crop_px = proc.image_processor(images=[crop], return_tensors="np")["pixel_values"].astype("<f4")
    sets = []
    for prompts in REF_PROMPTS["owlv2"]:
        ids, mask = tokenize("owlv2", tok, prompts)
        proc_ids = proc(text=[prompts], return_tensors="np")["input_ids"]
        if not np.array_equal(proc_ids, ids):
            raise RuntimeError("Owlv2Processor tokenises the queries differently")
        out, logits, boxes = _run_hf("owlv2", model, torch.from_numpy(pixels), ids, mask)
        scores = 1.0 / (1.0 + np.exp(-logits.astype(np.float64).max(axis=-1)))
        cases = []
        for t in _thresholds(scores):
            dets = proc.image_processor.post_process_object_detection(out, threshold=t, target_sizes=[(size, size)] * n)
            grounded = proc.post_process_grounded_object_detection(out, threshold=t, target_sizes=[(size, size)] * n,
                                                                   text_labels=[prompts] * n)
            for a, g in zip(dets, grounded):
                if not torch.equal(a["boxes"], g["boxes"]) or [prompts[k] for k in a["labels"]] != g["text_labels"]:
                    raise RuntimeError("post_process_object_detection and the grounded variant disagree")
            cases.append({"threshold": t, "detections": [
                {"boxes": d["boxes"].double().tolist(), "scores": d["scores"].double().tolist(),
                 "labels": d["labels"].tolist()} for d in dets]})
        # the edge tile: HF processor's padded pixels, boxes scaled to the original (cut, S) size
        cout, clog, _ = _run_hf("owlv2", model, torch.from_numpy(crop_px), ids, mask)
        cscores = 1.0 / (1.0 + np.exp(-clog.astype(np.float64).max(axis=-1)))
        ct = float(np.floor(np.sort(cscores[0])[-5] * 1000) / 1000)
        cd = proc.image_processor.post_process_object_detection(cout, threshold=ct, target_sizes=[(cut, size)])[0]
        sets.append({"prompts": prompts, "input_ids": ids.tolist(), "attention_mask": mask.tolist(), "cases": cases,
                     "edge_tile": {"threshold": ct, "boxes": cd["boxes"].double().tolist(),
                                   "scores": cd["scores"].double().tolist(), "labels": cd["labels"].tolist()}})
    ref = {
        "description": "PyTorch (HF Owlv2ForObjectDetection) parity fixtures (tools/export/open_vocab_export.py).",
        **C.images_block(names, size, n),
        "mean": [float(x) for x in mean], "std": [float(x) for x in std],
        "prompt_sets": sets,
        "edge_tile": {"image": 0, "rows": cut, "file": "edge_pixels_f32.bin", "shape": list(crop_px.shape),
                      "rule": "Owlv2ImageProcessor on images_u8[0, :rows]: rescale, pad bottom with 0 to S x S, "
                              "normalise; post-processed with target_sizes (rows, S): boxes * max(rows, S)"},
        "post_process": {
            "function": "Owlv2Processor.post_process_object_detection (and post_process_grounded_object_detection, "
                        f"equal) (transformers {transformers.__version__}), target_sizes (S, S)",
            "rule": "label = argmax over queries, score = sigmoid(max logit), keep score > threshold, box = "
                    "(cx-w/2, cy-h/2, cx+w/2, cy+h/2) * max(H, W); no NMS, not clipped, patch order",
        },
    }
    bins = {**C.image_bins(images_u8, pixels), "edge_pixels_f32.bin": crop_px.tobytes()}
    return ref, bins


# --------------------------------------------------------------------------------------
# Subcommands
# --------------------------------------------------------------------------------------

def tiny_processor(kind: str, tok, size: int, mean, std):
    """The HF processor of a tiny model (what ``--save-pretrained`` writes beside it)."""
    if kind == "grounding-dino":
        from transformers import GroundingDinoImageProcessor, GroundingDinoProcessor

        ip = GroundingDinoImageProcessor(size={"shortest_edge": size, "longest_edge": size}, image_mean=mean,
                                         image_std=std)
        return GroundingDinoProcessor(image_processor=ip, tokenizer=tok)
    from transformers import Owlv2ImageProcessor, Owlv2Processor

    ip = Owlv2ImageProcessor(size={"height": size, "width": size}, image_mean=mean, image_std=std)
    return Owlv2Processor(image_processor=ip, tokenizer=tok)


def load_checkpoint(kind: str, src: str):
    """(model, tokenizer, size, mean, std) of a checkpoint (hub id or save_pretrained folder
    with its processor files)."""
    from transformers import AutoTokenizer

    cfg = C.image_processor_config(src)
    size = C.square_size(cfg, SIZES[kind])
    mean, std = [float(x) for x in cfg["image_mean"]], [float(x) for x in cfg["image_std"]]
    if kind == "grounding-dino":
        from transformers import GroundingDinoForObjectDetection as Model
    else:
        from transformers import Owlv2ForObjectDetection as Model
    model = Model.from_pretrained(src).eval()
    if kind == "owlv2":
        model.config._attn_implementation = "eager"
    tok = AutoTokenizer.from_pretrained(src)
    if kind == "grounding-dino":
        ids = tok("a. b?")["input_ids"]
        special = model.model.special_tokens.tolist()
        if ids[0] not in special or ids[-1] not in special:
            raise SystemExit(f"export: {src}: the tokenizer's [CLS]/[SEP] ids {ids[0]}, {ids[-1]} are not among "
                             f"the model's special tokens {special}")
        if model.config.max_text_len < 8:
            raise SystemExit(f"export: {src}: max_text_len {model.config.max_text_len} is too short")
    elif tok.pad_token_id != 0:
        raise SystemExit(f"export: {src}: the OWLv2 pad token has id {tok.pad_token_id}, expected 0 ('!')")
    return model, tok, size, mean, std


def export_open_vocab(args) -> None:
    kind = args.command
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.tiny:
        seed = DEFAULT_SEEDS[kind] if args.seed is None else args.seed
        init_std = DEFAULT_INIT_STD[kind] if args.init_std is None else args.init_std
        size = SIZES[kind]
        if kind == "grounding-dino":
            tok = gdino_tokenizer()
            model = build_tiny_gdino(seed, init_std, len(tok))
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        else:
            tok = owlv2_tokenizer()
            model = build_tiny_owlv2(seed, init_std, tok)
            mean, std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
        name = args.name or f"{kind}-tiny-random"
        source = (f"random init, seed {seed}, init std {init_std}, transformers {transformers.__version__}, "
                  f"torch {torch.__version__}")
        if args.save_pretrained:
            model.save_pretrained(args.save_pretrained)
            tiny_processor(kind, tok, size, mean, std).save_pretrained(args.save_pretrained)
            print(f"export: saved the tiny model and processor to {args.save_pretrained}", file=sys.stderr)
    else:
        model, tok, size, mean, std = load_checkpoint(kind, args.source)
        name = args.name or Path(args.source.rstrip("/")).name
        source = f"{args.source}, transformers {transformers.__version__}, torch {torch.__version__}"
    if kind == "grounding-dino":
        _check_text_masks(model, tok)

    onnx_path = out / "model.onnx"
    print(f"export: writing {onnx_path} (opset {args.opset})", file=sys.stderr)
    px = torch.zeros(2, 3, size, size)
    # The TorchScript export changes the module it traces (the tied box heads): export a copy.
    if kind == "grounding-dino":
        from transformers.models.grounding_dino import modeling_grounding_dino as mg

        ids, mask = tokenize(kind, tok, ["a car", "ship"])
        axes = {"pixel_values": {0: "batch"}, "input_ids": {0: "batch", 1: "seq"},
                "attention_mask": {0: "batch", 1: "seq"}, "logits": {0: "batch"}, "pred_boxes": {0: "batch"}}
        hf_masks = mg.generate_masks_with_special_tokens_and_transfer_map
        mg.generate_masks_with_special_tokens_and_transfer_map = _onnx_text_masks
        try:
            C.export_onnx(GroundingDinoGraph(copy.deepcopy(model)).eval(),
                          (px, torch.from_numpy(np.tile(ids, (2, 1))), torch.from_numpy(np.tile(mask, (2, 1)))),
                          onnx_path, ["pixel_values", "input_ids", "attention_mask"], ["logits", "pred_boxes"], axes,
                          args.opset)
        finally:
            mg.generate_masks_with_special_tokens_and_transfer_map = hf_masks
        # one text, no padding or truncation (a checkpoint's tokenizer may come with either)
        tok.backend_tokenizer.no_padding()
        tok.backend_tokenizer.no_truncation()
        C.save_plain_tokenizer_json(tok, out / "tokenizer.json")
    else:
        ids, mask = tokenize(kind, tok, ["a photo", "an aerial image of a river", "a car"])
        axes = {"pixel_values": {0: "batch"}, "input_ids": {0: "queries"}, "attention_mask": {0: "queries"},
                "logits": {0: "batch", 2: "queries"}, "pred_boxes": {0: "batch"}}
        C.export_onnx(Owlv2Graph(copy.deepcopy(model)).eval(), (px, torch.from_numpy(ids), torch.from_numpy(mask)),
                      onnx_path, ["pixel_values", "input_ids", "attention_mask"], ["logits", "pred_boxes"], axes,
                      args.opset)
        C.save_tokenizer_json(tok, out / "tokenizer.json", OWLV2_CONTEXT)
    write_manifest(out / "model.toml", kind, name=name, trained=not args.tiny, source=source, size=size, mean=mean,
                   std=std, tok=tok, max_text_len=getattr(model.config, "max_text_len", 0))

    checks = {}
    if not args.skip_verify:
        checks = verify(kind, onnx_path, model, tok, size, args.tolerance)
    if args.tiny and not args.no_reference:
        if kind == "grounding-dino":
            ref, bins = gdino_reference(out, model, tok, size, mean, std, args.text_threshold or [0.25, 0.6])
        else:
            ref, bins = owlv2_reference(model, tok, size, mean, std)
        for s in ref["prompt_sets"]:
            for c in s["cases"]:
                print(f"export: {kind} {s['prompts']} {({k: v for k, v in c.items() if k != 'detections'})}: "
                      f"boxes per image {[len(d['scores']) for d in c['detections']]}", file=sys.stderr)
        ref["seed"] = seed
        ref["init_std"] = init_std
        ref["onnx_precision"] = "fp32"
        ref["export_checks_onnx_vs_torch"] = checks
        C.write_reference(out, ref, bins)
    C.report_done(out)


_COMMANDS = {"grounding-dino": "Grounding DINO (GroundingDinoForObjectDetection) as a 'detector' package",
             "owlv2": "OWLv2 (Owlv2ForObjectDetection) as a 'detector' package"}


def add_parser(sub, command: str) -> None:
    """Add the ``grounding-dino`` or ``owlv2`` subcommand to ``sub`` (export.py's subparsers)."""
    kind, desc = command, _COMMANDS[command]
    c = sub.add_parser(kind, help=f"export {desc}",
                       description=f"Export {desc}: one model.onnx taking images + text prompts, "
                                   "tokenizer.json, model.toml (see tools/export/README.md).")
    C.add_source_args(c, from_help="a hub id or a local save_pretrained folder of the model with its processor "
                                    "files (tokenizer, processor_config.json or preprocessor_config.json)",
                      tiny_help="seeded random model of the real architecture, with PyTorch references")
    C.add_out_arg(c)
    C.add_opset_arg(c)
    c.add_argument("--seed", type=int, default=None, help=f"--tiny: seed (default {DEFAULT_SEEDS[kind]})")
    c.add_argument("--init-std", type=float, default=None,
                   help=f"--tiny: std of the random weights (default {DEFAULT_INIT_STD[kind]})")
    c.add_argument("--save-pretrained", default=None, metavar="DIR",
                   help="--tiny: also save the tiny model and its processor there (for --from)")
    if kind == "grounding-dino":
        c.add_argument("--text-threshold", type=float, action="append", default=None,
                       help="text threshold of a reference case (repeatable; default 0.25 and 0.6)")
    C.add_name_arg(c)
    C.add_no_reference_arg(c)
    C.add_skip_verify_arg(c)
    C.add_tolerance_arg(c, 1e-4,
                        "max diff / max(1, max|ref|) allowed between ONNX Runtime and PyTorch (default 1e-4)")
    c.set_defaults(func=export_open_vocab)
