"""The ``siglip`` family: SigLIP and SigLIP2 checkpoints -> tessera packages (``export.py siglip|siglip2``).

A SigLIP package holds the same files as a CLIP one (tools/export/README.md)::

    model.toml            manifest, family = "siglip", architecture = "siglip" | "siglip2"
    image_encoder.onnx    pixel_values [B,3,S,S] f32 -> image_embeds [B,D] f32 (get_image_features)
    text_encoder.onnx     input_ids [B,64] i64       -> text_embeds  [B,D] f32 (get_text_features)
    tokenizer.json        HF `tokenizers` file, padding/truncation to 64 preset
    reference/            (only with --tiny) PyTorch-computed parity fixtures

Scoring is per label and independent (multi-label): ``sigmoid(logit_scale * cos + logit_bias)``
with ``logit_scale = exp(model.logit_scale)`` and ``logit_bias = model.logit_bias``.

Usage::

    # a local save_pretrained folder (model + tokenizer + processor files)
    python tools/export/export.py siglip  --from ckpt/siglip-base-patch16-224  --out models/siglip-b16
    python tools/export/export.py siglip2 --from ckpt/siglip2-base-patch16-224 --out models/siglip2-b16

    # seeded random tiny models of the real architecture (test fixtures)
    python tools/export/export.py siglip  --tiny --out sample_data/models/siglip-tiny
    python tools/export/export.py siglip2 --tiny --out sample_data/models/siglip2-tiny
    python tools/export/export.py siglip2 --tiny --naflex --out sample_data/models/siglip2-naflex-tiny

    # a NaFlex Siglip2Model checkpoint at one fixed tile size (default from max_num_patches)
    python tools/export/export.py siglip2 --from ckpt/siglip2-base-patch16-naflex --size 256 --out models/s2-naflex

How Hugging Face prepares SigLIP text (transformers 5.24), and what the packages do the same way:

* **SigLIP** (``SiglipTokenizer``, sentencepiece Unigram, slow only): ``canonicalize_text`` lowercases
  (``do_lower_case=True``), removes ASCII punctuation (``string.punctuation``), collapses every run of
  whitespace to one space and strips; the sentencepiece model then encodes it and ``</s>`` is appended.
  The checkpoints' processors tokenise with ``padding="max_length", max_length=64, truncation=True``
  (the zero-shot pipeline passes exactly that for every ``siglip*`` model type) and feed **no attention
  mask**: the text tower pools the hidden state of the *last* position (63), so the pad token (``</s>``,
  id = eos) is part of the input as in training. transformers has no slow->fast converter for
  SiglipTokenizer; ``SiglipConverter`` below is transformers' ``SpmConverter`` with the canonicalisation
  as ``tokenizers`` normalizers and ``$A </s>`` as post-processor, checked id for id against the slow
  tokenizer (reference texts + a seeded fuzz set) on every export.
* **SigLIP2** fixed resolution (``google/siglip2-*-patch16-224`` & co.): the checkpoints are
  ``SiglipModel`` (model_type "siglip", image input [B,3,S,S]) with the Gemma tokenizer (BPE, byte
  fallback) configured by transformers' conversion as ``add_bos_token=False, add_eos_token=True``,
  right padding with ``<pad>`` (id 0), ``model_input_names=["input_ids"]`` (no mask). The model was
  trained on *lowercased* text: transformers' ``Siglip2Tokenizer`` is that Gemma tokenizer with a
  ``Lowercase`` normalizer in front, and it is what this exporter writes. (The checkpoints'
  tokenizer_config.json says ``do_lower_case: true``, which the ``GemmaTokenizer`` that
  ``AutoTokenizer`` loads for them ignores; ``--keep-case``, or an explicit ``do_lower_case: false``,
  keeps a checkpoint's tokenizer as it is.) ``Siglip2Processor`` tokenises with ``padding="max_length",
  max_length=64, truncation=True``. No punctuation removal for SigLIP2.
* ``Siglip2Model`` (model_type "siglip2") is the **NaFlex** variant: its processor turns an image into
  a sequence of patches (resized to at most ``max_num_patches``) with a mask and spatial shapes, and the
  model resizes its position grid to each image's shape. tessera feeds fixed square tiles, so a NaFlex
  checkpoint is exported at one tile size S (``--size``, default ``p * isqrt(max_num_patches)``, the
  largest square that fits): the image graph takes [B,3,S,S] normalised pixels, patchifies them inside
  the graph exactly as ``Siglip2ImageProcessor.convert_image_to_patches`` (patches row-major, pixels
  row-major inside a patch, channels last), has every patch real (all-ones mask, so none is fed) and
  spatial shapes (S/p, S/p), and adds the position embeddings resized once here by
  ``Siglip2VisionEmbeddings.resize_positional_embeddings`` for that shape, baked in as a constant (no
  interpolation in the graph). Every export checks the wrapper against HF's own NaFlex forward
  (processor inputs, padding and mask included). ``architecture = "siglip2-naflex"``.

Special-token strings typed into a prompt (``"</s>"``, ``"<unk>"``) are the one place where the fast
tokenizer and the slow SigLIP tokenizer disagree (the slow one does not append a second ``</s>``);
labels never hold them.
"""

from __future__ import annotations

import json
import math
import random
import string
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import SiglipConfig, SiglipModel

import common as C

#: SigLIP's image processor (every released SigLIP / SigLIP2 checkpoint): resize to S x S, /255,
#: then (x - 0.5) / 0.5.
SIGLIP_MEAN = [0.5, 0.5, 0.5]
SIGLIP_STD = [0.5, 0.5, 0.5]

#: The text length SigLIP and SigLIP2 were trained with.
CONTEXT_LENGTH = 64

#: Default seeds of `--tiny`, picked with `--scan-seeds 30` (see `separation_report`, `seed_ok`): at
#: least 3 distinct top-1 labels over the 4 reference images, a top1-top2 margin > 0.05, and an image
#: for which two labels both score above 0.5 (the largest margin among the seeds that pass).
DEFAULT_TINY_SEED = {"siglip": 22, "siglip2": 13}

#: The sigmoid logits the tiny random models' logit_scale/logit_bias map the reference cosines onto:
#: the smallest cosine -> -LOGIT_SPAN, the largest -> +LOGIT_SPAN (probabilities within about
#: (0.08, 0.92)). A random model's cosines are small and SigLIP's initial bias of -10 would give
#: probabilities of ~0 everywhere.
LOGIT_SPAN = 2.5

REF_LABELS = ["forest", "river", "city", "desert"]
REF_TEMPLATES = ["a satellite photo of {}.", "an aerial image of {}."]
#: Extra strings whose tokenisation is recorded: case, punctuation, whitespace, digits, non-ASCII,
#: a text longer than the context (truncation keeps the eos last) and the empty text.
REF_TOKENIZER_TEXTS = [
    "a satellite image of a forest",
    "  Flooded   RIVER delta, 2023!  ",
    "Sentinel-2 L2A scene: cloud-free? yes.",
    "Ça c'est la forêt\tnoire\nÜBER alles",
    " ".join(["farmland"] * 80) + " and a long river",
    "",
]

