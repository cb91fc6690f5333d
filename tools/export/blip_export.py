"""BLIP captioning (``BlipForConditionalGeneration``) -> ``cross-attention-decoder`` packages.

Used by ``export.py blip`` (see tools/export/README.md, "Cross-attention decoders").  A package::

    model.toml          manifest, family = "cross-attention-decoder", architecture = "blip"
    encoder.onnx        pixel_values [B,3,S,S] f32 -> memory [B,M,E] f32  (ViT, once per tile)
    cross_kv.onnx       memory [B,M,E] -> cross.{i}.key / cross.{i}.value [B,heads,M,head_dim]
                        (every decoder layer's cross-attention keys/values, once per tile)
    decoder.onnx        one merged step graph (prefill = past length 0, and decode steps):
                        input_ids [B,T] i64, attention_mask [B,past+T] i64, position_ids [B,T] i64,
                        memory_mask [B,M] i64, cross.{i}.key/value, past.{i}.key/value [B,heads,past,hd]
                        -> logits [B,T,V], present.{i}.key/value [B,heads,past+T,hd]
    tokenizer.json      HF tokenizers file (WordPiece, BERT post-processor [CLS] $A [SEP])
    reference/          (--tiny only) PyTorch `generate` references

The graphs re-state HF's eager BLIP text decoder (a BERT with a cross-attention block after each
self-attention) reading every weight from the HF modules; the step graph takes position ids and
the self-attention cache as plain tensors and is checked against ``text_decoder`` before export.

BLIP's ``generate`` (transformers 5.24, ``BlipForConditionalGeneration.generate``), reproduced
by the runtime through the manifest's ``[prompt]``:

* the text prefix is tokenized WITH special tokens (``[CLS] prefix [SEP]``), then
  ``input_ids[:, 0] = text_config.bos_token_id`` (``[DEC]``) and ``input_ids[:, :-1]`` drops the
  trailing ``[SEP]`` (``[prompt] start_token_id``, ``trim_end = 1``);
* without a prefix the decoder starts from ``[bos]`` alone (``[[bos, eos]]`` trimmed);
* generation ends on ``sep_token_id`` (``[SEP]``, the manifest's ``eos_token_id``) and pads with
  ``pad_token_id``; the cross-attention mask is all ones (``memory_mask``).

HF's batched BLIP generate is only defined for prompts of one length (BERT pads on the right, so
a shorter row would keep its ``[SEP]`` and pads inside its prompt); batches of one length are
compared with HF's batched ``generate``, batches of mixed lengths with HF run one item at a time
(the runtime left-pads with explicit position ids, so a batch equals its items one by one).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from torch import nn

import common as C
from common import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

DEFAULT_SEED = 0
DEFAULT_INIT_STD = 0.3
#: added to the [SEP] logit bias of the prediction head in --tiny models, so that some references end.
DEFAULT_EOS_SCALE = {"blip": 3.5, "blip-vqa": 1.5}
#: --tiny: factor on the cross-attention output and feed-forward output weights of the text decoder
#: (with every weight N(0, init std), those blocks swamp the token path and every step repeats the
#: previous token).
TINY_BLOCK_SCALE = 0.1

FAMILY = "cross-attention-decoder"

#: (name, images, prefixes, generation); prefixes of one case of several images have one
#: token length unless the name says "mixed" (then HF is run one item at a time).
REF_PREFIXES_SAME_LEN = ["a satellite image of", "an aerial photo of", "a dense green forest"]
REF_PREFIX_MIXED = ["", "a satellite image of", "the river is wide and surrounded by"]

# --------------------------------------------------------------------------------------
# Tiny WordPiece tokenizer (BERT layout), trained on a small caption corpus
# --------------------------------------------------------------------------------------

_SUBJECTS = ["forest", "river", "city", "desert", "farmland", "lake", "coast", "harbor", "airport",
             "mountain", "glacier", "wetland", "vineyard", "road", "bridge", "village", "field",
             "orchard", "beach", "island", "canal", "quarry", "dam", "highway", "suburb"]
_ADJS = ["dense", "green", "dry", "flooded", "bright", "dark", "sandy", "snowy", "urban", "rural",
         "small", "large", "narrow", "wide", "irrigated", "burned", "cloudy", "clear"]
_FRAMES = ["a satellite image of a {a} {s}",
           "an aerial photo of the {s} with {a} {t}",
           "a {a} {s} next to a {t}",
           "sentinel-2 scene showing {a} {s} and a {t}",
           "the {s} is {a} and surrounded by {t}",
           "question: is there a {s} in this picture? answer: yes",
           "how many {s}s are there? two {a} ones near the {t}."]

#: BERT's special tokens (bert-base-uncased order of roles) + BLIP's [DEC] (bos) and [ENC].
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "[ENC]"]


def caption_corpus() -> list[str]:
    lines = []
    for i in range(420):
        s = _SUBJECTS[i % len(_SUBJECTS)]
        t = _SUBJECTS[(i * 7 + 3) % len(_SUBJECTS)]
        a = _ADJS[(i * 5 + i // 9) % len(_ADJS)]
        lines.append(_FRAMES[i % len(_FRAMES)].format(a=a, s=s, t=t))
    return lines


def build_tiny_tokenizer():
    """(tokenizers.Tokenizer, ids) of a BERT-style uncased WordPiece tokenizer.

    No installed package ships bert-base-uncased's vocab.txt (30522 pieces would also not fit a
    3 MB fixture), so the vocabulary is built from a small caption corpus, deterministically
    (the ``tokenizers`` WordPiece trainer breaks ties in hash order, so two runs differ): the
    special tokens, every character and its ``##`` continuation, then every word of the corpus
    (BERT-normalised and pre-tokenized) by falling frequency, then alphabetically.  BERT's
    normalizer, pre-tokenizer, decoder and ``[CLS] $A [SEP]`` post-processor.
    """
    import string
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    norm, pre = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    words = Counter(w for line in caption_corpus()
                    for w, _ in pre.pre_tokenize_str(norm.normalize_str(line)))
    chars = sorted({c for w in words for c in w} | set("abcdefghijklmnopqrstuvwxyz0123456789" + string.punctuation))
    pieces = SPECIALS + chars + ["##" + c for c in chars]
    pieces += [w for w, _ in sorted(words.items(), key=lambda kv: (-kv[1], kv[0])) if w not in pieces]
    vocab = {p: i for i, p in enumerate(pieces)}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = norm, pre, decoders.WordPiece()
    ids = {t: vocab[t] for t in SPECIALS}
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])])
    return tok, ids


def hf_tokenizer(tok):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", sep_token="[SEP]",
                                   pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]",
                                   bos_token="[DEC]", padding_side="right")


# --------------------------------------------------------------------------------------
# Tiny model
# --------------------------------------------------------------------------------------


def _reinit(model: nn.Module, std: float) -> None:
    """Re-draw every Linear/Embedding/Conv weight N(0, std) (biases N(0, std/4)); norms stay."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Embedding, nn.Conv2d)):
            nn.init.normal_(m.weight, 0.0, std)
            if getattr(m, "bias", None) is not None:
                nn.init.normal_(m.bias, 0.0, std / 4)
    for name, p in model.named_parameters():
        if name.endswith("class_embedding") or name.endswith("position_embedding"):
            nn.init.normal_(p, 0.0, 1.0)


