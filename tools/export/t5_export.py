"""BLIP-2 / InstructBLIP with a Flan-T5 language model -> ``cross-attention-decoder`` packages.

Used by ``export.py blip2`` when the checkpoint's ``text_config.model_type`` is ``t5`` (or
``--tiny --language-model t5``) and by ``export.py instructblip`` (see tools/export/README.md,
"Encoder-decoder language models").  A package::

    model.toml          manifest, family = "cross-attention-decoder",
                        architecture = "blip2-t5" | "instructblip-t5"
    encoder.onnx        pixel_values [B,3,S,S] f32, input_ids [B,L] i64, attention_mask [B,L] i64
                        (+ InstructBLIP: qformer_input_ids [B,Lq] i64, qformer_attention_mask [B,Lq])
                        -> memory [B,Q+L,E] f32, memory_mask [B,Q+L] i64
                        (ViT -> Q-Former -> projection = Q query tokens, then the prompt's
                        embeddings, all through the T5 encoder; once per tile)
    cross_kv.onnx       memory [B,M,E] -> cross.{i}.key / cross.{i}.value [B,heads,M,d_kv]
    decoder.onnx        one merged T5 decoder step (prefill = past length 0, and decode steps):
                        input_ids [B,T] i64, attention_mask [B,past+T] i64, memory_mask [B,M] i64,
                        cross.{i}.key/value, past.{i}.key/value [B,heads,past,d_kv]
                        -> logits [B,T,V], present.{i}.key/value [B,heads,past+T,d_kv]
                        (no position_ids: T5's relative position bias needs only the past length)
    tokenizer.json      the T5 tokenizer (Unigram, post-processor ``$A </s>``)
    qformer_tokenizer.json  (InstructBLIP) the Q-Former's BERT tokenizer ([CLS] $A [SEP])
    reference/          (--tiny only) PyTorch ``generate`` references

HF ``generate`` (transformers 5.24, ``Blip2ForConditionalGeneration.generate`` /
``InstructBlipForConditionalGeneration.generate``), reproduced by the runtime:

* the processor puts ``num_query_tokens`` image tokens in front of the tokenized prompt
  (T5: ``prompt </s>``, right padded) and the model replaces their embeddings by the
  projected Q-Former outputs; the T5 encoder runs over the whole row with the attention mask.
  The encoder graph does the same by concatenation (a manifest whose ``[encoder]`` names
  ``input_ids`` takes the prompt there);
* without a prompt HF starts from ``[image]*Q + [text_config.bos_token_id]``; the --tiny models
  set ``bos_token_id = eos_token_id = 1`` so that this equals the empty prompt's ``[</s>]``
  (real Flan-T5 checkpoints: see ``empty_prompt_ids`` below, written into the manifest);
* the decoder starts from ``decoder_start_token_id`` (T5: the pad id 0) alone, with no text
  (the manifest's ``[prompt] start_token_id``, the key BLIP VQA's encoder prompt uses too);
  generation ends on ``eos_token_id`` (``</s>``); the cross-attention mask is the encoder's
  ``memory_mask`` (query tokens + the prompt's real tokens);
* InstructBLIP also tokenizes the prompt with the Q-Former's BERT tokenizer (``[CLS] p [SEP]``,
  right padded) and feeds it to the Q-Former beside the query tokens.

Right padding leaves every real token at its position and masks the pads out of every attention,
so a batch of different prompts equals its items one by one (checked against HF here).

The T5 encoder and decoder are re-stated from the HF modules' weights (RMS norm, unscaled
attention with the bucketed relative position bias, gated-GELU or ReLU feed-forward), checked
against HF's T5 before export and against ONNX Runtime after; the vision tower and Q-Former are
HF's own modules.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from torch import nn

import common as C
from common import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

FAMILY = "cross-attention-decoder"
DEFAULT_SEED = {"blip2": 0, "instructblip": 0}
DEFAULT_INIT_STD = {"blip2": 0.5, "instructblip": 0.5}
#: --tiny: the lm_head row of </s> is multiplied by this, so that some references end early.
DEFAULT_EOS_SCALE = {"blip2": 2.0, "instructblip": 2.0}
NUM_QUERY_TOKENS = 4
#: --tiny InstructBLIP: the Q-Former's position table (a prompt of more BERT tokens is refused).
TINY_QFORMER_POSITIONS = 24

REF_PROMPTS_MIXED = ["", "a satellite image of", "question: is there a river in this picture? answer:"]

# --------------------------------------------------------------------------------------
# Tiny tokenizers: T5 (Unigram) and the Q-Former's BERT (WordPiece)
# --------------------------------------------------------------------------------------

_SUBJECTS = ["forest", "river", "city", "desert", "farmland", "lake", "coast", "harbor", "airport",
             "mountain", "glacier", "wetland", "vineyard", "road", "bridge", "village", "field",
             "orchard", "beach", "island", "canal", "quarry", "dam", "highway", "suburb"]
_ADJS = ["dense", "green", "dry", "flooded", "bright", "dark", "sandy", "snowy", "urban", "rural",
         "small", "large", "narrow", "wide", "irrigated", "burned", "cloudy", "clear"]
_FRAMES = ["a satellite image of a {a} {s}",
           "an aerial photo of the {s} with {a} {t}",
           "a {a} {s} next to a {t}",
           "question: is there a {s} in this picture? answer: yes",
           "question: what is in this image? answer: a {a} {s}",
           "describe the scene: {a} {s}, {t}, clouds.",
           "how many {s}s are there? two {a} ones near the {t}."]


def caption_corpus() -> list[str]:
    lines = []
    for i in range(420):
        s = _SUBJECTS[i % len(_SUBJECTS)]
        t = _SUBJECTS[(i * 7 + 3) % len(_SUBJECTS)]
        a = _ADJS[(i * 5 + i // 9) % len(_ADJS)]
        lines.append(_FRAMES[i % len(_FRAMES)].format(a=a, s=s, t=t))
    return lines


def build_t5_tokenizer():
    """A ``T5TokenizerFast`` (transformers 5: ``T5Tokenizer``, tokenizers-backed) on a tiny
    Unigram vocabulary: <pad>=0, </s>=1, <unk>=2, T5's Metaspace pre-tokenizer and ``$A </s>``
    post-processor, no sentinel tokens; plus BLIP-2's ``<image>`` special token (what
    ``Blip2Processor`` adds).

    The vocabulary is the corpus's unigram statistics, computed here rather than by the
    ``tokenizers`` Unigram trainer (whose near-equal scores and ties come out in another order
    from run to run): every ``▁word`` and every character, scored log(count / total), so a
    known word is one piece and an unknown one falls apart into characters.
    """
    from collections import Counter

    from tokenizers import AddedToken, pre_tokenizers
    from transformers import T5TokenizerFast

    pre = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)])
    words = Counter(w for line in caption_corpus() for w, _ in pre.pre_tokenize_str(line))
    chars: Counter = Counter()
    for w, n in words.items():
        for c in w:
            chars[c] += n
    total = sum(words.values()) + sum(chars.values())
    scored = [(p, round(math.log(n / total), 6)) for p, n in list(chars.items()) + list(words.items())
              if not (p in words and len(p) == 1)]
    scored.sort(key=lambda ps: (-ps[1], ps[0]))
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + scored
    tok = T5TokenizerFast(vocab=vocab, extra_ids=0)
    tok.add_tokens([AddedToken("<image>", normalized=False, special=True)], special_tokens=True)
    tok.image_token = "<image>"
    return tok


def build_bert_tokenizer():
    """The InstructBLIP Q-Former's tokenizer: an uncased BERT WordPiece (``[CLS] $A [SEP]``).

    The vocabulary is built, not trained (the ``tokenizers`` WordPiece trainer breaks ties in a
    different order from run to run): the specials, every character of the corpus, the same as
    ``##`` continuations, and every corpus word; an unseen word falls apart into characters.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    norm, pre = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    words = {w for line in caption_corpus() for w, _ in pre.pre_tokenize_str(norm.normalize_str(line))}
    chars = sorted({c for w in words for c in w})
    pieces = specials + chars + ["##" + c for c in chars] + sorted(w for w in words if len(w) > 1)
    raw = Tokenizer(models.WordPiece(vocab={p: i for i, p in enumerate(pieces)}, unk_token="[UNK]"))
    raw.normalizer = norm
    raw.pre_tokenizer = pre
    raw.decoder = decoders.WordPiece()
    raw.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", raw.token_to_id("[CLS]")), ("[SEP]", raw.token_to_id("[SEP]"))])
    return PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
                                   cls_token="[CLS]", mask_token="[MASK]", padding_side="right")


