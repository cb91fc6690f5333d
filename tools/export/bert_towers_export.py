"""Dual encoders with a BERT-style WordPiece text tower: ``export.py flava``, ``export.py chinese-clip``.

Two families (tools/export/README.md, "FLAVA and Chinese-CLIP"):

* ``flava``: Hugging Face ``FlavaModel``.  The embeddings are the ones FLAVA's *contrastive*
  logits use (``FlavaForPreTraining``, global contrastive head): the encoders' last hidden
  state (after their final LayerNorm) at position 0 ([CLS]), through ``image_projection`` /
  ``text_projection``.  Not ``get_image_features`` / ``get_text_features``: those project every
  position, and the contrastive head takes ``[:, 0, :]`` of that.  Logit scale:
  ``exp(logit_scale)`` (the head's temperature, unclamped in eval mode).
* ``chinese-clip``: Hugging Face ``ChineseCLIPModel``: ``get_image_features`` (post-LayerNorm
  CLS of the ViT, ``visual_projection``) and ``get_text_features`` (the BERT text model's last
  hidden state at [CLS], with the attention mask, ``text_projection``).  Logit scale
  ``exp(logit_scale)``.

Both text towers are BERTs: WordPiece ids, an attention mask, and ``token_type_ids``, which do
matter (a learnt segment embedding is added to every position).  A single prompt is segment 0
everywhere, which is what the tokenizer returns and what the text graph feeds by itself
(zeros of the ids' shape), so the graphs take ``input_ids`` and ``attention_mask`` only.
Pooling is at [CLS] under the padding mask, so padding does not change the output (checked).

Package (same layout as ``clip``)::

    model.toml            family "flava" | "chinese-clip"; [prompts] templates for chinese-clip
    image_encoder.onnx    pixel_values [B,3,S,S] f32 -> image_embeds [B,D] f32 (not normalised)
    text_encoder.onnx     input_ids, attention_mask [B,L] i64 -> text_embeds [B,D] f32
    tokenizer.json        the BertTokenizer's backend (BertNormalizer, BertPreTokenizer,
                          WordPiece, [CLS] $A [SEP]), padding/truncation to L preset
    reference/            only with --tiny: PyTorch-computed parity fixtures

Usage::

    python tools/export/export.py flava --from DIR --out models/flava
    python tools/export/export.py chinese-clip --from DIR --out models/cn-clip-b16
    python tools/export/export.py flava --tiny --out sample_data/models/flava-tiny
    python tools/export/export.py chinese-clip --tiny --out sample_data/models/chinese-clip-tiny

``DIR`` is a local ``save_pretrained`` folder of the model with its processor (tokenizer files
and image processor settings).  ``--tiny`` builds a seeded random model of the real classes
with a small WordPiece vocabulary made with the ``tokenizers`` library (no download).
"""

from __future__ import annotations

import json
import sys
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import transformers

import common as C
from common import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

#: Chinese-CLIP's published zero-shot templates for EuroSAT (remote sensing), in the order of
#: ``eurosat_templates`` in OFA-Sys/Chinese-CLIP ``cn_clip/eval/cvinw_zeroshot_templates.py``:
#: the package default (``[prompts] templates``) of every chinese-clip export.
CHINESE_CLIP_EUROSAT_TEMPLATES = [
    "一张{}的卫星照片", "{}的卫星照片", "一张{}的高清卫星照片", "{}的高清卫星照片",
    "一张{}的清晰的卫星照片", "{}的清晰的卫星照片", "一张{}的高质量的卫星照片", "{}的高质量的卫星照片",
    "一张{}的卫星图", "{}的卫星图", "一张{}的高清卫星图", "{}的高清卫星图",
    "一张{}的清晰的卫星图", "{}的清晰的卫星图", "一张{}的高质量的卫星图", "{}的高质量的卫星图",
    "一张{}的卫星图片", "{}的卫星图片", "一张{}的高清卫星图片", "{}的高清卫星图片",
    "一张{}的清晰的卫星图片", "{}的清晰的卫星图片", "一张{}的高质量的卫星图片", "{}的高质量的卫星图片",
]