#: --shape choices ("tiny" first: the default, the test fixture with references; "mid": a random
#: benchmark model without reference/, see _mid_config).
SHAPES = ["tiny", "mid"]
#: init std / EOS bias of the benchmark shape (near-uniform logits are fine there: benchmarks force
#: the caption length with min_new_tokens).
BENCH_INIT_STD = 0.02
BENCH_EOS_SCALE = 1.0
#: BERT's vocabulary size (bert-base-uncased + BLIP's [DEC]): the mid shape's logits are this wide,
#: although the tiny tokenizer only knows its first few hundred ids (ids past it decode to nothing).
BERT_VOCAB = 30524


def _mid_config(ids: dict):
    """BlipConfig of the benchmark shape ``mid``: the text decoder of BLIP-base (hidden 768,
    12 layers, 12 heads, ffn 3072, vocab 30524), a small 2-layer 64-wide ViT at 224 px, patch 32
    (50 memory tokens). Random weights, for timing only."""
    from transformers import BlipConfig

    return BlipConfig(
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                           image_size=224, patch_size=32),
        text_config=dict(vocab_size=BERT_VOCAB, hidden_size=768, encoder_hidden_size=64, intermediate_size=3072,
                         num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=512,
                         bos_token_id=ids["[DEC]"], eos_token_id=ids["[SEP]"], sep_token_id=ids["[SEP]"],
                         pad_token_id=ids["[PAD]"], tie_word_embeddings=False),
        tie_word_embeddings=False,
    )


def build_tiny(seed: int, init_std: float, eos_scale: float, vqa: bool = False, shape: str = "tiny"):
    """(model, tokenizer, ids): a seeded random BlipForConditionalGeneration (or, ``vqa``,
    BlipForQuestionAnswering) of the real classes.

    Captioning: vision width 48 and text width 32 differ (as in BLIP-large: 1024 vs 768), so the
    cross-attention keys/values really map the memory width to the decoder's.  VQA: the answer
    decoder cross-attends to the question encoding (text width), the question encoder to the
    image, so both widths are 32 (as in BLIP-base VQA: 768 and 768).  The prediction head is not
    tied to the word embeddings (``tie_word_embeddings=False``): a tied random head predicts the
    token it was fed, every caption one repeated token.
    """
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipForQuestionAnswering

    tok, ids = build_tiny_tokenizer()
    V = tok.get_vocab_size()
    torch.manual_seed(seed)
    width = 32 if vqa else 48
    if shape != "tiny" and vqa:
        raise SystemExit(f"export.py blip-vqa: --shape {shape} is only for captioning (export.py blip)")
    cfg = _mid_config(ids) if shape == "mid" else BlipConfig(
        vision_config=dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                           num_attention_heads=2, image_size=32, patch_size=8),
        text_config=dict(vocab_size=V, hidden_size=32, encoder_hidden_size=width, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=64,
                         bos_token_id=ids["[DEC]"], eos_token_id=ids["[SEP]"], sep_token_id=ids["[SEP]"],
                         pad_token_id=ids["[PAD]"], tie_word_embeddings=False),
        tie_word_embeddings=False,
    )
    cfg._attn_implementation = "eager"
    model = (BlipForQuestionAnswering if vqa else BlipForConditionalGeneration)(cfg)
    _reinit(model, init_std)
    with torch.no_grad():
        model.text_decoder.cls.predictions.decoder.bias[ids["[SEP]"]] += eos_scale
        for layer in (model.text_decoder.bert.encoder.layer if shape == "tiny" else []):
            layer.crossattention.output.dense.weight.mul_(TINY_BLOCK_SCALE)
            layer.output.dense.weight.mul_(TINY_BLOCK_SCALE)
    model.eval()
    return model, tok, ids


# --------------------------------------------------------------------------------------
# Wrappers (what goes into the three graphs)
# --------------------------------------------------------------------------------------