#: Words of the tiny tokenizers' training corpus (sentences are drawn from them with a fixed seed).
_CORPUS_WORDS = (
    "a an the of and with in on at near over by from this is photo image picture satellite aerial view "
    "scene tile top down overhead high resolution low cloud cloudy clear sky shadow forest forests tree "
    "trees wood woodland jungle river rivers stream delta lake lakes sea ocean coast coastal beach sand "
    "water city cities town village urban area areas suburb street streets road roads highway bridge "
    "building buildings house houses roof parking lot airport runway harbor port ship ships industrial "
    "factory residential commercial desert dunes dune bare soil rock rocky mountain mountains hill hills "
    "valley snow ice glacier farmland farm field fields crop crops wheat rice corn orchard vineyard "
    "pasture meadow grass grassland shrub shrubland wetland marsh swamp mangrove flooded flood fire burned "
    "green blue brown grey gray white dark bright large small big many few some sentinel landsat l2a "
    "one two three four five 2023 2024 10 20 30 m km north south east west center"
).split()


# --------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------


def _tiny_corpus(path: Path, seed: int = 7, n: int = 4000) -> None:
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(_CORPUS_WORDS) for _ in range(rng.randint(2, 14))) for _ in range(n)]
    lines += [f"this is a photo of {w}" for w in _CORPUS_WORDS]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _train_spm(corpus: Path, prefix: Path, **kwargs) -> Path:
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(prefix), num_threads=1,
                                   hard_vocab_limit=False, character_coverage=1.0, minloglevel=2,
                                   **kwargs)
    return prefix.with_suffix(".model")


def _whitespace_class() -> str:
    """A regex class of exactly the characters Python's ``str.isspace`` (``re``'s ``\\s``) accepts."""
    chars = [c for c in map(chr, range(0x110000)) if c.isspace()]
    return "[" + "".join(f"\\x{{{ord(c):X}}}" for c in chars) + "]"


def siglip_fast_tokenizer(slow):
    """The ``tokenizers`` equivalent of a slow ``SiglipTokenizer`` (see the module docstring)."""
    from tokenizers import Regex, normalizers, processors
    from transformers.convert_slow_tokenizer import SpmConverter

    class SiglipConverter(SpmConverter):
        def normalizer(self, proto):
            steps = [normalizers.Lowercase()] if getattr(self.original_tokenizer, "do_lower_case", True) else []
            punct = "[" + "".join(f"\\x{{{ord(c):X}}}" for c in string.punctuation) + "]"
            steps += [
                normalizers.Replace(Regex(punct), ""),
                normalizers.Replace(Regex(_whitespace_class() + "+"), " "),
                normalizers.Strip(),
                super().normalizer(proto),  # the sentencepiece model's own (precompiled charsmap, spaces)
            ]
            return normalizers.Sequence(steps)

        def post_processor(self):
            eos = str(self.original_tokenizer.eos_token)
            eos_id = self.original_tokenizer.convert_tokens_to_ids(eos)
            return processors.TemplateProcessing(single=["$A", eos], pair=["$A", eos, "$B", eos],
                                                 special_tokens=[(eos, eos_id)])

    return SiglipConverter(slow).converted()


def build_tiny_siglip_tokenizer(tmp: Path):
    """A tiny sentencepiece Unigram model laid out like SigLIP's (T5's): <pad> 0, </s> 1, <unk> 2,
    nmt_nfkc normalisation, dummy prefix; wrapped in ``SiglipTokenizer`` (pad = eos, as released)."""
    from transformers import SiglipTokenizer

    corpus = tmp / "corpus.txt"
    _tiny_corpus(corpus)
    model = _train_spm(corpus, tmp / "spiece", vocab_size=400, model_type="unigram", pad_id=0, eos_id=1,
                       unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
                       normalization_rule_name="nmt_nfkc")
    return SiglipTokenizer(str(model), model_max_length=CONTEXT_LENGTH, model_input_names=["input_ids"])


def build_tiny_gemma_tokenizer(tmp: Path):
    """A tiny Gemma-style tokenizer: a sentencepiece BPE with byte fallback and split digits, no dummy
    prefix, <pad> 0 / <eos> 1 / <bos> 2 / <unk> 3 / <mask> 4 (Gemma's layout), as ``Siglip2Tokenizer``
    with SigLIP2's settings. Returns (tokenizer, sentencepiece processor) -- the processor is an
    independent check of the ids."""
    import sentencepiece as spm
    from transformers import Siglip2Tokenizer
    from transformers.convert_slow_tokenizer import generate_merges

    corpus = tmp / "corpus.txt"
    _tiny_corpus(corpus)
    model = _train_spm(corpus, tmp / "gemma", vocab_size=600, model_type="bpe", pad_id=0, eos_id=1, bos_id=2,
                       unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
                       user_defined_symbols=["<mask>"], byte_fallback=True, split_digits=True,
                       add_dummy_prefix=False, remove_extra_whitespaces=False,
                       normalization_rule_name="identity", allow_whitespace_only_pieces=True)
    sp = spm.SentencePieceProcessor(model_file=str(model))
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    scores = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    tok = Siglip2Tokenizer(vocab=vocab, merges=generate_merges(vocab, scores), add_bos_token=False,
                           add_eos_token=True, padding_side="right", model_input_names=["input_ids"],
                           model_max_length=CONTEXT_LENGTH)
    return tok, sp


class TextSide:
    """The HF tokenizer of a package (the reference) and the ``tokenizers`` backend written out."""

    def __init__(self, hf_tok, backend, architecture: str):
        self.hf = hf_tok
        self.backend = backend
        self.architecture = architecture
        self.pad_id = int(hf_tok.pad_token_id)
        self.eos_id = int(hf_tok.eos_token_id)
        self.bos_id = int(hf_tok.bos_token_id) if getattr(hf_tok, "add_bos_token", False) else None
        self.uses_mask = "attention_mask" in hf_tok.model_input_names

    def encode(self, texts: list[str], context_length: int) -> tuple[np.ndarray, np.ndarray]:
        """Reference ids: HF tokenizer, padding='max_length', max_length=L, truncation=True."""
        enc = self.hf(texts, padding="max_length", truncation=True, max_length=context_length,
                      return_attention_mask=True)
        return (np.asarray(enc["input_ids"], dtype=np.int64), np.asarray(enc["attention_mask"], dtype=np.int64))

    def save(self, path: Path, context_length: int) -> None:
        b = self.backend
        b.enable_truncation(max_length=context_length)
        b.enable_padding(length=context_length, pad_id=self.pad_id, pad_token=str(self.hf.pad_token),
                         direction="right")
        b.save(str(path), pretty=False)
        b.no_padding()
        b.no_truncation()


def fuzz_texts(seed: int = 11, n: int = 1500) -> list[str]:
    """Seeded mixed texts: corpus words, capitals, punctuation, digits, odd whitespace, non-ASCII."""
    rng = random.Random(seed)
    alphabet = (list(string.ascii_letters + string.digits + string.punctuation)
                + [" ", "  ", "\t", "\n", "\u00a0", "\u3000", "é", "Ü", "ß", "ø", "中", "🙂", "ﬁ", "①"])
    out = []
    for _ in range(n):
        parts = [rng.choice(_CORPUS_WORDS) if rng.random() < 0.6 else
                 "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 5)))
                 for _ in range(rng.randint(0, 10))]
        out.append(rng.choice([" ", "", "  ", ", "]).join(parts))
    return out