# --------------------------------------------------------------------------------------
# Tiny models of the real classes
# --------------------------------------------------------------------------------------


def _reinit(model: nn.Module, std: float) -> None:
    """Every Linear/Embedding/Conv weight N(0, std) (biases N(0, std/4)), query tokens N(0, 1)."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Embedding, nn.Conv2d)):
            nn.init.normal_(m.weight, 0.0, std)
            if getattr(m, "bias", None) is not None:
                nn.init.normal_(m.bias, 0.0, std / 4)
    for name, p in model.named_parameters():
        if name.endswith("class_embedding") or name.endswith("position_embedding") or name == "query_tokens":
            nn.init.normal_(p, 0.0, 1.0)


def tiny_t5_config(V: int, image_id: int) -> dict:
    """A two-layer Flan-T5 (gated GELU, untied head, relative buckets) with T5's special ids;
    ``bos_token_id`` = </s> so that HF's no-prompt start equals the empty prompt."""
    return dict(model_type="t5", vocab_size=V, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_decoder_layers=2,
                num_heads=2, relative_attention_num_buckets=8, relative_attention_max_distance=16,
                feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0,
                decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, bos_token_id=1)


#: --shape choices of ``export.py blip2 --language-model t5`` ("tiny": the test fixture with
#: references; "mid": a random benchmark model without reference/, see mid_t5_config).
SHAPES = ["tiny", "mid"]
#: init std / </s> row factor of the benchmark shape (benchmarks force the caption length).
BENCH_INIT_STD = 0.02
BENCH_EOS_SCALE = 1.0
#: Flan-T5's vocabulary size: the mid shape's logits are this wide, although the tiny tokenizer only
#: knows its first few hundred ids (ids past it decode to nothing).
T5_VOCAB = 32128


def mid_t5_config(image_id: int) -> dict:
    """Flan-T5-base's language model shape (d_model 768, 12 + 12 layers, 12 heads, d_ff 2048,
    vocab 32128, 32 buckets up to 128), with the tiny config's special ids."""
    c = tiny_t5_config(T5_VOCAB, image_id)
    c.update(d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_decoder_layers=12, num_heads=12,
             relative_attention_num_buckets=32, relative_attention_max_distance=128)
    return c


def build_tiny(kind: str, seed: int, init_std: float, eos_scale: float, shape: str = "tiny"):
    """(model, t5 tokenizer, qformer tokenizer or None): seeded random
    ``Blip2ForConditionalGeneration`` / ``InstructBlipForConditionalGeneration`` with a T5.
    ``shape`` "mid": Flan-T5-base's language model, a small 2-layer 64-wide ViT at 224 px (patch
    32) and Q-Former, 32 query tokens (random, for timing only)."""
    tok = build_t5_tokenizer()
    qtok = build_bert_tokenizer() if kind == "instructblip" else None
    V = len(tok)
    image_id = tok.convert_tokens_to_ids("<image>")
    torch.manual_seed(seed)
    mid = shape == "mid"
    w = 64 if mid else 32
    vision = dict(hidden_size=w, intermediate_size=2 * w, num_hidden_layers=2, num_attention_heads=2,
                  image_size=224 if mid else 32, patch_size=32 if mid else 8)
    qformer = dict(hidden_size=w, intermediate_size=2 * w, num_hidden_layers=2, num_attention_heads=2,
                   encoder_hidden_size=w, max_position_embeddings=TINY_QFORMER_POSITIONS,
                   vocab_size=len(qtok) if qtok is not None else V)
    if qtok is not None:
        qformer["pad_token_id"] = qtok.pad_token_id
    common = dict(vision_config=vision, qformer_config=qformer,
                  text_config=mid_t5_config(image_id) if mid else tiny_t5_config(V, image_id),
                  num_query_tokens=32 if mid else NUM_QUERY_TOKENS, image_token_index=image_id)
    if kind == "blip2":
        from transformers import Blip2Config as Cfg, Blip2ForConditionalGeneration as Cls
    else:
        from transformers import InstructBlipConfig as Cfg, InstructBlipForConditionalGeneration as Cls
    cfg = Cfg(**common)
    cfg._attn_implementation = "eager"
    model = Cls(cfg)
    _reinit(model, init_std)
    with torch.no_grad():
        model.language_model.lm_head.weight[1] *= eos_scale
    model.eval()
    gc = model.language_model.generation_config
    gc.decoder_start_token_id, gc.eos_token_id, gc.pad_token_id, gc.bos_token_id = 0, 1, 0, 1
    return model, tok, qtok


# --------------------------------------------------------------------------------------
# T5 re-stated (weights read from the HF modules)
# --------------------------------------------------------------------------------------