@dataclass
class Spec:
    """What differs between the two families."""
    family: str
    context_length: int                    # default L (pad/truncate length)
    ref_labels: list[str]
    ref_templates: list[str]
    tokenizer_cases: list[str]
    corpus: list[str]                      # --tiny: the text the tiny vocabulary covers
    extra_words: list[str]                 # --tiny: more whole words / ## pieces
    default_seed: int
    projection_dim: int
    init_std: float = 0.02
    templates: list[str] | None = None     # [prompts] templates written into the manifest
    notes: dict = field(default_factory=dict)


FLAVA = Spec(
    family="flava",
    context_length=77,     # what the transformers FLAVA examples pad to (max_length=77)
    ref_labels=["forest", "river", "city", "desert"],
    ref_templates=["a satellite photo of {}.", "an aerial image of {}."],
    tokenizer_cases=[
        "a satellite image of a forest",
        "  Flooded   RIVER delta, 2023!  ",
        "Sentinel-2 L2A scene: cloud-free? yes.",
        "Crème brûlée fields near Zürich",          # accents stripped by lower-casing BERT
        "farmlands xylophone qqq",                    # ## pieces, then a word made [UNK]
        " ".join(["farmland"] * 80) + " and a long river",
        "",
    ],
    corpus=[
        "a satellite photo of {}.", "an aerial image of {}.", "a satellite image of a forest",
        "forest river city desert farmland water fields urban flooded delta lake sea",
        "sentinel-2 l2a scene: cloud-free? yes. and a long river near zurich",
        "creme brulee, 2023 !",
    ],
    extra_words=["##s", "##land", "##lands", "##ed", "##ing", "##er", "##y", "xy", "##lo", "##phone",
                 "sentinel", "##-", "l2a"],
    default_seed=7,        # --scan-seeds 10 --init-std 0.3: 4 distinct top-1, min margin 0.152
    init_std=0.3,
    projection_dim=32,
    notes={"pooling": "image_projection(image last_hidden_state[:, 0, :]), "
                      "text_projection(text last_hidden_state[:, 0, :]) as in FlavaForPreTraining's "
                      "global contrastive head"},
)

CHINESE_CLIP = Spec(
    family="chinese-clip",
    context_length=52,     # the default of the original cn_clip.clip.tokenize
    ref_labels=["森林", "水体", "城市"],
    ref_templates=CHINESE_CLIP_EUROSAT_TEMPLATES,
    tokenizer_cases=[
        "一张森林的卫星图像。",
        "一张农田的卫星图像。",
        "城市，水体与农田！",
        "Sentinel-2 影像：无云？是的。",             # English lower-cased, full-width punctuation
        "森林 " * 40 + "和一条很长的河流",             # truncation at 52
        "一张沼泽的卫星照片",                           # 沼泽 not in the tiny vocabulary: [UNK] per character
        "",
    ],
    corpus=[
        *CHINESE_CLIP_EUROSAT_TEMPLATES, "一张{}的卫星图像。",
        "森林 水体 城市 农田 草地 裸地 道路 建筑 湿地 沙漠 河流 湖泊 港口 机场 工业区 住宅区 牧场 高速公路 永久作物",
        "和一条很长的河与流 影像 无云 是",
        "sentinel-2 jpeg 2023 ，。！？：、 , . ! ? :",
    ],
    extra_words=["sentinel", "##-", "jpeg", "##2"],
    default_seed=3,        # --scan-seeds 8 --init-std 0.3: 3 distinct top-1, min margin 0.120
    init_std=0.3,
    projection_dim=24,   # differs from flava-tiny's 32 on purpose (mismatched-width test packages)
    templates=CHINESE_CLIP_EUROSAT_TEMPLATES,
    notes={"pooling": "get_image_features / get_text_features (text at [CLS] under the mask)"},
)

SPECS = {"flava": FLAVA, "chinese-clip": CHINESE_CLIP}


# --------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------


def _bert_pieces(texts: list[str]) -> list[str]:
    """The words BERT's normaliser + pre-tokenizer (from ``tokenizers``) makes of ``texts``."""
    from tokenizers import normalizers, pre_tokenizers

    norm = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                      lowercase=True)
    pre = pre_tokenizers.BertPreTokenizer()
    words: list[str] = []
    for t in texts:
        words += [w for w, _ in pre.pre_tokenize_str(norm.normalize_str(t.replace("{}", " ")))]
    return words