def verify_tokenizer_json(path: Path, side: TextSide, texts: list[str], context_length: int) -> int:
    """tokenizer.json (padding/truncation preset, as tessera reads it) == the HF tokenizer, id for id."""
    from tokenizers import Tokenizer

    fast = Tokenizer.from_file(str(path))
    want, _ = side.encode(texts, context_length)
    got = np.asarray([e.ids for e in fast.encode_batch(texts)], dtype=np.int64)
    bad = [i for i in range(len(texts)) if not np.array_equal(got[i], want[i])]
    if bad:
        i = bad[0]
        raise SystemExit(f"export: {path}: token ids differ from the Hugging Face tokenizer on {len(bad)} of "
                         f"{len(texts)} texts, first {texts[i]!r}: {got[i].tolist()} != {want[i].tolist()}")
    return len(texts)


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------


def tiny_siglip_config(vocab_size: int, pad_id: int, eos_id: int) -> SiglipConfig:
    """SiglipConfig of the random test models (real SigLIP architecture, MAP head, no causal mask)."""
    text = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=CONTEXT_LENGTH, pad_token_id=pad_id,
                bos_token_id=None, eos_token_id=eos_id, projection_size=32)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=64, patch_size=16, vision_use_head=True)
    return SiglipConfig(text_config=text, vision_config=vision)


def build_random_siglip(seed: int, vocab_size: int, pad_id: int, eos_id: int) -> SiglipModel:
    torch.manual_seed(seed)
    np.random.seed(seed)
    config = tiny_siglip_config(vocab_size, pad_id, eos_id)
    config._attn_implementation = "eager"
    return SiglipModel(config).eval()


class ImageEncoder(torch.nn.Module):
    """pixel_values [B,3,S,S] -> image_embeds [B,D] (``get_image_features``, not normalised)."""

    def __init__(self, model: SiglipModel):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.get_image_features(pixel_values=pixel_values).pooler_output