def relative_bucket(rel: torch.Tensor, bidirectional: bool, num_buckets: int, max_distance: int) -> torch.Tensor:
    """HF ``T5Attention._relative_position_bucket`` (key position - query position -> bucket)."""
    buckets = torch.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (rel > 0).to(torch.long) * num_buckets
        rel = torch.abs(rel)
    else:
        rel = -torch.min(rel, torch.zeros_like(rel))
    max_exact = num_buckets // 2
    is_small = rel < max_exact
    large = max_exact + (torch.log(rel.float().clamp(min=1.0) / max_exact) / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).to(torch.long)
    large = torch.min(large, torch.full_like(large, num_buckets - 1))
    return buckets + torch.where(is_small, rel, large)


def _heads(x: torch.Tensor, lin: nn.Linear, heads: int, d: int) -> torch.Tensor:
    return lin(x).view(x.shape[0], -1, heads, d).transpose(1, 2)


def _attend(q, k, v, bias):
    """T5 attention: no 1/sqrt(d) scaling, additive bias (position bias + mask)."""
    w = torch.matmul(q, k.transpose(-1, -2)) + bias
    return torch.matmul(torch.softmax(w.float(), dim=-1).to(v.dtype), v)


def _merge(ctx: torch.Tensor) -> torch.Tensor:
    return ctx.transpose(1, 2).reshape(ctx.shape[0], ctx.shape[2], -1)


def _neg(dtype) -> torch.Tensor:
    return torch.tensor(torch.finfo(dtype).min, dtype=dtype)


class T5Encoder(nn.Module):
    """HF T5Stack (encoder) on given inputs_embeds + attention mask -> last hidden state."""

    def __init__(self, lm):
        super().__init__()
        self.enc = lm.get_encoder()
        cfg = lm.config
        self.heads, self.d = cfg.num_heads, cfg.d_kv
        self.nb, self.md = cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance

    def forward(self, h, mask):
        blocks = self.enc.block
        pos = torch.cumsum(torch.ones_like(mask[0]), dim=0) - 1                    # [L]
        bucket = relative_bucket(pos[None, :] - pos[:, None], True, self.nb, self.md)
        bias = blocks[0].layer[0].SelfAttention.relative_attention_bias(bucket).permute(2, 0, 1)[None]
        bias = bias + torch.where(mask[:, None, None, :] != 0, torch.zeros((), dtype=h.dtype), _neg(h.dtype))
        for blk in blocks:
            sa = blk.layer[0]
            n = sa.layer_norm(h)
            a = sa.SelfAttention
            ctx = _attend(_heads(n, a.q, self.heads, self.d), _heads(n, a.k, self.heads, self.d),
                          _heads(n, a.v, self.heads, self.d), bias)
            h = h + a.o(_merge(ctx))
            ff = blk.layer[-1]
            h = h + ff.DenseReluDense(ff.layer_norm(h))
        return self.enc.final_layer_norm(h)


class PromptEncoder(nn.Module):
    """The ``[encoder]`` graph: pixels + prompt tokens -> T5 memory and its mask.

    BLIP-2: ViT -> Q-Former(query tokens) -> language_projection; InstructBLIP: the Q-Former also
    reads the prompt's BERT tokens (``qformer_input_ids``) and only its query outputs are kept.
    The query outputs and the prompt's T5 embeddings are concatenated (HF: image tokens in front,
    embeddings replaced by ``masked_scatter``) and run through the T5 encoder.
    """

    def __init__(self, model, instruct: bool):
        super().__init__()
        self.m, self.instruct = model, instruct
        self.t5 = T5Encoder(model.language_model)

    def forward(self, pixel_values, input_ids, attention_mask, qformer_input_ids=None, qformer_attention_mask=None):
        m = self.m
        img = m.vision_model(pixel_values, return_dict=True).last_hidden_state
        img_mask = torch.ones_like(img[:, :, 0], dtype=torch.long)
        q = m.query_tokens.expand(img.shape[0], -1, -1)
        q_mask = torch.ones_like(q[:, :, 0], dtype=torch.long)
        if self.instruct:
            out = m.qformer(input_ids=qformer_input_ids, attention_mask=torch.cat([q_mask, qformer_attention_mask], 1),
                            query_embeds=q, encoder_hidden_states=img, encoder_attention_mask=img_mask,
                            return_dict=True).last_hidden_state[:, :q.shape[1], :]
        else:
            out = m.qformer(query_embeds=q, encoder_hidden_states=img, encoder_attention_mask=img_mask,
                            return_dict=True).last_hidden_state
        prefix = m.language_projection(out)
        emb = torch.cat([prefix, m.language_model.get_input_embeddings()(input_ids)], dim=1)
        mask = torch.cat([q_mask, attention_mask], dim=1)
        return self.t5(emb, mask), mask


class CrossKV(nn.Module):
    """Every T5 decoder layer's cross-attention (EncDecAttention) keys/values of the memory."""

    def __init__(self, lm):
        super().__init__()
        self.blocks = lm.get_decoder().block
        self.heads, self.d = lm.config.num_heads, lm.config.d_kv

    def forward(self, memory):
        out = []
        for blk in self.blocks:
            a = blk.layer[1].EncDecAttention
            out += [_heads(memory, a.k, self.heads, self.d), _heads(memory, a.v, self.heads, self.d)]
        return tuple(out)