class VisionEncoder(nn.Module):
    """BLIP generate(): ``vision_model(pixel_values)[0]`` (post-layernormed last hidden state)."""

    def __init__(self, model):
        super().__init__()
        self.v = model.vision_model

    def forward(self, pixel_values):
        return self.v(pixel_values=pixel_values)[0]


class QuestionEncoder(nn.Module):
    """BLIP VQA generate(): the ViT, then ``text_encoder`` (BlipTextModel, bidirectional, each
    layer cross-attending to the image) on the question: ``question_embeds``.  Restated with
    HF's modules (HF's mask helpers skip an all-ones mask, which tracing would bake in)."""

    def __init__(self, model):
        super().__init__()
        self.v = model.vision_model
        self.t = model.text_encoder
        tc = model.config.text_config
        self.heads = tc.num_attention_heads
        self.head_dim = tc.hidden_size // tc.num_attention_heads

    def forward(self, pixel_values, input_ids, attention_mask):
        image = self.v(pixel_values=pixel_values)[0]
        emb = self.t.embeddings
        pos = torch.cumsum(torch.ones_like(input_ids), dim=1) - 1
        h = emb.LayerNorm(emb.word_embeddings(input_ids) + emb.position_embeddings(pos))
        neg = torch.tensor(torch.finfo(h.dtype).min, dtype=h.dtype)
        mask = torch.where(attention_mask[:, None, None, :] != 0, torch.zeros((), dtype=h.dtype), neg)
        B, Hd = h.shape[0], self.heads * self.head_dim

        def heads(x):
            return x.view(B, -1, self.heads, self.head_dim).transpose(1, 2)

        for layer in self.t.encoder.layer:
            a = layer.attention.self
            ctx = _attend(heads(a.query(h)), heads(a.key(h)), heads(a.value(h)), mask)
            h = layer.attention.output(ctx.transpose(1, 2).reshape(B, -1, Hd), h)
            c = layer.crossattention.self
            ctx = _attend(heads(c.query(h)), heads(c.key(image)), heads(c.value(image)), 0.0)
            h = layer.crossattention.output(ctx.transpose(1, 2).reshape(B, -1, Hd), h)
            h = layer.output(layer.intermediate(h), h)
        return h


class CrossKV(nn.Module):
    """Every decoder layer's cross-attention key/value projections of the memory."""

    def __init__(self, text_decoder, heads: int, head_dim: int):
        super().__init__()
        self.layers = text_decoder.bert.encoder.layer
        self.heads, self.head_dim = heads, head_dim

    def forward(self, memory):
        B, M = memory.shape[0], memory.shape[1]
        out = []
        for layer in self.layers:
            c = layer.crossattention.self
            out.append(c.key(memory).view(B, M, self.heads, self.head_dim).transpose(1, 2))
            out.append(c.value(memory).view(B, M, self.heads, self.head_dim).transpose(1, 2))
        return tuple(out)


def _additive_mask(attention_mask: torch.Tensor, ids: torch.Tensor, dtype) -> torch.Tensor:
    """[B,1,T,past+T]: 0 where key j <= query position and mask[b,j] == 1, else finfo.min.

    A padding query may attend to itself, so that no row is fully masked; rows of real tokens are
    exactly HF's causal & padding mask.
    """
    ones_k = torch.ones_like(attention_mask[:1, :])
    k_idx = torch.cumsum(ones_k, dim=1) - 1                                     # [1, K]
    total = torch.sum(ones_k, dim=1, keepdim=True)                              # [1, 1]
    ones_q = torch.ones_like(ids[:1, :])                                        # [1, T]
    q_idx = torch.cumsum(ones_q, dim=1) - 1 + (total - torch.sum(ones_q, dim=1, keepdim=True))
    causal = k_idx[:, None, :] <= q_idx[:, :, None]
    diag = k_idx[:, None, :] == q_idx[:, :, None]
    allowed = (causal[:, None, :, :] & (attention_mask[:, None, None, :] != 0)) | diag[:, None, :, :]
    return torch.where(allowed, torch.zeros((), dtype=dtype), torch.tensor(torch.finfo(dtype).min, dtype=dtype))


def _attend(q, k, v, mask_add):
    w = torch.matmul(q, k.transpose(-1, -2)) / (q.shape[-1] ** 0.5) + mask_add
    return torch.matmul(torch.softmax(w, dim=-1), v)


class DecoderStep(nn.Module):
    """HF BlipTextLMHeadModel (eager, is_decoder) with explicit position ids, a tensor
    self-attention cache and precomputed cross-attention keys/values."""

    def __init__(self, text_decoder, cfg):
        super().__init__()
        self.td = text_decoder
        self.n_layers = cfg.num_hidden_layers
        self.heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads

    def forward(self, input_ids, attention_mask, position_ids, memory_mask, *kv):
        L = self.n_layers
        cross, past = kv[:2 * L], kv[2 * L:]
        emb = self.td.bert.embeddings
        h = emb.word_embeddings(input_ids) + emb.position_embeddings(position_ids)
        h = emb.LayerNorm(h)
        self_mask = _additive_mask(attention_mask, input_ids, h.dtype)
        neg = torch.tensor(torch.finfo(h.dtype).min, dtype=h.dtype)
        cross_mask = torch.where(memory_mask[:, None, None, :] != 0, torch.zeros((), dtype=h.dtype), neg)
        B = h.shape[0]
        presents = []
        for i, layer in enumerate(self.td.bert.encoder.layer):
            a = layer.attention.self
            q = a.query(h).view(B, -1, self.heads, self.head_dim).transpose(1, 2)
            k = a.key(h).view(B, -1, self.heads, self.head_dim).transpose(1, 2)
            v = a.value(h).view(B, -1, self.heads, self.head_dim).transpose(1, 2)
            k = torch.cat([past[2 * i], k], dim=2)
            v = torch.cat([past[2 * i + 1], v], dim=2)
            presents += [k, v]
            ctx = _attend(q, k, v, self_mask).transpose(1, 2).reshape(B, -1, self.heads * self.head_dim)
            h = layer.attention.output(ctx, h)
            c = layer.crossattention.self
            q = c.query(h).view(B, -1, self.heads, self.head_dim).transpose(1, 2)
            ctx = C.attend_item_rows(q, cross[2 * i], cross[2 * i + 1], cross_mask, _attend)
            ctx = ctx.transpose(1, 2).reshape(B, -1, self.heads * self.head_dim)
            h = layer.crossattention.output(ctx, h)
            h = layer.output(layer.intermediate(h), h)
        return (self.td.cls(h), *presents)