class TextEncoder(torch.nn.Module):
    """input_ids [B,L] -> text_embeds [B,D] (``get_text_features``, not normalised; pooled at the last
    position, so the padding is part of the input)."""

    def __init__(self, model: SiglipModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_text_features(input_ids=input_ids).pooler_output


class MaskedTextEncoder(TextEncoder):
    """For a checkpoint whose processor feeds an attention mask."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output


def _run_text(text_enc, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    args = (torch.from_numpy(ids),) + ((torch.from_numpy(mask),) if isinstance(text_enc, MaskedTextEncoder) else ())
    with torch.no_grad():
        return text_enc(*args).numpy()


# --------------------------------------------------------------------------------------
# Reference fixtures and scoring
# --------------------------------------------------------------------------------------


def _l2n(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def reference_cosines(image_enc, text_enc, side: TextSide, size: int, mean, std, context_length: int):
    """(cos [images, labels] in float64, raw image embeds, raw text embeds, ids, mask, label embeds, ...)."""
    names, images_u8 = C.make_reference_images(size)
    pixels = C.preprocess_u8(images_u8, mean, std)
    prompts = [t.format(label) for label in REF_LABELS for t in REF_TEMPLATES]
    ids, mask = side.encode(prompts, context_length)
    with torch.no_grad():
        img = image_enc(torch.from_numpy(pixels)).numpy()
    txt = _run_text(text_enc, ids, mask)
    t = _l2n(txt.astype(np.float64)).reshape(len(REF_LABELS), len(REF_TEMPLATES), -1)
    label_embeds = _l2n(t.mean(axis=1))
    cos = _l2n(img.astype(np.float64)) @ label_embeds.T
    return dict(names=names, images_u8=images_u8, pixels=pixels, prompts=prompts, ids=ids, mask=mask,
                img=img, txt=txt, label_embeds=label_embeds, cos=cos)


def spread_scale_bias(cos: np.ndarray) -> tuple[float, float]:
    """(logit_scale, logit_bias) mapping [min cos, max cos] onto [-LOGIT_SPAN, +LOGIT_SPAN]."""
    lo, hi = float(cos.min()), float(cos.max())
    scale = 2 * LOGIT_SPAN / (hi - lo)
    return scale, -scale * (hi + lo) / 2


def separation_report(probs: np.ndarray) -> dict:
    """Distinct top-1 labels, smallest top1-top2 margin, images with >= 2 labels above 0.5."""
    s = np.sort(probs, axis=1)
    return {
        "distinct_top1": len(set(probs.argmax(axis=1).tolist())),
        "min_top1_margin": float((s[:, -1] - s[:, -2]).min()),
        "multi_label_images": [int(i) for i in np.nonzero((probs > 0.5).sum(axis=1) >= 2)[0]],
        "min_prob": float(probs.min()),
        "max_prob": float(probs.max()),
    }


def seed_ok(rep: dict) -> bool:
    return rep["distinct_top1"] >= 3 and rep["min_top1_margin"] > 0.05 and bool(rep["multi_label_images"])


def compute_reference(r: dict, side: TextSide, size: int, mean, std, context_length: int,
                      logit_scale: float, logit_bias: float) -> dict:
    """reference.json, from PyTorch outputs (float64 for the scoring maths)."""
    probs = _sigmoid(logit_scale * r["cos"] + logit_bias)
    cases_ids, cases_mask = side.encode(REF_TOKENIZER_TEXTS, context_length)
    n = len(r["names"])
    return {
        "description": "PyTorch-computed parity fixtures for this model package (tools/export/export.py).",
        "architecture": side.architecture,
        "labels": REF_LABELS,
        "templates": REF_TEMPLATES,
        "prompts": r["prompts"],
        "prompt_order": "label-major: for each label, for each template",
        "context_length": context_length,
        "text_preprocessing": TEXT_PREPROCESSING[side.architecture],
        "token_ids": r["ids"].tolist(),
        "attention_mask": r["mask"].tolist(),
        "attention_mask_note": "1 for real tokens; the text graph takes no mask (SigLIP is run on the padded ids)",
        "tokenizer_cases": [
            {"text": s, "token_ids": i.tolist(), "attention_mask": m.tolist()}
            for s, i, m in zip(REF_TOKENIZER_TEXTS, cases_ids, cases_mask)
        ],
        **C.images_block(r["names"], size, n),
        "mean": [float(x) for x in mean],
        "std": [float(x) for x in std],
        "image_embeds": r["img"].astype(np.float64).tolist(),
        "text_embeds": r["txt"].astype(np.float64).tolist(),
        "label_embeds": r["label_embeds"].tolist(),
        "label_embeds_formula": "per label: l2norm(mean over templates of l2norm(text_embeds)))",
        "logit_scale": float(logit_scale),
        "logit_bias": float(logit_bias),
        "probs": probs.tolist(),
        "probs_formula": "per label, independently: sigmoid(logit_scale * cos(l2norm(image_embed), label_embed) "
                         "+ logit_bias)",
        "top1": [REF_LABELS[int(i)] for i in probs.argmax(axis=1)],
    }


TEXT_PREPROCESSING = {
    "siglip": "SiglipTokenizer: lowercase, ASCII punctuation removed, whitespace runs -> one space, strip; "
              "sentencepiece unigram; </s> appended; padding='max_length', max_length=64, truncation=True "
              "(pad = </s>); input_ids only, no attention mask",
    "siglip2": "Siglip2Tokenizer (Gemma BPE + lowercase): no bos, <eos> appended; padding='max_length', "
               "max_length=64, truncation=True, right padding with <pad> (id 0); input_ids only, no "
               "attention mask",
}


# --------------------------------------------------------------------------------------
# ONNX export + verification
# --------------------------------------------------------------------------------------


def _batch_axes(*names: str) -> dict:
    return {name: {0: "batch"} for name in names}


def export_graphs(out: Path, image_enc, text_enc, side: TextSide, size: int, context_length: int,
                  opset: int) -> None:
    dummy_px = torch.zeros(2, 3, size, size)
    ids, mask = side.encode(["a photo", "an aerial image of a river"], context_length)
    print(f"export: writing {out}/image_encoder.onnx (opset {opset})", file=sys.stderr)
    C.export_onnx(image_enc, (dummy_px,), out / "image_encoder.onnx", ["pixel_values"], ["image_embeds"],
                  _batch_axes("pixel_values", "image_embeds"), opset)
    print(f"export: writing {out}/text_encoder.onnx (opset {opset})", file=sys.stderr)
    if isinstance(text_enc, MaskedTextEncoder):
        C.export_onnx(text_enc, (torch.from_numpy(ids), torch.from_numpy(mask)), out / "text_encoder.onnx",
                      ["input_ids", "attention_mask"], ["text_embeds"],
                      _batch_axes("input_ids", "attention_mask", "text_embeds"), opset)
    else:
        C.export_onnx(text_enc, (torch.from_numpy(ids),), out / "text_encoder.onnx", ["input_ids"],
                      ["text_embeds"], _batch_axes("input_ids", "text_embeds"), opset)


def verify_onnx_against_torch(out: Path, image_enc, text_enc, side: TextSide, size: int, context_length: int,
                              tol: float) -> dict:
    """Both graphs in ONNX Runtime on batches of 1 and 3 vs PyTorch (max abs diff)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        print("export: onnxruntime not installed, skipping ONNX/PyTorch parity check", file=sys.stderr)
        return {}
    img_sess = C.ort_session(out / "image_encoder.onnx")
    txt_sess = C.ort_session(out / "text_encoder.onnx")
    gen = torch.Generator().manual_seed(1234)
    texts = ["a satellite photo of forest.", "An aerial image of a big city at night, with lights", "desert"]
    worst = {"image": 0.0, "text": 0.0}
    for batch in (1, 3):
        px = torch.randn(batch, 3, size, size, generator=gen)
        with torch.no_grad():
            ref = image_enc(px).numpy()
        got = img_sess.run(None, {"pixel_values": px.numpy()})[0]
        worst["image"] = max(worst["image"], float(np.abs(ref - got).max()))
        ids, mask = side.encode(texts[:batch], context_length)
        ref = _run_text(text_enc, ids, mask)
        feeds = {"input_ids": ids}
        if isinstance(text_enc, MaskedTextEncoder):
            feeds["attention_mask"] = mask
        got = txt_sess.run(None, feeds)[0]
        worst["text"] = max(worst["text"], float(np.abs(ref - got).max()))
    print(f"export: ONNX vs PyTorch max abs diff: image {worst['image']:.3g}, text {worst['text']:.3g}",
          file=sys.stderr)
    for k, v in worst.items():
        if not v < tol:
            raise RuntimeError(f"{k} encoder: ONNX Runtime differs from PyTorch by {v} (tolerance {tol})")
    return worst


# --------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------


def write_manifest(path: Path, *, architecture: str, name: str, trained: bool, source: str, size: int, mean,
                   std, context_length: int, side: TextSide, logit_scale: float, logit_bias: float,
                   templates: list[str] | None) -> None:
    """model.toml (schema: tools/export/README.md); the text preparation is documented in comments."""
    text_keys = [("onnx", "text_encoder.onnx", ""), ("input_ids", "input_ids", "int64 [B,64]")]
    if side.uses_mask:
        text_keys.append(("attention_mask", "attention_mask", "int64 [B,64] (this checkpoint's processor feeds one)"))
    text_keys.append(("output", "text_embeds", "float32 [B,D] get_text_features, not L2-normalised"))
    if architecture == "siglip":
        tok_comment = "SiglipTokenizer: lowercase, no ASCII punctuation, spaces collapsed, + </s>"
        pad_comment = "pad = </s>, padding='max_length' to 64, no mask (as trained)"
    else:
        lower = type(side.hf).__name__ == "Siglip2Tokenizer"
        tok_comment = f"{type(side.hf).__name__}: Gemma BPE, {'lowercased' if lower else 'case kept'}, no bos, + <eos>"
        pad_comment = "<pad>, right padding='max_length' to 64, no mask (as trained)"
    tokenizer_keys = [
        ("file", "tokenizer.json", tok_comment),
        ("context_length", int(context_length), "pad/truncate to this length (last position is pooled)"),
        ("pad_token_id", side.pad_id, pad_comment),
    ]
    if side.bos_id is not None:
        tokenizer_keys.append(("bos_token_id", side.bos_id, ""))
    tokenizer_keys.append(("eos_token_id", side.eos_id, "kept last when a text is cut"))
    sections = [
        (None, [
            ("family", "siglip", "sigmoid per label (multi-label)"),
            ("architecture", architecture, ""),
            ("name", name, ""),
            ("trained", trained, ""),
            ("source", source, ""),
        ]),
        ("image", [
            ("onnx", "image_encoder.onnx", ""),
            ("input", "pixel_values", "float32 [B,3,S,S], already normalised"),
            ("output", "image_embeds", "float32 [B,D] get_image_features, not L2-normalised"),
        ]),
        ("text", text_keys),
        C.preprocess_section(size, mean, std),
        ("tokenizer", tokenizer_keys),
        ("scores", [
            ("logit_scale", float(logit_scale), "exp(model.logit_scale)"),
            ("logit_bias", float(logit_bias), "model.logit_bias; p = sigmoid(logit_scale * cos + logit_bias)"),
        ]),
    ]
    if templates:
        sections.append(("prompts", [("templates", list(templates), "")]))
    C.write_toml(path, sections)


# --------------------------------------------------------------------------------------
# Loading real checkpoints
# --------------------------------------------------------------------------------------


def load_checkpoint(src: str, architecture: str, keep_case: bool):
    """(SiglipModel, TextSide, size, mean, std) of a local save_pretrained folder."""
    cfg = C.read_json(src, "config.json") or {}
    model_type = cfg.get("model_type")
    if model_type == "siglip2":
        raise SystemExit(
            f"export: {src}: a Siglip2Model (model_type \"siglip2\") is SigLIP2's NaFlex variant: export it with "
            "`export.py siglip2` (a fixed-size image graph, --size)")
    if model_type != "siglip":
        raise SystemExit(f"export: {src}: config.json model_type is {model_type!r}, expected \"siglip\" "
                         "(SiglipModel; fixed-resolution SigLIP2 checkpoints are SiglipModel too)")
    pp = C.image_processor_config(src)
    model = SiglipModel.from_pretrained(src, attn_implementation="eager").eval()
    image_size = model.config.vision_config.image_size
    size = C.square_size(pp, image_size)
    if size != image_size:
        raise ValueError(f"image processor size {size} != vision_config.image_size {image_size}")
    mean, std = pp["image_mean"], pp["image_std"]

    sentencepiece = Path(src) / "spiece.model"
    if architecture == "siglip":
        from transformers import SiglipTokenizer

        if not sentencepiece.is_file():
            raise SystemExit(f"export: {src}: no spiece.model (SigLIP's sentencepiece tokenizer); a checkpoint "
                             "with a Gemma tokenizer.json is SigLIP2: use `export.py siglip2`")
        slow = SiglipTokenizer.from_pretrained(src)
        side = TextSide(slow, siglip_fast_tokenizer(slow), "siglip")
    else:
        if sentencepiece.is_file() and not (Path(src) / "tokenizer.json").is_file():
            raise SystemExit(f"export: {src}: a sentencepiece spiece.model and no tokenizer.json: this is "
                             "SigLIP (v1): use `export.py siglip`")
        from transformers import AutoTokenizer, Siglip2Tokenizer

        # transformers' conversion writes do_lower_case=True into tokenizer_config.json, which the
        # GemmaTokenizer that AutoTokenizer picks for model_type "siglip" ignores; Siglip2Tokenizer
        # applies it. An explicit do_lower_case=false keeps the case, like --keep-case.
        tok_cfg = C.read_json(src, "tokenizer_config.json") or {}
        keep_case = keep_case or tok_cfg.get("do_lower_case") is False
        if keep_case:
            print(f"export: {src}: keeping the tokenizer's case (no lowercasing)", file=sys.stderr)
        tok = AutoTokenizer.from_pretrained(src) if keep_case else Siglip2Tokenizer.from_pretrained(src)
        if not keep_case and type(tok).__name__ != "Siglip2Tokenizer":
            raise SystemExit(f"export: {src}: could not load the tokenizer as Siglip2Tokenizer")
        side = TextSide(tok, tok.backend_tokenizer, "siglip2")
    return model, side, size, mean, std


# --------------------------------------------------------------------------------------
# The `siglip` / `siglip2` subcommands
# --------------------------------------------------------------------------------------


def _tiny_text_side(architecture: str, tmp: Path) -> TextSide:
    if architecture == "siglip":
        slow = build_tiny_siglip_tokenizer(tmp)
        return TextSide(slow, siglip_fast_tokenizer(slow), "siglip")
    tok, sp = build_tiny_gemma_tokenizer(tmp)
    # Independent check of the HF tokenizer itself: sentencepiece on the lowercased text, + <eos>.
    for text in REF_TOKENIZER_TEXTS[:-2] + fuzz_texts(n=300):
        want = sp.encode(text.lower()) + [tok.eos_token_id]
        if tok(text)["input_ids"] != want:
            raise RuntimeError(f"Siglip2Tokenizer differs from sentencepiece on {text!r}")
    return TextSide(tok, tok.backend_tokenizer, "siglip2")


def _tiny_model(side: TextSide, seed: int):
    """The random model, with its two output biases centred (``centre_random_heads``)."""
    vocab = len(side.hf.get_vocab()) if side.architecture == "siglip2" else side.hf.vocab_size
    model = build_random_siglip(seed, vocab, side.pad_id, side.eos_id)
    image_enc, text_enc = ImageEncoder(model).eval(), TextEncoder(model).eval()
    centre_random_heads(model, image_enc, text_enc, side)
    return model, image_enc, text_enc


def centre_random_heads(model: SiglipModel, image_enc, text_enc, side: TextSide) -> None:
    """Shift the text head's bias and the image MAP head's last bias so that the embeddings of generic
    prompts (the reference templates around corpus words that are not labels) and of seeded noise images
    average to zero. A random text tower pools the last position, which is padding and dominates: without
    this every label embeds alike (label-label cosines ~0.999) and no seed separates the images."""
    words = [w for w in _CORPUS_WORDS if w not in REF_LABELS][:80]
    ids, mask = side.encode([t.format(w) for w in words for t in REF_TEMPLATES], CONTEXT_LENGTH)
    with torch.no_grad():
        model.text_model.head.bias.sub_(torch.from_numpy(_run_text(text_enc, ids, mask)).mean(0))
        size = model.config.vision_config.image_size
        px = torch.randn(32, 3, size, size, generator=torch.Generator().manual_seed(99))
        model.vision_model.head.mlp.fc2.bias.sub_(image_enc(px).mean(0))


def scan_seeds(architecture: str, n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        side = _tiny_text_side(architecture, Path(tmp))
        for seed in range(n):
            model, image_enc, text_enc = _tiny_model(side, seed)
            r = reference_cosines(image_enc, text_enc, side, 64, SIGLIP_MEAN, SIGLIP_STD, CONTEXT_LENGTH)
            scale, bias = spread_scale_bias(r["cos"])
            probs = _sigmoid(scale * r["cos"] + bias)
            rep = separation_report(probs)
            print(f"seed {seed:3d}: {'ok ' if seed_ok(rep) else '   '} distinct top-1 {rep['distinct_top1']}, "
                  f"min margin {rep['min_top1_margin']:.3f}, multi-label images {rep['multi_label_images']}")


def export_siglip(args) -> None:
    architecture = args.command
    if args.scan_seeds and not args.tiny:
        raise SystemExit("--scan-seeds only applies with --tiny")
    if args.tiny and (args.template or args.keep_case):
        raise SystemExit("--template and --keep-case only apply with --from")
    naflex = getattr(args, "naflex", False) or (
        not args.tiny and (C.read_json(args.source, "config.json") or {}).get("model_type") == "siglip2")
    if getattr(args, "size", None) is not None and not naflex:
        raise SystemExit("--size only applies to NaFlex (Siglip2Model) checkpoints and --tiny --naflex")
    if naflex:
        if architecture != "siglip2":
            raise SystemExit(f"export: {args.source}: a Siglip2Model (NaFlex) checkpoint: use `export.py siglip2`")
        if args.scan_seeds:
            raise SystemExit("--scan-seeds does not apply to NaFlex")
        export_naflex(args)
        return
    if args.scan_seeds:
        scan_seeds(architecture, args.scan_seeds)
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tv = transformers.__version__
    context_length = CONTEXT_LENGTH
    with tempfile.TemporaryDirectory() as tmp:
        if args.tiny:
            seed = DEFAULT_TINY_SEED[architecture] if args.seed is None else args.seed
            side = _tiny_text_side(architecture, Path(tmp))
            model, image_enc, text_enc = _tiny_model(side, seed)
            size, mean, std = model.config.vision_config.image_size, SIGLIP_MEAN, SIGLIP_STD
            # A random model's cosines are small: give it a logit_scale/logit_bias that spread the
            # reference probabilities over about (0.08, 0.92) -- set on the torch model itself.
            r = reference_cosines(image_enc, text_enc, side, size, mean, std, context_length)
            scale, bias = spread_scale_bias(r["cos"])
            with torch.no_grad():
                model.logit_scale.fill_(math.log(scale))
                model.logit_bias.fill_(bias)
            name = args.name or f"{architecture}-tiny-random"
            source = (f"random init, seed {seed}, transformers {tv}, torch {torch.__version__}; text/image head "
                      f"biases centred on generic prompts and noise images; logit_scale and logit_bias set so "
                      f"the reference cosines map onto sigmoid logits in [-{LOGIT_SPAN}, {LOGIT_SPAN}] (a random "
                      f"model with SigLIP's init bias -10 scores ~0)")
            trained = False
            templates = REF_TEMPLATES
        else:
            model, side, size, mean, std = load_checkpoint(args.source, architecture, args.keep_case)
            context_length = int(model.config.text_config.max_position_embeddings)
            image_enc, text_enc = ImageEncoder(model).eval(), (
                MaskedTextEncoder(model) if side.uses_mask else TextEncoder(model)).eval()
            name = args.name or Path(args.source.rstrip("/")).name
            source = f"{args.source}, exported with transformers {tv}, torch {torch.__version__}"
            trained = True
            templates = args.template or None
        logit_scale = float(model.logit_scale.detach().exp())
        logit_bias = float(model.logit_bias.detach())

        export_graphs(out, image_enc, text_enc, side, size, context_length, args.opset)
        side.save(out / "tokenizer.json", context_length)
        checked = verify_tokenizer_json(out / "tokenizer.json", side,
                                        REF_TOKENIZER_TEXTS + [t.format(lb) for lb in REF_LABELS for t in REF_TEMPLATES]
                                        + fuzz_texts(), context_length)
        print(f"export: tokenizer.json == Hugging Face {type(side.hf).__name__} on {checked} texts", file=sys.stderr)
        write_manifest(out / "model.toml", architecture=architecture, name=name, trained=trained, source=source,
                       size=size, mean=mean, std=std, context_length=context_length, side=side,
                       logit_scale=logit_scale, logit_bias=logit_bias, templates=templates)
        if not args.skip_verify:
            verify_onnx_against_torch(out, image_enc, text_enc, side, size, context_length, args.tolerance)

        if args.tiny and not args.no_reference:
            r = reference_cosines(image_enc, text_enc, side, size, mean, std, context_length)
            ref = compute_reference(r, side, size, mean, std, context_length, logit_scale, logit_bias)
            ref["seed"] = seed
            ref["onnx_precision"] = "fp32"
            ref["tolerance"] = {"embeds_rel": 1e-4, "probs_abs": 1e-4}
            rep = separation_report(np.asarray(ref["probs"]))
            ref["separation"] = rep
            if not seed_ok(rep):
                print(f"export: WARNING seed {seed} separates the reference images poorly: {rep}", file=sys.stderr)
            C.write_reference(out, ref, C.image_bins(r["images_u8"], r["pixels"]))
            print(f"export: reference top-1 {ref['top1']}, {json.dumps(rep)}", file=sys.stderr)
    C.report_done(out)


# --------------------------------------------------------------------------------------
# CLI (export.py maps "siglip" and "siglip2" here)
# --------------------------------------------------------------------------------------


def add_parser(sub, command: str) -> None:
    """Add the ``siglip`` or ``siglip2`` subcommand to ``sub`` (export.py's subparsers)."""
    assert command in ("siglip", "siglip2"), command
    what = "SigLIP" if command == "siglip" else "fixed-resolution SigLIP2"
    c = sub.add_parser(
        command,
        help=f"export a {what} checkpoint (or a random tiny one) as a model package (family \"siglip\")",
        description=f"Export a {what} SiglipModel: image encoder = get_image_features (-> image_embeds), text "
                    "encoder = get_text_features on input ids padded to 64 (-> text_embeds), both with a dynamic "
                    "batch axis; [scores] logit_scale = exp(model.logit_scale), logit_bias = model.logit_bias.",
    )
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("--from", dest="source", metavar="DIR",
                     help="a local folder written by save_pretrained (SiglipModel + tokenizer files + processor "
                          "settings); " + ("spiece.model (SiglipTokenizer)" if command == "siglip" else
                                           "tokenizer.json (Gemma tokenizer); a NaFlex Siglip2Model exports at one --size"))
    src.add_argument("--tiny", action="store_true",
                     help="build a seeded, randomly initialised SiglipModel of the real architecture with a tiny "
                          "trained tokenizer instead (test fixture, trained = false, with reference/)")
    c.add_argument("--scan-seeds", type=int, default=0, metavar="N",
                   help="--tiny only: print how seeds 0..N-1 separate the reference images, export nothing")
    C.add_out_arg(c, help="output package directory (created)")
    C.add_opset_arg(c, help=f"ONNX opset version (default {C.DEFAULT_OPSET})")
    c.add_argument("--seed", type=int, default=None,
                   help=f"--tiny only: torch seed of the random init (default {DEFAULT_TINY_SEED[command]})")
    c.add_argument("--template", action="append", default=None, metavar="T",
                   help="--from only: write [prompts] templates (repeatable; default: tessera's family default)")
    if command == "siglip2":
        c.add_argument("--naflex", action="store_true",
                       help="--tiny only: a random Siglip2Model (NaFlex) instead of the fixed-resolution SiglipModel "
                            "(a --from checkpoint with model_type \"siglip2\" is NaFlex by itself)")
        c.add_argument("--size", type=int, default=None, metavar="S",
                       help="NaFlex only: the fixed square tile size of the image graph, a multiple of the patch "
                            "size p (default: the processor's max_num_patches -> S = p * isqrt(max_num_patches), "
                            "the largest square that fits, e.g. 256 patches of 16 -> 256)")
        c.add_argument("--keep-case", action="store_true",
                       help="--from only: keep the checkpoint's tokenizer as it is instead of transformers' "
                            "Siglip2Tokenizer (which lowercases, as SigLIP2 was trained)")
    else:
        c.set_defaults(keep_case=False, naflex=False, size=None)
    C.add_name_arg(c, help="manifest 'name' (default: derived from the source)")
    C.add_no_reference_arg(c, help="--tiny only: do not write reference/")
    C.add_skip_verify_arg(c, help="skip the ONNX Runtime vs PyTorch parity check")
    C.add_tolerance_arg(c, 1e-5, "max abs diff allowed between ONNX Runtime and PyTorch (default 1e-5)")
    c.set_defaults(func=export_siglip)


# --------------------------------------------------------------------------------------
# NaFlex (Siglip2Model) at one fixed square tile size
# --------------------------------------------------------------------------------------

#: The tiny NaFlex fixture: patch 16, a 6 x 6 position grid (num_patches 36) resized to the 4 x 4 patches
#: of a 64 x 64 tile, and a processor max_num_patches of 20 -> default S = 16 * isqrt(20) = 64, so HF's
#: own processor pads 4 patches (masked) that the fixed-size graph does not have.
NAFLEX_TINY = {"patch_size": 16, "num_patches": 36, "max_num_patches": 20}
#: One template, so that the reference probabilities are HF's own ``sigmoid(logits_per_image)``.
NAFLEX_TEMPLATES = REF_TEMPLATES[:1]


def naflex_default_size(patch_size: int, max_num_patches: int) -> int:
    """The largest square tile S (a multiple of the patch size) whose (S/p)^2 patches fit max_num_patches."""
    return patch_size * math.isqrt(int(max_num_patches))


def naflex_patchify(pixel_values: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B,C,S,S] -> [B,(S/p)^2,p*p*C], exactly ``convert_image_to_patches`` of Siglip2ImageProcessor per
    image: patches row-major over the grid, inside a patch row-major pixels, channels last."""
    b, c, h, w = pixel_values.shape
    gh, gw = h // patch_size, w // patch_size
    x = pixel_values.reshape(b, c, gh, patch_size, gw, patch_size).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, gh * gw, patch_size * patch_size * c)


class NaFlexImageEncoder(torch.nn.Module):
    """pixel_values [B,3,S,S] -> image_embeds [B,D] of a Siglip2Model (NaFlex) at one tile size S: the
    patches of the processor, an all-ones mask (no padding: every patch is real, so the mask is
    dropped), spatial_shapes (S/p, S/p), and the position grid resized once here with
    ``Siglip2VisionEmbeddings.resize_positional_embeddings`` and baked in as a constant."""

    def __init__(self, model, size: int):
        super().__init__()
        vm = model.vision_model
        p = int(vm.config.patch_size)
        if size % p:
            raise SystemExit(f"export: --size {size} is not a multiple of the patch size {p}")
        self.vm, self.patch_size, self.grid = vm, p, size // p
        emb = vm.embeddings
        g = self.grid
        with torch.no_grad():
            grid = emb.position_embedding.weight.reshape(emb.position_embedding_size, emb.position_embedding_size, -1)
            pos = emb.resize_positional_embeddings(grid, torch.tensor([[g, g]], dtype=torch.long), max_length=g * g)
        self.register_buffer("pos", pos[0].detach().clone())

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = naflex_patchify(pixel_values, self.patch_size)
        h = self.vm.embeddings.patch_embedding(x.to(self.vm.embeddings.patch_embedding.weight.dtype)) + self.pos
        h = self.vm.encoder(inputs_embeds=h, attention_mask=None).last_hidden_state
        h = self.vm.post_layernorm(h)
        return self.vm.head(h, None)


def build_random_naflex(seed: int, vocab_size: int, pad_id: int, eos_id: int):
    from transformers import Siglip2Config, Siglip2Model

    torch.manual_seed(seed)
    np.random.seed(seed)
    text = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=CONTEXT_LENGTH, pad_token_id=pad_id,
                bos_token_id=None, eos_token_id=eos_id, projection_size=32)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  patch_size=NAFLEX_TINY["patch_size"], num_patches=NAFLEX_TINY["num_patches"],
                  vision_use_head=True)
    config = Siglip2Config(text_config=text, vision_config=vision)
    config._attn_implementation = "eager"
    return Siglip2Model(config).eval()


def naflex_hf_inputs(processor, images_u8: np.ndarray, size: int, patch_size: int, quiet: bool = False) -> dict:
    """Siglip2ImageProcessor on the S x S reference images; checks it did not resize them (spatial shapes
    (S/p, S/p), the real patches equal to the patches of the plain /255, mean/std normalisation)."""
    enc = processor(images=[im for im in images_u8], return_tensors="pt")
    g = size // patch_size
    shapes = enc["spatial_shapes"].tolist()
    if any(tuple(s) != (g, g) for s in shapes):
        raise RuntimeError(f"Siglip2ImageProcessor resized the {size}x{size} images: spatial_shapes {shapes}")
    mask = enc["pixel_attention_mask"]
    if not (mask[:, :g * g] == 1).all() or (mask[:, g * g:] != 0).any():
        raise RuntimeError(f"unexpected pixel_attention_mask {mask.tolist()}")
    mine = naflex_patchify(torch.from_numpy(C.preprocess_u8(images_u8, processor.image_mean, processor.image_std)),
                           patch_size)
    diff = float((enc["pixel_values"][:, :g * g] - mine).abs().max())
    if not diff < 1e-6:
        raise RuntimeError(f"Siglip2ImageProcessor patches differ from the fixed-size patchify by {diff}")
    if not quiet:
        print(f"export: Siglip2ImageProcessor: spatial_shapes ({g}, {g}), {g * g} real patches of "
              f"{mask.shape[1]}, patches == in-graph patchify (max abs diff {diff:.3g})", file=sys.stderr)
    return {k: enc[k] for k in ("pixel_values", "pixel_attention_mask", "spatial_shapes")}


def _hf_image_features(model, inputs: dict) -> np.ndarray:
    with torch.no_grad():
        return model.get_image_features(**inputs).pooler_output.numpy()


def naflex_reference(model, processor, side: TextSide, size: int, patch_size: int, quiet: bool = False) -> dict:
    """The reference from Hugging Face alone: processor -> get_image_features / get_text_features and
    Siglip2Model.forward's sigmoid(logits_per_image) (one template: label embedding = prompt embedding)."""
    names, images_u8 = C.make_reference_images(size)
    pixels = C.preprocess_u8(images_u8, processor.image_mean, processor.image_std)
    inputs = naflex_hf_inputs(processor, images_u8, size, patch_size, quiet)
    prompts = [t.format(label) for label in REF_LABELS for t in NAFLEX_TEMPLATES]
    ids, mask = side.encode(prompts, CONTEXT_LENGTH)
    img = _hf_image_features(model, inputs)
    with torch.no_grad():
        txt = model.get_text_features(input_ids=torch.from_numpy(ids)).pooler_output.numpy()
    label_embeds = _l2n(_l2n(txt.astype(np.float64)))
    cos = _l2n(img.astype(np.float64)) @ label_embeds.T
    return dict(names=names, images_u8=images_u8, pixels=pixels, prompts=prompts, ids=ids, mask=mask, img=img,
                txt=txt, label_embeds=label_embeds, cos=cos, inputs=inputs)


def _naflex_tiny(side: TextSide, seed: int, size: int, processor):
    model = build_random_naflex(seed, len(side.hf.get_vocab()), side.pad_id, side.eos_id)
    image_enc, text_enc = NaFlexImageEncoder(model, size).eval(), TextEncoder(model).eval()
    # Centre the two output biases as for the fixed-resolution tiny models (centre_random_heads).
    words = [w for w in _CORPUS_WORDS if w not in REF_LABELS][:80]
    ids, mask = side.encode([t.format(w) for w in words for t in REF_TEMPLATES], CONTEXT_LENGTH)
    with torch.no_grad():
        model.text_model.head.bias.sub_(torch.from_numpy(_run_text(text_enc, ids, mask)).mean(0))
        px = torch.randn(32, 3, size, size, generator=torch.Generator().manual_seed(99))
        model.vision_model.head.mlp.fc2.bias.sub_(image_enc(px).mean(0))
    r = naflex_reference(model, processor, side, size, NAFLEX_TINY["patch_size"], quiet=True)
    scale, bias = spread_scale_bias(r["cos"])
    with torch.no_grad():
        model.logit_scale.fill_(math.log(scale))
        model.logit_bias.fill_(bias)
    return model, image_enc, text_enc, r


def export_naflex(args) -> None:
    """``export.py siglip2`` for a Siglip2Model (NaFlex): a fixed-size [B,3,S,S] image graph."""
    from transformers import Siglip2ImageProcessor, Siglip2Model

    out = Path(args.out)
    tv = transformers.__version__
    with tempfile.TemporaryDirectory() as tmp:
        if args.tiny:
            tok, _ = build_tiny_gemma_tokenizer(Path(tmp))
            side = TextSide(tok, tok.backend_tokenizer, "siglip2")
            p = NAFLEX_TINY["patch_size"]
            processor = Siglip2ImageProcessor(patch_size=p, max_num_patches=NAFLEX_TINY["max_num_patches"])
            size = args.size or naflex_default_size(p, processor.max_num_patches)
            seeds = [args.seed] if args.seed is not None else list(range(30))
            for seed in seeds:
                model, image_enc, text_enc, r = _naflex_tiny(side, seed, size, processor)
                with torch.no_grad():
                    probe = _sigmoid(float(model.logit_scale.exp()) * r["cos"] + float(model.logit_bias))
                if seed_ok(separation_report(probe)) or args.seed is not None:
                    break
            name = args.name or "siglip2-naflex-tiny-random"
            source = (f"random Siglip2Model (NaFlex), seed {seed} (the first of 0..29 that separates the reference "
                      f"images), transformers {tv}, torch {torch.__version__}; head biases centred, logit_scale/"
                      f"logit_bias spread the reference cosines over sigmoid logits [-{LOGIT_SPAN}, {LOGIT_SPAN}]; "
                      f"Siglip2ImageProcessor(patch_size={p}, max_num_patches={processor.max_num_patches})")
            trained, templates = False, NAFLEX_TEMPLATES
        else:
            src = args.source
            pp = C.image_processor_config(src)
            model = Siglip2Model.from_pretrained(src, attn_implementation="eager").eval()
            p = int(model.config.vision_config.patch_size)
            if int(pp.get("patch_size", p)) != p:
                raise SystemExit(f"export: {src}: processor patch_size {pp.get('patch_size')} != model patch_size {p}")
            if args.size is None and "max_num_patches" not in pp:
                raise SystemExit(f"export: {src}: the image processor settings have no max_num_patches; give --size")
            size = args.size or naflex_default_size(p, pp["max_num_patches"])
            from transformers import AutoTokenizer, Siglip2Tokenizer

            tok_cfg = C.read_json(src, "tokenizer_config.json") or {}
            keep_case = args.keep_case or tok_cfg.get("do_lower_case") is False
            tok = AutoTokenizer.from_pretrained(src) if keep_case else Siglip2Tokenizer.from_pretrained(src)
            side = TextSide(tok, tok.backend_tokenizer, "siglip2")
            image_enc = NaFlexImageEncoder(model, size).eval()
            text_enc = (MaskedTextEncoder(model) if side.uses_mask else TextEncoder(model)).eval()
            name = args.name or Path(src.rstrip("/")).name
            source = f"{src} (NaFlex, fixed {size}x{size}), exported with transformers {tv}, torch {torch.__version__}"
            trained, templates = True, args.template or None
            # The checks feed HF's processor S x S images; with the checkpoint's max_num_patches it would
            # resize any S other than the default one, so those use max_num_patches = (S/p)^2 (the model
            # at exactly that shape).
            max_patches = int(pp.get("max_num_patches", 0))
            if naflex_default_size(p, max_patches) != size:
                print(f"export: --size {size}: {(size // p) ** 2} patches (the checkpoint's processor would resize "
                      f"a {size}x{size} tile to {naflex_default_size(p, max_patches) if max_patches else '?'} px); "
                      f"checked at max_num_patches {(size // p) ** 2}", file=sys.stderr)
                max_patches = (size // p) ** 2
            processor = Siglip2ImageProcessor(patch_size=p, max_num_patches=max_patches,
                                              image_mean=pp["image_mean"], image_std=pp["image_std"])
        mean, std = list(processor.image_mean), list(processor.image_std)
        context_length = CONTEXT_LENGTH
        out.mkdir(parents=True, exist_ok=True)
        logit_scale = float(model.logit_scale.detach().exp())
        logit_bias = float(model.logit_bias.detach())
        # The fixed-size wrapper == Hugging Face's own NaFlex path (processor inputs, with its padding).
        names, images_u8 = C.make_reference_images(size)
        hf = _hf_image_features(model, naflex_hf_inputs(processor, images_u8, size, p))
        with torch.no_grad():
            mine = image_enc(torch.from_numpy(C.preprocess_u8(images_u8, mean, std))).numpy()
        d = float(np.abs(hf - mine).max())
        print(f"export: fixed-size wrapper vs Siglip2Model NaFlex forward: max abs diff {d:.3g}", file=sys.stderr)
        if not d < args.tolerance:
            raise RuntimeError(f"the fixed-size wrapper differs from Hugging Face's NaFlex forward by {d}")

        export_graphs(out, image_enc, text_enc, side, size, context_length, args.opset)
        side.save(out / "tokenizer.json", context_length)
        checked = verify_tokenizer_json(out / "tokenizer.json", side,
                                        REF_TOKENIZER_TEXTS + [t.format(lb) for lb in REF_LABELS for t in REF_TEMPLATES]
                                        + fuzz_texts(), context_length)
        print(f"export: tokenizer.json == Hugging Face {type(side.hf).__name__} on {checked} texts", file=sys.stderr)
        write_manifest(out / "model.toml", architecture="siglip2-naflex", name=name, trained=trained, source=source,
                       size=size, mean=mean, std=std, context_length=context_length, side=side,
                       logit_scale=logit_scale, logit_bias=logit_bias, templates=templates)
        if not args.skip_verify:
            verify_onnx_against_torch(out, image_enc, text_enc, side, size, context_length, args.tolerance)

        if args.tiny and not args.no_reference:
            r = naflex_reference(model, processor, side, size, p)
            ref = compute_reference(r, side, size, mean, std, context_length, logit_scale, logit_bias)
            with torch.no_grad():
                fwd = model(input_ids=torch.from_numpy(r["ids"]), **r["inputs"])
            probs = torch.sigmoid(fwd.logits_per_image).double().numpy()
            formula = _sigmoid(logit_scale * r["cos"] + logit_bias)
            print(f"export: sigmoid(logits_per_image) vs the cosine formula: max abs diff "
                  f"{np.abs(probs - formula).max():.3g}", file=sys.stderr)
            ref.update({
                "description": "Hugging Face-computed parity fixtures: Siglip2ImageProcessor on the S x S images "
                               "(no resize; padded to max_num_patches with the mask) -> Siglip2Model "
                               "get_image_features / get_text_features, probs = sigmoid(logits_per_image) of "
                               "Siglip2Model.forward (tools/export/export.py siglip2 --tiny --naflex).",
                "templates": NAFLEX_TEMPLATES,
                "probs": probs.tolist(),
                "probs_formula": "sigmoid(logits_per_image) of Siglip2Model.forward (one template, so a label's "
                                 "embedding is its prompt's)",
                "top1": [REF_LABELS[int(i)] for i in probs.argmax(axis=1)],
                "naflex": {"patch_size": p, "position_grid": int(model.vision_model.embeddings.position_embedding_size),
                           "max_num_patches": int(processor.max_num_patches), "spatial_shapes": [size // p] * 2},
                "seed": seed, "onnx_precision": "fp32", "tolerance": {"embeds_rel": 1e-4, "probs_abs": 1e-4},
            })
            rep = separation_report(probs)
            ref["separation"] = rep
            if not seed_ok(rep):
                print(f"export: WARNING seed {seed} separates the reference images poorly: {rep}", file=sys.stderr)
            C.write_reference(out, ref, C.image_bins(r["images_u8"], r["pixels"]))
            print(f"export: reference top-1 {ref['top1']}, {json.dumps(rep)}", file=sys.stderr)
    C.report_done(out)