class T5DecoderStep(nn.Module):
    """HF T5 decoder + lm_head with a tensor self-attention cache and precomputed cross K/V.

    The relative position bias of query position p (= past + t) to key j is HF's
    ``compute_bias(..., past_seen_tokens=past)`` (unidirectional buckets)."""

    def __init__(self, lm):
        super().__init__()
        cfg = lm.config
        self.dec, self.lm_head = lm.get_decoder(), lm.lm_head
        self.emb = lm.get_input_embeddings()
        self.layers, self.heads, self.d = cfg.num_decoder_layers, cfg.num_heads, cfg.d_kv
        self.nb, self.md = cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance
        self.scale = (cfg.d_model ** -0.5) if getattr(cfg, "scale_decoder_outputs", cfg.tie_word_embeddings) else None

    def forward(self, input_ids, attention_mask, memory_mask, *kv):
        L = self.layers
        cross, past = kv[:2 * L], kv[2 * L:]
        h = self.emb(input_ids)
        ones_k = torch.ones_like(attention_mask[:1, :])
        k_idx = torch.cumsum(ones_k, dim=1) - 1                                     # [1, K]
        total = torch.sum(ones_k, dim=1, keepdim=True)
        ones_q = torch.ones_like(input_ids[:1, :])
        q_idx = torch.cumsum(ones_q, dim=1) - 1 + (total - torch.sum(ones_q, dim=1, keepdim=True))  # [1, T]
        bucket = relative_bucket(k_idx[:, None, :] - q_idx[:, :, None], False, self.nb, self.md)    # [1, T, K]
        blocks = self.dec.block
        bias = blocks[0].layer[0].SelfAttention.relative_attention_bias(bucket).permute(0, 3, 1, 2)  # [1,H,T,K]
        causal = k_idx[:, None, :] <= q_idx[:, :, None]
        diag = k_idx[:, None, :] == q_idx[:, :, None]
        allowed = (causal[:, None] & (attention_mask[:, None, None, :] != 0)) | diag[:, None]
        zero, neg = torch.zeros((), dtype=h.dtype), _neg(h.dtype)
        self_bias = bias + torch.where(allowed, zero, neg)
        cross_bias = torch.where(memory_mask[:, None, None, :] != 0, zero, neg)
        presents = []
        for i, blk in enumerate(blocks):
            sa = blk.layer[0]
            n = sa.layer_norm(h)
            a = sa.SelfAttention
            k = torch.cat([past[2 * i], _heads(n, a.k, self.heads, self.d)], dim=2)
            v = torch.cat([past[2 * i + 1], _heads(n, a.v, self.heads, self.d)], dim=2)
            presents += [k, v]
            h = h + a.o(_merge(_attend(_heads(n, a.q, self.heads, self.d), k, v, self_bias)))
            ca = blk.layer[1]
            n = ca.layer_norm(h)
            e = ca.EncDecAttention
            h = h + e.o(_merge(C.attend_item_rows(_heads(n, e.q, self.heads, self.d), cross[2 * i],
                                                  cross[2 * i + 1], cross_bias, _attend)))
            ff = blk.layer[-1]
            h = h + ff.DenseReluDense(ff.layer_norm(h))
        h = self.dec.final_layer_norm(h)
        if self.scale is not None:
            h = h * self.scale
        return (self.lm_head(h), *presents)


# --------------------------------------------------------------------------------------
# Model plumbing
# --------------------------------------------------------------------------------------


class Parts:
    """Everything the exporter needs about one BLIP-2/T5 or InstructBLIP/T5 model."""

    def __init__(self, kind: str, model, tok, qtok, size: int, mean, std):
        self.kind, self.model, self.tok, self.qtok = kind, model, tok, qtok
        self.instruct = kind == "instructblip"
        self.architecture = "instructblip-t5" if self.instruct else "blip2-t5"
        self.size, self.mean, self.std = size, list(mean), list(std)
        lm = model.language_model
        tc = lm.config
        if tc.model_type != "t5" and not getattr(tc, "is_encoder_decoder", False):
            raise ValueError(f"language model {tc.model_type!r} is not an encoder-decoder (T5)")
        self.encoder = PromptEncoder(model, self.instruct).eval()
        self.cross = CrossKV(lm).eval()
        self.decoder = T5DecoderStep(lm).eval()
        self.layers, self.heads, self.head_dim = self.decoder.layers, self.decoder.heads, self.decoder.d
        self.hidden = int(tc.d_model)
        self.vocab = int(lm.lm_head.weight.shape[0])
        self.queries = int(model.config.num_query_tokens)
        self.image_id = int(model.config.image_token_id)
        self.eos = int(tc.eos_token_id[0] if isinstance(tc.eos_token_id, (list, tuple)) else tc.eos_token_id)
        self.pad = int(tc.pad_token_id)
        gc = lm.generation_config
        start = gc.decoder_start_token_id if gc.decoder_start_token_id is not None else tc.decoder_start_token_id
        self.start = int(start)
        self.bos = tc.bos_token_id
        self.qformer_positions = int(model.config.qformer_config.max_position_embeddings) if self.instruct else None
        self.qpad = int(qtok.pad_token_id) if qtok is not None else None

    # -- the prompt rule the Rust side implements ------------------------------------------
    def prompt_ids(self, prompt: str) -> list[int]:
        """T5 tokens of the prompt with the tokenizer's specials (``prompt </s>``)."""
        return list(self.tok(prompt)["input_ids"])

    def qformer_ids(self, prompt: str) -> list[int]:
        return list(self.qtok(prompt)["input_ids"])

    def empty_prompt_ids(self) -> list[int]:
        """What HF generate() feeds the T5 encoder after the query tokens without a prompt."""
        return [int(self.bos)] if self.bos is not None else self.prompt_ids("")

    def right_pad(self, rows: list[list[int]], pad: int) -> tuple[np.ndarray, np.ndarray]:
        n = max(len(r) for r in rows)
        ids = np.full((len(rows), n), pad, np.int64)
        mask = np.zeros((len(rows), n), np.int64)
        for b, r in enumerate(rows):
            ids[b, :len(r)] = r
            mask[b, :len(r)] = 1
        return ids, mask

    def encoder_feeds(self, pixels: np.ndarray, prompts: list[str]) -> dict[str, np.ndarray]:
        ids, mask = self.right_pad([self.prompt_ids(p) for p in prompts], self.pad)
        feeds = {"pixel_values": pixels, "input_ids": ids, "attention_mask": mask}
        if self.instruct:
            qids, qmask = self.right_pad([self.qformer_ids(p) for p in prompts], self.qpad)
            feeds.update(qformer_input_ids=qids, qformer_attention_mask=qmask)
        return feeds

    def run_encoder(self, feeds: dict[str, np.ndarray]):
        names = ["pixel_values", "input_ids", "attention_mask"]
        if self.instruct:
            names += ["qformer_input_ids", "qformer_attention_mask"]
        return self.encoder(*(torch.from_numpy(feeds[n]) for n in names))

    def hf_generate(self, pixels: np.ndarray, prompts: list[str], **kw) -> list[list[int]]:
        """HF generate exactly as the processor + model run it; the new tokens of each row."""
        px = torch.from_numpy(pixels)
        extra = {}
        if self.instruct:
            self.qtok.padding_side = "right"
            q = self.qtok(prompts, padding=True, return_tensors="pt")
            extra = dict(qformer_input_ids=q["input_ids"], qformer_attention_mask=q["attention_mask"])
        if all(p == "" for p in prompts):
            out = self.model.generate(pixel_values=px, **extra, **kw)             # no input_ids: HF's bos start
        else:
            self.tok.padding_side = "right"
            enc = self.tok(prompts, padding=True)
            img = [self.image_id] * self.queries
            ids = torch.tensor([img + r for r in enc["input_ids"]], dtype=torch.long)
            mask = torch.tensor([[1] * self.queries + r for r in enc["attention_mask"]], dtype=torch.long)
            out = self.model.generate(pixel_values=px, input_ids=ids, attention_mask=mask, **extra, **kw)
        assert bool((out[:, 0] == self.start).all()), "decoder rows start with decoder_start_token_id"
        return [trim(r.tolist(), self.eos) for r in out[:, 1:]]