# --------------------------------------------------------------------------------------
# Model plumbing
# --------------------------------------------------------------------------------------


class Parts:
    """Everything the exporter needs about one loaded BLIP captioning model."""

    def __init__(self, model, hf_tok, size: int, mean, std, vqa: bool = False):
        self.model, self.hf_tok, self.vqa = model, hf_tok, vqa
        self.architecture = "blip-vqa" if vqa else "blip"
        self.size, self.mean, self.std = size, list(mean), list(std)
        tc, vc = model.config.text_config, model.config.vision_config
        self.encoder = (QuestionEncoder(model) if vqa else VisionEncoder(model)).eval()
        self.decoder = DecoderStep(model.text_decoder, tc).eval()
        self.layers, self.heads, self.head_dim = self.decoder.n_layers, self.decoder.heads, self.decoder.head_dim
        self.cross = CrossKV(model.text_decoder, self.heads, self.head_dim).eval()
        self.hidden = int(tc.hidden_size)
        self.cross_width = int(tc.encoder_hidden_size)
        self.memory_width = int(tc.hidden_size if vqa else vc.hidden_size)
        self.memory_tokens = (vc.image_size // vc.patch_size) ** 2 + 1
        self.vocab = int(tc.vocab_size)
        self.max_positions = int(tc.max_position_embeddings)
        self.bos, self.sep, self.pad = int(tc.bos_token_id), int(tc.sep_token_id), int(tc.pad_token_id)

    # -- the prompt rule the Rust side implements (manifest [prompt]) -----------------------
    def start_ids(self, prefix: str) -> list[int]:
        """BLIP generate's decoder start: tokenized with specials, first -> bos, last dropped.
        VQA: the decoder starts from bos alone (the question goes to the encoder)."""
        if self.vqa:
            return [self.bos]
        ids = self.hf_tok(prefix)["input_ids"] if prefix else [self.bos, self.sep]
        ids = list(ids)
        ids[0] = self.bos
        return ids[:-1]

    def hf_generate(self, pixels: np.ndarray, prefixes: list[str], **kw) -> list[list[int]]:
        """HF generate on one batch (prefixes of one token length, or all empty): new tokens."""
        px = torch.from_numpy(pixels)
        if self.vqa:
            # BlipProcessor pads questions on the right (BERT); the answer decoder then sees
            # question_embeds with an all-ones mask, pads included (HF's generate).
            enc = self.hf_tok(prefixes, return_tensors="pt", padding=True)
            out = self.model.generate(input_ids=enc["input_ids"], pixel_values=px,
                                      attention_mask=enc["attention_mask"], **kw)
            return [trim(r.tolist(), self.sep, self.pad) for r in out[:, 1:]]
        if all(p == "" for p in prefixes):
            out = self.model.generate(pixel_values=px, **kw)
            plen = 1
        else:
            enc = self.hf_tok(prefixes, return_tensors="pt", padding=True)
            assert int(enc["attention_mask"].min()) == 1, "one token length per HF batch"
            out = self.model.generate(pixel_values=px, input_ids=enc["input_ids"].clone(),
                                      attention_mask=enc["attention_mask"], **kw)
            plen = enc["input_ids"].shape[1] - 1
        return [trim(r.tolist(), self.sep, self.pad) for r in out[:, plen:]]


def trim(row: list[int], eos: int, pad: int) -> list[int]:
    """New tokens up to and including the first end token (the rest of a row is padding)."""
    out = []
    for t in row:
        out.append(int(t))
        if t == eos:
            break
    return out


#: the question the VQA graphs are checked and exported with
CHECK_QUESTION = "how many rivers are there?"


def encoder_args(parts: Parts, pixels: np.ndarray, questions: list[str] | None = None) -> tuple:
    """The encoder graph's inputs: pixels, and for VQA the right-padded questions + mask."""
    px = torch.from_numpy(np.ascontiguousarray(pixels))
    if not parts.vqa:
        return (px,)
    qs = questions or [CHECK_QUESTION, "is there a forest?", "what is next to the dense green lake?"]
    qs = [qs[k % len(qs)] for k in range(pixels.shape[0])]
    enc = parts.hf_tok(qs, return_tensors="pt", padding=True)
    return (px, enc["input_ids"], enc["attention_mask"])


def memory_and_cross(parts: Parts, pixels: np.ndarray):
    mem = parts.encoder(*encoder_args(parts, pixels))
    return mem, parts.cross(mem)


def empty_past(parts: Parts, batch: int) -> list[torch.Tensor]:
    return [torch.zeros(batch, parts.heads, 0, parts.head_dim) for _ in range(2 * parts.layers)]


def check_decoder_against_hf(parts: Parts, pixels: np.ndarray) -> float:
    """The step graph (prefill + cached steps) reproduces HF text_decoder logits."""
    gen = torch.Generator().manual_seed(7)
    B, T = pixels.shape[0], 7
    ids = torch.randint(7, parts.vocab, (B, T), generator=gen)
    ids[:, 0] = parts.bos
    mem, cross = memory_and_cross(parts, pixels)
    mmask = torch.ones(mem.shape[:2], dtype=torch.long)
    if parts.vqa:
        px, qids, qmask = encoder_args(parts, pixels)
        image = parts.model.vision_model(pixel_values=px)[0]
        hf_mem = parts.model.text_encoder(input_ids=qids, attention_mask=qmask, encoder_hidden_states=image,
                                          encoder_attention_mask=torch.ones(image.shape[:2], dtype=torch.long),
                                          return_dict=False)[0]
        diff = float((hf_mem - mem).abs().max())
        if diff > 1e-4:
            raise SystemExit(f"export: question encoder wrapper differs from HF text_encoder by {diff:.3g}")
    ref = parts.model.text_decoder(input_ids=ids, encoder_hidden_states=mem, encoder_attention_mask=mmask,
                                   use_cache=False).logits
    worst = 0.0
    split = 4
    mask = torch.ones(B, split, dtype=torch.long)
    pos = torch.arange(split)[None].expand(B, -1)
    out = parts.decoder(ids[:, :split], mask, pos, mmask, *cross, *empty_past(parts, B))
    worst = max(worst, float((out[0] - ref[:, :split]).abs().max()))
    past = list(out[1:])
    for t in range(split, T):
        mask = torch.ones(B, t + 1, dtype=torch.long)
        pos = torch.full((B, 1), t, dtype=torch.long)
        out = parts.decoder(ids[:, t:t + 1], mask, pos, mmask, *cross, *past)
        past = list(out[1:])
        worst = max(worst, float((out[0][:, 0] - ref[:, t]).abs().max()))
    if worst > 1e-4:
        raise SystemExit(f"export: decoder wrapper differs from HF text_decoder by {worst:.3g}")
    return worst


def io_names(layers: int):
    cross = [f"cross.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    past = [f"past.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    return cross, past, present


def export_graphs(parts: Parts, out: Path, opset: int) -> None:
    L = parts.layers
    cross_names, past_names, present_names = io_names(L)
    args = encoder_args(parts, np.zeros((2, 3, parts.size, parts.size), np.float32))
    names = ["pixel_values", "input_ids", "attention_mask"][:len(args)]
    axes = {"pixel_values": {0: "batch"}, "memory": {0: "batch", 1: "memory"},
            "input_ids": {0: "batch", 1: "text"}, "attention_mask": {0: "batch", 1: "text"}}
    C.export_onnx(parts.encoder, args, out / "encoder.onnx", names, ["memory"],
                  {k: v for k, v in axes.items() if k in names or k == "memory"}, opset)
    mem = parts.encoder(*args)
    axes = {"memory": {0: "batch", 1: "memory"}}
    axes.update({n: {0: "batch", 2: "memory"} for n in cross_names})
    C.export_onnx(parts.cross, (mem,), out / "cross_kv.onnx", ["memory"], cross_names, axes, opset)
    cross = parts.cross(mem)
    B, T, P = 2, 3, 2
    ids = torch.full((B, T), parts.bos, dtype=torch.long)
    mask = torch.ones(B, P + T, dtype=torch.long)
    pos = torch.arange(P, P + T)[None].expand(B, -1).contiguous()
    mmask = torch.ones(B, mem.shape[1], dtype=torch.long)
    past = [torch.zeros(B, parts.heads, P, parts.head_dim) for _ in range(2 * L)]
    ins = ["input_ids", "attention_mask", "position_ids", "memory_mask", *cross_names, *past_names]
    outs = ["logits", *present_names]
    axes = {"input_ids": {0: "batch", 1: "new"}, "attention_mask": {0: "batch", 1: "total"},
            "position_ids": {0: "batch", 1: "new"}, "memory_mask": {0: "batch", 1: "memory"},
            "logits": {0: "batch", 1: "new"}}
    axes.update({n: {0: "batch", 2: "memory"} for n in cross_names})
    axes.update({n: {0: "batch", 2: "past"} for n in past_names})
    axes.update({n: {0: "batch", 2: "total"} for n in present_names})
    C.export_onnx(parts.decoder, (ids, mask, pos, mmask, *cross, *past), out / "decoder.onnx", ins, outs, axes,
                  opset)


def verify_onnx_against_torch(parts: Parts, out: Path, pixels: np.ndarray, tol: float) -> float:
    """ONNX Runtime vs the torch wrappers: memory, cross K/V, prefill and a cached step."""
    enc, crs, dec = (C.ort_session(out / n) for n in ("encoder.onnx", "cross_kv.onnx", "decoder.onnx"))
    L = parts.layers
    cross_names, past_names, present_names = io_names(L)
    mem_t, cross_t = memory_and_cross(parts, pixels)
    args = encoder_args(parts, pixels)
    names = ["pixel_values", "input_ids", "attention_mask"][:len(args)]
    mem = enc.run(None, {n: a.numpy() for n, a in zip(names, args)})[0]
    worst = C.rel_diff(mem, mem_t.numpy())
    cross = crs.run(None, {"memory": mem})
    for a, b in zip(cross, cross_t):
        worst = max(worst, C.rel_diff(a, b.numpy()))
    B = pixels.shape[0]
    ids = np.array([[parts.bos, 9, 12]] * B, np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones((B, 3), np.int64),
             "position_ids": np.tile(np.arange(3, dtype=np.int64), (B, 1)),
             "memory_mask": np.ones(mem.shape[:2], np.int64)}
    feeds.update(dict(zip(cross_names, cross)))
    feeds.update({n: np.zeros((B, parts.heads, 0, parts.head_dim), np.float32) for n in past_names})
    got = dec.run(None, feeds)
    ref = parts.decoder(*(torch.from_numpy(feeds[n]) for n in ["input_ids", "attention_mask", "position_ids",
                                                                  "memory_mask", *cross_names, *past_names]))
    for a, b in zip(got, ref):
        worst = max(worst, C.rel_diff(a, b.numpy()))
    C.verify_item_rows(lambda f: dec.run(None, f), feeds, ["memory_mask", *cross_names], tol)
    if worst > tol:
        raise SystemExit(f"export: ONNX Runtime differs from PyTorch by {worst:.3g} (> {tol})")
    print(f"export: ONNX Runtime vs PyTorch: max rel diff {worst:.3g}", file=sys.stderr)
    return worst


# --------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------


def reference_cases(n_images: int) -> list[dict]:
    greedy = dict(max_new_tokens=12, num_beams=1, do_sample=False)
    beams = dict(max_new_tokens=12, num_beams=3, do_sample=False, early_stopping=False, length_penalty=1.0)
    cases = []
    for i in range(n_images):
        cases.append(dict(name=f"greedy_img{i}", images=[i], prefixes=[""], gen=greedy))
    cases.append(dict(name="greedy_prefix_img0", images=[0], prefixes=["a satellite image of"], gen=greedy))
    cases.append(dict(name="beam3_img1", images=[1], prefixes=[""], gen=beams))
    cases.append(dict(name="beam3_prefix_img2", images=[2], prefixes=["an aerial photo of"], gen=beams))
    cases.append(dict(name="greedy_batch_noprefix", images=list(range(n_images)), prefixes=[""] * n_images,
                      gen=greedy))
    cases.append(dict(name="greedy_batch_prefixes", images=[0, 1, 2], prefixes=REF_PREFIXES_SAME_LEN, gen=greedy))
    cases.append(dict(name="beam3_batch_prefixes", images=[3, 2, 1], prefixes=REF_PREFIXES_SAME_LEN, gen=beams))
    cases.append(dict(name="greedy_batch_mixed", images=[1, 2, 3], prefixes=REF_PREFIX_MIXED, gen=greedy))
    cases.append(dict(name="beam3_batch_mixed", images=[0, 3, 2], prefixes=REF_PREFIX_MIXED, gen=beams))
    cases.append(dict(name="greedy_penalties_img3", images=[3], prefixes=["a satellite image of"],
                      gen=dict(max_new_tokens=10, min_new_tokens=6, num_beams=1, do_sample=False,
                               repetition_penalty=1.5)))
    cases.append(dict(name="beam2_length_penalty_img0", images=[0], prefixes=[""],
                      gen=dict(max_new_tokens=10, num_beams=2, do_sample=False, early_stopping=False,
                               length_penalty=0.5, repetition_penalty=1.3)))
    return cases


#: VQA questions: two of one token length, and longer and shorter ones.
REF_QUESTIONS = ["is there a river?", "is there a forest?", "how many bridges are there?",
                 "what is next to the dense green lake in this picture?"]


def vqa_reference_cases(n_images: int) -> list[dict]:
    """VQA: every question goes to the encoder, the answer decoder starts from [DEC] alone.
    HF pads a batch's questions on the right and its decoder sees the pads (an all-ones
    question mask), so batches of mixed question lengths are compared with HF's batch as is."""
    greedy = dict(max_new_tokens=12, num_beams=1, do_sample=False)
    beams = dict(max_new_tokens=12, num_beams=3, do_sample=False, early_stopping=False, length_penalty=1.0)
    q = REF_QUESTIONS
    cases = [dict(name=f"greedy_img{i}", images=[i], prefixes=[q[i % len(q)]], gen=greedy) for i in range(n_images)]
    cases.append(dict(name="beam3_img1", images=[1], prefixes=[q[2]], gen=beams))
    cases.append(dict(name="greedy_batch_same_question", images=list(range(n_images)), prefixes=[q[0]] * n_images,
                      gen=greedy))
    cases.append(dict(name="greedy_batch_same_length", images=[2, 3], prefixes=q[:2], gen=greedy))
    cases.append(dict(name="beam3_batch_same_length", images=[0, 1], prefixes=q[:2], gen=beams))
    cases.append(dict(name="greedy_batch_mixed_padded", images=[0, 1, 2], prefixes=q[1:], gen=greedy))
    cases.append(dict(name="beam3_batch_mixed_padded", images=[3, 2, 1], prefixes=q[1:], gen=beams))
    cases.append(dict(name="greedy_penalties_img2", images=[2], prefixes=[q[3]],
                      gen=dict(max_new_tokens=10, min_new_tokens=6, num_beams=1, do_sample=False,
                               repetition_penalty=1.5)))
    return cases


def compute_references(parts: Parts, seed: int, init_std: float, eos_scale: float):
    names, images_u8 = C.make_reference_images(parts.size)
    pixels = C.preprocess_u8(images_u8, parts.mean, parts.std)
    out_cases = []
    for c in (vqa_reference_cases if parts.vqa else reference_cases)(len(names)):
        px = np.ascontiguousarray(pixels[c["images"]])
        lengths = {len(parts.start_ids(p)) for p in c["prefixes"]}
        mixed = len(lengths) > 1
        if mixed:
            new = [parts.hf_generate(px[k:k + 1], [p], **c["gen"])[0] for k, p in enumerate(c["prefixes"])]
        else:
            new = parts.hf_generate(px, c["prefixes"], **c["gen"])
        # the whole batch equals its items one by one (HF itself)
        alone = [parts.hf_generate(px[k:k + 1], [p], **c["gen"])[0] for k, p in enumerate(c["prefixes"])]
        gen = {"max_new_tokens": 20, "min_new_tokens": 0, "num_beams": 1, "repetition_penalty": 1.0,
               "length_penalty": 1.0, "early_stopping": False}
        gen.update({k: v for k, v in c["gen"].items() if k != "do_sample"})
        out_cases.append({
            "name": c["name"],
            "images": c["images"],
            "prompts": c["prefixes"],
            "hf_batched": not mixed,
            "tokenized": [parts.hf_tok(p)["input_ids"] if p or parts.vqa else [] for p in c["prefixes"]],
            "start_ids": [parts.start_ids(p) for p in c["prefixes"]],
            "generation": gen,
            "new_tokens": new,
            "hit_eos": [bool(t and t[-1] == parts.sep) for t in new],
            "text": [parts.hf_tok.decode(t, skip_special_tokens=True) for t in new],
            "checks": {"batch_equals_items": new == alone},
        })
        print(f"export: {c['name']}: {new} batched={not mixed} batch==items={new == alone}", file=sys.stderr)
    mem, cross = memory_and_cross(parts, pixels[:1])
    ref = {
        "description": f"PyTorch {type(parts.model).__name__}.generate() references for this package "
                       f"(tools/export/export.py {parts.architecture}); new tokens only, prompt excluded.",
        "architecture": parts.architecture,
        "seed": seed, "init_std": init_std, "eos_bias_added": eos_scale,
        "transformers": transformers.__version__, "torch": torch.__version__,
        **C.images_block(names, parts.size, len(names)),
        "mean": parts.mean, "std": parts.std,
        "bos_token_id": parts.bos, "sep_token_id": parts.sep, "pad_token_id": parts.pad,
        "memory_shape": list(mem.shape), "memory_img0_first8": mem[0, 0, :8].tolist(),
        "cases": out_cases,
    }
    return ref, images_u8, pixels


def degeneracy_report(ref: dict) -> tuple[bool, str]:
    greedy = [c for c in ref["cases"] if c["name"].startswith("greedy_img")]
    outs = [tuple(c["new_tokens"][0]) for c in greedy]
    distinct = len(set(outs)) == len(outs)
    max_distinct = max(len(set(t)) for c in ref["cases"] for t in c["new_tokens"])
    eos_cases = [c["name"] for c in ref["cases"] if any(c["hit_eos"])]
    long_cases = [c["name"] for c in ref["cases"] if not all(c["hit_eos"])]
    ok = distinct and max_distinct >= 5 and len(eos_cases) > 0 and len(long_cases) > 0
    return ok, (f"distinct across images {distinct}, most distinct tokens in a caption {max_distinct}, "
                f"ends in {len(eos_cases)} cases, runs to max_new_tokens in {len(long_cases)}")


# --------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------


def write_manifest(path: Path, parts: Parts, *, name: str, trained: bool, source: str) -> None:
    C.write_toml(path, [
        (None, [("family", FAMILY, ""), ("architecture", parts.architecture, ""), ("name", name, ""),
                ("trained", trained, ""), ("source", source, "")]),
        ("encoder", [("onnx", "encoder.onnx", "run once per tile"),
                     ("pixel_values", "pixel_values", "float32 [B,3,S,S], already normalised"),
                     *([("input_ids", "input_ids", "int64 [B,L]: the question (right padded)"),
                        ("attention_mask", "attention_mask", "int64 [B,L]")] if parts.vqa else []),
                     ("memory", "memory", "float32 [B,M,E]: what the decoder cross-attends to")]),
        *C.cross_decoder_sections(layers=parts.layers, heads=parts.heads, head_dim=parts.head_dim,
                                  hidden=parts.hidden, cross_width=parts.cross_width, vocab=parts.vocab,
                                  position_ids="int64 [B,T]",
                                  max_positions=(parts.max_positions, "longest start + generated sequence")),
        ("prompt", [("add_special_tokens", True, "tokenize the question as [CLS] question [SEP]"),
                    ("start_token_id", parts.bos, "the answer decoder starts from it ([DEC])")]
         if parts.vqa else
         [("add_special_tokens", True, "tokenize the text prefix as [CLS] prefix [SEP]"),
          ("start_token_id", parts.bos, "replaces the first token (BLIP: [DEC])"),
          ("trim_end", 1, "tokens dropped from the end (BLIP: the trailing [SEP])")]),
        C.preprocess_section(parts.size, parts.mean, parts.std),
        ("tokenizer", [("file", "tokenizer.json", ""), ("bos_token_id", parts.bos, "[DEC]"),
                       ("eos_token_id", parts.sep, "[SEP]: generation ends here"),
                       ("pad_token_id", parts.pad, "")]),
        ("generation", [("max_new_tokens", 20, ""), ("num_beams", 1, ""), ("repetition_penalty", 1.0, "")]),
    ])


# --------------------------------------------------------------------------------------
# Loading a real checkpoint
# --------------------------------------------------------------------------------------


def load_checkpoint(src: str, vqa: bool) -> Parts:
    from transformers import AutoTokenizer, BlipForConditionalGeneration, BlipForQuestionAnswering

    pp = C.image_processor_config(src)
    tok = AutoTokenizer.from_pretrained(src)
    cls = BlipForQuestionAnswering if vqa else BlipForConditionalGeneration
    model = cls.from_pretrained(src, attn_implementation="eager", dtype=torch.float32).eval()
    vc = model.config.vision_config
    size = C.square_size(pp, vc.image_size)
    if size != vc.image_size:
        raise ValueError(f"image processor size {size} != vision_config.image_size {vc.image_size}")
    return Parts(model, tok, size, pp["image_mean"], pp["image_std"], vqa=vqa)


def tiny_parts(command: str, shape: str = "tiny", seed=None, init_std=None, eos_scale=None):
    """(parts, seed, init_std, eos_scale) of ``--tiny [--shape S]`` with these overrides (None: the
    defaults); also what bench/peer_caption_xdec.py builds to time HF generate on the same weights."""
    bench = shape != "tiny"
    seed = DEFAULT_SEED if seed is None else seed
    init_std = (BENCH_INIT_STD if bench else DEFAULT_INIT_STD) if init_std is None else init_std
    eos_scale = (BENCH_EOS_SCALE if bench else DEFAULT_EOS_SCALE[command]) if eos_scale is None else eos_scale
    vqa = command == "blip-vqa"
    model, tok, _ = build_tiny(seed, init_std, eos_scale, vqa, shape)
    parts = Parts(model, hf_tokenizer(tok), model.config.vision_config.image_size, OPENAI_CLIP_MEAN,
                  OPENAI_CLIP_STD, vqa=vqa)
    return parts, seed, init_std, eos_scale


def export_blip(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tv = transformers.__version__
    vqa = args.command == "blip-vqa"
    shape = getattr(args, "shape", "tiny")
    if shape != "tiny" and not args.tiny:
        raise SystemExit("--shape only applies with --tiny")
    if args.tiny:
        parts, seed, init_std, eos_scale = tiny_parts(args.command, shape, args.seed, args.init_std, args.eos_scale)
        name = args.name or f"{args.command}-{shape}-random"
        source = (f"random init, seed {seed}, init std {init_std}, [SEP] bias +{eos_scale}, untied head, "
                  + ("" if shape == "tiny" else f"shape {shape}, ")
                  + f"transformers {tv}, torch {torch.__version__}")
        trained = False
    else:
        parts = load_checkpoint(args.source, vqa)
        name = args.name or Path(args.source.rstrip("/")).name
        source = f"{args.source}, exported with transformers {tv}, torch {torch.__version__}"
        trained = True
    _, images_u8 = C.make_reference_images(parts.size)
    pixels = C.preprocess_u8(images_u8, parts.mean, parts.std)
    worst = check_decoder_against_hf(parts, pixels[:2])
    print(f"export: decoder wrapper vs HF text_decoder: max abs diff {worst:.3g}", file=sys.stderr)
    export_graphs(parts, out, args.opset)
    if not args.skip_verify:
        verify_onnx_against_torch(parts, out, pixels[:3], args.tolerance)
    C.save_plain_tokenizer_json(parts.hf_tok, out / "tokenizer.json")
    write_manifest(out / "model.toml", parts, name=name, trained=trained, source=source)
    if args.tiny and shape == "tiny" and not args.no_reference:
        ref, images_u8, pixels = compute_references(parts, seed, init_std, eos_scale)
        ok, msg = degeneracy_report(ref)
        ref["degeneracy_check"] = {"ok": ok, "summary": msg}
        print(f"export: reference outputs: {msg}", file=sys.stderr)
        if not ok:
            print("export: WARNING the reference outputs are degenerate (see above)", file=sys.stderr)
        C.write_reference(out, ref, C.image_bins(images_u8, pixels))
    C.report_done(out)


#: command -> (what, HF class, example hub id, what encoder.onnx holds)
_COMMANDS = {
    "blip": ("BLIP captioning", "BlipForConditionalGeneration", "Salesforce/blip-image-captioning-base",
             "the ViT"),
    "blip-vqa": ("BLIP visual question answering", "BlipForQuestionAnswering", "Salesforce/blip-vqa-base",
                 "the ViT and the question encoder"),
}


def add_parser(sub, command: str) -> None:
    """Add the ``blip`` or ``blip-vqa`` subcommand (export.py's subparsers)."""
    what, cls, example, enc = _COMMANDS[command]
    c = sub.add_parser(command, help=f"export {what} ({cls}) as a cross-attention-decoder package",
                       description=f"Export {what}: encoder.onnx ({enc}), cross_kv.onnx (every layer's "
                                   "cross-attention keys/values), decoder.onnx (BERT decoder step with a "
                                   "self-attention cache), tokenizer.json, model.toml.")
    C.add_source_args(c, from_help=f"hub id (e.g. {example}) or a save_pretrained folder with the processor files",
                      tiny_help=f"seeded random {cls} of the real classes")
    C.add_out_arg(c)
    C.add_opset_arg(c)
    c.add_argument("--seed", type=int, default=None, help=f"--tiny: seed (default {DEFAULT_SEED})")
    c.add_argument("--init-std", type=float, default=None, help=f"--tiny: init std (default {DEFAULT_INIT_STD})")
    c.add_argument("--eos-scale", type=float, default=None,
                   help=f"--tiny: added to the [SEP] bias of the prediction head (default {DEFAULT_EOS_SCALE[command]})")
    if command == "blip":
        c.add_argument("--shape", choices=SHAPES, default="tiny",
                       help="--tiny: 'tiny' (default: the test fixture with reference/) or 'mid', a random "
                            "benchmark model without reference/ (BLIP-base text decoder: hidden 768, 12 layers, "
                            "vocab 30524; a small 224 px ViT)")
    C.add_name_arg(c)
    C.add_no_reference_arg(c)
    C.add_skip_verify_arg(c)
    C.add_tolerance_arg(c, 1e-4, "max diff / max(1, max|ref|) allowed between ONNX Runtime and PyTorch "
                                 "(default 1e-4)")
    c.set_defaults(func=export_blip)