def tiny_wordpiece_vocab(spec: Spec) -> dict[str, int]:
    """A small, deterministic WordPiece vocabulary: the special tokens, every character of the
    corpus (alone and as a ``##`` continuation), every whole word of it, and ``extra_words``.

    The words are what the ``tokenizers`` library's BertNormalizer + BertPreTokenizer make of
    the corpus, so the vocabulary covers exactly what the tokenizer will look up.  (A trained
    ``WordPieceTrainer`` vocabulary is not reproducible: its ties are broken in hash order.)
    """
    words = _bert_pieces(spec.corpus)
    chars = sorted({ch for w in words for ch in w})
    tokens = list(SPECIAL_TOKENS)
    tokens += chars
    tokens += ["##" + ch for ch in chars if not _is_cjk(ch)]
    tokens += sorted({w for w in words if len(w) > 1})
    tokens += spec.extra_words
    vocab: dict[str, int] = {}
    for t in tokens:
        vocab.setdefault(t, len(vocab))
    return vocab


def _is_cjk(ch: str) -> bool:
    return "CJK" in unicodedata.name(ch, "")


def bert_tokenizer(vocab: dict[str, int], context_length: int):
    """The HF tokenizer both models use (``BertTokenizer``, tokenizers-backed in transformers 5;
    ``BertTokenizerFast`` is the same class there), lower-casing, CJK characters split."""
    tok = _bert_tokenizer_class()(vocab=vocab, do_lower_case=True, tokenize_chinese_chars=True,
                                  model_max_length=context_length)
    return tok


def _bert_tokenizer_class():
    try:
        from transformers import BertTokenizerFast as Tok
    except ImportError:  # pragma: no cover - depends on the transformers release
        from transformers import BertTokenizer as Tok
    return Tok


def hf_tokenize(tok, texts: list[str], context_length: int):
    """Reference tokenisation: padding='max_length', truncation=True, max_length=L."""
    enc = tok(texts, padding="max_length", truncation=True, max_length=context_length, return_tensors="np")
    tt = enc.get("token_type_ids")
    if tt is not None and np.any(tt != 0):
        raise RuntimeError("the tokenizer gave non-zero token_type_ids for a single prompt")
    return enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)


def check_tokenizer_json(path: Path, tok, texts: list[str], context_length: int) -> None:
    """tokenizer.json (tokenizers, as the Rust side loads it) == the HF tokenizer, ids and mask."""
    from tokenizers import Tokenizer

    back = Tokenizer.from_file(str(path))
    if back.model.__class__.__name__ != "WordPiece":
        raise RuntimeError(f"{path}: model is {back.model.__class__.__name__}, not WordPiece")
    ids, mask = hf_tokenize(tok, texts, context_length)
    for k, text in enumerate(texts):
        enc = back.encode(text)
        if enc.ids != ids[k].tolist() or enc.attention_mask != mask[k].tolist():
            raise RuntimeError(f"tokenizer.json differs from the HF tokenizer on {text!r}")


# --------------------------------------------------------------------------------------
# Models and graph wrappers
# --------------------------------------------------------------------------------------


#: --tiny: CLIP's trained temperature (exp = 100); the init value 1/0.07 leaves a random
#: model's probabilities nearly uniform.
TINY_LOGIT_SCALE = 4.6052


def tiny_config(spec: Spec, vocab_size: int, init_std: float):
    text = dict(initializer_range=init_std, vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=spec.context_length, pad_token_id=0)
    vision = dict(initializer_range=init_std, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=64, patch_size=16)
    if spec.family == "flava":
        from transformers import FlavaConfig

        return FlavaConfig(
            text_config=text, image_config={**vision, "vocab_size": 64},
            multimodal_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=2),
            image_codebook_config=dict(hidden_size=16, vocab_size=64, num_groups=1, num_blocks_per_group=1),
            hidden_size=32, projection_dim=spec.projection_dim, init_codebook=False,
            initializer_range=init_std, logit_scale_init_value=TINY_LOGIT_SCALE,
        )
    from transformers import ChineseCLIPConfig

    return ChineseCLIPConfig(text_config=text, vision_config={**vision, "projection_dim": spec.projection_dim},
                             projection_dim=spec.projection_dim, initializer_range=init_std,
                             logit_scale_init_value=TINY_LOGIT_SCALE)