def trim(row: list[int], eos: int) -> list[int]:
    out = []
    for t in row:
        out.append(int(t))
        if t == eos:
            break
    return out


def empty_past(parts: Parts, batch: int) -> list[torch.Tensor]:
    return [torch.zeros(batch, parts.heads, 0, parts.head_dim) for _ in range(2 * parts.layers)]


def check_against_hf(parts: Parts, pixels: np.ndarray) -> float:
    """The encoder graph's memory vs HF's T5 encoder on HF's own inputs_embeds (captured from
    generate), and the decoder step (prefill + cached steps) vs HF's T5 logits."""
    lm = parts.model.language_model
    prompts = ["", "a satellite image of"][:pixels.shape[0]]
    feeds = parts.encoder_feeds(pixels, prompts)
    mem, mmask = parts.run_encoder(feeds)
    seen = []
    hook = lm.get_encoder().register_forward_pre_hook(
        lambda mod, a, k: seen.append((k["inputs_embeds"], k["attention_mask"])), with_kwargs=True)
    try:
        rows = [[parts.image_id] * parts.queries + parts.prompt_ids(p) for p in prompts]
        ids, mask = parts.right_pad(rows, parts.pad)
        extra = {}
        if parts.instruct:
            extra = dict(qformer_input_ids=torch.from_numpy(feeds["qformer_input_ids"]),
                         qformer_attention_mask=torch.from_numpy(feeds["qformer_attention_mask"]))
        parts.model.generate(pixel_values=torch.from_numpy(pixels), input_ids=torch.from_numpy(ids),
                             attention_mask=torch.from_numpy(mask), max_new_tokens=1, do_sample=False, **extra)
    finally:
        hook.remove()
    emb, hmask = seen[0]
    assert torch.equal(hmask, mmask), "memory_mask == HF's attention mask"
    ref_mem = lm.get_encoder()(inputs_embeds=emb, attention_mask=hmask).last_hidden_state
    valid = mmask.bool()
    worst = float((mem - ref_mem)[valid].abs().max())
    gen = torch.Generator().manual_seed(7)
    B, T = pixels.shape[0], 7
    dec_ids = torch.randint(3, parts.vocab, (B, T), generator=gen)
    dec_ids[:, 0] = parts.start
    ref = lm(encoder_outputs=(ref_mem,), attention_mask=hmask, decoder_input_ids=dec_ids, use_cache=False).logits
    cross = parts.cross(mem)
    split = 4
    out = parts.decoder(dec_ids[:, :split], torch.ones(B, split, dtype=torch.long), mmask, *cross,
                        *empty_past(parts, B))
    worst = max(worst, float((out[0] - ref[:, :split]).abs().max()))
    past = list(out[1:])
    for t in range(split, T):
        out = parts.decoder(dec_ids[:, t:t + 1], torch.ones(B, t + 1, dtype=torch.long), mmask, *cross, *past)
        past = list(out[1:])
        worst = max(worst, float((out[0][:, 0] - ref[:, t]).abs().max()))
    if worst > 1e-4:
        raise SystemExit(f"export: T5 wrappers differ from HF by {worst:.3g}")
    return worst