def build_random(spec: Spec, vocab_size: int, seed: int, init_std: float):
    """(the model, the FlavaForPreTraining around it or None), seeded, eval mode."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    config = tiny_config(spec, vocab_size, init_std)
    config._attn_implementation = "eager"
    if spec.family == "flava":
        from transformers import FlavaForPreTraining

        pre = FlavaForPreTraining(config).eval()
        return pre.flava, pre
    from transformers import ChineseCLIPModel

    return ChineseCLIPModel(config).eval(), None


class FlavaImage(torch.nn.Module):
    def __init__(self, flava):
        super().__init__()
        self.image_model, self.proj = flava.image_model, flava.image_projection

    def forward(self, pixel_values):
        hidden = self.image_model(pixel_values=pixel_values, return_dict=True).last_hidden_state
        return self.proj(hidden[:, 0, :])


class FlavaText(torch.nn.Module):
    def __init__(self, flava):
        super().__init__()
        self.text_model, self.proj = flava.text_model, flava.text_projection

    def forward(self, input_ids, attention_mask):
        hidden = self.text_model(input_ids=input_ids, attention_mask=attention_mask,
                                 token_type_ids=torch.zeros_like(input_ids), return_dict=True).last_hidden_state
        return self.proj(hidden[:, 0, :])


class ChineseClipImage(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model.get_image_features(pixel_values=pixel_values, return_dict=True).pooler_output


class ChineseClipText(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask,
                                            token_type_ids=torch.zeros_like(input_ids),
                                            return_dict=True).pooler_output


def wrappers(spec: Spec, model):
    if spec.family == "flava":
        return FlavaImage(model).eval(), FlavaText(model).eval()
    return ChineseClipImage(model).eval(), ChineseClipText(model).eval()


def model_logits_per_image(spec: Spec, model, pretraining, pixels: np.ndarray, tok, texts: list[str],
                           context_length: int) -> np.ndarray:
    """The model's own image-text logits [N_images, N_texts], through its own forward (the HF
    tokenizer's ids, mask and token_type_ids): what the exported embeddings must reproduce."""
    enc = tok(texts, padding="max_length", truncation=True, max_length=context_length, return_tensors="pt")
    px = torch.from_numpy(pixels)
    if spec.family == "chinese-clip":
        out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                    token_type_ids=enc["token_type_ids"], pixel_values=px, return_dict=True)
        return out.logits_per_image.numpy().astype(np.float64)
    # FlavaForPreTraining pairs image k with text k; take every (image, text) pair by tiling.
    n_i, n_t = px.shape[0], len(texts)
    rows = np.zeros((n_i, n_t))
    for i in range(n_i):
        out = pretraining(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                          token_type_ids=enc["token_type_ids"], pixel_values=px[i:i + 1].expand(n_t, -1, -1, -1),
                          return_loss=False, return_dict=True)
        rows[i] = out.contrastive_logits_per_image.numpy()[0]
    return rows


# --------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------


def verify_onnx(out: Path, image_enc, text_enc, tok, size: int, context_length: int, tol: float,
                texts: list[str]) -> dict:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        print("export: onnxruntime not installed, skipping ONNX/PyTorch parity check", file=sys.stderr)
        return {}
    img_sess = C.ort_session(out / "image_encoder.onnx")
    txt_sess = C.ort_session(out / "text_encoder.onnx")
    gen = torch.Generator().manual_seed(1234)
    worst = {"image": 0.0, "text": 0.0}
    for batch in (1, 3):
        px = torch.randn(batch, 3, size, size, generator=gen)
        ref = image_enc(px).numpy()
        got = img_sess.run(None, {"pixel_values": px.numpy()})[0]
        worst["image"] = max(worst["image"], C.rel_diff(got, ref))
        ids, mask = hf_tokenize(tok, texts[:batch], context_length)
        ref = text_enc(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
        got = txt_sess.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        worst["text"] = max(worst["text"], C.rel_diff(got, ref))
    print(f"export: ONNX vs PyTorch max rel diff: image {worst['image']:.3g}, text {worst['text']:.3g}",
          file=sys.stderr)
    for k, v in worst.items():
        if not v < tol:
            raise RuntimeError(f"{k} encoder: ONNX Runtime differs from PyTorch by {v} (tolerance {tol})")
    return worst


def check_padding_invariance(text_enc, tok, context_length: int, text: str) -> None:
    ids_full, mask_full = hf_tokenize(tok, [text], context_length)
    enc = tok([text], return_tensors="np")
    a = text_enc(torch.from_numpy(ids_full), torch.from_numpy(mask_full)).numpy()
    b = text_enc(torch.from_numpy(enc["input_ids"].astype(np.int64)),
                 torch.from_numpy(enc["attention_mask"].astype(np.int64))).numpy()
    diff = float(np.abs(a - b).max())
    if diff > 1e-5:
        raise RuntimeError(f"padding changes text_embeds by {diff}; is the mask used?")


def _l2n(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def check_against_model_logits(spec: Spec, model, pretraining, image_enc, text_enc, tok, pixels: np.ndarray,
                               texts: list[str], context_length: int, logit_scale: float) -> float:
    """logit_scale * cos(exported image embeds, exported text embeds) == the model's own logits."""
    want = model_logits_per_image(spec, model, pretraining, pixels, tok, texts, context_length)
    ids, mask = hf_tokenize(tok, texts, context_length)
    img = image_enc(torch.from_numpy(pixels)).numpy().astype(np.float64)
    txt = text_enc(torch.from_numpy(ids), torch.from_numpy(mask)).numpy().astype(np.float64)
    got = logit_scale * (_l2n(img) @ _l2n(txt).T)
    diff = float(np.abs(got - want).max())
    if diff > 1e-4:
        raise RuntimeError(f"exported embeddings give logits {diff} away from the model's own forward")
    print(f"export: embeddings reproduce the model's own image-text logits (max abs diff {diff:.2g})",
          file=sys.stderr)
    return diff


# --------------------------------------------------------------------------------------
# Manifest and reference
# --------------------------------------------------------------------------------------


def write_manifest(path: Path, *, spec: Spec, name: str, trained: bool, source: str, size: int, mean, std,
                   context_length: int, tok, logit_scale: float, templates: list[str] | None) -> None:
    C.write_toml(path, [
        (None, [
            ("family", spec.family, ""),
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
            ("input_ids", "input_ids", "int64 [B,L] WordPiece ids"),
            ("attention_mask", "attention_mask", "int64 [B,L]; token_type_ids are zeros inside the graph"),
            ("output", "text_embeds", "float32 [B,D], not L2-normalised"),
        ]),
        C.preprocess_section(size, mean, std),
        ("tokenizer", [
            ("file", "tokenizer.json", ""),
            ("context_length", int(context_length), "pad/truncate to this length"),
            ("pad_token_id", int(tok.pad_token_id), "[PAD]"),
            ("bos_token_id", int(tok.cls_token_id), "[CLS]"),
            ("eos_token_id", int(tok.sep_token_id), "[SEP]"),
        ]),
        ("scores", [
            ("logit_scale", float(logit_scale), "exp(logit_scale) of the checkpoint"),
        ]),
    ])
    if templates:
        # Written as UTF-8 (json.dumps escapes are valid TOML basic-string escapes).
        lines = ["", "[prompts]", "templates = ["]
        lines += [f"    {json.dumps(t, ensure_ascii=False)}," for t in templates]
        lines += ["]"]
        with open(path, "a", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")


def compute_reference(spec: Spec, image_enc, text_enc, tok, size: int, mean, std, context_length: int,
                      logit_scale: float) -> tuple[dict, np.ndarray, np.ndarray]:
    """reference.json (clip-tiny's keys), computed with PyTorch, float64 scoring."""
    names, images_u8 = C.make_reference_images(size)
    pixels = C.preprocess_u8(images_u8, mean, std)
    labels, templates = spec.ref_labels, spec.ref_templates
    prompts = [t.format(label) for label in labels for t in templates]
    ids, mask = hf_tokenize(tok, prompts, context_length)
    img = image_enc(torch.from_numpy(pixels)).numpy()
    txt = text_enc(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    t = _l2n(txt.astype(np.float64)).reshape(len(labels), len(templates), -1)
    label_embeds = _l2n(t.mean(axis=1))
    probs = _softmax(logit_scale * (_l2n(img.astype(np.float64)) @ label_embeds.T))
    cases_ids, cases_mask = hf_tokenize(tok, spec.tokenizer_cases, context_length)
    n = len(names)
    ref = {
        "description": "PyTorch-computed parity fixtures for this model package (tools/export/export.py "
                       f"{spec.family} --tiny).",
        "family": spec.family,
        "labels": labels,
        "templates": templates,
        "templates_are_package_default": spec.templates == templates,
        "prompts": prompts,
        "prompt_order": "label-major: for each label, for each template",
        "context_length": context_length,
        "token_ids": ids.tolist(),
        "attention_mask": mask.tolist(),
        "tokenizer_cases": [
            {"text": s, "token_ids": i.tolist(), "attention_mask": m.tolist()}
            for s, i, m in zip(spec.tokenizer_cases, cases_ids, cases_mask)
        ],
        **C.images_block(names, size, n),
        "mean": [float(x) for x in mean],
        "std": [float(x) for x in std],
        "image_embeds": img.astype(np.float64).tolist(),
        "text_embeds": txt.astype(np.float64).tolist(),
        "embeds_pooling": spec.notes["pooling"],
        "label_embeds": label_embeds.tolist(),
        "label_embeds_formula": "per label: l2norm(mean over templates of l2norm(text_embeds)))",
        "logit_scale": float(logit_scale),
        "probs": probs.tolist(),
        "probs_formula": "softmax over labels of logit_scale * cos(l2norm(image_embed), label_embed)",
        "top1": [labels[int(i)] for i in probs.argmax(axis=1)],
    }
    return ref, images_u8, pixels


def separation(probs: np.ndarray) -> tuple[int, float]:
    s = np.sort(probs, axis=1)
    return len(set(probs.argmax(axis=1).tolist())), float((s[:, -1] - s[:, -2]).min())


# --------------------------------------------------------------------------------------
# Real checkpoints
# --------------------------------------------------------------------------------------


def load_checkpoint(spec: Spec, src: str):
    """(model, pretraining wrapper or None, tokenizer, size, mean, std) of a save_pretrained folder."""
    pp = C.image_processor_config(src)
    if spec.family == "flava":
        from transformers import FlavaModel

        model = FlavaModel.from_pretrained(src, attn_implementation="eager").eval()
        image_size = model.config.image_config.image_size
        pretraining = _pretraining_around(model)
    else:
        from transformers import ChineseCLIPModel

        model = ChineseCLIPModel.from_pretrained(src, attn_implementation="eager").eval()
        image_size = model.config.vision_config.image_size
        pretraining = None
    tok = _bert_tokenizer_class().from_pretrained(src)
    if tok.backend_tokenizer.model.__class__.__name__ != "WordPiece":
        raise SystemExit(f"export: {src}: the tokenizer is not WordPiece")
    if pp.get("do_center_crop") is False:
        pp = {k: v for k, v in pp.items() if k != "crop_size"}
    size = C.square_size(pp, image_size)
    if size != image_size:
        raise SystemExit(f"export: {src}: image processor size {size} != the model's image_size {image_size}")
    return model, pretraining, tok, size, pp["image_mean"], pp["image_std"]


def _pretraining_around(flava):
    """A FlavaForPreTraining holding ``flava`` (its heads random, unused): its global contrastive
    logits are the reference the exported embeddings are checked against."""
    import copy

    from transformers import FlavaForPreTraining

    config = copy.deepcopy(flava.config)
    config.init_codebook = False
    pre = FlavaForPreTraining(config)   # builds a second random FlavaModel, replaced below
    pre.flava = flava
    return pre.eval()


# --------------------------------------------------------------------------------------
# The commands
# --------------------------------------------------------------------------------------


def _batch_axes(*names: str) -> dict:
    return {name: {0: "batch"} for name in names}


def export(args) -> None:
    spec = SPECS[args.command]
    if args.scan_seeds is not None:
        if not args.tiny:
            raise SystemExit("--scan-seeds only applies with --tiny")
        scan(spec, args.scan_seeds, spec.init_std if args.init_std is None else args.init_std)
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tv = transformers.__version__

    if args.tiny:
        seed = spec.default_seed if args.seed is None else args.seed
        context_length = args.context_length or spec.context_length
        vocab = tiny_wordpiece_vocab(spec)
        tok = bert_tokenizer(vocab, context_length)
        init_std = spec.init_std if args.init_std is None else args.init_std
        model, pretraining = build_random(spec, len(vocab), seed, init_std)
        size = 64
        mean, std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
        name = args.name or f"{spec.family}-tiny-random"
        source = (f"random init, seed {seed}, init std {init_std}, WordPiece vocabulary of {len(vocab)}, "
                  f"transformers {tv}, torch {torch.__version__}")
        trained = False
    else:
        seed = None
        model, pretraining, tok, size, mean, std = load_checkpoint(spec, args.source)
        max_pos = model.config.text_config.max_position_embeddings
        context_length = args.context_length or min(spec.context_length, max_pos)
        if context_length > max_pos:
            raise SystemExit(f"export: --context-length {context_length} > max_position_embeddings {max_pos}")
        name = args.name or Path(args.source.rstrip("/")).name
        source = f"{args.source}, exported with transformers {tv}, torch {torch.__version__}"
        trained = True

    image_enc, text_enc = wrappers(spec, model)
    logit_scale = float(model.logit_scale.detach().exp())

    dummy_px = torch.zeros(2, 3, size, size)
    dummy_ids, dummy_mask = hf_tokenize(tok, ["a photo", spec.ref_templates[0].format(spec.ref_labels[0])],
                                        context_length)
    print(f"export: writing {out}/image_encoder.onnx (opset {args.opset})", file=sys.stderr)
    C.export_onnx(image_enc, (dummy_px,), out / "image_encoder.onnx", ["pixel_values"], ["image_embeds"],
                  _batch_axes("pixel_values", "image_embeds"), args.opset, external_data_bytes=1 << 30)
    print(f"export: writing {out}/text_encoder.onnx (opset {args.opset})", file=sys.stderr)
    C.export_onnx(text_enc, (torch.from_numpy(dummy_ids), torch.from_numpy(dummy_mask)),
                  out / "text_encoder.onnx", ["input_ids", "attention_mask"], ["text_embeds"],
                  _batch_axes("input_ids", "attention_mask", "text_embeds"), args.opset,
                  external_data_bytes=1 << 30)
    check_padding_invariance(text_enc, tok, context_length, spec.ref_templates[0].format(spec.ref_labels[-1]))

    C.save_tokenizer_json(tok, out / "tokenizer.json", context_length)
    probe = [t.format(label) for label in spec.ref_labels for t in spec.ref_templates] + spec.tokenizer_cases
    check_tokenizer_json(out / "tokenizer.json", tok, probe, context_length)
    templates = spec.templates if args.templates is None else (args.templates or None)
    write_manifest(out / "model.toml", spec=spec, name=name, trained=trained, source=source, size=size,
                   mean=mean, std=std, context_length=context_length, tok=tok, logit_scale=logit_scale,
                   templates=templates)

    names, images_u8 = C.make_reference_images(size)
    pixels = C.preprocess_u8(images_u8, mean, std)
    first = [spec.ref_templates[0].format(label) for label in spec.ref_labels]
    if not args.skip_verify:
        check_against_model_logits(spec, model, pretraining, image_enc, text_enc, tok, pixels, first,
                                   context_length, logit_scale)
    if not args.skip_verify:
        verify_onnx(out, image_enc, text_enc, tok, size, context_length, args.tolerance, probe[:3])

    if args.tiny and not args.no_reference:
        ref, images_u8, pixels = compute_reference(spec, image_enc, text_enc, tok, size, mean, std,
                                                   context_length, logit_scale)
        ref["seed"] = seed
        ref["onnx_precision"] = "fp32"
        ref["tolerance"] = {"embeds_rel": 1e-4, "probs_abs": 1e-4}
        n_top1, margin = separation(np.asarray(ref["probs"]))
        ref["separation"] = {"distinct_top1": n_top1, "min_top1_margin": margin}
        if n_top1 < 2 or margin <= 0.02:
            print(f"export: WARNING seed {seed} separates the reference images poorly "
                  f"(distinct top-1 {n_top1}, min margin {margin:.3f})", file=sys.stderr)
        C.write_reference(out, ref, C.image_bins(images_u8, pixels))
        print(f"export: reference top-1 {ref['top1']}, distinct {n_top1}, min margin {margin:.3f}",
              file=sys.stderr)
    C.report_done(out)


def scan(spec: Spec, seeds: int, init_std: float) -> None:
    """Print how well each --tiny seed separates the reference images (to pick default_seed)."""
    vocab = tiny_wordpiece_vocab(spec)
    tok = bert_tokenizer(vocab, spec.context_length)
    for seed in range(seeds):
        model, _ = build_random(spec, len(vocab), seed, init_std)
        image_enc, text_enc = wrappers(spec, model)
        ref, _, _ = compute_reference(spec, image_enc, text_enc, tok, 64, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD,
                                      spec.context_length, float(model.logit_scale.detach().exp()))
        n_top1, margin = separation(np.asarray(ref["probs"]))
        print(f"seed {seed:3d}: distinct top-1 {n_top1}, min margin {margin:.3f}, top1 {ref['top1']}")


def add_parser(sub, command: str) -> None:
    """Add ``flava`` or ``chinese-clip`` to export.py's subparsers."""
    spec = SPECS[command]
    cls = "FlavaModel" if command == "flava" else "ChineseCLIPModel"
    c = sub.add_parser(
        command,
        help=f"export a {cls} (or a random tiny one) as a '{spec.family}' model package",
        description=f"Export a {cls}: image and text encoders with a dynamic batch axis, the "
                    "BertTokenizer as tokenizer.json. " + spec.notes["pooling"] + ".",
    )
    C.add_source_args(
        c,
        from_help=f"a local save_pretrained folder of a {cls} with its processor files (vocab.txt or "
                  "tokenizer.json, and preprocessor_config.json or processor_config.json)",
        tiny_help=f"build a seeded, randomly initialised {cls} of the real architecture with a tiny "
                  "WordPiece vocabulary (test fixture, trained = false)",
    )
    C.add_out_arg(c, help="output package directory (created)")
    C.add_opset_arg(c, help=f"ONNX opset version (default {C.DEFAULT_OPSET})")
    c.add_argument("--context-length", type=int, default=None,
                   help=f"pad/truncate length L (default {spec.context_length}, at most the text "
                        "model's max_position_embeddings)")
    c.add_argument("--template", dest="templates", action="append", default=None, metavar="TEMPLATE",
                   help="a default prompt template of the package ([prompts] templates; repeatable"
                        + ("; default: Chinese-CLIP's published EuroSAT templates" if spec.templates else
                           "; default: none, the family's") + ")")
    c.add_argument("--seed", type=int, default=None,
                   help=f"--tiny only: torch seed of the random init (default {spec.default_seed})")
    c.add_argument("--init-std", type=float, default=None,
                   help=f"--tiny only: initializer_range of the random init (default {spec.init_std})")
    c.add_argument("--scan-seeds", type=int, default=None, metavar="N",
                   help="--tiny only: print how well seeds 0..N-1 separate the reference images, "
                        "write nothing (how the default seed was picked)")
    C.add_name_arg(c, help="manifest 'name' (default: derived from the source)")
    C.add_no_reference_arg(c, help="--tiny only: do not write reference/")
    C.add_skip_verify_arg(c, help="skip the ONNX Runtime vs PyTorch parity check")
    C.add_tolerance_arg(c, 1e-5, "max relative diff allowed between ONNX Runtime and PyTorch (default 1e-5)")
    c.set_defaults(func=export, command=command)