def io_names(layers: int):
    cross = [f"cross.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    past = [f"past.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    return cross, past, present


def encoder_io(parts: Parts) -> list[str]:
    names = ["pixel_values", "input_ids", "attention_mask"]
    return names + (["qformer_input_ids", "qformer_attention_mask"] if parts.instruct else [])


def export_graphs(parts: Parts, out: Path, opset: int) -> None:
    L = parts.layers
    cross_names, past_names, present_names = io_names(L)
    _, images_u8 = C.make_reference_images(parts.size)
    px = C.preprocess_u8(images_u8, parts.mean, parts.std)[:2]
    feeds = parts.encoder_feeds(px, ["a satellite image of", "question: what is in this image? answer:"])
    ins = encoder_io(parts)
    axes = {"pixel_values": {0: "batch"}, "input_ids": {0: "batch", 1: "prompt"},
            "attention_mask": {0: "batch", 1: "prompt"}, "memory": {0: "batch", 1: "memory"},
            "memory_mask": {0: "batch", 1: "memory"}}
    if parts.instruct:
        axes.update(qformer_input_ids={0: "batch", 1: "qprompt"}, qformer_attention_mask={0: "batch", 1: "qprompt"})
    C.export_onnx(parts.encoder, tuple(torch.from_numpy(feeds[n]) for n in ins), out / "encoder.onnx", ins,
                  ["memory", "memory_mask"], axes, opset)
    mem, mmask = parts.run_encoder(feeds)
    axes = {"memory": {0: "batch", 1: "memory"}}
    axes.update({n: {0: "batch", 2: "memory"} for n in cross_names})
    C.export_onnx(parts.cross, (mem,), out / "cross_kv.onnx", ["memory"], cross_names, axes, opset)
    cross = parts.cross(mem)
    B, T, P = 2, 3, 2
    ids = torch.full((B, T), parts.start, dtype=torch.long)
    mask = torch.ones(B, P + T, dtype=torch.long)
    past = [torch.zeros(B, parts.heads, P, parts.head_dim) for _ in range(2 * L)]
    ins = ["input_ids", "attention_mask", "memory_mask", *cross_names, *past_names]
    axes = {"input_ids": {0: "batch", 1: "new"}, "attention_mask": {0: "batch", 1: "total"},
            "memory_mask": {0: "batch", 1: "memory"}, "logits": {0: "batch", 1: "new"}}
    axes.update({n: {0: "batch", 2: "memory"} for n in cross_names})
    axes.update({n: {0: "batch", 2: "past"} for n in past_names})
    axes.update({n: {0: "batch", 2: "total"} for n in present_names})
    C.export_onnx(parts.decoder, (ids, mask, mmask, *cross, *past), out / "decoder.onnx", ins,
                  ["logits", *present_names], axes, opset)


class OrtPackage:
    """The three graphs in ONNX Runtime, with a greedy loop (the exporter's own check of the
    graphs' plumbing against HF's generate; the Rust runtime is tested against reference/)."""

    def __init__(self, parts: Parts, out: Path):
        self.p = parts
        self.enc, self.crs, self.dec = (C.ort_session(out / n) for n in ("encoder.onnx", "cross_kv.onnx",
                                                                        "decoder.onnx"))
        self.cross_names, self.past_names, _ = io_names(parts.layers)

    def greedy(self, pixels: np.ndarray, prompts: list[str], max_new: int) -> list[list[int]]:
        p = self.p
        mem, mmask = self.enc.run(None, p.encoder_feeds(pixels, prompts))
        cross = self.crs.run(None, {"memory": mem})
        B = pixels.shape[0]
        feeds = {"memory_mask": mmask, **dict(zip(self.cross_names, cross))}
        past = [np.zeros((B, p.heads, 0, p.head_dim), np.float32) for _ in self.past_names]
        tok = np.full((B, 1), p.start, np.int64)
        rows: list[list[int]] = [[] for _ in range(B)]
        done = [False] * B
        for t in range(max_new):
            feeds.update(input_ids=tok, attention_mask=np.ones((B, t + 1), np.int64), **dict(zip(self.past_names, past)))
            logits, *past = self.dec.run(None, feeds)
            nxt = logits[:, -1].argmax(-1)
            for b in range(B):
                if not done[b]:
                    rows[b].append(int(nxt[b]))
                    done[b] = int(nxt[b]) == p.eos
            nxt = np.where(done, p.pad, nxt)
            tok = nxt[:, None].astype(np.int64)
            if all(done):
                break
        return rows


def verify_onnx_against_torch(parts: Parts, out: Path, pixels: np.ndarray, tol: float) -> float:
    """ONNX Runtime vs the torch wrappers: memory (+ mask), cross K/V, prefill and a cached step;
    then ONNX Runtime greedy decoding vs HF generate on a batch of different prompts."""
    ort = OrtPackage(parts, out)
    feeds = parts.encoder_feeds(pixels, REF_PROMPTS_MIXED[:pixels.shape[0]])
    mem, mmask = ort.enc.run(None, feeds)
    mem_t, mmask_t = parts.run_encoder(feeds)
    if not np.array_equal(mmask, mmask_t.numpy()):
        raise SystemExit("export: ONNX memory_mask differs from PyTorch")
    valid = mmask.astype(bool)
    worst = C.rel_diff(mem[valid], mem_t.numpy()[valid])
    cross = ort.crs.run(None, {"memory": mem})
    for a, b in zip(cross, parts.cross(torch.from_numpy(mem))):
        worst = max(worst, C.rel_diff(a, b.numpy()))
    B = pixels.shape[0]
    dfeeds = {"input_ids": np.array([[parts.start, 9, 12]] * B, np.int64), "attention_mask": np.ones((B, 3), np.int64),
              "memory_mask": mmask, **dict(zip(ort.cross_names, cross))}
    dfeeds.update({n: np.zeros((B, parts.heads, 0, parts.head_dim), np.float32) for n in ort.past_names})
    got = ort.dec.run(None, dfeeds)
    order = ["input_ids", "attention_mask", "memory_mask", *ort.cross_names, *ort.past_names]
    ref = parts.decoder(*(torch.from_numpy(dfeeds[n]) for n in order))
    for a, b in zip(got, ref):
        worst = max(worst, C.rel_diff(a, b.numpy()))
    step = dict(dfeeds, input_ids=np.array([[5]] * B, np.int64), attention_mask=np.ones((B, 4), np.int64),
                **dict(zip(ort.past_names, got[1:])))
    got2 = ort.dec.run(None, step)
    ref2 = parts.decoder(*(torch.from_numpy(step[n]) for n in order))
    for a, b in zip(got2, ref2):
        worst = max(worst, C.rel_diff(a, b.numpy()))
    C.verify_item_rows(lambda f: ort.dec.run(None, f), step, ["memory_mask", *ort.cross_names], tol)
    if worst > tol:
        raise SystemExit(f"export: ONNX Runtime differs from PyTorch by {worst:.3g} (> {tol})")
    prompts = REF_PROMPTS_MIXED[:B]
    mine = ort.greedy(pixels, prompts, 10)
    hf = parts.hf_generate(pixels, prompts, max_new_tokens=10, num_beams=1, do_sample=False)
    if mine != hf:
        raise SystemExit(f"export: ONNX Runtime greedy decoding {mine} differs from HF generate {hf}")
    print(f"export: ONNX Runtime vs PyTorch: max rel diff {worst:.3g}; ORT greedy == HF generate "
          f"on {B} prompts", file=sys.stderr)
    return worst


# --------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------


def reference_cases(n_images: int) -> list[dict]:
    greedy = dict(max_new_tokens=12, num_beams=1, do_sample=False)
    beams = dict(max_new_tokens=12, num_beams=3, do_sample=False, early_stopping=False, length_penalty=1.0)
    mixed = REF_PROMPTS_MIXED
    cases = [dict(name=f"greedy_img{i}", images=[i], prompts=[""], gen=greedy) for i in range(n_images)]
    cases += [
        dict(name="greedy_prompt_img0", images=[0], prompts=["a satellite image of"], gen=greedy),
        dict(name="beam3_img1", images=[1], prompts=[""], gen=beams),
        dict(name="beam3_prompt_img2", images=[2], prompts=["question: what is in this image? answer:"], gen=beams),
        dict(name="greedy_batch_noprompt", images=list(range(n_images)), prompts=[""] * n_images, gen=greedy),
        dict(name="greedy_batch_prompts", images=[1, 2, 3], prompts=mixed, gen=greedy),
        dict(name="beam3_batch_prompts", images=[0, 3, 2], prompts=mixed, gen=beams),
        dict(name="greedy_penalties_img3", images=[3], prompts=["a satellite image of"],
             gen=dict(max_new_tokens=10, min_new_tokens=6, num_beams=1, do_sample=False, repetition_penalty=1.5)),
        dict(name="beam2_length_penalty_img0", images=[0], prompts=[""],
             gen=dict(max_new_tokens=10, num_beams=2, do_sample=False, early_stopping=False, length_penalty=0.5,
                      repetition_penalty=1.3)),
    ]
    return cases


def compute_references(parts: Parts, seed: int, init_std: float, eos_scale: float):
    names, images_u8 = C.make_reference_images(parts.size)
    pixels = C.preprocess_u8(images_u8, parts.mean, parts.std)
    out_cases = []
    for c in reference_cases(len(names)):
        px = np.ascontiguousarray(pixels[c["images"]])
        new = parts.hf_generate(px, c["prompts"], **c["gen"])
        alone = [parts.hf_generate(px[k:k + 1], [p], **c["gen"])[0] for k, p in enumerate(c["prompts"])]
        gen = {"max_new_tokens": 20, "min_new_tokens": 0, "num_beams": 1, "repetition_penalty": 1.0,
               "length_penalty": 1.0, "early_stopping": False}
        gen.update({k: v for k, v in c["gen"].items() if k != "do_sample"})
        case = {
            "name": c["name"], "images": c["images"], "prompts": c["prompts"], "hf_batched": True,
            "encoder_ids": [parts.prompt_ids(p) for p in c["prompts"]],
        }
        if parts.instruct:
            case["qformer_ids"] = [parts.qformer_ids(p) for p in c["prompts"]]
        case.update({
            "decoder_start": [parts.start],
            "generation": gen, "new_tokens": new,
            "hit_eos": [bool(t and t[-1] == parts.eos) for t in new],
            "text": [parts.tok.decode(t, skip_special_tokens=True) for t in new],
            "checks": {"batch_equals_items": new == alone},
        })
        out_cases.append(case)
        print(f"export: {c['name']}: {new} batch==items={new == alone}", file=sys.stderr)
    feeds = parts.encoder_feeds(pixels[:1], [""])
    mem, mmask = parts.run_encoder(feeds)
    ref = {
        "description": f"PyTorch {type(parts.model).__name__}.generate() references for this package "
                       f"(tools/export/export.py {parts.kind}); new tokens only (the decoder start excluded).",
        "architecture": parts.architecture,
        "seed": seed, "init_std": init_std, "eos_row_scale": eos_scale,
        "transformers": transformers.__version__, "torch": torch.__version__,
        **C.images_block(names, parts.size, len(names)),
        "mean": parts.mean, "std": parts.std,
        "decoder_start_token_id": parts.start, "eos_token_id": parts.eos, "pad_token_id": parts.pad,
        "num_query_tokens": parts.queries, "empty_prompt_ids": parts.empty_prompt_ids(),
        "memory_shape": list(mem.shape), "memory_img0_first8": mem[0, 0, :8].tolist(),
        "cases": out_cases,
    }
    if parts.instruct:
        ref["qformer_max_positions"] = parts.qformer_positions
    return ref, images_u8, pixels


def degeneracy_report(ref: dict) -> tuple[bool, str]:
    greedy = [c for c in ref["cases"] if c["name"].startswith("greedy_img")]
    outs = [tuple(c["new_tokens"][0]) for c in greedy]
    distinct = len(set(outs)) == len(outs)
    max_distinct = max(len(set(t)) for c in ref["cases"] for t in c["new_tokens"])
    eos_cases = [c["name"] for c in ref["cases"] if any(c["hit_eos"])]
    long_cases = [c["name"] for c in ref["cases"] if not all(c["hit_eos"])]
    items = all(c["checks"]["batch_equals_items"] for c in ref["cases"])
    ok = distinct and max_distinct >= 5 and len(eos_cases) > 0 and len(long_cases) > 0 and items
    return ok, (f"distinct across images {distinct}, most distinct tokens in a caption {max_distinct}, "
                f"ends in {len(eos_cases)} cases, runs to max_new_tokens in {len(long_cases)}, "
                f"batches equal their items {items}")


# --------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------


def write_manifest(path: Path, parts: Parts, *, name: str, trained: bool, source: str) -> None:
    enc = [("onnx", "encoder.onnx", "run once per tile"),
           ("pixel_values", "pixel_values", "float32 [B,3,S,S], already normalised"),
           ("input_ids", "input_ids", "int64 [B,L]: the prompt's [tokenizer] ids, right padded"),
           ("attention_mask", "attention_mask", "int64 [B,L]")]
    if parts.instruct:
        enc += [("qformer_input_ids", "qformer_input_ids", "int64 [B,Lq]: the prompt's [qformer_tokenizer] ids"),
                ("qformer_attention_mask", "qformer_attention_mask", "int64 [B,Lq]")]
    enc += [("memory", "memory", "float32 [B,M,E], M = query_tokens + L"),
            ("memory_mask", "memory_mask", "int64 [B,M] output: the cross-attention mask"),
            ("query_tokens", parts.queries, "memory rows before the prompt's")]
    sections = [
        (None, [("family", FAMILY, ""), ("architecture", parts.architecture, ""), ("name", name, ""),
                ("trained", trained, ""), ("source", source, "")]),
        ("encoder", enc),
        *C.cross_decoder_sections(layers=parts.layers, heads=parts.heads, head_dim=parts.head_dim,
                                  hidden=parts.hidden, cross_width=parts.hidden, vocab=parts.vocab),
        ("prompt", [("add_special_tokens", True, "tokenize the prompt as T5 does: prompt </s>"),
                    ("empty_prompt_ids", parts.empty_prompt_ids(), "the encoder tokens of no prompt (HF: [bos])"),
                    ("start_token_id", parts.start, "the decoder starts from this token alone (T5's decoder start: pad)")]
         + ([("max_qformer_tokens", parts.qformer_positions, "the Q-Former's positions: longer prompts are refused")]
            if parts.instruct else [])),
        C.preprocess_section(parts.size, parts.mean, parts.std),
        ("tokenizer", [("file", "tokenizer.json", "T5 (Unigram)"),
                       ("eos_token_id", parts.eos, "</s>: generation ends here"),
                       ("pad_token_id", parts.pad, "")]),
    ]
    if parts.instruct:
        sections.append(("qformer_tokenizer", [("file", "qformer_tokenizer.json", "the Q-Former's BERT WordPiece"),
                                               ("eos_token_id", int(parts.qtok.sep_token_id), "[SEP]"),
                                               ("pad_token_id", parts.qpad, "")]))
    sections.append(("generation", [("max_new_tokens", 20, ""), ("num_beams", 1, ""),
                                    ("repetition_penalty", 1.0, "")]))
    C.write_toml(path, sections)


# --------------------------------------------------------------------------------------
# Loading a real checkpoint
# --------------------------------------------------------------------------------------


def load_checkpoint(kind: str, src: str) -> Parts:
    from transformers import AutoTokenizer

    pp = C.image_processor_config(src)
    tok = AutoTokenizer.from_pretrained(src)
    qtok = None
    if kind == "blip2":
        from transformers import Blip2ForConditionalGeneration as Cls
    else:
        from transformers import InstructBlipForConditionalGeneration as Cls
        qtok = AutoTokenizer.from_pretrained(src, subfolder="qformer_tokenizer")
    model = Cls.from_pretrained(src, attn_implementation="eager", dtype=torch.float32).eval()
    vc = model.config.vision_config
    size = C.square_size(pp, vc.image_size)
    if size != vc.image_size:
        raise ValueError(f"image processor size {size} != vision_config.image_size {vc.image_size}")
    parts = Parts(kind, model, tok, qtok, size, pp["image_mean"], pp["image_std"])
    pc = C.read_json(src, "processor_config.json") or {}
    if pc.get("num_query_tokens") not in (None, parts.queries):
        raise ValueError(f"processor num_query_tokens {pc['num_query_tokens']} != model {parts.queries}")
    return parts


def save_pretrained_dir(parts: Parts, sp: Path) -> None:
    """A --tiny model as a hub-like folder (to test --from): model, tokenizers, processor files."""
    parts.model.save_pretrained(sp)
    parts.tok.save_pretrained(sp)
    if parts.qtok is not None:
        parts.qtok.save_pretrained(sp / "qformer_tokenizer")
    pre = {"image_mean": parts.mean, "image_std": parts.std, "do_normalize": True, "do_rescale": True,
           "rescale_factor": 1 / 255, "image_processor_type": "BlipImageProcessor",
           "size": {"height": parts.size, "width": parts.size}}
    proc = {"processor_class": "InstructBlipProcessor" if parts.instruct else "Blip2Processor",
            "num_query_tokens": parts.queries}
    (sp / "preprocessor_config.json").write_text(json.dumps(pre, indent=1))
    (sp / "processor_config.json").write_text(json.dumps(proc, indent=1))


def tiny_parts(kind: str, shape: str = "tiny", seed=None, init_std=None, eos_scale=None):
    """(parts, seed, init_std, eos_scale) of ``--tiny [--shape S]`` with these overrides (None: the
    defaults); also what bench/peer_caption_xdec.py builds to time HF generate on the same weights."""
    bench = shape != "tiny"
    seed = DEFAULT_SEED[kind] if seed is None else seed
    init_std = (BENCH_INIT_STD if bench else DEFAULT_INIT_STD[kind]) if init_std is None else init_std
    eos_scale = (BENCH_EOS_SCALE if bench else DEFAULT_EOS_SCALE[kind]) if eos_scale is None else eos_scale
    model, tok, qtok = build_tiny(kind, seed, init_std, eos_scale, shape)
    parts = Parts(kind, model, tok, qtok, model.config.vision_config.image_size, OPENAI_CLIP_MEAN,
                  OPENAI_CLIP_STD)
    return parts, seed, init_std, eos_scale


def export_t5(args, kind: str | None = None) -> None:
    """``export.py instructblip``, and ``export.py blip2`` for a T5 language model."""
    kind = kind or args.command
    if kind == "instructblip":
        lm = C.language_model_type(args, "t5")
        if lm != "t5":  # InstructBLIP with Vicuna: an image-text-decoder package (instructblip_vicuna_export.py)
            return C.language_model_exporter(kind, lm)(args)
    if getattr(args, "fp16", False):
        raise SystemExit(f"export.py {kind}: --fp16 is not supported for a T5 language model")
    shape = getattr(args, "shape", "tiny")
    if shape not in SHAPES or (kind != "blip2" and shape != "tiny"):
        raise SystemExit(f"export.py {kind}: --shape {shape} is not available for a T5 language model "
                         f"(blip2: {', '.join(SHAPES)})")
    if shape != "tiny" and not args.tiny:
        raise SystemExit("--shape only applies with --tiny")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tv = transformers.__version__
    if args.tiny:
        parts, seed, init_std, eos_scale = tiny_parts(kind, shape, args.seed, args.init_std, args.eos_scale)
        name = args.name or f"{parts.architecture}-{shape}-random"
        source = (f"random init, seed {seed}, init std {init_std}, </s> row of lm_head x{eos_scale}, "
                  + ("" if shape == "tiny" else f"shape {shape}, ")
                  + f"transformers {tv}, torch {torch.__version__}")
        trained = False
        if getattr(args, "save_pretrained", None):
            save_pretrained_dir(parts, Path(args.save_pretrained))
            print(f"export: wrote save_pretrained folder {args.save_pretrained}", file=sys.stderr)
    else:
        parts = load_checkpoint(kind, args.source)
        name = args.name or Path(args.source.rstrip("/")).name
        source = f"{args.source}, exported with transformers {tv}, torch {torch.__version__}"
        trained = True
    _, images_u8 = C.make_reference_images(parts.size)
    pixels = C.preprocess_u8(images_u8, parts.mean, parts.std)
    worst = check_against_hf(parts, pixels[:2])
    print(f"export: T5 wrappers vs HF: max abs diff {worst:.3g}", file=sys.stderr)
    export_graphs(parts, out, args.opset)
    if not args.skip_verify:
        verify_onnx_against_torch(parts, out, pixels[:3], args.tolerance)
    C.save_plain_tokenizer_json(parts.tok, out / "tokenizer.json")
    if parts.qtok is not None:
        C.save_plain_tokenizer_json(parts.qtok, out / "qformer_tokenizer.json")
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


def _export_blip2_t5(args) -> None:
    export_t5(args, "blip2")


# ``export.py blip2`` (decoder_export) hands a T5 language model over to this module.
C.register_language_model_exporter("blip2", "t5", _export_blip2_t5)
# ``export.py instructblip`` itself (its Llama / Vicuna variant: instructblip_vicuna_export.py).
C.register_language_model_exporter("instructblip", "t5", export_t5)


def add_parser(sub, command: str) -> None:
    """Add the ``instructblip`` subcommand (export.py's subparsers)."""
    c = sub.add_parser(command, help="export InstructBLIP with a Flan-T5 language model "
                                     "(InstructBlipForConditionalGeneration) as a cross-attention-decoder package",
                       description="Export InstructBLIP / Flan-T5: encoder.onnx (ViT, instruction-aware Q-Former, "
                                   "T5 encoder over query tokens + prompt), cross_kv.onnx, decoder.onnx (T5 decoder "
                                   "step with a self-attention cache), tokenizer.json, qformer_tokenizer.json, "
                                   "model.toml.")
    C.add_source_args(c, from_help="hub id (e.g. Salesforce/instructblip-flan-t5-xl) or a save_pretrained folder "
                                   "with the processor files and qformer_tokenizer/",
                      tiny_help="seeded random InstructBlipForConditionalGeneration with a T5 of the real classes")
    C.add_out_arg(c)
    C.add_opset_arg(c)
    c.add_argument("--seed", type=int, default=None, help=f"--tiny: seed (default {DEFAULT_SEED[command]})")
    c.add_argument("--init-std", type=float, default=None,
                   help=f"--tiny: init std (default {DEFAULT_INIT_STD[command]})")
    c.add_argument("--eos-scale", type=float, default=None,
                   help=f"--tiny: factor on the </s> row of lm_head (default {DEFAULT_EOS_SCALE[command]})")
    c.add_argument("--save-pretrained", metavar="DIR", default=None,
                   help="--tiny: also write the model + processor with save_pretrained (to test --from)")
    c.add_argument("--language-model", choices=["t5", "llama"], default=None,
                   help="--tiny: the language model (default t5); with --from it is read from config.json "
                        "(text_config.model_type); llama (Vicuna) writes an image-text-decoder package")
    C.add_name_arg(c)
    C.add_no_reference_arg(c)
    C.add_skip_verify_arg(c)
    C.add_tolerance_arg(c, 1e-4, "max diff / max(1, max|ref|) allowed between ONNX Runtime and PyTorch "
                                 "(default 1e-4)")
    c.set_defaults(func=export_t5)
